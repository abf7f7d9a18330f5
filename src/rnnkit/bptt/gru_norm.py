"""Explicit BPTT for the layer-normed GRU (reset_after=True): native kernels only.

Without the native kernels ``bptt_unsupported_reason`` sends such a layer to the reference
loop: there is no torch-op version of this Function.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from rnnkit import native
from rnnkit.bptt import ops
from rnnkit.bptt.gru import sequence_kernels
from rnnkit.bptt.norm import LN_EPS, input_gate_norm


def run(layer, xs, ws, first, mask):
    """One layer-normed GRU layer (reset_after=True), all directions: xs (D, T, B, F) -> hs, (h_T,)."""
    w_ih, w_hh = ops.stack([w.weight_ih for w in ws]), ops.stack([w.weight_hh for w in ws])
    xz = ops.project(xs, w_ih, None)  # (D, T, B, 3H)
    g_x, b_x = ops.stack([w.ln_ih for w in ws]), ops.stack([w.bias_ih for w in ws])
    recurrent = (ops.stack([w.ln_hh for w in ws]), ops.stack([w.bias_hh for w in ws]), mask)
    if sequence_kernels(xz) is not None:  # the sequence kernel normalises xz too
        hs, h_last = GRUNormFunction.apply(xz, first[0], w_hh, g_x, b_x, *recurrent)
    else:
        hs, h_last = GRUNormFunction.apply(input_gate_norm(xz, g_x, b_x, 3), first[0], w_hh, None, None, *recurrent)
    return hs, (h_last,)


class GRUNormFunction(torch.autograd.Function):
    """GRUFunction's step with the recurrent (and input) projections layer-normed per gate::

        q_t  = (h_{t-1} * m) W_hh^T                         (D, B, 3H)
        hp_t = LN_gate(q_t) * g_hh + b_hh                   LN over each gate's H units
        xp_t = LN_gate(xz_t) * g_x + b_x                    xz = x W_ih^T
        r, z = sigmoid(xp_r + hp_r), sigmoid(xp_z + hp_z);  n = tanh(xp_n + r * hp_n)
        h_t  = n + z (h_{t-1} - n)

    With the sequence kernel (one native call each way, both layer norms inside), ``xin`` is xz
    and g_x (D, 3H), b_x (D, 3H) | None are arguments. With the step kernels (a bmm, a
    gate-norm call and a GRU call a step), ``xin`` is xp, computed outside, and g_x, b_x are
    None. h0 (D, B, H); w_hh (D, 3H, H); g_hh (D, 3H); b_hh (D, 3H) | None; mask (D, B, H) | None.
    Returns hs (D, T, B, H) and h_T (D, B, H). The gains' and biases' gradients are summed in
    float64 inside the backward calls.
    """

    @staticmethod
    def forward(ctx, xin, h0, w_hh, g_x, b_x, g_hh, b_hh, mask):
        D, T, B, G = xin.shape
        xin, mask = xin.contiguous(), ops.optional_contiguous(mask)
        wt = w_hh.transpose(1, 2).contiguous()  # (D, H, 3H)
        q, hp, gates = (xin.new_empty(D, T, B, G) for _ in range(3))
        stats = xin.new_empty(4, D, T, B, 3)  # mean, 1/std of q; then of xz (sequence kernel only)
        hs = xin.new_empty(D, T + 1, B, G // 3)
        hs[:, 0] = h0
        ctx.save_for_backward(w_hh, g_hh, g_x)
        ctx.hs, ctx.q, ctx.hp, ctx.gates, ctx.stats, ctx.mask = hs, q, hp, gates, stats, mask
        ctx.has_bias, ctx.has_x_bias = b_hh is not None, b_x is not None
        ctx.sequence = None if g_x is None else sequence_kernels(xin)
        assert (ctx.sequence is None) == (g_x is None), "the sequence kernel normalises the input projection"
        if ctx.sequence is not None:  # the whole loop, recurrent matmul and layer norms included, in one call
            ctx.xz = xin
            weights = [ops.optional_contiguous(w) for w in (b_hh, g_hh, g_x, b_x)]
            native.gru_sequence_forward(ctx.sequence[0], xin, wt, *weights, mask, q, stats, hp, gates, hs, LN_EPS)
        else:
            ctx.kernels = native.kernels_for("gru", xin), native.kernels_for("gate_norm", xin)
            _step_forward(ctx.kernels, xin, wt, g_hh, b_hh, mask, q, stats, hp, gates, hs)
        return hs[:, 1:], hs[:, -1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs, grad_h):
        w_hh, g_hh, g_x = ctx.saved_tensors
        hs, gates, mask = ctx.hs, ctx.gates, ctx.mask
        D, T, B, G = gates.shape
        carry = ops.final_grad(grad_h, hs, (D, B, G // 3))
        if ctx.sequence is not None:
            dxp, dq, dg_hh, db_hh, dg_x, db_x = _sequence_backward(ctx, w_hh, g_hh, g_x, grad_hs, carry)
            dh0 = carry
        else:
            dxp, dq, dg_hh, db_hh, dh0 = _step_backward(ctx, w_hh, g_hh, grad_hs, carry)
            dg_x = db_x = None
        dw = ops.weight_grad(dq, ops.recurrent_inputs(hs, mask))
        return dxp, dh0, dw, dg_x, db_x, dg_hh, db_hh, None


def _step_forward(kernels, xp, wt, g_hh, b_hh, mask, q, stats, hp, gates, hs):
    """The forward loop with the step kernels: a bmm, a gate-norm call and a GRU call a step."""
    D, T, B, G = xp.shape
    hm = xp.new_empty(D, B, G // 3)
    gru, norm = kernels
    gru_step = native.GRUSteps(*gru).bind_forward(xp, hp, gates, hs, mask, hm)
    norm_step = native.GateNormSteps(*norm, 3).bind_forward(q, g_hh, b_hh, hp, stats[0], stats[1], LN_EPS)
    for t in range(T):
        hin = hm if mask is not None and t > 0 else ops.masked(hs[:, t], mask, hm)  # hm: written by gru_step
        torch.bmm(hin, wt, out=q[:, t])
        norm_step(t)
        gru_step(t)


def _sequence_backward(ctx, w_hh, g_hh, g_x, grad_hs, carry):
    """The backward in one native call; carry (D, B, H) in: dL/dh_T, out: dL/dh_0."""
    hs, gates = ctx.hs, ctx.gates
    D, T, B, G = gates.shape
    dxp, dhp, dq = torch.empty_like(gates), torch.empty_like(gates), torch.empty_like(gates)
    sums = hs.new_zeros(4, D, G, dtype=torch.float64)  # the gradients of g_hh, b_hh, g_x, b_x
    native.gru_sequence_backward(ctx.sequence[1], gates, ctx.hp, ctx.q, ctx.xz, ctx.stats, g_hh.contiguous(),
                                 g_x.contiguous(), hs, w_hh.contiguous(), ctx.mask,
                                 ops.optional_contiguous(grad_hs), carry, dxp, dhp, dq, sums)
    dg_hh, db_hh, dg_x, db_x = sums.to(hs.dtype).unbind(0)
    return (dxp, dq, dg_hh, db_hh if ctx.has_bias else None, dg_x, db_x if ctx.has_x_bias else None)


def _step_backward(ctx, w_hh, g_hh, grad_hs, carry):
    """The backward loop with the step kernels: a GRU call, a gate-norm call and a bmm a step."""
    hs, q, gates, mask = ctx.hs, ctx.q, ctx.gates, ctx.mask
    D, T, B, G = gates.shape
    dxp, dhp, dq = torch.empty_like(gates), torch.empty_like(gates), torch.empty_like(gates)
    gru, norm = ctx.kernels
    rec = hs.new_empty(D, B, G // 3)
    dg_hh = hs.new_zeros(D, G, dtype=torch.float64)
    db_hh = hs.new_zeros(D, G, dtype=torch.float64) if ctx.has_bias else None
    gru_step = native.GRUSteps(*gru).bind_backward(gates, ctx.hp, hs, rec, mask, grad_hs, carry, dxp, dhp)
    norm_step = native.GateNormSteps(*norm, 3).bind_backward(dhp, q, ctx.stats[0], ctx.stats[1], g_hh, dq, dg_hh,
                                                             db_hh)
    for t in range(T - 1, -1, -1):
        gru_step(t, t == T - 1)
        norm_step(t)
        torch.bmm(dq[:, t], w_hh, out=rec)
    dh0 = carry.add_(rec) if mask is None else carry.addcmul_(rec, mask)
    return dxp, dq, dg_hh.to(hs.dtype), None if db_hh is None else db_hh.to(hs.dtype), dh0
