"""Metrics, one home for every task: classification report, forecast errors, language-model units.

Plain NumPy on arrays already gathered by a task's evaluation pass; nothing here runs a model.
Shape letters: ``N`` examples, ``C`` classes, ``K`` forecast horizon, ``T`` time steps.

Classification semantics (those of scikit-learn's ``precision_recall_fscore_support`` and
``f1_score(average="macro")`` with their default ``labels=None`` and ``zero_division=0``):

- precision_k = TP_k / predicted_k, recall_k = TP_k / support_k, F1_k = 2 P R / (P + R);
  any 0/0 counts as 0 (a class never predicted has precision 0; one never seen, recall 0);
- macro F1 is the unweighted mean of F1_k over the classes that occur in the truth or in the
  predictions; a class in neither is still listed (all zeros) but does not pull the mean down;
- accuracy = sum_k TP_k / N; with no examples at all, accuracy and macro F1 are NaN.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

MAX_EXPONENT = 700.0  # exp(700) ~ 1e304: perplexity of an untrained model stays a finite float


# ------------------------------------------------------------------------------ classification


def confusion_matrix(true: Sequence[int], pred: Sequence[int], num_classes: int) -> np.ndarray:
    """(C, C) int64 counts of true (N,) vs predicted (N,) class ids; row = true class, column = predicted."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(true, dtype=np.int64), np.asarray(pred, dtype=np.int64)), 1)
    return counts


def classification_report(confusion: np.ndarray, labels: Sequence[str]) -> dict:
    """Accuracy, macro F1 and per-class precision/recall/F1/support of a (C, C) confusion matrix
    (rows true, columns predicted; ``labels`` (C,) names the classes), with the semantics of the
    module docstring. Returns ``{"accuracy", "macro_f1", "per_class": {label: {"precision",
    "recall", "f1", "support"}}, "confusion": [[int]] (C, C), "labels": [str] (C,)}``."""
    counts = np.asarray(confusion, dtype=np.float64)
    tp, predicted, support = np.diag(counts), counts.sum(0), counts.sum(1)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    occurs = (predicted + support) > 0  # in the truth or in the predictions
    total = counts.sum()
    per_class = {
        name: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]), "support": int(support[k])}
        for k, name in enumerate(labels)
    }
    return {
        "accuracy": float(tp.sum() / total) if total else math.nan,
        "macro_f1": float(f1[occurs].mean()) if occurs.any() else math.nan,
        "per_class": per_class,
        "confusion": np.asarray(confusion).astype(np.int64).tolist(),
        "labels": list(labels),
    }


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator elementwise, 0 where the denominator is 0."""
    return np.divide(numerator, denominator, out=np.zeros_like(numerator, dtype=np.float64), where=denominator > 0)


# ------------------------------------------------------------------------------------ forecasting


def forecast_errors(pred: np.ndarray, truth: np.ndarray) -> dict:
    """``mse``/``mae`` over all (N, K, C) values, and ``mse_last``: the MSE of the last horizon step."""
    err = pred - truth
    return {"mse": float(np.mean(err**2)), "mae": float(np.mean(np.abs(err))),
            "mse_last": float(np.mean(err[:, -1] ** 2))}


def forecast_accuracy(pred: np.ndarray, truth: np.ndarray, mase_scale: float) -> dict:
    """``mae``, ``rmse``, ``smape`` (%) and ``mase`` of forecasts (N, K, C) on the original scale.

    sMAPE = mean(200 |y - yhat| / (|y| + |yhat|)) (terms with y = yhat = 0 count as 0);
    MASE = MAE / mase_scale, where mase_scale is the in-sample MAE of the seasonal naive
    one-step forecast on the training part (:func:`mase_scale`; Hyndman & Koehler 2006).
    """
    err = np.abs(pred - truth)
    denom = np.abs(truth) + np.abs(pred)
    smape = np.where(denom > 0, 200.0 * err / np.where(denom > 0, denom, 1.0), 0.0)
    mae = float(err.mean())
    return {"mae": mae, "rmse": float(np.sqrt(np.mean(err**2))), "smape": float(smape.mean()),
            "mase": mae / mase_scale if mase_scale > 0 else float("nan")}


def mase_scale(train: np.ndarray, period: int) -> float:
    """In-sample MAE of the seasonal naive forecast y_t = y_{t-m} on training values (T, C)."""
    m = max(1, period)
    if len(train) <= m:
        return float("nan")
    return float(np.mean(np.abs(train[m:] - train[:-m])))


# ------------------------------------------------------------------------------ language models


def bits_per_token(nats: float) -> float:
    """A mean cross-entropy in nats per token (character or word) as bits per token: nats / ln 2."""
    return nats / math.log(2)


def perplexity(nats: float) -> float:
    """exp(mean cross-entropy in nats), the exponent capped at MAX_EXPONENT to stay finite."""
    return math.exp(min(nats, MAX_EXPONENT))
