"""Which implementation serves a call when several can: the one table of hardware-dependent choices.

Whether an implementation *can* serve a call is a question of correctness, answered by the
predicate beside it (``fused.fused_unsupported_reason``, ``bptt.bptt_unsupported_reason``).
Which one *should* serve, when more than one can, is a question of speed on the hardware at
hand. Every such choice is an entry of :data:`PATHS` (a :class:`PathChoices`, documented entry
by entry), and only the predicates below read it: :func:`prefers_fused` (torch's fused kernel or
explicit BPTT, for ``Recurrent.choose_path``), :func:`sequence_kernels` (inside explicit BPTT:
one native call for the whole layer, or one a step), :func:`scan_method` and
:func:`mingru_projects_in_scan` (the minGRU/minLSTM scan). The measurements behind the entries
are in BENCHMARKS.md, each with the command that made it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from rnnkit import native


@dataclass
class PathChoices:
    """The measured choices between implementations that all compute the same numbers.

    ``sequence_kernel_max_hidden`` (per cell, 256):
        explicit BPTT runs a layer of up to this many hidden units in one native call each way
        (the *sequence* kernels: each thread runs its own rows of the batch through every step,
        the recurrent matmul in C, four rows per load of the weights). For small layers a
        step's matmul is too small for the BLAS to run well and the per-step Python costs as
        much as the arithmetic. Wider layers take one BLAS matmul a step and one native call
        for the element-wise rest (the *step* kernels): there the BLAS's cache blocking wins.
    ``lstm_sequence_beats_fused_max_hidden`` (depends on the CPU's vendor; see :data:`PATHS`):
        "auto" trains an LSTM in float32 with the sequence kernel rather than torch's fused
        (oneDNN) LSTM up to this width, and with oneDNN above it. On the Intel Xeon measured
        the sequence kernel won up to 128 units; on the AMD EPYC (Zen 4) measured oneDNN was
        level or ahead at every width, so 0 there (oneDNN always). CPUs not measured keep
        oneDNN (0), the choice that is never far off.
    ``lstm_fused_without_grad`` (True):
        without gradients (inference) oneDNN's LSTM forward beat the sequence kernel's forward
        on every CPU measured, so inference keeps torch's fused LSTM.
    ``fused_under_autocast`` (True):
        under bfloat16 autocast torch's fused RNN and LSTM kernels run their matmuls in
        bfloat16 (which CPUs with bfloat16 matrix units, AMX or AVX512-BF16, run much faster),
        while explicit BPTT keeps float32; so they serve.
    ``gru_fused_under_autocast_min_hidden`` (256):
        torch's GRU on the CPU is a generic loop whose backward is a graph of small nodes; it
        loses to explicit BPTT in float32 at every width. Under bfloat16 autocast its bfloat16
        matmuls win from this width up (level at 256 units, behind below, ahead above).
    ``scan_by_device`` ({"cpu": "sequential"}, else "log"):
        the minGRU/minLSTM recurrence as a step-by-step loop on the CPU, where ``exp`` and
        ``logcumsumexp`` over (B, T, H) cost more than 2T small fused multiply-adds; the
        log-space parallel scan elsewhere (GPUs), where the loop's launches dominate.
    ``mingru_narrow_input_max_features`` (16):
        minGRU layers with at most this many input features project their input inside the
        native scan instead of writing two (T, B, H) projections to memory first; with few
        features (pixel MNIST: one) those projections were most of a step's memory traffic.

    Off the CPU, torch's fused kernels (cuDNN) always serve first: rnnkit's native kernels are
    CPU-only. Tests change entries of :data:`PATHS` with ``monkeypatch.setattr``/``setitem``.
    """

    sequence_kernel_max_hidden: dict = field(default_factory=lambda: {"rnn": 256, "gru": 256, "lstm": 256})
    lstm_sequence_beats_fused_max_hidden: int = 0
    lstm_fused_without_grad: bool = True
    fused_under_autocast: bool = True
    gru_fused_under_autocast_min_hidden: int = 256
    scan_by_device: dict = field(default_factory=lambda: {"cpu": "sequential"})
    mingru_narrow_input_max_features: int = 16


# The one vendor-dependent entry: the sequence kernel beats oneDNN's LSTM only on the Intel CPU measured.
PATHS = PathChoices(lstm_sequence_beats_fused_max_hidden={"GenuineIntel": 128}.get(native.cpu_vendor(), 0))

_SEQUENCE_KERNEL_CELL = {"rnn_seq": "rnn", "gru_seq": "gru", "gru_rb_seq": "gru", "lstm_seq": "lstm"}


def sequence_kernels(name: str, like: Tensor, hidden_size: int):
    """The native whole-sequence kernels ``name`` ("rnn_seq", "gru_seq", "gru_rb_seq", "lstm_seq")
    for ``like``'s dtype and device when they are available and chosen for ``hidden_size``
    (``PATHS.sequence_kernel_max_hidden``), else None."""
    if hidden_size > PATHS.sequence_kernel_max_hidden[_SEQUENCE_KERNEL_CELL[name]]:
        return None
    return native.kernels_for(name, like)


def prefers_fused(layer, x: Tensor) -> bool:
    """Whether "auto" takes torch's fused kernel for ``layer`` on ``x`` when explicit BPTT could
    serve too (the reasons: :class:`PathChoices`)."""
    if x.device.type != "cpu":
        return True
    H = layer.hidden_size
    if layer.cell == "gru":
        return torch.is_autocast_enabled("cpu") and H >= PATHS.gru_fused_under_autocast_min_hidden
    if torch.is_autocast_enabled(x.device.type):
        return PATHS.fused_under_autocast
    if layer.cell == "rnn":
        return sequence_kernels("rnn_seq", x, H) is None
    if H > PATHS.lstm_sequence_beats_fused_max_hidden:
        return True
    training = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in layer.parameters()))
    if not training:
        return PATHS.lstm_fused_without_grad
    return sequence_kernels("lstm_seq", x, H) is None


def scan_method(device: torch.device) -> str:
    """The minGRU/minLSTM scan's form on ``device``: "sequential" or "log" (``PATHS.scan_by_device``)."""
    return PATHS.scan_by_device.get(device.type, "log")


def mingru_projects_in_scan(features: int) -> bool:
    """Whether a minGRU layer with ``features`` inputs projects them inside the native scan."""
    return features <= PATHS.mingru_narrow_input_max_features
