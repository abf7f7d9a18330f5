"""Building ``native.c`` into the cache directory (see :mod:`rnnkit.native`, which loads it)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

CACHE_ENV = "RNNKIT_CACHE"
SOURCE = Path(__file__).with_name("native.c")
FLAGS = ["-O3", "-fPIC", "-shared"]
# Tried in order: OpenMP (the library then uses the libgomp torch has loaded, and its threads),
# else only the SIMD pragmas; -march=native where the compiler takes it.
VARIANTS = (["-fopenmp", "-march=native"], ["-fopenmp"], ["-fopenmp-simd", "-march=native"], ["-fopenmp-simd"])
COMPILE_TIMEOUT_S = 120
_SUFFIX = ".dll" if os.name == "nt" else ".so"


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rnnkit"


def _compile(cc: str, out: Path) -> Optional[str]:
    """Build the library at ``out`` (atomically); returns None or the compiler's complaint."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.stem + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        errors = ""
        for extra in VARIANTS:
            cmd = [cc, *FLAGS, *extra, str(SOURCE), "-o", tmp, "-lm"]
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


def cached_library(cc: str, key: str) -> tuple[Optional[Path], Optional[str]]:
    """The library for ``key`` in the cache, built with ``cc`` if missing; or None and why not."""
    library = cache_dir() / f"native-{key}{_SUFFIX}"
    if not library.exists():
        problem = _compile(cc, library)
        if problem is not None:
            return None, f"compiling {SOURCE.name} with {cc} failed: {problem}"
    return library, None
