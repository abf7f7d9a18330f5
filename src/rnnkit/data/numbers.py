"""Numbers read from data files: the one check every loader uses.

A value is a finite number (``inf``, ``-inf``, ``1e999`` and, where missing values are not
allowed, ``nan`` are refused), and, where it is kept in float32, within float32's range
(``|x| <= 3.4e38``; ``1e39`` would become ``inf``). Errors name the file, the line and the
column: ``FILE line N, column C: expected a finite number, found 'inf'``.
"""

from __future__ import annotations

import math
from typing import Collection

import numpy as np

from rnnkit.errors import UserError

FLOAT32_MAX = float(np.finfo(np.float32).max)


def cell_where(path, line: int, column) -> str:
    """``FILE line N, column C`` (C a header name, quoted, or a 1-based number)."""
    return f"{path} line {line}, column {column!r}"


def parse_finite(text: str, where: str, missing: Collection[str] = (), float32: bool = False) -> float:
    """``text`` as a float; NaN when its lower-cased, stripped form is in ``missing``.

    Anything else that is not a finite number (within float32's range with ``float32``) is a
    UserError starting with ``where`` (see :func:`cell_where`)."""
    cell = text.strip()
    if cell.lower() in missing:
        return math.nan
    shown = repr(text if len(text) <= 40 else text[:37] + "...")
    try:
        value = float(cell)
    except ValueError:
        raise UserError(f"{where}: expected a number, found {shown}") from None
    if not math.isfinite(value):
        raise UserError(f"{where}: expected a finite number, found {shown}")
    if float32 and abs(value) > FLOAT32_MAX:
        raise UserError(f"{where}: expected a number within float32's range (|x| <= 3.4e38), found {shown}")
    return value


def check_finite_array(x: np.ndarray, where: str, allow_nan: bool = True) -> None:
    """Every value of a float array is finite in float32 (NaN too unless ``allow_nan``, where
    NaN marks a missing value); else a UserError naming the first bad index."""
    if not np.issubdtype(x.dtype, np.floating):
        return
    with np.errstate(invalid="ignore", over="ignore"):
        bad = np.abs(x) > FLOAT32_MAX if allow_nan else ~(np.abs(x) <= FLOAT32_MAX)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        missing = " (NaN marks a missing value)" if allow_nan else ""
        raise UserError(f"{where}: value {x[index]} at index {index} is not a finite float32 number; "
                        f"expected finite numbers{missing}")
