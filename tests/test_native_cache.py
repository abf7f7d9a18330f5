"""The native library's cache (rnnkit/native_build.py): built once, durably.

The builds here go through a stand-in compiler (``CC``): a shell script that logs each compile
and copies in a library the real compiler built once for this module, so counting compiles is
counting lines, and a build takes no compiler time.
"""

import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

import rnnkit
from rnnkit import native

FAKE_CC = """#!/bin/sh
if [ "$1" = --version ]; then echo "rnnkit-test-cc 1"; exit 0; fi
echo "$*" >> '{log}'
sleep "${{FAKE_CC_DELAY:-0}}"
while [ $# -gt 1 ]; do
  if [ "$1" = -o ]; then cp '{library}' "$2"; fi
  shift
done
"""

LOAD = "from rnnkit import native; reason = native.unavailable_reason(); print(reason); raise SystemExit(reason is not None)"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A library built once by the real compiler, in a cache of its own."""
    folder = tmp_path_factory.mktemp("built")
    with pytest.MonkeyPatch.context() as m:
        m.setenv(native.CACHE_ENV, str(folder))
        m.delenv("CC", raising=False)
        native.reset()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reason = native.unavailable_reason()
        native.reset()
    if reason is not None:
        pytest.skip(f"native kernels unavailable: {reason}")
    (library,) = folder.glob("native-*.so")
    return library


@pytest.fixture
def cache(built, tmp_path, monkeypatch):
    """An empty cache folder, the stand-in compiler as CC, and the loader's state forgotten."""
    log = tmp_path / "compiles.log"
    cc = tmp_path / "fake-cc"
    cc.write_text(FAKE_CC.format(log=log, library=built))
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path / "cache"))
    native.reset()
    yield SimpleNamespace(folder=tmp_path / "cache", built=built,
                          compiles=lambda: len(log.read_text().splitlines()) if log.exists() else 0)
    native.reset()


def _cached_library(cache) -> Path:
    """Build into the cache with the stand-in compiler; the library's path there."""
    assert native.library() is not None
    native.reset()
    (library,) = cache.folder.glob("native-*.so")
    return library


def _load_in_a_child() -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(rnnkit.__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-c", LOAD], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _finish(child: subprocess.Popen) -> tuple[int, str]:
    """The child's exit status (0: the kernels loaded; -7: SIGBUS) and its output."""
    output = child.communicate(timeout=300)[0]
    return child.returncode, output


def test_concurrent_first_uses_compile_once(cache, monkeypatch):
    monkeypatch.setenv("FAKE_CC_DELAY", "2")  # the second child starts while the first compiles
    children = [_load_in_a_child() for _ in range(2)]
    for child in children:
        status, output = _finish(child)
        assert status == 0, output
    assert cache.compiles() == 1


def test_the_library_is_fsynced_before_its_rename(cache, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace

    def logged_fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        fsync(fd)

    def logged_replace(src, dst, **kwargs):
        events.append(("replace", os.stat(src).st_ino, str(dst)))
        replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "fsync", logged_fsync)
    monkeypatch.setattr(os, "replace", logged_replace)
    library = _cached_library(cache)
    inode = library.stat().st_ino
    renamed = events.index(("replace", inode, str(library)))
    assert ("fsync", inode) in events[:renamed]
