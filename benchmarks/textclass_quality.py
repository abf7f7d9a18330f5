"""IMDB sentiment quality: rnnkit presets beside a hand-written torch.nn baseline (and Keras when importable).

    flock /tmp/rnnkit-cpu.lock .venv/bin/python benchmarks/textclass_quality.py imdb > /tmp/textclass.log 2>&1
    .venv/bin/python benchmarks/textclass_quality.py imdb-bigru handwritten keras --epochs 1 --train-size 2000

Data: the named ``imdb`` dataset (RNNKIT_DATA; official 25k train / 25k test). Presets carve
their validation split from train (seeded); the test split is only scored, never used to pick
anything. Each model prints one JSON line: test accuracy, macro F1, training seconds and
seconds per epoch (training steps only, validation excluded where measurable).

``handwritten``: the tutorial model written directly in torch.nn: Embedding(10000, 128) ->
nn.GRU(64, bidirectional) -> last states -> Linear(128, 2), inputs padded/truncated to the last
200 tokens (Keras ``pad_sequences``), batch 32, Adam 1e-3, 2 epochs (``--epochs`` to change;
``imdb-bigru`` keeps its best validation epoch, which has been its second), on all 25,000 training
reviews with no validation, same tokenizer and vocabulary. ``keras``: the same model in Keras 3 (dropout 0.2, recurrent
dropout 0.2), timed per epoch; reported as unavailable when Keras/TensorFlow are not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import rnnkit  # noqa: F401  (flush denormals before torch's first parallel op)
from rnnkit import plots
from rnnkit.data.tokenize import Vocabulary, tokenize, truncate
from rnnkit.models import ModelConfig
from rnnkit.tasks import textclass as tc
from rnnkit.training.config import TrainConfig, from_dict, load_config_file

ROOT = Path(__file__).resolve().parents[1]


def load_imdb(train_size: int = 0, test_size: int = 0, seed: int = 0):
    """(train texts, labels), (test texts, labels); a size > 0 keeps a seeded subset of that split."""
    splits = tc.load_splits(tc.Config(), "imdb")

    def subset(pair, n):
        if not n:
            return pair
        idx = random.Random(seed).sample(range(len(pair[0])), n)
        return [pair[0][i] for i in idx], [pair[1][i] for i in idx]

    return subset(splits["train"], train_size), subset(splits["test"], test_size)


def from_preset(name: str, train_overrides: dict):
    d = load_config_file(ROOT / "configs" / f"{name}.json")
    where = f"configs/{name}.json"
    config = from_dict(tc.Config, d.get("data", {}), where)
    model = from_dict(ModelConfig, d.get("model", {}), where)
    train = from_dict(TrainConfig, {**d.get("train", {}), **train_overrides}, where)
    return tc.TextClassifier(config, model, train)


def run_preset(name: str, data, args) -> dict:
    overrides = {k: v for k, v in (("epochs", args.epochs), ("time_budget", args.time_budget)) if v is not None}
    clf = from_preset(name, overrides)
    (x, y), (tx, ty) = data
    start = time.perf_counter()
    from rnnkit.training.callbacks import ProgressBar

    clf.fit(x, y, out=str(Path(args.runs) / name), callbacks=[ProgressBar(log_every=clf.train_config.log_every)])
    seconds = time.perf_counter() - start
    epochs = max(r["epoch"] for r in clf.history.train) + 1 if clf.history.train else 0
    steps_per_epoch = len(clf.prepared.train)
    steps = clf.history.train[-1]["step"] if clf.history.train else 0
    report = clf.evaluate(tx, ty)
    (Path(args.runs) / name / "confusion.png").write_bytes(plots.confusion_png(np.array(report["confusion"]), report["labels"]))
    return {"model": name, "test_accuracy": round(report["accuracy"], 4), "test_macro_f1": round(report["macro_f1"], 4),
            "val": clf.history.best, "train_s": round(seconds, 1), "steps": steps,
            "epochs_run": round(steps / steps_per_epoch, 2), "s_per_epoch": round(seconds / max(steps / steps_per_epoch, 1e-9), 1),
            "stop_reason": clf.history.stop_reason, "train_size": len(x), "_epochs_seen": epochs}


def _tutorial_tensors(texts, vocab, max_length=200):
    """Keras-style pre-padding/truncation to the last ``max_length`` ids: (N, max_length)."""
    out = np.zeros((len(texts), max_length), dtype=np.int64)
    for i, t in enumerate(texts):
        ids = truncate(vocab.encode(tokenize(t)), max_length, "tail")
        if ids:
            out[i, max_length - len(ids):] = ids
    return torch.from_numpy(out)


class TutorialGRU(nn.Module):
    """Embedding(V, 128) -> BiGRU(64) -> [h_fwd, h_bwd] -> Linear(128, 2) in plain torch.nn."""

    def __init__(self, vocab_size=10000, embedding_dim=128, hidden_size=64):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.gru = nn.GRU(embedding_dim, hidden_size, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden_size, 2)

    def forward(self, x):  # x: (B, T)
        _, h = self.gru(self.embedding(x))  # h: (2, B, H)
        return self.out(torch.cat([h[0], h[1]], dim=-1))  # (B, 2)


def run_handwritten(data, args) -> dict:
    (x, y), (tx, ty) = data
    vocab = Vocabulary.build([tokenize(t) for t in x], 10000)
    X, Y = _tutorial_tensors(x, vocab), torch.tensor([int(v == "pos") for v in y])
    TX, TY = _tutorial_tensors(tx, vocab), torch.tensor([int(v == "pos") for v in ty])
    torch.manual_seed(0)
    model, epochs = TutorialGRU(), args.epochs or 2
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(X), generator=torch.Generator().manual_seed(epoch)).split(32):
            loss = nn.functional.cross_entropy(model(X[idx]), Y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(TX[i:i + 256]).argmax(1) for i in range(0, len(TX), 256)])
    return {"model": "handwritten torch.nn BiGRU", "test_accuracy": round(float((pred == TY).float().mean()), 4),
            "train_s": round(seconds, 1), "s_per_epoch": round(seconds / epochs, 1), "epochs_run": epochs, "train_size": len(x)}


_KERAS_BIGRU = r"""
import json, sys, time
import numpy as np
import os
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras
from keras import layers
d = np.load(sys.argv[1])
epochs = int(sys.argv[2])
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((200,), dtype="int32"), layers.Embedding(10000, 128),
                          layers.Bidirectional(layers.GRU(64, dropout=0.2, recurrent_dropout=0.2)),
                          layers.Dense(1, activation="sigmoid")])
