"""The forecast task's data: series -> scaled, chronologically split windows -> batches.

A CSV (time column + numeric columns; ``target`` and ``covariates`` pick them) is read into a
:class:`~rnnkit.data.series.Series` and split chronologically into train/val/test; the built-in
``sines`` panel (independent 2-sine series) is split by series. Scaling is fitted on the
training part only. Val/test windows may reach back into the previous part for their inputs
(the ETT protocol); their targets never leave their own part. Inputs are the C targets first,
then the covariates. Shapes: windows ``X`` (N, L, F), targets ``Y`` (N, K, C).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import torch

from rnnkit.data.batching import Batch
from rnnkit.data.scaling import Scaler
from rnnkit.data.series import Series, future_times, generate_sines, make_windows, read_csv, split_points
from rnnkit.errors import UserError, check_at_least

SINES = "sines"


@dataclass
class ForecastConfig:
    """Data and forecasting options of the forecast task (every field is a CLI flag)."""

    lookback: int = 50  # L: input steps per window
    horizon: int = 1  # K: steps forecast at once
    batch_size: int = 32
    target: str = ""  # comma-separated target columns ("": every numeric column)
    covariates: str = ""  # comma-separated input-only columns
    time_column: str = ""  # "": the first column
    sort_time: bool = False  # sort the rows by time (else times must increase); a repeated time is an error
    fill: str = "error"  # missing cells: error | ffill | interpolate | zero
    scaler: str = "standard"  # standard | minmax | none (fitted on the training part only)
    val: float = 0.1  # validation part: a fraction (< 1) or a number of steps
    test: float = 0.2  # test part (the last steps)
    rows: int = 0  # use only the first N rows of the file (0: all; the ETT protocol uses 14,400)
    architecture: str = "rnn"  # rnn | segrnn
    decoding: str = "direct"  # direct (K outputs at once) | autoregressive (K=1 fed back)
    dense_targets: bool = True  # rnn: train the K-ahead forecast at every input step, not only the last
    loss: str = field(default="mse", metadata={"choices": ("mse", "mae"),
                                               "help": "training loss (validation still selects on MSE)"})
    burn_in: int = 0  # dense targets: the first N input steps only warm the state (no loss on their forecasts)
    channel_independent: bool = False  # each channel its own univariate series, shared weights
    segment_length: int = 48  # segrnn: W steps per segment
    window_norm: str = field(default="none", metadata={"help": "none | last (rnn: forecasts relative to the last "
                                                               "seen value; segrnn always does) | revin (segrnn: "
                                                               "windows scaled by their own mean and std)"})
    period: int = 0  # seasonal naive period (0: detected on the training part)
    sines_series: str = "7000,2000,1000"  # sines: train,val,test series counts
    data_seed: int = 42  # sines generator seed

    def __post_init__(self):
        _choice("architecture", self.architecture, ("rnn", "segrnn"))
        _choice("decoding", self.decoding, ("direct", "autoregressive"))
        _choice("window_norm", self.window_norm, ("none", "last", "revin"))
        _choice("loss", self.loss, ("mse", "mae"))
        check_at_least(self, 1, ("lookback", "horizon", "batch_size", "segment_length"))
        check_at_least(self, 0, ("val", "test", "rows", "period"))
        if not 0 <= self.burn_in < self.lookback:
            raise ValueError(f"burn_in must be in [0, lookback={self.lookback}), got {self.burn_in}")


def _choice(name: str, value: str, valid: tuple) -> None:
    if value not in valid:
        raise UserError(f"{name}: expected one of {', '.join(valid)}, got {value!r}")



def column_names(text: str) -> list:
    """"a, b,c" -> ["a", "b", "c"] (empty names dropped)."""
    return [s.strip() for s in text.split(",") if s.strip()]


# ----------------------------------------------------------------------------- batches


class WindowBatches:
    """A BatchSource over windows X (N, L, F), Y (N, K, C): shuffled per (epoch, seed) or in order."""

    def __init__(self, X: np.ndarray, Y: np.ndarray, batch_size: int, shuffle: bool):
        self.X = torch.as_tensor(X, dtype=torch.float32)
        self.Y = torch.as_tensor(Y, dtype=torch.float32)
        self.batch_size, self.shuffle = batch_size, shuffle

    def __len__(self) -> int:
        return -(-len(self.X) // self.batch_size)

    def epoch(self, epoch: int, seed: int) -> Iterator[Batch]:
        n = len(self.X)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        else:
            order = torch.arange(n)
        for i in range(0, n, self.batch_size):
            idx = order[i : i + self.batch_size]
            yield Batch(self.X[idx], self.Y[idx])


# ----------------------------------------------------------------------------- data


@dataclass
class Splits:
    """Scaled windows of the three parts plus what the task state needs."""

    X: dict  # part -> (N, L, F)
    Y: dict  # part -> (N, K, C)
    scaler: Scaler  # over the F input channels (targets first)
    columns: list  # target names (C)
    covariates: list
    history: Series  # the whole unscaled series (inputs' channels), for predict()
    train_values: np.ndarray  # unscaled training targets (T_train, C) for MASE/period
    borders: Optional[list] = None  # [train_end, val_end, T] of a chronological split (None: sines panel)


def load_series(data: Union[str, Path, Series], config: ForecastConfig) -> tuple[Series, dict]:
    """A Series with the target columns first, then covariates; and the data info."""
    if isinstance(data, Series):
        series, info = data, {"name": "series"}
    else:
        path = _resolve(str(data))
        series = read_csv(path, config.time_column or None, None, config.fill, config.sort_time)
        info = {"name": str(data), "path": str(path)}
    covariates = column_names(config.covariates)
    targets = column_names(config.target) or [c for c in series.columns if c not in covariates]
    return series.select(targets + covariates), info


def _resolve(data: str) -> Path:
    path = Path(data)
    if path.is_file():
        return path
    try:
        from rnnkit.data import sources
    except ImportError:
        sources = None
    resolve = getattr(sources, "resolve", None)
    if resolve is None:
        raise UserError(f"{data}: no such file (or built-in dataset: {SINES})")
    return Path(resolve(data))


def split_series(series: Series, config: ForecastConfig, where: str = "data") -> Splits:
    """Chronological split, scaler fitted on train, windows per part (inputs may reach back)."""
    if config.rows:
        series = series[: config.rows]
    C = series.width - len(column_names(config.covariates))
    train_end, val_end = split_points(len(series), config.val, config.test)
    L, K = config.lookback, config.horizon
    if train_end < L + K:
        raise UserError(f"{where}: the training part has {train_end} steps, fewer than lookback {L} + horizon {K}; "
                        "expected a shorter lookback or horizon, or smaller val/test parts")
    scaler = Scaler(config.scaler).fit(series.values[:train_end], where, series.columns)
    z = scaler.transform(series.values, where, series.columns)  # (T, F)
    bounds = {"train": (0, train_end), "val": (train_end, val_end), "test": (val_end, len(series))}
    X, Y = {}, {}
    for part, (start, stop) in bounds.items():
        if stop - start >= config.horizon and (part == "train" or stop > start):
            try:
                X[part], Y[part] = make_windows(z, z[:, :C], config.lookback, config.horizon, start, stop)
            except UserError:
                if part == "train":
                    raise
    return Splits(X, Y, scaler, series.columns[:C], series.columns[C:], series, series.values[:train_end, :C],
                  [train_end, val_end, len(series)])


def sines_splits(config: ForecastConfig) -> Splits:
    """The tutorials' panel: independent series of L+K steps, split by series."""
    counts = [int(s) for s in column_names(config.sines_series)]
    if len(counts) != 3:
        raise UserError(f"sines_series: expected train,val,test counts, got {config.sines_series!r}")
    L, K = config.lookback, config.horizon
    x = generate_sines(sum(counts), L + K, config.data_seed)[..., None].astype(np.float64)  # (N, L+K, 1)
    ends = np.cumsum(counts)
    scaler = Scaler(config.scaler).fit(x[: ends[0]].reshape(-1, 1))
    z = scaler.transform(x)
    X, Y = {}, {}
    for part, (a, b) in zip(("train", "val", "test"), ((0, ends[0]), (ends[0], ends[1]), (ends[1], ends[2]))):
        if b > a:
            X[part], Y[part] = z[a:b, :L], z[a:b, L:]
    history = Series(x[ends[-1] - 1], None, ["value"])  # the last test series, for predict()
    return Splits(X, Y, scaler, ["value"], [], history, x[: ends[0], :L, 0].T.reshape(-1, 1))


