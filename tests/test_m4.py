"""The M4 protocol's pieces: the seasonality test, classical decomposition, Naive2 and Naive1
intervals, sMAPE / MASE / OWA / MSIS / coverage, against hand-made series and against the
competition's official Hourly scores (M4-methods, "Evaluation and Ranks.xlsx")."""

import numpy as np
import pytest

from rnnkit import metrics
from rnnkit.errors import UserError
from rnnkit.tasks.forecast_models import is_seasonal, naive2_forecast, naive_interval, seasonal_indices

HORIZON, PERIOD = 48, 24


def test_seasonality_test_and_indices_on_made_series():
    rng = np.random.default_rng(0)
    t = np.arange(24 * 20)
    pattern = 1 + 0.3 * np.sin(2 * np.pi * np.arange(24) / 24)
    trended = (100 + 0.5 * t) * pattern[t % 24]
    assert is_seasonal(trended, 24) and not is_seasonal(rng.normal(size=500), 24)
    assert not is_seasonal(trended[:71], 24)  # under three seasons: never seasonal
    series = 100 * pattern[t % 24]  # a level series: the moving average is the level exactly
    np.testing.assert_allclose(seasonal_indices(series, 24), pattern / pattern.mean(), rtol=1e-12)
    forecast = naive2_forecast(series, 30, 24)
    deseasonalised_last = series[-1] / (pattern[(len(t) - 1) % 24] / pattern.mean())
    np.testing.assert_allclose(forecast, deseasonalised_last * pattern[(len(t) + np.arange(30)) % 24] / pattern.mean(),
                               rtol=1e-12)
    lower, upper = naive_interval(np.array([1.0, 2.0, 4.0]), 2, z=1.0)
    sigma = np.sqrt((1 + 4) / 2)
    np.testing.assert_allclose(lower, [4 - sigma, 4 - sigma * np.sqrt(2)])
    np.testing.assert_allclose(upper, [4 + sigma, 4 + sigma * np.sqrt(2)])


def test_scores_by_hand():
    f, y, scale = np.array([[1.0, 3.0]]), np.array([[2.0, 3.0]]), np.array([2.0])
    s = metrics.series_scores(f, y, scale, naive2=(10.0, 1.0))
    assert s["smape"] == pytest.approx((200 * 1 / 3 + 0) / 2) and s["mase"] == pytest.approx(0.25)
    assert s["owa"] == pytest.approx(0.5 * (s["smape"] / 10 + 0.25))
    i = metrics.interval_scores(np.array([[0.0, 4.0]]), np.array([[3.0, 5.0]]), y, scale, alpha=0.5)
    assert i["coverage"] == 0.5  # 2 in [0, 3]; 3 below [4, 5]
    assert i["msis"] == pytest.approx(((3 + 0) + (1 + 4 * 1)) / 2 / 2)


def test_official_benchmark_scores_on_m4_hourly(data_dir):
    from conftest import need_file
    from rnnkit.data.panel import m4_parts

    need_file(data_dir, "m4/Hourly-test.csv")
    train, test = m4_parts("m4-hourly")
    actuals, scales = np.stack(test.values), np.array([metrics.mase_scale(x, PERIOD) for x in train.values])
    assert len(train) == 414 and actuals.shape == (414, HORIZON)
    naive = np.stack([np.repeat(x[-1], HORIZON) for x in train.values])
    seasonal = np.stack([x[len(x) - PERIOD + np.arange(HORIZON) % PERIOD] for x in train.values])
    naive2 = np.stack([naive2_forecast(x, HORIZON, PERIOD) for x in train.values])
    official = {"naive": (naive, 43.003, 11.608), "snaive": (seasonal, 13.912, 1.193), "naive2": (naive2, 18.383, 2.395)}
    for name, (forecast, smape, mase) in official.items():
        s = metrics.series_scores(forecast, actuals, scales, naive2=(18.383, 2.395))
        assert (round(s["smape"], 3), round(s["mase"], 3)) == (smape, mase), name
    assert metrics.series_scores(naive2, actuals, scales, naive2=(18.383, 2.395))["owa"] == pytest.approx(1.0, abs=1e-4)
    bounds = [naive_interval(x, HORIZON) for x in train.values]
    i = metrics.interval_scores(np.stack([b[0] for b in bounds]), np.stack([b[1] for b in bounds]), actuals, scales)
    assert round(i["msis"], 3) == 71.245 and round(100 * i["coverage"], 2) == 93.85


def test_m4_reader_names_a_bad_cell(tmp_path):
    from rnnkit.data.panel import read_m4_rows

    good = tmp_path / "ok.csv"
    good.write_text('"V1","V2","V3","V4"\n"A","1","2","3"\n"B","4",,\n')
    panel = read_m4_rows(good)
    assert panel.ids == ["A", "B"] and [list(v) for v in panel.values] == [[1, 2, 3], [4]]
    bad = tmp_path / "bad.csv"
    bad.write_text('"V1","V2","V3"\n"A","1","x"\n')
    with pytest.raises(UserError, match="line 2, column 3"):
        read_m4_rows(bad)


def test_conformal_intervals_reach_their_level_on_exchangeable_windows():
    from rnnkit.tasks.forecast_models import conformal_half_widths

    rng = np.random.default_rng(1)
    K, level, trials = 3, 0.9, 400
    covered = []
    for _ in range(trials):  # calibration residuals and a new window from one heavy-tailed law
        calibration = rng.standard_t(3, size=(50, K)) * np.array([1.0, 2.0, 4.0])
        fresh = rng.standard_t(3, size=K) * np.array([1.0, 2.0, 4.0])
        covered.append(np.abs(fresh) <= conformal_half_widths(calibration, level))
    rate = np.mean(covered, axis=0)  # the guarantee: >= 0.9, and at most 0.9 + 1/(n+1) on average
    assert np.all(rate > level - 3 * np.sqrt(level * (1 - level) / trials)) and np.all(rate < 0.94)
    assert np.isinf(conformal_half_widths(np.ones((5, 2)), 0.9)).all()  # 5 windows cannot give 90%


def test_pinball_loss_by_hand():
    # y = 10; quantile 0.1 forecast 12 (over by 2): 0.9 * 2; quantile 0.9 forecast 9 (under by 1): 0.9 * 1
    assert metrics.pinball_loss(np.array([[12.0, 9.0]]), np.array([10.0]), [0.1, 0.9]) == pytest.approx((1.8 + 0.9) / 2)


def test_long_format_reader_groups_series_and_checks_times(tmp_path):
    from rnnkit.data.panel import read_long_csv

    path = tmp_path / "long.csv"
    path.write_text("unique_id,ds,y,price\nA,2024-01-01,1,5\nB,2024-03-01,7,1\nA,2024-01-02,2,6\nB,2024-03-02,8,2\n"
                    "A,2024-01-03,3,7\n")
    panel = read_long_csv(path, covariates=["price"])
    assert panel.ids == ["A", "B"] and [list(v) for v in panel.values] == [[1, 2, 3], [7, 8]]
    assert list(panel.times[1]) == ["2024-03-01", "2024-03-02"] and panel.covariates[0][:, 0].tolist() == [5, 6, 7]
    path.write_text("unique_id,ds,y\nA,2024-01-02,1\nA,2024-01-01,2\n")
    with pytest.raises(UserError, match="line 3, column 'ds': time '2024-01-01' of series 'A' does not follow"):
        read_long_csv(path)
    with pytest.raises(UserError, match="no column 'sales'"):
        read_long_csv(path, target="sales")
