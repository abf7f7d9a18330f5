"""rnnkit.metrics: the classification report against a brute-force count, forecast errors and
language-model units against hand-computed values."""

import math

import numpy as np
import pytest

from rnnkit import metrics


def _reference_report(true: list, pred: list, num_classes: int) -> dict:
    """scikit-learn's semantics written out with plain counting loops (zero_division=0, macro F1
    over the classes found in the truth or the predictions)."""
    per_class, f1s = {}, []
    for k in range(num_classes):
        tp = sum(1 for t, p in zip(true, pred) if t == k and p == k)
        predicted = sum(1 for p in pred if p == k)
        support = sum(1 for t in true if t == k)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[str(k)] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
        if predicted or support:
            f1s.append(f1)
    accuracy = sum(1 for t, p in zip(true, pred) if t == p) / len(true)
    return {"accuracy": accuracy, "macro_f1": sum(f1s) / len(f1s), "per_class": per_class}


def test_confusion_matrix_counts_rows_true_columns_predicted():
    m = metrics.confusion_matrix([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], 3)
    assert m.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]] and m.dtype == np.int64


def test_report_hand_computed():
    # true 0: 3 right, 1 called 1; true 1: 2 right; true 2: 1 called 0 (class 2 is never predicted)
    r = metrics.classification_report(np.array([[3, 1, 0], [0, 2, 0], [1, 0, 0]]), ["a", "b", "c"])
    assert r["accuracy"] == pytest.approx(5 / 7)
    assert r["per_class"]["a"] == {"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4}
    assert r["per_class"]["b"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8), "support": 2}
    assert r["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert r["macro_f1"] == pytest.approx((0.75 + 0.8 + 0.0) / 3)
    assert r["confusion"] == [[3, 1, 0], [0, 2, 0], [1, 0, 0]] and r["labels"] == ["a", "b", "c"]


@pytest.mark.parametrize("seed", range(20))
def test_report_matches_brute_force_counts(seed):
    rng = np.random.default_rng(seed)
    C, N = int(rng.integers(2, 7)), int(rng.integers(1, 40))
    true = rng.integers(0, C, N).tolist()  # some classes may be missing from truth or predictions
    pred = [t if rng.random() < 0.5 else int(rng.integers(0, C)) for t in true]
    got = metrics.classification_report(metrics.confusion_matrix(true, pred, C), [str(k) for k in range(C)])
    want = _reference_report(true, pred, C)
    assert got["accuracy"] == pytest.approx(want["accuracy"]) and got["macro_f1"] == pytest.approx(want["macro_f1"])
    for name, row in want["per_class"].items():
        assert got["per_class"][name] == pytest.approx(row)


def test_class_absent_from_truth_and_predictions_is_listed_but_not_averaged():
    r = metrics.classification_report(metrics.confusion_matrix([0, 1, 1], [0, 1, 0], 3), ["a", "b", "c"])
    assert r["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)  # a: P 1/2 R 1; b: P 1 R 1/2


def test_no_examples_gives_nan_accuracy_and_macro_f1():
    r = metrics.classification_report(np.zeros((2, 2), dtype=np.int64), ["a", "b"])
    assert math.isnan(r["accuracy"]) and math.isnan(r["macro_f1"])
    assert r["per_class"]["a"]["support"] == 0


def test_forecast_errors_hand_computed():
    pred, truth = np.array([[[2.0]], [[1.0]]]), np.array([[[1.0]], [[3.0]]])
    m = metrics.forecast_accuracy(pred, truth, mase_scale=0.5)
    assert m["mae"] == 1.5 and m["rmse"] == pytest.approx(np.sqrt(2.5))
    assert m["smape"] == pytest.approx((200 * 1 / 3 + 200 * 2 / 4) / 2)
    assert m["mase"] == 3.0
    assert math.isnan(metrics.forecast_accuracy(pred, truth, mase_scale=0.0)["mase"])
    assert metrics.mase_scale(np.array([[1.0], [2], [4], [7]]), 1) == 2.0
    assert math.isnan(metrics.mase_scale(np.array([[1.0], [2]]), 2))
    s = metrics.forecast_errors(pred, truth)
    assert s == {"mse": 2.5, "mae": 1.5, "mse_last": 2.5}


def test_language_model_units():
    assert metrics.bits_per_token(math.log(2)) == pytest.approx(1.0)
    assert metrics.perplexity(math.log(50)) == pytest.approx(50)
    assert math.isfinite(metrics.perplexity(1e6))
