"""Many series at once (a panel): ids and each series' values, of any lengths.

``Panel.ids`` (N,) names, ``Panel.values`` N float64 arrays (T_i,). Readers:

- :func:`read_m4_rows`: the M4 competition's wide CSV (one row per series: the id, then its
  values; shorter series padded with empty fields at the end of the row). The named dataset
  ``m4-hourly`` is its Hourly train and test files (:mod:`rnnkit.data.sources`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rnnkit.data.numbers import parse_finite
from rnnkit.data.sources import read_csv_rows
from rnnkit.errors import UserError


@dataclass
class Panel:
    ids: list
    values: list  # N arrays (T_i,) float64

    def __len__(self) -> int:
        return len(self.ids)


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
