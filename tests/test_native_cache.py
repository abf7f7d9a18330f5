"""The native library's cache (rnnkit/native_build.py): only our own, whole library is ever opened.

The builds here go through a stand-in compiler (``CC``): a shell script that logs each compile
and copies in a library the real compiler built once for this module, so counting compiles is
counting lines, and a rebuild takes no compiler time. Loads of a tampered cache run in a child
process: a foreign library's constructor or a truncated file's SIGBUS cannot touch pytest.
"""

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

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

FOREIGN_C = """#include <stdio.h>
__attribute__((constructor)) static void mark(void) { FILE *f = fopen("%s", "w"); if (f) fclose(f); }
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


def _put(data: bytes, path: Path) -> None:
    """Write ``data`` under a new inode at ``path``: pytest has the old file mapped (loaded), and
    changing a mapped library in place would bring the SIGBUS into pytest itself."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    os.replace(tmp, path)


def _load_in_a_child() -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(rnnkit.__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-c", LOAD], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _finish(child: subprocess.Popen) -> tuple[int, str]:
    """The child's exit status (0: the kernels loaded; -7: SIGBUS) and its output."""
    output = child.communicate(timeout=300)[0]
    return child.returncode, output


@pytest.mark.skipif(shutil.which("cc") is None, reason="no cc to build the foreign library")
def test_a_foreign_library_is_never_opened_and_is_rebuilt(cache, tmp_path):
    library = _cached_library(cache)
    marker = tmp_path / "constructor-ran"
    source, foreign = tmp_path / "foreign.c", tmp_path / "foreign.so"
    source.write_text(FOREIGN_C % marker)
    subprocess.run(["cc", "-shared", "-fPIC", str(source), "-o", str(foreign)], check=True)
    _put(foreign.read_bytes(), library)
    library.with_name(library.name + ".sha256").unlink(missing_ok=True)  # no record, as a foreign file has
    status, output = _finish(_load_in_a_child())
    assert not marker.exists()
    assert status == 0, output
    assert library.read_bytes() == cache.built.read_bytes() and cache.compiles() == 2


def test_a_truncated_library_is_rebuilt_without_a_crash(cache):
    library = _cached_library(cache)
    _put(library.read_bytes()[: library.stat().st_size // 2], library)
    status, output = _finish(_load_in_a_child())
    assert status == 0, output
    assert library.read_bytes() == cache.built.read_bytes() and cache.compiles() == 2


def test_concurrent_first_uses_compile_once(cache, monkeypatch):
    monkeypatch.setenv("FAKE_CC_DELAY", "2")  # the second child starts while the first compiles
    children = [_load_in_a_child() for _ in range(2)]
    for child in children:
        status, output = _finish(child)
        assert status == 0, output
    assert cache.compiles() == 1


OTHERS = {"group-writable": lambda path: path.chmod(0o775), "another user's": lambda path: os.chown(path, 65534, -1)}


@pytest.mark.parametrize("kind", list(OTHERS))
def test_a_library_someone_else_could_have_written_is_rebuilt(cache, kind):
    if kind == "another user's" and os.getuid() != 0:
        pytest.skip("only root can give a file to another user")
    library = _cached_library(cache)
    OTHERS[kind](library)
    assert native.library() is not None
    st = library.stat()
    assert cache.compiles() == 2 and st.st_uid == os.getuid() and st.st_mode & 0o022 == 0


def test_a_cache_folder_others_can_write_to_is_refused_with_one_warning(cache):
    cache.folder.mkdir()
    cache.folder.chmod(0o777)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert native.library() is None
        assert native.kernels("lstm", torch.float32) is None  # the torch code serves
    assert [str(w.message).count("writable by group or others") for w in caught] == [1]
    assert "\n" not in str(caught[0].message)
    assert cache.compiles() == 0 and list(cache.folder.iterdir()) == []


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
    for path in (library, library.with_name(library.name + ".sha256")):
        inode = path.stat().st_ino
        renamed = events.index(("replace", inode, str(path)))
        assert ("fsync", inode) in events[:renamed], path.name
