"""The explicit-BPTT layer driver: runs a layer's stack and directions with the per-cell Functions.

Layout inside: ``(D, T, B, X)`` (time-major, so a step is one contiguous slice), the reverse
direction stored in its own (reversed) time order; between layers ``(T, B, D*H)``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit import native
from rnnkit.bptt import gru, gru_norm, lstm, lstm_norm, rnn

_DTYPES = (torch.float32, torch.float64)


def bptt_unsupported_reason(layer, x: Tensor, lengths: Optional[Tensor] = None) -> Optional[str]:
    """None if the explicit-BPTT path computes ``layer`` on ``x`` exactly; otherwise the reason."""
    if layer.cell not in ("rnn", "lstm", "gru"):
        return f"cell {layer.cell!r} has no explicit-BPTT implementation"
    if lengths is not None:
        return "variable lengths are left to the fused kernel or the reference loop"
    if layer.layer_norm and layer.cell != "lstm":
        if layer.cell != "gru" or not layer.reset_after:
            return "layer_norm=True is in the explicit-BPTT path for LSTM and GRU (reset_after=True) only"
        if native.kernels_for("gru", x) is None or native.kernels_for("gate_norm", x) is None:
            return "layer_norm=True for GRU needs rnnkit's native kernels (" + (native.unavailable_reason() or
                                                                                 "not on this device") + ")"
    if x.dtype not in _DTYPES:
        return f"dtype {x.dtype} is not supported by the explicit-BPTT path (float32/float64 only)"
    return None


def _run_layer(layer):
    """The per-cell ``run(layer, xs, ws, first, mask) -> (hs, final state tuple)`` for ``layer``."""
    if layer.cell == "lstm":
        return lstm_norm.run if layer.layer_norm else lstm.run
    if layer.cell == "gru":
        return gru_norm.run if layer.layer_norm else gru.run  # layer norm: reset_after=True (bptt_unsupported_reason)
    return rnn.run


def bptt_forward(layer, x: Tensor, parts: tuple):
    """Run ``layer`` (no lengths) with the explicit-BPTT Functions; mirrors ``reference_forward``.

    x: (B, T, F); parts: tuple of (L*D, B, H). Returns outputs (B, T, D*H) and the final parts.
    Inside, activations are time-major, ``(T, B, X)``, so that every step is a contiguous slice.
    """
    B, T, _ = x.shape
    D = layer.num_directions
    run = _run_layer(layer)
    finals = [[] for _ in parts]
    layer_input = x.transpose(0, 1)  # (T, B, F)
    for k in range(layer.num_layers):
        ws = [layer.direction_parameters(k, d) for d in range(D)]
        masks = [layer.recurrent_dropout_mask(B, x) for _ in range(D)]  # same RNG order as reference
        mask = None if masks[0] is None else torch.stack(masks)  # (D, B, H)
        xs = _inputs_in_own_time(layer_input, D)  # (D, T, B, F)
        first = [p[k * D : (k + 1) * D] for p in parts]  # each (D, B, H)
        hs, last = run(layer, xs, ws, first, mask)  # hs (D, T, B, H), each direction in its own time
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
