"""Explicit BPTT for the LSTM without layer norm: ``c_t = f c_{t-1} + i g``, ``h_t = o tanh(c_t)``.

The Function works in rnnkit's LSTM kernel layout (:mod:`rnnkit.layout`: the kernel gate
order; on the step-kernel ways, the doubled g and the cell state carried as ``-2 c``). It runs
its loops one of three ways, the same numbers (tests/test_native.py):

* up to ``dispatch.PATHS.sequence_kernel_max_hidden["lstm"]`` units, one native call each way
  for the whole layer, the recurrent matmul inside (the cell state carried as ``c``);
* wider layers: a BLAS matmul a step, then one native step call for the element-wise rest;
* without the native kernels, the step kernel's arithmetic as torch ops.

Layer norm: :mod:`rnnkit.bptt.lstm_norm`.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnkit import dispatch, layout, native
from rnnkit.bptt import ops
from rnnkit.bptt.norm import LN_EPS

CHUNK = 32  # steps whose backward factors are computed together (cache-sized scratch, no big temporaries)


def kernel_weights(ws):
    """The directions' parameters in the kernel gate order: (stacked W_ih (D, 4H, F), W_hh
    (D, 4H, H), b_ih + b_hh (D, 4H) | None, the reordered per-direction namespaces)."""
    ws = [layout.lstm_direction_to_kernel(w) for w in ws]
    w_ih, w_hh = ops.stack([w.weight_ih for w in ws]), ops.stack([w.weight_hh for w in ws])
    return w_ih, w_hh, ops.stack([ops.sum_biases(w) for w in ws]), ws


def run(layer, xs, ws, first, mask):
    """One LSTM layer, all directions: xs (D, T, B, F) -> hs (D, T, B, H) and the final state (h_T, c_T)."""
    w_ih, w_hh, bias, _ = kernel_weights(ws)
    hs, h_last, c_last = LSTMFunction.apply(xs, w_ih, bias, first[0], first[1], w_hh, mask)
    return hs, (h_last, c_last)


class LSTMFunction(torch.autograd.Function):
    """LSTM in the kernel gate order (:mod:`rnnkit.layout`); ``c_t = f c_{t-1} + i g``, ``h_t = o tanh(c_t)``.

    xs (D, T, B, F) the layer input of every direction in its own time order; w_ih (D, 4H, F);
    bias (D, 4H) = b_ih + b_hh | None; h0, c0 (D, B, H); w_hh (D, 4H, H); mask (D, B, H) | None;
    all gate blocks in the kernel order (:func:`kernel_weights`).
    Returns hs (D, T, B, H), h_T and c_T (D, B, H).

    Cost structure (CPU, where a small op costs about as much as its dispatch and a fresh large
    buffer costs a page fault per 4 KiB): the input projection is written straight into the
    ``gates`` buffer ``CHUNK`` steps at a time, just before those steps run, so their slices are
    still in cache when they receive the recurrent matmul in place (``baddbmm_``) and the
    activations in place. Backward writes ``dL/d(pre-activations)`` into a reused workspace
    (:func:`rnnkit.bptt.ops.workspace`); the factors that do not depend on the incoming gradient
    are computed ``CHUNK`` steps at a time into a small scratch buffer; the weight and bias
    gradients are one matmul after the loop (:func:`_weight_grads`).
    """

    @staticmethod
    def forward(ctx, xs, w_ih, bias, h0, c0, w_hh, mask):
        ctx.set_materialize_grads(False)  # unused outputs (hs when only h_T is used) give None
        ctx.sequence = dispatch.sequence_kernels("lstm_seq", xs, h0.shape[-1])
        ctx.save_for_backward(xs, w_ih, w_hh)
        ctx.has_bias = bias is not None
        if ctx.sequence is not None:
            return _sequence_forward(ctx, xs, w_ih, bias, h0, c0, w_hh, mask)
        return _step_forward(ctx, xs, w_ih, bias, h0, c0, w_hh, mask)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs, grad_h, grad_c):
        xs, w_ih, w_hh = ctx.saved_tensors
        D, T, B, G = ctx.gates.shape
        dh, dc = ops.final_lstm_grads(grad_h, grad_c, ctx.gates)
        da = ops.workspace(ctx.gates)  # (D, T, B, 4H): dL/d(pre-activations), kernel gate order
        if ctx.sequence is not None:
            native.lstm_sequence_backward(ctx.sequence[1], ctx.gates, None, None, None, None, None, None, ctx.c_states,
                                          ctx.tanh_c, ctx.hs, w_hh.contiguous(), ctx.mask,
                                          ops.optional_contiguous(grad_hs), dh, dc, da, None, None)
        elif ctx.native is not None:
            dh = _native_backward_loop(ctx, w_hh, grad_hs, dh, dc, da)
        else:
            dh = _backward_loop(ctx, w_hh, grad_hs, dh, dc, da)
        hm = ctx.hm if ctx.sequence is None else ops.recurrent_inputs(ctx.hs, ctx.mask)
        need = ctx.needs_input_grad
        dxs = torch.bmm(da.view(D, T * B, G), w_ih).view(xs.shape) if need[0] else None
        dw_ih, dw_hh, db = _weight_grads(da, xs, hm, need[1], ctx.has_bias and need[2])
        return dxs, dw_ih, db, dh, dc, dw_hh, None


def _sequence_forward(ctx, xs, w_ih, bias, h0, c0, w_hh, mask):
    """LSTMFunction's forward in one native call (xz = xs W_ih^T + bias; c and tanh(c) kept)."""
    D, T, B, _ = xs.shape
    H = h0.shape[-1]
    xz = ops.project(xs, w_ih, bias).contiguous()
    gates, tanh_c = xs.new_empty(D, T, B, 4 * H), xs.new_empty(D, T, B, H)
    hs, c_states = xs.new_empty(D, T + 1, B, H), xs.new_empty(D, T + 1, B, H)
    hs[:, 0], c_states[:, 0] = h0, c0
    mask = ops.optional_contiguous(mask)
    native.lstm_sequence_forward(ctx.sequence[0], xz, w_hh.transpose(1, 2).contiguous(), None, None, None, None, None,
                                 mask, None, None, gates, c_states, tanh_c, hs, LN_EPS)
    ctx.gates, ctx.c_states, ctx.tanh_c, ctx.hs, ctx.mask = gates, c_states, tanh_c, hs, mask
    return hs[:, 1:], hs[:, -1].clone(), c_states[:, -1].clone()


