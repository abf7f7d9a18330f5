"""Data-parallel training: 2 gloo processes (torchrun) == 1 process on the same global batch.

The 2-process runs use odd batch sizes, so the ranks hold 3 and 2 rows and the loss weighting
(n_r / B) is exercised; the textgen run is interrupted and resumed with 2 processes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rnnkit.models import ModelConfig
from rnnkit.training import distributed
from rnnkit.training.config import TrainConfig
from rnnkit.runs import train_task

TEXT = "hello world, this is a tiny text for the distributed test. " * 64


def rnnkit_cli(*args, nproc=None):
    cmd = [sys.executable, "-m", "rnnkit", *args] + (["--nproc", str(nproc)] if nproc else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def losses(run: Path) -> list:
    return [r["loss"] for r in json.loads((run / "history.json").read_text())["train"]]


def assert_same_run(one: Path, two: Path, steps: int):
    a, b = losses(one), losses(two)
    assert len(a) == len(b) == steps
    for x, y in zip(a, b):
        assert abs(x - y) <= 1e-5 * abs(x), (a, b)
    wa, wb = load_file(one / "checkpoint" / "model.safetensors"), load_file(two / "checkpoint" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6, msg=k)


def test_shard_rows_are_contiguous_and_balanced():
    assert [distributed.shard_rows(5, 2, r) for r in range(2)] == [(0, 3), (3, 5)]
    assert [distributed.shard_rows(7, 3, r) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]
    assert [distributed.shard_rows(1, 2, r) for r in range(2)] == [(0, 1), (1, 1)]


def test_strip_nproc_and_single_context():
    assert distributed.strip_nproc(["train", "x", "--nproc", "2", "--a", "1", "--nproc=3"]) == ["train", "x", "--a", "1"]
    ctx = distributed.context(torch.device("cpu"))
    assert isinstance(ctx, distributed.Local) and ctx.is_writer
    loss = torch.tensor(2.5)
    assert ctx.reduce_loss(loss, 1.0) == 2.5 and ctx.backward_loss(loss, 1.0) is loss


TEXTGEN = ["--seq-len", "8", "--batch-size", "5", "--hidden-size", "16", "--embedding-dim", "8",
           "--log-every", "1", "--seed", "3", "--val-fraction", "0.1", "--eval-every", "4", "--quiet"]


def test_textgen_two_processes_match_one_and_resume(tmp_path):
    data = tmp_path / "text.txt"
    data.write_text(TEXT)
    one = tmp_path / "one"
    from rnnkit.tasks.textgen import TextgenConfig

    train_task("textgen", str(data), one, ModelConfig(hidden_size=16, embedding_dim=8),
               TrainConfig(max_steps=10, log_every=1, seed=3, eval_every=4),
               TextgenConfig(seq_len=8, batch_size=5, val_fraction=0.1), progress=False)
    two = tmp_path / "two"
    rnnkit_cli("train", "textgen", "--data", str(data), "--out", str(two), "--max-steps", "6", *TEXTGEN, nproc=2)
    assert losses(two) and len(losses(two)) == 6
    rnnkit_cli("resume", str(two), "--max-steps", "10", "--quiet", nproc=2)
    assert_same_run(one, two, 10)
    # the carried state (5 streams) was gathered from both ranks into the checkpoint
    carry = load_file(two / "checkpoint" / "carry.safetensors")
    assert carry["0"].shape == (1, 5, 16)
    meta = json.loads((two / "artifact.json").read_text())
    assert meta["status"] == "complete" and meta["step"] == 10
