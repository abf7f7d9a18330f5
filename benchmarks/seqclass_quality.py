"""MNIST-rows quality at a fixed training-time budget: a hand-written torch.nn baseline vs rnnkit presets.

Runs, in one process and on the same data split (official 60k/10k; validation = 5,000 training
images held out with split seed 0; both select their best-validation weights, test is read once):

- ``baseline``: ``torch.nn.LSTM(28, 128)`` on rows, last step -> ``Linear(128, 10)``, Adam 1e-3,
  batch 128, inputs x/255, trained for ``--budget`` seconds, evaluated on validation each epoch;
- ``preset``: ``configs/mnist-rows.json`` through the library (SequenceClassifier -> Trainer),
  with its ``time_budget`` set to ``--budget`` (and ``epochs`` to ``--preset-epochs`` if given);
- ``rnn``: ``configs/mnist-rows-rnn.json`` (SimpleRNN(32), the tutorials' model), as configured,
  once per seed in ``--rnn-seeds``;
- ``rnn-baseline``: the tutorials' PyTorch model written in torch.nn: ``nn.RNN(28, 32)``, last step
  -> ``Linear(32, 10)``, Adam 1e-3, batch 64, as many epochs as the ``rnn`` preset, x/255,
  best-validation weights, per seed;
- ``pixels-timing``: median seconds per training step of ``configs/mnist-pixels.json`` (T=784).

Usage (long: take the shared CPU lock)::

    flock /tmp/rnnkit-cpu.lock python benchmarks/seqclass_quality.py --budget 600 --runs baseline,preset
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import rnnkit  # noqa: F401  (flush-denormal setting before any torch op)
from rnnkit.data.sequences import read_mnist
from rnnkit.models import ModelConfig
from rnnkit.tasks.classify import split_validation
from rnnkit.tasks.seqclass import SeqclassConfig, SequenceClassifier
from rnnkit.training.callbacks import Callback
from rnnkit.training.config import TrainConfig, from_dict, load_config_file


class _PrintEval(Callback):
    def __init__(self, name):
        self.name, self.t0 = name, time.monotonic()

    def on_eval_end(self, trainer, metrics):
        print(f"{self.name} epoch {trainer.state.epoch} val {metrics['accuracy']:.4f} "
              f"t={time.monotonic() - self.t0:.0f}s", flush=True)

ROOT = Path(__file__).resolve().parent.parent


class Baseline(nn.Module):
    def __init__(self, cell=nn.LSTM, hidden=128):
        super().__init__()
        self.lstm = cell(28, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, 10)

    def forward(self, x):  # x: (B, 28, 28)
        y, _ = self.lstm(x)
        return self.fc(y[:, -1])  # (B, 10)


@torch.no_grad()
def _accuracy(model, x, y, batch=1000) -> float:
    model.eval()
    hits = sum(int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(y), batch))
    model.train()
    return hits / len(y)


def run_baseline(budget: float, seed: int = 0, cell=nn.LSTM, hidden: int = 128, batch: int = 128,
                 epochs: int | None = None) -> dict:
    mnist = read_mnist(os.environ.get("RNNKIT_DATA", "/work/shared/data") + "/mnist")
    images, labels = mnist["train"]
    tr, va = split_validation(labels, 5000, 0)  # the presets' split
    to_t = lambda a: torch.from_numpy(a).float() / 255.0  # noqa: E731
    xtr, ytr, xva, yva = to_t(images[tr]), torch.from_numpy(labels[tr]), to_t(images[va]), torch.from_numpy(labels[va])
    xte, yte = to_t(mnist["test"][0]), torch.from_numpy(mnist["test"][1])
    torch.manual_seed(seed)
    model = Baseline(cell, hidden)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    max_epochs, tag = epochs, cell.__name__
    best, best_state, epochs, t0 = -1.0, None, 0, time.monotonic()
    while time.monotonic() - t0 < budget and (max_epochs is None or epochs < max_epochs):
        order = torch.randperm(len(ytr))
        for i in range(0, len(order), batch):
            if time.monotonic() - t0 >= budget:
                break
            idx = order[i : i + batch]
            loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            epochs += 1
        acc = _accuracy(model, xva, yva)
        if acc > best:
            best, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
        print(f"baseline {tag} epoch {epochs} val {acc:.4f} t={time.monotonic() - t0:.0f}s", flush=True)
    model.load_state_dict(best_state)
    return {"val_accuracy": best, "test_accuracy": _accuracy(model, xte, yte), "epochs": epochs,
            "train_seconds": round(time.monotonic() - t0, 1)}


def run_preset(path: Path, budget: float | None = None, epochs: int | None = None, seed: int | None = None) -> dict:
    d = load_config_file(path)
    train = dict(d.get("train", {}))
    if seed is not None:
        train["seed"] = seed
    if budget is not None:
        train["time_budget"] = budget
    if epochs is not None:
        train["epochs"] = epochs
    clf = SequenceClassifier(from_dict(SeqclassConfig, d.get("data", {}), str(path)),
                             from_dict(ModelConfig, d.get("model", {}), str(path)),
                             from_dict(TrainConfig, train, str(path)))
    t0 = time.monotonic()
    clf.fit(data=d.get("dataset", "mnist"), callbacks=[_PrintEval(path.stem)])
    seconds = time.monotonic() - t0
    test = clf._report(clf.prepared.test)
    return {"val_accuracy": clf.metrics["accuracy"], "test_accuracy": test["accuracy"], "test_loss": test["loss"],
            "epochs_done": max((r["epoch"] for r in clf.history.eval), default=0), "stop": clf.history.stop_reason,
            "fit_seconds": round(seconds, 1)}


def time_preset_steps(path: Path, steps: int = 10) -> dict:
    """Seconds per training step (forward + backward + Adam) of a preset's model on its real batches."""
    from rnnkit.tasks.seqclass import TASK

    d = load_config_file(path)
    cfg = from_dict(SeqclassConfig, d.get("data", {}), str(path))
    prep = TASK.prepare(cfg, d.get("dataset", "mnist"))
    model = TASK.build_model(TASK.model_config(prep.task_state, cfg, from_dict(ModelConfig, d.get("model", {}), str(path))), prep.task_state)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    times = []
    for i, batch in zip(range(steps + 2), prep.train.epoch(0, 0)):
        t = time.perf_counter()
        out, _ = model(batch.inputs, None, batch.lengths)
        loss = TASK.loss(out, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:  # skip warm-up steps
            times.append(time.perf_counter() - t)
    per_step = float(np.median(times))
    return {"seconds_per_step": round(per_step, 3), "steps_per_epoch": len(prep.train),
            "estimated_epoch_minutes": round(per_step * len(prep.train) / 60, 1)}


def _per_seed(seeds: str, run) -> dict:
    """{seed: result} plus the mean and minimum test accuracy over the seeds."""
    runs = {int(s): run(int(s)) for s in seeds.split(",")}
    accs = [r["test_accuracy"] for r in runs.values()]
    return {"seeds": runs, "mean_test_accuracy": round(float(np.mean(accs)), 4), "min_test_accuracy": min(accs)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=600.0, help="training seconds for baseline and preset")
    p.add_argument("--runs", default="baseline,preset,rnn")
    p.add_argument("--preset", default=str(ROOT / "configs/mnist-rows.json"))
    p.add_argument("--preset-epochs", type=int, default=None, help="override the preset's epochs (cosine length)")
    p.add_argument("--rnn-seeds", default="0", help="seeds for the rnn and rnn-baseline runs, e.g. 0,1,2")
    p.add_argument("--threads", type=int, default=2, help="torch threads (1 is steadier on a busy machine)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = {"budget_s": args.budget, "torch": torch.__version__}
    for run in args.runs.split(","):
        if run == "baseline":
            out["baseline_lstm128"] = run_baseline(args.budget)
        elif run == "preset":
            out[Path(args.preset).stem] = run_preset(Path(args.preset), args.budget, args.preset_epochs)
        elif run == "pixels-timing":
            out["mnist-pixels-timing"] = time_preset_steps(ROOT / "configs/mnist-pixels.json")
        elif run == "rnn":
            out["mnist-rows-rnn"] = _per_seed(args.rnn_seeds, lambda seed: run_preset(
                ROOT / "configs/mnist-rows-rnn.json", seed=seed))
        elif run == "rnn-baseline":
            epochs = load_config_file(ROOT / "configs/mnist-rows-rnn.json")["train"]["epochs"]  # the same budget
            out["baseline_rnn32"] = _per_seed(args.rnn_seeds, lambda seed: run_baseline(
                math.inf, seed, cell=nn.RNN, hidden=32, batch=64, epochs=epochs))
        out["threads"] = args.threads
        print(json.dumps(out, indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
