"""Process-wide runtime settings: flush-to-zero for denormal floats, seeding, threads.

Why flush denormals: over long sequences, vanishing gradients underflow into denormal
floats, and a CPU matmul with denormal operands runs up to ~100x slower (measured on this
machine class: a 7x slower training step for an LSTM over 784 steps). TensorFlow flushes
them by default; torch does not. ``torch.set_flush_denormal`` only affects threads created
after the call, so it must run before torch's first multi-threaded op: rnnkit does it when
it is imported and the CLI imports rnnkit before anything else.

Turn it off with the environment variable ``RNNKIT_FLUSH_DENORMAL=0`` (or call
``rnnkit.runtime.set_flush_denormal(False)``).
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

FLUSH_DENORMAL_ENV = "RNNKIT_FLUSH_DENORMAL"


def set_flush_denormal(enabled: bool) -> bool:
    """Flush denormal floats to zero on this thread (and threads started later).

    Returns True when the CPU supports it (x86 with SSE3).
    """
    return bool(torch.set_flush_denormal(enabled))


def configure_from_env() -> None:
    """Apply the defaults unless the environment says otherwise."""
    if os.environ.get(FLUSH_DENORMAL_ENV, "1").strip().lower() not in ("0", "false", "no", "off"):
        set_flush_denormal(True)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
