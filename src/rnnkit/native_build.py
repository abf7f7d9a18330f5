"""Building ``native.c`` into the cache directory, and checking a cached library before it is loaded.

A shared library runs code as soon as it is opened (its constructors), so nothing in the cache
is opened unless it is ours and whole:

* the cache directory belongs to the current user and no one else may write to it (a folder
  writable by group or others is refused: whoever can write there can swap the library);
* the library and its record ``native-KEY.so.sha256`` are regular files of the current user that
  no one else may write to, and the library's sha256 equals the recorded one.

A cached library that fails the second check (truncated by a full disk, left by an older rnnkit
without a record, put there by someone else) is rebuilt; a folder that fails the first is
refused, and rnnkit runs the torch code. Builds run under ``fcntl.flock`` on ``native-KEY.lock``:
a second process waits for the first and then uses its library. The compiler writes to a
temporary name; the file is fsynced, renamed over the final name, and its record written the
same way after it, so a crash leaves either no record or a mismatching one: rebuilt next time.
The checks go by path, so between them and the dlopen only the user could swap the file: the
folder is theirs alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
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


def _record_path(library: Path) -> Path:
    """Where the sha256 of ``library`` is recorded."""
    return library.with_name(library.name + ".sha256")


def _not_private(path: Path, st: os.stat_result) -> Optional[str]:
    """Why ``path`` (with stat ``st``) may have been written by someone else, or None. POSIX only:
    Windows reports every writable file as mode 666 and has no uid; there the sha256 check stays."""
    if os.name == "nt":
        return None
    if st.st_uid != os.getuid():
        return f"{path} belongs to another user (uid {st.st_uid})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _damage(library: Path) -> Optional[str]:
    """None when ``library`` may be opened: ours, private, and equal to its recorded sha256."""
    record = _record_path(library)
    for path in (library, record):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return f"{path} is missing"
        if not stat.S_ISREG(st.st_mode):
            return f"{path} is not a regular file"
        problem = _not_private(path, st)
        if problem is not None:
            return problem
    if record.read_bytes().strip() != _sha256(library).encode():
        return f"{library} does not match the sha256 recorded in {record.name}"
    return None


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
    """Build the library at ``out``, then its sha256 record; returns None or the compiler's complaint."""
    errors = ""
    with _temporary(out) as tmp:
        for extra in VARIANTS:
            cmd = [cc, *FLAGS, *extra, str(SOURCE), "-o", tmp, "-lm"]
            try:
                run = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                return f"{cc} took more than {COMPILE_TIMEOUT_S} s"
            if run.returncode == 0:
                digest = _sha256(Path(tmp))
                _publish(tmp, out, 0o755)
                break
            errors = (run.stderr or run.stdout).strip()
        else:
            return errors.splitlines()[0] if errors else f"{cc} exited with an error"
    record = _record_path(out)
    with _temporary(record) as tmp:
        Path(tmp).write_text(digest + "\n")
        _publish(tmp, record, 0o644)
    return None


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
    """The checked library for ``key`` in the cache, built with ``cc`` if missing or damaged;
    or None and why not (a cache folder others can write to, a failed build)."""
    folder = cache_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    problem = _not_private(folder, os.stat(folder))
    if problem is not None:
        return None, f"the cache folder is unsafe: {problem}; run chmod go-w on it or set {CACHE_ENV}"
    library = folder / f"native-{key}{_SUFFIX}"
    with _locked(folder / f"native-{key}.lock"):
        if _damage(library) is None:
            return library, None
        problem = _compile(cc, library)
        if problem is not None:
            return None, f"compiling {SOURCE.name} with {cc} failed: {problem}"
        problem = _damage(library)
    return (None, problem) if problem is not None else (library, None)
