"""The recurrent layer: one generic driver that runs any cell over time.

``Recurrent`` stacks layers and directions, handles variable lengths, dropout between layers
and variational recurrent dropout, and returns ``(outputs, state)`` always. ``RNN``, ``LSTM``
and ``GRU`` are thin named configurations of it. All tensors are batch-first.

Shapes: ``x`` (B, T, F); ``outputs`` (B, T, D*H) (``(B, T, H)`` for the merge modes sum, mean
and mul); ``state`` (L*D, B, H), or the tuple ``(h, c)`` for LSTM, as in torch.nn.

Parameters use torch.nn's names and shapes (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...), so
``load_state_dict`` works both ways with ``nn.RNN/LSTM/GRU`` (see :mod:`rnnkit.layout`).

Three execution paths give the same numbers (tested):

* the *reference* path below: the input projection hoisted for all steps, then a Python loop
  over time calling the cell's step function from :mod:`rnnkit.cells`;
* the *fused* path (:mod:`rnnkit.fused`): torch's native kernels (oneDNN LSTM on CPU, cuDNN on
  GPU), chosen by the explicit predicate ``fused_unsupported_reason``;
* the *explicit-BPTT* path (:mod:`rnnkit.bptt`): one autograd Function per cell with a
  hand-written backward loop (and rnnkit's native kernels inside), chosen by
  ``bptt_unsupported_reason``.

minGRU/minLSTM layers take the *scan* path (:mod:`rnnkit.scan`) instead of the last two.
``Recurrent.choose_path`` picks one per call (``layer.last_path`` records it): the fused kernel
where the table of measured choices says it is the faster (:mod:`rnnkit.dispatch`), else
explicit BPTT, else the reference loop. :mod:`rnnkit.bptt` lists every implementation and
when each runs.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit import bptt, cells, dispatch, fused, scan

MERGE_MODES = ("concat", "sum", "mean", "mul")
CELL_NAMES = ("rnn", "lstm", "gru", "mingru", "minlstm")
INITS = ("torch", "keras")


def merge_directions(y: Tensor, mode: str) -> Tensor:
    """Merge a bidirectional output (B, T, 2H) into (B, T, 2H) (concat) or (B, T, H)."""
    if mode == "concat":
        return y
    forward, backward = y.chunk(2, dim=-1)
    if mode == "sum":
        return forward + backward
    if mode == "mean":
        return (forward + backward) * 0.5
    return forward * backward  # "mul"


def reverse_padded(x: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """Reverse each sequence of ``x`` (B, T, ...) within its own length; padding stays put."""
    if lengths is None:
        return x.flip(1)
    T = x.shape[1]
    t = torch.arange(T, device=x.device).unsqueeze(0)  # (1, T)
    lens = lengths.to(x.device).unsqueeze(1)  # (B, 1)
    index = torch.where(t < lens, lens - 1 - t, t)  # (B, T)
    index = index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


def check_lengths(lengths, batch_size: int, steps: int) -> Optional[Tensor]:
    """Validate ``lengths`` (B,) and return it as an int64 CPU tensor (None stays None)."""
    if lengths is None:
        return None
    lengths = torch.as_tensor(lengths, dtype=torch.int64).cpu()
    if lengths.shape != (batch_size,):
        raise ValueError(f"lengths must have shape ({batch_size},), got {tuple(lengths.shape)}")
    if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > steps):
        raise ValueError(f"lengths must lie in [1, {steps}] (the time dimension), got {lengths.tolist()}")
    return lengths


def _step_function(cell: str, nonlinearity: str, reset_after: bool):
    """The one-step function of :mod:`rnnkit.cells` that the reference loop calls for ``cell``."""
    if cell == "rnn":
        return functools.partial(cells.rnn_step, nonlinearity=nonlinearity)
    if cell == "gru":
        return functools.partial(cells.gru_step, reset_after=reset_after)
    if cell in cells.SCAN_CELLS:
        return cells.mingru_step if cell == "mingru" else cells.minlstm_step
    return cells.lstm_step


class Recurrent(nn.Module):
    """A stack of recurrent layers running any cell; batch-first.

    Args:
        cell: ``"rnn"``, ``"lstm"``, ``"gru"``, ``"mingru"`` or ``"minlstm"`` (the last two have no
            recurrent weights: parameters ``weight_ih_l{k}`` (G*H, F_k) and ``bias_ih_l{k}`` only,
            G = 2 (z, h) or 3 (f, i, h); trained by the parallel scan of :mod:`rnnkit.scan`).
        input_size: F, features per step of ``x``.
        hidden_size: H, units per direction.
        num_layers: L, stacked layers; layer k > 0 reads the concatenated outputs of layer k-1.
        bias: use ``b_ih`` and ``b_hh``.
        bidirectional: D = 2 when True; the reverse direction starts at each sequence's own end.
        dropout: dropout on the outputs of every layer but the last (training only).
        recurrent_dropout: variational dropout on ``h_{t-1}`` inside the recurrence: one mask
            per sequence and layer/direction, constant over time (Gal & Ghahramani, 2016);
            training only.
        weight_dropout: DropConnect on the recurrent matrices ``W_hh`` (Wan et al., 2013; the
            "weight drop" of AWD-LSTM, Merity et al., 2018): one mask per ``forward`` call on
            each ``weight_hh_l{k}``, elements kept with probability 1-p and scaled by 1/(1-p),
            shared by every step and sequence of the call; training only. It changes only
            the weights a path reads, so the fused kernel (and bf16) still serves.
        layer_norm: layer normalisation of the input and recurrent projections per gate (and of
            ``c_t`` for LSTM); adds parameters ``ln_ih_l{k}``, ``ln_hh_l{k}`` (and
            ``ln_c_weight_l{k}``, ``ln_c_bias_l{k}``).
        merge_mode: how the last layer's two directions are merged: concat, sum, mean or mul.
        use_fused: ``"auto"`` takes torch's fused kernel when ``fused.fused_unsupported_reason``
            allows, ``True`` requires it (raises with the reason otherwise), ``False`` never
            takes it (explicit BPTT where it applies, else the reference loop).
        nonlinearity: ``"tanh"`` or ``"relu"`` (RNN only).
        reset_after: GRU form (see :class:`rnnkit.cells.GRUCell`).
        forget_bias: LSTM forget-gate bias at initialisation (None keeps torch's init).
        init: ``"torch"`` (every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H)), as torch.nn) or
            ``"keras"`` (Glorot-uniform ``W_ih``, orthogonal ``W_hh`` per gate, zero biases, as
            Keras's recurrent layers start; trains plain Elman RNNs markedly better).

    ``forward(x, state=None, lengths=None) -> (outputs, state)``: x (B, T, F); lengths (B,) ints
    in [1, T] or None; outputs (B, T, D*H) with zeros at padded positions; state (L*D, B, H)
    (LSTM: ``(h, c)``) taken at each sequence's last valid step.
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        bidirectional: bool = False,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        weight_dropout: float = 0.0,
        layer_norm: bool = False,
        merge_mode: str = "concat",
        use_fused: Union[str, bool] = "auto",
        nonlinearity: str = "tanh",
        reset_after: bool = True,
        forget_bias: Optional[float] = None,
        init: str = "torch",
    ):
        super().__init__()
        if cell not in CELL_NAMES:
            raise ValueError(f"unknown cell {cell!r}; expected one of {', '.join(CELL_NAMES)}")
        if merge_mode not in MERGE_MODES:
            raise ValueError(f"unknown merge_mode {merge_mode!r}; expected one of {', '.join(MERGE_MODES)}")
        if use_fused not in ("auto", True, False):
            raise ValueError(f"use_fused must be 'auto', True or False, got {use_fused!r}")
        for name, p in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout), ("weight_dropout", weight_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        if cell in cells.SCAN_CELLS and (layer_norm or recurrent_dropout > 0 or weight_dropout > 0):
            raise ValueError(f"{cell} has no recurrent weights: layer_norm, recurrent_dropout and weight_dropout do not apply")
        if num_layers < 1 or hidden_size < 1 or input_size < 1:
            raise ValueError("input_size, hidden_size and num_layers must be positive")
        if cell == "rnn" and nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.cell, self.input_size, self.hidden_size = cell, input_size, hidden_size
        self.num_layers, self.bias, self.bidirectional = num_layers, bias, bidirectional
        self.dropout, self.recurrent_dropout, self.layer_norm = dropout, recurrent_dropout, layer_norm
        self.weight_dropout = weight_dropout
        self._dropped_hh: Optional[dict] = None  # suffix -> W_hh with DropConnect, inside one training forward
        self.merge_mode, self.use_fused = merge_mode, use_fused
        self.force_path: Optional[str] = None  # "fused" | "bptt" | "scan" | "reference" pins the path (tests, benchmarks)
        self.last_path: Optional[str] = None  # the path the last forward took
        self.nonlinearity, self.reset_after, self.forget_bias = nonlinearity, reset_after, forget_bias
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; expected one of {', '.join(INITS)}")
        self.init = init
        self.num_directions = 2 if bidirectional else 1
        self.num_gates = cells.CELLS[cell].num_gates
        self.state_size = cells.CELLS[cell].state_size
        self._step = _step_function(cell, nonlinearity, reset_after)
        self._make_parameters()
        self.reset_parameters()

    # -- parameters -------------------------------------------------------------------------
    def _suffixes(self):
        """(layer, direction, name suffix) in torch's order: l0, l0_reverse, l1, ..."""
        for k in range(self.num_layers):
            for d in range(self.num_directions):
                yield k, d, f"_l{k}" + ("_reverse" if d == 1 else "")

    def _make_parameters(self) -> None:
        gh, H = self.num_gates * self.hidden_size, self.hidden_size
        for k, _, s in self._suffixes():
            fan_in = self.input_size if k == 0 else H * self.num_directions
            self.register_parameter("weight_ih" + s, nn.Parameter(torch.empty(gh, fan_in)))
            recurrent = self.cell not in cells.SCAN_CELLS
            if recurrent:
                self.register_parameter("weight_hh" + s, nn.Parameter(torch.empty(gh, H)))
            if self.bias:
                self.register_parameter("bias_ih" + s, nn.Parameter(torch.empty(gh)))
                if recurrent:
                    self.register_parameter("bias_hh" + s, nn.Parameter(torch.empty(gh)))
            if self.layer_norm:
                self.register_parameter("ln_ih" + s, nn.Parameter(torch.ones(gh)))
                self.register_parameter("ln_hh" + s, nn.Parameter(torch.ones(gh)))
                if self.cell == "lstm":
                    self.register_parameter("ln_c_weight" + s, nn.Parameter(torch.ones(H)))
                    self.register_parameter("ln_c_bias" + s, nn.Parameter(torch.zeros(H)))

    def reset_parameters(self) -> None:
        """Initialise per ``self.init`` (see the class docstring); LN gains 1, LN biases 0."""
        bound = 1.0 / self.hidden_size**0.5
        for name, p in self.named_parameters():
            if name.startswith("ln_"):
                nn.init.zeros_(p) if name.startswith("ln_c_bias") else nn.init.ones_(p)
            elif self.init == "torch":
                nn.init.uniform_(p, -bound, bound)
            elif name.startswith("bias_"):
                nn.init.zeros_(p)
            elif name.startswith("weight_ih"):
                nn.init.xavier_uniform_(p)
            else:  # weight_hh: orthogonal per gate block (G*H, H) -> G blocks of (H, H)
                with torch.no_grad():
                    for block in p.view(self.num_gates, self.hidden_size, self.hidden_size):
                        nn.init.orthogonal_(block)
        if self.cell == "lstm" and self.bias and self.forget_bias is not None:
            for _, _, s in self._suffixes():
                cells.init_forget_bias(getattr(self, "bias_ih" + s), getattr(self, "bias_hh" + s), self.forget_bias)

    def direction_parameters(self, layer: int, direction: int) -> SimpleNamespace:
        """The weights of one layer/direction (missing optional ones are None)."""
        s = f"_l{layer}" + ("_reverse" if direction == 1 else "")
        get = lambda name: getattr(self, name + s, None)  # noqa: E731
        return SimpleNamespace(
            weight_ih=get("weight_ih"), weight_hh=self._recurrent_weight(s), bias_ih=get("bias_ih"), bias_hh=get("bias_hh"),
            ln_ih=get("ln_ih"), ln_hh=get("ln_hh"), ln_c_weight=get("ln_c_weight"), ln_c_bias=get("ln_c_bias"),
        )

    def flat_weights(self) -> list:
        """[w_ih, w_hh, (b_ih, b_hh)] per layer/direction, in torch's ``_flat_weights`` order."""
        names = ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if self.bias else ())
        params, dropped = self._parameters, self._dropped_hh  # direct lookups: this runs on every call
        return [dropped[s] if n == "weight_hh" and dropped is not None
                else params[n + s] if n + s in params else getattr(self, n + s)  # (parametrized weights)
                for _, _, s in self._suffixes() for n in names]

    def _recurrent_weight(self, suffix: str) -> Optional[Tensor]:
        """``weight_hh{suffix}``, or its DropConnect version while a training forward runs."""
        if self._dropped_hh is not None:
            return self._dropped_hh[suffix]
        return getattr(self, "weight_hh" + suffix, None)

    @property
    def output_size(self) -> int:
        """Features per step of ``outputs``: D*H for concat, H otherwise."""
        return self.hidden_size * (self.num_directions if self.merge_mode == "concat" else 1)

    def extra_repr(self) -> str:
        opts = [f"{self.cell}", f"{self.input_size}, {self.hidden_size}", f"num_layers={self.num_layers}"]
        for name, default in (("bidirectional", False), ("dropout", 0.0), ("recurrent_dropout", 0.0), ("weight_dropout", 0.0),
                              ("layer_norm", False), ("merge_mode", "concat"), ("bias", True)):
            if getattr(self, name) != default:
                opts.append(f"{name}={getattr(self, name)!r}")
        return ", ".join(opts)

    # -- state helpers ----------------------------------------------------------------------
    def _initial_state(self, state, x: Tensor) -> tuple:
        """Validate ``state`` and return it as a tuple of (L*D, B, H) tensors."""
        B = x.shape[0]
        shape = (self.num_layers * self.num_directions, B, self.hidden_size)
        if state is None:
            return tuple(x.new_zeros(shape) for _ in range(self.state_size))
        parts = (state,) if isinstance(state, Tensor) else tuple(state)
        if len(parts) != self.state_size:
            kind = "a tuple (h, c)" if self.state_size == 2 else "a tensor h"
            raise ValueError(f"{self.cell} state must be {kind}")
        for p in parts:
            if tuple(p.shape) != shape:
                raise ValueError(f"state must have shape {shape} (L*D, B, H), got {tuple(p.shape)}")
        return parts

    def _public_state(self, parts: tuple):
        return parts if self.state_size == 2 else parts[0]

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x: Tensor, state=None, lengths=None):
        """Run the stack. x: (B, T, F) -> outputs (B, T, D*H), state (L*D, B, H) / (h, c)."""
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"x must have shape (B, T, {self.input_size}), got {tuple(x.shape)}")
        if x.shape[1] == 0:
            raise ValueError("x has no time steps (T = 0); a recurrent layer needs at least one")
        lengths = check_lengths(lengths, x.shape[0], x.shape[1])
        # Under torch.autocast only the fused kernel runs in lower precision (its matmuls); the
        # loops keep full precision, where c_t = f*c + i*g accumulated in bf16 would drift.
        autocast, dtype = torch.is_autocast_enabled(x.device.type), self.weight_ih_l0.dtype
        if autocast:
            x = x.to(dtype)
        parts = self._initial_state(state, x)
        if autocast:
            parts = tuple(p.to(dtype) for p in parts)
        # Plain attribute writes: nn.Module.__setattr__ does far more work, noticeable on short steps.
        self.__dict__["last_path"] = path = self.choose_path(x, lengths)
        dropping = self.training and self.weight_dropout > 0
        if dropping:  # one mask per call, drawn before any path runs
            self.__dict__["_dropped_hh"] = {s: F.dropout(getattr(self, "weight_hh" + s), self.weight_dropout)
                                            for _, _, s in self._suffixes()}
        try:
            if autocast:
                with torch.autocast(x.device.type, enabled=path == "fused"):
                    y, parts = self._run_path(x, parts, lengths)
            else:
                y, parts = self._run_path(x, parts, lengths)
        finally:
            if dropping:
                self.__dict__["_dropped_hh"] = None
        if autocast:  # callers (and carried TBPTT state) see the parameters' dtype, not bf16
            y, parts = y.to(dtype), tuple(p.to(dtype) for p in parts)
        if self.bidirectional:
            y = merge_directions(y, self.merge_mode)
        return y, self._public_state(parts)

    def _run_path(self, x: Tensor, parts: tuple, lengths: Optional[Tensor]):
        """Run ``self.last_path``: (B, T, D*H) outputs (directions concatenated) and state parts."""
        if self.last_path == "fused":
            return fused.fused_forward(self, x, parts, lengths)
        if self.last_path == "bptt":
            return bptt.bptt_forward(self, x, parts)
        if self.last_path == "scan":
            return self.reference_forward(x, parts, lengths, functools.partial(scan.scan_direction, cell=self.cell))
        return self.reference_forward(x, parts, lengths)

    def choose_path(self, x: Tensor, lengths: Optional[Tensor]) -> str:
        """``"fused"``, ``"bptt"``, ``"scan"`` or ``"reference"`` for this call (see the module docstring).

        ``use_fused=True`` requires the fused kernel; ``False`` never takes it (explicit BPTT
        when it applies, else the reference loop); ``"auto"`` takes the fastest that applies,
        by measurement (``dispatch.prefers_fused``, which reads the table ``dispatch.PATHS``).
        ``force_path`` (an attribute, None by default) pins a path for tests and benchmarks and
        raises when that path cannot serve.
        """
        no_fused = fused.fused_unsupported_reason(self, x)
        no_bptt = bptt.bptt_unsupported_reason(self, x, lengths)
        no_scan = None if self.cell in cells.SCAN_CELLS else f"cell {self.cell!r} is not a linear recurrence"
        if self.force_path is not None:
            reason = {"fused": no_fused, "bptt": no_bptt, "scan": no_scan, "reference": None}[self.force_path]
            if reason is not None:
                raise RuntimeError(f"force_path={self.force_path!r} cannot serve this call: {reason}")
            return self.force_path
        if self.use_fused is True and no_fused is not None:
            raise RuntimeError(f"use_fused=True but this configuration has no fused kernel: {no_fused}")
        if no_scan is None:  # one step (sampling, streaming): the O(1) sequential form
            return "scan" if x.shape[1] > 1 else "reference"
        fused_ok = self.use_fused is not False and no_fused is None
        if fused_ok and (self.use_fused is True or no_bptt is not None or dispatch.prefers_fused(self, x)):
            return "fused"
        return "bptt" if no_bptt is None else "reference"

    def reference_forward(self, x: Tensor, parts: tuple, lengths: Optional[Tensor], run_direction=None):
        """The reference loop. parts: tuple of (L*D, B, H). Returns (B, T, D*H), parts.

        ``run_direction`` replaces ``_run_direction`` (same contract; the scan path uses it).
        """
        run_direction = run_direction or self._run_direction
        finals = []  # one state tuple per layer/direction, torch order
        layer_input = x
        for k in range(self.num_layers):
            outputs = []
            for d in range(self.num_directions):
                i = k * self.num_directions + d
                state = tuple(p[i] for p in parts)
                inp = layer_input if d == 0 else reverse_padded(layer_input, lengths)
                y, state = run_direction(inp, state, self.direction_parameters(k, d), lengths)
                outputs.append(y if d == 0 else reverse_padded(y, lengths))
                finals.append(state)
            layer_input = torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]
            if self.dropout > 0 and k < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, self.training)
        parts = tuple(torch.stack([f[j] for f in finals]) for j in range(self.state_size))
        return layer_input, parts

    def recurrent_dropout_mask(self, batch_size: int, like: Tensor) -> Optional[Tensor]:
        """A (B, H) variational mask scaled by 1/(1-p), or None when inactive (eval or p = 0)."""
        p = self.recurrent_dropout
        if not self.training or p == 0:
            return None
        keep = like.new_empty(batch_size, self.hidden_size).bernoulli_(1 - p)
        return keep / (1 - p)

    def _run_direction(self, x: Tensor, state: tuple, w: SimpleNamespace, lengths: Optional[Tensor]):
        """One direction of one layer. x: (B, T, F) in this direction's time order."""
        B, T, _ = x.shape
        xp = F.linear(x, w.weight_ih)  # (B, T, G*H)
        if w.ln_ih is not None:
            xp = cells.gate_norm(xp, w.ln_ih, self.num_gates)
        bias_hh = w.bias_hh
        if w.bias_ih is not None:
            xp = xp + w.bias_ih
            if self.cell in ("rnn", "lstm"):  # b_hh is purely additive there: add it once, not T times
                xp, bias_hh = xp + bias_hh, None
        norm = None if w.ln_hh is None else cells.StepNorm(w.ln_hh, w.ln_c_weight, w.ln_c_bias)
        h_mask = self.recurrent_dropout_mask(B, x)
        valid = None if lengths is None else (torch.arange(T) < lengths.unsqueeze(1)).to(x.device)  # (B, T)
        outputs = []
        for t, xp_t in enumerate(xp.unbind(1)):  # unbind, not xp[:, t]: see cpu-facts (backward cost)
            new = self._step(xp_t, state, w.weight_hh, bias_hh, h_mask, norm)
            if valid is not None:
                keep = valid[:, t].unsqueeze(1)  # (B, 1)
                new = tuple(torch.where(keep, n, o) for n, o in zip(new, state))
                outputs.append(new[0] * keep)
            else:
                outputs.append(new[0])
            state = new
        return torch.stack(outputs, 1), state  # (B, T, H)


class RNN(Recurrent):
    """Elman RNN layer(s): ``h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)`` (or relu).

    Same arguments as :class:`Recurrent`, without ``cell``. State (L*D, B, H).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, **kwargs):
        super().__init__("rnn", input_size, hidden_size, num_layers, **kwargs)


class LSTM(Recurrent):
    """LSTM layer(s); equations in :class:`rnnkit.cells.LSTMCell`. State ``(h, c)``, each (L*D, B, H)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, **kwargs):
        super().__init__("lstm", input_size, hidden_size, num_layers, **kwargs)


class GRU(Recurrent):
    """GRU layer(s); equations in :class:`rnnkit.cells.GRUCell` (``reset_after`` chooses the form)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, **kwargs):
        super().__init__("gru", input_size, hidden_size, num_layers, **kwargs)
