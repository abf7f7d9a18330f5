"""Forecast quality: rnnkit presets beside a hand-written torch.nn baseline on the same data.

    flock /tmp/rnnkit-cpu.lock .venv/bin/python benchmarks/forecast_quality.py sines-handwritten-1 sines-handwritten-10 > /tmp/fq.log 2>&1
    flock /tmp/rnnkit-cpu.lock .venv/bin/python benchmarks/forecast_quality.py sines-next sines-10 > /tmp/fq.log 2>&1
    RNNKIT_DATA=... .venv/bin/python benchmarks/forecast_quality.py airline sunspots etth1-mse [--epochs N]

``etth1-mse`` / ``etth1-mae``: one member each of the ETTh1 preset (the whole preset, both
members averaged, is ``benchmarks/presets/etth1.sh``). ``etth1-handwritten``: the issue's "plain
GRU" on ETTh1 at the preset's budget (see
``etth1_handwritten``). ``sines-handwritten``: the issue's reference, a plain ``torch.nn`` 2 x LSTM(64) -> Linear(64, K)
on the last step, Adam 1e-3, batch 32, 100 epochs, weights chosen on validation MSE; the same
``sines`` panel (7,000/2,000/1,000 series, seed 42) as the presets. Every run prints one JSON
line per model with test MSE (all K steps and the last step), the training seconds and the
baselines (naive, seasonal naive, linear, NLinear) on the same test windows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import rnnkit  # noqa: F401  (flush denormals before torch's first parallel op)
from rnnkit.models import ModelConfig
from rnnkit.tasks.forecast import ForecastConfig, Forecaster, load_series, sines_splits, split_series
from rnnkit.training.config import TrainConfig, from_dict, load_config_file

ROOT = Path(__file__).resolve().parents[1]


def forecaster_from_preset(name: str, data_overrides: dict = (), train_overrides: dict = ()) -> tuple[Forecaster, str]:
    d = load_config_file(ROOT / "configs" / f"{name}.json")
    where = f"configs/{name}.json"
    config = from_dict(ForecastConfig, {**d.get("data", {}), **dict(data_overrides)}, where)
    model = from_dict(ModelConfig, d.get("model", {}), where)
    train = from_dict(TrainConfig, {**d.get("train", {}), **dict(train_overrides)}, where)
    return Forecaster(config, model, train), d["dataset"]


def handwritten(horizon: int, epochs: int = 100, seed: int = 0, budget: float = 290.0) -> dict:
    """torch.nn 2 x LSTM(64) -> Linear(64, K) on the last step; Adam 1e-3; batch 32; stops after
    ``epochs`` or at the first epoch end past ``budget`` seconds (the presets' budget)."""
    sp = sines_splits(ForecastConfig(lookback=50, horizon=horizon, scaler="none"))
    data = {p: (_tensor(sp.X[p]), _tensor(sp.Y[p][..., 0])) for p in ("train", "val", "test")}
    torch.manual_seed(seed)
    lstm, head = nn.LSTM(1, 64, 2, batch_first=True), nn.Linear(64, horizon)

    def run(x):
        y, _ = lstm(x)
        return head(y[:, -1])

    fit = fit_on_validation(run, list(lstm.parameters()) + list(head.parameters()), data, 32, epochs, budget, seed)
    err = errors(run, *data["test"]) ** 2
    return {"model": f"torch.nn 2xLSTM(64) last-step head, K={horizon}", **fit,
            "test_mse": float(err.mean()), "test_mse_last": float(err[:, -1].mean())}


def etth1_handwritten(horizon: int, hidden: int = 128, budget: float = 1140.0, seed: int = 0) -> dict:
    """The issue's "plain GRU" on ETTh1: torch.nn GRU(7, hidden) over the whole L = 720 window ->
    Linear(hidden, 7 K) from the last state; Adam 1e-3, batch 64, MSE; validated each epoch, best
    weights kept, stopped at the first epoch end past ``budget`` seconds (the preset's two members
    together). Same windows, z-scores and test protocol as ``configs/etth1-mse.json`` (rnnkit's
    ``split_series``)."""
    config = forecaster_from_preset("etth1-mse", {"horizon": horizon})[0].config
    sp = split_series(load_series("etth1", config)[0], config)
    data = {p: (_tensor(sp.X[p]), _tensor(sp.Y[p])) for p in ("train", "val", "test")}
    C = data["train"][1].shape[-1]
    torch.manual_seed(seed)
    gru, head = nn.GRU(data["train"][0].shape[-1], hidden, batch_first=True), nn.Linear(hidden, horizon * C)

    def run(x):
        _, h = gru(x)
        return head(h[-1]).view(len(x), horizon, C)

    fit = fit_on_validation(run, list(gru.parameters()) + list(head.parameters()), data, 64, 10**6, budget, seed,
                            log=True)
    err = errors(run, *data["test"])
    return {"model": f"torch.nn GRU({hidden}) over L=720, last state -> Linear, K={horizon}", "dataset": "etth1",
            "horizon": horizon, **fit, "mse": float((err ** 2).mean()), "mae": float(err.abs().mean())}


def _tensor(a) -> torch.Tensor:
    return torch.as_tensor(a, dtype=torch.float32)


def errors(run, X, Y, chunk: int = 256) -> torch.Tensor:
    """Forecast minus truth over all windows, ``chunk`` at a time, without gradients."""
    with torch.no_grad():
        return torch.cat([run(x) - y for x, y in zip(X.split(chunk), Y.split(chunk))])


def fit_on_validation(run, params, data, batch_size, epochs, budget, seed, log=False) -> dict:
    """The hand-written baselines' loop: Adam 1e-3 on MSE over shuffled batches, validation MSE
    after each epoch, stop after ``epochs`` (at least one) or at the first epoch end past ``budget`` seconds;
    the best validation weights are put back."""
    (Xtr, Ytr), (Xva, Yva) = data["train"], data["val"]
    opt = torch.optim.Adam(params, 1e-3)
    best, best_state, t0, done = float("inf"), None, time.perf_counter(), 0
    g = torch.Generator().manual_seed(seed)
    while done < max(epochs, 1) and (done == 0 or time.perf_counter() - t0 <= budget):
        done += 1
        for idx in torch.randperm(len(Xtr), generator=g).split(batch_size):
            loss = ((run(Xtr[idx]) - Ytr[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        val = float((errors(run, Xva, Yva) ** 2).mean())
        if log:
            print(f"epoch {done}: val mse {val:.4f} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        if val < best:
            best, best_state = val, [p.detach().clone() for p in params]
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        for p, b in zip(params, best_state):
            p.copy_(b)
    return {"epochs": done, "train_s": round(seconds, 1), "val_mse": best}


def preset(name: str, data_overrides=(), train_overrides=(), run_name: str = "") -> dict:
    f, dataset = forecaster_from_preset(name, data_overrides, train_overrides)
    out = Path("/tmp/rnnkit-runs") / (run_name or name)
    t0 = time.perf_counter()
    f.fit(dataset, out=out)
    seconds = time.perf_counter() - t0
    report = f.evaluate("test")
    row = {"preset": f"configs/{name}.json", "dataset": dataset, "horizon": f.config.horizon, "train_s": round(seconds, 1),
           "stop": f.history.stop_reason, "best_step": (f.history.best or {}).get("step"),
           "val_mse": f.metrics.get("val", {}).get("mse")}
    for k, v in report.items():
        row[k] = {m: round(x, 6) for m, x in v.items()} if isinstance(v, dict) else v
    if report.get("period") and f.task_state.get("borders"):
        plot_forecast(f, out / "forecast.png")
        row["plot"] = str(out / "forecast.png")
    return row


def plot_forecast(f: Forecaster, path: Path) -> None:
    """History + the forecast from the test part's first origin + the truth."""
    series, (_, val_end, _) = f.splits.history, f.task_state["borders"]
    L, K, C = f.config.lookback, f.config.horizon, len(f.task_state["columns"])
    pred = f.predict(K, series[:val_end]).values
    truth = series.values[val_end : val_end + K, :C]
    f.plot(path, series.values[max(0, val_end - 3 * L) : val_end, :C], pred, truth, origin=val_end)


JOBS = {
    "sines-handwritten-1": lambda a: [handwritten(1, a.epochs or 100)],
    "sines-handwritten-10": lambda a: [handwritten(10, a.epochs or 100)],
    "sines-next": lambda a: [preset("sines-next")],
    "sines-10": lambda a: [preset("sines-10")],
    "sines-tutorial": lambda a: [preset("sines-tutorial")],
    "airline": lambda a: [preset("airline")],
    "sunspots": lambda a: [preset("sunspots")],
    "etth1-handwritten": lambda a: [etth1_handwritten(a.horizon)],
    "etth1-mse": lambda a: [_etth1_member("etth1-mse", a)],
    "etth1-mae": lambda a: [_etth1_member("etth1-mae", a)],
}


def _etth1_member(name: str, a) -> dict:
    return preset(name, {"horizon": a.horizon}, _train_overrides(a), f"{name}-{a.horizon}")


def _train_overrides(a) -> dict:
    """The preset's training settings that the command line replaces (--epochs, --lr)."""
    return {k: v for k, v in (("epochs", a.epochs), ("lr", a.lr)) if v is not None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jobs", nargs="+", choices=sorted(JOBS))
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--horizon", type=int, default=96)
    parser.add_argument("--lr", type=float, default=None, help="etth1-*: replaces the preset's learning rate")
    # 1 by default: on shared cores an oversubscribed 2-thread pool ran the same LSTM step 10-100x
    # slower (480-6000 ms vs 28-47 ms with 8+ busy processes); use 2 on a quiet machine
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # torch imports torch._dynamo here once (30 s when busy)
    for job in args.jobs:
        for row in JOBS[job](args):
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