def _step_forward(ctx, xs, w_ih, bias, h0, c0, w_hh, mask):
    """LSTMFunction's forward in the step-kernel layout: a matmul a step, then a native call or torch ops."""
    D, T, B, _ = xs.shape
    H = h0.shape[-1]
    gates = xs.new_empty(D, T, B, 4 * H)  # pre-activations, then activations in place
    w_ih2, wt, bias2 = _doubled_g(w_ih, w_hh, bias)
    hs, neg_two_c = xs.new_empty(D, T + 1, B, H), xs.new_empty(D, T + 1, B, H)  # h_t, -2 c_t
    hs[:, 0] = h0
    layout.lstm_cell_to_step_kernel(c0, out=neg_two_c[:, 0])
    u = xs.new_empty(D, T, B, H)  # u_t = sigmoid(-2 c_t) = (1 - tanh(c_t)) / 2
    hm = hs[:, :-1] if mask is None else xs.new_empty(D, T, B, H)  # input of the recurrent matmul
    if mask is not None:
        mask = mask.contiguous()
        torch.mul(hs[:, 0], mask, out=hm[:, 0])

    def project(t: int) -> None:  # the input projection of the next steps, while their gates are in cache
        if t % CHUNK == 0:
            ops.project(xs[:, t : t + CHUNK], w_ih2, bias2, out=gates[:, t : t + CHUNK])

    ctx.native = native.kernels_for("lstm", xs)
    if ctx.native is not None:
        _native_forward_loop(ctx.native, project, wt, gates, neg_two_c, u, hs, mask, hm)
    else:
        _forward_loop(project, wt, gates, neg_two_c, u, hs, mask, hm)
    ctx.gates, ctx.neg_two_c, ctx.u, ctx.hm, ctx.mask = gates, neg_two_c, u, hm, mask
    return hs[:, 1:], hs[:, -1].clone(), layout.lstm_cell_from_step_kernel(neg_two_c[:, -1])


def _native_forward_loop(kernels, project, wt, gates, neg_two_c, u, hs, mask, hm):
    """Each step: the recurrent matmul, then the element-wise rest of the step in one native call."""
    step = native.LSTMSteps(*kernels).bind_forward(gates, neg_two_c, u, hs, mask, hm)
    full, hm_l = gates.unbind(1), hm.unbind(1)
    for t in range(len(full)):
        project(t)
        full[t].baddbmm_(hm_l[t], wt)
        step(t)


