"""What the two classification tasks share (``textclass``, ``seqclass``): the validation split,
the evaluation pass and its report, the ``rnnkit evaluate`` report, and the façades' training.

Shape letters: ``N`` examples, ``C`` classes, ``B`` batch. A classifier's outputs are logits
(B, C); targets are class ids (B,); class ``k`` is named ``label_names(task_state)[k]``.
The metrics and their semantics are those of :mod:`rnnkit.metrics`.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit import metrics
from rnnkit.data.batching import Batch
from rnnkit.errors import UserError
from rnnkit.models import ModelConfig
from rnnkit.tasks.base import BatchSource, PreparedData, Task

SUMMARY_KEYS = ("loss", "accuracy", "macro_f1")  # what Task.evaluate reports (and the Trainer can monitor)


# ------------------------------------------------------------------------------ validation split


def split_validation(labels: Sequence, size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train index, validation index), each sorted: a seeded split of N examples stratified by
    their ``labels`` (N,) (class ids or names).

    ``size`` is a fraction of N (< 1, rounded) or a count (>= 1). Each class gives its share of
    that count: floor(count * n_k / N) places, and the leftover places go to the classes with the
    largest remainders, first among those that still keep an example for training. So the
    validation part has the class balance of the data, and a class is never held out whole
    while another place would do. Within a class, examples are drawn by
    ``numpy.random.default_rng(seed)``.
    """
    labels = np.asarray(labels)
    n = len(labels)
    count = int(round(size * n)) if size < 1 else int(size)
    if count < 0 or 0 < n <= count:
        raise UserError(f"validation size {size}: expected a fraction in [0, 1) or a count below the {n} training examples")
    _, class_of = np.unique(labels, return_inverse=True)
    quota = _places_per_class(np.bincount(class_of), count)
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(class_of == k))[:q] for k, q in enumerate(quota)]
    val = np.sort(np.concatenate(chosen or [np.zeros(0, np.int64)])).astype(np.int64)
    return np.setdiff1d(np.arange(n), val), val


def _places_per_class(counts: np.ndarray, total: int) -> np.ndarray:
    """(K,) validation places of classes with ``counts`` (K,) examples, summing to ``total``."""
    if total == 0:
        return np.zeros_like(counts)
    quota, remainder = np.divmod(counts * total, counts.sum())  # the exact share is quota + remainder / N
    keeps_one = quota + 1 < counts
    order = np.lexsort((-remainder, ~keeps_one))  # classes that keep one for training first, then by remainder
    quota[order[: total - quota.sum()]] += 1
    return quota


# ------------------------------------------------------------------------------ evaluation pass


@torch.no_grad()
def predict_logits(model, batches: Iterable[Batch]) -> tuple[Tensor, Tensor]:
    """Logits (N, C) float32 and targets (N,) of one eval-mode pass over ``batches``, in batch
    order; the model's train/eval mode is restored. No batches: shapes (0, 0) and (0,)."""
    was_training = model.training
    model.eval()
    logits, targets = [], []
    try:
        for batch in batches:
            out, _ = model(batch.inputs, None, batch.lengths)  # (B, C)
            logits.append(out.float())
            targets.append(batch.targets)
    finally:
        model.train(was_training)
    if not logits:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.int64)
    return torch.cat(logits), torch.cat(targets)


def evaluation_report(logits: Tensor, targets: Tensor, label_names: Sequence[str]) -> dict:
    """``loss`` (mean cross-entropy of logits (N, C) against targets (N,); NaN for N = 0) and the
    classification report of the argmax predictions (:func:`rnnkit.metrics.classification_report`:
    accuracy, macro_f1, per_class, confusion, labels)."""
    if not len(targets):
        return {"loss": math.nan, **metrics.classification_report(np.zeros((len(label_names),) * 2, np.int64), label_names)}
    confusion = metrics.confusion_matrix(targets.numpy(), logits.argmax(1).numpy(), len(label_names))
    return {"loss": float(F.cross_entropy(logits, targets)), **metrics.classification_report(confusion, label_names)}


