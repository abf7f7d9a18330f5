"""Explicit BPTT for the GRU, both forms of :class:`rnnkit.cells.GRUCell` (gate order r, z, n).

* ``reset_after=True`` (torch, cuDNN): ``n = tanh(xp_n + r * (W_hn (h*m) + b_hn))``
  (:class:`GRUFunction`); ``b_hn`` sits inside the reset product, so ``b_hh`` is kept apart.
  With layer norm, its own Function: :mod:`rnnkit.bptt.gru_norm`.
* ``reset_after=False`` (textbook, a Keras option): ``n = tanh(xp_n + W_hn (r * h * m) + b_hn)``
  (:class:`GRUResetBeforeFunction`); every bias is additive and goes into the input projection.

Each Function has three ways to run its loops, the same numbers (tests/test_native.py): up to
``dispatch.PATHS.sequence_kernel_max_hidden["gru"]`` units one native call each way (the
recurrent matmuls inside); wider layers a BLAS matmul a step around native step kernels; and,
without the native kernels, the same arithmetic as torch ops.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from rnnkit import dispatch, native
from rnnkit.bptt import ops
from rnnkit.bptt.norm import LN_EPS


def run(layer, xs, ws, first, mask):
    """One GRU layer without layer norm, all directions: xs (D, T, B, F) -> hs (D, T, B, H), (h_T,)."""
    w_ih, w_hh = ops.stack([w.weight_ih for w in ws]), ops.stack([w.weight_hh for w in ws])
    if layer.reset_after:  # b_hn sits inside r * (W_hn h + b_hn): kept apart
        xp = ops.project(xs, w_ih, ops.stack([w.bias_ih for w in ws]))
        hs, h_last = GRUFunction.apply(xp, first[0], w_hh, ops.stack([w.bias_hh for w in ws]), mask)
    else:
        xp = ops.project(xs, w_ih, ops.stack([ops.sum_biases(w) for w in ws]))  # every bias term is additive
        hs, h_last = GRUResetBeforeFunction.apply(xp, first[0], w_hh, mask)
    return hs, (h_last,)


def sequence_kernels(xp, name: str = "gru_seq"):
    """The GRU sequence kernels ``name`` for xp (D, T, B, 3H) when they are available and chosen, else None."""
    return dispatch.sequence_kernels(name, xp, xp.shape[-1] // 3)


# -- reset_after=True ---------------------------------------------------------------------------
class GRUFunction(torch.autograd.Function):
    """GRU with ``n = tanh(xp_n + r * (W_hn (h*m) + b_hn))``; gate order r, z, n.

    xp (D, T, B, 3H) incl. b_ih; h0 (D, B, H); w_hh (D, 3H, H); b_hh (D, 3H) | None; mask (D, B, H) | None.
    Returns hs (D, T, B, H) and h_T (D, B, H).
    """

    @staticmethod
    def forward(ctx, xp, h0, w_hh, b_hh, mask):
        D, T, B, G = xp.shape
        wt = w_hh.transpose(1, 2).contiguous()  # (D, H, 3H)
        hs = xp.new_empty(D, T + 1, B, G // 3)
        hs[:, 0] = h0
        hp = xp.new_empty(D, T, B, G)  # (h*m) W_hh^T + b_hh, kept for W_hn h + b_hn
        gates = xp.new_empty(D, T, B, G)  # r, z, n after their activations
        ctx.save_for_backward(w_hh)
        ctx.has_bias = b_hh is not None
        ctx.sequence, ctx.native = sequence_kernels(xp), None
        if ctx.sequence is not None:  # the whole loop, recurrent matmul included, in one native call
            xp, mask = xp.contiguous(), ops.optional_contiguous(mask)
            native.gru_sequence_forward(ctx.sequence[0], xp, wt, ops.optional_contiguous(b_hh), None, None, None,
                                        mask, None, None, hp, gates, hs, LN_EPS)
        else:
            ctx.native, mask = ops.step_kernels("gru", xp, mask)
            _forward_loop(ctx.native, xp, wt, b_hh, mask, hp, gates, hs)
        ctx.hs, ctx.hp, ctx.gates, ctx.mask = hs, hp, gates, mask
        return hs[:, 1:], hs[:, -1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs, grad_h):
        (w_hh,) = ctx.saved_tensors
        hs, gates, mask = ctx.hs, ctx.gates, ctx.mask
        if ctx.sequence is not None:
            dxp, dhp, dh0 = _sequence_backward(ctx, w_hh, grad_hs, grad_h)
        elif ctx.native is not None:
            dxp, dhp, dh0 = _native_backward(ctx, w_hh, grad_hs, grad_h)
        else:
            dxp, dhp, dh0 = _backward_loop(ctx, w_hh, grad_hs, grad_h)
        dw = ops.weight_grad(dhp, ops.recurrent_inputs(hs, mask))
        db = dhp.sum((1, 2)) if ctx.has_bias else None
        return dxp, dh0, dw, db, None


def _forward_loop(kernels, xp, wt, b_hh, mask, hp, gates, hs):
    """GRUFunction's forward loop: a matmul a step, then the native step kernel (``kernels``) or torch ops."""
    D, T, B, G = xp.shape
    H = G // 3
    hm = xp.new_empty(D, B, H)
    bias = None if b_hh is None else b_hh.unsqueeze(1)  # (D, 1, 3H)
    native_step = None
    if kernels is not None:  # after each step's matmul, the rest of the step in one native call
        native_step = native.GRUSteps(*kernels).bind_forward(xp, hp, gates, hs, mask, hm)
    for t in range(T):
        if native_step is not None and mask is not None and t > 0:
            hin = hm  # h_{t-1} * mask, written by the native step
        else:
            hin = ops.masked(hs[:, t], mask, hm)
        if bias is None:
            torch.bmm(hin, wt, out=hp[:, t])
        else:
            torch.baddbmm(bias, hin, wt, out=hp[:, t])
        if native_step is not None:
            native_step(t)
            continue
        g = gates[:, t]
        torch.add(xp[:, t, :, : 2 * H], hp[:, t, :, : 2 * H], out=g[..., : 2 * H]).sigmoid_()
        n = g[..., 2 * H :]
        torch.addcmul(xp[:, t, :, 2 * H :], g[..., :H], hp[:, t, :, 2 * H :], out=n).tanh_()
        torch.lerp(n, hs[:, t], g[..., H : 2 * H], out=hs[:, t + 1])  # n + z (h - n)


