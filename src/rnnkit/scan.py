"""Parallel training path of minGRU / minLSTM: a log-space scan over time.

Both cells (see :class:`rnnkit.cells.MinGRUCell`, :class:`rnnkit.cells.MinLSTMCell`) are a
linear recurrence whose coefficients depend on x alone::

    h_t = a_t h_{t-1} + b_t,      a_t in (0, 1),  b_t > 0
    minGRU:   a_t = 1 - z_t,  b_t = z_t g(k_h)
    minLSTM:  a_t = f'_t,     b_t = i'_t g(k_h)

so every h_t is known in closed form (Feng et al., 2024, appendix B; Heinsen, 2023)::

    a*_t = sum_{s<=t} log a_s                                   (cumsum)
    h_t  = exp(a*_t + logcumsumexp_{s<=t}(log b_s - a*_s)) + exp(a*_t) h_0

with ``log a`` and ``log b`` from softplus forms that never take the log of a small difference.
The initial state enters linearly (the last term) rather than as ``log h_0`` as in the paper, so
h_0 may be zero or negative (a carried state) and the scan stays exact.

Variable lengths: a padded step gets ``log a = 0`` and ``log b = -inf`` (h is carried unchanged),
so the last column holds each sequence's state at its last valid step; padded outputs are 0.
The sequential form (the cells' ``step``) is the reference path; they agree (tests/test_mingru.py).

Cost on CPU (measured, 1 thread, S5: B=64, T=784, H=128, ``python -m benchmarks.micro --shapes S5
--peers "torch.nn+ftz,rnnkit minGRU,rnnkit minLSTM"``): minGRU 4.0x and minLSTM 4.4x the step
time of torch.nn.LSTM+ftz, i.e. slower, not faster: ``logcumsumexp`` (35%) and ``exp`` (23%)
over (B, T, H) dominate. The log space buys a numerically safe *parallel* scan (GPU, long T);
on CPU a sequential direct-space loop ``h_t = a_t h_{t-1} + b_t`` (one ``addcmul`` per step
forward and one per step backward, in an autograd Function) should be far cheaper: not done yet.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.cells import log_min_g


def log_coefficients(cell: str, xp: Tensor) -> tuple:
    """``(log a, log b)`` of the recurrence ``h_t = a_t h_{t-1} + b_t``: xp (B, T, G*H) -> 2 x (B, T, H)."""
    if cell == "mingru":
        k_z, k_h = xp.chunk(2, -1)
        return -F.softplus(k_z), -F.softplus(-k_z) + log_min_g(k_h)  # log(1 - z), log z + log g
    k_f, k_i, k_h = xp.chunk(3, -1)
    diff = F.softplus(-k_f) - F.softplus(-k_i)  # log i - log f
    return -F.softplus(diff), -F.softplus(-diff) + log_min_g(k_h)  # log f', log i' + log g


def scan_direction(x: Tensor, state: tuple, w: SimpleNamespace, lengths: Optional[Tensor], cell: str):
    """One direction of one layer by the log-space scan; same contract as ``Recurrent._run_direction``.

    x: (B, T, F) in this direction's time order; state: (h0,) with h0 (B, H).
    Returns outputs (B, T, H) (0 at padded steps) and the final state (h_last,).
    """
    B, T, _ = x.shape
    xp = F.linear(x, w.weight_ih, w.bias_ih)  # (B, T, G*H)
    log_a, log_b = log_coefficients(cell, xp)
    valid = None
    if lengths is not None:
        valid = (torch.arange(T) < lengths.unsqueeze(1)).to(x.device).unsqueeze(-1)  # (B, T, 1)
        log_a = log_a.masked_fill(~valid, 0.0)
        log_b = log_b.masked_fill(~valid, float("-inf"))
    a_star = log_a.cumsum(1)  # (B, T, H)
    h = torch.exp(a_star + torch.logcumsumexp(log_b - a_star, 1)) + torch.exp(a_star) * state[0].unsqueeze(1)
    last = h[:, -1]
    return (h if valid is None else h * valid), (last,)
