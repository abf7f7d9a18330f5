"""PNG writers (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import io
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


LOG_SCALE_RATIO = 20.0


def wants_log_scale(values) -> bool:
    """True when positive values span more than LOG_SCALE_RATIO: a regression loss that falls
    from 0.07 to 0.001 is a flat line near zero on a linear axis after the first steps."""
    values = [v for v in values if v == v]  # drop NaN
    return bool(values) and min(values) > 0 and max(values) / min(values) > LOG_SCALE_RATIO


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (80 dpi); the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def curves_png(history: dict, monitor: str = "loss") -> bytes:
    """Training curves as PNG bytes: train/val loss vs step, and the monitored val metric.

    history: ``{"train": [{"step", "loss", ...}], "eval": [{"step", "<metric>", ...}]}``.
    """
    train, evals = history.get("train", []), history.get("eval", [])
    extra = monitor != "loss" and any(monitor in e for e in evals)
    fig, axes = plt.subplots(1, 2 if extra else 1, figsize=(10 if extra else 6, 4), squeeze=False)
    ax = axes[0][0]
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], ".-" if len(train) < 20 else "-", label="train loss")
    val = [e for e in evals if "loss" in e]
    if val:
        ax.plot([e["step"] for e in val], [e["loss"] for e in val], "o-", label="val loss")
    ax.set_xlabel("step")
    losses = [r["loss"] for r in train] + [e["loss"] for e in val]
    log = wants_log_scale(losses)
    if log:
        ax.set_yscale("log")
    ax.set_ylabel("loss (log scale)" if log else "loss")
    ax.grid(alpha=0.3)
    if train or val:
        ax.legend()
    if extra:
        ax2 = axes[0][1]
        pts = [e for e in evals if monitor in e]
        ax2.plot([e["step"] for e in pts], [e[monitor] for e in pts], "o-", color="C2", label=f"val {monitor}")
        ax2.set_xlabel("step")
        ax2.set_ylabel(monitor)
        ax2.grid(alpha=0.3)
        ax2.legend()
    fig.tight_layout()
    return figure_png(fig)
