"""Training path of minGRU / minLSTM: a scan over time (log-space and parallel, or sequential on CPU).

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

Two ways to evaluate the recurrence, same numbers (tests/test_mingru.py):

- ``"log"``: the log-space scan above, parallel over time (a cumsum and a logcumsumexp over
  (B, T, H)); the form for GPUs and the paper's.
- ``"sequential"``: ``h_t = a_t h_{t-1} + b_t`` in direct space, one ``addcmul`` per step
  forward and one per step backward (:class:`SequentialScan`), with a and b computed for all
  steps at once. On CPU this is much cheaper: ``logcumsumexp`` and ``exp`` over (B, T, H)
  cost more than the 2T tiny fused multiply-adds (BENCHMARKS.md has the measurement).

``METHOD = "auto"`` takes the form :func:`rnnkit.dispatch.scan_method` chooses for the device
(``"sequential"`` on CPU, ``"log"`` elsewhere).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnkit import dispatch, native
from rnnkit.cells import log_min_g, min_g


def log_coefficients(cell: str, xp: Tensor) -> tuple:
    """``(log a, log b)`` of the recurrence ``h_t = a_t h_{t-1} + b_t``: xp (B, T, G*H) -> 2 x (B, T, H)."""
    if cell == "mingru":
        k_z, k_h = xp.chunk(2, -1)
        return -F.softplus(k_z), -F.softplus(-k_z) + log_min_g(k_h)  # log(1 - z), log z + log g
    k_f, k_i, k_h = xp.chunk(3, -1)
    diff = F.softplus(-k_f) - F.softplus(-k_i)  # log i - log f
    return -F.softplus(diff), -F.softplus(-diff) + log_min_g(k_h)  # log f', log i' + log g


METHOD = "auto"  # "auto" | "log" | "sequential"


def scan_method(device: torch.device) -> str:
    if METHOD not in ("auto", "log", "sequential"):
        raise ValueError(f"scan.METHOD: expected auto, log or sequential, got {METHOD!r}")
    return dispatch.scan_method(device) if METHOD == "auto" else METHOD


def scan_direction(x: Tensor, state: tuple, w: SimpleNamespace, lengths: Optional[Tensor], cell: str):
    """One direction of one layer by a scan; same contract as ``Recurrent._run_direction``.

    x: (B, T, F) in this direction's time order; state: (h0,) with h0 (B, H).
    Returns outputs (B, T, H) (0 at padded steps) and the final state (h_last,).
    """
    if scan_method(x.device) == "sequential":
        return _sequential_direction(x, state, w, lengths, cell)
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


def coefficients(cell: str, xp: Tensor) -> tuple:
    """``(a, b)`` of ``h_t = a_t h_{t-1} + b_t`` in direct space: xp (..., G*H) -> 2 x (..., H).

    The same quantities as :func:`log_coefficients`: ``a = sigmoid(-k_z) = 1 - z`` for minGRU;
    for minLSTM ``f' = f / (f + i) = sigmoid(-(log i - log f))``, ``i' = 1 - f'``.
    """
    if cell == "mingru":
        k_z, k_h = xp.chunk(2, -1)
        z = torch.sigmoid(k_z)
        return torch.sigmoid(-k_z), z * min_g(k_h)
    k_f, k_i, k_h = xp.chunk(3, -1)
    diff = F.softplus(-k_f) - F.softplus(-k_i)  # log i - log f
    return torch.sigmoid(-diff), torch.sigmoid(diff) * min_g(k_h)


class SequentialScan(torch.autograd.Function):
    """``h_t = a_t * h_{t-1} + b_t`` for t = 1..T, time-major: a, b (T, B, H), h0 (B, H) -> h (T, B, H).

    Backward, with d_t = dL/dh_t in total (from the output at t and through h_{t+1})::

        d_T = g_T,   d_t = g_t + a_{t+1} d_{t+1},   dL/db_t = d_t,   dL/da_t = d_t h_{t-1},   dL/dh0 = a_1 d_1
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
        h = _recur(a, b, h0)
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    def backward(ctx, grad_h: Tensor):
        a, h, h0 = ctx.saved_tensors
        d = _recur_back(a, grad_h)
        grad_a = torch.empty_like(a)
        torch.mul(d[1:], h[:-1], out=grad_a[1:])
        torch.mul(d[0], h0, out=grad_a[0])
        return grad_a, d, a[0] * d[0]


