"""Forecasting: data (CSV errors, splits, scaling, windows), baselines, metrics, models, façade."""

import numpy as np
import pytest
import torch

import rnnkit
from rnnkit.data.batching import Batch
from rnnkit.data.scaling import Scaler
from rnnkit.data.series import Series, generate_sines, make_windows, read_csv
from rnnkit.errors import UserError
from rnnkit.models import ModelConfig
from rnnkit.tasks import forecast_models as fm
from rnnkit.tasks.forecast import (ForecastConfig, Forecaster, ForecastModel, TASK, dense_targets, model_spec,
                                   predict_windows, split_series)


def _csv(tmp_path, text, name="s.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- CSV


def test_csv_reads_time_and_columns(tmp_path):
    s = read_csv(_csv(tmp_path, "date,a,b\n2020-01,1,10\n2020-02,2.5,20\n"))
    assert s.columns == ["a", "b"] and list(s.time) == ["2020-01", "2020-02"]
    np.testing.assert_array_equal(s.values, [[1, 10], [2.5, 20]])


def test_csv_of_one_column_is_the_series_indexed_by_row(tmp_path):
    s = read_csv(_csv(tmp_path, "value\n3\n1.5\n4\n"))
    assert s.columns == ["value"] and list(s.time) == ["0", "1", "2"]
    np.testing.assert_array_equal(s.values[:, 0], [3, 1.5, 4])
    only_time = _csv(tmp_path, "date\n2020\n", "d.csv")
    with pytest.raises(UserError) as e:
        read_csv(only_time, time_column="date")
    assert str(e.value) == f"{only_time}: no value columns besides the time column 'date'"


def test_csv_missing_value_message(tmp_path):
    path = _csv(tmp_path, "date,a\n2020-01,1\n2020-02,\n2020-03,3\n")
    with pytest.raises(UserError) as e:
        read_csv(path)
    assert str(e.value) == (f"{path} line 3, column 'a': missing value "
                            "(use --fill ffill|interpolate|zero to fill gaps)")


def test_csv_non_numeric_message(tmp_path):
    path = _csv(tmp_path, "date,a,b\n2020-01,1,2\n2020-02,3,abc\n")
    with pytest.raises(UserError) as e:
        read_csv(path)
    assert str(e.value) == f"{path} line 3, column 'b': expected a number, found 'abc'"


def test_csv_unknown_column_and_ragged_row(tmp_path):
    path = _csv(tmp_path, "date,a\n2020-01,1\n")
    with pytest.raises(UserError, match=r"no column 'z'; columns are: date, a"):
        read_csv(path, columns=["z"])
    ragged = _csv(tmp_path, "date,a\n2020-01,1,7\n", "r.csv")
    with pytest.raises(UserError) as e:
        read_csv(ragged)
    assert str(e.value) == f"{ragged} line 2: expected 2 columns, found 3"


def test_csv_fill_policies(tmp_path):
    path = _csv(tmp_path, "t,a\n0,\n1,2\n2,NA\n3,6\n")
    np.testing.assert_array_equal(read_csv(path, fill="ffill").values[:, 0], [2, 2, 2, 6])
    np.testing.assert_array_equal(read_csv(path, fill="interpolate").values[:, 0], [2, 2, 4, 6])
    np.testing.assert_array_equal(read_csv(path, fill="zero").values[:, 0], [0, 2, 0, 6])
    with pytest.raises(UserError, match="--fill must be one of"):
        read_csv(path, fill="mean")


# ----------------------------------------------------------------------------- splits, scaling, windows


def _ramp_series(n=100, width=1):
    v = np.arange(n, dtype=float)[:, None] * np.arange(1, width + 1)
    return Series(v, None, [f"c{i}" for i in range(width)])


def test_scaler_is_fitted_on_the_training_part_only():
    values = np.concatenate([np.random.default_rng(0).normal(5, 2, 70), np.full(30, 1000.0)])
    cfg = ForecastConfig(lookback=5, horizon=2, val=0.1, test=0.2)
    sp = split_series(Series(values), cfg)
    assert sp.borders == [70, 80, 100]
    np.testing.assert_allclose(sp.scaler.shift, [values[:70].mean()])
    np.testing.assert_allclose(sp.scaler.scale, [values[:70].std()])
    # the stored windows are the scaled series: z = (x - mean_train) / std_train
    np.testing.assert_allclose(sp.X["test"][-1, -1, 0], (1000 - values[:70].mean()) / values[:70].std())


def test_scaler_round_trip_and_constant_channel():
    x = np.array([[1.0, 3.0], [3.0, 3.0]])
    for kind in ("standard", "minmax", "log", "none"):
        s = Scaler(kind).fit(x)
        np.testing.assert_allclose(s.inverse_transform(s.transform(x)), x)
        assert Scaler.from_dict(s.to_dict()).to_dict() == s.to_dict()
    np.testing.assert_allclose(Scaler("minmax").fit(x).transform(x), [[0, 0], [1, 0]])
    np.testing.assert_allclose(Scaler("log").fit(x).transform([[np.sqrt(3), 3.0]]), [[0, 0]], atol=1e-12)
    with pytest.raises(UserError, match="scaler 'log' needs positive values, found 0"):
        Scaler("log").fit([[1.0], [0.0]])


def test_windows_have_no_look_ahead():
    """Inputs of every window end strictly before its first target (values = time index)."""
    t = np.arange(30, dtype=float)[:, None]
    X, Y = make_windows(t, t, lookback=4, horizon=3, start=10, stop=20)
    np.testing.assert_array_equal(X[:, -1, 0] + 1, Y[:, 0, 0])  # contiguous, never overlapping
    np.testing.assert_array_equal(Y[:, :, 0] - Y[:, :1, 0], np.tile(np.arange(3), (len(Y), 1)))
    assert Y.min() >= 10 and Y.max() <= 19  # targets stay inside their part
    assert X.min() == 6  # inputs may reach back into the previous part (ETT protocol)


def test_split_windows_never_put_a_target_step_in_the_inputs():
    cfg = ForecastConfig(lookback=6, horizon=3, scaler="none", val=0.2, test=0.2)
    sp = split_series(_ramp_series(60), cfg)
    for part in ("train", "val", "test"):
        X, Y = sp.X[part][..., 0], sp.Y[part][..., 0]
        assert (X.max(1) < Y.min(1)).all(), part


def test_dense_targets_are_the_future_of_each_step():
    x = torch.arange(8.0).view(1, 8, 1)  # the window: steps 0..7
    y = torch.arange(8.0, 11.0).view(1, 3, 1)  # its future: steps 8..10
    d = dense_targets(Batch(x, y), step_horizon=3, channels=1)  # (1, 8, 3, 1)
    np.testing.assert_array_equal(d[0, :, :, 0].numpy(), np.arange(8)[:, None] + 1 + np.arange(3))


def test_burn_in_drops_the_first_steps_from_the_training_loss_only():
    cfg = ForecastConfig(lookback=10, horizon=3, burn_in=4)
    spec = model_spec(cfg, 1, 1)
    torch.manual_seed(0)
    model = ForecastModel(spec, TASK.model_config({"spec": spec}, cfg, ModelConfig(encoder="identity", hidden_size=8)))
    batch = Batch(torch.randn(5, 10, 1), torch.randn(5, 3, 1))
    model.eval()
    full, _ = model(batch.inputs)  # (B, L, K, C): every step in eval
    model.train()
    trained, _ = model(batch.inputs)
    assert full.shape == (5, 10, 3, 1) and trained.shape == (5, 6, 3, 1)
    torch.testing.assert_close(trained, full[:, 4:])
    expected = ((full[:, 4:] - dense_targets(batch, 3, 1)[:, 4:]) ** 2).mean()
    torch.testing.assert_close(TASK.loss(trained, batch), expected)
    torch.testing.assert_close(model.forecast(batch.inputs), full[:, -1])  # prediction unchanged
    with pytest.raises(ValueError, match="burn_in"):
        ForecastConfig(lookback=10, burn_in=10)


def test_mae_training_loss_is_the_mean_absolute_error():
    batch = Batch(torch.randn(4, 6, 2), torch.randn(4, 3, 2))
    out = torch.randn(4, 3, 2)
    mae = TASK.loss_fn(ForecastConfig(loss="mae"))
    torch.testing.assert_close(mae(out, batch), (out - batch.targets).abs().mean())
    torch.testing.assert_close(TASK.loss_fn(ForecastConfig())(out, batch), ((out - batch.targets) ** 2).mean())
    dense = torch.randn(4, 6, 3, 2)  # (B, L, K, C)
    torch.testing.assert_close(mae(dense, batch), (dense - dense_targets(batch, 3, 2)).abs().mean())
    with pytest.raises(UserError, match="loss: expected one of mse, mae, got 'l3'"):
        ForecastConfig(loss="l3")


@pytest.mark.parametrize("window_norm", ["none", "last"])
def test_model_output_at_step_t_ignores_later_inputs(window_norm):
    """A per-step forecast that saw a later input (a leak) would change when it changes."""
    cfg = ForecastConfig(lookback=10, horizon=2, window_norm=window_norm)
    spec = model_spec(cfg, 1, 1)
    torch.manual_seed(0)
    model = ForecastModel(spec, TASK.model_config({"spec": spec}, cfg, ModelConfig(encoder="identity", hidden_size=8)))
    x = torch.randn(2, 10, 1)
    x2 = x.clone()
    x2[:, 6:] += 5.0
    y1, _ = model(x)
    y2, _ = model(x2)  # (B, L, K, C)
    torch.testing.assert_close(y1[:, :6], y2[:, :6])
    assert not torch.allclose(y1[:, 6:], y2[:, 6:])


def test_channel_independent_models_keep_channels_apart():
    for arch in ("rnn", "segrnn"):
        cfg = ForecastConfig(lookback=12, horizon=4, channel_independent=True, architecture=arch, segment_length=4)
        spec = model_spec(cfg, 3, 3)
        torch.manual_seed(0)
        mc = TASK.model_config({"spec": spec}, cfg, ModelConfig(encoder="identity", cell="gru", hidden_size=8))
        model = ForecastModel(spec, mc).eval()
        x = torch.randn(2, 12, 3)
        x2 = x.clone()
        x2[..., 1] += 1.0
        y1, y2 = model.forecast(x), model.forecast(x2)  # (B, K, C)
        assert y1.shape == (2, 4, 3)
        torch.testing.assert_close(y1[..., [0, 2]], y2[..., [0, 2]])
        assert not torch.allclose(y1[..., 1], y2[..., 1])


def test_segrnn_window_normalisation_is_undone_on_the_forecast():
    """last: forecast(x + b) = forecast(x) + b; revin also follows scale,
    forecast(a x + b) = a forecast(x) + b (exact up to RevIN's 1e-5 in the variance), and its
    statistics are the window's own mean and population standard deviation."""
    torch.manual_seed(0)
    x, a, b = torch.randn(3, 12, 2, dtype=torch.float64) * 10, 3.0, -7.0
    outs = {}
    for norm in ("last", "revin"):
        net = fm.SegRNN(fm.SegRNNConfig(12, 5, 2, 4, 8, "gru", 0.0, norm)).double().eval()
        outs[norm] = net(x)[0]
        torch.testing.assert_close(net(x + b)[0], outs[norm] + b)
        if norm == "revin":
            torch.testing.assert_close(net(a * x + b)[0], a * outs[norm] + b, rtol=1e-5, atol=1e-8)
            shift, scale = net._window_stats(x)
            torch.testing.assert_close(shift[0, 0, 1], x[0, :, 1].mean())
            torch.testing.assert_close(scale[0, 0, 1], torch.tensor(np.std(x[0, :, 1].numpy())), rtol=1e-6, atol=0)
        else:
            assert not torch.allclose(net(a * x)[0], a * outs[norm])  # the last value shifts, nothing scales
    assert not torch.allclose(outs["last"], outs["revin"])
    with pytest.raises(UserError, match="revin is for the segrnn"):
        model_spec(ForecastConfig(lookback=12, window_norm="revin"), 1, 1)


def test_predict_windows_runs_in_chunks_and_restores_the_mode():
    """Windows go through the model batch_size at a time (a whole test part at once can need
    tens of GB), in eval mode, and the forecasts equal one pass over all of them."""
    cfg = ForecastConfig(lookback=8, horizon=3, architecture="segrnn", segment_length=4, channel_independent=True)
    spec = model_spec(cfg, 2, 2)
    torch.manual_seed(0)
    model = ForecastModel(spec, TASK.model_config({"spec": spec}, cfg, ModelConfig(encoder="identity", cell="gru", hidden_size=8)))
    X = np.random.default_rng(0).normal(size=(10, 8, 2))
    sizes, forecast = [], model.forecast
    model.forecast = lambda x, k=None: sizes.append(len(x)) or forecast(x, k)
    chunked = predict_windows(model, X, batch_size=4)
    assert sizes == [4, 4, 2] and model.training
    np.testing.assert_allclose(chunked, predict_windows(model, X, batch_size=10), rtol=1e-6, atol=1e-7)


def test_baselines_on_a_hand_made_series():
    season = np.array([1.0, 5.0, 2.0, 7.0])
    x = np.tile(season, 3)[None, :, None]  # (1, 12, 1)
    np.testing.assert_array_equal(fm.naive_forecast(x, 3)[0, :, 0], [7, 7, 7])
    np.testing.assert_array_equal(fm.seasonal_naive_forecast(x, 6, 4)[0, :, 0], [1, 5, 2, 7, 1, 5])
    ramp = np.arange(40.0)[:, None]
    X, Y = make_windows(ramp, ramp, 5, 2)
    lin = fm.LinearBaseline().fit(X, Y)
    np.testing.assert_allclose(lin.predict(np.array([[[100.0], [101], [102], [103], [104]]]))[0, :, 0],
                               [105, 106], atol=1e-4)


def test_nlinear_baseline_works_relative_to_the_last_value():
    ramp = np.arange(40.0)[:, None]
    X, Y = make_windows(ramp, ramp, 5, 2)
    nlin = fm.LinearBaseline(normalize="last").fit(X, Y)
    assert nlin.channel_independent
    np.testing.assert_allclose(nlin.predict(np.array([[[100.0], [101], [102], [103], [104]]]))[0, :, 0],
                               [105, 106], atol=1e-6)
    # a window shifted by a constant gets the same forecast shifted by it
    x = np.random.default_rng(0).normal(size=(3, 5, 2))
    np.testing.assert_allclose(nlin.predict(x + 7.0), nlin.predict(x) + 7.0, atol=1e-9)


def test_nlinear_ridge_is_chosen_on_validation():
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(200, 1))
    X, Y = make_windows(noise, noise, 20, 3)
    Xv, Yv = make_windows(rng.normal(size=(80, 1)), rng.normal(size=(80, 1)), 20, 3)
    # targets unrelated to inputs: the strongest penalty generalises best
    assert fm.LinearBaseline().fit(X, Y, (Xv, Yv)).ridge == max(fm.LinearBaseline.RIDGE_GRID)
    wave = np.sin(np.arange(300) * 0.3)[:, None] + 0.01 * rng.normal(size=(300, 1))
    X, Y = make_windows(wave[:200], wave[:200], 20, 3)
    Xv, Yv = make_windows(wave[200:], wave[200:], 20, 3)
    chosen = fm.LinearBaseline(normalize="last").fit(X, Y, (Xv, Yv))
    assert chosen.ridge < 0.1  # a clean signal wants little shrinkage
    best = np.mean((chosen.predict(Xv) - Yv) ** 2)
    for ridge in fm.LinearBaseline.RIDGE_GRID:
        other = fm.LinearBaseline(normalize="last", ridge=ridge).fit(X, Y)
        assert best <= np.mean((other.predict(Xv) - Yv) ** 2) + 1e-15


