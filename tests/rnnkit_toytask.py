"""A tiny synthetic task used by the trainer/artifact/CLI tests (not one of the four jobs).

Data: a one-column CSV (``value``); the task learns next-value prediction on B contiguous
streams of the standardised series (truncated BPTT: batches carry state). Registered as
``toy`` by :func:`register`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rnnkit.data.batching import Batch
from rnnkit.data.sources import read_csv_column, resolve, sha256_file
from rnnkit.models import ModelConfig
from rnnkit.tasks.base import PreparedData, Task


class StreamSource:
    """B contiguous streams cut into chunks of T steps; row i of chunk k+1 continues row i of chunk k."""

    def __init__(self, values: torch.Tensor, batch_size: int, seq_len: int):
        n = (len(values) - 1) // batch_size
        self.x = values[: n * batch_size].view(batch_size, n)  # (B, N)
        self.y = values[1: n * batch_size + 1].view(batch_size, n)
        self.seq_len = seq_len

    def __len__(self):
        return self.x.shape[1] // self.seq_len

    def epoch(self, epoch, seed):
        T = self.seq_len
        for k in range(len(self)):
            sl = slice(k * T, (k + 1) * T)
            yield Batch(self.x[:, sl, None], self.y[:, sl, None], carries_state=True)


class ShuffledSource:
    """Independent windows in an order that depends only on (epoch, seed): tests the cursor."""

    def __init__(self, values: torch.Tensor, batch_size: int, seq_len: int):
        n = (len(values) - 1) // seq_len
        self.x = values[: n * seq_len].view(n, seq_len)
        self.y = values[1: n * seq_len + 1].view(n, seq_len)
        self.batch_size = batch_size

    def __len__(self):
        return len(self.x) // self.batch_size

    def epoch(self, epoch, seed):
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(len(self.x), generator=g)
        for k in range(len(self)):
            idx = order[k * self.batch_size:(k + 1) * self.batch_size]
            yield Batch(self.x[idx, :, None], self.y[idx, :, None])


@dataclass
class ToyConfig:
    column: str = "value"
    seq_len: int = 8
    batch_size: int = 4
    stream: bool = True
    val_fraction: float = 0.25


class ToyModel:
    """The façade rnnkit.load returns for the toy task."""

    def __init__(self, model, scale):
        self.model, self.scale = model, scale

    def predict(self, values):
        x = (torch.as_tensor(values, dtype=torch.float32) - self.scale["mean"]) / self.scale["std"]
        with torch.no_grad():
            y, _ = self.model(x.view(1, -1, 1))
        return float(y[0, -1, 0]) * self.scale["std"] + self.scale["mean"]


class ToyTask(Task):
    name = "toy"
    Config = ToyConfig

    def prepare(self, config, data, seed):
        path = resolve(data)
        values = torch.tensor(read_csv_column(path, config.column), dtype=torch.float32)
        mean, std = float(values.mean()), float(values.std()) or 1.0
        values = (values - mean) / std
        n_val = int(len(values) * config.val_fraction)
        src = StreamSource if config.stream else ShuffledSource
        train = src(values[: len(values) - n_val], config.batch_size, config.seq_len)
        val = StreamSource(values[len(values) - n_val:], 1, config.seq_len) if n_val > config.seq_len else None
        info = {"name": str(data), "path": str(path), "sha256": sha256_file(path)}
        return PreparedData(train, val, val, {"mean": mean, "std": std}, info)

    def model_config(self, task_state, config, model):
        from dataclasses import replace

        return replace(model, encoder="linear", input_size=1, head="per_step", output_size=1)

    def loss(self, outputs, batch):
        return torch.nn.functional.mse_loss(outputs, batch.targets)

    def evaluate(self, model, batches):
        total, count, state = 0.0, 0, None
        for b in batches:
            out, state = model(b.inputs, state if b.carries_state else None)
            total += float(((out - b.targets) ** 2).sum())
            count += b.targets.numel()
        return {"loss": total / max(count, 1), "rmse": (total / max(count, 1)) ** 0.5}

    def load(self, artifact):
        return ToyModel(artifact.build_model(), artifact.task_state)

    def add_arguments(self, verb, parser):
        if verb == "predict":
            parser.add_argument("--values", required=True, help="comma-separated history")

    def run_verb(self, verb, facade, args):
        if verb == "predict":
            print(f"{facade.predict([float(v) for v in args.values.split(',')]):.6f}")
            return 0
        return super().run_verb(verb, facade, args)


TASK = ToyTask()


def register(monkeypatch=None):
    """Add ``toy`` to the registry (undone after the test when a pytest ``monkeypatch`` is given)."""
    from rnnkit.tasks import TASK_MODULES

    if monkeypatch is not None:
        monkeypatch.setitem(TASK_MODULES, "toy", __name__)
    else:
        TASK_MODULES["toy"] = __name__


def write_series(path, n=200, seed=0):
    """A noisy sine as a one-column CSV."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=torch.float64)
    v = torch.sin(t * 0.3) + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    path.write_text("value\n" + "\n".join(f"{x:.6f}" for x in v.tolist()) + "\n")
    return path


def cli_main(argv=None):
    """``rnnkit`` with the toy task registered; RNNKIT_TEST_KILL_AT_STEP=k SIGKILLs the process right
    after optimizer step k, RNNKIT_TEST_KILL_AT_WRITE=n in the middle of the n-th file write of a save."""
    import os
    import signal
    import sys

    register()
    import torch

    torch.set_num_threads(1)  # the test compares bits with in-process runs pinned the same way
    kill_step = int(os.environ.get("RNNKIT_TEST_KILL_AT_STEP", "0"))
    kill_write = int(os.environ.get("RNNKIT_TEST_KILL_AT_WRITE", "0"))
    if kill_step:
        from rnnkit.training import trainer

        real_step = trainer.Trainer._step

        def step(self, *args):
            out = real_step(self, *args)
            if self.state.step == kill_step:
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        trainer.Trainer._step = step
    if kill_write:
        from rnnkit import artifacts

        real_write, count = artifacts._write_file, [0]

        def write(path, data):
            count[0] += 1
            if count[0] == kill_write:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data[: len(data) // 2])  # half a file on disk, then the power goes out
                os.kill(os.getpid(), signal.SIGKILL)
            real_write(path, data)

        artifacts._write_file = write
    from rnnkit.cli.main import main

    sys.exit(main(argv))
