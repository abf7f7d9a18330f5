"""Transcription quality (CTC) at a fixed training-time budget: a preset (``mnist-digits`` or
``fsdd-connected``) beside a hand-written torch.nn model, in one process, on the same data.

    RNNKIT_DATA=../shared/data python benchmarks/transcribe_quality.py mnist-digits --json /tmp/digits.json
    RNNKIT_DATA=../shared/data python benchmarks/transcribe_quality.py fsdd-connected --json /tmp/connected.json

Data: the preset's own ``prepare`` (:mod:`rnnkit.tasks.transcribe`): ``mnist-digits`` strings of
3-7 MNIST digits (training strings from training images, validation strings from 5,000 held-out
training images, test strings from the test images); ``fsdd-connected`` 2-6 spoken digits joined
with silences (training from takes 10-49, validation from takes 5-9, test from takes 0-4). Both
models keep the weights of their best validation score (the preset's monitor) and read test once,
at the end.

``preset``: ``configs/NAME.json`` through the library (``rnnkit.Transcriber``).
``baseline``: written directly in torch.nn with the preset's recurrent options (cell, width,
layers, dropout; bidirectional) over the raw frames (no subsampling), packed by length ->
``Linear(2H, C)`` -> log-softmax, ``nn.CTCLoss`` (blank 0, mean over target lengths), greedy
decoding (argmax per step, repeats merged, blanks dropped); Adam 1e-3, batch 32, gradients clipped
at 5, a validation pass every ``--eval-every`` steps, trained for the budget.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit  # noqa: F401  (flush denormals before torch's first parallel op)
from benchmarks.budget_loop import train_for_budget
from rnnkit.metrics import transcription_scores
from rnnkit.models import ModelConfig
from rnnkit.tasks.transcribe import TranscribeConfig, Transcriber, prepare_connected, prepare_digits
from rnnkit.training.config import TrainConfig, from_dict, load_config_file

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ("mnist-digits", "fsdd-connected")


def run_preset(name: str, budget: float | None) -> dict:
    path = ROOT / "configs" / f"{name}.json"
    d = load_config_file(path)
    train = {**d["train"], **({"time_budget": budget} if budget else {})}
    t = Transcriber(from_dict(TranscribeConfig, d["data"], str(path)), from_dict(ModelConfig, d["model"], str(path)),
                    from_dict(TrainConfig, train, str(path)))
    t0 = time.monotonic()
    t.fit(name)
    seconds = time.monotonic() - t0
    test = t.evaluate(split="test")
    return {"val": t.metrics, "test": test, "steps": t.history.steps_taken, "stop": t.history.stop_reason,
            "fit_seconds": round(seconds, 1)}


class Baseline(nn.Module):
    def __init__(self, features: int, classes: int, model: dict):
        super().__init__()
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[model["cell"]]
        self.rnn = rnn(features, model["hidden_size"], num_layers=model["num_layers"], bidirectional=True,
                       dropout=model["dropout"], batch_first=True)
        self.out = nn.Linear(2 * model["hidden_size"], classes)

    def forward(self, x, lengths):  # (B, T, F), (B,) -> (B, T, C) log-probabilities
        y, _ = self.rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
        return torch.log_softmax(self.out(y), -1)


def batches(items, order, size: int = 32):
    for i in range(0, len(order), size):
        idx = order[i : i + size]
        feats = [torch.from_numpy(items.features(j)).float() for j in idx]
        lengths = torch.tensor([len(f) for f in feats])
        yield nn.utils.rnn.pad_sequence(feats, batch_first=True), lengths, [items.transcript(j) for j in idx]


@torch.no_grad()
def scores(model, items) -> dict:
    """cer, sequence_accuracy of greedy decoding over ``items`` (transcripts of digits 0-9)."""
    model.eval()
    refs, hyps = [], []
    for x, lengths, texts in batches(items, list(range(len(items))), 200):
        best = model(x, lengths).argmax(-1)
        for row, n, text in zip(best, lengths.tolist(), texts):
            ids = torch.unique_consecutive(row[:n])
            hyps.append("".join(str(int(k) - 1) for k in ids if k != 0))
            refs.append(text)
    model.train()
    s = transcription_scores(refs, hyps)
    return {"cer": s["cer"], "sequence_accuracy": s["sequence_accuracy"]}


def run_baseline(name: str, budget: float, eval_every: int, seed: int = 0) -> dict:
    path = ROOT / "configs" / f"{name}.json"
    d = load_config_file(path)
    config = from_dict(TranscribeConfig, d["data"], str(path))
    parts = prepare_digits(config)[0] if name == "mnist-digits" else prepare_connected(config)[0]
    monitor = d["train"]["monitor"]
    sign = -1.0 if monitor == "cer" else 1.0  # train_for_budget maximises
    torch.manual_seed(seed)
    model = Baseline(parts["train"].features(0).shape[1], 11, d["model"])
    ctc = nn.CTCLoss(blank=0, zero_infinity=True)

    def loss_of(batch):
        x, lengths, texts = batch
        targets = torch.tensor([int(c) + 1 for t in texts for c in t])
        return ctc(model(x, lengths).transpose(0, 1), targets, lengths, torch.tensor([len(t) for t in texts]))

    run = train_for_budget(model, lambda: batches(parts["train"], torch.randperm(len(parts["train"])).tolist()), loss_of,
                           lambda: sign * scores(model, parts["val"])[monitor], budget, eval_every)
    return {"val_" + monitor: sign * run["val"], "test": scores(model, parts["test"]), "steps": run["steps"],
            "train_seconds": run["train_seconds"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("preset", choices=PRESETS)
    p.add_argument("--runs", default="preset,baseline")
    p.add_argument("--budget", type=float, default=None, help="training seconds (default: the preset's time_budget)")
    p.add_argument("--eval-every", type=int, default=None, help="baseline validation interval (default: the preset's)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(2)
    train = load_config_file(ROOT / "configs" / f"{args.preset}.json")["train"]
    budget = args.budget or train["time_budget"]
    out = {"preset": args.preset, "budget_s": budget, "torch": torch.__version__}
    for run in args.runs.split(","):
        out[run] = (run_preset(args.preset, budget) if run == "preset"
                    else run_baseline(args.preset, budget, args.eval_every or train["eval_every"]))
        print(json.dumps(out, indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
