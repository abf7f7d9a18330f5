"""Native kernels: ``native.c`` compiled with the system C compiler on first use, loaded with ctypes.

What they do and why: see ``native.c`` (a layer's whole recurrence, recurrent matmul included,
in one call each way for small layers; one call per step around torch's matmul for wider
layers; the minGRU and minLSTM scans in one pass; which one serves is :mod:`rnnkit.dispatch`'s
choice). :mod:`rnnkit.bptt` and :mod:`rnnkit.scan` use them when :func:`unavailable_reason`
returns None, and their torch code otherwise; both give the same numbers (tests/test_native.py).
The LSTM kernels read their weights, gates and cell state in the kernel layout of
:mod:`rnnkit.layout`.

The classes at the end (``LSTMSteps``, ``GRUSteps``, ...) bind the kernels to the buffers of
one call of a :mod:`rnnkit.bptt` Function.

The shared library is built once per source, compiler and CPU into the cache directory
(``$RNNKIT_CACHE``, else ``$XDG_CACHE_HOME/rnnkit``, else ``~/.cache/rnnkit``) by
:mod:`rnnkit.native_build`: under a file lock, so concurrent first uses compile once; fsynced
and renamed into place with its sha256 recorded beside it; and opened only when the cache folder
and the file are the user's alone and the file matches its record (a damaged one is rebuilt).
``-march=native`` is used where the compiler accepts it: the cache key includes the CPU's
feature flags, so a shared home directory on another CPU builds its own copy. ``-fopenmp`` too:
the library then needs ``libgomp.so.1``, which the dynamic loader finds already loaded by torch
(Linux wheels), so the sequence kernels' parallel regions run on torch's own threads; a second
OpenMP runtime would fight torch's spinning workers for the cores.

Turn the kernels off with the environment variable ``RNNKIT_NATIVE=0``; choose the compiler
with ``CC`` (default ``cc``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import threading
import warnings
from types import SimpleNamespace
from typing import Optional

import torch
from torch import Tensor

from rnnkit import layout
from rnnkit.native_build import CACHE_ENV, COMPILE_TIMEOUT_S, FLAGS, SOURCE, cache_dir, cached_library

NATIVE_ENV = "RNNKIT_NATIVE"
ABI = 22  # rnnkit_native_abi() of the source this module expects

_lock = threading.Lock()
_state: dict = {}  # "lib": the loaded library | None, "reason": why not (str) | None


def _cpuinfo_line(*prefixes: str) -> Optional[str]:
    """The first line of /proc/cpuinfo (Linux) that starts with one of ``prefixes``, else None."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(prefixes)), None)
    except OSError:
        return None


def _cpu_flags() -> str:
    """The CPU feature line on Linux (part of the cache key, because of ``-march=native``)."""
    return _cpuinfo_line("flags", "Features") or platform.processor()


def cpu_vendor() -> str:
    """The CPU's vendor id on Linux ("GenuineIntel", "AuthenticAMD", ...), else ""."""
    line = _cpuinfo_line("vendor_id")
    return line.split(":", 1)[1].strip() if line else ""


