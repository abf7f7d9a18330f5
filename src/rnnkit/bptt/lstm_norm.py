"""Explicit BPTT for the layer-normed LSTM (Ba et al., 2016), in the kernel gate order of :mod:`rnnkit.layout`.

Three ways to run the loops, the same numbers (tests/test_native.py): up to
``dispatch.PATHS.sequence_kernel_max_hidden["lstm"]`` units one native call each way (the
recurrent matmul and the layer norms inside); wider layers a matmul a step around a native
step call; without the native kernels, torch ops. These kernels carry the cell state as ``c``
and take the undoubled g (see :mod:`rnnkit.layout`).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from rnnkit import dispatch, native
from rnnkit.bptt import ops
from rnnkit.bptt.lstm import CHUNK, kernel_weights, lstm_factors
from rnnkit.bptt.norm import LN_EPS, input_gate_norm, ln_backward

_SUMS = 14  # float64 gradient sums of the native backward, per direction: g_hh, g_x, bias (4H each); w_c, b_c (H each)


def run(layer, xs, ws, first, mask):
    """One layer-normed LSTM layer, all directions: xs (D, T, B, F) -> hs (D, T, B, H), (h_T, c_T)."""
    w_ih, w_hh, bias, ws = kernel_weights(ws)
    xz, g_x = ops.project(xs, w_ih, None), ops.stack([w.ln_ih for w in ws])  # (D, T, B, 4H), (D, 4H)
    norm = [ops.stack([getattr(w, n) for w in ws]) for n in ("ln_hh", "ln_c_weight", "ln_c_bias")]
    if native.kernels_for("lstm_ln", xz) is not None:  # the step kernels normalise xz too
        hs, h_last, c_last = LSTMNormFunction.apply(xz, first[0], first[1], w_hh, g_x, bias, *norm, mask)
    else:
        xp = input_gate_norm(xz, g_x, bias, 4)
        hs, h_last, c_last = LSTMNormFunction.apply(xp, first[0], first[1], w_hh, None, None, *norm, mask)
    return hs, (h_last, c_last)


class LSTMNormFunction(torch.autograd.Function):
    """LSTM with layer norm, gates in the kernel order (:mod:`rnnkit.layout`)::

        a_t   = LN_gate(xz_t) * g_x + bias + LN_gate(hm_t W_hh^T) * g_hh     LN over each gate's H units
        c_t   = f c_{t-1} + i g
        h_t   = o tanh(LN(c_t) * w_c + b_c)

    With the native kernels, ``xin`` is xz = x W_ih^T (D, T, B, 4H) and the kernels normalise it
    too (g_x (D, 4H) and bias (D, 4H) = b_ih + b_hh | None are arguments): the normalised input
    projection is never written out. Without them, ``xin`` is xp = LN_gate(xz) * g_x + bias,
    computed by autograd outside, and g_x, bias are None.
    h0, c0 (D, B, H); w_hh (D, 4H, H); g_hh (D, 4H); w_c, b_c (D, H); mask (D, B, H) | None.
    Returns hs (D, T, B, H), h_T and c_T (D, B, H).

    The torch loop's per-step layer norms use ATen's ``native_layer_norm`` (which returns the
    mean and 1/std it used) and their exact gradient ``native_layer_norm_backward``; its gains'
    gradients are sums over all steps after the loop, with the normalised values recomputed in
    chunks. The native backward sums them inside the step calls, in float64.
    """

    @staticmethod
    def forward(ctx, xin, h0, c0, w_hh, g_x, bias, g_hh, w_c, b_c, mask):
        D, T, B, G = xin.shape
        H = G // 4
        ctx.set_materialize_grads(False)
        wt = w_hh.transpose(1, 2).contiguous()  # (D, H, 4H)
        gates, hp = xin.new_empty(D, T, B, G), xin.new_empty(D, T, B, G)
        hs, c_states = xin.new_empty(D, T + 1, B, H), xin.new_empty(D, T + 1, B, H)
        hs[:, 0], c_states[:, 0] = h0, c0
        tanh_c = xin.new_empty(D, T, B, H)  # tanh(LN(c_t) w_c + b_c)
        kernels = ctx.native = None if g_x is None else native.kernels_for("lstm_ln", xin)
        assert (kernels is None) == (g_x is None), "the input projection is normalised by the native kernels only"
        ctx.save_for_backward(w_hh, g_hh, w_c)
        ctx.gates, ctx.hp, ctx.c_states, ctx.tanh_c, ctx.hs = gates, hp, c_states, tanh_c, hs
        ctx.g_x, ctx.has_bias = g_x, bias is not None
        ctx.sequence = None if g_x is None else dispatch.sequence_kernels("lstm_seq", xin, H)
        if ctx.sequence is not None:  # the whole loop, matmul and layer norms included, in one native call
            xin, mask = xin.contiguous(), ops.optional_contiguous(mask)
            ctx.stats = xin.new_empty(18 * D * T * B)  # mean, 1/std: of xz and hp per gate (4 each), of c
            weights = [ops.optional_contiguous(w) for w in (g_x, bias, g_hh, w_c, b_c)]
            native.lstm_sequence_forward(ctx.sequence[0], xin, wt, *weights, mask, hp, ctx.stats, gates, c_states,
                                         tanh_c, hs, LN_EPS)
            ctx.xz, ctx.g_x = xin, weights[0]
        else:
            ctx.hm = hs[:, :-1] if mask is None else xin.new_empty(D, T, B, H)  # the recurrent matmul's input
            if kernels is not None:
                xin, mask = xin.contiguous(), ops.optional_contiguous(mask)
                ctx.xz, ctx.stats = xin, _native_step_forward(kernels, xin, wt, g_x, bias, g_hh, w_c, b_c, mask, ctx)
            else:
                ctx.stats_h, ctx.stats_c = _forward_loop(xin, wt, g_hh, w_c, b_c, mask, ctx)
        ctx.mask = mask
        return hs[:, 1:], hs[:, -1].clone(), c_states[:, -1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs, grad_h, grad_c):
        dh, dc = ops.final_lstm_grads(grad_h, grad_c, ctx.gates)
        w_hh, g_hh, w_c = ctx.saved_tensors
        D, T, B, G = ctx.gates.shape
        if ctx.sequence is None and ctx.native is None:
            return _backward_loop(ctx, w_hh, g_hh, w_c, grad_hs, dh, dc)
        dxz, dq = torch.empty_like(ctx.gates), ops.workspace(ctx.gates)  # dL/dxz; dL/d(hm W_hh^T) before its LN
        sums = ctx.gates.new_zeros(D * _SUMS * (G // 4), dtype=torch.float64)
        if ctx.sequence is not None:
            native.lstm_sequence_backward(ctx.sequence[1], ctx.gates, ctx.xz, ctx.hp, ctx.stats, ctx.g_x,
                                          g_hh.contiguous(), w_c.contiguous(), ctx.c_states, ctx.tanh_c, ctx.hs,
                                          w_hh.contiguous(), ctx.mask, ops.optional_contiguous(grad_hs), dh, dc, dxz,
                                          dq, sums)
            hm = ops.recurrent_inputs(ctx.hs, ctx.mask)
        else:
            dh = _native_backward_loop(ctx, w_hh, g_hh, w_c, grad_hs, dh, dc, dxz, dq, sums)
            hm = ctx.hm
        sizes = [D * G] * 3 + [D * G // 4] * 2
        dg_hh, dg_x, dbias, dw_c, db_c = (x.view(D, -1).to(ctx.gates.dtype) for x in sums.split(sizes))
        return (dxz, dh, dc, ops.weight_grad(dq, hm), dg_x, dbias if ctx.has_bias else None, dg_hh, dw_c, db_c, None)


def _native_step_forward(kernels, xz, wt, g_x, bias, g_hh, w_c, b_c, mask, ctx):
    """The forward loop with the native step kernels (after each step's matmul, the rest of the
    step in one call). Returns the layer norms' statistics."""
    hs, hm, hp = ctx.hs, ctx.hm, ctx.hp
    D, T, B, _ = xz.shape
    stats = [xz.new_empty(D, T, B, 4) for _ in range(4)] + [xz.new_empty(D, T, B) for _ in range(2)]
    step = native.LSTMNormSteps(*kernels).bind_forward(xz, hp, g_x, bias, g_hh, w_c, b_c, ctx.gates, stats,
                                                       ctx.c_states, ctx.tanh_c, hs, mask, hm, LN_EPS)
    if mask is not None:
        torch.mul(hs[:, 0], mask, out=hm[:, 0])
    for t in range(T):
        torch.bmm(hm[:, t], wt, out=hp[:, t])
        step(t)
    return stats


