"""Native kernels: ``native.c`` compiled with the system C compiler on first use, loaded with ctypes.

What they do and why: see ``native.c`` (the element-wise part of one LSTM step, forward and
backward, as one call instead of ~6 torch calls; the whole minGRU recurrence in one pass over
memory instead of ~10). The explicit-BPTT LSTM loop in :mod:`rnnkit.bptt` and the minGRU scan
in :mod:`rnnkit.scan` use them when :func:`unavailable_reason` returns None, and their torch
code otherwise; both give the same numbers (tests/test_native.py).

The shared library is built once per source, compiler and CPU into the cache directory
(``$RNNKIT_CACHE``, else ``$XDG_CACHE_HOME/rnnkit``, else ``~/.cache/rnnkit``), written to a
temporary name and renamed, so concurrent first uses do not see a half-written file.
``-march=native`` is used where the compiler accepts it: the cache key includes the CPU's
feature flags, so a shared home directory on another CPU builds its own copy.

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
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Optional

import torch

NATIVE_ENV = "RNNKIT_NATIVE"
CACHE_ENV = "RNNKIT_CACHE"
SOURCE = Path(__file__).with_name("native.c")
ABI = 11  # rnnkit_native_abi() of the source this module expects
_FLAGS = ["-O3", "-fopenmp-simd", "-fPIC", "-shared"]
COMPILE_TIMEOUT_S = 120

_lock = threading.Lock()
_state: dict = {}  # "lib": the loaded library | None, "reason": why not (str) | None


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rnnkit"


def _cpu_flags() -> str:
    """The CPU feature line on Linux (part of the cache key, because of ``-march=native``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor()


def _compile(cc: str, out: Path) -> Optional[str]:
    """Build the library at ``out`` (atomically); returns None or the compiler's complaint."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.stem + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        errors = ""
        for extra in (["-march=native"], []):  # some compilers (or CPUs) refuse -march=native
            cmd = [cc, *_FLAGS, *extra, str(SOURCE), "-o", tmp, "-lm"]
            try:
                run = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                return f"{cc} took more than {COMPILE_TIMEOUT_S} s"
            if run.returncode == 0:
                os.replace(tmp, out)
                return None
            errors = (run.stderr or run.stdout).strip()
        return errors.splitlines()[0] if errors else f"{cc} exited with an error"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
        SOURCE.read_text(), cc_path, version, " ".join(_FLAGS), platform.machine(), _cpu_flags()))).hexdigest()[:16]
    path = cache_dir() / f"native-{key}{'.dll' if os.name == 'nt' else '.so'}"
    if not path.exists():
        try:
            problem = _compile(cc_path, path)
        except OSError as err:
            problem = str(err)
        if problem is not None:
            return None, f"compiling {SOURCE.name} with {cc_path} failed: {problem}"
    lib = ctypes.CDLL(str(path))
    if lib.rnnkit_native_abi() != ABI:
        return None, f"{path} is from another version of native.c"
    _declare(lib)
    return lib, None


def _declare(lib: ctypes.CDLL) -> None:
    P, I = ctypes.c_void_p, ctypes.c_int64
    for suffix in ("f32", "f64"):
        fwd = getattr(lib, f"rnnkit_lstm_forward_{suffix}")
        fwd.argtypes = [I, I, I, P, I, P, P, I, P, I, P, I, P, P, I]
        fwd.restype = None
        bwd = getattr(lib, f"rnnkit_lstm_backward_{suffix}")
        bwd.argtypes = [I, I, I, P, I, P, I, P, I, P, P, P, I, P, P, I]
        bwd.restype = None
        real = ctypes.c_float if suffix == "f32" else ctypes.c_double
        getattr(lib, f"rnnkit_lstm_ln_forward_{suffix}").argtypes = [
            I, I, I, real, P, I, P, I, P, P, P, P, I, P, P, I, P, P, I, P, P, I, P, I, P, I, P, P, I]
        getattr(lib, f"rnnkit_lstm_ln_backward_{suffix}").argtypes = [
            I, I, I, P, I, P, I, P, P, I, P, P, P, P, I, P, P, I, P, I, P, P, P, I, P, P, P, I, P]
        getattr(lib, f"rnnkit_gru_forward_{suffix}").argtypes = [I, I, I, P, I, P, I, P, I, P, P, I, P, P]
        getattr(lib, f"rnnkit_gru_backward_{suffix}").argtypes = [I, I, I, P, I, P, I, P, I, P, P, P, I, P, P, P, I]
        getattr(lib, f"rnnkit_gru_rb_gates_{suffix}").argtypes = [I, I, I, P, I, P, I, P, I]
        getattr(lib, f"rnnkit_gru_rb_state_{suffix}").argtypes = [I, I, I, P, I, P, P, I, P, P]
        getattr(lib, f"rnnkit_gru_rb_back_state_{suffix}").argtypes = [I, I, I, P, I, P, I, P, P, P, I, P, P, I]
        getattr(lib, f"rnnkit_gru_rb_back_gates_{suffix}").argtypes = [I, I, I, P, I, P, I, P, P, P, I, P]
        getattr(lib, f"rnnkit_mingru_x_forward_{suffix}").argtypes = [I, I, I, I, P, P, P, P, P, P, P]
        getattr(lib, f"rnnkit_mingru_x_backward_{suffix}").argtypes = [I, I, I, I, P, P, P, P, P, P, P, I, P, P, P, P, P]
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


def unavailable_reason() -> Optional[str]:
    """None when the native kernels are loaded (building them if needed); otherwise why not."""
    library()
    return _state["reason"]


def reset() -> None:
    """Forget the loaded state so the next call looks at the environment again (tests)."""
    with _lock:
        _state.clear()


def kernels(name: str, dtype: torch.dtype):
    """(forward, backward) kernels of ``name`` ("lstm", "lstm_ln" or "gru" step; "mingru", "mingru_x" or "minlstm" sequence) for ``dtype``,
    or None when the library is unavailable or the dtype is not float32/float64."""
    lib = library()
    suffix = {torch.float32: "f32", torch.float64: "f64"}.get(dtype)
    if lib is None or suffix is None:
        return None
    return getattr(lib, f"rnnkit_{name}_forward_{suffix}"), getattr(lib, f"rnnkit_{name}_backward_{suffix}")


def gru_reset_before_kernels(dtype: torch.dtype):
    """(gates, state, back_state, back_gates) kernels of the reset_after=False GRU, or None."""
    lib = library()
    suffix = {torch.float32: "f32", torch.float64: "f64"}.get(dtype)
    if lib is None or suffix is None:
        return None
    return tuple(getattr(lib, f"rnnkit_gru_rb_{part}_{suffix}") for part in ("gates", "state", "back_state", "back_gates"))


def lstm_kernels(dtype: torch.dtype):
    """(forward, backward) LSTM step kernels for ``dtype``, or None (see :func:`kernels`)."""
    return kernels("lstm", dtype)
