"""Process-wide runtime settings: flush-to-zero for denormal floats, malloc, seeding, threads.

Why flush denormals: over long sequences, vanishing gradients underflow into denormal
floats, and a CPU matmul with denormal operands runs many times slower (BENCHMARKS.md has the
measured cost on a long-sequence LSTM). TensorFlow flushes
them by default; torch does not. ``torch.set_flush_denormal`` only affects threads created
after the call, so it must run before torch's first multi-threaded op: rnnkit does it when
it is imported and the CLI imports rnnkit before anything else.

Turn it off with the environment variable ``RNNKIT_FLUSH_DENORMAL=0`` (or call
``rnnkit.runtime.set_flush_denormal(False)``).

Why keep freed memory (Linux/glibc): torch allocates each intermediate tensor with malloc,
and glibc serves large blocks with a fresh ``mmap`` and unmaps them on free. A long sequence's
time-major gate tensors are tens of MB (B=64, T=784, H=128: 25 MB each), so every op of every
training step paid page faults on memory it had just returned to the OS. ``mallopt`` with no
mmap for large blocks and no trimming keeps freed blocks in the process for reuse, as torch's
own GPU caching allocator does. Turn it off with ``RNNKIT_KEEP_MEMORY=0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import random

import numpy as np
import torch

FLUSH_DENORMAL_ENV = "RNNKIT_FLUSH_DENORMAL"
KEEP_MEMORY_ENV = "RNNKIT_KEEP_MEMORY"
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
keeps_memory = False  # whether keep_freed_memory() took effect in this process


def set_flush_denormal(enabled: bool) -> bool:
    """Flush denormal floats to zero on this thread (and threads started later).

    Returns True when the CPU supports it (x86 with SSE3).
    """
    return bool(torch.set_flush_denormal(enabled))


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks for reuse (no mmap per large block, no trimming).

    Returns True when applied; False where the C library is not glibc (macOS, Windows, musl).
    """
    global keeps_memory
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
        gnu = getattr(libc, "gnu_get_libc_version", None)
    except OSError:
        return False
    if mallopt is None or gnu is None:
        return False
    keeps_memory = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return keeps_memory


def _enabled(env: str) -> bool:
    return os.environ.get(env, "1").strip().lower() not in ("0", "false", "no", "off")


def configure_from_env() -> None:
    """Apply the defaults unless the environment says otherwise."""
    if _enabled(FLUSH_DENORMAL_ENV):
        set_flush_denormal(True)
    if _enabled(KEEP_MEMORY_ENV):
        keep_freed_memory()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
