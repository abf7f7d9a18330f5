"""Sequence classification: one class per sequence (MNIST read row by row or pixel by pixel,
UCR/UEA series, any labelled (N, T, F) arrays).

Data: ``prepare(config, data, seed)`` reads ``data`` (``mnist``, a folder of MNIST IDX files,
``.npy``/``.npz``, ``.csv`` or ``.ts``; see :mod:`rnnkit.data.sequences`), holds out a seeded
validation split of the training set stratified by label, fits per-feature normalisation on the
remaining training sequences only, and stores it in the task state. Variable lengths reach the
recurrent layers as ``Batch.lengths``.

Model: identity (or linear) encoder -> recurrent stack -> ``last`` (or pooled ``mean``/``max``)
head with C outputs; loss: cross-entropy over the C classes. The validation split, the
evaluation pass, its report (``loss``, ``accuracy``, ``macro_f1``, per-class precision/recall/F1/
support, the confusion matrix) and ``rnnkit evaluate``'s report are shared with textclass:
:mod:`rnnkit.tasks.classify`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from rnnkit.data import sequences as seqdata
from rnnkit.data.images import IMAGE_SUFFIXES
from rnnkit.errors import UserError, check_at_least
from rnnkit.models import ModelConfig
from rnnkit.tasks.base import PreparedData
from rnnkit.tasks.classify import ClassificationTask, Classifier, predict_logits, split_validation

MNIST_SIDE = 28


@dataclass
class SeqclassConfig:
    """Data options of sequence classification (each one is a CLI flag and a config key)."""

    mode: str = field(default="rows", metadata={"choices": seqdata.MNIST_MODES})  # MNIST: rows (T=28, F=28) | pixels (T=784, F=1) | permuted
    permute_seed: int = 0  # the fixed pixel permutation of mode=permuted
    labels: str = ""  # labels .npy for a .npy data file
    test_data: str = ""  # test file in the same format (X_TRAIN.ts finds X_TEST.ts by itself)
    label_column: str = "label"  # CSV
    features: int = 1  # wide CSV: values per step
    val_size: float = 0.1  # held out from train, stratified by label: a fraction (< 1) or a count (>= 1)
    split_seed: int = 0  # seeds the validation split, independent of the training seed
    normalize: str = field(default="feature", metadata={"choices": ("feature", "global", "none")})  # standardise per feature, or with one mean/std, fitted on the training split
    batch_size: int = 64
    eval_batch_size: int = 500
    augment_shift: int = 0  # MNIST only: random translation by up to N pixels of training images
    encoder: str = field(default="identity", metadata={"choices": ("identity", "linear")})
    audio_features: str = field(default="logmel", metadata={"choices": ("logmel", "mfcc")})  # recordings: frames of log-mel bands or MFCCs
    n_mels: int = 40  # recordings: mel bands (MFCC: 13 coefficients of them)
    test_speaker: str = ""  # recordings: hold this speaker out as the test part (default: takes 0-4 of everyone)
    spec_augment: bool = False  # training only: mask 2 bands of up to F/8 features and 2 spans of up to 10 steps per sequence

    def __post_init__(self):
        check_at_least(self, 1, ("features", "batch_size", "eval_batch_size", "n_mels"))
        check_at_least(self, 0, ("val_size", "augment_shift"))


Config = SeqclassConfig


# ---------------------------------------------------------------- data


def resolve_data(data: str):
    """A path, or a named dataset (``mnist``) found by :func:`rnnkit.data.sources.resolve`
    ($RNNKIT_DATA, then the cache, then a checked download). MNIST gives {part: path}."""
    from rnnkit.data import sources

    return sources.resolve(data)


def is_mnist(path) -> bool:
    """The four MNIST parts ({part: path}) or a folder holding the IDX files."""
    if isinstance(path, dict):
        return "train_images" in path
    return path.is_dir() and any(path.glob("train-images*idx3*"))


def is_recordings(path) -> bool:
    """A tar file, or a folder holding ``*.wav`` files (LABEL_SPEAKER_TAKE.wav)."""
    return not isinstance(path, dict) and (path.suffix == ".tar" or (path.is_dir() and any(path.glob("*.wav"))))


def prepare_recordings(path: Path, config: SeqclassConfig) -> PreparedData:
    """Labelled recordings as normalised log-mel/MFCC frames, split as :func:`split_recordings` says."""
    from rnnkit.data import speech

    parts = speech.split_recordings(speech.read_recordings(path), config.test_speaker)
    features = speech.AudioFeatures(kind=config.audio_features, n_mels=config.n_mels)
    train = speech.labelled_features(parts["train"], features)
    test = speech.labelled_features(parts["test"], features, train.label_names) if parts["test"] else None
    prepared = prepare_sequences(train, test, config, {"name": path.name, "path": str(path)})
    prepared.task_state["audio"] = features.to_dict()
    return prepared


def read_labelled(path: Path, config: SeqclassConfig, names=None) -> dict:
    """{"train": LabelledSequences, "test"?: ...} from an array, CSV or .ts file."""
    suffix = "".join(s for s in path.suffixes[-2:] if s != ".gz") or path.suffix
    if path.suffix in (".npy", ".npz"):
        return seqdata.read_arrays(path, config.labels or None, names)
    if suffix.endswith(".csv"):
        return {"train": seqdata.read_csv(path, config.label_column, config.features, names)}
    if path.suffix == ".ts":
        return {"train": seqdata.read_ts(path, names)}
    raise UserError(f"{path}: unknown file type {path.suffix!r}; expected .npy, .npz, .csv[.gz], .ts or an MNIST IDX folder")


def _test_path(path: Path, config: SeqclassConfig) -> Optional[Path]:
    if config.test_data:
        return resolve_data(config.test_data)
    if path.name.upper().endswith("_TRAIN" + path.suffix.upper()):
        sibling = path.with_name(path.name[: -len("_TRAIN" + path.suffix)] + "_TEST" + path.suffix)
        return sibling if sibling.exists() else None
    return None


def _normalizer(x: np.ndarray, config: SeqclassConfig) -> Optional[dict]:
    if config.normalize == "none":
        return None
    return seqdata.fit_normalizer(x, per_feature=config.normalize == "feature")


def make_transform(task_state: dict, augment_shift: int = 0, spec_augment: bool = False):
    """raw batch -> model inputs (B, T, F): MNIST (B, 28, 28) uint8 -> view; then normalisation;
    in training, optionally SpecAugment masks (:func:`rnnkit.data.audio.spec_augment`) per sequence."""
    norm = task_state.get("normalizer")
    if task_state["kind"] != "mnist":
        return _masked(norm) if spec_augment else (lambda raw, training, gen: seqdata.normalize(raw, norm))
    mode = task_state["mode"]
    perm = torch.tensor(task_state["permutation"]) if task_state.get("permutation") else None

    def transform(raw: Tensor, training: bool, gen) -> Tensor:
        images = raw.float() / 255.0  # (B, 28, 28)
        if training and augment_shift > 0:
            images = seqdata.random_shift(images, augment_shift, gen)
        return seqdata.normalize(seqdata.mnist_view(images, mode, perm), norm)

    return transform


def _masked(norm):
    from rnnkit.data.audio import spec_augment

    def transform(raw: Tensor, training: bool, gen) -> Tensor:
        x = seqdata.normalize(raw, norm)
        if not training:
            return x
        width = max(1, x.shape[-1] // 8)
        lengths = (~torch.isnan(raw).all(-1)).sum(1).tolist()  # padding is NaN: mask real steps only
        for row, n in zip(x, lengths):
            row[:n] = spec_augment(row[:n], gen, 2, width, 2, 10)
        return x

    return transform


def _source(raw, lengths, labels, batch_size, transform, shuffle):
    return seqdata.SequenceSource(torch.as_tensor(raw), torch.as_tensor(lengths), torch.as_tensor(labels),
                                  batch_size, transform, shuffle)


def prepare_mnist(path, config: SeqclassConfig) -> PreparedData:
    splits = seqdata.read_mnist(path)
    images, labels = splits["train"]
    train_i, val_i = split_validation(labels, config.val_size, config.split_seed)
    perm = None
    if config.mode == "permuted":
        perm = np.random.default_rng(config.permute_seed).permutation(MNIST_SIDE * MNIST_SIDE).tolist()
    state = {"kind": "mnist", "mode": config.mode, "permutation": perm, "label_names": [str(i) for i in range(10)],
             "image_size": [MNIST_SIDE, MNIST_SIDE]}
    view = seqdata.mnist_view(torch.from_numpy(images[train_i]).float() / 255.0, config.mode,
                              torch.tensor(perm) if perm else None)
    state["features"] = int(view.shape[-1])
    state["normalizer"] = _normalizer(view.numpy(), config)
    del view
    train_t = make_transform(state, config.augment_shift)
    eval_t = make_transform(state)
    full = lambda n: np.full(n, MNIST_SIDE if config.mode == "rows" else MNIST_SIDE**2, dtype=np.int64)  # noqa: E731
    test_images, test_labels = splits["test"]
    return PreparedData(
        train=_source(images[train_i], full(len(train_i)), labels[train_i], config.batch_size, train_t, True),
        val=_source(images[val_i], full(len(val_i)), labels[val_i], config.eval_batch_size, eval_t, False) if len(val_i) else None,
        test=_source(test_images, full(len(test_labels)), test_labels, config.eval_batch_size, eval_t, False),
        task_state=state,
        data_info={"name": "mnist", "path": str(path if not isinstance(path, dict) else Path(path["train_images"]).parent), "train": len(train_i), "val": len(val_i), "test": len(test_labels)},
    )


def prepare_sequences(train: seqdata.LabelledSequences, test: Optional[seqdata.LabelledSequences],
                      config: SeqclassConfig, info: dict) -> PreparedData:
    """Split, fit normalisation on the training part, build the three batch sources."""
    present = np.unique(train.labels)
    if len(present) < 2:
        raise UserError(f"{info.get('path', info['name'])}: only one class ({train.label_names[present[0]]}) in the "
                        "training data; need at least 2")
    train_i, val_i = split_validation(train.labels, config.val_size, config.split_seed)
    fit_part = train.subset(train_i)
    state = {"kind": "sequences", "label_names": train.label_names, "features": int(train.x.shape[-1]),
             "normalizer": _normalizer(fit_part.x, config)}
    t = make_transform(state)

    def source(part, batch, shuffle, transform=t):
        return _source(part.x, part.lengths, part.labels, batch, transform, shuffle) if part is not None and len(part) else None

    return PreparedData(
        train=source(fit_part, config.batch_size, True, make_transform(state, spec_augment=config.spec_augment)),
        val=source(train.subset(val_i), config.eval_batch_size, False),
        test=source(test, config.eval_batch_size, False),
        task_state=state,
        data_info={**info, "train": len(train_i), "val": len(val_i), "test": len(test) if test is not None else 0},
    )


# ---------------------------------------------------------------- task


class SeqclassTask(ClassificationTask):
    name = "seqclass"
    Config = SeqclassConfig
    serve_input = "sequences"

    def prepare(self, config: SeqclassConfig, data: str, seed: int = 0) -> PreparedData:
        path = resolve_data(data)
        if is_mnist(path):
            return prepare_mnist(path, config)
        if is_recordings(path):
            return prepare_recordings(path, config)
        splits = read_labelled(path, config)
        test = splits.get("test")
        test_path = _test_path(path, config)
        if test is None and test_path is not None:
            test = read_labelled(Path(test_path), config, splits["train"].label_names)["train"]
        _check_features(test, splits["train"].x.shape[-1], test_path or path)
        return prepare_sequences(splits["train"], test, config, {"name": path.name, "path": str(path)})

    def prepare_whole(self, config: SeqclassConfig, data: str, task_state: dict) -> seqdata.SequenceSource:
        """Every sequence of ``data`` (all parts of the file) with the trained labels and normalisation."""
        path, mnist = resolve_data(data), task_state["kind"] == "mnist"
        if is_mnist(path) != mnist:
            raise UserError(f"{data}: expected {'MNIST IDX files' if mnist else 'labelled sequences'} like the training data")
        if task_state.get("audio"):
            from rnnkit.data import speech

            seqs = speech.labelled_features(speech.read_recordings(path), speech.AudioFeatures(**task_state["audio"]),
                                            task_state["label_names"])
        elif mnist:
            images, labels = map(np.concatenate, zip(*seqdata.read_mnist(path).values()))
            steps = MNIST_SIDE if task_state["mode"] == "rows" else MNIST_SIDE**2
            seqs = seqdata.LabelledSequences(images, np.full(len(labels), steps), labels, task_state["label_names"])
        else:
            seqs = seqdata.concatenate(list(read_labelled(path, config, task_state["label_names"]).values()))
            _check_features(seqs, task_state["features"], path)
        return _source(seqs.x, seqs.lengths, seqs.labels, config.eval_batch_size, make_transform(task_state), False)

    def label_names(self, task_state: dict) -> list:
        return task_state["label_names"]

    def model_config(self, task_state: dict, config: SeqclassConfig, model: ModelConfig) -> ModelConfig:
        """input_size = F, output_size = C, the chosen encoder; per_step heads become ``last``."""
        return self.classifier_config(model, task_state, config.encoder, task_state["features"])

    def load(self, artifact) -> "SequenceClassifier":
        return SequenceClassifier.from_artifact(artifact)

    # -- CLI hooks: rnnkit predict DIR FILE... / rnnkit evaluate DIR --show-errors N ----------------
    def add_arguments(self, verb: str, parser) -> None:
        if verb == "predict":
            parser.add_argument("file", nargs="+", help="sequences (.npy/.npz/.csv/.ts) or, for MNIST models, "
                                "digit pictures (.png/.jpg): white-on-black or black-on-white")
            parser.add_argument("--json", action="store_true", help="one JSON object with the class probabilities")
        elif verb == "evaluate":
            parser.add_argument("--show-errors", type=int, default=0, metavar="N",
                                help="write DIR/errors_<split>.png with the first N misclassified digits")

    def run_verb(self, verb: str, facade: "SequenceClassifier", args) -> Optional[int]:
        if verb == "predict":
            return _cli_predict(facade, args)
        return super().run_verb(verb, facade, args)

    def show_evaluation(self, clf: "SequenceClassifier", args, source, logits, targets) -> None:
        """``--show-errors N``: DIR/errors_<split>.png (``errors_png``, ``errors_shown`` in
        ``args.metrics``) with the first N misclassified digits of the scored ``source``."""
        if args.show_errors <= 0:
            return
        from rnnkit import plots
        from rnnkit.artifacts import write_file_atomic

        if not clf.is_mnist:
            raise UserError("--show-errors draws digit pictures; it needs a model trained on mnist")
        pred = logits.argmax(1)
        wrong = torch.nonzero(pred != targets).flatten()[: args.show_errors]
        names = clf.label_names
        captions = [f"{names[int(targets[i])]} -> {names[int(pred[i])]}" for i in wrong]
        out = Path(args.dir) / f"errors_{args.split or 'data'}.png"
        write_file_atomic(out, plots.digit_grid_png(source.raw[wrong].numpy(), captions))
        args.metrics["errors_png"] = str(out)
        args.metrics["errors_shown"] = len(wrong)


def _check_features(seqs, features: int, path):
    if seqs is not None and seqs.x.shape[-1] != features:
        raise UserError(f"{path}: {seqs.x.shape[-1]} features per step; the training data has {features}")


TASK = SeqclassTask()


# ---------------------------------------------------------------- façade


class SequenceClassifier(Classifier):
    """Classify whole sequences. Batch-first: sequences x (N, T, F) (or (N, T) for F = 1).

    ``SequenceClassifier(config=SeqclassConfig(...), model=ModelConfig(...), train=TrainConfig(...))``
    then ``fit(x, y)`` (or ``fit(data="mnist")``); ``rnnkit.load(DIR)`` returns a trained one.
    For MNIST models, inputs are images (N, 28, 28): uint8 in [0, 255] or floats in [0, 1].
    """

    task = TASK

    def __init__(self, config: Optional[SeqclassConfig] = None, model: Optional[ModelConfig] = None, train: Any = None):
        super().__init__(config, model or ModelConfig(cell="lstm", hidden_size=128, head="last"), train)

    @property
    def label_names(self) -> list:
        """The class names; column k of ``predict_proba`` is ``label_names[k]``."""
        return self._label_names()

    @property
    def is_mnist(self) -> bool:
        return self._require()[1]["kind"] == "mnist"

    @property
    def step_features(self) -> Optional[int]:
        """F, the features each step of an input sequence has (None: not recorded)."""
        state = self._require()[1]
        return MNIST_SIDE if state["kind"] == "mnist" and state.get("mode") == "rows" else state.get("features")

    def fit(self, x=None, y=None, lengths=None, data: Optional[str] = None, out: Optional[str] = None,
            callbacks: Sequence = ()) -> "SequenceClassifier":
        """Train with the shared Trainer on arrays ``x`` (N, T, F), labels ``y`` (N,) [, lengths (N,)],
        or on a dataset/file ``data``; the validation split follows ``config.val_size`` (stratified
        by label), the best-validation weights are kept, and ``metrics`` becomes the report on
        validation. ``out`` (a directory) also writes the artifact."""
        if data is None and (x is None or y is None):
            raise UserError("fit needs sequences x and labels y, or data=<dataset or file>")

        def prepare_given(seed: int) -> PreparedData:  # the split follows config.split_seed, not the training seed
            seqs = seqdata._as_sequences(np.asarray(x), y, lengths, None, "fit(x, y)")
            return prepare_sequences(seqs, None, self.config, {"name": "arrays"})

        return self._fit(data, prepare_given, out, callbacks)

    def _source(self, x, lengths=None, y=None) -> seqdata.SequenceSource:
        """An evaluation batch source of inputs ``x`` (and labels ``y``; class 0 without them)."""
        state = self._require()[1]
        x = np.asarray(x)
        if state["kind"] == "mnist":
            x = _as_mnist_images(x)
            lengths = np.full(len(x), MNIST_SIDE if state["mode"] == "rows" else MNIST_SIDE**2, dtype=np.int64)
        else:
            seqs = seqdata._as_sequences(x, np.zeros(len(x)), lengths, None, "input")
            if seqs.x.shape[-1] != state["features"]:
                raise UserError(f"input: expected {state['features']} features per step, got {seqs.x.shape[-1]}")
            x, lengths = seqs.x, seqs.lengths
        labels = np.zeros(len(x), dtype=np.int64) if y is None else self._encode(y)
        return _source(x, lengths, labels, self.config.eval_batch_size, make_transform(state), False)

    def _encode(self, y) -> np.ndarray:
        return seqdata.encode_labels(np.asarray(y).reshape(-1).tolist(), self.label_names, "labels")[0]

    # -- job verbs -----------------------------------------------------------------------------
    def predict_proba(self, x, lengths=None) -> np.ndarray:
        """Class probabilities (N, C) float32, columns in the order of ``label_names``."""
        logits, _ = predict_logits(self._require()[0], self._source(x, lengths).epoch(0, 0))
        return torch.softmax(logits, 1).numpy()

    def predict(self, x, lengths=None) -> list:
        """Predicted label names (N,)."""
        names = self.label_names
        return [names[i] for i in self.predict_proba(x, lengths).argmax(1)]

    def evaluate(self, x, y, lengths=None) -> dict:
        """Loss, accuracy, macro F1, per-class precision/recall/F1/support and the confusion matrix
        (:func:`classify.evaluation_report`)."""
        return self._report(self._source(x, lengths, y))

    def predict_images(self, paths: Sequence) -> np.ndarray:
        """Probabilities (N, C) for digit pictures (PNG/JPEG), converted as :func:`image_to_mnist` does."""
        if not self.is_mnist:
            raise UserError("image prediction needs a model trained on mnist; this one reads arrays")
        return self.predict_proba(np.stack([image_to_mnist(p) for p in paths]))


def _as_mnist_images(x: np.ndarray) -> np.ndarray:
    """(N, 28, 28) or (28, 28) uint8 [0, 255] / float [0, 1] -> (N, 28, 28) uint8."""
    if x.ndim == 2:
        x = x[None]
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3 or x.shape[1:] != (MNIST_SIDE, MNIST_SIDE):
        raise UserError(f"input: an MNIST model expects images of shape (N, 28, 28), got {x.shape}")
    if x.dtype == np.uint8:
        return x
    if x.size and (np.nanmin(x) < 0 or np.nanmax(x) > 1):
        raise UserError("input: float images must lie in [0, 1] (or pass uint8 in [0, 255])")
    return np.round(np.nan_to_num(x) * 255).astype(np.uint8)


def image_to_mnist(path) -> np.ndarray:
    """A digit picture -> (28, 28) uint8 like MNIST: white digit on black.

    Converted to grey (ITU-R 601 luma), inverted when the background is light (the border's
    median above mid-grey), then the digit's bounding box is scaled to fit 20x20 keeping its
    aspect ratio and centred by its centre of mass in the 28x28 frame, as in MNIST's preparation.
    """
    from PIL import Image

    from rnnkit.data.images import border_median, read_ink

    grey = read_ink(path)
    grey = np.clip(grey - border_median(grey), 0, 255)
    ys, xs = np.nonzero(grey > 0.1 * grey.max()) if grey.max() > 0 else (np.array([0]), np.array([0]))
    crop = grey[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    scale = 20.0 / max(crop.shape)
    h, w = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    small = np.asarray(Image.fromarray(crop.astype(np.uint8)).resize((w, h), Image.LANCZOS), dtype=np.float32)
    out = np.zeros((MNIST_SIDE, MNIST_SIDE), dtype=np.float32)
    top, left = (MNIST_SIDE - h) // 2, (MNIST_SIDE - w) // 2
    out[top : top + h, left : left + w] = small
    out = _centre_of_mass_shift(out)
    peak = out.max()
    return np.clip(out * (255.0 / peak) if peak > 0 else out, 0, 255).round().astype(np.uint8)


def _centre_of_mass_shift(img: np.ndarray) -> np.ndarray:
    total = img.sum()
    if total <= 0:
        return img
    rows, cols = np.indices(img.shape)
    dy = int(round(MNIST_SIDE / 2 - 0.5 - (rows * img).sum() / total))
    dx = int(round(MNIST_SIDE / 2 - 0.5 - (cols * img).sum() / total))
    return np.roll(np.roll(img, dy, axis=0), dx, axis=1)


# ---------------------------------------------------------------- CLI verbs and pictures


def _cli_predict(clf: "SequenceClassifier", args) -> int:
    """Print one line per sequence/picture (or one JSON object with probabilities)."""
    import json

    rows = []
    for name in args.file:
        path = Path(name)
        if not path.is_file():
            raise UserError(f"{path}: file not found")
        if path.suffix.lower() in IMAGE_SUFFIXES:
            probs = clf.predict_images([path])
        elif path.suffix in (".npy", ".npz"):
            probs = clf.predict_proba(*seqdata.read_unlabelled_array(path))
        else:
            seqs = read_labelled(path, clf.config)["train"]
            probs = clf.predict_proba(seqs.x, seqs.lengths)
        for i, p in enumerate(probs):
            rows.append({"input": str(path), "index": i, "label": clf.label_names[int(p.argmax())],
                         "probabilities": {n: round(float(v), 6) for n, v in zip(clf.label_names, p)}})
    if args.json:
        print(json.dumps({"predictions": rows}))
    else:
        for r in rows:
            print(f"{r['input']}[{r['index']}]: {r['label']} (p={r['probabilities'][r['label']]:.3f})")
    return 0
