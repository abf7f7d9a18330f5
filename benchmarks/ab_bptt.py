"""A/B of two versions of the LSTM explicit-BPTT function (``rnnkit/bptt/lstm.py``) in ONE process.

    git worktree add /tmp/rnnkit_old HEAD~1
    python -m benchmarks.ab_bptt --old /tmp/rnnkit_old/src/rnnkit/bptt/lstm.py [--shape S5] [--rounds 40]

``--old`` is a file that defines ``LSTMFunction`` (before the split of bptt, ``src/rnnkit/bptt.py``);
its imports of ``rnnkit`` resolve to this checkout, so only that file's own code differs.

Separate processes (``benchmarks.micro`` with ``PYTHONPATH``) see the machine's drift between
runs, often 10% or more here; alternating the two versions step by step in one process lets
a few-percent change show. Times ``LSTMFunction.apply`` forward and backward (loss on the
last output) at the shape's batch, length and width, 2 threads, wall clock; prints the
median of each.
"""

from __future__ import annotations

import rnnkit  # noqa: F401  (first: flush-to-zero before torch starts its threads)

import argparse
import importlib.util
import statistics
import time

import torch

from benchmarks import shapes
from rnnkit.bptt import lstm as current


def load_module(path: str):
    spec = importlib.util.spec_from_file_location("bptt_other", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_step(module, args) -> tuple[float, float]:
    """Seconds of forward and of backward of one LSTMFunction call."""
    start = time.perf_counter()
    hs, _, _ = module.LSTMFunction.apply(*args)
    mid = time.perf_counter()
    hs[:, -1].sum().backward()
    return mid - start, time.perf_counter() - mid


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", required=True, help="path of the other file that defines LSTMFunction")
    p.add_argument("--shape", default="S5", help="LSTM shape of benchmarks.shapes (S2, S4, S5)")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    shape = shapes.SHAPES[a.shape]
    if shape.cell != "lstm":
        raise SystemExit(f"{a.shape} is not an LSTM shape")
    B, T, H, F_ = shape.batch, shape.steps, shape.hidden, shape.features  # one layer of the shape
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(1, T, B, F_, generator=g)
    w_ih = (0.1 * torch.randn(1, 4 * H, F_, generator=g)).requires_grad_()
    w_hh = (0.1 * torch.randn(1, 4 * H, H, generator=g)).requires_grad_()
    bias = torch.zeros(1, 4 * H, requires_grad=True)
    h0 = torch.zeros(1, B, H)
    args = (xs, w_ih, bias, h0, h0, w_hh, None)
    versions = {"current": current, "old": load_module(a.old)}
    times = {k: [] for k in versions}
    for r in range(a.rounds):
        order = list(versions) if r % 2 else list(versions)[::-1]
        for k in order:
            times[k].append(one_step(versions[k], args))
    for k, v in times.items():
        v = v[2:]  # warm-up
        fwd, bwd = statistics.median(f for f, _ in v), statistics.median(b for _, b in v)
        total = statistics.median(f + b for f, b in v)
        print(f"{a.shape} {k:8s} forward {fwd * 1e3:7.1f} ms  backward {bwd * 1e3:7.1f} ms  total {total * 1e3:7.1f} ms")


if __name__ == "__main__":
    main()
