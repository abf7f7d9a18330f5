"""Text classification (sentiment and any labelled texts): ``TextClassifier`` and the ``textclass`` task.

Data: a CSV/TSV/JSONL file with ``text_column``/``label_column``, an ``aclImdb`` folder
(``train|test/pos|neg/*.txt``), or the named dataset ``imdb`` (official 25k/25k split).
Labels are strings (binary or multi-class); class ``k`` is ``labels[k]`` (sorted).

Pipeline: ``tokenize`` -> ``Vocabulary`` ids (PAD 0, OOV 1) -> optional hashed bigram ids
(inputs (B, T, 2), embeddings summed) -> truncation to ``max_length`` -> batches of similar
length with ``lengths`` -> ``SequenceModel`` with a pooled head (last/mean/max over valid steps)
-> logits (B, C); loss is cross-entropy. The validation split, the evaluation pass, its report
and ``rnnkit evaluate``'s report are shared with seqclass: :mod:`rnnkit.tasks.classify`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from rnnkit.data.batching import Batch, BucketedBatches, pad_sequences
from rnnkit.data.labelled import read_aclimdb, read_labelled
from rnnkit.data.tokenize import TRUNCATE_MODES, Vocabulary, bigram_ids, copy_word_vectors, tokenize, truncate
from rnnkit.errors import UserError, check_at_least
from rnnkit.models import ModelConfig, SequenceModel
from rnnkit.tasks.base import PreparedData
from rnnkit.tasks.classify import ClassificationTask, Classifier, predict_logits, split_validation

IMDB_LABELS = {"0": "neg", "1": "pos"}  # the named dataset stores 0/1
IMDB_SHA256 = {
    "train": "35a5248c0ea2f8534a574db6ec56c7a8ba34353d9db4003c0e8ccd2265af1928",
    "test": "5ff1a4909c1690ed02649169472c893a199407bdf8109fabdaf7ade985c2edc4",
}


@dataclass
class Config:
    """Data options of the textclass task (each one a CLI flag and a preset key)."""

    text_column: str = "text"  # CSV/TSV column or JSON key holding the text
    label_column: str = "label"  # ... and the label (any strings)
    test_data: Optional[str] = None  # labelled file for the test split (named datasets and aclImdb bring theirs)
    val_fraction: float = 0.1  # held out from train for validation, stratified by label (0: no validation)
    vocab_size: int = 10000  # ids kept, including PAD and OOV (Keras's num_words)
    min_freq: int = 1  # words seen fewer times in train become OOV
    max_length: int = 200  # tokens kept per text
    truncate: str = "head"  # head | tail | both: which end(s) of a long text to keep
    ngram_buckets: int = 0  # > 0: add a hashed bigram id per step (fastText-style), this many extra rows
    word_vectors: Optional[str] = None  # GloVe/word2vec text file to initialise the embedding
    batch_size: int = 32

    def __post_init__(self):
        if self.truncate not in TRUNCATE_MODES:
            raise UserError(f"truncate must be one of {', '.join(TRUNCATE_MODES)}, got {self.truncate!r}")
        if not 0 <= self.val_fraction < 1:
            raise UserError(f"val_fraction must lie in [0, 1), got {self.val_fraction}")
        check_at_least(self, 1, ("max_length", "batch_size", "min_freq"), UserError)
        check_at_least(self, 0, ("ngram_buckets",), UserError)


# ----------------------------------------------------------------------------------------- data


def load_splits(config: Config, data: str) -> dict:
    """{"train": (texts, labels), "test": (texts, labels) | None} from a name, folder or file."""
    from rnnkit.data import sources

    found = sources.resolve(data)
    if isinstance(found, dict):  # the named imdb dataset: {"train": path, "test": path}, labels 0/1
        out = {}
        for split in ("train", "test"):
            texts, labels = read_labelled(found[split], "text", "label")
            out[split] = (texts, [IMDB_LABELS.get(y, y) for y in labels])
        return out
    path = Path(found)
    if path.is_dir():
        if not (path / "train").is_dir():
            raise UserError(f"{path}: expected the aclImdb layout train|test/pos|neg/*.txt")
        test = read_aclimdb(path, "test") if (path / "test").is_dir() else None
        return {"train": read_aclimdb(path, "train"), "test": test}
    train = read_labelled(path, config.text_column, config.label_column)
    test = read_labelled(config.test_data, config.text_column, config.label_column) if config.test_data else None
    return {"train": train, "test": test}


def whole_texts(config: Config, data: str) -> tuple[list, list]:
    """Every text and label of ``data`` (its train and test parts alike; not ``config.test_data``)."""
    splits = load_splits(replace(config, test_data=None), data)
    texts, labels = (list(v) for v in splits["train"])
    if splits.get("test"):
        texts, labels = texts + list(splits["test"][0]), labels + list(splits["test"][1])
    return texts, labels


class Encoder:
    """Texts -> id arrays, from the task state (vocabulary, max_length, truncate, ngram_buckets)."""

    def __init__(self, task_state: dict):
        self.vocab = Vocabulary.from_dict(task_state["vocab"])
        self.max_length = task_state["max_length"]
        self.keep = task_state["truncate"]
        self.buckets = task_state["ngram_buckets"]

    @property
    def input_size(self) -> int:
        """Embedding rows: vocabulary plus bigram buckets."""
        return len(self.vocab) + self.buckets

    def encode_tokens(self, tokens: list[str]) -> np.ndarray:
        """(T,) word ids, or (T, 2) word and bigram ids; T = min(len, max_length) >= 1 (empty -> [OOV])."""
        ids = self.vocab.encode(tokens) or [1]
        arr = bigram_ids(ids, len(self.vocab), self.buckets) if self.buckets else np.asarray(ids, dtype=np.int64)
        return truncate(arr, self.max_length, self.keep)

    def encode(self, texts: Iterable[str]) -> list[np.ndarray]:
        return [self.encode_tokens(tokenize(t)) for t in texts]


def make_task_state(config: Config, train_tokens: Sequence[list[str]], labels: Sequence[str]) -> dict:
    """The JSON-able state stored in the artifact: vocabulary, label names, encoding options."""
    vocab = Vocabulary.build(train_tokens, config.vocab_size, config.min_freq)
    return {
        "vocab": vocab.to_dict(),
        "labels": sorted(set(labels)),
        "max_length": config.max_length,
        "truncate": config.truncate,
        "ngram_buckets": config.ngram_buckets,
    }


def label_ids(labels: Sequence[str], names: Sequence[str], where: str = "") -> list[int]:
    """Class ids of ``labels``; a label missing from the training labels is a UserError."""
    index = {name: i for i, name in enumerate(names)}
    out = []
    for k, y in enumerate(labels):
        if y not in index:
            raise UserError(f"{where}row {k + 1}: label {y!r} was not seen in training; expected one of {', '.join(names)}")
        out.append(index[y])
    return out


def batch_source(items: list, targets: Optional[list], batch_size: int, shuffle: bool) -> BucketedBatches:
    """Length-bucketed batches of (B, T) or (B, T, 2) ids with lengths (B,) and targets (B,).

    A batch whose texts all have the same length gets ``lengths=None``: torch's fused kernels
    then run on the dense tensor; with lengths they pack, and on CPU the packed GRU/RNN backward
    is much slower than the dense one (see BENCHMARKS.md).
    """

    def make_batch(indices):
        x, lengths = pad_sequences([items[i] for i in indices])
        y = torch.tensor([targets[i] for i in indices]) if targets is not None else torch.zeros(len(indices), dtype=torch.int64)
        if bool((lengths == lengths[0]).all()):
            lengths = None  # no padding (common after truncation + bucketing): the fused kernels run unpacked
        return Batch(x, y, lengths)

    return BucketedBatches([len(a) for a in items], batch_size, make_batch, shuffle=shuffle)


# ----------------------------------------------------------------------------------------- task


def prepare_texts(config: Config, texts: Sequence[str], labels: Sequence[str], seed: int = 0,
                  val: Optional[tuple] = None, test: Optional[tuple] = None, info: Optional[dict] = None) -> PreparedData:
    """Vocabulary and labels from the training texts, then length-bucketed batch sources.

    Without ``val`` (texts, labels), ``config.val_fraction`` of the training texts, stratified by
    label and seeded by ``seed``, is held out for validation (:func:`classify.split_validation`).
    The vocabulary never sees validation or test texts.
    """
    if len(texts) != len(labels):
        raise UserError(f"got {len(texts)} texts but {len(labels)} labels; expected one label per text")
    tokens = [tokenize(t) for t in texts]
    if val is None:
        train_idx, val_idx = split_validation(labels, config.val_fraction, seed)
    else:
        train_idx, val_idx = np.arange(len(texts)), np.zeros(0, np.int64)
    state = make_task_state(config, [tokens[i] for i in train_idx], [labels[i] for i in train_idx])
    enc, names = Encoder(state), state["labels"]
    if len(names) < 2:
        raise UserError(f"found only one label ({names[0]!r}); a classifier needs at least two")
    items, ys = [enc.encode_tokens(t) for t in tokens], label_ids(labels, names)

    def source(idx, shuffle):
        return batch_source([items[i] for i in idx], [ys[i] for i in idx], config.batch_size, shuffle) if len(idx) else None

    def held_out(pair, what):
        return batch_source(enc.encode(pair[0]), label_ids(pair[1], names, what), config.batch_size, shuffle=False)

    val_source = held_out(val, "validation data ") if val is not None else source(val_idx, False)
    test_source = held_out(test, "test data ") if test else None
    info = {**(info or {}), "train_size": len(train_idx), "val_size": len(val_idx) if val is None else len(val[0])}
    return PreparedData(source(train_idx, True), val_source, test_source, state, info)


class TextClassTask(ClassificationTask):
    name = "textclass"
    Config = Config
    serve_input = "texts"

    def example_inputs(self, model_config: ModelConfig, task_state: dict, batch: int, time: int) -> Tensor:
        """(B, T) word ids, or (B, T, 2) word and hashed-bigram ids when the model reads bigrams."""
        x = super().example_inputs(model_config, task_state, batch, time)
        return torch.stack([x, x], -1) if task_state.get("ngram_buckets") else x

    def prepare(self, config: Config, data: str, seed: int = 0) -> PreparedData:
        splits = load_splits(config, data)
        info = {"name": str(data)}
        if str(data) == "imdb":
            info["sha256"] = {"train": IMDB_SHA256["train"], "test": IMDB_SHA256["test"]}
        return prepare_texts(config, *splits["train"], seed=seed, test=splits.get("test"), info=info)

    def prepare_whole(self, config: Config, data: str, task_state: dict) -> BucketedBatches:
        """Every text of ``data`` encoded with the trained vocabulary and labels."""
        texts, labels = whole_texts(config, data)
        ids = label_ids(labels, task_state["labels"], f"{data} ")
        return batch_source(Encoder(task_state).encode(texts), ids, config.batch_size, shuffle=False)

    def label_names(self, task_state: dict) -> list:
        return task_state["labels"]

    def model_config(self, task_state: dict, config: Config, model: ModelConfig) -> ModelConfig:
        return self.classifier_config(model, task_state, "embedding", Encoder(task_state).input_size)

    def init_model(self, model: SequenceModel, task_state: dict, config: Config) -> int:
        """Copy pretrained word vectors (``config.word_vectors``) into the embedding; returns words found."""
        if not config.word_vectors:
            return 0
        return copy_word_vectors(model.encoder.weight, Vocabulary.from_dict(task_state["vocab"]), config.word_vectors)

    def load(self, artifact) -> "TextClassifier":
        return TextClassifier.from_artifact(artifact)

    # -- CLI verbs: rnnkit predict DIR "text" | --file F [--json]; rnnkit evaluate DIR --show-examples N
    def add_arguments(self, verb: str, parser) -> None:
        if verb == "predict":
            parser.add_argument("texts", nargs="*", help="texts to classify")
            parser.add_argument("--file", help="a file with one text per line")
            parser.add_argument("--json", action="store_true", help="one JSON object per text")
        elif verb == "evaluate":
            parser.add_argument("--show-examples", "--show_examples", type=int, default=0, metavar="N",
                                help="print N random texts of the split with predicted and true labels")

    def run_verb(self, verb: str, facade: "TextClassifier", args) -> Optional[int]:
        if verb == "predict":
            return _predict_command(facade, args)
        return super().run_verb(verb, facade, args)

    def show_evaluation(self, clf: "TextClassifier", args, source, logits, targets) -> None:
        """``--show-examples N``: N random texts of the split with predicted and true labels
        (on stdout, or on stderr with ``--json``)."""
        if args.show_examples <= 0:
            return
        import sys

        data = args.data or clf.artifact.data.get("source")
        texts, labels = _split_texts(clf, data, args.split, clf.artifact.train_config.seed)
        chosen = np.random.default_rng(0).choice(len(texts), size=min(args.show_examples, len(texts)), replace=False)
        probs = clf.predict_proba([texts[i] for i in chosen])
        for i, p in zip(chosen, probs):
            k = int(p.argmax())
            mark = "ok   " if clf.labels[k] == labels[i] else "WRONG"
            print(f"{mark} predicted={clf.labels[k]} ({p[k]:.3f}) true={labels[i]}: {_short(texts[i], 200)}",
                  file=sys.stderr if args.json else sys.stdout)


def _predict_command(clf: "TextClassifier", args) -> int:
    import json

    texts = list(args.texts)
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise UserError(f"--file {path}: file not found")
        try:
            texts += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as e:
            raise UserError(f"--file {path}: byte {e.start} is not valid UTF-8; expected UTF-8 text, one text per line") from None
    if not texts:
        raise UserError("predict: no texts; pass texts as arguments or --file F (one text per line)")
    names = clf.labels
    for text, p in zip(texts, clf.predict_proba(texts)):
        k = int(p.argmax())
        if args.json:
            print(json.dumps({"label": names[k], "probabilities": {n: round(float(v), 6) for n, v in zip(names, p)},
                              "text": text}))
        else:
            probs = " ".join(f"{n}={v:.4f}" for n, v in zip(names, p))
            print(f"{names[k]}\t{probs}\t{_short(text, 80)}")
    return 0


def _short(text: str, n: int) -> str:
    text = " ".join(text.replace("<br />", " ").split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _split_texts(clf: "TextClassifier", data: str, split: Optional[str], seed: int) -> tuple[list, list]:
    """The texts and labels of ``split`` (val: the seeded held-out part of train; None: all of ``data``)."""
    if split is None:
        return whole_texts(clf.config, data)
    splits = load_splits(clf.config, data)
    if split == "test":
        if not splits.get("test"):
            raise UserError(f"{data}: no test split for this task config")
        return splits["test"]
    texts, labels = splits["train"]
    _, val_idx = split_validation(labels, clf.config.val_fraction, seed)
    return [texts[i] for i in val_idx], [labels[i] for i in val_idx]


TASK = TextClassTask()


# --------------------------------------------------------------------------------------- façade


class TextClassifier(Classifier):
    """Classify texts: ``fit(texts, labels)``, ``predict(texts)``, ``predict_proba(texts)``, ``evaluate``.

    ``config``: data options (:class:`Config`); ``model``: the user's ``ModelConfig`` options
    (encoder, input and output sizes come from the data); ``train``: a ``TrainConfig``.
    """

    task = TASK

    def __init__(self, config: Optional[Config] = None, model: Optional[ModelConfig] = None, train=None):
        super().__init__(config, model or ModelConfig(head="mean"), train)

    @property
    def labels(self) -> list[str]:
        """The class names; column k of ``predict_proba`` is ``labels[k]``."""
        return self._label_names()

    def fit(self, texts=None, labels=None, val_texts=None, val_labels=None, data: Optional[str] = None,
            out: Optional[str] = None, callbacks=()) -> "TextClassifier":
        """Train with the shared Trainer on ``texts``/``labels`` (or a dataset/file ``data``).

        Validation: ``val_texts``/``val_labels`` if given, else ``config.val_fraction`` of the
        training texts (stratified by label); the best-validation weights are kept, and ``metrics``
        becomes the report on validation. ``out`` also writes the artifact.
        """
        if data is None and (texts is None or labels is None):
            raise UserError("fit needs texts and labels, or data=<dataset or file>")

        def prepare_given(seed: int) -> PreparedData:
            val = (list(val_texts), [str(y) for y in val_labels]) if val_texts is not None else None
            return prepare_texts(self.config, list(texts), [str(y) for y in labels], seed, val=val, info={"name": "texts"})

        return self._fit(data, prepare_given, out, callbacks)

    def predict_proba(self, texts: Sequence[str], batch_size: Optional[int] = None) -> np.ndarray:
        """(N, C) class probabilities (float64); column k is ``labels[k]``."""
        model, state = self._require()
        if isinstance(texts, str):
            raise UserError("predict expects a list of texts, got a single string; wrap it in a list")
        items = Encoder(state).encode(texts)
        if not items:
            return np.empty((0, len(state["labels"])))
        src = batch_source(items, None, batch_size or self.config.batch_size, shuffle=False)
        order = [i for idx in src.batch_indices(0, 0) for i in idx.tolist()]  # bucketed: back to input order
        logits, _ = predict_logits(model, src.epoch(0, 0))
        probs = np.empty((len(items), len(state["labels"])), dtype=np.float64)
        probs[order] = torch.softmax(logits, -1).double().numpy()
        return probs

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The most probable label of each text."""
        names = self.labels
        return [names[k] for k in self.predict_proba(texts).argmax(1)]

    def evaluate(self, texts: Sequence[str], labels: Sequence) -> dict:
        """Loss, accuracy, macro F1, per-class precision/recall/F1/support and the confusion matrix
        (:func:`classify.evaluation_report`)."""
        state = self._require()[1]
        ids = label_ids([str(v) for v in labels], state["labels"])
        return self._report(batch_source(Encoder(state).encode(texts), ids, self.config.batch_size, shuffle=False))
