"""What textclass and seqclass share (rnnkit.tasks.classify): the stratified validation split,
the evaluation pass and its report, the flat report of rnnkit evaluate, one facade base."""

import math

import numpy as np
import pytest
import torch

from rnnkit.data.batching import Batch
from rnnkit.errors import UserError
from rnnkit.tasks import classify, seqclass, textclass
from rnnkit.tasks.classify import evaluation_report, flat_report, predict_logits, split_validation

# ------------------------------------------------------------------------------ validation split


def test_split_is_stratified_sorted_disjoint_and_seeded():
    labels = np.array(["a"] * 60 + ["b"] * 30 + ["c"] * 10)
    train, val = split_validation(labels, 0.2, seed=3)
    assert len(val) == 20 and sorted(np.concatenate([train, val]).tolist()) == list(range(100))
    assert (np.diff(train) > 0).all() and (np.diff(val) > 0).all()
    assert [int((labels[val] == c).sum()) for c in "abc"] == [12, 6, 2]  # the data's class balance
    assert (split_validation(labels, 0.2, 3)[1] == val).all()
    assert not (split_validation(labels, 0.2, 4)[1] == val).all()


def test_split_size_is_a_fraction_or_a_count():
    labels = np.arange(50) % 5
    assert len(split_validation(labels, 0.1, 0)[1]) == 5
    assert len(split_validation(labels, 7, 0)[1]) == 7  # 7 places over 5 classes of 10: two classes give 2
    assert len(split_validation(labels, 0, 0)[1]) == 0
    for size in (50, 1.0 * 50):
        with pytest.raises(UserError, match=r"validation size 50(\.0)?: expected a fraction in \[0, 1\) or a count below the 50"):
            split_validation(labels, size, 0)


def test_split_keeps_every_class_in_training_while_it_can():
    labels = np.array([0] * 8 + [1, 2])  # shares 4.0, 0.5, 0.5: by remainder alone class 1 would go whole
    train, val = split_validation(labels, 5, seed=0)
    assert len(val) == 5 and set(labels[train]) == {0, 1, 2}
    assert (labels[val] == 0).all()


def test_leftover_places_go_to_the_largest_remainders():
    quota = classify._places_per_class(np.array([5, 3, 2]), 4)  # exact shares 2.0, 1.2, 0.8
    assert quota.tolist() == [2, 1, 1]


# ------------------------------------------------------------------------------ evaluation pass


class _Fixed(torch.nn.Module):
    """A 'model' whose logits are its inputs (B, C)."""

    def forward(self, x, state=None, lengths=None):
        return x, None


def test_predict_logits_keeps_batch_order_and_restores_train_mode():
    model = _Fixed().train()
    logits = torch.tensor([[2.0, 0, 0], [0, 3.0, 0], [1.0, 0, 0]])
    batches = [Batch(logits[:2], torch.tensor([0, 1])), Batch(logits[2:], torch.tensor([2]))]
    got, targets = predict_logits(model, batches)
    assert torch.equal(got, logits) and targets.tolist() == [0, 1, 2] and model.training
    empty, no_targets = predict_logits(model, [])
    assert empty.shape == (0, 0) and no_targets.shape == (0,)


def test_evaluation_report_loss_and_confusion():
    logits, targets = torch.tensor([[2.0, 0, 0], [0, 3.0, 0], [1.0, 0, 0]]), torch.tensor([0, 1, 2])
    r = evaluation_report(logits, targets, ["a", "b", "c"])
    assert r["confusion"] == [[1, 0, 0], [0, 1, 0], [1, 0, 0]] and r["accuracy"] == pytest.approx(2 / 3)
    assert r["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, targets)))
    assert r["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    empty = evaluation_report(torch.zeros(0, 0), torch.zeros(0, dtype=torch.int64), ["a", "b"])
    assert math.isnan(empty["loss"]) and empty["confusion"] == [[0, 0], [0, 0]]


def test_flat_report_names_each_class():
    r = evaluation_report(torch.tensor([[1.0, 0], [0, 1.0]]), torch.tensor([0, 0]), ["neg", "pos"])
    flat = flat_report(r)
    assert list(flat)[:3] == ["loss", "accuracy", "macro_f1"] and flat["confusion"] == [[1, 1], [0, 0]]
    assert flat["recall_neg"] == 0.5 and flat["support_neg"] == 2 and flat["precision_pos"] == 0.0


def test_task_evaluate_reports_the_summary_only():
    batches = [Batch(torch.tensor([[2.0, 0], [0, 1.0]]), torch.tensor([0, 0]))]
    for task in (textclass.TASK, seqclass.TASK):
        assert set(task.evaluate(_Fixed(), batches)) == {"loss", "accuracy", "macro_f1"}


def test_both_facades_share_the_base():
    for facade in (textclass.TextClassifier, seqclass.SequenceClassifier):
        assert issubclass(facade, classify.Classifier) and isinstance(facade.task, classify.ClassificationTask)
        with pytest.raises(UserError, match=f"this {facade.__name__} has no model yet: call fit"):
            facade()._require()
