"""Per-channel scalers for series: fitted on the training part only, stored in the artifact.

Values are arrays ``(T, C)`` (or anything whose last axis is the C channels).

* ``standard``: ``z = (x - mean) / std`` with the population std (ddof=0, as scikit-learn);
* ``minmax``:   ``z = (x - min) / (max - min)``;
* ``log``:      ``z = (ln x - mean(ln x)) / std(ln x)`` for positive series with multiplicative
  growth and seasonality (airline passengers); values <= 0 are a UserError;
* ``none``:     the identity (metrics "on scaled data" are then in original units).

A channel that is constant on the training part gets scale 1, so transforms never divide by 0.
Values too large to scale (statistics that overflow float64, scaled values beyond float32's
range, as 1e308 gives) are a UserError naming the column.
"""

from __future__ import annotations

import numpy as np

from rnnkit.data.numbers import FLOAT32_MAX
from rnnkit.errors import UserError

SCALERS = ("standard", "minmax", "log", "none")


class Scaler:
    """``z = (x - shift) / scale`` per channel; ``kind`` says how shift/scale were fitted."""

    def __init__(self, kind: str = "standard", shift=None, scale=None):
        if kind not in SCALERS:
            raise UserError(f"scaler must be one of {', '.join(SCALERS)}, got {kind!r}")
        self.kind = kind
        self.shift = None if shift is None else np.asarray(shift, dtype=np.float64)
        self.scale = None if scale is None else np.asarray(scale, dtype=np.float64)

    def fit(self, values, where: str = "values", columns=()) -> "Scaler":
        """Fit on training values ``(T, C)``; returns self. ``where`` and ``columns`` name the
        data in errors."""
        raw = np.asarray(values, dtype=np.float64).reshape(-1, np.shape(values)[-1])
        x = self._pre(raw)
        with np.errstate(over="ignore", invalid="ignore"):
            if self.kind in ("standard", "log"):
                shift, scale = x.mean(0), x.std(0)
            elif self.kind == "minmax":
                shift, scale = x.min(0), x.max(0) - x.min(0)
            else:
                shift, scale = np.zeros(x.shape[1]), np.ones(x.shape[1])
        _check_scaled(np.stack([shift, scale]), raw, where, columns)
        self.shift, self.scale = shift, np.where(scale > 0, scale, 1.0)
        return self

    def _check(self):
        if self.shift is None:
            raise RuntimeError("Scaler.transform before fit")

    def _pre(self, x: np.ndarray) -> np.ndarray:
        if self.kind != "log":
            return x
        if (x <= 0).any():
            raise UserError(f"scaler 'log' needs positive values, found {x[x <= 0][0]:g}")
        return np.log(x)

    def transform(self, values, where: str = "values", columns=()) -> np.ndarray:
        """Scaled values, each finite in float32 (else a UserError naming ``where`` and the column)."""
        self._check()
        raw = np.asarray(values, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            z = (self._pre(raw) - self.shift) / self.scale
        _check_scaled(z, raw, where, columns)
        return z

    def inverse_transform(self, values) -> np.ndarray:
        self._check()
        x = np.asarray(values, dtype=np.float64) * self.scale + self.shift
        return np.exp(x) if self.kind == "log" else x

    def select(self, channels) -> "Scaler":
        """The scaler of a subset of channels (e.g. the targets among target + covariates)."""
        return Scaler(self.kind, self.shift[list(channels)], self.scale[list(channels)])

    def to_dict(self) -> dict:
        self._check()
        return {"kind": self.kind, "shift": self.shift.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Scaler":
        return cls(d["kind"], d["shift"], d["scale"])


def _check_scaled(z: np.ndarray, raw: np.ndarray, where: str, columns) -> None:
    """Every channel (last axis) of ``z`` is finite in float32; else name the first that is not."""
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(z) <= FLOAT32_MAX).reshape(-1, z.shape[-1]).all(0)  # (C,)
    if bad.any():
        j = int(np.argmax(bad))
        name = repr(columns[j]) if j < len(columns) else j
        largest = np.nanmax(np.abs(raw.reshape(-1, raw.shape[-1])[:, j]))
        raise UserError(f"{where}: column {name} holds values too large to scale into float32 "
                        f"(largest magnitude {largest:.3g})")