model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
times = []
for _ in range(epochs):
    t = time.perf_counter()
    model.fit(d["X"], d["Y"], batch_size=32, epochs=1, verbose=0)
    times.append(time.perf_counter() - t)
acc = float(np.mean((model.predict(d["TX"], batch_size=256, verbose=0)[:, 0] > 0.5) == d["TY"]))
print(json.dumps({"epoch_s": [round(x, 1) for x in times], "test_accuracy": round(acc, 4),
                  "keras": keras.__version__}))
"""


def run_keras(data, args) -> dict:
    """The tutorial BiGRU in Keras 3 (TensorFlow), in the Keras interpreter (``RNNKIT_KERAS_PYTHON``,
    see benchmarks/keras_peer.py) on the same tokenised arrays; seconds per epoch and test accuracy."""
    import subprocess
    import tempfile

    sys.path.insert(0, str(ROOT))  # run as a script: make the benchmarks package importable
    from benchmarks import keras_peer

    if not keras_peer.available():
        return {"model": "keras BiGRU", "unavailable": f"keras/tensorflow are not importable by {keras_peer.python()}"}
    (x, y), (tx, ty) = data
    vocab = Vocabulary.build([tokenize(t) for t in x], 10000)
    arrays = {"X": _tutorial_tensors(x, vocab).numpy().astype(np.int32), "Y": np.array([int(v == "pos") for v in y]),
              "TX": _tutorial_tensors(tx, vocab).numpy().astype(np.int32), "TY": np.array([int(v == "pos") for v in ty])}
    epochs = args.epochs or 2
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "imdb.npz"
        np.savez(path, **arrays)
        run = subprocess.run([keras_peer.python(), "-c", _KERAS_BIGRU, str(path), str(epochs)],
                             capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if run.returncode != 0:
        return {"model": "keras BiGRU", "failed": f"exit status {run.returncode}", "stderr_tail": run.stderr.strip().splitlines()[-3:]}
    out = json.loads(run.stdout.strip().splitlines()[-1])
    return {"model": f"keras {out['keras']} BiGRU", "test_accuracy": out["test_accuracy"], "epoch_s": out["epoch_s"],
            "s_per_epoch": round(float(np.mean(out["epoch_s"])), 1), "epochs_run": epochs, "train_size": len(x)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="preset names (imdb, imdb-bigru, imdb-rnn), handwritten, keras")
    p.add_argument("--epochs", type=int, default=None, help="override the presets' epochs")
    p.add_argument("--time-budget", type=float, default=None, help="override: seconds of training per model")
    p.add_argument("--train-size", type=int, default=0, help="train on a seeded subset (quick checks)")
    p.add_argument("--test-size", type=int, default=0, help="score a seeded subset of test (quick checks)")
    p.add_argument("--runs", default="/tmp/textclass-runs", help="artifact directories go here")
    args = p.parse_args(argv)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "argv": sys.argv[1:]}), flush=True)
    data = load_imdb(args.train_size, args.test_size)
    for name in args.models:
        if name == "handwritten":
            result = run_handwritten(data, args)
        elif name == "keras":
            result = run_keras(data, args)
        else:
            result = run_preset(name, data, args)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
