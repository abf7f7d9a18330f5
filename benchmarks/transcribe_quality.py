"""Transcription quality (CTC) at a fixed training-time budget: the ``mnist-digits`` preset beside
a hand-written torch.nn model, in one process, on the same generated strings.

    RNNKIT_DATA=../shared/data python benchmarks/transcribe_quality.py --json /tmp/digits.json

Data: :func:`rnnkit.tasks.transcribe.prepare_digits` with the preset's options (strings of 3-7
MNIST digits; training strings from training images, validation strings from 5,000 held-out
training images, test strings from the test images). Both models keep the weights of their best
validation sequence accuracy and read test once, at the end.

``preset``: ``configs/mnist-digits.json`` through the library (``rnnkit.Transcriber``).
``baseline``: written directly in torch.nn: ``nn.LSTM(28, 128, num_layers=2, bidirectional=True,
dropout=0.1)`` over the strip's columns (packed by length) -> ``Linear(256, 11)`` -> log-softmax,
``nn.CTCLoss`` (blank 0, mean over target lengths), greedy decoding (argmax per column, repeats
merged, blanks dropped); Adam 1e-3, batch 32, gradients clipped at 5, a validation pass every
``--eval-every`` steps, trained for the budget.
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
from rnnkit.models import ModelConfig
from rnnkit.tasks.transcribe import TranscribeConfig, Transcriber, prepare_digits
from rnnkit.training.config import TrainConfig, from_dict, load_config_file

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "mnist-digits.json"


def run_preset(budget: float | None) -> dict:
    d = load_config_file(PRESET)
    train = {**d["train"], **({"time_budget": budget} if budget else {})}
    t = Transcriber(from_dict(TranscribeConfig, d["data"], str(PRESET)), from_dict(ModelConfig, d["model"], str(PRESET)),
                    from_dict(TrainConfig, train, str(PRESET)))
    t0 = time.monotonic()
    t.fit("mnist-digits")
    seconds = time.monotonic() - t0
    test = t.evaluate(split="test")
    return {"val": t.metrics, "test": test, "steps": t.history.steps_taken, "stop": t.history.stop_reason,
            "fit_seconds": round(seconds, 1)}


class Baseline(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(28, 128, num_layers=2, bidirectional=True, dropout=0.1, batch_first=True)
        self.out = nn.Linear(256, 11)

    def forward(self, x, lengths):  # (B, T, 28), (B,) -> (B, T, 11) log-probabilities
        y, _ = self.lstm(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
        return torch.log_softmax(self.out(y), -1)


def batches(strings, order, size: int = 32):
    for i in range(0, len(order), size):
        idx = order[i : i + size]
        feats = [torch.from_numpy(strings.features(j)) for j in idx]
        lengths = torch.tensor([len(f) for f in feats])
        x = nn.utils.rnn.pad_sequence(feats, batch_first=True)
        texts = [strings.transcript(j) for j in idx]
        yield x, lengths, texts


@torch.no_grad()
def sequence_accuracy(model, strings) -> float:
    model.eval()
    hits = 0
    for x, lengths, texts in batches(strings, list(range(len(strings))), 200):
        best = model(x, lengths).argmax(-1)
        for row, n, text in zip(best, lengths.tolist(), texts):
            ids = torch.unique_consecutive(row[:n])
            hits += "".join(str(int(k) - 1) for k in ids if k != 0) == text
    model.train()
    return hits / len(strings)


def run_baseline(budget: float, eval_every: int, seed: int = 0) -> dict:
    d = load_config_file(PRESET)
    parts, _ = prepare_digits(from_dict(TranscribeConfig, d["data"], str(PRESET)))
    torch.manual_seed(seed)
    model, ctc = Baseline(), nn.CTCLoss(blank=0, zero_infinity=True)

    def loss_of(batch):
        x, lengths, texts = batch
        targets = torch.tensor([int(c) + 1 for t in texts for c in t])
        return ctc(model(x, lengths).transpose(0, 1), targets, lengths, torch.tensor([len(t) for t in texts]))

    run = train_for_budget(model, lambda: batches(parts["train"], torch.randperm(len(parts["train"])).tolist()), loss_of,
                           lambda: sequence_accuracy(model, parts["val"]), budget, eval_every)
    return {"val_sequence_accuracy": run["val"], "test_sequence_accuracy": sequence_accuracy(model, parts["test"]),
            "steps": run["steps"], "train_seconds": run["train_seconds"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="preset,baseline")
    p.add_argument("--budget", type=float, default=None, help="training seconds (default: the preset's time_budget)")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(2)
    budget = args.budget or load_config_file(PRESET)["train"]["time_budget"]
    out = {"budget_s": budget, "torch": torch.__version__}
    for run in args.runs.split(","):
        out[run] = run_preset(budget) if run == "preset" else run_baseline(budget, args.eval_every)
        print(json.dumps(out, indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
