"""Layer normalisation per gate for the layer-normed explicit-BPTT Functions.

``LN_gate(z)`` normalises each gate's block of H units separately (no affine), as
:func:`rnnkit.cells.gate_norm` does; here every tensor carries the direction axis D and the
gains are per direction.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnkit import native

LN_EPS = 1e-5  # as rnnkit.cells.gate_norm and the LSTM's LN(c)


def gate_norm(z: Tensor, gain: Tensor, num_gates: int) -> Tensor:
    """``rnnkit.cells.gate_norm`` with a gain per direction: z (D, T, B, G*H), gain (D, G*H)."""
    D, T, B, GH = z.shape
    hat = F.layer_norm(z.view(D, T, B, num_gates, GH // num_gates), (GH // num_gates,), eps=LN_EPS)
    return hat.view(D, T, B, GH) * gain[:, None, None]


def input_gate_norm(z: Tensor, gain: Tensor, bias: Optional[Tensor], num_gates: int) -> Tensor:
    """``LN_gate(z) * gain + bias`` for a whole input projection z (D, T, B, G*H); gain, bias (D, G*H).

    One native call each way (:class:`GateNormFunction`) where the kernels are available, else
    the same arithmetic as torch ops under autograd.
    """
    kernels = native.kernels_for("gate_norm", z)
    if kernels is None:
        y = gate_norm(z, gain, num_gates)
        return y if bias is None else y + bias[:, None, None]
    return GateNormFunction.apply(z, gain, bias, kernels, num_gates)


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


def ln_backward(grad: Tensor, x: Tensor, mean: Tensor, rstd: Tensor) -> Tensor:
    """Exact gradient of ``(x - mean) * rstd`` (layer norm over the last dim, no affine) w.r.t. x."""
    H = x.shape[-1]
    return torch.ops.aten.native_layer_norm_backward(grad, x, (H,), mean, rstd, None, None, [True, False, False])[0]
