"""Recurrent cells: one time step each.

Every cell is split in two so that the layer driver (:mod:`rnnkit.recurrent`) can hoist the
input projection out of the time loop:

* the *input projection* ``xp_t = W_ih x_t + b_ih`` for all gates at once, shape ``(B, G*H)``,
  computed for every step with one matmul;
* the *step* ``step(xp_t, state, weight_hh, bias_hh, ...)``, the recurrent part, one step.

Weights follow torch.nn's layout (see :mod:`rnnkit.layout`): ``weight_ih`` is ``(G*H, F)``,
``weight_hh`` is ``(G*H, H)``, biases ``(G*H,)``, gates stacked in the order given in each
cell's docstring. States are tuples inside rnnkit: ``(h,)`` for RNN and GRU, ``(h, c)`` for LSTM;
the public ``forward`` of a cell returns a tensor ``h`` (RNN, GRU) or a tuple ``(h, c)`` (LSTM),
as torch.nn's cells do.

Optional features, handled inside ``step`` so that every path shares one set of equations:

* ``h_mask`` (B, H): the variational recurrent-dropout mask (Gal & Ghahramani, 2016). It
  multiplies ``h_{t-1}`` where it enters the recurrent projection, and nowhere else.
* ``norm``: layer normalisation (Ba et al., 2016) of the recurrent projection per gate,
  ``LN(W_hh h)`` with a gain per gate unit; LSTM also normalises ``c_t`` before its ``tanh``.
  The input projection is normalised by the driver the same way (``gate_norm``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

State = tuple  # (h,) or (h, c); each (B, H)


@dataclass
class StepNorm:
    """Layer-norm parameters used inside a step (all optional ones are None when unused)."""

    hh_gain: Tensor  # (G*H,) gain for LN of the recurrent projection, per gate
    c_gain: Optional[Tensor] = None  # (H,) LSTM: gain for LN(c_t)
    c_bias: Optional[Tensor] = None  # (H,) LSTM: bias for LN(c_t)


def gate_norm(z: Tensor, gain: Tensor, num_gates: int, eps: float = 1e-5) -> Tensor:
    """Layer-normalise each gate's block of ``z`` separately, then scale by ``gain``.

    z: (..., G*H); gain: (G*H,). Returns (..., G*H).
    """
    shape = z.shape
    z = z.reshape(*shape[:-1], num_gates, shape[-1] // num_gates)  # (..., G, H)
    z = F.layer_norm(z, z.shape[-1:], eps=eps)
    return z.reshape(shape) * gain


def _recurrent_projection(h: Tensor, weight_hh: Tensor, bias_hh: Optional[Tensor], h_mask, norm, num_gates):
    """``W_hh (h * mask)`` (layer-normalised per gate if ``norm``) ``+ b_hh``: (B, G*H)."""
    if h_mask is not None:
        h = h * h_mask
    hp = F.linear(h, weight_hh)
    if norm is not None:
        hp = gate_norm(hp, norm.hh_gain, num_gates)
    return hp if bias_hh is None else hp + bias_hh


def _preactivation(xp: Tensor, h: Tensor, weight_hh: Tensor, bias_hh: Optional[Tensor], h_mask, norm, num_gates):
    """``xp + W_hh (h * mask) + b_hh`` (recurrent part layer-normalised if ``norm``): (B, G*H).

    Without layer norm this is one ``addmm`` (the add fused into the matmul), which matters in
    the reference loop: T steps of Python, so every op per step counts.
    """
    if norm is not None:
        return xp + _recurrent_projection(h, weight_hh, bias_hh, h_mask, norm, num_gates)
    out = torch.addmm(xp, h if h_mask is None else h * h_mask, weight_hh.t())
    return out if bias_hh is None else out + bias_hh


class _Cell(nn.Module):
    """Parameters and the public one-step ``forward`` shared by every cell."""

    num_gates: int = 1
    state_size: int = 1  # number of tensors in the state tuple

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__()
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        gh = self.num_gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gh, input_size))
        self.weight_hh = nn.Parameter(torch.empty(gh, hidden_size))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(gh))
            self.bias_hh = nn.Parameter(torch.empty(gh))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn's initialisation: every weight ~ U(-1/sqrt(H), 1/sqrt(H))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def initial_state(self, batch_size: int, like: Tensor) -> State:
        zeros = like.new_zeros(batch_size, self.hidden_size)
        return tuple(zeros.clone() for _ in range(self.state_size))

    def forward(self, x: Tensor, state=None):
        """One step. x: (B, F); state: h (B, H), or (h, c) for LSTM; None means zeros."""
        if state is None:
            state = self.initial_state(x.shape[0], x)
        elif isinstance(state, Tensor):
            state = (state,)
        xp = F.linear(x, self.weight_ih, self.bias_ih)  # (B, G*H)
        new = self.step(xp, tuple(state), self.weight_hh, self.bias_hh)
        return new if self.state_size == 2 else new[0]

    def step(self, xp: Tensor, state: State, weight_hh, bias_hh, h_mask=None, norm=None) -> State:
        raise NotImplementedError


class RNNCell(_Cell):
    """Elman cell: ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``, act = tanh or relu.

    One gate (G=1). Shapes: x (B, F), h (B, H).
    """

    num_gates = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh"):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias)

    def step(self, xp, state, weight_hh, bias_hh, h_mask=None, norm=None):
        return rnn_step(xp, state, weight_hh, bias_hh, h_mask, norm, nonlinearity=self.nonlinearity)


def rnn_step(xp, state, weight_hh, bias_hh, h_mask=None, norm=None, nonlinearity="tanh") -> State:
    """One Elman step. xp: (B, H) = W_ih x_t + b_ih; state: (h,) with h (B, H)."""
    pre = _preactivation(xp, state[0], weight_hh, bias_hh, h_mask, norm, 1)
    return (torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre),)


class LSTMCell(_Cell):
    """LSTM cell (Hochreiter & Schmidhuber, 1997; torch.nn gate order i, f, g, o)::

        i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)      input gate
        f = sigmoid(W_if x + b_if + W_hf h + b_hf)      forget gate
        g = tanh   (W_ig x + b_ig + W_hg h + b_hg)      candidate
        o = sigmoid(W_io x + b_io + W_ho h + b_ho)      output gate
        c' = f * c + i * g
        h' = o * tanh(c')              (tanh(LN(c')) with layer norm)

    G=4. State (h, c), each (B, H). ``forget_bias``: when not None, ``b_if`` starts at this
    value and ``b_hf`` at 0 (Jozefowicz et al., 2015 recommend 1.0); None keeps torch's init.
    """

    num_gates = 4
    state_size = 2

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, forget_bias: Optional[float] = None):
        self.forget_bias = forget_bias
        super().__init__(input_size, hidden_size, bias)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.bias and self.forget_bias is not None:
            init_forget_bias(self.bias_ih, self.bias_hh, self.forget_bias)

    def step(self, xp, state, weight_hh, bias_hh, h_mask=None, norm=None):
        return lstm_step(xp, state, weight_hh, bias_hh, h_mask, norm)


def lstm_step(xp, state, weight_hh, bias_hh, h_mask=None, norm=None) -> State:
    """One LSTM step. xp: (B, 4H) = W_ih x_t + b_ih; state: (h, c), each (B, H)."""
    h, c = state
    gates = _preactivation(xp, h, weight_hh, bias_hh, h_mask, norm, 4)
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    c_out = c if norm is None else F.layer_norm(c, c.shape[-1:], norm.c_gain, norm.c_bias, eps=1e-5)
    return torch.sigmoid(o) * torch.tanh(c_out), c


def init_forget_bias(bias_ih: Tensor, bias_hh: Tensor, value: float) -> None:
    """Set the LSTM forget-gate bias: ``b_if = value``, ``b_hf = 0`` (gate order i, f, g, o)."""
    h = bias_ih.shape[0] // 4
    with torch.no_grad():
        bias_ih[h : 2 * h].fill_(value)
        bias_hh[h : 2 * h].zero_()


class GRUCell(_Cell):
    """GRU cell (Cho et al., 2014; torch.nn gate order r, z, n)::

        r  = sigmoid(W_ir x + b_ir + W_hr h + b_hr)            reset gate
        z  = sigmoid(W_iz x + b_iz + W_hz h + b_hz)            update gate
        n  = tanh(W_in x + b_in + r * (W_hn h + b_hn))         reset_after=True  (torch, cuDNN)
        n  = tanh(W_in x + b_in + W_hn (r * h) + b_hn)         reset_after=False (textbook, Keras option)
        h' = (1 - z) * n + z * h

    G=3. State h (B, H).
    """

    num_gates = 3

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, reset_after: bool = True):
        self.reset_after = reset_after
        super().__init__(input_size, hidden_size, bias)

    def step(self, xp, state, weight_hh, bias_hh, h_mask=None, norm=None):
        return gru_step(xp, state, weight_hh, bias_hh, h_mask, norm, reset_after=self.reset_after)


def gru_step(xp, state, weight_hh, bias_hh, h_mask=None, norm=None, reset_after=True) -> State:
    """One GRU step. xp: (B, 3H) = W_ih x_t + b_ih; state: (h,) with h (B, H)."""
    h = state[0]
    H = h.shape[-1]
    x_r, x_z, x_n = xp.chunk(3, 1)
    if reset_after:
        hp = _recurrent_projection(h, weight_hh, bias_hh, h_mask, norm, 3)
        h_r, h_z, h_n = hp.chunk(3, 1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
    else:
        b_rz, b_n = (None, None) if bias_hh is None else (bias_hh[: 2 * H], bias_hh[2 * H :])
        rz_norm = None if norm is None else StepNorm(norm.hh_gain[: 2 * H])
        n_norm = None if norm is None else StepNorm(norm.hh_gain[2 * H :])
        h_r, h_z = _recurrent_projection(h, weight_hh[: 2 * H], b_rz, h_mask, rz_norm, 2).chunk(2, 1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        h_in = r * h if h_mask is None else r * h * h_mask
        n = torch.tanh(x_n + _recurrent_projection(h_in, weight_hh[2 * H :], b_n, None, n_norm, 1))
    return ((1 - z) * n + z * h,)


def min_g(x: Tensor) -> Tensor:
    """Feng et al. (2024)'s positive activation ``g(x) = x + 0.5`` for x >= 0, ``sigmoid(x)`` below."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_min_g(x: Tensor) -> Tensor:
    """``log g(x)``, computed stably: ``log(x + 0.5)`` for x >= 0, ``-softplus(-x)`` below."""
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


class _MinCell(_Cell):
    """Cells without recurrent weights (Feng et al., 2024, "Were RNNs All We Needed?").

    Parameters: ``weight_ih`` (G*H, F) and ``bias_ih`` (G*H,) only; there is no ``weight_hh``
    (the gates read x_t alone, which is what makes training a parallel scan over time, see
    :mod:`rnnkit.scan`). State h (B, H).
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        nn.Module.__init__(self)
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        self.weight_ih = nn.Parameter(torch.empty(self.num_gates * hidden_size, input_size))
        self.bias_ih = nn.Parameter(torch.empty(self.num_gates * hidden_size)) if bias else None
        self.weight_hh = self.bias_hh = None
        self.reset_parameters()


class MinGRUCell(_MinCell):
    """minGRU cell, gate order z, h (G=2)::

        z  = sigmoid(W_iz x + b_iz)          update gate
        h~ = g(W_ih x + b_ih)                candidate, g(v) = v + 0.5 (v >= 0), sigmoid(v) (v < 0)
        h' = (1 - z) * h + z * h~
    """

    num_gates = 2

    def step(self, xp, state, weight_hh=None, bias_hh=None, h_mask=None, norm=None):
        return mingru_step(xp, state)


def mingru_step(xp, state, weight_hh=None, bias_hh=None, h_mask=None, norm=None) -> State:
    """One minGRU step. xp: (B, 2H) = W_ih x_t + b_ih (z, h); state: (h,) with h (B, H)."""
    k_z, k_h = xp.chunk(2, -1)
    z = torch.sigmoid(k_z)
    return (torch.lerp(state[0], min_g(k_h), z),)


class MinLSTMCell(_MinCell):
    """minLSTM cell, gate order f, i, h (G=3); no cell state, no output gate::

        f  = sigmoid(W_if x + b_if),  i = sigmoid(W_ii x + b_ii)
        f', i' = f / (f + i), i / (f + i)      normalised so that f' + i' = 1
        h~ = g(W_ih x + b_ih)
        h' = f' * h + i' * h~
    """

    num_gates = 3

    def step(self, xp, state, weight_hh=None, bias_hh=None, h_mask=None, norm=None):
        return minlstm_step(xp, state)


def minlstm_step(xp, state, weight_hh=None, bias_hh=None, h_mask=None, norm=None) -> State:
    """One minLSTM step. xp: (B, 3H) = W_ih x_t + b_ih (f, i, h); state: (h,) with h (B, H)."""
    k_f, k_i, k_h = xp.chunk(3, -1)
    f, i = torch.sigmoid(k_f), torch.sigmoid(k_i)
    return ((f * state[0] + i * min_g(k_h)) / (f + i),)


CELLS = {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell, "mingru": MinGRUCell, "minlstm": MinLSTMCell}
SCAN_CELLS = ("mingru", "minlstm")  # no recurrent weights: trained with the parallel scan of rnnkit.scan