def flat_report(report: dict) -> dict:
    """An :func:`evaluation_report` as ``rnnkit evaluate`` prints it: ``loss``, ``accuracy``,
    ``macro_f1``, then ``precision_<label>``, ``recall_<label>``, ``f1_<label>``, ``support_<label>``
    per class, and ``confusion`` (C, C) lists (rows true, columns predicted)."""
    flat = {key: report[key] for key in SUMMARY_KEYS}
    for name, row in report["per_class"].items():
        flat.update({f"{key}_{name}": value for key, value in row.items()})
    flat["confusion"] = report["confusion"]
    return flat


# ------------------------------------------------------------------------------ task


class ClassificationTask(Task):
    """Base of the classification tasks: cross-entropy loss, the evaluation pass and the report of
    ``rnnkit evaluate``. A subclass says where its task state keeps the class names."""

    takes_lengths = True

    def label_names(self, task_state: dict) -> list:
        """The C class names, in the order of the model's outputs."""
        raise NotImplementedError

    def classifier_config(self, model: ModelConfig, task_state: dict, encoder: str, input_size: int) -> ModelConfig:
        """The user's model options with what the data decides: ``encoder``, ``input_size`` (F, or
        the embedding's rows) and ``output_size`` = C; a ``per_step`` head becomes ``last``."""
        head = "last" if model.head == "per_step" else model.head
        return replace(model, encoder=encoder, input_size=input_size, head=head,
                       output_size=len(self.label_names(task_state)))

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        """Mean cross-entropy of logits (B, C) against ``batch.targets`` (B,)."""
        return F.cross_entropy(outputs, batch.targets)

    def evaluate(self, model, batches: Iterable[Batch]) -> dict:
        """``loss``, ``accuracy`` and ``macro_f1`` over a full pass: the numbers validation records
        and the Trainer can monitor. Per-class figures need the class names: ``rnnkit evaluate``
        and the façades' ``evaluate`` give them (:func:`evaluation_report`)."""
        logits, targets = predict_logits(model, batches)
        report = evaluation_report(logits, targets, [str(k) for k in range(logits.shape[1])])
        return {key: report[key] for key in SUMMARY_KEYS}

    def run_verb(self, verb: str, facade: "Classifier", args) -> Optional[int]:
        if verb == "evaluate":
            return self.evaluate_command(facade, args)
        return super().run_verb(verb, facade, args)

    def evaluate_command(self, clf: "Classifier", args) -> int:
        """``rnnkit evaluate DIR``: score the split (or all of ``--data``) once; add :func:`flat_report`
        and ``confusion_png`` (DIR/confusion_<split>.png, or confusion_data.png for ``--data``) to
        ``args.metrics``, then the task's extras (:meth:`show_evaluation`)."""
        from rnnkit import plots
        from rnnkit.artifacts import write_file_atomic

        source = args.evaluation_source  # what the generic metrics were computed on
        part = args.split or "data"  # a file given with --data is evaluated whole
        logits, targets = predict_logits(clf.model, source.epoch(0, 0))
        report = evaluation_report(logits, targets, self.label_names(clf.task_state))
        args.metrics.update(flat_report(report))
        png = Path(args.dir) / f"confusion_{part}.png"
        title = f"{part}: accuracy {report['accuracy']:.4f}"
        write_file_atomic(png, plots.confusion_png(np.array(report["confusion"]), report["labels"], title))
        args.metrics["confusion_png"] = str(png)
        self.show_evaluation(clf, args, source, logits, targets)
        return 0

    def show_evaluation(self, clf: "Classifier", args, source: BatchSource, logits: Tensor, targets: Tensor) -> None:
        """Extras of ``rnnkit evaluate`` (examples, pictures of mistakes) from the scored ``source``
        and its logits (N, C) and targets (N,) in batch order; none by default."""


