"""Explicit BPTT for the Elman RNN: ``h_t = act(xp_t + (h_{t-1} * m) W_hh^T)``, act = tanh or relu.

Every bias is additive here, so ``b_ih + b_hh`` is added once in the input projection ``xp``.
Up to ``dispatch.PATHS.sequence_kernel_max_hidden["rnn"]`` units the whole loop is one native
call each way (the recurrent matmul inside); wider layers, or no native kernels, run the loop
as torch ops.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from rnnkit import dispatch, native
from rnnkit.bptt import ops


def run(layer, xs, ws, first, mask):
    """One RNN layer, all directions: xs (D, T, B, F) -> hs (D, T, B, H) and the final state (h_T,)."""
    w_ih, w_hh = ops.stack([w.weight_ih for w in ws]), ops.stack([w.weight_hh for w in ws])
    xp = ops.project(xs, w_ih, ops.stack([ops.sum_biases(w) for w in ws]))  # (D, T, B, H)
    hs, h_last = RNNFunction.apply(xp, first[0], w_hh, mask, layer.nonlinearity)
    return hs, (h_last,)


class RNNFunction(torch.autograd.Function):
    """``h_t = act(xp_t + (h_{t-1} * m) W_hh^T)``, act = tanh or relu.

    xp (D, T, B, H) incl. both biases; h0 (D, B, H); w_hh (D, H, H); mask (D, B, H) | None.
    Returns hs (D, T, B, H) and h_T (D, B, H).
    """

    @staticmethod
    def forward(ctx, xp, h0, w_hh, mask, nonlinearity):
        D, T, B, H = xp.shape
        wt = w_hh.transpose(1, 2).contiguous()  # (D, H, H)
        hs = xp.new_empty(D, T + 1, B, H)
        hs[:, 0] = h0
        ctx.sequence = dispatch.sequence_kernels("rnn_seq", xp, H)
        if ctx.sequence is not None:  # the whole loop, recurrent matmul included, in one native call
            mask = ops.optional_contiguous(mask)
            native.rnn_sequence_forward(ctx.sequence[0], xp.contiguous(), wt, mask, hs, nonlinearity == "relu")
        else:
            hm = xp.new_empty(D, B, H)
            act = torch.Tensor.tanh_ if nonlinearity == "tanh" else torch.Tensor.relu_
            for t in range(T):
                act(torch.baddbmm(xp[:, t], ops.masked(hs[:, t], mask, hm), wt, out=hs[:, t + 1]))
        ctx.hs, ctx.mask, ctx.nonlinearity = hs, mask, nonlinearity
        ctx.save_for_backward(w_hh)
        return hs[:, 1:], hs[:, -1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs, grad_h):
        (w_hh,) = ctx.saved_tensors
        hs, mask = ctx.hs, ctx.mask
        D, T1, B, H = hs.shape
        T = T1 - 1
        if ctx.sequence is not None:
            dh = ops.final_grad(grad_h, hs, (D, B, H))
            da = hs.new_empty(D, T, B, H)
            native.rnn_sequence_backward(ctx.sequence[1], hs, w_hh.contiguous(), mask,
                                         ops.optional_contiguous(grad_hs), dh, da, ctx.nonlinearity == "relu")
        else:
            da, dh = _backward_loop(hs, w_hh, mask, grad_hs, grad_h, ctx.nonlinearity)
        return da, dh, ops.weight_grad(da, ops.recurrent_inputs(hs, mask)), None, None


def _backward_loop(hs, w_hh, mask, grad_hs, grad_h, nonlinearity):
    """RNNFunction's backward as torch ops: dL/d(pre-activations) (D, T, B, H) and dL/dh_0."""
    D, T1, B, H = hs.shape
    T = T1 - 1
    out = hs[:, 1:]
    deriv = 1 - out * out if nonlinearity == "tanh" else (out > 0).to(out.dtype)  # (D, T, B, H)
    da = torch.empty_like(out)  # dL/d(pre-activation), all steps
    dh, tmp = grad_hs[:, T - 1] + grad_h, hs.new_empty(D, B, H)
    for t in range(T - 1, -1, -1):
        torch.mul(dh, deriv[:, t], out=da[:, t])
        grad = grad_hs[:, t - 1] if t > 0 else torch.zeros_like(dh)
        ops.recurrent_grad(dh, da[:, t], w_hh, mask, grad, tmp)
    return da, dh
