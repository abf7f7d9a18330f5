"""Guards for a run directory that is about to be written (``train``, ``resume``, a façade's ``fit(out=...)``).

:func:`writing` is the one entry point; before anything is read or trained it

* follows symlinks: the directory written is the link's target (the link stays a link);
* checks that saves can write the directory the way :func:`rnnkit.artifacts.write_run` does
  (a temp sibling in the parent, then a swap): one line now instead of a traceback at the
  first save after minutes of training;
* for a new run, refuses a directory that is neither empty nor a previous run, with or without
  ``--overwrite`` (which replaces a previous run only);
* takes the run's lock, so a second writer is refused in one line;
* removes stale snapshots (``.NAME.tmp-*``, ``.NAME.old-*`` in the parent) that a killed save
  left behind.

The lock is ``.NAME.lock`` in the run directory's parent, locked with ``flock`` for as long as
the writer runs (the kernel drops it when the process exits, however it ends). It lives beside
the directory, not in it, because every save swaps in a new directory. The empty file stays:
removing it would race with a writer about to lock it. Under torchrun only rank 0 (the one
that writes) checks, locks and sweeps.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional

from rnnkit import artifacts
from rnnkit.errors import UserError

try:
    import fcntl
except ImportError:  # not POSIX: no lock
    fcntl = None


def resolved(out) -> Path:
    """The directory a save writes: ``out`` with symlinks followed (also a dangling link's target)."""
    return Path(out).resolve()


def lock_path(out) -> Path:
    """The lock file of run directory ``out``: ``.NAME.lock`` beside it."""
    path = resolved(out)
    return path.parent / f".{path.name}.lock"


def is_run(path: Path) -> bool:
    """A previous rnnkit run: its artifact.json, or an interrupted run's checkpoint."""
    return any((path / rel).is_file() for rel in (artifacts.ARTIFACT_JSON, f"{artifacts.CHECKPOINT}/trainer_state.json"))


def check_out_dir(out, overwrite: bool) -> None:
    """A new run writes an empty or new directory, or replaces a previous run with ``overwrite``
    (at its first save); anything else is refused, whatever ``overwrite`` says."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not is_run(out):
        only = "; --overwrite replaces only a previous run" if overwrite else ""
        raise UserError(f"--out {out}: is not empty and holds no rnnkit run (no {artifacts.ARTIFACT_JSON}); "
                        f"choose a new or empty directory{only}")
    if not overwrite:
        what = "holds an artifact" if (out / artifacts.ARTIFACT_JSON).exists() else "holds a run"
        raise UserError(f"--out {out}: already {what}; use `rnnkit resume {out}`, another --out, or --overwrite")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(out, label: str) -> None:
    """Saves can write ``out``: the directory itself (when it exists) is readable and writable, and
    a temp sibling can be created beside it (or where its missing parents would be created)."""
    path = resolved(out)
    if path.exists() and not path.is_dir():
        raise UserError(f"{label}: exists and is not a directory")
    if path.is_dir() and not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise UserError(f"{label}: cannot write into {path} (permission denied)")
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise UserError(f"{label}: {base} is not a directory")
    try:
        probe = tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=base)
    except OSError as exc:
        raise UserError(f"{label}: cannot create the save's temporary copy in {base} "
                        f"({exc.strerror or exc.__class__.__name__})") from None
    with contextlib.suppress(FileNotFoundError):  # the run's writer may have swept it already
        os.rmdir(probe)


def _lock(out, label: str) -> Optional[int]:
    """Take the run's lock (the open file descriptor holds it), or refuse in one line."""
    if fcntl is None:
        return None
    path = lock_path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise UserError(f"{label}: cannot create the lock file {path} ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise UserError(f"{label}: another rnnkit process is writing this run directory (it holds {path}); "
                        "wait for it to finish") from None
    return fd


_SNAPSHOT = r"\.(?:tmp|old)-[A-Za-z0-9_]{8}"  # the suffix tempfile.mkdtemp gives write_run's snapshots


def stale_snapshots(out) -> list[Path]:
    """Temporary snapshot directories of ``out`` in its parent (meaningful only under its lock)."""
    path = resolved(out)
    pattern = re.compile(re.escape(f".{path.name}") + _SNAPSHOT)
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir()
                  if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink())


def sweep_stale_snapshots(out) -> None:
    """Remove the snapshots a killed save left beside ``out``; none while ``out`` is missing, since
    a save killed in the middle of a two-rename swap leaves the only copy in one of them."""
    if not resolved(out).is_dir():
        return
    for snapshot in stale_snapshots(out):
        shutil.rmtree(snapshot, ignore_errors=True)


@contextlib.contextmanager
def writing(out, replace: Optional[bool] = None) -> Iterator[None]:
    """While the block runs, this process alone writes the run directory ``out`` (None: nothing).

    ``replace`` None: ``out`` is an existing run that is continued (``resume``); a bool: a new
    run whose ``--overwrite`` it is (see :func:`check_out_dir`)."""
    from rnnkit.training import distributed

    if out is None or not distributed.is_writer():
        yield
        return
    label = str(out) if replace is None else f"--out {out}"
    check_writable(out, label)
    if replace is not None:
        check_out_dir(out, replace)
    fd = _lock(out, label)
    try:
        sweep_stale_snapshots(out)
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock
