"""Spoken-digit quality (FSDD): the ``fsdd`` preset beside a hand-written torch.nn model at the
same budget, in one process, on the same features and split.

    RNNKIT_DATA=../shared/data python benchmarks/speech_quality.py --json /tmp/fsdd.json
    RNNKIT_DATA=../shared/data python benchmarks/speech_quality.py --test-speaker theo

Data: the 3,000 recordings; test = takes 0-4 of every speaker and digit (FSDD's official split,
300 recordings) or, with ``--test-speaker``, all 500 of one speaker. Validation: 300 recordings
of the training part, stratified by digit (the preset's ``val_size`` and ``split_seed``). Both
models keep their best-validation weights and read test once, at the end.

``preset``: ``configs/fsdd.json`` through the library (``rnnkit.SequenceClassifier``).
``baseline``: ``nn.GRU(40, 128, num_layers=2, bidirectional=True)`` over the same normalised
log-mel frames (rnnkit's feature code: :mod:`rnnkit.data.speech`), packed by length, the two
final states -> ``Linear(256, 10)``; Adam 1e-3, batch 32, as many epochs as the preset or until
the budget.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit  # noqa: F401  (flush denormals before torch's first parallel op)
from rnnkit.data import sources, speech
from rnnkit.models import ModelConfig
from rnnkit.tasks.classify import split_validation
from rnnkit.tasks.seqclass import SeqclassConfig, SequenceClassifier
from rnnkit.training.config import TrainConfig, from_dict, load_config_file

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "fsdd.json"


def run_preset(test_speaker: str, budget: float | None) -> dict:
    d = load_config_file(PRESET)
    data = {**d["data"], "test_speaker": test_speaker}
    train = {**d["train"], **({"time_budget": budget} if budget else {})}
    clf = SequenceClassifier(from_dict(SeqclassConfig, data, str(PRESET)), from_dict(ModelConfig, d["model"], str(PRESET)),
                             from_dict(TrainConfig, train, str(PRESET)))
    t0 = time.monotonic()
    clf.fit(data="fsdd")
    seconds = time.monotonic() - t0
    test = clf._report(clf.prepared.test)
    return {"val_accuracy": clf.metrics["accuracy"], "test_accuracy": test["accuracy"], "test_examples": int(np.sum(test["confusion"])),
            "stop": clf.history.stop_reason, "fit_seconds": round(seconds, 1)}


class Baseline(nn.Module):
    def __init__(self, features: int = 40, hidden: int = 128):
        super().__init__()
        self.gru = nn.GRU(features, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, 10)

    def forward(self, x, lengths):  # (B, T, F), (B,) -> (B, 10)
        _, h = self.gru(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
        return self.fc(torch.cat([h[-2], h[-1]], -1))


def _tensors(seqs, index=None):
    seqs = seqs if index is None else seqs.subset(index)
    return torch.from_numpy(np.nan_to_num(seqs.x)), torch.from_numpy(seqs.lengths), torch.from_numpy(seqs.labels)


@torch.no_grad()
def _accuracy(model, x, lengths, y) -> float:
    model.eval()
    hits = int((model(x, lengths).argmax(1) == y).sum())
    model.train()
    return hits / len(y)


def run_baseline(test_speaker: str, budget: float, epochs: int, seed: int = 0) -> dict:
    d = load_config_file(PRESET)["data"]
    parts = speech.split_recordings(speech.read_recordings(sources.resolve("fsdd")), test_speaker)
    features = speech.AudioFeatures(kind=d["audio_features"], n_mels=d["n_mels"])
    train = speech.labelled_features(parts["train"], features)
    test = speech.labelled_features(parts["test"], features, train.label_names)
    tr, va = split_validation(train.labels, d["val_size"], 0)
    (xtr, ltr, ytr), (xva, lva, yva), (xte, lte, yte) = _tensors(train, tr), _tensors(train, va), _tensors(test)
    torch.manual_seed(seed)
    model = Baseline(xtr.shape[-1])
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    best, best_state, done, t0 = -1.0, None, 0, time.monotonic()
    while done < epochs and time.monotonic() - t0 < budget:
        order = torch.randperm(len(ytr))
        for i in range(0, len(order), 32):
            idx = order[i : i + 32]
            T = int(ltr[idx].max())
            loss = nn.functional.cross_entropy(model(xtr[idx, :T], ltr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        done += 1
        acc = _accuracy(model, xva, lva, yva)
        if acc > best:
            best, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
        print(f"baseline epoch {done} val {acc:.4f} t={time.monotonic() - t0:.0f}s", flush=True)
    model.load_state_dict(best_state)
    return {"val_accuracy": best, "test_accuracy": _accuracy(model, xte, lte, yte), "test_examples": len(yte),
            "epochs": done, "train_seconds": round(time.monotonic() - t0, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="preset,baseline")
    p.add_argument("--test-speaker", default="", help="hold this speaker out as the test part")
    p.add_argument("--budget", type=float, default=None, help="training seconds (default: the preset's time_budget)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(2)
    train = load_config_file(PRESET)["train"]
    budget = args.budget or train["time_budget"]
    out = {"test_speaker": args.test_speaker or None, "budget_s": budget, "torch": torch.__version__}
    for run in args.runs.split(","):
        if run == "preset":
            out["fsdd"] = run_preset(args.test_speaker, budget)
        else:
            out["baseline_bigru"] = run_baseline(args.test_speaker, budget, train["epochs"])
        print(json.dumps(out, indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
