"""The training loop the hand-written baselines share: Adam steps with gradients clipped at 5,
for a wall-clock budget, a validation score every ``eval_every`` steps (and at the end), the best
weights kept. Plain torch; no rnnkit."""

from __future__ import annotations

import time
from typing import Callable, Iterable

import torch
from torch import nn


def train_for_budget(model: nn.Module, epoch_batches: Callable[[], Iterable], loss_of: Callable, validate: Callable[[], float],
                     budget: float, eval_every: int, lr: float = 1e-3) -> dict:
    """Train until ``budget`` seconds; ``epoch_batches()`` gives one epoch's batches, ``loss_of(batch)``
    a scalar, ``validate()`` a score to maximise. Leaves the best-scoring weights in ``model``;
    returns {"val", "steps", "train_seconds"}."""
    opt = torch.optim.Adam(model.parameters(), lr)
    best, best_state, step, t0 = -1.0, None, 0, time.monotonic()
    while time.monotonic() - t0 < budget:
        for batch in epoch_batches():
            loss = loss_of(batch)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            step += 1
            done = time.monotonic() - t0 >= budget
            if step % eval_every == 0 or done:
                score = validate()
                print(f"baseline step {step} loss {loss.item():.3f} val {score:.4f} t={time.monotonic() - t0:.0f}s", flush=True)
                if score > best:
                    best, best_state = score, {k: v.clone() for k, v in model.state_dict().items()}
            if done:
                break
    model.load_state_dict(best_state)
    return {"val": best, "steps": step, "train_seconds": round(time.monotonic() - t0, 1)}
