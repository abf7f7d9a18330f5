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
  direction axis D, recurrent matmuls are ``torch.baddbmm`` over stacked ``(D, ...)`` weights;
* on CPU, for hidden sizes up to ``dispatch.PATHS.sequence_kernel_max_hidden``, a layer's whole
  loop is one call of a native sequence kernel each way (``rnnkit/native.c``, loaded by :mod:`rnnkit.native`):
  the recurrent matmul, the element-wise step and the layer norms inside, each OpenMP thread
  running its own rows of the batch through every step. Wider layers keep torch's per-step
  matmul with one native call for the element-wise rest of each step. Where the kernels are
  unavailable the same arithmetic runs as torch ops (tests/test_native.py: same numbers).

Layout inside: ``(D, T, B, X)`` (time-major, so a step is one contiguous slice), the reverse
direction stored in its own (reversed) time order; between layers ``(T, B, D*H)``. Where
``b_ih`` and ``b_hh`` are both purely additive (all but GRU's ``b_hn``) they are summed once
and added in the input projection.
Equations are those of :mod:`rnnkit.cells` (same gate order as torch.nn), including the
variational recurrent-dropout mask ``m`` (D, B, H) on ``h_{t-1}`` where it enters the
recurrent projection. Values and gradients equal the reference loop (tests/test_bptt.py).

Not handled here (the predicate ``bptt_unsupported_reason`` says so and the layer falls back
to the fused kernel or the reference loop): variable ``lengths``; ``layer_norm`` for the Elman
RNN and the reset_after=False GRU; a layer-normed GRU without the native kernels. When this
path rather than torch's fused kernel serves is :mod:`rnnkit.dispatch`'s choice.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnkit import dispatch, native

_DTYPES = (torch.float32, torch.float64)
LN_EPS = 1e-5  # as rnnkit.cells.gate_norm and the LSTM's LN(c)


def bptt_unsupported_reason(layer, x: Tensor, lengths: Optional[Tensor] = None) -> Optional[str]:
    """None if the explicit-BPTT path computes ``layer`` on ``x`` exactly; otherwise the reason."""
    if layer.cell not in ("rnn", "lstm", "gru"):
        return f"cell {layer.cell!r} has no explicit-BPTT implementation"
    if lengths is not None:
        return "variable lengths are left to the fused kernel or the reference loop"
    if layer.layer_norm and layer.cell != "lstm":
        if layer.cell != "gru" or not layer.reset_after:
            return f"layer_norm=True is in the explicit-BPTT path for LSTM and GRU (reset_after=True) only"
        if _native("gru", x) is None or _native("gate_norm", x) is None:
            return "layer_norm=True for GRU needs rnnkit's native kernels (" + (native.unavailable_reason() or
                                                                                 "not on this device") + ")"
    if x.dtype not in _DTYPES:
        return f"dtype {x.dtype} is not supported by the explicit-BPTT path (float32/float64 only)"
    return None


def _stack(tensors):
    return None if tensors[0] is None else torch.stack(tensors)


def _sum_biases(w):
    """``b_ih + b_hh`` (None without bias): for gates where both biases are purely additive."""
    return None if w.bias_ih is None else w.bias_ih + w.bias_hh


def bptt_forward(layer, x: Tensor, parts: tuple):
    """Run ``layer`` (no lengths) with the explicit-BPTT Functions; mirrors ``reference_forward``.

    x: (B, T, F); parts: tuple of (L*D, B, H). Returns outputs (B, T, D*H) and the final parts.
    Inside, activations are time-major, ``(T, B, X)``, so that every step is a contiguous slice.
    """
    B, T, _ = x.shape
    D, H = layer.num_directions, layer.hidden_size
    finals = [[] for _ in parts]
    layer_input = x.transpose(0, 1)  # (T, B, F)
    for k in range(layer.num_layers):
        ws = [layer.direction_parameters(k, d) for d in range(D)]
        masks = [layer.recurrent_dropout_mask(B, x) for _ in range(D)]  # same RNG order as reference
        mask = None if masks[0] is None else torch.stack(masks)  # (D, B, H)
        xs = _inputs_in_own_time(layer_input, D)  # (D, T, B, F)
        first = [p[k * D : (k + 1) * D] for p in parts]  # each (D, B, H)
        hs, last = _run(layer, xs, ws, first, mask)  # hs (D, T, B, H), each direction in its own time
        layer_input = _outputs_in_forward_time(hs)  # (T, B, D*H)
        for j, s in enumerate(last):
            finals[j].append(s)
        if layer.dropout > 0 and k < layer.num_layers - 1:  # drawn batch-major: the reference's random draws
            layer_input = F.dropout(layer_input.transpose(0, 1).contiguous(), layer.dropout, layer.training).transpose(0, 1)
    return layer_input.transpose(0, 1).contiguous(), tuple(torch.cat(f) for f in finals)


def _inputs_in_own_time(z: Tensor, D: int) -> Tensor:
    """(T, B, F) -> (D, T, B, F) contiguous, the reverse direction's copy flipped in time."""
    if D == 1:
        return z.unsqueeze(0).contiguous()
    return torch.stack([z, z.flip(0)])


def _outputs_in_forward_time(hs: Tensor) -> Tensor:
    """(D, T, B, H), each direction in its own time -> (T, B, D*H) in forward time.

    ``unbind``, not ``hs[1]``: the backward of indexing fills a zero tensor of the full size.
    """
    if hs.shape[0] == 1:
        return hs.squeeze(0)
    forward, backward = hs.unbind(0)
    return torch.cat([forward, backward.flip(0)], -1)


def _gate_norm(z: Tensor, gain: Tensor, num_gates: int) -> Tensor:
    """``rnnkit.cells.gate_norm`` with a gain per direction: z (D, T, B, G*H), gain (D, G*H)."""
    D, T, B, GH = z.shape
    hat = F.layer_norm(z.view(D, T, B, num_gates, GH // num_gates), (GH // num_gates,), eps=LN_EPS)
    return hat.view(D, T, B, GH) * gain[:, None, None]


def _input_gate_norm(z: Tensor, gain: Tensor, bias: Optional[Tensor], num_gates: int) -> Tensor:
    """``LN_gate(z) * gain + bias`` for a whole input projection z (D, T, B, G*H); gain, bias (D, G*H).

    One native call each way (:class:`GateNormFunction`) where the kernels are available, else
    the same arithmetic as torch ops under autograd.
    """
    norm = _native("gate_norm", z)
    if norm is None:
        y = _gate_norm(z, gain, num_gates)
        return y if bias is None else y + bias[:, None, None]
    return GateNormFunction.apply(z, gain, bias, norm, num_gates)


class GateNormFunction(torch.autograd.Function):
    """``y = LN_gate(z) * gain + bias`` with the native kernels: z (D, T, B, G*H), gain and bias
    (D, G*H) (bias may be None). The gains' and bias's gradients are summed in float64."""

    @staticmethod
    def forward(ctx, z, gain, bias, kernels, num_gates):
        D, T, B, GH = z.shape
        z = z.contiguous()
        steps = native.GateNormSteps(*kernels, num_gates)
        y = torch.empty_like(z)
        mean, rstd = z.new_empty(D, T * B, num_gates), z.new_empty(D, T * B, num_gates)
        gain_c, bias_c = gain.contiguous(), None if bias is None else bias.contiguous()
        steps.forward(z.view(D, T * B, GH), gain_c, bias_c, y.view(D, T * B, GH), mean, rstd, LN_EPS)
        ctx.save_for_backward(z, gain_c, mean, rstd)
        ctx.steps, ctx.has_bias = steps, bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        z, gain, mean, rstd = ctx.saved_tensors
        D, T, B, GH = z.shape
        dz = torch.empty_like(z)
        dgain = z.new_zeros(D, GH, dtype=torch.float64)
        dbias = z.new_zeros(D, GH, dtype=torch.float64) if ctx.has_bias else None
        ctx.steps.backward(grad_y.contiguous().view(D, T * B, GH), z.view(D, T * B, GH), mean, rstd, gain,
                           dz.view(D, T * B, GH), dgain, dbias)
        return dz, dgain.to(z.dtype), None if dbias is None else dbias.to(z.dtype), None, None


def _project(xs: Tensor, w_ih: Tensor, bias: Optional[Tensor], out: Optional[Tensor] = None) -> Tensor:
    """``xs W_ih^T + bias`` for all steps: xs (D, T, B, F), w_ih (D, G, F), bias (D, G) -> (D, T, B, G).

    With ``out`` (D, T, B, G), contiguous within each direction: written there.
    """
    D, T, B, F_ = xs.shape
    flat, wt = xs.reshape(D, T * B, F_), w_ih.transpose(1, 2)
    res = None if out is None else out.view(D, T * B, -1)  # out=None: a new tensor, autograd-tracked
    res = torch.bmm(flat, wt, out=res) if bias is None else torch.baddbmm(bias.unsqueeze(1), flat, wt, out=res)
    return res.view(D, T, B, -1)


def _run(layer, xs, ws, first, mask):
    """One layer, all directions. Returns hs (D, T, B, H) and the final state tuple of (D, B, H)."""
    H = layer.hidden_size
    if layer.cell == "lstm":  # the LSTM Function keeps its gates in the order (o, i, f, g)
        ws = [_lstm_reordered(w) for w in ws]
        w_ih, w_hh = _stack([w.weight_ih for w in ws]), _stack([w.weight_hh for w in ws])
        bias = _stack([_sum_biases(w) for w in ws])
        if layer.layer_norm:
            xz, g_x = _project(xs, w_ih, None), _stack([w.ln_ih for w in ws])  # (D, T, B, 4H), (D, 4H)
            norm = [_stack([getattr(w, n) for w in ws]) for n in ("ln_hh", "ln_c_weight", "ln_c_bias")]
            if _native("lstm_ln", xz) is not None:  # the step kernels normalise xz too
                hs, h_last, c_last = LSTMNormFunction.apply(xz, first[0], first[1], w_hh, g_x, bias, *norm, mask)
            else:
                xp = _input_gate_norm(xz, g_x, bias, 4)
                hs, h_last, c_last = LSTMNormFunction.apply(xp, first[0], first[1], w_hh, None, None, *norm, mask)
        else:
            hs, h_last, c_last = LSTMFunction.apply(xs, w_ih, bias, first[0], first[1], w_hh, mask)
        return hs, (h_last, c_last)
    w_ih, w_hh = _stack([w.weight_ih for w in ws]), _stack([w.weight_hh for w in ws])
    if layer.cell == "gru" and layer.layer_norm:  # reset_after=True (bptt_unsupported_reason)
        xz, g_x, b_x = _project(xs, w_ih, None), _stack([w.ln_ih for w in ws]), _stack([w.bias_ih for w in ws])
        recurrent = (_stack([w.ln_hh for w in ws]), _stack([w.bias_hh for w in ws]), mask)
        if _gru_sequence_kernels(xz) is not None:  # the sequence kernel normalises xz too
            hs, h_last = GRUNormFunction.apply(xz, first[0], w_hh, g_x, b_x, *recurrent)
        else:
            hs, h_last = GRUNormFunction.apply(_input_gate_norm(xz, g_x, b_x, 3), first[0], w_hh, None, None, *recurrent)
        return hs, (h_last,)
    if layer.cell == "gru" and layer.reset_after:  # b_hn sits inside r * (W_hn h + b_hn): kept apart
        xp = _project(xs, w_ih, _stack([w.bias_ih for w in ws]))
        hs, h_last = GRUFunction.apply(xp, first[0], w_hh, _stack([w.bias_hh for w in ws]), mask)
        return hs, (h_last,)
    xp = _project(xs, w_ih, _stack([_sum_biases(w) for w in ws]))  # every bias term is additive
    if layer.cell == "gru":
        hs, h_last = GRUResetBeforeFunction.apply(xp, first[0], w_hh, None, mask)
    else:
        hs, h_last = RNNFunction.apply(xp, first[0], w_hh, None, mask, layer.nonlinearity)
    return hs, (h_last,)


# -- helpers shared by the Functions ---------------------------------------------------------
def _masked(h: Tensor, mask: Optional[Tensor], out: Tensor) -> Tensor:
    """``h * mask`` into ``out`` (or ``h`` itself without a mask)."""
    return h if mask is None else torch.mul(h, mask, out=out)


def _weight_grad(dA: Tensor, inputs: Tensor) -> Tensor:
    """sum over t, b of dA^T inputs: dA (D, T, B, G), inputs (D, T, B, K) -> (D, G, K).

    Computed as ``(inputs^T dA)^T``: with the large gradient as the untransposed right operand
    the matmul ran ~20% faster here (S5: 31 against 38 ms for G=512, K=130, T*B=50k).
    """
    D, T, B, G = dA.shape
    return torch.bmm(inputs.reshape(D, T * B, -1).transpose(1, 2), dA.reshape(D, T * B, G)).transpose(1, 2)


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
def _rnn_sequence_kernels(like: Tensor, H: int):
    return dispatch.sequence_kernels("rnn_seq", like, H)



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
        ctx.sequence = _rnn_sequence_kernels(xp, H)
        if ctx.sequence is not None:  # the whole loop, recurrent matmul included, in one native call
            mask = None if mask is None else mask.contiguous()
            native.rnn_sequence_forward(ctx.sequence[0], pre.contiguous(), wt, mask, hs, nonlinearity == "relu")
            ctx.hs, ctx.mask, ctx.nonlinearity, ctx.has_bias = hs, mask, nonlinearity, b_hh is not None
            ctx.save_for_backward(w_hh)
            return hs[:, 1:], hs[:, -1].clone()
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
        if ctx.sequence is not None:
            dh = hs.new_zeros(D, B, H) if grad_h is None else grad_h.contiguous().clone()
            da = hs.new_empty(D, T, B, H)
            native.rnn_sequence_backward(ctx.sequence[1], hs, w_hh.contiguous(), mask,
                                         None if grad_hs is None else grad_hs.contiguous(), dh, da,
                                         ctx.nonlinearity == "relu")
            hm = hs[:, :-1] if mask is None else hs[:, :-1] * mask[:, None]
            return da, dh, _weight_grad(da, hm), da.sum((1, 2)) if ctx.has_bias else None, None, None
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
        ctx.save_for_backward(w_hh)
        ctx.has_bias = b_hh is not None
        sequence = ctx.sequence = _gru_sequence_kernels(xp)
        if sequence is not None:  # the whole loop, recurrent matmul included, in one native call
            xp, mask = xp.contiguous(), None if mask is None else mask.contiguous()
            b = None if b_hh is None else b_hh.contiguous()
            native.gru_sequence_forward(sequence[0], xp, wt, b, None, None, None, mask, None, None, hp, gates, hs,
                                        LN_EPS)
            ctx.hs, ctx.hp, ctx.gates, ctx.mask, ctx.native = hs, hp, gates, mask, None
            return hs[:, 1:], hs[:, -1].clone()
        hm = xp.new_empty(D, B, H)
        bias = None if b_hh is None else b_hh.unsqueeze(1)  # (D, 1, 3H)
        kernels, native_step = _native("gru", xp), None
        if kernels is not None:  # after each step's matmul, the rest of the step in one native call
            mask = None if mask is None else mask.contiguous()
            native_step = native.GRUSteps(*kernels).bind_forward(xp, hp, gates, hs, mask, hm)
        for t in range(T):
            if native_step is not None and mask is not None and t > 0:
                hin = hm  # h_{t-1} * mask, written by the native step
            else:
                hin = _masked(hs[:, t], mask, hm)
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
        ctx.hs, ctx.hp, ctx.gates, ctx.mask, ctx.native = hs, hp, gates, mask, kernels
        return hs[:, 1:], hs[:, -1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs, grad_h):
        (w_hh,) = ctx.saved_tensors
        hs, hp, gates, mask = ctx.hs, ctx.hp, ctx.gates, ctx.mask
        D, T, B, G = gates.shape
        H = G // 3
        if ctx.sequence is not None:
            return _gru_sequence_backward(ctx, w_hh, grad_hs, grad_h)
        if ctx.native is not None:
            return _gru_native_backward(ctx, w_hh, grad_hs, grad_h)
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


def _gru_sequence_kernels(xp: Tensor, name: str = "gru_seq"):
    """The GRU sequence kernels ``name`` for xp (D, T, B, 3H) when they are available and chosen, else None."""
    return dispatch.sequence_kernels(name, xp, xp.shape[-1] // 3)


def _gru_sequence_backward(ctx, w_hh, grad_hs, grad_h):
    """GRUFunction's backward in one native call (the recurrent matmuls inside); dW_hh and db_hh after."""
    hs, gates, mask = ctx.hs, ctx.gates, ctx.mask
    D, T, B, G = gates.shape
    carry = hs.new_zeros(D, B, G // 3) if grad_h is None else grad_h.contiguous().clone()
    dxp, dhp = torch.empty_like(gates), torch.empty_like(gates)
    grad_hs = None if grad_hs is None else grad_hs.contiguous()
    native.gru_sequence_backward(ctx.sequence[1], gates, ctx.hp, None, None, None, None, None, hs, w_hh.contiguous(),
                                 mask, grad_hs, carry, dxp, None, dhp, None)
    h_prev = hs[:, :-1]
    dw = _weight_grad(dhp, h_prev if mask is None else h_prev * mask[:, None])
    db = dhp.sum((1, 2)) if ctx.has_bias else None
    return dxp, carry, dw, db, None


def _gru_native_backward(ctx, w_hh, grad_hs, grad_h):
    """GRUFunction's backward with the native step (rnnkit/native.c); same results as the torch loop.

    Per step t (last to first): one native call turns dL/dh_t = carry + rec * mask + grad_hs[t]
    into dL/dxp_t, dL/dhp_t and carry = z_t dL/dh_t; then rec = dL/dhp_t W_hh (one bmm).
    """
    hs, gates, mask = ctx.hs, ctx.gates, ctx.mask
    D, T, B, G = gates.shape
    H = G // 3
    carry = hs.new_zeros(D, B, H) if grad_h is None else grad_h.clone(memory_format=torch.contiguous_format)
    rec = hs.new_empty(D, B, H)
    dxp, dhp = torch.empty_like(gates), torch.empty_like(gates)
    step = native.GRUSteps(*ctx.native).bind_backward(gates, ctx.hp, hs, rec, mask, grad_hs, carry, dxp, dhp)
    for t in range(T - 1, -1, -1):
        step(t, t == T - 1)
        torch.bmm(dhp[:, t], w_hh, out=rec)
    dh0 = carry.add_(rec) if mask is None else carry.addcmul_(rec, mask)
    h_prev = hs[:, :-1]
    dw = _weight_grad(dhp, h_prev if mask is None else h_prev * mask[:, None])
    db = dhp.sum((1, 2)) if ctx.has_bias else None
    return dxp, dh0, dw, db, None


# -- GRU with layer norm (reset_after=True) ---------------------------------------------------
class GRUNormFunction(torch.autograd.Function):
    """GRUFunction's step with the recurrent (and input) projections layer-normed per gate::

        q_t  = (h_{t-1} * m) W_hh^T                         (D, B, 3H)
        hp_t = LN_gate(q_t) * g_hh + b_hh                   LN over each gate's H units
        xp_t = LN_gate(xz_t) * g_x + b_x                    xz = x W_ih^T
        r, z = sigmoid(xp_r + hp_r), sigmoid(xp_z + hp_z);  n = tanh(xp_n + r * hp_n)
        h_t  = n + z (h_{t-1} - n)

    With the sequence kernel (``_gru_sequence_kernels``: one native call each way, both layer norms
    inside), ``xin`` is xz and g_x (D, 3H), b_x (D, 3H) | None are arguments. With the step
    kernels (a bmm, a gate-norm call and a GRU call a step), ``xin`` is xp, computed outside,
    and g_x, b_x are None. h0 (D, B, H); w_hh (D, 3H, H); g_hh (D, 3H); b_hh (D, 3H) | None;
    mask (D, B, H) | None. Returns hs (D, T, B, H) and h_T (D, B, H). Native kernels only
    (``bptt_unsupported_reason`` sends a layer to the reference loop without them); the gains'
    and biases' gradients are summed in float64 inside the backward calls.
    """

    @staticmethod
    def forward(ctx, xin, h0, w_hh, g_x, b_x, g_hh, b_hh, mask):
        D, T, B, G = xin.shape
        H = G // 3
        xin, mask = xin.contiguous(), None if mask is None else mask.contiguous()
        wt = w_hh.transpose(1, 2).contiguous()  # (D, H, 3H)
        q, hp, gates = (xin.new_empty(D, T, B, G) for _ in range(3))
        stats = xin.new_empty(4, D, T, B, 3)  # mean, 1/std of q; then of xz (sequence kernel only)
        hs = xin.new_empty(D, T + 1, B, H)
        hs[:, 0] = h0
        ctx.save_for_backward(w_hh, g_hh, g_x)
        ctx.hs, ctx.q, ctx.hp, ctx.gates, ctx.stats, ctx.mask = hs, q, hp, gates, stats, mask
        ctx.has_bias, ctx.has_x_bias = b_hh is not None, b_x is not None
        ctx.sequence = None if g_x is None else _gru_sequence_kernels(xin)
        assert (ctx.sequence is None) == (g_x is None), "the sequence kernel normalises the input projection"
        if ctx.sequence is not None:  # the whole loop, recurrent matmul and layer norms included, in one call
            ctx.xz = xin
            contiguous = [None if w is None else w.contiguous() for w in (b_hh, g_hh, g_x, b_x)]
            native.gru_sequence_forward(ctx.sequence[0], xin, wt, *contiguous, mask, q, stats, hp, gates, hs, LN_EPS)
            return hs[:, 1:], hs[:, -1].clone()
        hm = xin.new_empty(D, B, H)
        gru, norm = _native("gru", xin), _native("gate_norm", xin)
        gru_step = native.GRUSteps(*gru).bind_forward(xin, hp, gates, hs, mask, hm)
        norm_step = native.GateNormSteps(*norm, 3).bind_forward(q, g_hh, b_hh, hp, stats[0], stats[1], LN_EPS)
        for t in range(T):
            hin = hm if mask is not None and t > 0 else _masked(hs[:, t], mask, hm)  # hm: written by gru_step
            torch.bmm(hin, wt, out=q[:, t])
            norm_step(t)
            gru_step(t)
        ctx.kernels = gru, norm
        return hs[:, 1:], hs[:, -1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs, grad_h):
        w_hh, g_hh, g_x = ctx.saved_tensors
        hs, q, gates, mask = ctx.hs, ctx.q, ctx.gates, ctx.mask
        D, T, B, G = gates.shape
        H = G // 3
        carry = hs.new_zeros(D, B, H) if grad_h is None else grad_h.clone(memory_format=torch.contiguous_format)
        dxp, dhp, dq = torch.empty_like(gates), torch.empty_like(gates), torch.empty_like(gates)
        h_prev = hs[:, :-1]
        if ctx.sequence is not None:
            sums = hs.new_zeros(4, D, G, dtype=torch.float64)  # the gradients of g_hh, b_hh, g_x, b_x
            native.gru_sequence_backward(ctx.sequence[1], gates, ctx.hp, q, ctx.xz, ctx.stats, g_hh.contiguous(),
                                         g_x.contiguous(), hs, w_hh.contiguous(), mask,
                                         None if grad_hs is None else grad_hs.contiguous(), carry, dxp, dhp, dq, sums)
            dw = _weight_grad(dq, h_prev if mask is None else h_prev * mask[:, None])
            dg_hh, db_hh, dg_x, db_x = sums.to(hs.dtype).unbind(0)
            return (dxp, carry, dw, dg_x, db_x if ctx.has_x_bias else None, dg_hh, db_hh if ctx.has_bias else None,
                    None)
        gru, norm = ctx.kernels
        rec = hs.new_empty(D, B, H)
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
        dw = _weight_grad(dq, h_prev if mask is None else h_prev * mask[:, None])
        db = None if db_hh is None else db_hh.to(hs.dtype)
        return dxp, dh0, dw, None, None, dg_hh.to(hs.dtype), db, None


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
        ctx.save_for_backward(w_hh)
        ctx.has_bias, ctx.sequence = b_hh is not None, _gru_sequence_kernels(xp, "gru_rb_seq")
        if ctx.sequence is not None:  # the whole loop, both recurrent matmuls included, in one native call
            mask = None if mask is None else mask.contiguous()
            native.gru_reset_before_sequence_forward(ctx.sequence[0], pre.contiguous(), wt_rz, wt_n, mask, gates, u, hs)
            ctx.hs, ctx.u, ctx.gates, ctx.mask, ctx.native = hs, u, gates, mask, None
            return hs[:, 1:], hs[:, -1].clone()
        hm = xp.new_empty(D, B, H)
        kernels = _native("gru_rb", xp)
        if kernels is not None:  # the element-wise work after each of the step's two matmuls: one native call
            mask = None if mask is None else mask.contiguous()
            steps = native.GRUResetBeforeSteps(*kernels).bind_forward(gates, u, hs, mask, hm)
        for t in range(T):
            if kernels is not None and mask is not None and t > 0:
                hin = hm  # h_{t-1} * mask, written by the previous step's native call
            else:
                hin = _masked(hs[:, t], mask, hm)
            g = gates[:, t]
            torch.baddbmm(pre[:, t, :, : 2 * H], hin, wt_rz, out=g[..., : 2 * H])
            if kernels is not None:
                steps.gates(t)
                torch.baddbmm(pre[:, t, :, 2 * H :], u[:, t], wt_n, out=g[..., 2 * H :])
                steps.state(t)
                continue
            g[..., : 2 * H].sigmoid_()
            torch.mul(g[..., :H], hin, out=u[:, t])
            torch.baddbmm(pre[:, t, :, 2 * H :], u[:, t], wt_n, out=g[..., 2 * H :]).tanh_()
            torch.lerp(g[..., 2 * H :], hs[:, t], g[..., H : 2 * H], out=hs[:, t + 1])
        ctx.hs, ctx.u, ctx.gates, ctx.mask, ctx.native = hs, u, gates, mask, kernels
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
        if ctx.sequence is not None:
            da = torch.empty_like(gates)
            dh = hs.new_zeros(D, B, H) if grad_h is None else grad_h.contiguous().clone()
            native.gru_reset_before_sequence_backward(ctx.sequence[1], gates, hs, w_rz.contiguous(), w_n.contiguous(),
                                                      mask, None if grad_hs is None else grad_hs.contiguous(), dh, da)
            dw = torch.cat([_weight_grad(da[..., : 2 * H], hm), _weight_grad(da[..., 2 * H :], u)], 1)
            return da, dh, dw, da.sum((1, 2)) if ctx.has_bias else None, None
        if ctx.native is not None:
            da = torch.empty_like(gates)
            dh = _gru_reset_before_native_backward(ctx, w_rz, w_n, grad_hs, grad_h, da)
            dw = torch.cat([_weight_grad(da[..., : 2 * H], hm), _weight_grad(da[..., 2 * H :], u)], 1)
            return da, dh, dw, da.sum((1, 2)) if ctx.has_bias else None, None
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


def _gru_reset_before_native_backward(ctx, w_rz, w_n, grad_hs, grad_h, da):
    """The recurrent loop of GRUResetBeforeFunction's backward with the native calls; fills da
    (D, T, B, 3H) and returns dL/dh0. Per step t (last to first): a native call turns
    carry + rec * mask + grad_hs[t] into dL/dh_t and the z, n pre-activation gradients; then
    du = da_n W_n; a native call gives da_r and rec = du r; then rec += da_rz W_rz.
    """
    hs, gates, mask = ctx.hs, ctx.gates, ctx.mask
    D, T, B, G = gates.shape
    H = G // 3
    carry = hs.new_zeros(D, B, H) if grad_h is None else grad_h.clone(memory_format=torch.contiguous_format)
    rec, du = hs.new_empty(D, B, H), hs.new_empty(D, B, H)
    steps = native.GRUResetBeforeSteps(*ctx.native).bind_backward(gates, hs, rec, mask, grad_hs, carry, du, da)
    for t in range(T - 1, -1, -1):
        steps.back_state(t, t == T - 1)
        torch.bmm(da[:, t, :, 2 * H :], w_n, out=du)
        steps.back_gates(t)
        rec.baddbmm_(da[:, t, :, : 2 * H], w_rz)
    return carry.add_(rec) if mask is None else carry.addcmul_(rec, mask)


# -- LSTM ----------------------------------------------------------------------------------------
# The LSTM Function works with its gates in the order (o, i, f, g): one sigmoid over the first
# 3H columns, one tanh over the last H, and the three gates driven by dc (i, f, g) contiguous.
# The rows of the (small) weights are reordered before the input projection, so the large
# per-step tensors never are; autograd maps the gradients back through the reordering.
def lstm_gates_to_kernel_order(p: Optional[Tensor]) -> Optional[Tensor]:
    """A copy of ``p`` (4H, ...) with its gate blocks reordered from torch's (i, f, g, o) to
    the kernels' (o, i, f, g); None stays None."""
    if p is None:
        return None
    H = p.shape[0] // 4
    return torch.cat([p[3 * H :], p[: 3 * H]])


def _lstm_reordered(w):
    """The parameters of one direction with gate rows reordered from (i, f, g, o) to (o, i, f, g)."""
    reorder = lstm_gates_to_kernel_order
    return SimpleNamespace(weight_ih=reorder(w.weight_ih), weight_hh=reorder(w.weight_hh),
                           bias_ih=reorder(w.bias_ih), bias_hh=reorder(w.bias_hh),
                           ln_ih=reorder(w.ln_ih), ln_hh=reorder(w.ln_hh), ln_c_weight=w.ln_c_weight,
                           ln_c_bias=w.ln_c_bias)


_CHUNK = 32  # steps whose backward factors are computed together (cache-sized scratch, no big temporaries)


class LSTMFunction(torch.autograd.Function):
    """LSTM, gates in the order (o, i, f, g); ``c_t = f c_{t-1} + i g``, ``h_t = o tanh(c_t)``.

    xs (D, T, B, F) the layer input of every direction in its own time order; w_ih (D, 4H, F);
    bias (D, 4H) = b_ih + b_hh | None; h0, c0 (D, B, H); w_hh (D, 4H, H); mask (D, B, H) | None;
    all gate blocks in the order o, i, f, g (see ``_lstm_reordered``).
    Returns hs (D, T, B, H), h_T and c_T (D, B, H).

    Cost structure (CPU, where a small op costs microseconds and a fresh large buffer costs a
    page fault per 4 KiB): the input projection is written straight into the ``gates`` buffer
    ``_CHUNK`` steps at a time, just before those steps run, so their slices are still in cache
    when they receive the recurrent matmul in place (``baddbmm_``) and the activations in
    place. Backward writes ``dL/d(pre-activations)`` into a reused workspace (``_workspace``: no
    fresh (T, B, 4H) buffer per call); the factors that do not depend on the incoming gradient
    are computed ``_CHUNK`` steps at a time into a small scratch buffer; the weight and bias
    gradients are one matmul after the loop (``_lstm_weight_grads``).
    """

    @staticmethod
    def forward(ctx, xs, w_ih, bias, h0, c0, w_hh, mask):
        D, T, B, _ = xs.shape
        H = h0.shape[-1]
        ctx.set_materialize_grads(False)  # unused outputs (hs when only h_T is used) give None
        ctx.sequence = _lstm_sequence_kernels(xs, H)
        if ctx.sequence is not None:
            return _lstm_sequence_forward(ctx, xs, w_ih, bias, h0, c0, w_hh, mask)
        gates = xs.new_empty(D, T, B, 4 * H)  # pre-activations, then activations in place
        w_ih2, wt, bias2 = _double_g_rows(w_ih, w_hh, bias)
        hs, cs = xs.new_empty(D, T + 1, B, H), xs.new_empty(D, T + 1, B, H)  # cs: -2 c_t (see below)
        hs[:, 0] = h0
        torch.mul(c0, -2.0, out=cs[:, 0])
        tc = xs.new_empty(D, T, B, H)  # u_t = sigmoid(-2 c_t) = (1 - tanh(c_t)) / 2
        hm = hs[:, :-1] if mask is None else xs.new_empty(D, T, B, H)  # input of the recurrent matmul
        gv = gates.view(D, T, B, 4, H)
        full, gg = gates.unbind(1), gates[..., 3 * H :].unbind(1)
        o, i, f = (gv[:, :, :, k].unbind(1) for k in range(3))
        h_l, c_l, tc_l, hm_l = hs.unbind(1), cs.unbind(1), tc.unbind(1), hm.unbind(1)
        minus_one, two = xs.new_tensor(-1.0), xs.new_tensor(2.0)
        if mask is not None:
            mask = mask.contiguous()
            torch.mul(h_l[0], mask, out=hm_l[0])
        kernels = _native("lstm", xs)
        native_step = None if kernels is None else native.LSTMSteps(*kernels).bind_forward(gates, cs, tc, hs, mask, hm)
        for t in range(T):
            if t % _CHUNK == 0:  # the input projection of the next steps, while their gates are in cache
                _project(xs[:, t : t + _CHUNK], w_ih2, bias2, out=gates[:, t : t + _CHUNK])
            if native_step is not None:  # the element-wise rest of the step in one native call
                full[t].baddbmm_(hm_l[t], wt)
                native_step(t)
                continue
            if mask is not None and t > 0:
                torch.mul(h_l[t], mask, out=hm_l[t])
            full[t].baddbmm_(hm_l[t], wt)
            full[t].sigmoid_()  # o, i, f; and sigmoid(2 a_g) in the g block
            torch.addcmul(minus_one, gg[t], two, out=gg[t])  # g = tanh(a_g) = 2 sigmoid(2 a_g) - 1
            # The loop keeps -2 c_t instead of c_t: then tanh(c_t) = 1 - 2 sigmoid(-2 c_t) gives
            # h_t = o (1 - 2 u_t) in one addcmul; c_t to h_t take four small ops instead of six. (ATen's
            # CPU tanh enters an OpenMP parallel region at any size, even 512 elements, while
            # sigmoid/mul/addcmul of a (B, H) slice run inline.)
            c = torch.mul(f[t], c_l[t], out=c_l[t + 1]).addcmul_(i[t], gg[t], value=-2)  # -2 c_t
            u = torch.sigmoid(c, out=tc_l[t])
            torch.addcmul(o[t], o[t], u, value=-2, out=h_l[t + 1])  # h_t = o tanh(c_t)
        ctx.save_for_backward(xs, w_ih, w_hh)
        ctx.gates, ctx.cs, ctx.tc, ctx.hm, ctx.mask, ctx.native = gates, cs, tc, hm, mask, kernels
        ctx.has_bias = bias is not None
        return hs[:, 1:], hs[:, -1].clone(), cs[:, -1].mul(-0.5)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs, grad_h, grad_c):
        if ctx.sequence is not None:
            return _lstm_sequence_backward(ctx, grad_hs, grad_h, grad_c)
        xs, w_ih, w_hh = ctx.saved_tensors
        gates, cs, tc, hm, mask = ctx.gates, ctx.cs, ctx.tc, ctx.hm, ctx.mask
        D, T, B, G = gates.shape
        H = G // 4
        contiguous = torch.contiguous_format
        kernels = ctx.native
        dh = hs_zero = gates.new_zeros(D, B, H)
        if grad_h is not None:
            dh = grad_h.clone(memory_format=contiguous)
        if grad_hs is not None and kernels is None:  # (the native step adds each step's output gradient)
            dh = dh + grad_hs[:, T - 1]
        dc = hs_zero.clone() if grad_c is None else grad_c.clone(memory_format=contiguous)
        gv = gates.view(D, T, B, 4, H)
        da = _workspace(gates)  # (D, T, B, 4H): dL/d(pre-activations), o, i, f, g
        dav = da.view(D, T, B, 4, H)
        da_full, da_o, da_ifg = da.unbind(1), dav[:, :, :, 0].unbind(1), dav[:, :, :, 1:].unbind(1)
        grads = None if grad_hs is None else grad_hs.unbind(1)
        tmp = gates.new_empty(D, B, H)
        if kernels is not None:  # each step: one native call, then dL/dh_{t-1} = (da_t W_hh) * mask + ...
            rec = dh.contiguous()  # for the last step: the final state's gradient, not masked
            step = native.LSTMSteps(*kernels).bind_backward(gates, tc, cs, rec, mask, grad_hs, dc, da)
            for t in range(T - 1, -1, -1):
                step(t, t == T - 1)
                torch.bmm(da_full[t], w_hh, out=rec)
            dh = rec if mask is None else rec.mul_(mask)  # dL/dh0
        else:
            f = gv[:, :, :, 2].unbind(1)
            scratch = gates.new_empty(D, min(T, _CHUNK), B, 5, H)
            for t1 in range(T, 0, -_CHUNK):
                t0 = max(0, t1 - _CHUNK)
                fo, fifg, to_c, k = _lstm_factors(gv[:, t0:t1], tc[:, t0:t1], cs[:, t0:t1], scratch[:, : t1 - t0],
                                                  scaled=True)
                for t in range(t1 - 1, t0 - 1, -1):
                    j = t - t0
                    dc.addcmul_(dh, to_c[j], value=k)  # dL/dc_t
                    torch.mul(dh, fo[j], out=da_o[t])
                    torch.mul(dc.unsqueeze(2), fifg[j], out=da_ifg[t])
                    dc.mul_(f[t])  # dL/dc_{t-1}, through c_t = f c_{t-1} + ...
                    grad = grads[t - 1] if grads is not None and t > 0 else None
                    _recurrent_grad(dh, da_full[t], w_hh, mask, grad, tmp)  # dL/dh_{t-1}
        need = ctx.needs_input_grad
        dxs = torch.bmm(da.view(D, T * B, G), w_ih).view(xs.shape) if need[0] else None
        dw_ih, dw_hh, db = _lstm_weight_grads(da, xs, hm, need[1], ctx.has_bias and need[2])
        return dxs, dw_ih, db, dh, dc, dw_hh, None


def _lstm_sequence_kernels(like: Tensor, H: int):
    """The LSTM sequence kernels for ``like``'s dtype when they are available and chosen, else None."""
    return dispatch.sequence_kernels("lstm_seq", like, H)


def _lstm_sequence_forward(ctx, xs, w_ih, bias, h0, c0, w_hh, mask):
    """LSTMFunction's forward in one native call (plain cells: xz = xs W_ih^T + bias, c and tanh(c) kept)."""
    D, T, B, _ = xs.shape
    H = h0.shape[-1]
    xz = _project(xs, w_ih, bias).contiguous()
    gates, tc = xs.new_empty(D, T, B, 4 * H), xs.new_empty(D, T, B, H)
    hs, cs = xs.new_empty(D, T + 1, B, H), xs.new_empty(D, T + 1, B, H)
    hs[:, 0], cs[:, 0] = h0, c0
    mask = None if mask is None else mask.contiguous()
    native.lstm_sequence_forward(ctx.sequence[0], xz, w_hh.transpose(1, 2).contiguous(), None, None, None, None, None,
                                 mask, None, None, gates, cs, tc, hs, LN_EPS)
    ctx.save_for_backward(xs, w_ih, w_hh)
    ctx.gates, ctx.cs, ctx.tc, ctx.hs, ctx.mask, ctx.has_bias = gates, cs, tc, hs, mask, bias is not None
    return hs[:, 1:], hs[:, -1].clone(), cs[:, -1].clone()


def _lstm_sequence_backward(ctx, grad_hs, grad_h, grad_c):
    xs, w_ih, w_hh = ctx.saved_tensors
    gates, hs, mask = ctx.gates, ctx.hs, ctx.mask
    D, T, B, G = gates.shape
    contiguous = torch.contiguous_format
    dh = gates.new_zeros(D, B, G // 4) if grad_h is None else grad_h.clone(memory_format=contiguous)
    dc = gates.new_zeros(D, B, G // 4) if grad_c is None else grad_c.clone(memory_format=contiguous)
    da = _workspace(gates)
    native.lstm_sequence_backward(ctx.sequence[1], gates, None, None, None, None, None, None, ctx.cs, ctx.tc, hs,
                                  w_hh.contiguous(), mask, None if grad_hs is None else grad_hs.contiguous(), dh, dc,
                                  da, None, None)
    hm = hs[:, :-1] if mask is None else hs[:, :-1] * mask[:, None]
    need = ctx.needs_input_grad
    dxs = torch.bmm(da.view(D, T * B, G), w_ih).view(xs.shape) if need[0] else None
    dw_ih, dw_hh, db = _lstm_weight_grads(da, xs, hm, need[1], ctx.has_bias and need[2])
    return dxs, dw_ih, db, dh, dc, dw_hh, None


def _double_g_rows(w_ih: Tensor, w_hh: Tensor, bias: Optional[Tensor]):
    """Copies of w_ih (D, 4H, F), w_hh^T (D, H, 4H) and bias (D, 4H) with the g gate's rows doubled.

    Why: the forward then gets all four gates from ONE sigmoid per step, g = tanh(a) =
    2 sigmoid(2a) - 1. ATen's tanh splits even an 8k-element call over the intra-op threads;
    with 2 threads here ``sigmoid_`` over (B, 3H) + ``tanh_`` over (B, H) took ~50 us a step,
    ``sigmoid_`` over (B, 4H) + one ``addcmul`` ~25 us. The backward needs only g itself.
    """
    H = w_hh.shape[-1]
    w_ih2, wt = w_ih.clone(), w_hh.transpose(1, 2).contiguous()
    w_ih2[:, 3 * H :] *= 2
    wt[..., 3 * H :] *= 2
    bias2 = None if bias is None else bias.clone()
    if bias2 is not None:
        bias2[:, 3 * H :] *= 2
    return w_ih2, wt, bias2


def _lstm_weight_grads(da: Tensor, xs: Tensor, hm: Tensor, need_ih: bool, need_bias: bool):
    """dW_ih, dW_hh, db (None where not needed) in ONE pass over da (D, T, B, G).

    ``da^T [xs | hm | 1]`` is the three sums over (t, b) at once: reading the (T*B, G) gradient
    once instead of three times, for the price of copying the smaller [xs | hm] side.
    """
    F_, H = xs.shape[-1], hm.shape[-1]
    parts = ([xs] if need_ih else []) + [hm] + ([hm.new_ones(hm.shape[:-1] + (1,))] if need_bias else [])
    grads = _weight_grad(da, torch.cat(parts, -1) if len(parts) > 1 else hm)
    k = F_ if need_ih else 0
    dw_ih = grads[..., :k] if need_ih else None
    db = grads[..., -1] if need_bias else None
    return dw_ih, grads[..., k : k + H], db


def _lstm_factors(gv: Tensor, tc: Tensor, c_prev: Tensor, scratch: Tensor, scaled: bool = False):
    """The gradient factors of n steps that do not depend on dL/dh, as per-step lists of views.

    gv (D, n, B, 4, H) activations o, i, f, g; tc = tanh(c_t), c_prev = c_{t-1} (D, n, B, H).
    scratch (D, n, B, 5, H) receives [o'tanh(c), i'g, f'c_{t-1}, g'i, o(1-tanh^2 c) / k] where
    a' is the activation derivative (s(1-s) for the sigmoid gates, 1-g^2 for g). Returns lists
    over the n steps of: the o factor (D, B, H); the i, f, g factors (D, B, 3, H); the dh -> dc
    factor (D, B, H), to be used times k; and k.

    ``scaled=True`` (LSTMFunction's forward): tc holds u = sigmoid(-2 c_t) and c_prev holds
    -2 c_{t-1}. With tanh(c) = 1 - 2u and 1 - tanh^2(c) = 4u(1 - u) the factors take as many
    passes as from tanh(c) itself (k = 4).
    """
    o, i, f, g = gv.unbind(3)
    fo, fi, ff, fg, to_c = scratch.unbind(3)
    # s(1-s) as s - s*s and 1-u^2 as 1 - u*u, written straight into the scratch slots: 10 passes
    # instead of 14 and no fresh (D, n, B, 3, H) temporary for 1 - s.
    torch.addcmul(o, o, o, value=-1, out=fo)
    torch.addcmul(i, i, i, value=-1, out=fi).mul_(g)
    torch.addcmul(f, f, f, value=-1, out=ff)
    torch.addcmul(i, i, torch.mul(g, g, out=fg), value=-1, out=fg)  # i (1 - g^2)
    if scaled:
        fo.addcmul_(fo, tc, value=-2)  # o'(1 - 2u)
        torch.addcmul(ff.new_zeros(()), ff, c_prev, value=-0.5, out=ff)  # f' c_{t-1}
        torch.addcmul(tc, tc, tc, value=-1, out=to_c).mul_(o)  # o u (1 - u) = o (1 - tanh^2 c) / 4
        k = 4.0
    else:
        fo.mul_(tc)
        ff.mul_(c_prev)
        torch.addcmul(o, o, torch.mul(tc, tc, out=to_c), value=-1, out=to_c)  # o (1 - tanh^2 c)
        k = 1.0
    return fo.unbind(1), scratch[:, :, :, 1:4].unbind(1), to_c.unbind(1), k


def _native(name: str, like: Tensor):
    """The native kernels ``name`` (see :func:`rnnkit.native.kernels`) for ``like``'s dtype on CPU,
    or None: the Function then runs its torch loop."""
    return native.kernels_for(name, like)


_WORKSPACES = threading.local()


def _workspace(like: Tensor) -> Tensor:
    """An uninitialised tensor shaped like ``like``, reused across backward calls of this thread.

    Why: on CPU a fresh buffer above glibc's mmap threshold (32 MiB) is new pages every call,
    and faulting them in cost about as much as two passes over the data (measured: 100 MB,
    70 ms fresh vs 20 ms reused). The gradient of the pre-activations lives only during one
    backward call, and backward calls of one thread run one at a time, so one buffer (the
    largest needed so far, per device and dtype) serves them all.
    """
    key = (like.device, like.dtype)
    cache = getattr(_WORKSPACES, "buffers", None)
    if cache is None:
        cache = _WORKSPACES.buffers = {}
    buf = cache.get(key)
    if buf is None or buf.numel() < like.numel():
        buf = cache[key] = like.new_empty(like.numel())
    return buf[: like.numel()].view(like.shape)


def _recurrent_grad(out: Tensor, da: Tensor, w: Tensor, mask, grad, tmp: Tensor) -> Tensor:
    """``out = grad + (da @ w) * mask`` (grad and mask optional): da (D, B, G), w (D, G, H)."""
    if mask is None:
        return torch.bmm(da, w, out=out) if grad is None else torch.baddbmm(grad, da, w, out=out)
    torch.bmm(da, w, out=tmp)
    return torch.mul(tmp, mask, out=out) if grad is None else torch.addcmul(grad, tmp, mask, out=out)


# -- LSTM with layer normalisation --------------------------------------------------------------
class LSTMNormFunction(torch.autograd.Function):
    """LSTM with layer norm (Ba et al., 2016), gates in the order (o, i, f, g)::

        a_t   = LN_gate(xz_t) * g_x + bias + LN_gate(hm_t W_hh^T) * g_hh     LN over each gate's H units
        c_t   = f c_{t-1} + i g
        h_t   = o tanh(LN(c_t) * w_c + b_c)

    With the native kernels, ``xin`` is xz = x W_ih^T (D, T, B, 4H) and the step kernels
    normalise it too (g_x (D, 4H) and bias (D, 4H) = b_ih + b_hh | None are arguments): the
    normalised input projection is never written out. Without them, ``xin`` is
    xp = LN_gate(xz) * g_x + bias, computed by autograd outside, and g_x, bias are None.
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
        hs, cs = xin.new_empty(D, T + 1, B, H), xin.new_empty(D, T + 1, B, H)
        hs[:, 0], cs[:, 0] = h0, c0
        tc = xin.new_empty(D, T, B, H)  # tanh(LN(c_t) w_c + b_c)
        kernels = ctx.native = None if g_x is None else _native("lstm_ln", xin)
        assert (kernels is None) == (g_x is None), "the input projection is normalised by the native kernels only"
        ctx.save_for_backward(w_hh, g_hh, w_c)
        ctx.gates, ctx.hp, ctx.cs, ctx.tc = gates, hp, cs, tc
        ctx.sequence = None if g_x is None else _lstm_sequence_kernels(xin, H)
        if ctx.sequence is not None:  # the whole loop, matmul and layer norms included, in one native call
            xin, mask = xin.contiguous(), None if mask is None else mask.contiguous()
            stats = xin.new_empty(18 * D * T * B)  # mean, 1/std: of xz and hp per gate (4 each), of c
            weights = [None if w is None else w.contiguous() for w in (g_x, bias, g_hh, w_c, b_c)]
            native.lstm_sequence_forward(ctx.sequence[0], xin, wt, *weights, mask, hp, stats, gates, cs, tc, hs, LN_EPS)
            ctx.xz, ctx.g_x, ctx.has_bias, ctx.mask, ctx.stats, ctx.hs = xin, weights[0], bias is not None, mask, stats, hs
            return hs[:, 1:], hs[:, -1].clone(), cs[:, -1].clone()
        hm = ctx.hm = hs[:, :-1] if mask is None else xin.new_empty(D, T, B, H)  # the recurrent matmul's input
        if kernels is not None:  # after each step's matmul, the rest of the step in one native call
            xin, mask = xin.contiguous(), None if mask is None else mask.contiguous()
            stats = [xin.new_empty(D, T, B, 4) for _ in range(4)] + [xin.new_empty(D, T, B) for _ in range(2)]
            step = native.LSTMNormSteps(*kernels).bind_forward(xin, hp, g_x, bias, g_hh, w_c, b_c, gates, stats,
                                                               cs, tc, hs, mask, hm, LN_EPS)
            if mask is not None:
                torch.mul(hs[:, 0], mask, out=hm[:, 0])
            for t in range(T):
                torch.bmm(hm[:, t], wt, out=hp[:, t])
                step(t)
            ctx.xz, ctx.g_x, ctx.has_bias, ctx.mask, ctx.stats = xin, g_x, bias is not None, mask, stats
            return hs[:, 1:], hs[:, -1].clone(), cs[:, -1].clone()
        xp = xin
        stats_h, stats_c = [], []  # (mean, rstd) per step: (D, B, 4, 1) and (D, B, 1)
        gv = gates.view(D, T, B, 4, H)
        full, sig, gg = gates.unbind(1), gates[..., : 3 * H].unbind(1), gates[..., 3 * H :].unbind(1)
        o, i, f = (gv[:, :, :, k].unbind(1) for k in range(3))
        xp_l, hp_l = xp.unbind(1), hp.unbind(1)
        h_l, c_l, tc_l, hm_l = hs.unbind(1), cs.unbind(1), tc.unbind(1), hm.unbind(1)
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
            torch.addcmul(bc, c_hat, wc, out=tc_l[t]).tanh_()
            torch.mul(o[t], tc_l[t], out=h_l[t + 1])
        ctx.mask, ctx.stats_h, ctx.stats_c = mask, stats_h, stats_c
        return hs[:, 1:], hs[:, -1].clone(), cs[:, -1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs, grad_h, grad_c):
        w_hh, g_hh, w_c = ctx.saved_tensors
        if ctx.sequence is not None:
            return _lstm_norm_sequence_backward(ctx, w_hh, g_hh, w_c, grad_hs, grad_h, grad_c)
        gates, hp, cs, tc, hm, mask = ctx.gates, ctx.hp, ctx.cs, ctx.tc, ctx.hm, ctx.mask
        D, T, B, G = gates.shape
        H = G // 4
        if ctx.native is not None:
            return _lstm_norm_native_backward(ctx, w_hh, g_hh, w_c, grad_hs, grad_h, grad_c)
        dh = gates.new_zeros(D, B, H) if grad_h is None else grad_h.clone()
        if grad_hs is not None:
            dh = dh + grad_hs[:, T - 1]
        dc = gates.new_zeros(D, B, H) if grad_c is None else grad_c.clone()
        gv = gates.view(D, T, B, 4, H)
        da = torch.empty_like(gates)  # dL/d(pre-activations) = dL/dxp, returned
        dav = da.view(D, T, B, 4, H)
        da_full, da_o, da_ifg = da.unbind(1), dav[:, :, :, 0].unbind(1), dav[:, :, :, 1:].unbind(1)
        dhp = _workspace(gates)  # dL/d(hm W_hh^T) before its layer norm, for dW_hh only
        dhp_l = dhp.unbind(1)
        dtc = torch.empty_like(tc)  # dL/d(LN(c_t) w_c + b_c), kept for the gradients of w_c, b_c
        dtc_l, hp_l, c_l = dtc.unbind(1), hp.unbind(1), cs.unbind(1)
        grads = None if grad_hs is None else grad_hs.unbind(1)
        f = gv[:, :, :, 2].unbind(1)
        scratch = gates.new_empty(D, min(T, _CHUNK), B, 5, H)
        gain, wc = g_hh.unsqueeze(1), w_c.unsqueeze(1)
        tmp, dhat = gates.new_empty(D, B, H), gates.new_empty(D, B, G)
        for t1 in range(T, 0, -_CHUNK):
            t0 = max(0, t1 - _CHUNK)
            fo, fifg, to_c, _ = _lstm_factors(gv[:, t0:t1], tc[:, t0:t1], cs[:, t0:t1], scratch[:, : t1 - t0])
            for t in range(t1 - 1, t0 - 1, -1):
                j = t - t0
                torch.mul(dh, to_c[j], out=dtc_l[t])
                mean, rstd = ctx.stats_c[t]
                dc.add_(_ln_backward(torch.mul(dtc_l[t], wc, out=tmp), c_l[t + 1], mean, rstd))  # dL/dc_t
                torch.mul(dh, fo[j], out=da_o[t])
                torch.mul(dc.unsqueeze(2), fifg[j], out=da_ifg[t])
                dc.mul_(f[t])
                mean, rstd = ctx.stats_h[t]
                torch.mul(da_full[t], gain, out=dhat)
                dhp_l[t].copy_(_ln_backward(dhat.view(D, B, 4, H), hp_l[t].view(D, B, 4, H), mean, rstd).view(D, B, G))
                grad = grads[t - 1] if grads is not None and t > 0 else None
                _recurrent_grad(dh, dhp_l[t], w_hh, mask, grad, tmp)
        mean_h, rstd_h = (torch.stack(z, 1) for z in zip(*ctx.stats_h))  # (D, T, B, 4, 1)
        mean_c, rstd_c = (torch.stack(z, 1) for z in zip(*ctx.stats_c))  # (D, T, B, 1)
        dg_hh, dw_c = _norm_gain_grads(da, hp, cs, dtc, mean_h, rstd_h, mean_c, rstd_c)
        return da, dh, dc, _weight_grad(dhp, hm), None, None, dg_hh, dw_c, dtc.sum((1, 2)), None


def _norm_gain_grads(da, hp, cs, dtc, mean_h, rstd_h, mean_c, rstd_c):
    """Gradients of the gate-norm gains g_hh (D, 4H) and of w_c (D, H): sums over all steps of the
    incoming gradient times the normalised value, recomputed from the statistics in chunks.

    da, hp (D, T, B, 4H); cs (D, T+1, B, H); dtc (D, T, B, H); mean_h, rstd_h (D, T, B, 4, 1);
    mean_c, rstd_c (D, T, B, 1).
    """
    D, T, B, G = da.shape
    H = G // 4
    dav = da.view(D, T, B, 4, H)
    dg_hh, dw_c = da.new_zeros(D, 4, H), da.new_zeros(D, H)
    for t0 in range(0, T, _CHUNK):
        s = slice(t0, t0 + _CHUNK)
        hat = (hp[:, s].unflatten(-1, (4, H)) - mean_h[:, s]).mul_(rstd_h[:, s])
        dg_hh += (dav[:, s] * hat).sum((1, 2))
        c_hat = (cs[:, 1:][:, s] - mean_c[:, s]).mul_(rstd_c[:, s])
        dw_c += (dtc[:, s] * c_hat).sum((1, 2))
    return dg_hh.view(D, G), dw_c


def _lstm_norm_sequence_backward(ctx, w_hh, g_hh, w_c, grad_hs, grad_h, grad_c):
    """LSTMNormFunction's backward in one native call (the recurrent matmul and layer norms inside)."""
    gates, hs, mask = ctx.gates, ctx.hs, ctx.mask
    D, T, B, G = gates.shape
    H = G // 4
    contiguous = torch.contiguous_format
    dh = gates.new_zeros(D, B, H) if grad_h is None else grad_h.clone(memory_format=contiguous)
    dc = gates.new_zeros(D, B, H) if grad_c is None else grad_c.clone(memory_format=contiguous)
    dxz, dq = torch.empty_like(gates), _workspace(gates)
    sums = gates.new_zeros(D * 14 * H, dtype=torch.float64)  # g_hh, g_x, bias (D, 4H); w_c, b_c (D, H)
    native.lstm_sequence_backward(ctx.sequence[1], gates, ctx.xz, ctx.hp, ctx.stats, ctx.g_x, g_hh.contiguous(),
                                  w_c.contiguous(), ctx.cs, ctx.tc, hs, w_hh.contiguous(), mask,
                                  None if grad_hs is None else grad_hs.contiguous(), dh, dc, dxz, dq, sums)
    hm = hs[:, :-1] if mask is None else hs[:, :-1] * mask[:, None]
    dg_hh, dg_x, dbias, dw_c, db_c = (x.view(D, -1).to(gates.dtype) for x in sums.split([D * G] * 3 + [D * H] * 2))
    return (dxz, dh, dc, _weight_grad(dq, hm), dg_x, dbias if ctx.has_bias else None, dg_hh, dw_c, db_c, None)


def _lstm_norm_native_backward(ctx, w_hh, g_hh, w_c, grad_hs, grad_h, grad_c):
    """LSTMNormFunction's backward with the native step (rnnkit/native.c); same results as its loop.

    Per step t (last to first): one native call turns rec (dL/dhp_{t+1} W_hh) into dL/dh_t and
    writes dL/dxz_t, dL/dhp_t and dL/dc_{t-1}; then rec = dL/dhp_t W_hh (one bmm).
    """
    gates, hp, cs, tc, hm, mask = ctx.gates, ctx.hp, ctx.cs, ctx.tc, ctx.hm, ctx.mask
    D, T, B, G = gates.shape
    H = G // 4
    contiguous = torch.contiguous_format
    rec = gates.new_zeros(D, B, H) if grad_h is None else grad_h.clone(memory_format=contiguous)
    dc = gates.new_zeros(D, B, H) if grad_c is None else grad_c.clone(memory_format=contiguous)
    dxz = torch.empty_like(gates)
    dhp = _workspace(gates)
    sums = gates.new_zeros(D * 14 * H, dtype=torch.float64)  # g_hh, g_x, bias (D, 4H); w_c, b_c (D, H)
    step = native.LSTMNormSteps(*ctx.native).bind_backward(gates, ctx.xz, hp, ctx.stats, ctx.g_x, g_hh, w_c, cs,
                                                           tc, rec, mask, grad_hs, dc, dxz, dhp, sums)
    for t in range(T - 1, -1, -1):
        step(t, t == T - 1)
        torch.bmm(dhp[:, t], w_hh, out=rec)
    dh = rec if mask is None else rec.mul_(mask)
    dg_hh, dg_x, dbias, dw_c, db_c = (x.view(D, -1).to(gates.dtype) for x in sums.split([D * G] * 3 + [D * H] * 2))
    return (dxz, dh, dc, _weight_grad(dhp, hm), dg_x, dbias if ctx.has_bias else None, dg_hh, dw_c, db_c,
            None)


def _ln_backward(grad: Tensor, x: Tensor, mean: Tensor, rstd: Tensor) -> Tensor:
    """Exact gradient of ``(x - mean) * rstd`` (layer norm over the last dim, no affine) w.r.t. x."""
    H = x.shape[-1]
    return torch.ops.aten.native_layer_norm_backward(grad, x, (H,), mean, rstd, None, None, [True, False, False])[0]
