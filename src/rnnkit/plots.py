"""PNG writers (matplotlib, Agg backend: no display needed): every figure rnnkit draws."""

from __future__ import annotations

import io
from typing import Optional, Sequence

import matplotlib
import numpy as np

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


def plot_forecast(path, history: np.ndarray, forecast: np.ndarray, truth: Optional[np.ndarray] = None,
                  columns=(), origin: Optional[int] = None, times: Optional[tuple] = None) -> None:
    """PNG: history (T_h, C) then forecast (K, C) (and the truth (K, C)) per target channel.

    The x axis counts steps (the forecast starts at ``origin``, default T_h), or shows dates
    when ``times`` = (T_h, K) datetime64 arrays for the history and the forecast."""
    history, forecast = np.atleast_2d(history), np.atleast_2d(forecast)
    C = forecast.shape[1]
    t0 = len(history) if origin is None else origin
    fig, axes = plt.subplots(C, 1, figsize=(9, 2.6 * C), squeeze=False)
    th, tf = np.arange(t0 - len(history), t0), np.arange(t0, t0 + len(forecast))
    if times is not None:
        th, tf = times
    for j, ax in enumerate(axes[:, 0]):
        ax.plot(th, history[:, j], color="0.3", lw=1, label="history")
        if truth is not None:
            ax.plot(tf, np.atleast_2d(truth)[:, j], color="tab:green", lw=1.2, label="truth")
        ax.plot(tf, forecast[:, j], color="tab:red", lw=1.5, label="forecast")
        ax.set_title(columns[j] if j < len(columns) else f"channel {j}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        if times is not None:  # date ticks that do not collide ("Feb", "05", ... with the year once)
            import matplotlib.dates as mdates

            locator = mdates.AutoDateLocator()
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confusion_png(confusion: np.ndarray, labels: Sequence[str], title: str = "") -> bytes:
    """A (C, C) confusion matrix (rows: true class, columns: predicted; ``labels`` (C,)) as PNG bytes.

    Colours follow log(1 + count), so the off-diagonal mistakes stay visible beside a large
    diagonal; up to 30 classes also print their counts in the cells.
    """
    confusion = np.asarray(confusion)
    c = len(labels)
    fig, ax = plt.subplots(figsize=(2.5 + 0.5 * c, 2.2 + 0.5 * c))
    ax.imshow(np.log1p(confusion), cmap="Blues")
    long_names = c > 12 or max((len(str(name)) for name in labels), default=0) > 3
    ax.set_xticks(range(c), labels, rotation=(90 if c > 12 else 45) if long_names else 0, ha="right" if long_names else "center")
    ax.set_yticks(range(c), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if c <= 30:
        top = confusion.max() if confusion.size else 0
        for i in range(c):
            for j in range(c):
                ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if confusion[i, j] > max(top, 1) / 3 else "black")
    ax.set_title(title)
    fig.tight_layout()
    return figure_png(fig)


def digit_grid_png(images: np.ndarray, captions: Sequence[str], columns: int = 8) -> bytes:
    """Greyscale images (N, 28, 28) uint8 in a grid, each with its caption (e.g. "true -> predicted")."""
    n = max(1, len(images))
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.1, rows * 1.25), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < len(images):
            ax.imshow(images[k], cmap="gray", vmin=0, vmax=255)
            ax.set_title(captions[k], fontsize=8)
    fig.tight_layout()
    return figure_png(fig)


def attention_png(panels: Sequence[tuple]) -> bytes:
    """Attention weights as heat maps, one panel per sentence: ``panels`` of (source tokens (S,),
    output tokens (T,), weights (T, S)); rows are output tokens, columns source tokens."""
    panels = list(panels) or [([], [], np.zeros((0, 0)))]
    width = sum(1.5 + 0.3 * min(max(len(p[0]), 1), 60) for p in panels)
    fig, axes = plt.subplots(1, len(panels), squeeze=False, figsize=(width, 1.5 + 0.25 * min(max(len(p[1]) for p in panels), 60)))
    for ax, (source, output, weights) in zip(axes.flat, panels):
        ax.imshow(np.asarray(weights, dtype=float), cmap="Greys", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(source)), source, rotation=90, fontsize=8)
        ax.set_yticks(range(len(output)), output, fontsize=8)
    fig.tight_layout()
    return figure_png(fig)


def tuning_png(trials: Sequence[tuple], minimize: bool, metric: str, importances: Optional[dict] = None) -> bytes:
    """A hyperparameter search as PNG bytes: each trial's value by trial number (pruned trials at
    their last reported value, greyed) with the best-so-far line of the completed ones, and, when
    given, the parameters' importances as bars.

    trials: ``(number, value, state)`` with state ``"complete"`` or ``"pruned"``.
    """
    fig, axes = plt.subplots(1, 2 if importances else 1, figsize=(11 if importances else 6, 4), squeeze=False)
    ax = axes[0][0]
    for state, style in (("pruned", dict(color="0.6", marker="x")), ("complete", dict(color="C0", marker="o"))):
        pts = [(n, v) for n, v, s in trials if s == state]
        if pts:
            ax.scatter([n for n, _ in pts], [v for _, v in pts], label=state, **style)
    done = sorted((n, v) for n, v, s in trials if s == "complete")
    if done:
        pick = min if minimize else max
        best = [pick(v for _, v in done[: i + 1]) for i in range(len(done))]
        ax.step([n for n, _ in done], best, where="post", color="C3", label="best so far")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    if wants_log_scale([v for _, v, _ in trials]):
        ax.set_yscale("log")
    ax.set_title("optimisation history")
    ax.grid(alpha=0.3)
    ax.legend()
    if importances:
        ax2 = axes[0][1]
        names = list(importances)[::-1]  # the most important on top
        ax2.barh(names, [importances[n] for n in names], color="C2")
        ax2.set_xlabel("importance (PED-ANOVA, sums to 1)")
        ax2.set_title("parameter importance")
    fig.tight_layout()
    return figure_png(fig)
