"""Metrics, one home for every task: classification report, forecast errors, language-model units,
entity-level scores of sequence labelling, error rates of transcriptions.

Plain NumPy on arrays already gathered by a task's evaluation pass; nothing here runs a model.
Shape letters: ``N`` examples, ``C`` classes, ``K`` forecast horizon, ``T`` time steps.

Classification semantics (those of scikit-learn's ``precision_recall_fscore_support`` and
``f1_score(average="macro")`` with their default ``labels=None`` and ``zero_division=0``):

- precision_k = TP_k / predicted_k, recall_k = TP_k / support_k, F1_k = 2 P R / (P + R);
  any 0/0 counts as 0 (a class never predicted has precision 0; one never seen, recall 0);
- macro F1 is the unweighted mean of F1_k over the classes that occur in the truth or in the
  predictions; a class in neither is still listed (all zeros) but does not pull the mean down;
- accuracy = sum_k TP_k / N; with no examples at all, accuracy and macro F1 are NaN.

Entity semantics (those of the CoNLL shared tasks' ``conlleval`` script): entities are read from
BIO / IOB1 / BIOES tags by conlleval's chunk rules (:func:`rnnkit.data.tagging.spans`), and a
predicted entity is correct only if its type, first and last token all match a true one. The
precision/recall/F1 formulas and the 0/0 = 0 rule are the classification ones above.

Transcription semantics: the character error rate is the edit (Levenshtein) distance between
each hypothesis and its reference, summed over the N pairs, over the references' total length;
the word error rate is the same on words (split at whitespace); sequence accuracy is the share
of hypotheses equal to their reference. Error rates may exceed 1 (many insertions).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from rnnkit.data.tagging import spans

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
    precision, recall, f1 = _precision_recall_f1(np.stack([support, predicted, tp], axis=1)).T
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


def _precision_recall_f1(table: np.ndarray) -> np.ndarray:
    """(K, 3) precision, recall, F1 of (K, 3) counts [true, predicted, correct]; 0/0 counts as 0."""
    true, predicted, correct = table.T
    precision, recall = _ratio(correct, predicted), _ratio(correct, true)
    return np.stack([precision, recall, _ratio(2 * precision * recall, precision + recall)], axis=1)


# ---------------------------------------------------------------------------- sequence labelling


def entity_scores(true_seqs: Sequence[Sequence[str]], pred_seqs: Sequence[Sequence[str]]) -> dict:
    """Entity-level precision, recall and F1 (fractions, micro-averaged over all entities) and
    token accuracy of predicted tag sequences against true ones, sentence by sentence (N sentences,
    each pair of the same length), with the semantics of the module docstring.

    Returns ``{"precision", "recall", "f1", "accuracy", "true_entities", "predicted_entities",
    "correct_entities", "tokens", "per_type": {type: {"precision", "recall", "f1", "support"}}}``;
    ``per_type`` lists every type found in the truth or the predictions, sorted; ``support`` is the
    number of true entities of the type. With no tokens at all, accuracy is NaN.
    """
    if len(true_seqs) != len(pred_seqs):
        raise ValueError(f"{len(true_seqs)} true sequences but {len(pred_seqs)} predicted ones")
    counts: dict[str, list[int]] = {}  # type -> [true, predicted, correct]
    right_tokens = tokens = 0
    for i, (true, pred) in enumerate(zip(true_seqs, pred_seqs)):
        if len(true) != len(pred):
            raise ValueError(f"sequence {i}: {len(true)} true tags but {len(pred)} predicted ones")
        gold, found = set(spans(true, "BIOES")), set(spans(pred, "BIOES"))
        for column, entities in enumerate((gold, found, gold & found)):
            for kind, _, _ in entities:
                counts.setdefault(kind, [0, 0, 0])[column] += 1
        right_tokens += sum(t == p for t, p in zip(true, pred))
        tokens += len(true)
    kinds = sorted(counts)
    table = np.array([counts[k] for k in kinds], dtype=np.float64).reshape(len(kinds), 3)  # (K, 3)
    overall = _precision_recall_f1(table.sum(0, keepdims=True))
    per_type = _precision_recall_f1(table)
    return {
        "precision": float(overall[0, 0]), "recall": float(overall[0, 1]), "f1": float(overall[0, 2]),
        "accuracy": right_tokens / tokens if tokens else math.nan,
        "true_entities": int(table[:, 0].sum()), "predicted_entities": int(table[:, 1].sum()),
        "correct_entities": int(table[:, 2].sum()), "tokens": tokens,
        "per_type": {k: {"precision": float(p), "recall": float(r), "f1": float(f), "support": counts[k][0]}
                     for k, (p, r, f) in zip(kinds, per_type)},
    }


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


def series_scores(forecasts: np.ndarray, actuals: np.ndarray, scales: np.ndarray, naive2: tuple = ()) -> dict:
    """The M4 competition's point scores of N series' forecasts (N, K) against actuals (N, K):
    ``smape`` (%) and ``mase`` (each series' errors over its own ``scales`` (N,), the in-sample
    MAE of the seasonal naive forecast, :func:`mase_scale`), each the mean over all N * K errors;
    with ``naive2`` = (sMAPE, MASE) of Naive2 on the same set, ``owa`` = the mean of the two ratios."""
    f, y = np.asarray(forecasts, dtype=np.float64), np.asarray(actuals, dtype=np.float64)
    err = np.abs(y - f)
    denom = np.abs(y) + np.abs(f)
    smape = float(np.mean(np.where(denom > 0, 200.0 * err / np.where(denom > 0, denom, 1.0), 0.0)))
    mase = float(np.mean(err / np.asarray(scales, dtype=np.float64)[:, None]))
    out = {"smape": smape, "mase": mase}
    if naive2:
        out["owa"] = 0.5 * (smape / naive2[0] + mase / naive2[1])
    return out


def interval_scores(lower: np.ndarray, upper: np.ndarray, actuals: np.ndarray, scales: np.ndarray,
                    alpha: float = 0.05) -> dict:
    """Scores of (1 - alpha) prediction intervals [lower, upper] (N, K) for actuals (N, K), as
    in M4: ``msis`` = mean over series of mean_k [(U - L) + 2/alpha (L - y)[y < L] + 2/alpha
    (y - U)[y > U]] / scale, and ``coverage``, the fraction of actuals inside (bounds included)."""
    L, U, y = (np.asarray(a, dtype=np.float64) for a in (lower, upper, actuals))
    penalty = (U - L) + 2.0 / alpha * ((L - y) * (y < L) + (y - U) * (y > U))
    return {"msis": float(np.mean(penalty.mean(1) / np.asarray(scales, dtype=np.float64))),
            "coverage": float(np.mean((y >= L) & (y <= U)))}


def pinball_loss(forecasts: np.ndarray, actuals: np.ndarray, quantiles: Sequence[float]) -> float:
    """Mean quantile (pinball) loss of quantile forecasts (..., Q) for actuals (...):
    max(q (y - f), (q - 1)(y - f)), averaged over every value and quantile."""
    f = np.asarray(forecasts, dtype=np.float64)
    q = np.asarray(quantiles, dtype=np.float64)
    diff = np.asarray(actuals, dtype=np.float64)[..., None] - f
    return float(np.mean(np.maximum(q * diff, (q - 1) * diff)))


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


# ------------------------------------------------------------------------------ transcription


def edit_distance(reference: Sequence, hypothesis: Sequence) -> int:
    """The fewest insertions, deletions and substitutions that turn ``hypothesis`` into ``reference``."""
    previous = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        current = [i]
        for j, h in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def transcription_scores(references: Sequence[str], hypotheses: Sequence[str]) -> dict:
    """``{"cer", "wer", "sequence_accuracy", "characters", "words"}`` of N transcriptions
    (module docstring); NaN rates when the references are empty."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    chars = sum(len(r) for r in references)
    words = sum(len(r.split()) for r in references)
    char_errors = sum(edit_distance(r, h) for r, h in zip(references, hypotheses))
    word_errors = sum(edit_distance(r.split(), h.split()) for r, h in zip(references, hypotheses))
    same = sum(r == h for r, h in zip(references, hypotheses))
    return {"cer": char_errors / chars if chars else float("nan"), "wer": word_errors / words if words else float("nan"),
            "sequence_accuracy": same / len(references) if references else float("nan"),
            "characters": chars, "words": words}


# ------------------------------------------------------------------------------ translation


def translation_scores(references: Sequence[str], hypotheses: Sequence[str]) -> dict:
    """``{"bleu", "chrf", "exact_match"}`` of N translations: sacrebleu's corpus BLEU (13a
    tokenisation, cased) and chrF on the 0-100 scale, one reference each; the fraction of
    hypotheses equal to their reference."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        return {"bleu": float("nan"), "chrf": float("nan"), "exact_match": float("nan")}
    try:
        import sacrebleu
    except ImportError:
        from rnnkit.errors import UserError

        raise UserError("BLEU and chrF need sacrebleu: pip install 'rnnkit[seq2seq]'") from None
    hyps, refs = list(hypotheses), [list(references)]
    return {"bleu": sacrebleu.corpus_bleu(hyps, refs).score, "chrf": sacrebleu.corpus_chrf(hyps, refs).score,
            "exact_match": sum(r == h for r, h in zip(references, hypotheses)) / len(references)}
