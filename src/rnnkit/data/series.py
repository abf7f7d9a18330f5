"""Series: a first-class time series (values + time index), CSV reading, windows, and ``sines``.

``Series.values`` is ``(T, C)`` float64, ``Series.time`` the T time labels (strings as read
from the file, or integers), ``Series.columns`` the C channel names.

Windows (``make_windows``) for look-back L and horizon K, with no look-ahead: window ``i``
has inputs ``x[i : i+L]`` and targets ``y[i+L : i+L+K]``; inputs never contain a target step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from rnnkit.data.numbers import cell_where, parse_finite
from rnnkit.data.sources import csv_records, read_text
from rnnkit.errors import UserError

FILL_POLICIES = ("error", "ffill", "interpolate", "zero")
_MISSING = {"", "na", "nan", "null", "none", "?"}


@dataclass
class Series:
    """values (T, C) float64, time (T,) labels, columns (C,) names."""

    values: np.ndarray
    time: np.ndarray = None
    columns: list = field(default_factory=list)

    def __post_init__(self):
        v = np.asarray(self.values, dtype=np.float64)
        self.values = v.reshape(-1, 1) if v.ndim == 1 else v
        if self.time is None:
            self.time = np.arange(len(self.values))
        self.time = np.asarray(self.time)
        if not self.columns:
            self.columns = [f"x{i}" for i in range(self.values.shape[1])]
        if len(self.time) != len(self.values) or len(self.columns) != self.values.shape[1]:
            raise ValueError("Series: time, values and columns disagree in length")

    def __len__(self) -> int:
        return len(self.values)

    @property
    def width(self) -> int:
        return self.values.shape[1]

    def __getitem__(self, index: slice) -> "Series":
        if not isinstance(index, slice):
            raise TypeError("Series[...] takes a slice of time steps")
        return Series(self.values[index], self.time[index], list(self.columns))

    def split_before(self, point: int) -> tuple["Series", "Series"]:
        """Chronological split: steps ``[0, point)`` and ``[point, T)``."""
        return self[:point], self[point:]

    def select(self, columns: Sequence[str]) -> "Series":
        idx = [self.column_index(c) for c in columns]
        return Series(self.values[:, idx], self.time, list(columns))

    def column_index(self, name: str) -> int:
        if name not in self.columns:
            raise UserError(f"no column {name!r}; columns are: {', '.join(self.columns)}")
        return self.columns.index(name)


def parse_times(labels: Sequence) -> Optional[np.ndarray]:
    """ISO date/time labels ("1949-01", "1981-01-02", "2016-07-01 00:00:00") as datetime64, or
    None when any label is not one (row numbers, free text)."""
    labels = [str(x) for x in labels]
    if not labels or not all("-" in x[1:] for x in labels):  # "1949" alone would parse as a year
        return None
    try:
        return np.array(labels, dtype="datetime64")
    except ValueError:
        return None


def future_times(labels: Sequence, steps: int) -> Optional[list]:
    """The ``steps`` time labels after ``labels``, when these are ISO dates with one regular
    spacing; else None.

    The spacing is counted in calendar years or months when every label falls on the start
    of one ("1949-01-01", "1949-02-01" continue with "1949-03-01"), else as a fixed duration
    (days, hours, ...). The labels come back in the input's style (a space between date and
    time when the input had one).
    """
    t = parse_times(labels)
    if t is None or len(t) < 2:
        return None
    grid = t
    for unit in ("Y", "M"):
        coarse = t.astype(f"datetime64[{unit}]")
        if (coarse.astype(t.dtype) == t).all():
            grid = coarse
            break
    gaps = np.diff(grid)
    if gaps[-1] <= np.timedelta64(0) or not (gaps == gaps[-1]).all():
        return None
    future = (grid[-1] + gaps[-1] * np.arange(1, steps + 1)).astype(t.dtype)
    text = [str(x) for x in np.datetime_as_string(future)]
    if " " in str(labels[-1]):
        text = [x.replace("T", " ") for x in text]
    return text


def split_points(n: int, val: float, test: float) -> tuple[int, int]:
    """Chronological borders (train_end, val_end) for T=n steps.

    ``val`` / ``test`` are fractions (< 1) or step counts (>= 1); train is the rest.
    """
    n_val = int(val) if val >= 1 else int(round(n * val))
    n_test = int(test) if test >= 1 else int(round(n * test))
    n_train = n - n_val - n_test
    if n_train <= 0 or n_val < 0 or n_test < 0:
        raise UserError(f"split val={val}, test={test} leaves no training steps out of {n}")
    return n_train, n_train + n_val


# ----------------------------------------------------------------------------- CSV


def read_csv(path, time_column: Optional[str] = None, columns: Optional[Sequence[str]] = None,
             fill: str = "error", sort_time: bool = False) -> Series:
    """Read a CSV with a header row: one time column (default: the first) and numeric columns.

    A file of a single column has no time column: its values are the series, indexed by row.

    ``columns`` picks the numeric columns (default: all but the time column). Missing cells
    ("", NA, NaN, null, ?) are a UserError naming file/line/column unless ``fill`` is
    ffill | interpolate | zero; non-numeric text and non-finite numbers are always errors.
    Times must increase (ISO dates or numbers; other labels are not compared) unless
    ``sort_time``, which sorts the rows by time; a repeated time is always an error.
    """
    path = Path(path)
    if fill not in FILL_POLICIES:
        raise UserError(f"--fill must be one of {', '.join(FILL_POLICIES)}, got {fill!r}")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    records = csv_records(read_text(path).removeprefix("\ufeff"), path)
    header = [h.strip() for h in records[0][1]]
    if not time_column:  # the first column, unless it is the only one (then time is the row number)
        time_column = header[0] if len(header) > 1 else None
    if time_column is not None and time_column not in header:
        raise UserError(f"{path}: no time column {time_column!r}; columns are: {', '.join(header)}")
    columns = list(columns) if columns else [h for h in header if h != time_column]
    if not columns:
        raise UserError(f"{path}: no value columns besides the time column {time_column!r}")
    for c in columns:
        if c not in header:
            raise UserError(f"{path}: no column {c!r}; columns are: {', '.join(header)}")
    ti, idx = header.index(time_column) if time_column else None, [header.index(c) for c in columns]
    lines, times, values = [], [], np.empty((len(records) - 1, len(columns)))
    for r, (line, row) in enumerate(records[1:]):
        if len(row) != len(header):
            raise UserError(f"{path} line {line}: expected {len(header)} columns, found {len(row)}")
        lines.append(line)
        times.append(row[ti] if ti is not None else str(r))
        for j, (c, k) in enumerate(zip(columns, idx)):
            values[r, j] = _parse_cell(row[k], path, line, c, fill)
    if len(times) == 0:
        raise UserError(f"{path}: no data rows after the header")
    order = time_order(times, lines, path, sort_time) if ti is not None else np.arange(len(times))
    return Series(_fill_missing(values[order], fill), np.array(times)[order], columns)


def _parse_cell(cell: str, path, line: int, column: str, fill: str) -> float:
    where = cell_where(path, line, column)
    if fill == "error" and cell.strip().lower() in _MISSING:
        raise UserError(f"{where}: missing value (use --fill ffill|interpolate|zero to fill gaps)")
    return parse_finite(cell, where, _MISSING)


def _time_keys(times: list) -> Optional[list]:
    """Comparable keys of the time labels (ISO dates, else numbers), or None for other labels."""
    dates = parse_times(times)
    if dates is not None:
        return dates.astype(np.int64).tolist()
    try:
        keys = [float(t) for t in times]
    except ValueError:
        return None
    return keys if all(np.isfinite(keys)) else None


def time_order(times: list, lines: list, path, sort: bool = False) -> np.ndarray:
    """The row order of a series: as read, checked to increase in time (with ``sort``, sorted by
    time instead). A repeated time is always an error; both errors name the first pair of lines."""
    keys = _time_keys(times)
    labels = [t.strip() for t in times] if keys is None else keys
    first = {}
    for i, key in enumerate(labels):
        if key in first:
            raise UserError(f"{path} lines {lines[first[key]]} and {lines[i]}: time {times[i]!r} appears twice; "
                            "expected each time once")
        first[key] = i
    if keys is None:
        if sort:
            raise UserError(f"{path}: cannot sort by time: the labels are neither ISO dates nor numbers "
                            f"(e.g. {times[0]!r})")
        return np.arange(len(times))
    if sort:
        return np.argsort(np.asarray(keys), kind="stable")
    back = np.flatnonzero(np.diff(np.asarray(keys)) < 0)
    if back.size:
        i = int(back[0])
        raise UserError(f"{path} lines {lines[i]} and {lines[i + 1]}: time {times[i + 1]!r} comes before "
                        f"{times[i]!r}; expected increasing times (or --sort-time to sort the rows)")
    return np.arange(len(times))


def _fill_missing(values: np.ndarray, fill: str) -> np.ndarray:
    """Fill NaNs per column: ffill (leading gaps take the first value), linear interpolate, or 0."""
    if fill == "error" or not np.isnan(values).any():
        return values
    out = values.copy()
    for j in range(out.shape[1]):
        col, bad = out[:, j], np.isnan(out[:, j])
        if bad.all():
            raise UserError(f"column {j}: every value is missing")
        if fill == "zero":
            col[bad] = 0.0
        elif fill == "interpolate":
            t = np.arange(len(col))
            col[bad] = np.interp(t[bad], t[~bad], col[~bad])
        else:  # ffill
            first = np.flatnonzero(~bad)[0]
            col[:first] = col[first]
            for t in range(first + 1, len(col)):
                if bad[t]:
                    col[t] = col[t - 1]
    return out


# ----------------------------------------------------------------------------- windows


def make_windows(inputs: np.ndarray, targets: np.ndarray, lookback: int, horizon: int,
                 start: int = 0, stop: Optional[int] = None, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Sliding windows whose *targets* lie in steps ``[start, stop)``.

    inputs (T, F), targets (T, C) -> X (N, L, F), Y (N, K, C) with X[n] = inputs[s : s+L] and
    Y[n] = targets[s+L : s+L+K], s = start - L + n*stride. Inputs may reach back before ``start``
    (the standard ETT protocol lets val/test windows look into the previous part), never
    past the first target step.
    """
    stop = len(inputs) if stop is None else stop
    first = max(start - lookback, 0)
    n = (stop - horizon - lookback - first) // stride + 1
    if n <= 0:
        raise UserError(f"too few steps ({stop - first}) for look-back {lookback} + horizon {horizon}")
    s = first + stride * np.arange(n)  # window starts (N,)
    X = inputs[s[:, None] + np.arange(lookback)]  # (N, L, F)
    Y = targets[s[:, None] + lookback + np.arange(horizon)]  # (N, K, C)
    return X, Y


# ----------------------------------------------------------------------------- sines


def generate_sines(n_series: int, n_steps: int, seed: int = 42) -> np.ndarray:
    """The tutorials' series: two sines with random frequencies and offsets plus uniform noise.

    x_t = 0.5 sin((t - a1)(10 + 10 f1)) + 0.2 sin((t - a2)(20 + 20 f2)) + 0.1 (u_t - 0.5),
    t on linspace(0, 1, n_steps), a*, f*, u_t ~ U[0, 1). Returns (n_series, n_steps) float32.
    The noise variance 0.01/12 = 0.00083 is the MSE floor of any one-step forecast.
    Deterministic in ``seed`` (numpy's PCG64 generator).
    """
    rng = np.random.default_rng(seed)
    f1, f2, a1, a2 = rng.random((4, n_series, 1))
    t = np.linspace(0.0, 1.0, n_steps)
    x = 0.5 * np.sin((t - a1) * (f1 * 10 + 10)) + 0.2 * np.sin((t - a2) * (f2 * 20 + 20))
    x += 0.1 * (rng.random((n_series, n_steps)) - 0.5)
    return x.astype(np.float32)
