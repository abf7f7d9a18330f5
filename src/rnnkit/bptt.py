"""Fast CPU training path: explicit back-propagation through time, one autograd Function per cell.

torch has a fast fused kernel only for dense-input LSTM on CPU (oneDNN); ``nn.GRU`` and
``nn.RNN`` run a generic loop whose backward is an autograd graph of many small per-step
nodes, and the reference loop of :mod:`rnnkit.recurrent` is the same kind of graph. Here each
cell kind has a ``torch.autograd.Function`` whose

* forward loop runs only the recurrent part (the input projection ``xp = x W_ih^T + b_ih`` is
  one matmul for all steps, outside) and writes the activations it will need into
  preallocated buffers (``out=`` and in-place ops, no per-step allocation);
* backward loop runs only the recurrence ``dh_{t-1} = dL/dh_{t-1}|_out + (dh_t-dependent terms)
  W_hh``; every factor that does not depend on ``dh`` (activation derivatives, products of
  gates) is computed for all steps at once before the loop;
* weight gradients are one large matmul over all steps after the loop:
  ``dW_hh = sum_t da_t^T (h_{t-1} * mask) = dA^T Hm`` with ``dA`` (T*B, G*H);
* both directions of a bidirectional layer run together: every tensor carries a leading
  direction axis D, recurrent matmuls are ``torch.baddbmm`` over stacked ``(D, ...)`` weights.

Layout inside: ``(D, T, B, X)``, the reverse direction stored in its own (reversed) time order.
Equations are those of :mod:`rnnkit.cells` (same gate order as torch.nn), including the
variational recurrent-dropout mask ``m`` (D, B, H) on ``h_{t-1}`` where it enters the
recurrent projection. Values and gradients equal the reference loop (tests/test_bptt.py).

Not handled here (the predicate ``bptt_unsupported_reason`` says so and the layer falls back
to the fused kernel or the reference loop): variable ``lengths``, ``layer_norm``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

_DTYPES = (torch.float32, torch.float64)


def bptt_unsupported_reason(layer, x: Tensor, lengths: Optional[Tensor] = None) -> Optional[str]:
    """None if the explicit-BPTT path computes ``layer`` on ``x`` exactly; otherwise the reason."""
    if layer.cell not in ("rnn", "lstm", "gru"):
        return f"cell {layer.cell!r} has no explicit-BPTT implementation"
    if lengths is not None:
        return "variable lengths are left to the fused kernel or the reference loop"
    if layer.layer_norm:
        return "layer_norm=True is not in the explicit-BPTT path"
    if x.dtype not in _DTYPES:
        return f"dtype {x.dtype} is not supported by the explicit-BPTT path (float32/float64 only)"
    return None


# Whether "auto" prefers torch's fused kernel over this path when both can serve, by
# measurement (tmp micro-benchmarks, 1 thread, process time, B/T/H of the S3/S5 shapes on the
# loaded 2-core CPU; see BENCHMARKS.md for the suite): oneDNN's LSTM is faster than this
# path (130-160 vs 220-255 ms), torch's generic GRU loop is slower (167 vs 147 ms), and
# torch's RNN kernel is as fast on the short S1 shape (2.4 vs 3.1 ms).
FUSED_FIRST = {"lstm": True, "gru": False, "rnn": True}


def _stack(tensors):
    return None if tensors[0] is None else torch.stack(tensors)


def bptt_forward(layer, x: Tensor, parts: tuple):
    """Run ``layer`` (no lengths) with the explicit-BPTT Functions; mirrors ``reference_forward``.

    x: (B, T, F); parts: tuple of (L*D, B, H). Returns outputs (B, T, D*H) and the final parts.
    """
    B, T, _ = x.shape
    D, H = layer.num_directions, layer.hidden_size
    finals = [[] for _ in parts]
    layer_input = x
    for k in range(layer.num_layers):
        ws = [layer.direction_parameters(k, d) for d in range(D)]
        masks = [layer.recurrent_dropout_mask(B, layer_input) for _ in range(D)]  # same RNG order as reference
        mask = None if masks[0] is None else torch.stack(masks)  # (D, B, H)
        if layer.cell == "lstm":  # the LSTM Function keeps its gates in the order (o, i, f, g)
            ws = [_lstm_reordered(w, H) for w in ws]
        xp = F.linear(layer_input, torch.cat([w.weight_ih for w in ws]),
                      None if ws[0].bias_ih is None else torch.cat([w.bias_ih for w in ws]))  # (B, T, D*G*H)
        xp = xp.view(B, T, D, -1).permute(2, 1, 0, 3)  # (D, T, B, G*H)
        xp = _directions_in_own_time(xp)
        first = [p[k * D : (k + 1) * D] for p in parts]  # each (D, B, H)
        w_hh, b_hh = _stack([w.weight_hh for w in ws]), _stack([w.bias_hh for w in ws])
        hs, last = _run(layer, xp, first, w_hh, b_hh, mask)  # hs (D, T, B, H)
        ys = _directions_in_own_time(hs)  # back to forward time for every direction
        layer_input = ys.permute(2, 1, 0, 3).reshape(B, T, D * H).contiguous()  # (B, T, D*H)
        for j, s in enumerate(last):
            finals[j].append(s)
        if layer.dropout > 0 and k < layer.num_layers - 1:
            layer_input = F.dropout(layer_input, layer.dropout, layer.training)
    return layer_input, tuple(torch.cat(f) for f in finals)


def _directions_in_own_time(z: Tensor) -> Tensor:
    """(D, T, ...) with the reverse direction's time axis flipped (its own order <-> forward order).

    ``unbind``, not ``z[1]``: the backward of indexing fills a zero tensor of the full size.
    """
    if z.shape[0] == 1:
        return z
    forward, backward = z.unbind(0)
    return torch.stack([forward, backward.flip(0)])


def _run(layer, xp, first, w_hh, b_hh, mask):
    """One layer, all directions. Returns hs (D, T, B, H) and the final state tuple of (D, B, H)."""
    if layer.cell == "lstm":
        hs, h_last, c_last = LSTMFunction.apply(xp, first[0], first[1], w_hh, b_hh, mask)
        return hs, (h_last, c_last)
    if layer.cell == "gru":
        fn = GRUFunction if layer.reset_after else GRUResetBeforeFunction
        hs, h_last = fn.apply(xp, first[0], w_hh, b_hh, mask)
    else:
        hs, h_last = RNNFunction.apply(xp, first[0], w_hh, b_hh, mask, layer.nonlinearity)
    return hs, (h_last,)


# -- helpers shared by the Functions ---------------------------------------------------------
def _masked(h: Tensor, mask: Optional[Tensor], out: Tensor) -> Tensor:
    """``h * mask`` into ``out`` (or ``h`` itself without a mask)."""
    return h if mask is None else torch.mul(h, mask, out=out)


def _weight_grad(dA: Tensor, inputs: Tensor) -> Tensor:
    """sum over t, b of dA^T inputs: dA (D, T, B, G), inputs (D, T, B, K) -> (D, G, K)."""
    D, T, B, G = dA.shape
    return torch.bmm(dA.reshape(D, T * B, G).transpose(1, 2), inputs.reshape(D, T * B, -1))


def _add_recurrent(out: Tensor, grad: Tensor, da: Tensor, w: Tensor, mask, tmp: Tensor) -> Tensor:
    """``out = grad + (da @ w) * mask``: da (D, B, G), w (D, G, H) -> (D, B, H)."""
    if mask is None:
        return torch.baddbmm(grad, da, w, out=out)
    torch.bmm(da, w, out=tmp)
    return torch.addcmul(grad, tmp, mask, out=out)


def _accumulate_recurrent(out: Tensor, da: Tensor, w: Tensor, mask, tmp: Tensor) -> Tensor:
    """``out += (da @ w) * mask`` in place: da (D, B, G), w (D, G, H), out (D, B, H)."""
    if mask is None:
        return out.baddbmm_(da, w)
    torch.bmm(da, w, out=tmp)
    return out.addcmul_(tmp, mask)


# -- Elman RNN ---------------------------------------------------------------------------------
class RNNFunction(torch.autograd.Function):
    """``h_t = act(xp_t + b_hh + (h_{t-1} * m) W_hh^T)``, act = tanh or relu.

    xp (D, T, B, H) incl. b_ih; h0 (D, B, H); w_hh (D, H, H); b_hh (D, H) | None; mask (D, B, H) | None.
    Returns hs (D, T, B, H) and h_T (D, B, H).
    """

    @staticmethod
    def forward(ctx, xp, h0, w_hh, b_hh, mask, nonlinearity):
        D, T, B, H = xp.shape
        pre = xp if b_hh is None else xp + b_hh[:, None, None]
        wt = w_hh.transpose(1, 2).contiguous()  # (D, H, H)
        hs = xp.new_empty(D, T + 1, B, H)
        hs[:, 0] = h0
        hm = xp.new_empty(D, B, H)
        act = torch.Tensor.tanh_ if nonlinearity == "tanh" else torch.Tensor.relu_
        for t in range(T):
            act(torch.baddbmm(pre[:, t], _masked(hs[:, t], mask, hm), wt, out=hs[:, t + 1]))
        ctx.hs, ctx.mask, ctx.nonlinearity = hs, mask, nonlinearity
        ctx.save_for_backward(w_hh)
        ctx.has_bias = b_hh is not None
        return hs[:, 1:], hs[:, -1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs, grad_h):
        (w_hh,) = ctx.saved_tensors
        hs, mask = ctx.hs, ctx.mask
        D, T1, B, H = hs.shape
        T = T1 - 1
        out = hs[:, 1:]
        deriv = 1 - out * out if ctx.nonlinearity == "tanh" else (out > 0).to(out.dtype)  # (D, T, B, H)
        da = torch.empty_like(out)  # dL/d(pre-activation), all steps
        dh, tmp = grad_hs[:, T - 1] + grad_h, hs.new_empty(D, B, H)
        for t in range(T - 1, -1, -1):
            torch.mul(dh, deriv[:, t], out=da[:, t])
            grad = grad_hs[:, t - 1] if t > 0 else torch.zeros_like(dh)
            _add_recurrent(dh, grad, da[:, t], w_hh, mask, tmp)
        hm = hs[:, :-1] if mask is None else hs[:, :-1] * mask[:, None]
        dw = _weight_grad(da, hm)
        db = da.sum((1, 2)) if ctx.has_bias else None
        return da, dh, dw, db, None, None


# -- GRU, reset_after=True (torch, cuDNN) ------------------------------------------------------
class GRUFunction(torch.autograd.Function):
    """GRU with ``n = tanh(xp_n + r * (W_hn (h*m) + b_hn))``; gate order r, z, n.

    xp (D, T, B, 3H) incl. b_ih; h0 (D, B, H); w_hh (D, 3H, H); b_hh (D, 3H) | None; mask (D, B, H) | None.
    Returns hs (D, T, B, H) and h_T (D, B, H).
    """

    @staticmethod
    def forward(ctx, xp, h0, w_hh, b_hh, mask):
        D, T, B, G = xp.shape
        H = G // 3
        wt = w_hh.transpose(1, 2).contiguous()  # (D, H, 3H)
        hs = xp.new_empty(D, T + 1, B, H)
        hs[:, 0] = h0
        hp = xp.new_empty(D, T, B, G)  # (h*m) W_hh^T + b_hh, kept for W_hn h + b_hn
        gates = xp.new_empty(D, T, B, G)  # r, z, n after their activations
        hm = xp.new_empty(D, B, H)
        bias = None if b_hh is None else b_hh.unsqueeze(1)  # (D, 1, 3H)
        for t in range(T):
            hin = _masked(hs[:, t], mask, hm)
            if bias is None:
                torch.bmm(hin, wt, out=hp[:, t])
            else:
                torch.baddbmm(bias, hin, wt, out=hp[:, t])
            g = gates[:, t]
            torch.add(xp[:, t, :, : 2 * H], hp[:, t, :, : 2 * H], out=g[..., : 2 * H]).sigmoid_()
            n = g[..., 2 * H :]
            torch.addcmul(xp[:, t, :, 2 * H :], g[..., :H], hp[:, t, :, 2 * H :], out=n).tanh_()
            torch.lerp(n, hs[:, t], g[..., H : 2 * H], out=hs[:, t + 1])  # n + z (h - n)
        ctx.hs, ctx.hp, ctx.gates, ctx.mask = hs, hp, gates, mask
        ctx.save_for_backward(w_hh)
        ctx.has_bias = b_hh is not None
        return hs[:, 1:], hs[:, -1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs, grad_h):
        (w_hh,) = ctx.saved_tensors
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
            _accumulate_recurrent(target, dhp[:, t], w_hh, mask, tmp)
        dh0 = target
        dxp = torch.cat([dhp[..., : 2 * H], dh_all * a_n], -1)
        hm = h_prev if mask is None else h_prev * mask[:, None]
        dw = _weight_grad(dhp, hm)
        db = dhp.sum((1, 2)) if ctx.has_bias else None
        return dxp, dh0, dw, db, None


# -- GRU, reset_after=False (textbook, Keras option) --------------------------------------------
class GRUResetBeforeFunction(torch.autograd.Function):
    """GRU with ``n = tanh(xp_n + W_hn (r * h * m) + b_hn)``; gate order r, z, n.

    Same arguments and results as :class:`GRUFunction`.
    """

    @staticmethod
    def forward(ctx, xp, h0, w_hh, b_hh, mask):
        D, T, B, G = xp.shape
        H = G // 3
        pre = xp if b_hh is None else xp + b_hh[:, None, None]  # every b_hh term is additive here
        wt_rz = w_hh[:, : 2 * H].transpose(1, 2).contiguous()  # (D, H, 2H)
        wt_n = w_hh[:, 2 * H :].transpose(1, 2).contiguous()  # (D, H, H)
        hs = xp.new_empty(D, T + 1, B, H)
        hs[:, 0] = h0
        gates = xp.new_empty(D, T, B, G)  # r, z, n after their activations
        u = xp.new_empty(D, T, B, H)  # r * h * m, the input of W_hn
        hm = xp.new_empty(D, B, H)
        for t in range(T):
            hin = _masked(hs[:, t], mask, hm)
            g = gates[:, t]
            torch.baddbmm(pre[:, t, :, : 2 * H], hin, wt_rz, out=g[..., : 2 * H]).sigmoid_()
            torch.mul(g[..., :H], hin, out=u[:, t])
            torch.baddbmm(pre[:, t, :, 2 * H :], u[:, t], wt_n, out=g[..., 2 * H :]).tanh_()
            torch.lerp(g[..., 2 * H :], hs[:, t], g[..., H : 2 * H], out=hs[:, t + 1])
        ctx.hs, ctx.u, ctx.gates, ctx.mask = hs, u, gates, mask
        ctx.save_for_backward(w_hh)
        ctx.has_bias = b_hh is not None
        return hs[:, 1:], hs[:, -1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs, grad_h):
        (w_hh,) = ctx.saved_tensors
        hs, u, gates, mask = ctx.hs, ctx.u, ctx.gates, ctx.mask
        D, T, B, G = gates.shape
        H = G // 3
        w_rz, w_n = w_hh[:, : 2 * H], w_hh[:, 2 * H :]  # (D, 2H, H), (D, H, H)
        r, z, n = gates[..., :H], gates[..., H : 2 * H], gates[..., 2 * H :]
        h_prev = hs[:, :-1]
        hm = h_prev if mask is None else h_prev * mask[:, None]
        zn = torch.stack([(h_prev - n) * z * (1 - z), (1 - z) * (1 - n * n)], 3)  # (D, T, B, 2, H): z, n
        a_r = hm * r * (1 - r)  # times dL/du gives r's pre-activation gradient
        da = torch.empty_like(gates)  # dL/d(pre-activations) r, z, n = dL/dxp = dL/d(b_hh)
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
        dw = torch.cat([_weight_grad(da[..., : 2 * H], hm), _weight_grad(da[..., 2 * H :], u)], 1)
        db = da.sum((1, 2)) if ctx.has_bias else None
        return da, dh, dw, db, None


# -- LSTM ----------------------------------------------------------------------------------------
# The LSTM Function works with its gates in the order (o, i, f, g): one sigmoid over the first
# 3H columns, one tanh over the last H, and the three gates driven by dc (i, f, g) contiguous.
# The rows of the (small) weights are reordered before the input projection, so the large
# per-step tensors never are; autograd maps the gradients back through the reordering.
def _lstm_reordered(w, H: int):
    """The parameters of one direction with gate rows reordered from (i, f, g, o) to (o, i, f, g)."""
    def reorder(p):
        return None if p is None else torch.cat([p[3 * H :], p[: 3 * H]])

    return SimpleNamespace(weight_ih=reorder(w.weight_ih), weight_hh=reorder(w.weight_hh),
                           bias_ih=reorder(w.bias_ih), bias_hh=reorder(w.bias_hh))


class LSTMFunction(torch.autograd.Function):
    """LSTM, gates in the order (o, i, f, g); ``c_t = f c_{t-1} + i g``, ``h_t = o tanh(c_t)``.

    xp (D, T, B, 4H) incl. b_ih; h0, c0 (D, B, H); w_hh (D, 4H, H); b_hh (D, 4H) | None;
    mask (D, B, H) | None; all gate blocks in the order o, i, f, g (see ``_lstm_reordered``).
    Returns hs (D, T, B, H), h_T and c_T (D, B, H).
    """

    @staticmethod
    def forward(ctx, xp, h0, c0, w_hh, b_hh, mask):
        D, T, B, G = xp.shape
        H = G // 4
        pre = xp if b_hh is None else xp + b_hh[:, None, None]
        w = w_hh
        wt = w.transpose(1, 2).contiguous()  # (D, H, 4H)
        hs, cs = xp.new_empty(D, T + 1, B, H), xp.new_empty(D, T + 1, B, H)
        hs[:, 0], cs[:, 0] = h0, c0
        gates = xp.new_empty(D, T, B, G)  # o, i, f, g after their activations
        tc = xp.new_empty(D, T, B, H)  # tanh(c_t)
        hm = xp.new_empty(D, B, H)
        for t in range(T):
            g = gates[:, t]
            torch.baddbmm(pre[:, t], _masked(hs[:, t], mask, hm), wt, out=g)
            g[..., : 3 * H].sigmoid_()
            g[..., 3 * H :].tanh_()
            c = torch.mul(g[..., 2 * H : 3 * H], cs[:, t], out=cs[:, t + 1]).addcmul_(g[..., H : 2 * H], g[..., 3 * H :])
            torch.mul(g[..., :H], torch.tanh(c, out=tc[:, t]), out=hs[:, t + 1])
        ctx.hs, ctx.cs, ctx.gates, ctx.tc, ctx.mask = hs, cs, gates, tc, mask
        ctx.save_for_backward(w)
        ctx.has_bias = b_hh is not None
        return hs[:, 1:], hs[:, -1].clone(), cs[:, -1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs, grad_h, grad_c):
        (w,) = ctx.saved_tensors
        hs, cs, gates, tc, mask = ctx.hs, ctx.cs, ctx.gates, ctx.tc, ctx.mask
        D, T, B, G = gates.shape
        H = G // 4
        o, i, f, g = (gates[..., k * H : (k + 1) * H] for k in range(4))
        # Activation derivatives of all steps in few passes: a(1-a) for o, i, f; 1 - g^2 for g.
        deriv = gates * (1 - gates)
        torch.mul(g, g, out=deriv[..., 3 * H :]).neg_().add_(1)
        to_c = (1 - tc * tc).mul_(o)  # dc_t += dh_t * o (1 - tanh(c_t)^2)
        # what dc multiplies for i, f, g (their pre-activation gradients before deriv): g, c_{t-1}, i
        from_c = torch.stack([g, cs[:, :-1], i], 3)  # (D, T, B, 3, H)
        da = torch.empty_like(gates)  # dL/d(pre-activations) in the order o, i, f, g
        dh = grad_hs[:, T - 1] + grad_h
        dc = grad_c.clone()
        tmp = hs.new_empty(D, B, H)
        for t in range(T - 1, -1, -1):
            dat = da[:, t]
            dc.addcmul_(dh, to_c[:, t])
            torch.mul(dh, tc[:, t], out=dat[..., :H])
            torch.mul(dc.unsqueeze(2), from_c[:, t], out=dat[..., H:].view(D, B, 3, H))
            dat.mul_(deriv[:, t])
            dc.mul_(f[:, t])
            grad = grad_hs[:, t - 1] if t > 0 else torch.zeros_like(dh)
            _add_recurrent(dh, grad, dat, w, mask, tmp)
        h_prev = hs[:, :-1]
        hm = h_prev if mask is None else h_prev * mask[:, None]
        db = da.sum((1, 2)) if ctx.has_bias else None
        return da, dh, dc, _weight_grad(da, hm), db, None