def _forward_loop(project, wt, gates, neg_two_c, u, hs, mask, hm):
    """The native step kernel's arithmetic as torch ops, one step at a time.

    The loop keeps -2 c_t instead of c_t: then tanh(c_t) = 1 - 2 sigmoid(-2 c_t) gives
    h_t = o (1 - 2 u_t) in one addcmul; c_t to h_t take four small ops instead of six. (ATen's
    CPU tanh enters an OpenMP parallel region at any size, while sigmoid/mul/addcmul of a
    (B, H) slice run inline.)
    """
    D, T, B, G = gates.shape
    H = G // 4
    gv = gates.view(D, T, B, 4, H)
    full, gg = gates.unbind(1), gates[..., 3 * H :].unbind(1)
    o, i, f = (gv[:, :, :, k].unbind(1) for k in range(3))
    h_l, neg_two_c_l, u_l, hm_l = hs.unbind(1), neg_two_c.unbind(1), u.unbind(1), hm.unbind(1)
    minus_one, two = gates.new_tensor(-1.0), gates.new_tensor(2.0)
    for t in range(T):
        project(t)
        if mask is not None and t > 0:
            torch.mul(h_l[t], mask, out=hm_l[t])
        full[t].baddbmm_(hm_l[t], wt)
        full[t].sigmoid_()  # o, i, f; and sigmoid(2 a_g) in the g block
        torch.addcmul(minus_one, gg[t], two, out=gg[t])  # g = tanh(a_g) = 2 sigmoid(2 a_g) - 1
        m = torch.mul(f[t], neg_two_c_l[t], out=neg_two_c_l[t + 1]).addcmul_(i[t], gg[t], value=-2)  # -2 c_t
        u_t = torch.sigmoid(m, out=u_l[t])
        torch.addcmul(o[t], o[t], u_t, value=-2, out=h_l[t + 1])  # h_t = o tanh(c_t)


def _native_backward_loop(ctx, w_hh, grad_hs, dh, dc, da):
    """Each step (last to first): one native call, then dL/dh_{t-1} = (da_t W_hh) * mask + ...;
    dc (D, B, H) in: dL/dc_T, out: dL/dc_0; fills da; returns dL/dh_0."""
    rec = dh  # for the last step: the final state's gradient, not masked
    step = native.LSTMSteps(*ctx.native).bind_backward(ctx.gates, ctx.u, ctx.neg_two_c, rec, ctx.mask, grad_hs, dc, da)
    da_full = da.unbind(1)
    for t in range(len(da_full) - 1, -1, -1):
        step(t, t == len(da_full) - 1)
        torch.bmm(da_full[t], w_hh, out=rec)
    return rec if ctx.mask is None else rec.mul_(ctx.mask)


def _backward_loop(ctx, w_hh, grad_hs, dh, dc, da):
    """The native step kernel's backward as torch ops, ``CHUNK`` steps of factors at a time;
    dc (D, B, H) in: dL/dc_T, out: dL/dc_0; fills da; returns dL/dh_0."""
    gates, u, neg_two_c, mask = ctx.gates, ctx.u, ctx.neg_two_c, ctx.mask
    D, T, B, G = gates.shape
    H = G // 4
    if grad_hs is not None:
        dh = dh + grad_hs[:, T - 1]
    gv, dav = gates.view(D, T, B, 4, H), da.view(D, T, B, 4, H)
    da_full, da_o, da_ifg = da.unbind(1), dav[:, :, :, 0].unbind(1), dav[:, :, :, 1:].unbind(1)
    grads = None if grad_hs is None else grad_hs.unbind(1)
    f = gv[:, :, :, 2].unbind(1)
    tmp, scratch = gates.new_empty(D, B, H), gates.new_empty(D, min(T, CHUNK), B, 5, H)
    for t1 in range(T, 0, -CHUNK):
        t0 = max(0, t1 - CHUNK)
        fo, fifg, to_c = _step_state_factors(gv[:, t0:t1], u[:, t0:t1], neg_two_c[:, t0:t1], scratch[:, : t1 - t0])
        for t in range(t1 - 1, t0 - 1, -1):
            j = t - t0
            dc.addcmul_(dh, to_c[j], value=4.0)  # dL/dc_t (to_c is o (1 - tanh^2 c) / 4)
            torch.mul(dh, fo[j], out=da_o[t])
            torch.mul(dc.unsqueeze(2), fifg[j], out=da_ifg[t])
            dc.mul_(f[t])  # dL/dc_{t-1}, through c_t = f c_{t-1} + ...
            grad = grads[t - 1] if grads is not None and t > 0 else None
            ops.recurrent_grad(dh, da_full[t], w_hh, mask, grad, tmp)  # dL/dh_{t-1}
    return dh


