"""Time-series forecasting: look-back window L -> the next K values of C target channels.

Data (:mod:`rnnkit.tasks.forecast_data`): a CSV read into a :class:`~rnnkit.data.series.Series`
and split chronologically into train/val/test, or the built-in ``sines`` panel (independent
2-sine series split by series, 7,000/2,000/1,000); scaling fitted on the training part only and
stored in the task state. Inputs are the C targets first, then the covariates.

Models (``ForecastModel`` wraps one of them):

* ``rnn``: ``SequenceModel`` (recurrent stack) with a per-step head of K*C outputs: at every
  input step t it forecasts steps t+1..t+K (``dense_targets``, the seq2seq training of the
  tutorials; only the last step's forecast is used at prediction time), or K*C from the last
  step only. ``decoding="autoregressive"`` trains K=1 and feeds each forecast back with the
  state carried, one step at a time.
* ``segrnn``: :class:`~rnnkit.tasks.forecast_models.SegRNN` for long look-backs.

``channel_independent`` runs each of the C channels as its own univariate series through
shared weights (no covariates then).

Metrics: ``mse``/``mae`` (and ``mse_last``, the last horizon step) on scaled data; on the
original scale MAE/RMSE/sMAPE/MASE; beside them the naive, seasonal naive, linear and NLinear baselines
on the same windows.

Façade: :class:`Forecaster` — ``fit(series)``, ``predict(n)``, ``historical_forecasts``,
``evaluate``; ``rnnkit.load(DIR)`` returns one.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from rnnkit import metrics
from rnnkit.data.batching import Batch
from rnnkit.data.scaling import Scaler
from rnnkit.data.series import Series, future_times, make_windows, parse_times
from rnnkit.errors import UserError
from rnnkit.models import ModelConfig, SequenceModel
from rnnkit.tasks import forecast_models as fm
from rnnkit.tasks.base import PreparedData, Task
from rnnkit.tasks.forecast_data import (SINES, ForecastConfig, Splits, WindowBatches, future_labels, load_series, sines_splits,
                                        split_series, whole_windows)

# ----------------------------------------------------------------------------- the model


def model_spec(config: ForecastConfig, channels: int, inputs: int) -> dict:
    """The JSON-able description of a ForecastModel (beside ModelConfig in the task state)."""
    if config.channel_independent and inputs != channels:
        raise UserError("channel_independent forecasting cannot use covariates")
    if config.decoding == "autoregressive" and inputs != channels:
        raise UserError("autoregressive decoding needs no covariates (their future is unknown)")
    if config.architecture == "segrnn" and inputs != channels:
        raise UserError("the segrnn architecture is channel-independent: it cannot use covariates")
    if config.window_norm == "revin" and config.architecture != "segrnn":
        raise UserError("window_norm revin is for the segrnn architecture (rnn: none or last)")
    auto = config.decoding == "autoregressive"
    return {"architecture": config.architecture, "horizon": config.horizon, "lookback": config.lookback,
            "channels": channels, "inputs": inputs, "decoding": config.decoding,
            "step_horizon": 1 if auto else config.horizon,
            "dense_targets": bool(config.dense_targets or auto),
            "burn_in": config.burn_in if (config.dense_targets or auto) and config.architecture == "rnn" else 0,
            "channel_independent": bool(config.channel_independent), "segment_length": config.segment_length,
            "window_norm": config.window_norm}


class ForecastModel(nn.Module):
    """The trained network plus the decoding rule.

    ``forward(x (B, L, F)) -> (outputs, None)`` is what the loss sees: (B, L, K', C) per-step
    forecasts when dense (in training, (B, L - burn_in, K', C): the last steps only), else
    (B, K', C) (K' = K, or 1 when autoregressive).
    ``forecast(x (B, L, F), K) -> (B, K, C)`` is the prediction.
    """

    def __init__(self, spec: dict, model_config: ModelConfig):
        super().__init__()
        self.spec, self.model_config = spec, model_config
        self.net = self._build(spec, model_config)

    @staticmethod
    def _build(spec: dict, model_config: ModelConfig) -> nn.Module:
        if spec["architecture"] == "segrnn":
            return fm.SegRNN(fm.SegRNNConfig(
                spec["lookback"], spec["horizon"], spec["channels"], spec["segment_length"],
                model_config.hidden_size, model_config.cell, model_config.head_dropout,
                "revin" if spec.get("window_norm") == "revin" else "last"))
        return SequenceModel(model_config)

    def _flat(self, x: Tensor) -> Tensor:
        """(B, L, C) -> (B*C, L, 1) when channel-independent."""
        if not self.spec["channel_independent"] or self.spec["architecture"] == "segrnn":
            return x
        B, L, C = x.shape
        return x.permute(0, 2, 1).reshape(B * C, L, 1)

    def _unflat(self, y: Tensor, B: int) -> Tensor:
        """(B', ..., K'*C') -> (B, ..., K', C)."""
        s = self.spec
        C, Kp = s["channels"], s["step_horizon"]
        if s["channel_independent"]:
            y = y.view(B, C, *y.shape[1:-1], Kp)  # (B, C, [L,] K')
            return y.movedim(1, -1)  # (B, [L,] K', C)
        return y.view(*y.shape[:-1], Kp, C)

    def state_layers(self) -> list:
        return self.net.state_layers()

    def forward(self, x: Tensor, state=None, lengths=None):
        if self.spec["architecture"] == "segrnn":
            return self.net(x)
        C, dense = self.spec["channels"], self.spec["dense_targets"]
        seen = x[..., :C]  # (B, L, C)
        if self.spec.get("window_norm") == "last":
            # inputs relative to the window's first value, outputs relative to the value seen at
            # each step: both causal, so step t's forecast never depends on steps after t
            x = torch.cat([seen - seen[:, :1], x[..., C:]], dim=-1)
        out, state = self.net(self._flat(x), state)  # (B', L, K'*C')
        if not dense:
            out = out[:, -1]  # (B', K'*C')
        y = self._unflat(out, x.shape[0])  # (B, [L,] K', C)
        if self.spec.get("window_norm") == "last":
            y = y + (seen.unsqueeze(2) if dense else seen[:, -1:])
        if dense and self.training and self.spec.get("burn_in", 0):
            y = y[:, self.spec["burn_in"] :]  # burn-in steps only warm the state
        return y, state

    @torch.no_grad()
    def forecast(self, x: Tensor, horizon: Optional[int] = None) -> Tensor:
        """(B, L, F) scaled window -> (B, K, C) scaled forecast; K beyond the trained horizon
        (inputs without covariates only) continues from the model's own forecasts."""
        s = self.spec
        K = horizon or s["horizon"]
        if s["decoding"] == "autoregressive" and s["architecture"] == "rnn" and s.get("window_norm") != "last":
            return self._autoregressive(x, K)
        chunks, done = [], 0
        while done < K:
            y, _ = self.forward(x)
            y = y[:, -1] if s["dense_targets"] and s["architecture"] == "rnn" else y  # (B, K, C)
            chunks.append(y)
            done += y.shape[1]
            if done < K:
                if x.shape[-1] != y.shape[-1]:
                    raise UserError(f"forecasting {K} > horizon {s['horizon']} steps needs a model without covariates")
                x = torch.cat([x, y], dim=1)[:, -x.shape[1] :]
        return torch.cat(chunks, dim=1)[:, :K]

    def _autoregressive(self, x: Tensor, K: int) -> Tensor:
        """Feed each one-step forecast back in with the recurrent state carried (no window re-run)."""
        B = x.shape[0]
        out, state = self.net(self._flat(x))  # (B', L, C')
        step = out[:, -1:]  # (B', 1, C')
        preds = [step]
        for _ in range(K - 1):
            out, state = self.net(step, state)
            step = out[:, -1:]
            preds.append(step)
        y = torch.cat(preds, dim=1)  # (B', K, C')
        if self.spec["channel_independent"]:
            return y.view(B, -1, K).permute(0, 2, 1)
        return y


def dense_targets(batch: Batch, step_horizon: int, channels: int) -> Tensor:
    """Per-step targets (B, L, K', C): at input step t the values t+1 .. t+K'.

    Built from the window's own target channels and the future targets; the inputs at
    steps <= t are the only inputs the causal RNN has seen when it emits step t's output.
    """
    L = batch.inputs.shape[1]
    full = torch.cat([batch.inputs[..., :channels], batch.targets], dim=1)  # (B, L+K, C)
    return full[:, 1:].unfold(1, step_horizon, 1)[:, :L].transpose(-1, -2)  # (B, L, K', C)


def forecast_loss(outputs: Tensor, batch: Batch, kind: str = "mse") -> Tensor:
    """Mean squared (``kind="mse"``) or absolute (``"mae"``) error; outputs (B, K', C), or dense
    outputs (B, L', K', C) against the last L' steps of :func:`dense_targets` (L' = L - burn_in
    in training)."""
    if outputs.dim() == 4:
        target = dense_targets(batch, outputs.shape[2], outputs.shape[3])[:, -outputs.shape[1] :]
    else:
        target = batch.targets[:, : outputs.shape[1]]
    error = outputs - target
    return error.abs().mean() if kind == "mae" else (error**2).mean()


def predict_windows(model: ForecastModel, X, horizon: Optional[int] = None, batch_size: int = 256) -> np.ndarray:
    """Scaled windows (N, L, F) -> scaled forecasts (N, K, C), in eval mode, ``batch_size``
    windows at a time (a SegRNN's activations grow with windows x channels x segments: 4,096
    ETTh1 windows at horizon 720 needed ~10 GB per network)."""
    was = model.training
    model.eval()
    X = torch.as_tensor(np.asarray(X), dtype=torch.float32)
    with torch.inference_mode():
        out = [model.forecast(X[i : i + batch_size], horizon) for i in range(0, len(X), batch_size)]
    model.train(was)
    return torch.cat(out).double().numpy()


# ----------------------------------------------------------------------------- the task


class ForecastTask(Task):
    """The forecast job: see the module docstring."""

    name = "forecast"
    Config = ForecastConfig
    serve_input = "history"

    def example_inputs(self, model_config: ModelConfig, task_state: dict, batch: int, time: int) -> Tensor:
        """(B, T, F) scaled windows; SegRNN's look-back is fixed at training."""
        spec = task_state["spec"]
        time = spec["lookback"] if spec["architecture"] == "segrnn" else time
        return torch.randn(batch, time, spec["inputs"])

    def export_axes(self, task_state: dict) -> tuple[dict, dict]:
        """Any look-back but SegRNN's; a time axis out for a dense-target RNN's per-step forecasts."""
        spec = task_state["spec"]
        inputs = {0: "batch"} if spec["architecture"] == "segrnn" else {0: "batch", 1: "time"}
        per_step = spec["architecture"] == "rnn" and bool(spec.get("dense_targets"))
        return inputs, {0: "batch", 1: "time"} if per_step else {0: "batch"}

    def splits(self, config: ForecastConfig, data) -> tuple[Splits, dict]:
        if isinstance(data, str) and data == SINES:
            return sines_splits(config), {"name": SINES, "seed": config.data_seed, "series": config.sines_series}
        series, info = load_series(data, config)
        return split_series(series, config, info.get("path", info["name"])), info

    def prepare_whole(self, config: ForecastConfig, data, task_state: dict) -> "WindowBatches":
        """Every window of ``data`` (all of it, no split), scaled with the trained scaler."""
        X, Y, _ = whole_windows(config, data, task_state)
        return WindowBatches(X, Y, config.batch_size, shuffle=False)

    def prepare(self, config: ForecastConfig, data, seed: int = 0) -> PreparedData:
        sp, info = self.splits(config, data)
        return prepared_from_splits(sp, config, info)

    def model_config(self, task_state: dict, config: ForecastConfig, model: ModelConfig) -> ModelConfig:
        spec = task_state["spec"]
        if model.bidirectional:
            raise UserError("forecasting needs a causal model: bidirectional must be false")
        ci = spec["channel_independent"]
        F_in, C = (1, 1) if ci else (spec["inputs"], spec["channels"])
        encoder = "identity" if model.encoder == "embedding" else model.encoder
        return replace(model, encoder=encoder, input_size=F_in, head="per_step",
                       output_size=spec["step_horizon"] * C)

    def build_model(self, model_config: ModelConfig, task_state: dict) -> ForecastModel:
        return ForecastModel(task_state["spec"], model_config)

    # -- CLI verbs ----------------------------------------------------------------------------
    def add_arguments(self, verb: str, parser) -> None:
        if verb == "predict":
            parser.add_argument("--data", help="CSV whose last lookback rows are the history (default: the training data's end)")
            parser.add_argument("--horizon", type=int, help="steps to forecast (default: the trained horizon)")
            parser.add_argument("--out", help="write the forecast as CSV here (default: print it)")
            parser.add_argument("--plot", help="write a PNG of history + forecast here")
        elif verb == "evaluate":
            parser.add_argument("--backtest", action="store_true",
                                help="rolling-origin historical forecasts over the test part")
            parser.add_argument("--stride", type=int, help="backtest: steps between origins (default: the horizon)")

    def run_verb(self, verb: str, facade: "Forecaster", args) -> Optional[int]:
        if verb == "predict":
            return _cli_predict(facade, args)
        if verb == "evaluate":
            data = getattr(args, "data", None) or facade.data_info.get("name")
            whole = args.split is None  # a file given with --data: all of its windows
            facade.attach(data, whole)
            report = facade.evaluate("all" if whole else args.split)
            extra = {f"{name}_{k}": v for name, m in report.items() if isinstance(m, dict) and name != "model"
                     for k, v in m.items()}
            extra.update({k: v for k, v in report["model"].items() if k.startswith("orig_")})
            if getattr(args, "backtest", False):
                bt = facade.backtest(stride=args.stride)
                extra.update({f"backtest_{k}": v for k, v in bt.items()})
            args.metrics = {**getattr(args, "metrics", {}), **extra}
            return None
        return super().run_verb(verb, facade, args)

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        return forecast_loss(outputs, batch)

    def loss_fn(self, config: ForecastConfig, model=None):
        return functools.partial(forecast_loss, kind=config.loss)

    # -- ensembles (rnnkit.ensembles) -------------------------------------------------------------
    def ensemble_key(self, task_state: dict) -> dict:
        """Members share columns, scaler and windows; each may be its own network (``spec``)."""
        return {k: v for k, v in task_state.items() if k != "spec"}

    def average_outputs(self, outputs: list, weights: Tensor) -> Tensor:
        """The weighted mean of the members' forecasts: M x (B, K, C) -> (B, K, C) (or their
        dense outputs (B, L, K', C), which need members of one output layout)."""
        shapes = sorted({tuple(y.shape) for y in outputs})
        if len(shapes) > 1:
            raise UserError(f"the members' outputs differ in shape ({' vs '.join(map(str, shapes))}): members with "
                            f"and without per-step outputs average only as forecasts (predict, evaluate)")
        y = torch.stack(outputs)  # (M, ...)
        return (weights.to(y).view(-1, *[1] * (y.dim() - 1)) * y).sum(0)

    def ensemble_evidence(self, models: list, batches: list) -> tuple:
        """``("squares", forecasts (M, D), truth (D,))``: the weights with the lowest validation MSE
        of the weighted mean forecast (least squares on the simplex)."""
        truth = np.concatenate([b.targets.double().numpy() for b in batches])  # (N, K, C)
        preds = np.stack([np.concatenate([predict_windows(m, b.inputs) for b in batches]) for m in models])
        return "squares", preds.reshape(len(models), -1), truth.reshape(-1)

    def evaluate(self, model: ForecastModel, batches) -> dict:
        """Forecast metrics on scaled data over a full pass: loss = mse (all K steps, C channels)."""
        if hasattr(batches, "epoch"):
            batches = batches.epoch(0, 0)
        preds, truth = [], []
        for batch in batches:
            preds.append(predict_windows(model, batch.inputs))
            truth.append(batch.targets.double().numpy())
        m = metrics.forecast_errors(np.concatenate(preds), np.concatenate(truth))
        return {"loss": m["mse"], **m}

    def load(self, artifact) -> "Forecaster":
        return Forecaster.from_artifact(artifact)


def prepared_from_splits(sp: Splits, config: ForecastConfig, info: dict) -> PreparedData:
    C, F_in = len(sp.columns), sp.X["train"].shape[-1]
    period = config.period or fm.detect_period(sp.train_values[:, 0], max_lag=config.lookback)
    tail = sp.history[-config.lookback :] if len(sp.history) >= config.lookback else sp.history
    state = {
        "columns": sp.columns, "covariates": sp.covariates, "scaler": sp.scaler.to_dict(),
        "lookback": config.lookback, "horizon": config.horizon, "period": int(period),
        "mase_scale": [metrics.mase_scale(sp.train_values[:, [j]], period) for j in range(C)],
        "spec": model_spec(config, C, F_in),
        "windows": {p: int(len(x)) for p, x in sp.X.items()},
        "borders": sp.borders,
        "history": {"values": tail.values.tolist(), "time": [str(t) for t in tail.time]},
    }
    part = lambda p, shuffle: WindowBatches(sp.X[p], sp.Y[p], config.batch_size, shuffle) if p in sp.X else None  # noqa: E731
    return PreparedData(train=part("train", True), val=part("val", False), test=part("test", False),
                        task_state=state, data_info=info)


TASK = ForecastTask()


# ----------------------------------------------------------------------------- the façade


class Forecaster:
    """Fit a forecasting model on a series and use it.

    ``Forecaster(config=ForecastConfig(...), model=ModelConfig(...), train=TrainConfig(...))``,
    then ``fit(series)`` (a Series, a CSV path, a dataset name, or "sines"); ``predict(n)``;
    ``historical_forecasts(series, start, horizon, stride)``; ``evaluate("test")`` with baselines.
    """

    def __init__(self, config: Optional[ForecastConfig] = None, model: Optional[ModelConfig] = None, train: Any = None):
        self.config = config or ForecastConfig()
        self.model_options = model or ModelConfig(encoder="identity", cell="lstm", hidden_size=32, num_layers=2)
        self.train_config = train
        self.model: Optional[ForecastModel] = None
        self.task_state: dict = {}
        self.splits: Optional[Splits] = None
        self.history = None
        self.metrics: dict = {}
        self.data_info: dict = {}

    @property
    def scaler(self) -> Scaler:
        return Scaler.from_dict(self.task_state["scaler"])

    # -- training --------------------------------------------------------------------------
    def fit(self, data: Union[Series, str, Path], out: Optional[Union[str, Path]] = None) -> "Forecaster":
        """Train with the shared Trainer (validation MSE selects the best weights); ``out``, a
        run directory, also receives the artifact (weights, config, scaler, windows)."""
        from rnnkit.training.config import TrainConfig
        from rnnkit.training.runner import fit_prepared

        self.splits, info = TASK.splits(self.config, data)
        prepared = prepared_from_splits(self.splits, self.config, info)
        self.task_state, self.data_info = prepared.task_state, info
        model_config = TASK.model_config(self.task_state, self.config, self.model_options)
        train = self.train_config or TrainConfig()
        self.model = TASK.new_model(model_config, self.task_state, self.config, train.seed)
        data_info = info if isinstance(data, Series) else {"source": str(data), **info}  # a file: resumable
        meta = TASK.run_meta(model_config, self.config, self.task_state, data_info)
        self.history = fit_prepared(TASK, self.model, prepared, train, self.config, out, meta, progress=False)
        self.model.eval()
        self.metrics = {p: TASK.evaluate(self.model, src) for p, src in (("val", prepared.val), ("test", prepared.test))
                        if src is not None}
        return self

    def _require_model(self) -> ForecastModel:
        if self.model is None:
            raise UserError("this Forecaster has no model yet: call fit(series) or rnnkit.load(DIR)")
        return self.model

    # -- job verbs -------------------------------------------------------------------------
    def predict(self, n: Optional[int] = None, series: Optional[Series] = None) -> Series:
        """The next ``n`` steps after the end of ``series`` (default: the end of the data the
        model was trained on), as a Series: values (n, C) on the original scale, the target
        columns' names, and the time labels that continue the history's (regular ISO dates go
        on at their spacing, integer steps count on; otherwise steps 1..n)."""
        model = self._require_model()
        L = self.task_state["lookback"]
        if series is not None:
            values, time = series.values, series.time
        else:
            values, time = np.asarray(self.task_state["history"]["values"]), self.task_state["history"]["time"]
        if len(values) < L:
            raise UserError(f"predict needs at least lookback={L} steps of history, got {len(values)}")
        n = n or self.task_state["horizon"]
        z = self.scaler.transform(values[-L:])[None]  # (1, L, F)
        y = self._target_scaler().inverse_transform(predict_windows(model, z, n)[0])  # (n, C)
        return Series(y, future_labels(time, n), list(self.task_state["columns"]))

    def _target_scaler(self) -> Scaler:
        return self.scaler.select(range(len(self.task_state["columns"])))

    def historical_forecasts(self, series: Series, start: int, horizon: Optional[int] = None,
                             stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Rolling-origin forecasts: for each origin t = start, start+stride, ... (with
        t + horizon <= len(series)) forecast steps t..t+horizon-1 from the L steps before t.

        Returns (origins (N,), forecasts (N, horizon, C)) on the original scale.
        """
        model = self._require_model()
        L, K = self.task_state["lookback"], self.task_state["horizon"] if horizon is None else horizon
        for name, value in (("horizon", K), ("stride", stride)):
            if value < 1:
                raise UserError(f"{name} must be >= 1, got {value}")
        if start < L:
            raise UserError(f"start={start} leaves fewer than lookback={L} steps of history")
        z = self.scaler.transform(series.values)
        C = len(self.task_state["columns"])
        X, _ = make_windows(z, z[:, :C], L, K, start, len(series), stride)
        origins = start + stride * np.arange(len(X))
        return origins, self._target_scaler().inverse_transform(predict_windows(model, X, K))

    def evaluate(self, part: str = "test") -> dict:
        """Model vs baselines on one part of the training data's split (needs ``fit`` or the data).

        Returns {"model": {...}, "naive": {...}, "seasonal_naive": {...}, "linear": {...},
        "nlinear": {...}}; each with scaled ``mse``/``mae``/``mse_last`` and original-scale
        ``orig_*`` metrics. ``linear`` is least squares on the window; ``nlinear`` the same on the
        window minus its last value, channel-independent, with a ridge penalty chosen on the
        validation windows (NLinear, Zeng et al. 2023); both only when training windows are
        attached (not for a whole file, ``attach(data, whole=True)``, part "all").
        """
        model, sp = self._require_model(), self.splits
        if sp is None or part not in sp.X:
            raise UserError(f"no {part!r} part to evaluate: fit first or pass the data with --data")
        X, Y = sp.X[part], sp.Y[part]
        C, K, ci = Y.shape[-1], Y.shape[1], self.task_state["spec"]["channel_independent"]
        period = min(self.task_state["period"], X.shape[1])
        preds = {"model": predict_windows(model, X), "naive": fm.naive_forecast(X[..., :C], K),
                 "seasonal_naive": fm.seasonal_naive_forecast(X[..., :C], K, period)}
        if "train" in sp.X:  # the linear baselines are fitted on the training windows
            lin = fm.LinearBaseline(ci or X.shape[-1] == 1).fit(sp.X["train"][..., :C] if ci else sp.X["train"], sp.Y["train"])
            val = (sp.X["val"][..., :C], sp.Y["val"]) if "val" in sp.X else None
            nlin = fm.LinearBaseline(normalize="last").fit(sp.X["train"][..., :C], sp.Y["train"], val)
            preds.update(linear=lin.predict(X[..., :C] if ci else X), nlinear=nlin.predict(X[..., :C]))
        inv = self._target_scaler().inverse_transform
        scale = float(np.mean(self.task_state["mase_scale"]))
        report = {}
        for name, p in preds.items():
            orig = metrics.forecast_accuracy(inv(p), inv(Y), scale)
            report[name] = {**metrics.forecast_errors(p, Y), **{f"orig_{k}": v for k, v in orig.items()}}
        report["period"] = period
        return report

    def backtest(self, series: Optional[Series] = None, stride: Optional[int] = None) -> dict:
        """Rolling-origin historical forecasts over the test part (origins every ``stride``
        steps, default K), scored on the original scale against the truth.

        ``series`` defaults to the training data (its test part starts at the stored border).
        Returns {"origins", "mae", "rmse", "smape", "mase", "mse_scaled"}.
        """
        borders = self.task_state.get("borders")
        series = series if series is not None else (self.splits.history if self.splits else None)
        if borders is None or series is None:
            raise UserError("backtest needs a chronological series: pass --data CSV (sines has no timeline)")
        C, K = len(self.task_state["columns"]), self.task_state["horizon"]
        start = borders[1] if len(series) == borders[2] else max(self.task_state["lookback"], int(len(series) * 0.8))
        origins, pred = self.historical_forecasts(series, start, K, K if stride is None else stride)
        truth = series.values[origins[:, None] + np.arange(K), :C]  # (N, K, C)
        report = metrics.forecast_accuracy(pred, truth, float(np.mean(self.task_state["mase_scale"])))
        ts = self._target_scaler()
        report["mse_scaled"] = float(np.mean((ts.transform(pred) - ts.transform(truth)) ** 2))
        return {"origins": int(len(origins)), "start": int(start), **report}

    # -- artifacts -------------------------------------------------------------------------
    @classmethod
    def from_artifact(cls, artifact) -> "Forecaster":
        """Rebuild from a run directory read by :mod:`rnnkit.artifacts` (no training data needed)."""
        f = cls(artifact.task_config, artifact.model_config)
        f.task_state = artifact.task_state
        f.model = artifact.build_model()
        f.metrics = dict(artifact.metrics or {})
        f.data_info = dict(artifact.data or {})
        return f

    def attach(self, data: Union[Series, str, Path], whole: bool = False) -> "Forecaster":
        """Re-split ``data`` with the stored config (for evaluate/backtest after load), or with
        ``whole`` take every window of it as the part "all"; the stored scaler is kept, so
        scaled metrics mean what they meant in training."""
        if whole:
            X, Y, series = whole_windows(self.config, data, self.task_state)
            self.splits = Splits({"all": X}, {"all": Y}, self.scaler, list(self.task_state["columns"]),
                                 list(self.task_state["covariates"]), series, None)
            return self
        self.splits, _ = TASK.splits(self.config, data)
        stored = self.scaler
        if self.splits.borders is not None:
            z = stored.transform(self.splits.history.values)
            C, (L, K) = len(self.task_state["columns"]), (self.config.lookback, self.config.horizon)
            b = [0] + self.splits.borders
            for i, part in enumerate(("train", "val", "test")):
                if part in self.splits.X:
                    self.splits.X[part], self.splits.Y[part] = make_windows(z, z[:, :C], L, K, b[i], b[i + 1])
        self.splits.scaler = stored
        return self

    def plot(self, path, history: np.ndarray, forecast: np.ndarray, truth: Optional[np.ndarray] = None,
             origin: Optional[int] = None) -> None:
        from rnnkit.plots import plot_forecast

        plot_forecast(path, history, forecast, truth, self.task_state.get("columns", []), origin)


def _cli_predict(f: Forecaster, args) -> int:
    """``rnnkit predict DIR [--data CSV] [--horizon K] [--out forecast.csv] [--plot forecast.png]``."""
    import csv
    import sys

    if args.data == SINES:
        raise UserError("--data sines: the generator makes many short series, not one to continue; "
                        "leave out --data to forecast after the window stored in the model, or pass a CSV")
    series = load_series(args.data, f.config)[0] if args.data else None
    K = f.task_state["horizon"] if args.horizon is None else args.horizon
    if K < 1:
        raise UserError(f"--horizon must be >= 1, got {K}")
    pred = f.predict(K, series).values  # (K, C)
    columns = f.task_state["columns"]
    C, L = len(columns), f.task_state["lookback"]
    if series is not None:
        hist, hist_time = series.values[-3 * L :, :C], series.time[-3 * L :]
    else:
        hist, hist_time = np.asarray(f.task_state["history"]["values"])[:, :C], f.task_state["history"]["time"]
    times = future_times(hist_time, K)  # None unless the time column holds regular ISO dates
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        w = csv.writer(out)
        w.writerow(["step"] + (["time"] if times else []) + columns)
        for k, row in enumerate(pred, start=1):
            w.writerow([k] + ([times[k - 1]] if times else []) + [f"{v:.6g}" for v in row])
    finally:
        if args.out:
            out.close()
    if args.plot:
        from rnnkit.plots import plot_forecast

        plot_forecast(args.plot, hist, pred, None, columns,
                      times=(parse_times(hist_time), parse_times(times)) if times else None)
    if args.out:
        print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))
    return 0