def test_detect_period():
    t = np.arange(240)
    assert fm.detect_period(np.sin(2 * np.pi * t / 12) + 0.01 * t, 40) == 12
    assert fm.detect_period(np.sin(2 * np.pi * t / 30), 60) == 30


# ----------------------------------------------------------------------------- sines


def test_sines_generator_is_seeded_and_follows_the_formula():
    a, b, c = generate_sines(5, 51, seed=3), generate_sines(5, 51, seed=3), generate_sines(5, 51, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and a.shape == (5, 51) and a.dtype == np.float32
    rng = np.random.default_rng(3)
    f1, f2, o1, o2 = rng.random((4, 5, 1))
    t = np.linspace(0, 1, 51)
    clean = 0.5 * np.sin((t - o1) * (f1 * 10 + 10)) + 0.2 * np.sin((t - o2) * (f2 * 20 + 20))
    noise = a - clean
    assert np.abs(noise).max() <= 0.05 + 1e-6
    np.testing.assert_allclose(noise, 0.1 * (rng.random((5, 51)) - 0.5), atol=1e-6)


# ----------------------------------------------------------------------------- façade


def test_forecaster_fit_save_load_predict(tmp_path):
    from rnnkit import artifacts
    from rnnkit.training.config import TrainConfig

    csv = tmp_path / "air.csv"
    t = np.arange(120)
    vals = 100 + t + 20 * np.sin(2 * np.pi * t / 12)
    csv.write_text("month,y\n" + "".join(f"m{i},{v:.3f}\n" for i, v in enumerate(vals)))
    f = Forecaster(ForecastConfig(lookback=24, horizon=6, batch_size=16, window_norm="last"),
                   ModelConfig(encoder="identity", cell="gru", hidden_size=8),
                   TrainConfig(epochs=2, lr=1e-2, optimizer="adam", log_every=0))
    f.fit(str(csv), out=tmp_path / "run")
    assert f.task_state["period"] == 12 and f.task_state["borders"] == [84, 96, 120]
    report = f.evaluate("test")
    assert set(report) >= {"model", "naive", "seasonal_naive", "linear", "nlinear"}
    g = rnnkit.load(tmp_path / "run")
    np.testing.assert_allclose(g.predict(6).values, f.predict(6).values)
    ahead = g.predict(6)  # labels "m0".."m119" are neither dates nor integers: steps 1..6
    assert ahead.values.shape == (6, 1) and ahead.columns == ["y"] and list(ahead.time) == [1, 2, 3, 4, 5, 6]
    origins, fc = g.historical_forecasts(Series(vals), start=100, horizon=6, stride=5)
    assert list(origins) == [100, 105, 110] and fc.shape == (3, 6, 1)
    np.testing.assert_allclose(fc[-1], g.predict(6, Series(vals[:110])).values)
    assert g.attach(str(csv)).backtest()["origins"] == 4


def test_future_times_continue_regular_iso_dates_only():
    from rnnkit.data.series import future_times

    assert future_times(["1949-11", "1949-12"], 2) == ["1950-01", "1950-02"]
    assert future_times(["1949-01-01", "1949-02-01", "1949-03-01"], 2) == ["1949-04-01", "1949-05-01"]  # calendar months
    assert future_times(["2016-07-01 22:00:00", "2016-07-01 23:00:00"], 2) == ["2016-07-02 00:00:00",
                                                                               "2016-07-02 01:00:00"]
    assert future_times(["1981-01-01", "1981-01-02", "1981-01-04"], 2) is None  # irregular spacing
    assert future_times(["0", "1", "2"], 2) is None  # row numbers are not dates
    assert future_times(["1990", "1991"], 2) is None  # nor are bare years
    assert future_times(["mon", "tue"], 2) is None


def _train_and_predict_cli(tmp_path, csv, horizon: int) -> list:
    """A tiny GRU forecaster trained on ``csv`` from the CLI, then ``predict --out --plot``: the CSV lines."""
    from rnnkit.cli.main import main

    run = tmp_path / "run"
    assert main(["train", "forecast", "--data", str(csv), "--out", str(run), "--lookback", "12", "--horizon", "3",
                 "--hidden-size", "4", "--cell", "gru", "--encoder", "identity", "--epochs", "1", "--quiet"]) == 0
    out = tmp_path / "f.csv"
    assert main(["predict", str(run), "--horizon", str(horizon), "--out", str(out), "--plot", str(tmp_path / "f.png")]) == 0
    assert (tmp_path / "f.png").stat().st_size > 0
    return out.read_text().splitlines()


def test_cli_predict_writes_dates_after_a_dated_series(tmp_path):
    csv = tmp_path / "m.csv"
    months = [f"{1950 + i // 12}-{i % 12 + 1:02d}" for i in range(60)]
    csv.write_text("month,y\n" + "".join(f"{m},{np.sin(i / 2):.4f}\n" for i, m in enumerate(months)))
    lines = _train_and_predict_cli(tmp_path, csv, 4)
    assert lines[0] == "step,time,y" and [ln.split(",")[1] for ln in lines[1:]] == ["1955-01", "1955-02", "1955-03",
                                                                                    "1955-04"]


def test_cli_train_predict_evaluate_backtest(tmp_path, capsys):
    import json

    from rnnkit.cli.main import main

    csv = tmp_path / "s.csv"
    t = np.arange(90)
    csv.write_text("t,y\n" + "".join(f"{i},{np.sin(i / 3):.4f}\n" for i in t))
    lines = _train_and_predict_cli(tmp_path, csv, 5)
    assert lines[0] == "step,y" and len(lines) == 6
    capsys.readouterr()
    run = tmp_path / "run"
    assert main(["evaluate", str(run), "--split", "test", "--backtest", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["backtest_origins"] == 6 and "seasonal_naive_orig_mae" in metrics
    bad = tmp_path / "bad.csv"
    bad.write_text("t,y\n0,1\n1,x\n")
    assert main(["predict", str(run), "--data", str(bad)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"{bad} line 3, column 'y': expected a number, found 'x'")
    assert main(["predict", str(run), "--data", "sines"]) == 2  # many short series: nothing to continue
    assert "--data sines: the generator makes many short series" in capsys.readouterr().err
    assert main(["predict", str(run), "--horizon", "0"]) == 2  # 0 is not "the trained horizon"
    assert capsys.readouterr().err.strip() == "rnnkit: error: --horizon must be >= 1, got 0"
    assert main(["evaluate", str(run), "--split", "test", "--backtest", "--stride", "0"]) == 2
    assert capsys.readouterr().err.strip() == "rnnkit: error: stride must be >= 1, got 0"


def test_predict_continues_the_time_labels():
    from rnnkit.tasks.forecast_data import future_labels

    assert list(future_labels(["1949-11-01", "1949-12-01"], 2)) == ["1950-01-01", "1950-02-01"]
    assert list(future_labels(np.arange(10, 20), 3)) == [20, 21, 22]
    assert list(future_labels(["a", "b"], 2)) == [1, 2]


@pytest.mark.parametrize("name", ["sines-tutorial", "sines-next", "sines-10", "airline", "sunspots", "etth1-mse",
                                  "etth1-mae"])
def test_forecast_presets_resolve(name):
    """Each preset builds valid configs."""
    from pathlib import Path

    from rnnkit.cli.flags import resolve_configs
    from rnnkit.training.config import TrainConfig

    path = Path(__file__).resolve().parent.parent / "configs" / f"{name}.json"
    classes = {"model": ModelConfig, "train": TrainConfig, "data": ForecastConfig}
    cfg, file = resolve_configs(classes, path, {})
    assert file["task"] == "forecast" and isinstance(cfg["data"], ForecastConfig)
