"""The one weight layout of rnnkit, and converters from/to Keras.

rnnkit stores weights exactly as ``torch.nn.RNN/LSTM/GRU`` do, so ``load_state_dict`` works both
ways (``strict=True``) with torch.nn. For layer ``k`` (0-based) and direction suffix ``s``
(``""`` forward, ``"_reverse"`` backward), with ``G`` gates, ``H`` hidden units and ``F_k`` the
layer's input features (``F`` for k = 0, ``D*H`` above)::

    weight_ih_l{k}{s}   (G*H, F_k)   input-to-hidden weights, gates stacked along dim 0
    weight_hh_l{k}{s}   (G*H, H)     hidden-to-hidden weights
    bias_ih_l{k}{s}     (G*H,)       input bias      (only when bias=True)
    bias_hh_l{k}{s}     (G*H,)       recurrent bias  (only when bias=True)

With ``layer_norm=True`` rnnkit adds (and torch.nn has no equivalent of)::

    ln_ih_l{k}{s}        (G*H,)      gain of LN(W_ih x), per gate
    ln_hh_l{k}{s}        (G*H,)      gain of LN(W_hh h), per gate
    ln_c_weight_l{k}{s}  (H,)        LSTM only: gain of LN(c_t)
    ln_c_bias_l{k}{s}    (H,)        LSTM only: bias of LN(c_t)

Gate order along the ``G*H`` axis (``GATE_ORDER``)::

    cell   G   rnnkit / torch.nn     Keras
    rnn    1   (h)                   (h)
    lstm   4   i, f, g, o            i, f, c, o     (same order; Keras calls the candidate c)
    gru    3   r, z, n               z, r, h        (reset and update swapped)

minGRU / minLSTM (``cell="mingru"`` / ``"minlstm"``, Feng et al., 2024) have no recurrent
weights and no torch.nn or Keras counterpart: per layer/direction only ``weight_ih_l{k}{s}``
(G*H, F_k) and ``bias_ih_l{k}{s}`` (G*H,), G = 2 with gates (z, h) for minGRU and G = 3 with
gates (f, i, h) for minLSTM (h: the candidate, before ``g``); see :mod:`rnnkit.cells`.

Keras stores ``kernel`` (F, G*H) and ``recurrent_kernel`` (H, G*H), the transposes of torch's
matrices, and one bias:

* SimpleRNN, LSTM: ``bias`` (G*H,) = ``b_ih + b_hh``. Keras -> rnnkit puts it in ``bias_ih``
  and sets ``bias_hh = 0``.
* GRU ``reset_after=True`` (Keras's default): ``bias`` (2, 3H) = ``[input_bias, recurrent_bias]``,
  which are exactly ``bias_ih`` and ``bias_hh`` after the gate reorder; nothing is summed.
* GRU ``reset_after=False``: ``bias`` (3H,), and Keras computes
  ``n = tanh(W_in x + b_n + U_n (r * h))``. rnnkit's form is
  ``n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)`` (see :class:`rnnkit.cells.GRUCell`), so the
  Keras bias is ``b_ih + b_hh`` for every gate, as for LSTM.

Converters accept NumPy arrays or torch tensors and return the same kind.

rnnkit's own LSTM kernels (explicit BPTT in :mod:`rnnkit.bptt`, the C kernels of
:mod:`rnnkit.native`, the sampling step of :mod:`rnnkit.tasks.textgen`) read the same parameters
through one conversion, defined here and nowhere else (the *kernel layout*):

* gate order ``o, i, f, g`` (``LSTM_KERNEL_GATE_ORDER``): one sigmoid over the first 3H columns,
  one tanh over the last H, and the three gates that the cell's gradient drives (i, f, g)
  contiguous. :func:`lstm_to_kernel_order` reorders the rows of the (small) weights and biases
  before the input projection, so the large per-step tensors never are; autograd maps the
  gradients back through the reordering (:func:`lstm_from_kernel_order` is its inverse).
* the *step* kernels (one step per call, ``rnnkit_lstm_forward_*``, and the torch loop that
  mirrors them) also take the g pre-activation doubled (:func:`double_lstm_g_`), so that the
  one sigmoid gives g too: ``tanh(a) = 2 sigmoid(2a) - 1``; and they carry the cell state as
  ``-2 c`` (:func:`lstm_cell_to_step_kernel`, :func:`lstm_cell_from_step_kernel`), so that
  ``tanh(c) = 1 - 2 sigmoid(-2 c)`` and ``h = o tanh(c)`` is one multiply-add after a sigmoid.
  The whole-sequence and layer-normed kernels take the undoubled g and carry ``c`` itself.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Optional, Sequence

import numpy as np
import torch

from rnnkit.errors import UserError

GATE_ORDER = {
    "rnn": {"torch": ("h",), "keras": ("h",)},
    "lstm": {"torch": ("i", "f", "g", "o"), "keras": ("i", "f", "c", "o")},
    "gru": {"torch": ("r", "z", "n"), "keras": ("z", "r", "h")},
}
NUM_GATES = {"rnn": 1, "lstm": 4, "gru": 3}
LSTM_KERNEL_GATE_ORDER = ("o", "i", "f", "g")  # rnnkit's LSTM kernels (see the module docstring)
LSTM_STEP_KERNEL_CELL_SCALE = -2.0  # the LSTM step kernels carry c as -2 c


def parameter_names(layer: int, direction: int, bias: bool = True) -> tuple:
    """torch.nn names of one layer/direction: ``weight_ih_l{k}[_reverse]``, ... (biases if ``bias``)."""
    s = f"_l{layer}" + ("_reverse" if direction == 1 else "")
    names = ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if bias else ())
    return tuple(n + s for n in names)


def _check_cell(cell: str) -> None:
    if cell not in NUM_GATES:
        raise UserError(f"unknown cell {cell!r}; expected one of {', '.join(NUM_GATES)}")


def _swap_gru_gates(a, axis: int):
    """Swap the first two of three gate blocks along ``axis``: (z, r, h) <-> (r, z, n).

    The permutation is its own inverse, so it serves both directions.
    """
    if isinstance(a, torch.Tensor):
        first, second, third = a.chunk(3, dim=axis)
        return torch.cat([second, first, third], dim=axis)
    first, second, third = np.split(a, 3, axis=axis)
    return np.concatenate([second, first, third], axis=axis)


def _transpose(a):
    return a.t() if isinstance(a, torch.Tensor) else np.ascontiguousarray(a.T)


def _reorder(cell: str, a, axis: int):
    return _swap_gru_gates(a, axis) if cell == "gru" else a


def _zeros_like(a):
    return torch.zeros_like(a) if isinstance(a, torch.Tensor) else np.zeros_like(a)


def keras_to_torch(cell: str, kernel, recurrent_kernel, bias=None, reset_after: bool = True) -> dict:
    """Keras weights of one cell -> ``dict(weight_ih, weight_hh, bias_ih, bias_hh)`` (torch layout).

    kernel: (F, G*H); recurrent_kernel: (H, G*H); bias: (G*H,), or (2, 3H) for GRU with
    ``reset_after=True``, or None (Keras ``use_bias=False``: both biases come back None).
    Returns weight_ih (G*H, F), weight_hh (G*H, H), bias_ih and bias_hh (G*H,).
    """
    _check_cell(cell)
    G = NUM_GATES[cell]
    H = recurrent_kernel.shape[0]
    if tuple(recurrent_kernel.shape) != (H, G * H) or kernel.ndim != 2 or kernel.shape[1] != G * H:
        raise UserError(
            f"{cell} Keras kernels: expected kernel (F, {G}*H) and recurrent_kernel (H, {G}*H), "
            f"got {tuple(kernel.shape)} and {tuple(recurrent_kernel.shape)}"
        )
    out = {
        "weight_ih": _reorder(cell, _transpose(kernel), 0),
        "weight_hh": _reorder(cell, _transpose(recurrent_kernel), 0),
        "bias_ih": None,
        "bias_hh": None,
    }
    if bias is None:
        return out
    two_biases = cell == "gru" and reset_after
    expected = (2, G * H) if two_biases else (G * H,)
    if tuple(bias.shape) != expected:
        raise UserError(f"{cell} Keras bias (reset_after={reset_after}): expected shape {expected}, got {tuple(bias.shape)}")
    if two_biases:
        out["bias_ih"], out["bias_hh"] = _reorder(cell, bias[0], 0), _reorder(cell, bias[1], 0)
    else:
        out["bias_ih"] = _reorder(cell, bias, 0)
        out["bias_hh"] = _zeros_like(out["bias_ih"])
    return out


def torch_to_keras(cell: str, weight_ih, weight_hh, bias_ih=None, bias_hh=None, reset_after: bool = True) -> tuple:
    """torch-layout weights of one cell -> Keras ``(kernel, recurrent_kernel, bias)``.

    weight_ih: (G*H, F); weight_hh: (G*H, H); bias_ih, bias_hh: (G*H,) or both None (then the
    returned bias is None, Keras ``use_bias=False``). Returns kernel (F, G*H), recurrent_kernel
    (H, G*H), bias (G*H,) = b_ih + b_hh, or (2, 3H) = [b_ih, b_hh] for GRU with reset_after=True.
    """
    _check_cell(cell)
    kernel = _transpose(_reorder(cell, weight_ih, 0))
    recurrent_kernel = _transpose(_reorder(cell, weight_hh, 0))
    if bias_ih is None and bias_hh is None:
        return kernel, recurrent_kernel, None
    if bias_ih is None or bias_hh is None:
        raise UserError("torch_to_keras: give both bias_ih and bias_hh, or neither")
    if cell == "gru" and reset_after:
        stack = torch.stack if isinstance(bias_ih, torch.Tensor) else np.stack
        return kernel, recurrent_kernel, stack([_reorder(cell, bias_ih, 0), _reorder(cell, bias_hh, 0)])
    return kernel, recurrent_kernel, _reorder(cell, bias_ih + bias_hh, 0)


def _keras_reset_after(module) -> bool:
    return bool(getattr(module, "reset_after", True))


def load_keras_weights(module, weights: Sequence, layer: int = 0, direction: int = 0) -> None:
    """Copy Keras weights into one layer/direction of a :class:`rnnkit.Recurrent` (in place).

    weights: ``[kernel, recurrent_kernel]`` or ``[kernel, recurrent_kernel, bias]``, as Keras's
    ``layer.get_weights()`` returns them (for a Keras ``Bidirectional``, the first half is the
    forward layer, direction 0, and the second half the backward layer, direction 1). The GRU
    form is the module's ``reset_after``. A Keras bias loaded into a module with ``bias=False``,
    or the reverse, is an error.
    """
    if len(weights) not in (2, 3):
        raise UserError(f"expected [kernel, recurrent_kernel(, bias)], got {len(weights)} arrays")
    bias = weights[2] if len(weights) == 3 else None
    if (bias is not None) != bool(module.bias):
        raise UserError(f"Keras weights {'have' if bias is not None else 'lack'} a bias but the module has bias={module.bias}")
    names = parameter_names(layer, direction, module.bias)
    params = [getattr(module, n, None) for n in names]
    if any(p is None for p in params):
        raise UserError(f"module has no layer {layer} direction {direction} (num_layers={module.num_layers}, bidirectional={module.bidirectional})")
    arrays = [w if isinstance(w, torch.Tensor) else torch.from_numpy(np.asarray(w)) for w in weights]
    tensors = keras_to_torch(module.cell, *arrays[:2], arrays[2] if bias is not None else None, _keras_reset_after(module))
    with torch.no_grad():
        for name, p in zip(names, params):
            value = tensors[name.split("_l")[0]]
            if tuple(value.shape) != tuple(p.shape):
                raise UserError(f"{name}: Keras weights give shape {tuple(value.shape)}, the module expects {tuple(p.shape)}")
            p.copy_(value)


def keras_weights(module, layer: int = 0, direction: int = 0) -> list:
    """One layer/direction of a :class:`rnnkit.Recurrent` as Keras NumPy arrays.

    Returns ``[kernel, recurrent_kernel, bias]`` (``[kernel, recurrent_kernel]`` when the module
    has no bias), ready for Keras's ``layer.set_weights``. Layer norm has no Keras equivalent.
    """
    if getattr(module, "layer_norm", False):
        raise UserError("layer_norm=True weights have no Keras equivalent")
    w = module.direction_parameters(layer, direction)
    if w.weight_ih is None:
        raise UserError(f"module has no layer {layer} direction {direction}")
    arrays = [None if t is None else t.detach().cpu().numpy() for t in (w.weight_ih, w.weight_hh, w.bias_ih, w.bias_hh)]
    kernel, recurrent_kernel, bias = torch_to_keras(module.cell, *arrays, reset_after=_keras_reset_after(module))
    return [kernel, recurrent_kernel] + ([] if bias is None else [bias])


# -- rnnkit's LSTM kernel layout (see the module docstring) ---------------------------------------
def _permute_gates(p, source: tuple, target: tuple, dim: int):
    """A copy of ``p`` with its equal gate blocks along ``dim`` moved from ``source`` to ``target`` order."""
    blocks = p.chunk(len(source), dim)
    return torch.cat([blocks[source.index(gate)] for gate in target], dim)


def lstm_to_kernel_order(p: Optional[torch.Tensor], dim: int = 0) -> Optional[torch.Tensor]:
    """A copy of ``p`` (4H along ``dim``) with its gate blocks reordered from torch's (i, f, g, o)
    to the kernels' (o, i, f, g); None stays None."""
    return None if p is None else _permute_gates(p, GATE_ORDER["lstm"]["torch"], LSTM_KERNEL_GATE_ORDER, dim)


