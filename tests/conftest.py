"""Shared fixtures: the data directory (RNNKIT_DATA) and float64 helpers."""

import os
from pathlib import Path

import pytest


@pytest.fixture
def data_dir() -> Path:
    """The real datasets folder named by RNNKIT_DATA; skips the test with the reason when absent."""
    root = os.environ.get("RNNKIT_DATA")
    if not root or not Path(root).is_dir():
        pytest.skip("RNNKIT_DATA is not set to an existing folder; real-data tests need it")
    return Path(root)


def need_file(data_dir: Path, relative: str) -> Path:
    path = data_dir / relative
    if not path.exists():
        pytest.skip(f"{path} is missing (see shared/data/SOURCES.md)")
    return path


@pytest.fixture
def one_thread():
    """Run a test with one torch thread. Layer norm on tiny tensors opens an OpenMP region per
    call; on a busy 2-core machine the thread wake-up cost ~16 ms a call (measured), 7 us with
    one thread."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def assert_same_weights(run_a: Path, run_b: Path) -> None:
    """The two run directories' model.safetensors hold bit-identical tensors under the same names."""
    import torch
    from safetensors.torch import load_file

    ours, theirs = load_file(Path(run_a) / "model.safetensors"), load_file(Path(run_b) / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=0)


@pytest.fixture
def toy_task(monkeypatch):
    """The toy task of tests/rnnkit_toytask.py registered for the test."""
    import rnnkit_toytask

    rnnkit_toytask.register(monkeypatch)


@pytest.fixture
def csv(tmp_path):
    """A toy series CSV of 120 rows (tests/rnnkit_toytask.py)."""
    import rnnkit_toytask

    return rnnkit_toytask.write_series(tmp_path / "s.csv", n=120)


def run_cli(capsys, *argv):
    """``rnnkit ARGV`` in this process: (exit status, stdout, stderr)."""
    from rnnkit.cli.main import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def cli_error(capsys, *argv) -> str:
    """The one ``rnnkit: error:`` line of a command that must fail with exit status 2 (and print
    nothing else), without its prefix."""
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2 and out == "" and err.count("\n") == 1 and err.startswith("rnnkit: error: "), (rc, out, err)
    return err[len("rnnkit: error: "):].rstrip("\n")
