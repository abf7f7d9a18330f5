"""Many series at once (a panel): ids and each series' values, of any lengths.

``Panel.ids`` (N,) names, ``Panel.values`` N float64 arrays (T_i,), ``Panel.times`` N arrays of
time labels (T_i,) (or None), ``Panel.covariates`` N float64 arrays (T_i, P) of the columns
``Panel.covariate_names`` (P may be 0). Readers:

- :func:`read_long_csv`: long format, one row per series and time (``unique_id, ds, y`` by
  default, covariate columns beside them); series may interleave, have any lengths and start
  anywhere; within a series the times must increase;
- :func:`read_m4_rows`: the M4 competition's wide CSV (one row per series: the id, then its
  values; shorter series padded with empty fields at the end of the row). The named dataset
  ``m4-hourly`` is its Hourly train and test files (:mod:`rnnkit.data.sources`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from rnnkit.data.numbers import parse_finite
from rnnkit.data.sources import read_csv_rows
from rnnkit.errors import UserError


@dataclass
class Panel:
    ids: list
    values: list  # N arrays (T_i,) float64
    times: Optional[list] = None  # N arrays (T_i,) of time labels
    covariates: Optional[list] = None  # N arrays (T_i, P) float64
    covariate_names: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def read_long_csv(path, id_column: str = "unique_id", time_column: str = "ds", target: str = "y",
                  covariates: Sequence[str] = ()) -> Panel:
    """A long-format CSV as a Panel, series in order of first appearance. Errors name the file,
    line and column: a missing column, a cell that is not a finite number, a time that does not
    increase within its series (ISO dates and numbers are compared; another label must differ from
    the one before it)."""
    header, rows = read_csv_rows(path)
    header = [h.strip() for h in header]
    wanted = [id_column, time_column, target, *covariates]
    for name in wanted:
        if name not in header:
            raise UserError(f"{path}: no column {name!r}; columns are: {', '.join(header)} "
                            "(--id-column, --time-column, --target and --covariates name them)")
    at = [header.index(name) for name in wanted]
    series: dict = {}
    for line, row in rows:
        cells = [row[j].strip() if j < len(row) else "" for j in at]
        if not cells[0]:
            raise UserError(f"{path} line {line}, column {id_column!r}: empty series id")
        numbers = [parse_finite(c, f"{path} line {line}, column {name!r}") for c, name in zip(cells[2:], wanted[2:])]
        entry = series.setdefault(cells[0], ([], [], []))
        if entry[0] and not _later(cells[1], entry[0][-1][0]):
            raise UserError(f"{path} line {line}, column {time_column!r}: time {cells[1]!r} of series {cells[0]!r} "
                            f"does not follow {entry[0][-1][0]!r} (line {entry[0][-1][1]}); expected increasing times")
        entry[0].append((cells[1], line))
        entry[1].append(numbers[0])
        entry[2].append(numbers[1:])
    ids = list(series)
    return Panel(ids, [np.array(series[i][1]) for i in ids], [np.array([t for t, _ in series[i][0]]) for i in ids],
                 [np.array(series[i][2], dtype=np.float64).reshape(len(series[i][1]), len(covariates)) for i in ids],
                 list(covariates))


def _later(time: str, before: str) -> bool:
    """Whether ``time`` comes after ``before``: as numbers when both are, else as ISO dates
    (their text sorts in time order), else any label other than the previous one."""
    try:
        return float(time) > float(before)
    except ValueError:
        pass
    if _ISO.match(time) and _ISO.match(before):
        return time > before
    return time != before


_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2})?)?$")


def read_m4_rows(path) -> Panel:
    """An M4 CSV (header ``"V1","V2",...``; V1 the id): every row's non-empty values in order.
    A gap inside a row, or a value that is not a finite number, is an error naming the cell."""
    ids, values = [], []
    for number, row in read_csv_rows(path)[1]:
        if not row or not row[0]:
            raise UserError(f"{path} line {number}: expected a series id in the first column")
        cells = row[1:]
        while cells and cells[-1] == "":
            cells.pop()
        if not cells:
            raise UserError(f"{path} line {number}: series {row[0]!r} has no values")
        values.append(np.array([parse_finite(c, f"{path} line {number}, column {k + 2}") for k, c in enumerate(cells)]))
        ids.append(row[0])
    if not ids:
        raise UserError(f"{path}: no series")
    return Panel(ids, values)


def m4_parts(name: str = "m4-hourly") -> tuple[Panel, Panel]:
    """(train, test) panels of a named M4 set, the same series in the same order."""
    from rnnkit.data import sources

    files = sources.resolve(name)
    train, test = read_m4_rows(files["train"]), read_m4_rows(files["test"])
    if train.ids != test.ids:
        raise UserError(f"{name}: the train and test files list different series")
    return train, test
