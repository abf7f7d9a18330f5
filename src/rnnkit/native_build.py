"""Building ``native.c`` into the cache directory (see :mod:`rnnkit.native`, which loads it).

Builds run under ``fcntl.flock`` on ``native-KEY.lock``: a second process waits for the first
and then uses its library. The compiler writes to a temporary name; the file is fsynced and
renamed over the final name, so no one sees a half-written library, even after a crash.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, Optional

try:
    import fcntl
except ImportError:  # Windows: no flock; concurrent first builds each compile and rename
    fcntl = None

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


def _fsync_dir(folder: Path) -> None:
    if os.name == "nt":  # a folder cannot be opened for fsync there
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: str, final: Path, mode: int) -> None:
    """Give ``tmp`` ``mode``, flush it to disk, then rename it over ``final`` in one step."""
    os.chmod(tmp, mode)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


@contextlib.contextmanager
def _temporary(final: Path) -> Iterator[str]:
    """A fresh temporary name beside ``final``, removed afterwards unless it was published."""
    fd, tmp = tempfile.mkstemp(prefix=final.name + ".", suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        yield tmp
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _compile(cc: str, out: Path) -> Optional[str]:
    """Build the library at ``out``; returns None or the compiler's complaint."""
    errors = ""
    with _temporary(out) as tmp:
        for extra in VARIANTS:
            cmd = [cc, *FLAGS, *extra, str(SOURCE), "-o", tmp, "-lm"]
            try:
                run = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                return f"{cc} took more than {COMPILE_TIMEOUT_S} s"
            if run.returncode == 0:
                _publish(tmp, out, 0o755)
                return None
            errors = (run.stderr or run.stdout).strip()
    return errors.splitlines()[0] if errors else f"{cc} exited with an error"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed); no-op without fcntl."""
    if fcntl is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def cached_library(cc: str, key: str) -> tuple[Optional[Path], Optional[str]]:
    """The library for ``key`` in the cache, built with ``cc`` if missing; or None and why not."""
    folder = cache_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    library = folder / f"native-{key}{_SUFFIX}"
    with _locked(folder / f"native-{key}.lock"):
        if not library.exists():
            problem = _compile(cc, library)
            if problem is not None:
                return None, f"compiling {SOURCE.name} with {cc} failed: {problem}"
    return library, None