def _forward_loop(xp, wt, g_hh, w_c, b_c, mask, ctx):
    """The forward loop as torch ops. Returns the per-step (mean, rstd) of the recurrent
    projection's gate norms, (D, B, 4, 1), and of LN(c_t), (D, B, 1)."""
    D, T, B, G = xp.shape
    H = G // 4
    gates = ctx.gates
    stats_h, stats_c = [], []
    gv = gates.view(D, T, B, 4, H)
    full, sig, gg = gates.unbind(1), gates[..., : 3 * H].unbind(1), gates[..., 3 * H :].unbind(1)
    o, i, f = (gv[:, :, :, k].unbind(1) for k in range(3))
    xp_l, hp_l = xp.unbind(1), ctx.hp.unbind(1)
    h_l, c_l, tanh_c_l, hm_l = ctx.hs.unbind(1), ctx.c_states.unbind(1), ctx.tanh_c.unbind(1), ctx.hm.unbind(1)
    gain, wc, bc = g_hh.unsqueeze(1), w_c.unsqueeze(1), b_c.unsqueeze(1)  # (D, 1, X)
    for t in range(T):
        if mask is not None:
            torch.mul(h_l[t], mask, out=hm_l[t])
        torch.bmm(hm_l[t], wt, out=hp_l[t])
        hat, mean, rstd = torch.native_layer_norm(hp_l[t].view(D, B, 4, H), (H,), None, None, LN_EPS)
        stats_h.append((mean, rstd))
        torch.addcmul(xp_l[t], hat.view(D, B, G), gain, out=full[t])
        sig[t].sigmoid_()
        gg[t].tanh_()
        c = torch.mul(f[t], c_l[t], out=c_l[t + 1]).addcmul_(i[t], gg[t])
        c_hat, mean, rstd = torch.native_layer_norm(c, (H,), None, None, LN_EPS)
        stats_c.append((mean, rstd))
        torch.addcmul(bc, c_hat, wc, out=tanh_c_l[t]).tanh_()
        torch.mul(o[t], tanh_c_l[t], out=h_l[t + 1])
    return stats_h, stats_c


