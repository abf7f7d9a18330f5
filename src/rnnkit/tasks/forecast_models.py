"""Forecasting pieces beside the task: the segment-wise recurrent model and the baselines
(their metrics live in :mod:`rnnkit.metrics`).

Shapes: look-back window ``x`` (B, L, C), forecast ``y`` (B, K, C); ``W`` segment length,
``N = L / W`` input segments, ``M = K / W`` output segments, ``d`` hidden width.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from rnnkit.errors import UserError
from rnnkit.recurrent import Recurrent


# ----------------------------------------------------------------------------- SegRNN


@dataclass
class SegRNNConfig:
    """SegRNN (Lin et al. 2023): segment-wise GRU encoder + parallel multi-step decoding."""

    lookback: int = 720  # L
    horizon: int = 96  # K
    channels: int = 7  # C
    segment_length: int = 48  # W; L and K are padded up to multiples of W
    hidden_size: int = 512  # d
    cell: str = "gru"
    dropout: float = 0.0  # on the decoder output before the segment projection
    norm: str = "last"  # window normalisation: last (x - x_L) | revin ((x - mean) / std of the window)

    def to_dict(self) -> dict:
        return asdict(self)


class SegRNN(nn.Module):
    """Channel-independent segment RNN with position-embedding ("PMF") parallel decoding.

    1. Window normalisation per channel, undone on the forecast: last value ``x' = x - x_L``,
       or ``norm="revin"`` (RevIN without affine terms, Kim et al. 2022; SegRNN's code
       has it as an option): ``x' = (x - mean) / sqrt(var + 1e-5)`` over the window's L steps.
    2. Each channel's window (L,) is cut into N segments of W steps and embedded:
       ``e_n = ReLU(W_e s_n + b_e)``, (B*C, N, d); one recurrent pass over the N segments
       gives the final state ``h_N`` (1, B*C, d).
    3. Decoding runs once, in parallel, for the M output segments: the input of segment m of
       channel c is ``[pos_m ; chan_c]`` (d/2 + d/2), with ``h_N`` as the initial state; one
       recurrent step each, then ``Linear(d, W)`` gives the W values of that segment.
    The same recurrent layer serves encoder and decoder, as in the paper.

    ``forward(x (B, L, C), state=None, lengths=None) -> (y (B, K, C), None)``.
    """

    def __init__(self, config: SegRNNConfig):
        super().__init__()
        self.config = c = config
        d, W = c.hidden_size, c.segment_length
        self.n_in = -(-c.lookback // W)  # ceil(L / W)
        self.n_out = -(-c.horizon // W)
        self.embed = nn.Sequential(nn.Linear(W, d), nn.ReLU())
        self.rnn = Recurrent(c.cell, d, d, 1)
        self.pos = nn.Parameter(torch.randn(self.n_out, d // 2))
        self.chan = nn.Parameter(torch.randn(c.channels, d - d // 2))
        self.drop = nn.Dropout(c.dropout)
        self.project = nn.Linear(d, W)

    def state_layers(self) -> list:
        """[None]: no state is carried from one window to the next."""
        return [None]

    def forward(self, x: Tensor, state=None, lengths=None):
        c, W = self.config, self.config.segment_length
        B, L, C = x.shape
        shift, scale = self._window_stats(x)  # (B, 1, C) each
        z = ((x - shift) / scale).permute(0, 2, 1).reshape(B * C, L)  # (B*C, L)
        pad = self.n_in * W - L
        if pad:  # left-pad with the first value so segments align with the forecast origin
            z = torch.cat([z[:, :1].expand(-1, pad), z], dim=1)
        seg = self.embed(z.view(B * C, self.n_in, W))  # (B*C, N, d)
        _, h = self.rnn(seg)  # (1, B*C, d), or (h, c) for lstm
        M = self.n_out
        dec_in = torch.cat([
            self.pos.unsqueeze(0).expand(C, -1, -1),  # (C, M, d/2)
            self.chan.unsqueeze(1).expand(-1, M, -1),  # (C, M, d/2)
        ], dim=-1)  # (C, M, d)
        dec_in = dec_in.unsqueeze(0).expand(B, -1, -1, -1).reshape(B * C * M, 1, -1)  # (B*C*M, 1, d)
        if isinstance(h, tuple):
            h0 = tuple(part.repeat_interleave(M, dim=1) for part in h)
        else:
            h0 = h.repeat_interleave(M, dim=1)  # (1, B*C*M, d)
        out, _ = self.rnn(dec_in, h0)  # (B*C*M, 1, d)
        y = self.project(self.drop(out[:, 0]))  # (B*C*M, W)
        y = y.view(B, C, M * W)[:, :, : c.horizon].permute(0, 2, 1)  # (B, K, C)
        return y * scale + shift, None

    def _window_stats(self, x: Tensor):
        """(shift, scale), each (B, 1, C), constants to the gradient (as in RevIN)."""
        if self.config.norm == "revin":
            mean = x.mean(1, keepdim=True)
            std = torch.sqrt(x.var(1, keepdim=True, unbiased=False) + 1e-5)
            return mean.detach(), std.detach()
        return x[:, -1:, :].detach(), x.new_ones(())


# ----------------------------------------------------------------------------- baselines


def naive_forecast(x: np.ndarray, horizon: int) -> np.ndarray:
    """Last value repeated: x (N, L, C) -> (N, K, C)."""
    return np.repeat(x[:, -1:, :], horizon, axis=1)


def seasonal_naive_forecast(x: np.ndarray, horizon: int, period: int) -> np.ndarray:
    """y_hat[k] = x[L - m + (k mod m)]: the last full season repeated. x (N, L, C) -> (N, K, C)."""
    L = x.shape[1]
    if not 1 <= period <= L:
        raise UserError(f"seasonal period {period} must be between 1 and the look-back {L}")
    k = np.arange(horizon)
    return x[:, L - period + (k % period), :]


def autocorrelation(x: np.ndarray, lag: int) -> float:
    """r_k = sum_t (x_t - mean)(x_{t+k} - mean) / sum_t (x_t - mean)^2 of a 1-D series (R's acf)."""
    d = np.asarray(x, dtype=np.float64) - np.mean(x)
    return float((d[lag:] * d[: len(d) - lag]).sum() / (d * d).sum())


def is_seasonal(x: np.ndarray, period: int) -> bool:
    """The M4 benchmarks' seasonality test: a series of at least three seasons is seasonal when
    |r_m| > 1.645 sqrt((1 + 2 sum_{k<m} r_k^2) / T), the 90% limit of the lag-m autocorrelation."""
    if period < 2 or len(x) < 3 * period:
        return False
    r = np.array([autocorrelation(x, k) for k in range(1, period + 1)])
    return bool(abs(r[-1]) > 1.645 * np.sqrt((1 + 2 * np.sum(r[:-1] ** 2)) / len(x)))


def seasonal_indices(x: np.ndarray, period: int) -> np.ndarray:
    """Classical multiplicative decomposition (R's ``decompose``): the centred moving average of
    one season (2 x m for even m) as trend, the series over it, averaged per position of the
    season and normalised to mean 1. -> (m,) indices, index j for steps t with t mod m = j."""
    x = np.asarray(x, dtype=np.float64)
    weights = np.r_[0.5, np.ones(period - 1), 0.5] / period if period % 2 == 0 else np.ones(period) / period
    trend = np.full(len(x), np.nan)
    smooth = np.convolve(x, weights, mode="valid")
    trend[len(weights) // 2 : len(weights) // 2 + len(smooth)] = smooth
    ratio, position = x / trend, np.arange(len(x)) % period
    figure = np.array([np.nanmean(ratio[position == j]) for j in range(period)])
    return figure / figure.mean()


def naive2_forecast(x: np.ndarray, horizon: int, period: int) -> np.ndarray:
    """M4's Naive2: the last value of the seasonally adjusted series (:func:`seasonal_indices`,
    applied when :func:`is_seasonal`), reseasonalised over the horizon. x (T,) -> (K,)."""
    x = np.asarray(x, dtype=np.float64)
    if not is_seasonal(x, period):
        return np.repeat(x[-1], horizon)
    index = seasonal_indices(x, period)
    last = x[-1] / index[(len(x) - 1) % period]
    return last * index[(len(x) + np.arange(horizon)) % period]


def naive_interval(x: np.ndarray, horizon: int, z: float = 1.959963984540054) -> tuple[np.ndarray, np.ndarray]:
    """The naive forecast's interval, as M4's Naive1 benchmark: last value +- z sigma sqrt(k),
    sigma^2 the mean squared one-step change in sample. x (T,) -> (lower (K,), upper (K,))."""
    sigma = float(np.sqrt(np.mean(np.diff(np.asarray(x, dtype=np.float64)) ** 2)))
    half = z * sigma * np.sqrt(np.arange(1, horizon + 1))
    return x[-1] - half, x[-1] + half


def conformal_half_widths(residuals: np.ndarray, level: float) -> np.ndarray:
    """Split-conformal interval half-widths per horizon step from calibration residuals
    (n, K) = actual - forecast on windows the model never trained on: the ceil((n + 1) level)-th
    smallest |residual| of each step (Vovk et al.; Lei et al. 2018). The interval forecast +- q_k
    then covers a new window's value with probability at least ``level`` when the windows are
    exchangeable. -> (K,); infinite when n is too small for the level."""
    scores = np.sort(np.abs(np.asarray(residuals, dtype=np.float64)), axis=0)
    n = len(scores)
    rank = int(np.ceil((n + 1) * level))
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if rank > n:
        return np.full(scores.shape[1:], np.inf)
    return scores[rank - 1]


def detect_period(values: np.ndarray, max_lag: int) -> int:
    """Dominant period of a 1-D series from its autocorrelation (after removing a linear trend).

    The period is the lag of the highest autocorrelation after it first turns negative
    (skipping the short-lag correlation every smooth series has); 1 if none is found.
    """
    v = np.asarray(values, dtype=np.float64)
    t = np.arange(len(v))
    v = v - np.polyval(np.polyfit(t, v, 1), t)
    max_lag = min(max_lag, len(v) // 2)
    denom = float((v * v).sum())
    if max_lag < 2 or denom == 0:
        return 1
    acf = np.array([(v[:-k] * v[k:]).sum() / denom for k in range(1, max_lag + 1)])  # acf[k-1] = lag k
    negative = np.flatnonzero(acf < 0)
    if len(negative) == 0:
        return 1
    lags = np.arange(negative[0] + 1, max_lag + 1)  # lags after the first negative one
    if len(lags) == 0:
        return 1
    best = lags[np.argmax(acf[lags - 1])]
    return int(best) if acf[best - 1] > 0 else 1


class LinearBaseline:
    """Least squares from the flattened window (and a bias) to the K*C future values.

    ``channel_independent``: one shared map (L,) -> (K,) fitted on every channel's windows.
    ``normalize="last"``: each channel's window and targets are taken relative to the window's
    last value (NLinear, Zeng et al. 2023; implies channel-independent).
    ``ridge``: penalty ``ridge * mean(diag(A^T A))`` on the weights; with validation windows
    passed to :meth:`fit` it is chosen from ``RIDGE_GRID`` by validation MSE instead. The bias is
    shrunk too, so with ``normalize="last"`` a strong penalty pulls the forecast toward the last
    value (the naive forecast). A tiny floor (1e-8) keeps the normal equations well posed.
    """

    RIDGE_GRID = (0.0, 1e-3, 1e-2, 0.1, 0.3, 1.0, 3.0, 10.0)

    def __init__(self, channel_independent: bool = False, normalize: str = "none", ridge: float = 0.0):
        if normalize not in ("none", "last"):
            raise ValueError(f"normalize: expected none or last, got {normalize!r}")
        self.channel_independent = channel_independent or normalize == "last"
        self.normalize, self.ridge = normalize, ridge
        self.coef = None

    def _design(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x (N, L, C) -> design matrix with a bias column, and the offset added back to outputs."""
        if self.channel_independent:
            x = x.transpose(0, 2, 1).reshape(-1, x.shape[1])  # (N*C, L)
        else:
            x = x.reshape(len(x), -1)  # (N, L*C)
        offset = x[:, -1:] if self.normalize == "last" else np.zeros((len(x), 1))
        return np.hstack([x - offset, np.ones((len(x), 1))]), offset

    def _targets(self, y: np.ndarray, offset: np.ndarray) -> np.ndarray:
        if self.channel_independent:
            return y.transpose(0, 2, 1).reshape(-1, y.shape[1]) - offset  # (N*C, K)
        return y.reshape(len(y), -1)  # (N, K*C)

    def fit(self, x: np.ndarray, y: np.ndarray, val: Optional[tuple] = None) -> "LinearBaseline":
        """Fit on windows x (N, L, C) -> y (N, K, C); ``val=(x_val, y_val)`` chooses the ridge."""
        A, offset = self._design(x)
        G, R = A.T @ A, A.T @ self._targets(y, offset)
        scale = np.trace(G) / len(G)

        def solve(ridge: float) -> np.ndarray:
            return np.linalg.solve(G + np.eye(len(G)) * (max(ridge, 1e-8) * scale), R)

        if val is None or len(val[0]) == 0:
            self.coef = solve(self.ridge)
            return self
        scores = []
        for ridge in self.RIDGE_GRID:
            self.coef, self.ridge = solve(ridge), ridge
            scores.append((float(np.mean((self.predict(val[0]) - val[1]) ** 2)), ridge))
        self.ridge = min(scores)[1]
        self.coef = solve(self.ridge)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        N, _, C = x.shape
        A, offset = self._design(x)
        out = A @ self.coef
        if self.channel_independent:
            return (out + offset).reshape(N, C, -1).transpose(0, 2, 1)  # (N, K, C)
        return out.reshape(N, -1, C)
