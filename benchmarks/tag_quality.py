"""Sequence-labelling quality at a fixed training-time budget: an rnnkit preset beside a
hand-written torch.nn BiLSTM-softmax tagger, in one process, on the same data.

    RNNKIT_DATA=../shared/data python benchmarks/tag_quality.py conll2003 --json /tmp/conll.json
    RNNKIT_DATA=../shared/data python benchmarks/tag_quality.py ud-en-ewt --runs baseline --budget 60

Data: the named dataset's own train / dev / test files (conll2003, wnut17: CoNLL columns, BIO
tags; ud-en-ewt: CoNLL-U, UPOS). Both models keep the weights of their best dev score (entity F1,
or token accuracy for POS) and read the test file once, at the end.

``preset``: ``configs/NAME.json`` through the library (``rnnkit.Tagger``), its ``time_budget``
set to ``--budget`` when given.

``baseline``: written directly in torch.nn, the word + character tagger of Lample et al. without
the CRF: lower-cased word embedding (100; words seen twice in train, else "unknown"), a character
embedding (30) read by ``nn.LSTM(30, 50, bidirectional)`` whose two final states join the word
vector, dropout 0.5, ``nn.LSTM(200, 200, bidirectional)`` over the words, dropout 0.5, a linear
layer to the tags, cross-entropy per token, argmax decoding; Adam 1e-3, batch 32, gradients
clipped at 5, trained for the budget with a dev evaluation every ``--eval-every`` steps.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit  # noqa: F401  (flush denormals before torch's first parallel op)
from benchmarks.budget_loop import train_for_budget
from rnnkit.data.tagging import read_conll, read_conllu
from rnnkit.metrics import entity_scores
from rnnkit.models import ModelConfig
from rnnkit.tasks.tag import TagConfig, Tagger
from rnnkit.training.config import TrainConfig, from_dict, load_config_file

ROOT = Path(__file__).resolve().parents[1]
FILES = {  # name -> (train, dev, test) under RNNKIT_DATA, and whether the tags are entities
    "conll2003": (("ner/conll2003/train.txt", "ner/conll2003/valid.txt", "ner/conll2003/test.txt"), True),
    "wnut17": (("ner/wnut17/wnut17train.conll", "ner/wnut17/emerging.dev.conll",
                "ner/wnut17/emerging.test.annotated"), True),
    "ud-en-ewt": (("ud/en_ewt/en_ewt-ud-train.conllu", "ud/en_ewt/en_ewt-ud-dev.conllu",
                   "ud/en_ewt/en_ewt-ud-test.conllu"), False),
}


# ------------------------------------------------------------------------------ the preset


def run_preset(name: str, budget: float | None) -> dict:
    path = ROOT / "configs" / f"{name}.json"
    d = load_config_file(path)
    train = {**d.get("train", {}), **({"time_budget": budget} if budget else {})}
    tagger = Tagger(from_dict(TagConfig, d.get("data", {}), str(path)), from_dict(ModelConfig, d.get("model", {}), str(path)),
                    from_dict(TrainConfig, train, str(path)))
    t0 = time.monotonic()
    tagger.fit(data=name)
    seconds = time.monotonic() - t0
    test = tagger._report(tagger.prepared.test)
    keys = ("f1", "precision", "recall", "accuracy")
    return {"dev": {k: tagger.metrics[k] for k in keys if k in tagger.metrics},
            "test": {k: test[k] for k in keys if k in test}, "steps": tagger.history.steps_taken,
            "stop": tagger.history.stop_reason, "fit_seconds": round(seconds, 1)}


# ------------------------------------------------------------------------------ the baseline


class BaselineTagger(nn.Module):
    def __init__(self, n_words: int, n_chars: int, n_tags: int):
        super().__init__()
        self.words = nn.Embedding(n_words, 100, padding_idx=0)
        self.chars = nn.Embedding(n_chars, 30, padding_idx=0)
        self.char_lstm = nn.LSTM(30, 50, batch_first=True, bidirectional=True)
        self.lstm = nn.LSTM(200, 200, batch_first=True, bidirectional=True)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(400, n_tags)

    def forward(self, words, chars, lengths):  # (B, T), (B, T, W), (B,) -> (B, T, C)
        B, T, W = chars.shape
        word_lengths = (chars != 0).sum(-1).flatten()  # (B*T,)
        real = word_lengths > 0
        packed = pack_padded_sequence(self.chars(chars.reshape(B * T, W)[real]), word_lengths[real].cpu(),
                                      batch_first=True, enforce_sorted=False)
        _, (h, _) = self.char_lstm(packed)  # h: (2, N, 50)
        spelled = torch.zeros(B * T, 100)
        spelled[real] = torch.cat([h[0], h[1]], -1)
        x = self.drop(torch.cat([self.words(words), spelled.reshape(B, T, 100)], -1))
        y, _ = self.lstm(pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False))
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=T)
        return self.out(self.drop(y))


def read_parts(name: str) -> tuple[list, bool]:
    files, entities = FILES[name]
    root = Path(os.environ.get("RNNKIT_DATA", ROOT.parent / "shared" / "data"))
    read = read_conll if entities else (lambda p: read_conllu(p, "upos"))
    return [read(root / f) for f in files], entities


def index(items, first: int = 2) -> dict:
    return {item: i for i, item in enumerate(sorted(items), first)}


def encode(sentences, words, chars, tags):
    """Per sentence: word ids (T,), char ids (T, W<=20), tag ids (T,)."""
    out = []
    for s in sentences:
        w = [words.get(x.lower(), 1) for x in s.words]
        spelled = [[chars.get(c, 1) for c in x[:20]] for x in s.words]
        c = np.zeros((len(s.words), max(map(len, spelled))), dtype=np.int64)
        for t, ids in enumerate(spelled):
            c[t, : len(ids)] = ids
        out.append((np.asarray(w), c, np.asarray([tags[x] for x in s.tags])))
    return out


def batches(data, size: int, shuffle: bool, rng: random.Random):
    order = list(range(len(data)))
    if shuffle:
        rng.shuffle(order)
    for i in range(0, len(order), size):
        rows = [data[j] for j in order[i : i + size]]
        T, W = max(len(r[0]) for r in rows), max(r[1].shape[1] for r in rows)
        words, chars, tags = np.zeros((len(rows), T), np.int64), np.zeros((len(rows), T, W), np.int64), np.full((len(rows), T), -100)
        for b, (w, c, t) in enumerate(rows):
            words[b, : len(w)], chars[b, : len(w), : c.shape[1]], tags[b, : len(t)] = w, c, t
        yield (torch.from_numpy(words), torch.from_numpy(chars), torch.tensor([len(r[0]) for r in rows]),
               torch.from_numpy(tags))


@torch.no_grad()
def score(model, data, tag_names, entities: bool) -> dict:
    model.eval()
    true, pred = [], []
    for words, chars, lengths, tags in batches(data, 128, False, random.Random(0)):
        best = model(words, chars, lengths).argmax(-1)
        for b, n in enumerate(lengths.tolist()):
            true.append([tag_names[i] for i in tags[b, :n].tolist()])
            pred.append([tag_names[i] for i in best[b, :n].tolist()])
    model.train()
    s = entity_scores(true, pred) if entities else {"accuracy": float(np.mean([t == p for a, b in zip(true, pred) for t, p in zip(a, b)]))}
    return {k: s[k] for k in ("f1", "precision", "recall", "accuracy") if k in s}


def run_baseline(name: str, budget: float, eval_every: int, seed: int = 0) -> dict:
    (train, dev, test), entities = read_parts(name)
    counts = Counter(w.lower() for s in train for w in s.words)
    words = index(w for w, n in counts.items() if n >= 2)
    chars = index({c for s in train for w in s.words for c in w})
    tag_names = sorted({t for s in train for t in s.tags})
    tags = {t: i for i, t in enumerate(tag_names)}
    train_data, dev_data, test_data = (encode(p, words, chars, tags) for p in (train, dev, test))
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = BaselineTagger(len(words) + 2, len(chars) + 2, len(tags))
    monitor = "f1" if entities else "accuracy"
    run = train_for_budget(
        model, lambda: batches(train_data, 32, True, rng),
        lambda b: nn.functional.cross_entropy(model(*b[:3]).flatten(0, 1), b[3].flatten(), ignore_index=-100),
        lambda: score(model, dev_data, tag_names, entities)[monitor], budget, eval_every)
    return {"dev": score(model, dev_data, tag_names, entities), "test": score(model, test_data, tag_names, entities),
            "steps": run["steps"], "train_seconds": run["train_seconds"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", choices=sorted(FILES))
    p.add_argument("--runs", default="preset,baseline")
    p.add_argument("--budget", type=float, default=None,
                   help="training seconds of each model (default: the preset's time_budget)")
    p.add_argument("--eval-every", type=int, default=500, help="baseline: steps between dev evaluations")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args()
    torch.set_num_threads(2)
    budget = args.budget or load_config_file(ROOT / "configs" / f"{args.name}.json")["train"]["time_budget"]
    out = {"dataset": args.name, "budget_s": budget, "torch": torch.__version__}
    for run in args.runs.split(","):
        out[run] = run_preset(args.name, budget) if run == "preset" else run_baseline(args.name, budget, args.eval_every)
        print(json.dumps(out, indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