# ------------------------------------------------------------------------------ façade


class Classifier:
    """What ``TextClassifier`` and ``SequenceClassifier`` share: construction, training with the
    one Trainer, and the report. A subclass sets ``task`` and adds its ``predict_proba``."""

    task: ClassificationTask

    def __init__(self, config: Any = None, model: Optional[ModelConfig] = None, train: Any = None):
        self.config = config or self.task.Config()
        self.model_options = model or ModelConfig()
        self.train_config = train
        self.model = None
        self.task_state: Optional[dict] = None
        self.history = None
        self.metrics: dict = {}  # after fit: the validation report; after rnnkit.load: the artifact's metrics

    @classmethod
    def from_model(cls, model, task_state: dict, config: Any = None):
        """A ready classifier from a trained network and its task state."""
        clf = cls(config, model.config)
        clf.model, clf.task_state = model.eval(), task_state
        return clf

    @classmethod
    def from_artifact(cls, artifact):
        """The classifier of a run directory (what ``rnnkit.load(DIR)`` returns)."""
        clf = cls.from_model(artifact.build_model(), artifact.task_state, artifact.task_config)
        clf.artifact = artifact
        clf.metrics = dict(getattr(artifact, "metrics", {}) or {})
        return clf

    def _require(self) -> tuple:
        """(model, task_state); a UserError before ``fit`` or ``rnnkit.load``."""
        if self.model is None or self.task_state is None:
            raise UserError(f"this {type(self).__name__} has no model yet: call fit(...) or rnnkit.load(DIR)")
        return self.model, self.task_state

    def _label_names(self) -> list:
        return list(self.task.label_names(self._require()[1]))

    def _fit(self, data: Optional[str], prepare_given: Callable[[int], PreparedData], out, callbacks) -> "Classifier":
        """Train on the dataset/file ``data``, or else on ``prepare_given(seed)``, with the one
        Trainer (best-validation weights kept); ``out`` also writes the run directory and
        curves.png. Afterwards ``metrics`` is the report on the validation split."""
        from rnnkit.training.config import TrainConfig
        from rnnkit.training.runner import fit_prepared

        task, train = self.task, self.train_config or TrainConfig()
        prepared = task.prepare(self.config, data, train.seed) if data is not None else prepare_given(train.seed)
        self.task_state = prepared.task_state
        model_config = task.model_config(self.task_state, self.config, self.model_options)
        self.model = task.new_model(model_config, self.task_state, self.config, train.seed)  # as `rnnkit train`
        meta = task.run_meta(model_config, self.config, self.task_state, prepared.data_info)
        self.history = fit_prepared(task, self.model, prepared, train, self.config, out, meta, progress=False,
                                    callbacks=callbacks)
        self.model.eval()
        self.prepared = prepared
        self.metrics = self._report(prepared.val) if prepared.val is not None else {}
        return self

    def _report_on(self, data: Optional[str], split: str, report: Callable[[BatchSource], dict], expected: str) -> dict:
        """``report(source)`` on the ``split`` part (train, val or test) of ``data``: by default
        the data the model was trained on (the prepared parts after ``fit``, else the artifact's
        recorded data); ``expected`` names what ``data`` may be, for the error without either."""
        self._require()
        if data is None and getattr(self, "prepared", None) is not None:
            return report(getattr(self.prepared, split))
        name = data or (self.artifact.data.get("name") if hasattr(self, "artifact") else None)
        if not name:
            raise UserError(f"evaluate needs data=<{expected}>")
        return report(getattr(self.task.prepare(self.config, name), split))

    def _report(self, source: BatchSource) -> dict:
        """:func:`evaluation_report` of the model on every batch of ``source``."""
        logits, targets = predict_logits(self._require()[0], source.epoch(0, 0))
        return evaluation_report(logits, targets, self._label_names())