def _recur(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    """h_t = a_t h_{t-1} + b_t, a and b (T, B, H) contiguous -> h (T, B, H). Views made once (unbind)."""
    h = torch.empty_like(b)
    prev = h0
    for a_t, b_t, h_t in zip(a.unbind(0), b.unbind(0), h.unbind(0)):
        prev = torch.addcmul(b_t, a_t, prev, out=h_t)
    return h


def _recur_back(a: Tensor, grad_h: Tensor) -> Tensor:
    """d_t = g_t + a_{t+1} d_{t+1} (backward over time): the total gradient of every h_t."""
    d = grad_h.clone(memory_format=torch.contiguous_format)
    ds, as_ = d.unbind(0), a.unbind(0)
    for t in range(len(ds) - 1, 0, -1):
        ds[t - 1].addcmul_(as_[t], ds[t])
    return d


class MinGRUScan(torch.autograd.Function):
    """A whole minGRU direction, time-major, gates and scan in one Function (fewer passes over memory).

    k_z, k_h (T, B, H) contiguous (the two halves of W_ih x + b_ih); h0 (B, H); valid (T, B, 1)
    bool or None -> h (T, B, H) and the final state h_T (B, H), a separate output so that a
    model that reads only h_T sends no (T, B, H) gradient of zeros::

        z = sigmoid(k_z),  g = g(k_h),  h_t = (1 - z_t) h_{t-1} + z_t g_t     (z = 0 at padded steps)

    Backward with d_t the total gradient of h_t (:func:`_recur_back`)::

        dk_z = d (g - h_{t-1}) z (1 - z),    dk_h = d z g'(k_h),    dh0 = (1 - z_1) d_1

    With the native kernels (rnnkit/native.c, CPU) each direction is one pass forward and one
    backward, the gates recomputed there from k_z and k_h instead of saved.
    """

    @staticmethod
    def forward(ctx, k_z: Tensor, k_h: Tensor, h0: Tensor, valid: Optional[Tensor]):
        ctx.set_materialize_grads(False)
        kernels = _native_scan(k_z)
        ctx.native = kernels
        if kernels is not None:  # gates and recurrence in one pass; backward recomputes the gates
            k_z, k_h = k_z.contiguous(), k_h.contiguous()
            h = torch.empty_like(k_z)
            T, B, H = k_z.shape
            valid = None if valid is None else valid.contiguous()
            kernels[0](T, B, H, k_z.data_ptr(), k_h.data_ptr(), h0.data_ptr(), _address(valid), h.data_ptr())
            ctx.save_for_backward(k_z, k_h, h, h0, valid)
            return h, h[-1].clone()
        z = torch.sigmoid(k_z)
        if valid is not None:
            z.masked_fill_(~valid, 0.0)  # a = 1, b = 0: h carried unchanged
        s = torch.sigmoid(k_h)
        positive = k_h >= 0
        g = torch.where(positive, k_h + 0.5, s)
        g_prime = torch.where(positive, 1.0, s * (1 - s))
        a = torch.sub(1.0, z)
        h = _recur(a, z * g, h0)
        ctx.save_for_backward(z, a, g, g_prime, h, h0)
        return h, h[-1].clone()

    @staticmethod
    def backward(ctx, grad_h: Optional[Tensor], grad_last: Optional[Tensor]):
        if ctx.native is not None:
            k_z, k_h, h, h0, valid = ctx.saved_tensors
            T, B, H = k_z.shape
            carry, grad_h, grad_step = _carry_and_output_grad(h0, grad_h, grad_last, B * H)
            dk_z, dk_h = torch.empty_like(k_z), torch.empty_like(k_h)
            ctx.native[1](T, B, H, k_z.data_ptr(), k_h.data_ptr(), h0.data_ptr(), _address(valid), h.data_ptr(),
                          grad_h.data_ptr(), grad_step, dk_z.data_ptr(), dk_h.data_ptr(), carry.data_ptr())
            return dk_z, dk_h, carry, None
        z, a, g, g_prime, h, h0 = ctx.saved_tensors
        total = torch.zeros_like(h) if grad_h is None else grad_h.clone(memory_format=torch.contiguous_format)
        if grad_last is not None:
            total[-1] += grad_last
        d = _recur_back(a, total)
        gz = torch.empty_like(z)
        torch.sub(g[1:], h[:-1], out=gz[1:])  # g - h_{t-1}
        torch.sub(g[0], h0, out=gz[0])
        gz.mul_(d).mul_(z).mul_(a)  # z (1 - z) = sigmoid'; 0 at padded steps (z = 0 there)
        gh = torch.mul(g_prime, z).mul_(d)
        return gz, gh, a[0] * d[0], None


class MinLSTMScan(torch.autograd.Function):
    """A whole minLSTM direction with the native kernels (rnnkit/native.c), time-major.

    xp (T, B, 3H) = (k_f, k_i, k_h), contiguous; h0 (B, H); valid (T, B, 1) bool | None ->
    h (T, B, H) and h_T (B, H)::

        f' = f / (f + i),  i' = i / (f + i)  (f = sigmoid(k_f), i = sigmoid(k_i)),  h_t = f' h_{t-1} + i' g(k_h)

    the same recurrence as :func:`coefficients` + :class:`SequentialScan`, in one pass over
    memory forward and one backward (the gates recomputed there).
    """

    @staticmethod
    def forward(ctx, xp, h0, valid, kernels):
        ctx.set_materialize_grads(False)
        T, B, G = xp.shape
        xp, h0 = xp.contiguous(), h0.contiguous()
        valid = None if valid is None else valid.contiguous()
        h = xp.new_empty(T, B, G // 3)
        kernels[0](T, B, G // 3, xp.data_ptr(), h0.data_ptr(), _address(valid), h.data_ptr())
        ctx.save_for_backward(xp, h0, valid, h)
        ctx.kernels = kernels
        return h, h[-1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h, grad_last):
        xp, h0, valid, h = ctx.saved_tensors
        T, B, H = h.shape
        carry, grad_h, grad_step = _carry_and_output_grad(h0, grad_h, grad_last, B * H)
        dxp = torch.empty_like(xp)
        ctx.kernels[1](T, B, H, xp.data_ptr(), h0.data_ptr(), _address(valid), h.data_ptr(), grad_h.data_ptr(),
                       grad_step, dxp.data_ptr(), carry.data_ptr())
        return dxp, carry, None, None


def _carry_and_output_grad(h0: Tensor, grad_h: Optional[Tensor], grad_last: Optional[Tensor], step: int):
    """For the native backward kernels: the carry (B, H) holding dL/dh_T (zeros when h_T was not
    used), and the output gradient with its elements per step (a row of zeros and 0 when the
    outputs were not used)."""
    carry = torch.zeros_like(h0) if grad_last is None else grad_last.clone(memory_format=torch.contiguous_format)
    if grad_h is None:
        return carry, torch.zeros_like(h0), 0
    return carry, grad_h.contiguous(), step


class MinGRUNarrowScan(torch.autograd.Function):
    """A minGRU direction whose input projection runs inside the native loops (rnnkit/native.c).

    x (T, B, F) time-major with few features (``dispatch.mingru_projects_in_scan``); weight_ih
    (2H, F); bias_ih (2H) | None; h0 (B, H); valid (T, B, 1) bool | None -> h (T, B, H), h_T
    (B, H). The same numbers as ``F.linear`` followed by :class:`MinGRUScan`, without the two
    (T, B, H) projections in memory: on pixel MNIST (F = 1) those were most of the memory
    traffic of a training step.
    """

    @staticmethod
    def forward(ctx, x, weight_ih, bias_ih, h0, valid, kernels):
        ctx.set_materialize_grads(False)
        T, B, F_ = x.shape
        H = weight_ih.shape[0] // 2
        x, wt, h0 = x.contiguous(), weight_ih.t().contiguous(), h0.contiguous()  # wt (F, 2H)
        bias = None if bias_ih is None else bias_ih.contiguous()
        valid = None if valid is None else valid.contiguous()
        h = x.new_empty(T, B, H)
        kernels[0](T, B, H, F_, x.data_ptr(), wt.data_ptr(), _address(bias), h0.data_ptr(), _address(valid),
                   h.data_ptr())
        ctx.save_for_backward(x, wt, bias, h0, valid, h)
        ctx.kernels = kernels
        return h, h[-1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h, grad_last):
        x, wt, bias, h0, valid, h = ctx.saved_tensors
        T, B, F_ = x.shape
        H = h.shape[-1]
        carry, grad_h, grad_step = _carry_and_output_grad(h0, grad_h, grad_last, B * H)
        dx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        dwt, dbias = torch.zeros(F_, 2 * H, dtype=torch.float64), torch.zeros(2 * H, dtype=torch.float64)
        ctx.kernels[1](T, B, H, F_, x.data_ptr(), wt.data_ptr(), _address(bias), h0.data_ptr(), _address(valid),
                       h.data_ptr(), grad_h.data_ptr(), grad_step, carry.data_ptr(), dwt.data_ptr(),
                       dbias.data_ptr(), _address(dx))
        dbias = dbias.to(x.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        return dx, dwt.t().to(x.dtype), dbias, carry, None, None


def _native_scan(like: Tensor, name: str = "mingru"):
    """The native scan kernels ``name`` ("mingru", "mingru_x", "minlstm"; rnnkit/native.c) for
    ``like``'s dtype on CPU, or None."""
    return native.kernels_for(name, like)


def _address(x: Optional[Tensor]) -> Optional[int]:
    return None if x is None else x.data_ptr()


def _sequential_direction(x: Tensor, state: tuple, w: SimpleNamespace, lengths: Optional[Tensor], cell: str):
    """:func:`scan_direction` by :class:`SequentialScan`, computed time-major (T, B, .) throughout."""
    B, T, _ = x.shape
    x = x.transpose(0, 1).contiguous()  # (T, B, F)
    valid = None
    if lengths is not None:
        valid = (torch.arange(T).unsqueeze(1) < lengths).to(x.device).unsqueeze(-1)  # (T, B, 1)
    narrow = cell == "mingru" and dispatch.mingru_projects_in_scan(x.shape[-1])
    kernels = _native_scan(x, "mingru_x" if narrow else cell)
    if narrow and kernels is not None:
        h, last = MinGRUNarrowScan.apply(x, w.weight_ih, w.bias_ih, state[0], valid, kernels)
    elif cell == "mingru":  # each gate's projection on its own, so that both are contiguous
        W, bias = w.weight_ih.chunk(2), (None, None) if w.bias_ih is None else w.bias_ih.chunk(2)
        k_z, k_h = F.linear(x, W[0], bias[0]), F.linear(x, W[1], bias[1])  # (T, B, H) each
        h, last = MinGRUScan.apply(k_z, k_h, state[0].contiguous(), valid)  # (T, B, H), (B, H)
    elif kernels is not None:  # minlstm, one native pass each way
        xp = F.linear(x, w.weight_ih, w.bias_ih)  # (T, B, 3H)
        h, last = MinLSTMScan.apply(xp, state[0], valid, kernels)
    else:
        xp = F.linear(x, w.weight_ih, w.bias_ih)  # (T, B, G*H)
        a, b = coefficients(cell, xp)
        if valid is not None:
            a, b = a.masked_fill(~valid, 1.0), b.masked_fill(~valid, 0.0)  # padded steps carry h unchanged
        h = SequentialScan.apply(a.contiguous(), b.contiguous(), state[0].contiguous())  # (T, B, H)
        last = h[-1]
    if valid is not None:
        h = h * valid
    return h.transpose(0, 1), (last,)