def _doubled_g(w_ih: Tensor, w_hh: Tensor, bias: Optional[Tensor]):
    """Copies of w_ih (D, 4H, F), w_hh^T (D, H, 4H) and bias (D, 4H) in the step kernels' form,
    the g gate's rows doubled (:func:`rnnkit.layout.double_lstm_g_`).

    Why: the forward then gets all four gates from ONE sigmoid per step, g = tanh(a) =
    2 sigmoid(2a) - 1. ATen's tanh splits even a small call over the intra-op threads, so one
    ``sigmoid_`` over (B, 4H) and one ``addcmul`` cost less than ``sigmoid_`` over (B, 3H) and
    ``tanh_`` over (B, H). The backward needs only g itself.
    """
    w_ih2 = layout.double_lstm_g_(w_ih.clone(), -2)
    wt = layout.double_lstm_g_(w_hh.transpose(1, 2).contiguous(), -1)
    bias2 = None if bias is None else layout.double_lstm_g_(bias.clone(), -1)
    return w_ih2, wt, bias2


def _weight_grads(da: Tensor, xs: Tensor, hm: Tensor, need_ih: bool, need_bias: bool):
    """dW_ih, dW_hh, db (None where not needed) in ONE pass over da (D, T, B, G).

    ``da^T [xs | hm | 1]`` is the three sums over (t, b) at once: reading the (T*B, G) gradient
    once instead of three times, for the price of copying the smaller [xs | hm] side.
    """
    F_, H = xs.shape[-1], hm.shape[-1]
    parts = ([xs] if need_ih else []) + [hm] + ([hm.new_ones(hm.shape[:-1] + (1,))] if need_bias else [])
    grads = ops.weight_grad(da, torch.cat(parts, -1) if len(parts) > 1 else hm)
    k = F_ if need_ih else 0
    dw_ih = grads[..., :k] if need_ih else None
    db = grads[..., -1] if need_bias else None
    return dw_ih, grads[..., k : k + H], db


def _gate_derivatives(gv: Tensor, scratch: Tensor):
    """The first four factor slots: [o', i'g, f', i(1-g^2)] where a' is the activation derivative
    s(1-s) of a sigmoid gate. gv (D, n, B, 4, H) activations (kernel order); scratch (D, n, B, 5, H).

    s(1-s) as s - s*s and 1-g^2 as 1 - g*g, written straight into the scratch slots: fewer passes
    than with a (D, n, B, 3, H) temporary for 1 - s.
    """
    o, i, f, g = gv.unbind(3)
    fo, fi, ff, fg, to_c = scratch.unbind(3)
    torch.addcmul(o, o, o, value=-1, out=fo)
    torch.addcmul(i, i, i, value=-1, out=fi).mul_(g)
    torch.addcmul(f, f, f, value=-1, out=ff)
    torch.addcmul(i, i, torch.mul(g, g, out=fg), value=-1, out=fg)  # i (1 - g^2)
    return o, fo, ff, to_c


def lstm_factors(gv: Tensor, tanh_c: Tensor, c_prev: Tensor, scratch: Tensor):
    """The gradient factors of n steps that do not depend on dL/dh, as per-step lists of views.

    gv (D, n, B, 4, H) activations (kernel order); tanh_c = tanh(c_t) (or of LN(c_t)), c_prev =
    c_{t-1} (D, n, B, H). scratch (D, n, B, 5, H) receives [o' tanh(c), i'g, f' c_{t-1}, g'i,
    o (1 - tanh^2 c)] where a' is the activation derivative (s(1-s) for the sigmoid gates, 1-g^2
    for g). Returns lists over the n steps of: the o factor (D, B, H); the i, f, g factors
    (D, B, 3, H); the dh -> dc factor (D, B, H).
    """
    o, fo, ff, to_c = _gate_derivatives(gv, scratch)
    fo.mul_(tanh_c)
    ff.mul_(c_prev)
    torch.addcmul(o, o, torch.mul(tanh_c, tanh_c, out=to_c), value=-1, out=to_c)  # o (1 - tanh^2 c)
    return fo.unbind(1), scratch[:, :, :, 1:4].unbind(1), to_c.unbind(1)


def _step_state_factors(gv: Tensor, u: Tensor, neg_two_c_prev: Tensor, scratch: Tensor):
    """:func:`lstm_factors` from the step-kernel state: u = sigmoid(-2 c_t) and -2 c_{t-1}.

    With tanh(c) = 1 - 2u and 1 - tanh^2(c) = 4u(1 - u) the factors take as many passes as from
    tanh(c) itself; the dh -> dc factor comes out divided by 4 (o u (1 - u)).
    """
    o, fo, ff, to_c = _gate_derivatives(gv, scratch)
    fo.addcmul_(fo, u, value=-2)  # o'(1 - 2u)
    torch.addcmul(ff.new_zeros(()), ff, neg_two_c_prev, value=-0.5, out=ff)  # f' c_{t-1}
    torch.addcmul(u, u, u, value=-1, out=to_c).mul_(o)  # o u (1 - u) = o (1 - tanh^2 c) / 4
    return fo.unbind(1), scratch[:, :, :, 1:4].unbind(1), to_c.unbind(1)