def _backward_loop(ctx, w_hh, grad_hs, grad_h):
    """GRUFunction's backward as torch ops: dL/dxp, dL/dhp (D, T, B, 3H) and dL/dh_0."""
    hs, hp, gates, mask = ctx.hs, ctx.hp, ctx.gates, ctx.mask
    D, T, B, G = gates.shape
    H = G // 3
    r, z, n = gates[..., :H], gates[..., H : 2 * H], gates[..., 2 * H :]
    h_prev = hs[:, :-1]
    # dL/d(pre-activations) = dh_t * factor_t; the factors do not depend on dh, so all steps at once.
    a_n = (1 - z) * (1 - n * n)  # n's pre-activation
    a_z = (h_prev - n) * z * (1 - z)
    a_r = a_n * hp[..., 2 * H :] * r * (1 - r)
    factors = torch.stack([a_r, a_z, a_n * r], 3)  # (D, T, B, 3, H): d/d of W_hh h + b_hh per gate
    dhp = torch.empty_like(gates)  # (D, T, B, 3H)
    dh_all = torch.empty_like(h_prev)  # dL/dh_t for every t
    tmp = hs.new_empty(D, B, H)
    torch.add(grad_hs[:, T - 1], grad_h, out=dh_all[:, T - 1])
    for t in range(T - 1, -1, -1):
        dh = dh_all[:, t]
        torch.mul(dh.unsqueeze(2), factors[:, t], out=dhp[:, t].view(D, B, 3, H))
        if t > 0:
            target = torch.addcmul(grad_hs[:, t - 1], dh, z[:, t], out=dh_all[:, t - 1])
        else:
            target = torch.mul(dh, z[:, 0])
        ops.accumulate_recurrent(target, dhp[:, t], w_hh, mask, tmp)
    dxp = torch.cat([dhp[..., : 2 * H], dh_all * a_n], -1)
    return dxp, dhp, target