def future_labels(time, n: int) -> np.ndarray:
    """The n time labels after ``time``: ISO dates continued at their spacing, integers counted
    on, else the step numbers 1..n."""
    dates = future_times(time, n)
    if dates is not None:
        return np.asarray(dates)
    time = np.asarray(time)
    if len(time) and np.issubdtype(time.dtype, np.integer):
        return time[-1] + np.arange(1, n + 1)
    return np.arange(1, n + 1)


def whole_windows(config: ForecastConfig, data, task_state: dict) -> tuple:
    """(X, Y, series): every window of ``data`` scaled with the trained scaler (the sines panel:
    all of its series)."""
    if isinstance(data, str) and data == SINES:
        sp = sines_splits(config)
        return np.concatenate(list(sp.X.values())), np.concatenate(list(sp.Y.values())), None
    series, info = load_series(data, config)
    where, trained = info.get("path", info["name"]), task_state["columns"] + task_state["covariates"]
    if series.columns != trained:
        raise UserError(f"{where}: columns {', '.join(series.columns)}; expected those the model was trained on: "
                        f"{', '.join(trained)}")
    z = Scaler.from_dict(task_state["scaler"]).transform(series.values, where, series.columns)
    try:
        X, Y = make_windows(z, z[:, : len(task_state["columns"])], config.lookback, config.horizon)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    return X, Y, series
