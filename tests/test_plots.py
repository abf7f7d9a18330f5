"""Training-curve PNGs: a log loss axis only where the loss spans orders of magnitude."""

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