def _native_backward_loop(ctx, w_hh, g_hh, w_c, grad_hs, rec, dc, dxz, dhp, sums):
    """The backward loop with the native step (rnnkit/native.c); same results as the torch loop.

    Per step t (last to first): one native call turns rec (dL/dhp_{t+1} W_hh) into dL/dh_t and
    writes dL/dxz_t, dL/dhp_t and dL/dc_{t-1}; then rec = dL/dhp_t W_hh (one bmm). Returns dL/dh_0.
    """
    T = ctx.gates.shape[1]
    step = native.LSTMNormSteps(*ctx.native).bind_backward(ctx.gates, ctx.xz, ctx.hp, ctx.stats, ctx.g_x, g_hh, w_c,
                                                           ctx.c_states, ctx.tanh_c, rec, ctx.mask, grad_hs, dc, dxz,
                                                           dhp, sums)
    for t in range(T - 1, -1, -1):
        step(t, t == T - 1)
        torch.bmm(dhp[:, t], w_hh, out=rec)
    return rec if ctx.mask is None else rec.mul_(ctx.mask)


def _backward_loop(ctx, w_hh, g_hh, w_c, grad_hs, dh, dc):
    """LSTMNormFunction's backward as torch ops, ``CHUNK`` steps of factors at a time; returns its gradients."""
    gates, hp, c_states, tanh_c, mask = ctx.gates, ctx.hp, ctx.c_states, ctx.tanh_c, ctx.mask
    D, T, B, G = gates.shape
    H = G // 4
    if grad_hs is not None:
        dh = dh + grad_hs[:, T - 1]
    gv = gates.view(D, T, B, 4, H)
    da = torch.empty_like(gates)  # dL/d(pre-activations) = dL/dxp, returned
    dav = da.view(D, T, B, 4, H)
    da_full, da_o, da_ifg = da.unbind(1), dav[:, :, :, 0].unbind(1), dav[:, :, :, 1:].unbind(1)
    dhp = ops.workspace(gates)  # dL/d(hm W_hh^T) before its layer norm, for dW_hh only
    dhp_l = dhp.unbind(1)
    dtc = torch.empty_like(tanh_c)  # dL/d(LN(c_t) w_c + b_c), kept for the gradients of w_c, b_c
    dtc_l, hp_l, c_l = dtc.unbind(1), hp.unbind(1), c_states.unbind(1)
    grads = None if grad_hs is None else grad_hs.unbind(1)
    f = gv[:, :, :, 2].unbind(1)
    scratch = gates.new_empty(D, min(T, CHUNK), B, 5, H)
    gain, wc = g_hh.unsqueeze(1), w_c.unsqueeze(1)
    tmp, dhat = gates.new_empty(D, B, H), gates.new_empty(D, B, G)
    for t1 in range(T, 0, -CHUNK):
        t0 = max(0, t1 - CHUNK)
        fo, fifg, to_c = lstm_factors(gv[:, t0:t1], tanh_c[:, t0:t1], c_states[:, t0:t1], scratch[:, : t1 - t0])
        for t in range(t1 - 1, t0 - 1, -1):
            j = t - t0
            torch.mul(dh, to_c[j], out=dtc_l[t])
            mean, rstd = ctx.stats_c[t]
            dc.add_(ln_backward(torch.mul(dtc_l[t], wc, out=tmp), c_l[t + 1], mean, rstd))  # dL/dc_t
            torch.mul(dh, fo[j], out=da_o[t])
            torch.mul(dc.unsqueeze(2), fifg[j], out=da_ifg[t])
            dc.mul_(f[t])  # dL/dc_{t-1}, through c_t = f c_{t-1} + ...
            mean, rstd = ctx.stats_h[t]
            torch.mul(da_full[t], gain, out=dhat)
            dhp_l[t].copy_(ln_backward(dhat.view(D, B, 4, H), hp_l[t].view(D, B, 4, H), mean, rstd).view(D, B, G))
            grad = grads[t - 1] if grads is not None and t > 0 else None
            ops.recurrent_grad(dh, dhp_l[t], w_hh, mask, grad, tmp)  # dL/dh_{t-1}
    mean_h, rstd_h = (torch.stack(z, 1) for z in zip(*ctx.stats_h))  # (D, T, B, 4, 1)
    mean_c, rstd_c = (torch.stack(z, 1) for z in zip(*ctx.stats_c))  # (D, T, B, 1)
    dg_hh, dw_c = _norm_gain_grads(da, hp, c_states, dtc, mean_h, rstd_h, mean_c, rstd_c)
    return da, dh, dc, ops.weight_grad(dhp, ctx.hm), None, None, dg_hh, dw_c, dtc.sum((1, 2)), None


def _norm_gain_grads(da, hp, c_states, dtc, mean_h, rstd_h, mean_c, rstd_c):
    """Gradients of the gate-norm gains g_hh (D, 4H) and of w_c (D, H): sums over all steps of the
    incoming gradient times the normalised value, recomputed from the statistics in chunks.

    da, hp (D, T, B, 4H); c_states (D, T+1, B, H); dtc (D, T, B, H); mean_h, rstd_h (D, T, B, 4, 1);
    mean_c, rstd_c (D, T, B, 1).
    """
    D, T, B, G = da.shape
    H = G // 4
    dav = da.view(D, T, B, 4, H)
    dg_hh, dw_c = da.new_zeros(D, 4, H), da.new_zeros(D, H)
    for t0 in range(0, T, CHUNK):
        s = slice(t0, t0 + CHUNK)
        hat = (hp[:, s].unflatten(-1, (4, H)) - mean_h[:, s]).mul_(rstd_h[:, s])
        dg_hh += (dav[:, s] * hat).sum((1, 2))
        c_hat = (c_states[:, 1:][:, s] - mean_c[:, s]).mul_(rstd_c[:, s])
        dw_c += (dtc[:, s] * c_hat).sum((1, 2))
    return dg_hh.view(D, G), dw_c