def _load() -> tuple[Optional[ctypes.CDLL], Optional[str]]:
    if os.environ.get(NATIVE_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None, f"turned off by {NATIVE_ENV}=0"
    cc = os.environ.get("CC", "cc")
    cc_path = shutil.which(cc)
    if cc_path is None:
        return None, f"no C compiler found (CC={cc!r})"
    try:
        version = subprocess.run([cc_path, "--version"], capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S).stdout
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, f"C compiler {cc_path} cannot run: {err}"
    key = hashlib.sha256(b"\0".join(s.encode() for s in (
        SOURCE.read_text(), cc_path, version, " ".join(FLAGS), platform.machine(), _cpu_flags()))).hexdigest()[:16]
    try:
        path, problem = cached_library(cc_path, key)
    except OSError as err:
        path, problem = None, f"building in the cache folder {cache_dir()} failed: {err}"
    if path is None:
        return None, problem
    lib = ctypes.CDLL(str(path))
    if lib.rnnkit_native_abi() != ABI:
        return None, f"{path} is from another version of native.c"
    _declare(lib)
    return lib, None


def _declare(lib: ctypes.CDLL) -> None:
    P, I = ctypes.c_void_p, ctypes.c_int64
    lib.rnnkit_set_step_min_work.argtypes = [I]
    lib.rnnkit_set_step_min_work.restype = None
    for suffix in ("f32", "f64"):
        fwd = getattr(lib, f"rnnkit_lstm_forward_{suffix}")
        fwd.argtypes = [I, I, I, P, I, P, P, I, P, I, P, I, P, P, I]
        fwd.restype = None
        bwd = getattr(lib, f"rnnkit_lstm_backward_{suffix}")
        bwd.argtypes = [I, I, I, P, I, P, I, P, I, P, P, P, I, P, P, I]
        bwd.restype = None
        real = ctypes.c_float if suffix == "f32" else ctypes.c_double
        getattr(lib, f"rnnkit_lstm_ln_forward_{suffix}").argtypes = [
            I, I, I, real, P, P, I, P, P, P, P, P, P, I, P, P, P, P, I, P, P, I, P, P, I, P, I, P, I, P, P, I]
        getattr(lib, f"rnnkit_lstm_ln_backward_{suffix}").argtypes = [
            I, I, I, P, I, P, P, I, P, P, P, P, I, P, P, P, P, P, I, P, P, I, P, I, P, P, P, I, P, P, P, P]
        getattr(lib, f"rnnkit_gate_norm_forward_{suffix}").argtypes = [I, I, I, I, real, P, I, P, P, P, I, P, P, I]
        getattr(lib, f"rnnkit_gate_norm_backward_{suffix}").argtypes = [I, I, I, I, P, I, P, I, P, P, I, P, P, I, P, P]
        getattr(lib, f"rnnkit_gru_seq_forward_{suffix}").argtypes = [I, I, I, I, real] + [P] * 12
        getattr(lib, f"rnnkit_gru_seq_backward_{suffix}").argtypes = [I, I, I, I] + [P] * 16
        getattr(lib, f"rnnkit_gru_rb_seq_forward_{suffix}").argtypes = [I, I, I, I] + [P] * 7
        getattr(lib, f"rnnkit_gru_rb_seq_backward_{suffix}").argtypes = [I, I, I, I] + [P] * 8
        getattr(lib, f"rnnkit_lstm_seq_forward_{suffix}").argtypes = [I, I, I, I, real] + [P] * 14
        getattr(lib, f"rnnkit_lstm_seq_backward_{suffix}").argtypes = [I, I, I, I] + [P] * 18
        getattr(lib, f"rnnkit_rnn_seq_forward_{suffix}").argtypes = [I, I, I, I, I, P, P, P, P]
        getattr(lib, f"rnnkit_rnn_seq_backward_{suffix}").argtypes = [I, I, I, I, I, P, P, P, P, P, P]
        getattr(lib, f"rnnkit_gru_forward_{suffix}").argtypes = [I, I, I, P, I, P, I, P, I, P, P, I, P, P]
        getattr(lib, f"rnnkit_gru_backward_{suffix}").argtypes = [I, I, I, P, I, P, I, P, I, P, P, P, I, P, P, P, I]
        getattr(lib, f"rnnkit_gru_rb_gates_{suffix}").argtypes = [I, I, I, P, I, P, I, P, I]
        getattr(lib, f"rnnkit_gru_rb_state_{suffix}").argtypes = [I, I, I, P, I, P, P, I, P, P]
        getattr(lib, f"rnnkit_gru_rb_back_state_{suffix}").argtypes = [I, I, I, P, I, P, I, P, P, P, I, P, P, I]
        getattr(lib, f"rnnkit_gru_rb_back_gates_{suffix}").argtypes = [I, I, I, P, I, P, I, P, P, P, I, P]
        getattr(lib, f"rnnkit_mingru_x_forward_{suffix}").argtypes = [I, I, I, I, P, P, P, P, P, P]
        getattr(lib, f"rnnkit_mingru_x_backward_{suffix}").argtypes = [I, I, I, I, P, P, P, P, P, P, P, I, P, P, P, P]
        getattr(lib, f"rnnkit_minlstm_forward_{suffix}").argtypes = [I, I, I, P, P, P, P]
        getattr(lib, f"rnnkit_minlstm_backward_{suffix}").argtypes = [I, I, I, P, P, P, P, P, I, P, P]
        getattr(lib, f"rnnkit_mingru_forward_{suffix}").argtypes = [I, I, I, P, P, P, P, P]
        getattr(lib, f"rnnkit_mingru_backward_{suffix}").argtypes = [I, I, I, P, P, P, P, P, P, I, P, P, P]


def library() -> Optional[ctypes.CDLL]:
    """The loaded kernels, or None (see :func:`unavailable_reason`). Built on the first call.

    A failed build warns once, naming the reason, and rnnkit goes on with the torch loop.
    """
    with _lock:
        if "lib" not in _state:
            _state["lib"], _state["reason"] = _load()
            reason = _state["reason"]
            if reason is not None and not reason.startswith("turned off"):
                warnings.warn(f"rnnkit's native kernels are unavailable: {reason}; the same steps run as "
                              f"torch ops, more slowly (set {NATIVE_ENV}=0 to silence this)", RuntimeWarning, stacklevel=3)
        return _state["lib"]


STEP_MIN_WORK = 16384  # native.c's default: a step with fewer values to compute runs on one thread


def set_step_min_work(n: int) -> None:
    """Split a step kernel's rows over the OpenMP threads from ``n`` values per step on (tests: 0)."""
    lib = library()
    if lib is not None:
        lib.rnnkit_set_step_min_work(n)


def unavailable_reason() -> Optional[str]:
    """None when the native kernels are loaded (building them if needed); otherwise why not."""
    library()
    return _state["reason"]


def reset() -> None:
    """Forget the loaded state so the next call looks at the environment again (tests)."""
    with _lock:
        _state.clear()


PARTS = {"gru_rb": ("gates", "state", "back_state", "back_gates")}  # default: ("forward", "backward")


def kernels(name: str, dtype: torch.dtype):
    """The kernels of ``name`` for ``dtype``, or None when the library is unavailable or the dtype
    is not float32/float64: (forward, backward) of "lstm", "lstm_ln" or "gru" (one step), of
    "rnn_seq", "lstm_seq", "gru_seq" and "gru_rb_seq" (a whole sequence, the recurrent matmuls
    included), of
    "gate_norm" (the layer norm per gate of N rows: one step's or a whole input projection) and of
    "mingru", "mingru_x" or "minlstm" (a whole sequence); the four of "gru_rb" (``PARTS``)."""
    lib = library()
    suffix = {torch.float32: "f32", torch.float64: "f64"}.get(dtype)
    if lib is None or suffix is None:
        return None
    return tuple(getattr(lib, f"rnnkit_{name}_{part}_{suffix}") for part in PARTS.get(name, ("forward", "backward")))


def kernels_for(name: str, like: Tensor):
    """:func:`kernels` for ``like``'s dtype when it lives on the CPU, else None."""
    return kernels(name, like.dtype) if like.device.type == "cpu" else None


# -- bindings: the kernels bound to the buffers of one call of rnnkit.bptt's Functions ----------
# Each ``bind_*`` takes the Function's buffers (contiguous, time-major, with a leading direction
# axis D) and returns ``step(t)``, which passes each buffer's address at step t (its start plus
# t steps) and its direction stride: per step, a few integer additions and one foreign call.


_LSTM_GATES = len(layout.LSTM_KERNEL_GATE_ORDER)


class LSTMSteps:
    """The native LSTM step kernels (rnnkit/native.c) bound to the buffers of one LSTMFunction call.

    The buffers are in the step kernels' layout (:mod:`rnnkit.layout`): gates in the kernel
    order with the g pre-activation doubled, the cell state carried as ``-2 c``. All contiguous:
    gates and da (D, T, B, 4H); neg_two_c (-2 c_t) and hs (D, T+1, B, H); u (sigmoid(-2 c_t))
    and hm (D, T, B, H); mask, rec, dc (D, B, H).
    """

    def __init__(self, forward, backward):
        self._forward, self._backward = forward, backward

    def bind_forward(self, gates, neg_two_c, u, hs, mask, hm):
        D, T, B, G = gates.shape
        (g0, gb, gd), (c0, cb, cd), (u0, ub, ud), (h0, hb, hd) = map(step_addresses, (gates, neg_two_c, u, hs))
        m_ptr, (hm0, hmb, hmd) = (None, (0, 0, 0)) if mask is None else (mask.data_ptr(), step_addresses(hm))
        kernel, H = self._forward, G // _LSTM_GATES

        def step(t: int) -> None:
            next_hm = hm0 + (t + 1) * hmb if m_ptr is not None and t + 1 < T else None
            kernel(D, B, H, g0 + t * gb, gd, c0 + t * cb, c0 + (t + 1) * cb, cd, u0 + t * ub, ud,
                   h0 + (t + 1) * hb, hd, m_ptr, next_hm, hmd)
        return step

    def bind_backward(self, gates, u, neg_two_c, rec, mask, grad_hs, dc, da):
        D, T, B, G = gates.shape
        assert rec.is_contiguous() and dc.is_contiguous() and (mask is None or mask.is_contiguous())
        (g0, gb, gd), (u0, ub, ud), (c0, cb, cd), (a0, ab, ad) = map(step_addresses, (gates, u, neg_two_c, da))
        grad_hs, r0, rb, rd = optional_step_addresses(grad_hs)
        kernel, H, rec_ptr, dc_ptr = self._backward, G // _LSTM_GATES, rec.data_ptr(), dc.data_ptr()
        mask_ptr = None if mask is None else mask.data_ptr()

        def step(t: int, last: bool) -> None:
            kernel(D, B, H, g0 + t * gb, gd, u0 + t * ub, ud, c0 + t * cb, cd, rec_ptr, None if last else mask_ptr,
                   None if grad_hs is None else r0 + t * rb, rd, dc_ptr, a0 + t * ab, ad)
        return step


class GRUSteps:
    """The native GRU step kernels bound to the buffers of one GRUFunction call.

    Buffers, all contiguous: xp, hp, gates, dxp, dhp (D, T, B, 3H); hs (D, T+1, B, H);
    mask, hm, rec, carry (D, B, H).
    """

    def __init__(self, forward, backward):
        self._forward, self._backward = forward, backward

    def bind_forward(self, xp, hp, gates, hs, mask, hm):
        D, T, B, G = gates.shape
        (x0, xb, xd), (p0, pb, pd), (g0, gb, gd), (h0, hb, hd) = map(step_addresses, (xp, hp, gates, hs))
        kernel, H = self._forward, G // 3
        m_ptr, hm_ptr = (None, None) if mask is None else (mask.data_ptr(), hm.data_ptr())

        def step(t: int) -> None:
            kernel(D, B, H, x0 + t * xb, xd, p0 + t * pb, pd, g0 + t * gb, gd, h0 + t * hb, h0 + (t + 1) * hb, hd,
                   m_ptr, hm_ptr)
        return step

    def bind_backward(self, gates, hp, hs, rec, mask, grad_hs, carry, dxp, dhp):
        D, T, B, G = gates.shape
        assert rec.is_contiguous() and carry.is_contiguous() and (mask is None or mask.is_contiguous())
        (g0, gb, gd), (p0, pb, pd), (h0, hb, hd), (dx0, db_, dd) = map(step_addresses, (gates, hp, hs, dxp))
        dp0 = step_addresses(dhp)[0]
        grad_hs, r0, rb, rd = optional_step_addresses(grad_hs)
        kernel, H, rec_ptr, carry_ptr = self._backward, G // 3, rec.data_ptr(), carry.data_ptr()
        mask_ptr = None if mask is None else mask.data_ptr()

        def step(t: int, last: bool) -> None:
            kernel(D, B, H, g0 + t * gb, gd, p0 + t * pb, pd, h0 + t * hb, hd, None if last else rec_ptr, mask_ptr,
                   None if grad_hs is None else r0 + t * rb, rd, carry_ptr, dx0 + t * db_, dp0 + t * db_, dd)
        return step


class LSTMNormSteps:
    """The native layer-normed LSTM step kernels bound to the buffers of one LSTMNormFunction call.

    Gates in the kernel order of :mod:`rnnkit.layout` (g undoubled, the cell state carried as
    c). Buffers, all contiguous: xz, hp, gates, dxz, dhp (D, T, B, 4H); hs, c (D, T+1, B, H);
    tanh_c (tanh(LN(c_t) w_c + b_c)), hm (D, T, B, H); stats = [mean_x, rstd_x, mean_h, rstd_h (D, T, B, 4), mean_c, rstd_c
    (D, T, B)]; g_x, bias (None: zeros), g_hh (D, 4H); w_c, b_c (D, H); mask, rec, dc (D, B, H);
    the gradient sums (float64, D * 14H: g_hh, g_x, bias (D, 4H), w_c, b_c (D, H)).
    """

    def __init__(self, forward, backward):
        self._forward, self._backward = forward, backward

    def bind_forward(self, xz, hp, g_x, bias, g_hh, w_c, b_c, gates, stats, c, tanh_c, hs, mask, hm, ln_eps: float):
        D, T, B, G = gates.shape
        (x0, xb, xd), (p0, pb, pd), (g0, gb, gd) = map(step_addresses, (xz, hp, gates))
        assert (xb, xd) == (pb, pd)
        (mx0, shb, shd), (rx0, _, _), (mh0, _, _), (rh0, _, _), (mc0, scb, scd), (rc0, _, _) = map(step_addresses, stats)
        (c0, cb, cd), (u0, ub, ud), (h0, hb, hd) = map(step_addresses, (c, tanh_c, hs))
        bias = torch.zeros_like(g_x) if bias is None else bias  # the kernel always adds one
        weights = [w.contiguous() for w in (g_x, bias, g_hh, w_c, b_c)]
        gx, bs, gain, wc, bc = (_ptr(w) for w in weights)
        m_ptr, (hm0, hmb, hmd) = (None, (0, 0, 0)) if mask is None else (mask.data_ptr(), step_addresses(hm))
        kernel, H = self._forward, G // _LSTM_GATES

        def step(t: int) -> None:
            next_hm = hm0 + (t + 1) * hmb if m_ptr is not None and t + 1 < T else None
            kernel(D, B, H, ln_eps, x0 + t * xb, p0 + t * pb, pd, gx, bs, gain, wc, bc, g0 + t * gb, gd,
                   mx0 + t * shb, rx0 + t * shb, mh0 + t * shb, rh0 + t * shb, shd, mc0 + t * scb, rc0 + t * scb, scd,
                   c0 + t * cb, c0 + (t + 1) * cb, cd, u0 + t * ub, ud, h0 + (t + 1) * hb, hd, m_ptr, next_hm, hmd)
        step.keep = weights  # contiguous copies must live as long as the pointers into them
        return step

    def bind_backward(self, gates, xz, hp, stats, g_x, g_hh, w_c, c, tanh_c, rec, mask, grad_hs, dc, dxz, dhp, sums):
        D, T, B, G = gates.shape
        assert rec.is_contiguous() and dc.is_contiguous() and (mask is None or mask.is_contiguous())
        assert sums.is_contiguous() and sums.dtype == torch.float64
        (g0, gb, gd), (x0, pb, pd), (p0, _, _), (a0, _, _), (dp0, _, _) = map(step_addresses, (gates, xz, hp, dxz, dhp))
        (mx0, shb, shd), (rx0, _, _), (mh0, _, _), (rh0, _, _), (mc0, scb, scd), (rc0, _, _) = map(step_addresses, stats)
        (c0, cb, cd), (u0, ub, ud) = map(step_addresses, (c, tanh_c))
        weights = [w.contiguous() for w in (g_x, g_hh, w_c)]
        gx, gain, wc = (w.data_ptr() for w in weights)
        grad_hs, r0, rb, rd = optional_step_addresses(grad_hs)
        kernel, H, rec_ptr, dc_ptr, sums_ptr = (self._backward, G // _LSTM_GATES, rec.data_ptr(), dc.data_ptr(),
                                                sums.data_ptr())
        mask_ptr = None if mask is None else mask.data_ptr()

        def step(t: int, last: bool) -> None:
            kernel(D, B, H, g0 + t * gb, gd, x0 + t * pb, p0 + t * pb, pd, mx0 + t * shb, rx0 + t * shb,
                   mh0 + t * shb, rh0 + t * shb, shd, gx, gain, wc, c0 + t * cb, c0 + (t + 1) * cb, cd,
                   mc0 + t * scb, rc0 + t * scb, scd, u0 + t * ub, ud, rec_ptr, None if last else mask_ptr,
                   None if grad_hs is None else r0 + t * rb, rd, dc_ptr, a0 + t * pb, dp0 + t * pb, sums_ptr)
        step.keep = weights  # contiguous copies must live as long as the pointers into them
        return step


class GateNormSteps:
    """The native layer norm per gate (``gate_norm`` in rnnkit/native.c) bound to (D, T, B, G*H)
    buffers, one step at a time (``bind_forward``/``bind_backward``), or called on whole
    (D, N, G*H) tensors (``forward``/``backward``).

    y = LN_gate(x) * gain + bias; stats mean, rstd (D, T, B, G) or (D, N, G); gain, bias
    (D, G*H); the gradient sums dgain, dbias (D, G*H) are float64 and added to.
    """

    def __init__(self, forward, backward, num_gates: int):
        self._forward, self._backward, self.G = forward, backward, num_gates

    def forward(self, x, gain, bias, y, mean, rstd, eps: float) -> None:
        D, N, GH = x.shape
        _check_contiguous(x, y, mean, rstd, gain, bias)
        self._forward(D, N, self.G, GH // self.G, eps, x.data_ptr(), N * GH, gain.data_ptr(), _ptr(bias),
                      y.data_ptr(), N * GH, mean.data_ptr(), rstd.data_ptr(), N * self.G)

    def backward(self, dy, x, mean, rstd, gain, dx, dgain, dbias) -> None:
        D, N, GH = x.shape
        _check_contiguous(dy, x, mean, rstd, gain, dx)
        self._backward(D, N, self.G, GH // self.G, dy.data_ptr(), N * GH, x.data_ptr(), N * GH, mean.data_ptr(),
                       rstd.data_ptr(), N * self.G, gain.data_ptr(), dx.data_ptr(), N * GH, _ptr(dgain), _ptr(dbias))

    def bind_forward(self, x, gain, bias, y, mean, rstd, eps: float):
        D, T, B, GH = x.shape
        (x0, xb, xd), (y0, yb, yd), (m0, sb, sd), (r0, _, _) = map(step_addresses, (x, y, mean, rstd))
        weights = [gain.contiguous(), None if bias is None else bias.contiguous()]
        gain_ptr, bias_ptr = (_ptr(w) for w in weights)
        kernel, G = self._forward, self.G

        def step(t: int) -> None:
            kernel(D, B, G, GH // G, eps, x0 + t * xb, xd, gain_ptr, bias_ptr, y0 + t * yb, yd,
                   m0 + t * sb, r0 + t * sb, sd)
        step.keep = weights  # contiguous copies must live as long as the pointers into them
        return step

    def bind_backward(self, dy, x, mean, rstd, gain, dx, dgain, dbias):
        D, T, B, GH = x.shape
        (dy0, yb, yd), (x0, xb, xd), (dx0, db_, dd) = map(step_addresses, (dy, x, dx))
        (m0, sb, sd), (r0, _, _) = map(step_addresses, (mean, rstd))
        weights = [gain.contiguous()]
        gain_ptr, kernel, G = weights[0].data_ptr(), self._backward, self.G
        dgain_ptr, dbias_ptr = _ptr(dgain), _ptr(dbias)

        def step(t: int) -> None:
            kernel(D, B, G, GH // G, dy0 + t * yb, yd, x0 + t * xb, xd, m0 + t * sb, r0 + t * sb, sd, gain_ptr,
                   dx0 + t * db_, dd, dgain_ptr, dbias_ptr)
        step.keep = weights
        return step


def _ptr(x: Optional[Tensor]):
    return None if x is None else x.data_ptr()


class GRUResetBeforeSteps:
    """The native reset_after=False GRU kernels bound to the buffers of one GRUResetBeforeFunction call.

    Buffers, all contiguous: gates, da (D, T, B, 3H); u (D, T, B, H); hs (D, T+1, B, H);
    mask, hm, rec, carry, du (D, B, H).
    """

    def __init__(self, gates, state, back_state, back_gates):
        self._kernels = gates, state, back_state, back_gates

    def bind_forward(self, gates, u, hs, mask, hm):
        D, T, B, G = gates.shape
        (g0, gb, gd), (u0, ub, ud), (h0, hb, hd) = map(step_addresses, (gates, u, hs))
        gates_kernel, state_kernel = self._kernels[:2]
        m_ptr, hm_ptr, H = (None if mask is None else mask.data_ptr()), hm.data_ptr(), G // 3

        def gates_step(t: int) -> None:  # hin = hm (masked) or h_{t-1}
            hin, hin_d = (h0 + t * hb, hd) if m_ptr is None else (hm_ptr, B * H)
            gates_kernel(D, B, H, g0 + t * gb, gd, hin, hin_d, u0 + t * ub, ud)

        def state_step(t: int) -> None:
            state_kernel(D, B, H, g0 + t * gb, gd, h0 + t * hb, h0 + (t + 1) * hb, hd, m_ptr,
                         None if m_ptr is None else hm_ptr)
        return SimpleNamespace(gates=gates_step, state=state_step)

    def bind_backward(self, gates, hs, rec, mask, grad_hs, carry, du, da):
        D, T, B, G = gates.shape
        (g0, gb, gd), (h0, hb, hd), (a0, ab, ad) = map(step_addresses, (gates, hs, da))
        grad_hs, r0, rb, rd = optional_step_addresses(grad_hs)
        state_kernel, gates_kernel = self._kernels[2:]
        m_ptr, H = (None if mask is None else mask.data_ptr()), G // 3
        rec_ptr, carry_ptr, du_ptr = rec.data_ptr(), carry.data_ptr(), du.data_ptr()

        def back_state(t: int, last: bool) -> None:
            state_kernel(D, B, H, g0 + t * gb, gd, h0 + t * hb, hd, None if last else rec_ptr, m_ptr,
                         None if grad_hs is None else r0 + t * rb, rd, carry_ptr, a0 + t * ab, ad)

        def back_gates(t: int) -> None:
            gates_kernel(D, B, H, g0 + t * gb, gd, h0 + t * hb, hd, m_ptr, du_ptr, a0 + t * ab, ad, rec_ptr)
        return SimpleNamespace(back_state=back_state, back_gates=back_gates)


def rnn_sequence_forward(kernel, pre, wt, mask, hs, relu: bool) -> None:
    """One call of ``rnnkit_rnn_seq_forward``: pre (D, T, B, H), wt (D, H, H), mask (D, B, H) or
    None, hs (D, T+1, B, H), all contiguous."""
    D, T, B, H = pre.shape
    _check_contiguous(pre, wt, mask, hs)
    kernel(D, T, B, H, int(relu), *map(_ptr, (pre, wt, mask, hs)))


def rnn_sequence_backward(kernel, hs, w_hh, mask, grad_hs, dh, da, relu: bool) -> None:
    """One call of ``rnnkit_rnn_seq_backward``: dh (D, B, H) in: the final state's gradient, out:
    dL/dh_0; da (D, T, B, H) = dL/dpre written."""
    D, T1, B, H = hs.shape
    _check_contiguous(hs, w_hh, mask, grad_hs, dh, da)
    kernel(D, T1 - 1, B, H, int(relu), *map(_ptr, (hs, w_hh, mask, grad_hs, dh, da)))


def lstm_sequence_forward(kernel, xz, wt, g_x, b_x, g_h, w_c, b_c, mask, q, stats, gates, c, tanh_c, hs,
                          ln_eps: float) -> None:
    """One call of ``rnnkit_lstm_seq_forward`` (see native.c) on contiguous buffers, gates in the
    kernel order of :mod:`rnnkit.layout` (g undoubled, the cell state carried as c): xz, gates and
    (with layer norm) q (D, T, B, 4H); wt (D, H, 4H); g_x, b_x, g_h (D, 4H) and w_c, b_c (D, H), or
    None without layer norm; mask (D, B, H) or None; stats (flat, 18 DTB values) or None;
    c, hs (D, T+1, B, H); tanh_c (D, T, B, H): tanh(c_t), or tanh(LN(c_t) w_c + b_c)."""
    D, T, B, G = xz.shape
    _check_contiguous(xz, wt, g_x, b_x, g_h, w_c, b_c, mask, q, stats, gates, c, tanh_c, hs)
    kernel(D, T, B, G // _LSTM_GATES, ln_eps,
           *map(_ptr, (xz, wt, g_x, b_x, g_h, w_c, b_c, mask, q, stats, gates, c, tanh_c, hs)))


def lstm_sequence_backward(kernel, gates, xz, q, stats, g_x, g_h, w_c, c, tanh_c, hs, w_hh, mask, grad_hs, dh, dc,
                           dxz, dq, sums) -> None:
    """One call of ``rnnkit_lstm_seq_backward``: the buffers of :func:`lstm_sequence_forward`, w_hh
    (D, 4H, H), the output gradient (D, T, B, H) or None, dh and dc (D, B, H) (in: the final
    state's gradients; out: dL/dh_0, dL/dc_0), dxz and (with layer norm) dq (D, T, B, 4H), and
    the float64 sums (D * 14H) of the layer norms' parameters' gradients, added to."""
    D, T, B, G = gates.shape
    _check_contiguous(gates, xz, q, stats, g_x, g_h, w_c, c, tanh_c, hs, w_hh, mask, grad_hs, dh, dc, dxz, dq, sums)
    kernel(D, T, B, G // _LSTM_GATES, *map(_ptr, (gates, xz, q, stats, g_x, g_h, w_c, c, tanh_c, hs, w_hh, mask,
                                                  grad_hs, dh, dc, dxz, dq, sums)))


