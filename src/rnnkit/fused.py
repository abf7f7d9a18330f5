"""Fast path: torch's fused recurrent kernels, chosen by one explicit predicate.

``fused_unsupported_reason(layer, x)`` returns ``None`` when torch's native kernel computes
exactly what the reference loop in :mod:`rnnkit.recurrent` computes, or a sentence naming
why not. The kernels are the ones ``torch.nn.RNN/LSTM/GRU`` call (``torch._VF.lstm`` etc.):
oneDNN for LSTM on CPU, a native C++ loop for GRU and RNN on CPU, cuDNN on GPU.

Variable lengths go through ``pack_padded_sequence`` as in torch.nn. Dropout between layers is
applied by the kernel itself (same distribution as the reference path, different random draws).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

_FUSED_DTYPES = {
    "cpu": (torch.float32, torch.float64, torch.bfloat16),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}


def fused_unsupported_reason(layer, x: Tensor) -> Optional[str]:
    """None if torch's fused kernel can run ``layer`` on ``x``; otherwise the reason."""
    if layer.cell not in ("rnn", "lstm", "gru"):
        return f"cell {layer.cell!r} has no fused kernel"
    if layer.layer_norm:
        return "layer_norm=True is not in torch's fused kernels"
    if layer.recurrent_dropout > 0 and layer.training:
        return "recurrent_dropout > 0 while training is not in torch's fused kernels"
    if layer.cell == "gru" and not layer.reset_after:
        return "GRU with reset_after=False is not in torch's fused kernels (they compute reset_after=True)"
    dtypes = _FUSED_DTYPES.get(x.device.type)
    if dtypes is None:
        return f"device {x.device.type!r} has no fused recurrent kernel"
    if x.dtype not in dtypes:
        return f"dtype {x.dtype} is not supported by the fused kernel on {x.device.type}"
    return None


def _kernel(layer):
    if layer.cell == "lstm":
        return torch._VF.lstm
    if layer.cell == "gru":
        return torch._VF.gru
    return torch._VF.rnn_tanh if layer.nonlinearity == "tanh" else torch._VF.rnn_relu


def fused_forward(layer, x: Tensor, parts: tuple, lengths: Optional[Tensor]):
    """Run ``layer`` with torch's kernel. x: (B, T, F); parts: tuple of (L*D, B, H).

    Returns the concatenated-direction outputs (B, T, D*H) and the final state tuple.
    """
    kernel = _kernel(layer)
    hx = parts if layer.cell == "lstm" else parts[0]
    args = (layer.flat_weights(), layer.bias, layer.num_layers, float(layer.dropout), layer.training, layer.bidirectional)
    if lengths is None:
        out = kernel(x, hx, *args, True)  # batch_first=True
        return out[0], tuple(out[1:])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    order, unorder = packed.sorted_indices, packed.unsorted_indices
    hx = tuple(p.index_select(1, order) for p in parts)
    out = kernel(packed.data, packed.batch_sizes, hx if layer.cell == "lstm" else hx[0], *args)
    y_packed = type(packed)(out[0], packed.batch_sizes, order, unorder)
    y, _ = pad_packed_sequence(y_packed, batch_first=True, total_length=x.shape[1])
    return y, tuple(p.index_select(1, unorder) for p in out[1:])
