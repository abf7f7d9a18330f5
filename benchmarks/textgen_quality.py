"""Character-level LM quality at equal wall time: a plain torch.nn baseline vs the rnnkit preset.

Baseline (hand-written torch.nn): Embedding(V, 64) -> nn.LSTM(64, 384, 2) -> Linear(384, V),
32 contiguous streams, T=100, state carried and detached, AdamW lr 3e-3 with cosine decay over
the time budget, clip 1.0, no dropout, flush-denormal on (rnnkit sets it on import).
Preset: ``rnnkit train textgen --config configs/shakespeare.json --time-budget S`` (same code path).

Both are scored the same way: mean cross-entropy over ONE full pass of the validation text
(last 10%, one stream, state carried), in nats/char and bits/char.

    flock /tmp/rnnkit-cpu.lock .venv/bin/python benchmarks/textgen_quality.py --time-budget 600
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import rnnkit  # noqa: F401  (flush denormals)
from rnnkit.data.text import CharVocab, TextStream, split_text
from rnnkit.tasks.textgen import full_pass_metrics
from rnnkit.models import ModelConfig
from rnnkit.training.config import TrainConfig, from_dict, load_config_file
from rnnkit.runs import open_run, train_task


class Baseline(nn.Module):
    def __init__(self, V: int, H: int = 384, E: int = 64, L: int = 2):
        super().__init__()
        self.emb, self.rnn, self.head = nn.Embedding(V, E), nn.LSTM(E, H, L, batch_first=True), nn.Linear(H, V)

    def forward(self, x, state=None, lengths=None):
        y, state = self.rnn(self.emb(x), state)
        return self.head(y), state


def val_metrics(model, val_ids) -> dict:
    return full_pass_metrics(model, TextStream(val_ids, 1, 1024, shuffle=False).epoch(0, 0))


def run_baseline(text: str, budget: float, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    vocab = CharVocab.from_text(text)
    train_ids, val_ids = split_text(vocab.encode(text), 0.1)
    model = Baseline(len(vocab))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    stream = TextStream(train_ids, 32, 100)
    t0, steps, epoch = time.monotonic(), 0, 0
    while time.monotonic() - t0 < budget:
        state = None
        for batch in stream.epoch(epoch, seed):
            frac = (time.monotonic() - t0) / budget
            if frac >= 1:
                break
            for g in opt.param_groups:
                g["lr"] = 3e-3 * 0.5 * (1 + math.cos(math.pi * frac))
            logits, state = model(batch.inputs, state)
            loss = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            state = tuple(s.detach() for s in state)
            steps += 1
        epoch += 1
    train_s = time.monotonic() - t0
    return {"name": "torch.nn baseline 2x LSTM(384)", "steps": steps, "train_s": round(train_s, 1),
            **val_metrics(model, val_ids)}


def run_preset(config_path: str, data: str, budget: float, keep: str | None = None) -> dict:
    cfg = load_config_file(config_path)
    from rnnkit.tasks import get_task

    task = get_task(cfg["task"])
    model = from_dict(ModelConfig, cfg.get("model", {}), config_path)
    train = from_dict(TrainConfig, {**cfg.get("train", {}), "time_budget": budget}, config_path)
    task_config = from_dict(task.Config, cfg.get("data", {}), config_path)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(keep) if keep else Path(tmp) / "run"
        t0 = time.monotonic()
        history = train_task("textgen", data, out, model, train, task_config, progress=False)
        train_s = time.monotonic() - t0
        art = open_run(out)
        vocab = CharVocab.from_dict(art.task_state["vocab"])
        text = Path(art.data["path"]).read_text(encoding="utf-8")
        _, val_ids = split_text(vocab.encode(text), task_config.val_fraction)
        steps = history.train[-1]["step"] if history.train else (history.best or {}).get("step")
        return {"name": f"rnnkit preset {config_path}", "steps": steps, "train_s": round(train_s, 1),
                "stop_reason": history.stop_reason, "val_curve": [(r["step"], round(r["loss"], 4)) for r in history.eval], **val_metrics(art.build_model(), val_ids)}


def main() -> None:
    default_data = Path(os.environ.get("RNNKIT_DATA", "../shared/data")) / "tinyshakespeare.txt"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(default_data))
    p.add_argument("--time-budget", type=float, default=600.0)
    p.add_argument("--config", default="configs/shakespeare.json")
    p.add_argument("--runs", default="baseline,preset", help="comma-separated: baseline, preset")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--keep", help="keep the preset's run directory here (default: a temporary one)")
    args = p.parse_args()
    text = Path(args.data).read_text(encoding="utf-8")
    results = []
    for run in args.runs.split(","):
        r = run_baseline(text, args.time_budget) if run == "baseline" else run_preset(args.config, args.data, args.time_budget, args.keep)
        results.append(r)
        print(f"{r['name']}: {r['nats_per_char']:.4f} nats/char, {r['bits_per_char']:.4f} bits/char "
              f"({r['steps']} steps, {r['train_s']} s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