def gru_sequence_forward(kernel, xz, wt, b_hh, g_hh, g_x, b_x, mask, q, stats, hp, gates, hs, ln_eps: float) -> None:
    """One call of ``rnnkit_gru_seq_forward`` (see native.c) on contiguous buffers: xz, hp, gates and
    (with layer norm) q (D, T, B, 3H); wt (D, H, 3H); b_hh, g_hh, g_x, b_x (D, 3H) or None; mask
    (D, B, H) or None; stats (4, D, T, B, 3) or None; hs (D, T+1, B, H)."""
    D, T, B, G = xz.shape
    _check_contiguous(xz, wt, b_hh, g_hh, g_x, b_x, mask, q, stats, hp, gates, hs)
    kernel(D, T, B, G // 3, ln_eps, *map(_ptr, (xz, wt, b_hh, g_hh, g_x, b_x, mask, q, stats, hp, gates, hs)))


def gru_sequence_backward(kernel, gates, hp, q, xz, stats, g_hh, g_x, hs, w_hh, mask, grad_hs, carry, dxz, dhp, dq,
                          sums) -> None:
    """One call of ``rnnkit_gru_seq_backward``: the buffers of :func:`gru_sequence_forward`, w_hh
    (D, 3H, H), the output gradient (D, T, B, H) or None, carry (D, B, H) (in: the final state's
    gradient; out: dL/dh_0), dxz, dq and (with layer norm) dhp (D, T, B, 3H), and the float64
    sums (4, D, 3H) of the gains' and biases' gradients, added to (with layer norm)."""
    D, T, B, G = gates.shape
    _check_contiguous(gates, hp, q, xz, stats, g_hh, g_x, hs, w_hh, mask, grad_hs, carry, dxz, dhp, dq, sums)
    kernel(D, T, B, G // 3, *map(_ptr, (gates, hp, q, xz, stats, g_hh, g_x, hs, w_hh, mask, grad_hs, carry, dxz, dhp,
                                        dq, sums)))


