"""One timed training step (forward + loss + backward + Adam step), and statistics."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

from benchmarks import shapes


class Trainee:
    """A model, its optimizer and its fixed batch; ``step()`` runs and times one training step."""

    def __init__(self, shape: shapes.Shape, model: torch.nn.Module):
        self.shape, self.model = shape, model.train()
        self.x, self.y = shapes.make_batch(shape)
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(self) -> float:
        """Seconds for one step: zero_grad, forward, loss, backward, optimizer step."""
        start = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss = shapes.loss_fn(self.shape, self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        return time.perf_counter() - start


@dataclass
class Samples:
    """Per-step times in seconds for one peer on one shape."""

    times: list = field(default_factory=list)
    reference: bool = False  # True: a number quoted from cpu-facts.md, not measured here
    path: str = None  # rnnkit peers: the path the layer took ("fused" | "bptt" | "reference")

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times) * 1e3

    @property
    def spread_ms(self) -> tuple[float, float]:
        """Interquartile range (25th, 75th percentile) in ms; (min, max) below 4 samples."""
        t = sorted(x * 1e3 for x in self.times)
        if len(t) < 4:
            return t[0], t[-1]
        q = statistics.quantiles(t, n=4, method="inclusive")
        return q[0], q[2]


def matmul_peak_gflops(n: int = 3072, repeats: int = 20) -> float:
    """The machine's fp32 matmul ceiling in GFLOP/s: the best of ``repeats`` (n x n) @ (n x n)
    products with torch's current thread count (cpu-facts.md: 343 with 2 threads here; single
    products of 2048 and smaller varied by 2x on this machine, 3072 by ~5%)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)  # warm-up: threads, caches
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9
