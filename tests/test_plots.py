"""PNG writers: training curves (a log loss axis only where the loss spans orders of magnitude), confusion matrix, digit grid."""

import math

from rnnkit.plots import curves_png, wants_log_scale


def test_log_scale_only_for_losses_spanning_more_than_twenty_fold():
    assert wants_log_scale([0.07, 0.01, 0.0012])  # a forecast's MSE: 58x
    assert not wants_log_scale([4.2, 2.0, 1.1])  # a char model's cross-entropy: 3.8x
    assert not wants_log_scale([0.5, -0.1, 0.001])  # a non-positive value cannot go on a log axis
    assert not wants_log_scale([])
    assert wants_log_scale([1.0, math.nan, 0.01])  # NaN entries are left out


def test_curves_png_draws_both_scales():
    for losses in ([0.07, 0.002, 0.001], [1.2, 1.0, 0.9]):
        history = {"train": [{"step": i + 1, "loss": v} for i, v in enumerate(losses)],
                   "eval": [{"step": 3, "loss": losses[-1], "accuracy": 0.5}]}
        assert curves_png(history, monitor="accuracy")[:8] == b"\x89PNG\r\n\x1a\n"


def test_confusion_and_digit_grid_pngs():
    import numpy as np

    from rnnkit.plots import confusion_png, digit_grid_png

    for labels in (["neg", "pos"], [str(k) for k in range(40)]):  # counts in the cells up to 30 classes
        confusion = np.arange(len(labels) ** 2).reshape(len(labels), len(labels))
        assert confusion_png(confusion, labels, "val: accuracy 0.5")[:8] == b"\x89PNG\r\n\x1a\n"
    assert confusion_png(np.zeros((2, 2), dtype=np.int64), ["a", "b"])[:4] == b"\x89PNG"  # no examples
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    assert digit_grid_png(images, ["1 -> 7", "2 -> 3", "4 -> 9"])[:4] == b"\x89PNG"
    assert digit_grid_png(images[:0], [])[:4] == b"\x89PNG"
