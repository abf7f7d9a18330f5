"""Sampling speed (chars/s) of a 2-layer LSTM(256) char model (V=65, E=64), random weights.

Compared in the same process:
  rnnkit       TextGenerator.sample: prime fed once, then one direct cell-kernel step per char
               with the state carried (batch 1 and 64 samples)
  nn.LSTM step a hand-written stateful torch.nn loop: nn.LSTM on a (B, 1) input per char
  window re-run the tutorials' way: re-run nn.LSTM on the last 100 chars for every new char (batch 1)

    flock /tmp/rnnkit-cpu.lock .venv/bin/python benchmarks/textgen_sampling.py
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

import rnnkit  # noqa: F401  (flush denormals)
from rnnkit.data.text import CharVocab
from rnnkit.models import ModelConfig, SequenceModel
from rnnkit.tasks.textgen import TextGenerator

V, E, H, L = 65, 64, 256, 2


def rnnkit_generator() -> TextGenerator:
    vocab = CharVocab([chr(32 + i) for i in range(V)])
    model = SequenceModel(ModelConfig(cell="lstm", hidden_size=H, num_layers=L, embedding_dim=E, input_size=V,
                                      output_size=V))
    return TextGenerator.from_model(model, vocab)


def torch_modules(gen: TextGenerator):
    emb, lstm, head = nn.Embedding(V, E), nn.LSTM(E, H, L, batch_first=True), nn.Linear(H, V)
    emb.load_state_dict(gen.model.encoder.state_dict())
    lstm.load_state_dict(gen.model.rnn.state_dict())
    head.load_state_dict(gen.model.head.state_dict())
    return emb.eval(), lstm.eval(), head.eval()


@torch.inference_mode()
def nn_step_loop(mods, n: int, B: int) -> None:
    emb, lstm, head = mods
    x, state = torch.zeros(B, 1, dtype=torch.int64), None
    for _ in range(n):
        y, state = lstm(emb(x), state)
        probs = F.softmax(head(y[:, -1]) / 0.8, dim=-1)
        x = torch.multinomial(probs, 1)


@torch.inference_mode()
def window_rerun(mods, n: int, window: int = 100) -> None:
    emb, lstm, head = mods
    ids = torch.zeros(1, window, dtype=torch.int64)
    for _ in range(n):
        y, _ = lstm(emb(ids[:, -window:]))
        probs = F.softmax(head(y[:, -1]) / 0.8, dim=-1)
        ids = torch.cat([ids, torch.multinomial(probs, 1)], dim=1)


def rate(fn, chars: int, repeats: int = 3) -> float:
    fn()  # warm-up
    best = min(_timed(fn) for _ in range(repeats))
    return chars / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chars", type=int, default=2000, help="chars per sample")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gen = rnnkit_generator()
    mods = torch_modules(gen)
    n = args.chars
    rows = [
        ("rnnkit sample, batch 1", rate(lambda: gen.sample("A", n, temperature=0.8, seed=0), n)),
        ("rnnkit sample, batch 1, top_k=10 top_p=0.9",
         rate(lambda: gen.sample("A", n, temperature=0.8, top_k=10, top_p=0.9, seed=0), n)),
        ("rnnkit sample, 64 samples", rate(lambda: gen.sample("A", n, temperature=0.8, seed=0, num_samples=64), 64 * n)),
        ("nn.LSTM per-step loop, batch 1", rate(lambda: nn_step_loop(mods, n, 1), n)),
        ("nn.LSTM per-step loop, batch 64", rate(lambda: nn_step_loop(mods, n, 64), 64 * n)),
        ("tutorial window re-run (100 chars), batch 1", rate(lambda: window_rerun(mods, n // 10), n // 10, 1)),
    ]
    print(f"2-layer LSTM({H}), V={V}, E={E}, {n} chars per sample, torch threads {torch.get_num_threads()}")
    for name, r in rows:
        print(f"  {name:<46} {r:>10,.0f} chars/s")


if __name__ == "__main__":
    main()