def _sequence_backward(ctx, w_hh, grad_hs, grad_h):
    """GRUFunction's backward loop in one native call (the recurrent matmuls inside)."""
    hs, gates = ctx.hs, ctx.gates
    D, T, B, G = gates.shape
    carry = ops.final_grad(grad_h, hs, (D, B, G // 3))
    dxp, dhp = torch.empty_like(gates), torch.empty_like(gates)
    native.gru_sequence_backward(ctx.sequence[1], gates, ctx.hp, None, None, None, None, None, hs, w_hh.contiguous(),
                                 ctx.mask, ops.optional_contiguous(grad_hs), carry, dxp, None, dhp, None)
    return dxp, dhp, carry


def _native_backward(ctx, w_hh, grad_hs, grad_h):
    """GRUFunction's backward loop with the native step (rnnkit/native.c); same results as the torch loop.

    Per step t (last to first): one native call turns dL/dh_t = carry + rec * mask + grad_hs[t]
    into dL/dxp_t, dL/dhp_t and carry = z_t dL/dh_t; then rec = dL/dhp_t W_hh (one bmm).
    """
    hs, gates, mask = ctx.hs, ctx.gates, ctx.mask
    D, T, B, G = gates.shape
    carry = ops.final_grad(grad_h, hs, (D, B, G // 3))
    rec = hs.new_empty(D, B, G // 3)
    dxp, dhp = torch.empty_like(gates), torch.empty_like(gates)
    step = native.GRUSteps(*ctx.native).bind_backward(gates, ctx.hp, hs, rec, mask, grad_hs, carry, dxp, dhp)
    for t in range(T - 1, -1, -1):
        step(t, t == T - 1)
        torch.bmm(dhp[:, t], w_hh, out=rec)
    dh0 = carry.add_(rec) if mask is None else carry.addcmul_(rec, mask)
    return dxp, dhp, dh0


# -- reset_after=False --------------------------------------------------------------------------
class GRUResetBeforeFunction(torch.autograd.Function):
    """GRU with ``n = tanh(xp_n + W_hn (r * h * m) + b_hn)``; gate order r, z, n.

    xp (D, T, B, 3H) incl. both biases; h0 (D, B, H); w_hh (D, 3H, H); mask (D, B, H) | None.
    Returns hs (D, T, B, H) and h_T (D, B, H).
    """

    @staticmethod
    def forward(ctx, xp, h0, w_hh, mask):
        D, T, B, G = xp.shape
        H = G // 3
        wt_rz = w_hh[:, : 2 * H].transpose(1, 2).contiguous()  # (D, H, 2H)
        wt_n = w_hh[:, 2 * H :].transpose(1, 2).contiguous()  # (D, H, H)
        hs = xp.new_empty(D, T + 1, B, H)
        hs[:, 0] = h0
        gates = xp.new_empty(D, T, B, G)  # r, z, n after their activations
        u = xp.new_empty(D, T, B, H)  # r * h * m, the input of W_hn
        ctx.save_for_backward(w_hh)
        ctx.hs, ctx.u, ctx.gates = hs, u, gates
        ctx.mask = _reset_before_forward(ctx, xp, wt_rz, wt_n, mask)
        return hs[:, 1:], hs[:, -1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs, grad_h):
        D, T, B, G = ctx.gates.shape
        (w_hh,) = ctx.saved_tensors
        hs, gates, mask = ctx.hs, ctx.gates, ctx.mask
        H = G // 3
        w_rz, w_n = w_hh[:, : 2 * H], w_hh[:, 2 * H :]  # (D, 2H, H), (D, H, H)
        hm = ops.recurrent_inputs(hs, mask)
        da = torch.empty_like(gates)  # dL/d(pre-activations) r, z, n = dL/dxp
        if ctx.sequence is not None:
            dh = ops.final_grad(grad_h, hs, (D, B, H))
            native.gru_reset_before_sequence_backward(ctx.sequence[1], gates, hs, w_rz.contiguous(), w_n.contiguous(),
                                                      mask, ops.optional_contiguous(grad_hs), dh, da)
        elif ctx.native is not None:
            dh = _reset_before_native_backward(ctx, w_rz, w_n, grad_hs, grad_h, da)
        else:
            dh = _reset_before_backward_loop(ctx, w_rz, w_n, hm, grad_hs, grad_h, da)
        dw = torch.cat([ops.weight_grad(da[..., : 2 * H], hm), ops.weight_grad(da[..., 2 * H :], ctx.u)], 1)
        return da, dh, dw, None


def _reset_before_forward(ctx, xp, wt_rz, wt_n, mask):
    """GRUResetBeforeFunction's loop into ctx.hs, ctx.gates and ctx.u: in one native call (both
    recurrent matmuls included) when chosen, else step by step; returns the mask as the backward
    reads it."""
    ctx.sequence, ctx.native = sequence_kernels(xp, "gru_rb_seq"), None
    if ctx.sequence is not None:
        mask = ops.optional_contiguous(mask)
        native.gru_reset_before_sequence_forward(ctx.sequence[0], xp.contiguous(), wt_rz, wt_n, mask,
                                                 ctx.gates, ctx.u, ctx.hs)
    else:
        ctx.native, mask = ops.step_kernels("gru_rb", xp, mask)
        _reset_before_forward_loop(ctx.native, xp, wt_rz, wt_n, mask, ctx.gates, ctx.u, ctx.hs)
    return mask


def _reset_before_forward_loop(kernels, xp, wt_rz, wt_n, mask, gates, u, hs):
    """GRUResetBeforeFunction's forward loop: two matmuls a step, around native calls (``kernels``) or torch ops."""
    D, T, B, G = xp.shape
    H = G // 3
    hm = xp.new_empty(D, B, H)
    if kernels is not None:  # the element-wise work after each of the step's two matmuls: one native call
        steps = native.GRUResetBeforeSteps(*kernels).bind_forward(gates, u, hs, mask, hm)
    for t in range(T):
        if kernels is not None and mask is not None and t > 0:
            hin = hm  # h_{t-1} * mask, written by the previous step's native call
        else:
            hin = ops.masked(hs[:, t], mask, hm)
        g = gates[:, t]
        torch.baddbmm(xp[:, t, :, : 2 * H], hin, wt_rz, out=g[..., : 2 * H])
        if kernels is not None:
            steps.gates(t)
            torch.baddbmm(xp[:, t, :, 2 * H :], u[:, t], wt_n, out=g[..., 2 * H :])
            steps.state(t)
            continue
        g[..., : 2 * H].sigmoid_()
        torch.mul(g[..., :H], hin, out=u[:, t])
        torch.baddbmm(xp[:, t, :, 2 * H :], u[:, t], wt_n, out=g[..., 2 * H :]).tanh_()
        torch.lerp(g[..., 2 * H :], hs[:, t], g[..., H : 2 * H], out=hs[:, t + 1])


def _reset_before_backward_loop(ctx, w_rz, w_n, hm, grad_hs, grad_h, da):
    """GRUResetBeforeFunction's backward loop as torch ops: fills da (D, T, B, 3H), returns dL/dh_0."""
    hs, gates, mask = ctx.hs, ctx.gates, ctx.mask
    D, T, B, G = gates.shape
    H = G // 3
    r, z, n = gates[..., :H], gates[..., H : 2 * H], gates[..., 2 * H :]
    zn = torch.stack([(hs[:, :-1] - n) * z * (1 - z), (1 - z) * (1 - n * n)], 3)  # (D, T, B, 2, H): z, n
    a_r = hm * r * (1 - r)  # times dL/du gives r's pre-activation gradient
    dh = grad_hs[:, T - 1] + grad_h
    du, dhm, tmp = (hs.new_empty(D, B, H) for _ in range(3))
    for t in range(T - 1, -1, -1):
        dat = da[:, t]
        torch.mul(dh.unsqueeze(2), zn[:, t], out=dat[..., H:].view(D, B, 2, H))
        torch.bmm(dat[..., 2 * H :], w_n, out=du)
        torch.mul(du, a_r[:, t], out=dat[..., :H])
        torch.mul(du, r[:, t], out=dhm).baddbmm_(dat[..., : 2 * H], w_rz)  # dL/d(h*m)
        if t > 0:
            torch.addcmul(grad_hs[:, t - 1], dh, z[:, t], out=tmp)
        else:
            torch.mul(dh, z[:, t], out=tmp)
        if mask is None:
            torch.add(tmp, dhm, out=dh)
        else:
            torch.addcmul(tmp, dhm, mask, out=dh)
    return dh


def _reset_before_native_backward(ctx, w_rz, w_n, grad_hs, grad_h, da):
    """GRUResetBeforeFunction's backward loop with the native calls; fills da (D, T, B, 3H) and
    returns dL/dh0. Per step t (last to first): a native call turns carry + rec * mask +
    grad_hs[t] into dL/dh_t and the z, n pre-activation gradients; then du = da_n W_n; a native
    call gives da_r and rec = du r; then rec += da_rz W_rz.
    """
    hs, gates, mask = ctx.hs, ctx.gates, ctx.mask
    D, T, B, G = gates.shape
    H = G // 3
    carry = ops.final_grad(grad_h, hs, (D, B, H))
    rec, du = hs.new_empty(D, B, H), hs.new_empty(D, B, H)
    steps = native.GRUResetBeforeSteps(*ctx.native).bind_backward(gates, hs, rec, mask, grad_hs, carry, du, da)
    for t in range(T - 1, -1, -1):
        steps.back_state(t, t == T - 1)
        torch.bmm(da[:, t, :, 2 * H :], w_n, out=du)
        steps.back_gates(t)
        rec.baddbmm_(da[:, t, :, : 2 * H], w_rz)
    return carry.add_(rec) if mask is None else carry.addcmul_(rec, mask)