def gru_reset_before_sequence_forward(kernel, pre, wt_rz, wt_n, mask, gates, u, hs) -> None:
    """One call of ``rnnkit_gru_rb_seq_forward``: pre, gates (D, T, B, 3H); wt_rz (D, H, 2H); wt_n
    (D, H, H); mask (D, B, H) or None; u (D, T, B, H); hs (D, T+1, B, H), all contiguous."""
    D, T, B, G = pre.shape
    _check_contiguous(pre, wt_rz, wt_n, mask, gates, u, hs)
    kernel(D, T, B, G // 3, *map(_ptr, (pre, wt_rz, wt_n, mask, gates, u, hs)))


def gru_reset_before_sequence_backward(kernel, gates, hs, w_rz, w_n, mask, grad_hs, carry, da) -> None:
    """One call of ``rnnkit_gru_rb_seq_backward``: w_rz (D, 2H, H), w_n (D, H, H); the output
    gradient (D, T, B, H) or None; carry (D, B, H) (in: the final state's gradient; out: dL/dh_0);
    da (D, T, B, 3H) = dL/dpre written."""
    D, T, B, G = gates.shape
    _check_contiguous(gates, hs, w_rz, w_n, mask, grad_hs, carry, da)
    kernel(D, T, B, G // 3, *map(_ptr, (gates, hs, w_rz, w_n, mask, grad_hs, carry, da)))


def _check_contiguous(*tensors) -> None:
    for x in tensors:
        assert x is None or x.is_contiguous()


def step_addresses(x: Tensor):
    """(address of step 0, bytes per step, elements per direction) of a contiguous (D, T, B, X) buffer."""
    assert x.is_contiguous()
    return x.data_ptr(), x.stride(1) * x.element_size(), x.stride(0)


def optional_step_addresses(x: Optional[Tensor]):
    """(x made contiguous, *step_addresses(x)) for the output gradient (D, T, B, H), or (None, None, 0, 0).

    The returned tensor must stay alive while kernels use its addresses (the binders' step
    closures refer to it).
    """
    if x is None:
        return None, None, 0, 0
    x = x.contiguous()
    return (x, *step_addresses(x))