def lstm_from_kernel_order(p: Optional[torch.Tensor], dim: int = 0) -> Optional[torch.Tensor]:
    """The inverse of :func:`lstm_to_kernel_order`: (o, i, f, g) -> torch's (i, f, g, o)."""
    return None if p is None else _permute_gates(p, LSTM_KERNEL_GATE_ORDER, GATE_ORDER["lstm"]["torch"], dim)


def lstm_direction_to_kernel(w: SimpleNamespace) -> SimpleNamespace:
    """The parameters of one LSTM layer/direction (as ``Recurrent.direction_parameters`` returns
    them) with every gate-stacked tensor in the kernels' gate order; the LN(c) affine is per unit
    and stays as it is."""
    return SimpleNamespace(weight_ih=lstm_to_kernel_order(w.weight_ih), weight_hh=lstm_to_kernel_order(w.weight_hh),
                           bias_ih=lstm_to_kernel_order(w.bias_ih), bias_hh=lstm_to_kernel_order(w.bias_hh),
                           ln_ih=lstm_to_kernel_order(w.ln_ih), ln_hh=lstm_to_kernel_order(w.ln_hh),
                           ln_c_weight=w.ln_c_weight, ln_c_bias=w.ln_c_bias)


def double_lstm_g_(p: torch.Tensor, dim: int) -> torch.Tensor:
    """In place: the g block of ``p`` (kernel order, the last quarter along ``dim``) times 2, the
    step kernels' form (``g = tanh(a) = 2 sigmoid(2a) - 1``). Returns ``p``."""
    H = p.shape[dim] // 4
    p.narrow(dim, 3 * H, H).mul_(2)
    return p


def lstm_cell_to_step_kernel(c: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The cell state ``c`` as the step kernels carry it: ``-2 c`` (into ``out`` if given)."""
    return torch.mul(c, LSTM_STEP_KERNEL_CELL_SCALE, out=out)


def lstm_cell_from_step_kernel(neg_two_c: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`lstm_cell_to_step_kernel`: ``c`` from ``-2 c`` (a new tensor)."""
    return neg_two_c.mul(1 / LSTM_STEP_KERNEL_CELL_SCALE)
