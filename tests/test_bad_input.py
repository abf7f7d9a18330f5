"""Faults and bad input (issue #31): each is one pinned line ``rnnkit: error: ...`` on stderr and
exit status 2, never a traceback, never a saved artifact holding NaN/Infinity; and
``rnnkit evaluate DIR --data FILE`` scores all of FILE, saying how many examples it scored."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rnnkit
import rnnkit_toytask as toy
from rnnkit.artifacts import json_bytes
from conftest import cli_error as _error, run_cli as _cli
from rnnkit.errors import UserError

FORECAST = ["--lookback", "5", "--hidden-size", "4", "--cell", "gru", "--epochs", "1", "--quiet"]
SEQCLASS = ["--hidden-size", "4", "--cell", "gru", "--epochs", "1", "--val-size", "4", "--quiet"]
TOY = ["--epochs", "1", "--hidden-size", "4", "--seq-len", "5", "--quiet", "--use-fused", "false"]


def _ok(capsys, *argv) -> str:
    rc, out, err = _cli(capsys, *argv)
    assert rc == 0, err
    return out


def _series_csv(path: Path, times, values=None) -> Path:
    values = [math.sin(i / 3) for i in range(len(times))] if values is None else values
    path.write_text("t,y\n" + "".join(f"{t},{v}\n" for t, v in zip(times, values)))
    return path


def _sequences_csv(path: Path, n: int, classes=(0, 1), seed: int = 0) -> Path:
    """Wide CSV, no header: label, then 6 values (one feature per step)."""
    rng = np.random.default_rng(seed)
    rows = [f"{classes[i % len(classes)]}," + ",".join(f"{v:.4f}" for v in rng.normal(size=6)) for i in range(n)]
    path.write_text("\n".join(rows) + "\n")
    return path


# ----------------------------------------------------------------------------- 5: non-finite data


def test_inf_in_a_sequence_classification_csv_names_file_line_and_column(tmp_path, capsys):
    data = _sequences_csv(tmp_path / "seq.csv", 30)
    lines = data.read_text().splitlines()
    lines[2] = "1,0.5,0.25,inf,0.1"
    data.write_text("\n".join(lines) + "\n")
    assert _error(capsys, "train", "seqclass", "--data", data, "--out", tmp_path / "out", *SEQCLASS) == (
        f"{data} line 3, column 4: expected a finite number, found 'inf'")
    assert not (tmp_path / "out").exists()


TS = """@problemName Toy
@classLabel true up down
@data
1,2,3:up
4,{value},6:down
7,8:up
"""


@pytest.mark.parametrize("value, problem", [
    ("1e999", "expected a finite number, found '1e999'"),
    ("-inf", "expected a finite number, found '-inf'"),
    ("1e39", "expected a number within float32's range (|x| <= 3.4e38), found '1e39'"),  # inf in float32
])
def test_non_finite_value_in_a_ts_file_names_file_line_and_column(tmp_path, capsys, value, problem):
    data = tmp_path / "toy.ts"
    data.write_text(TS.format(value=value))
    assert _error(capsys, "train", "seqclass", "--data", data, "--out", tmp_path / "out", *SEQCLASS) == (
        f"{data} line 5, column 3: {problem}")


def test_infinity_in_a_numpy_array_is_refused_with_its_index(tmp_path, capsys):
    x = np.zeros((6, 4), dtype=np.float64)
    x[1, 2] = np.inf
    x[3, 3] = np.nan  # NaN marks a missing value: allowed
    np.savez(tmp_path / "seq.npz", x=x, y=np.array([0, 1] * 3))
    assert _error(capsys, "train", "seqclass", "--data", tmp_path / "seq.npz", "--out", tmp_path / "out", *SEQCLASS) == (
        f"{tmp_path / 'seq.npz'}: value inf at index (1, 2, 0) is not a finite float32 number; "
        "expected finite numbers (NaN marks a missing value)")


def test_forecast_value_too_large_for_the_scaler_is_one_line(tmp_path, capsys):
    data = _series_csv(tmp_path / "s.csv", range(60), [1e308 if i == 10 else math.sin(i / 3) for i in range(60)])
    assert _error(capsys, "train", "forecast", "--data", data, "--out", tmp_path / "out", *FORECAST) == (
        f"{data}: column 'y' holds values too large to scale into float32 (largest magnitude 1e+308)")
    assert _error(capsys, "train", "forecast", "--data", data, "--out", tmp_path / "out", *FORECAST,
                  "--scaler", "none") == (
        f"{data}: column 'y' holds values too large to scale into float32 (largest magnitude 1e+308)")
    assert not (tmp_path / "out").exists()


def _strict_json(data: bytes):
    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(data, parse_constant=refuse)


def test_artifact_json_stores_non_finite_metrics_as_null(tmp_path, capsys, monkeypatch):
    toy.register(monkeypatch)
    assert _strict_json(json_bytes({"metrics": {"loss": math.nan, "xs": [math.inf, 1.5, -math.inf]}})) == {
        "metrics": {"loss": None, "xs": [None, 1.5, None]}}
    plain = toy.ToyTask.evaluate
    monkeypatch.setattr(toy.ToyTask, "evaluate", lambda self, m, b: {**plain(self, m, b), "ratio": math.inf})
    _ok(capsys, "train", "toy", "--data", toy.write_series(tmp_path / "s.csv", n=120), "--out", tmp_path / "r", *TOY)
    meta = _strict_json((tmp_path / "r" / "artifact.json").read_bytes())
    assert meta["metrics"]["val_ratio"] is None and math.isfinite(meta["metrics"]["val_loss"])
    assert _strict_json((tmp_path / "r" / "history.json").read_bytes())["best"]["ratio"] is None


# ----------------------------------------------------------------------------- 6: tracebacks


@pytest.mark.parametrize("content, where", [
    ("t,y\n0,1\n1,caf\xe9\n".encode("latin-1"), "line 3 (byte 13): not valid UTF-8 (byte 0xe9)"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "line 1 (byte 0): not valid UTF-8 (byte 0x89)"),
])
def test_forecast_csv_that_is_not_utf8_is_one_line(tmp_path, capsys, content, where):
    data = tmp_path / "s.csv"
    data.write_bytes(content)
    assert _error(capsys, "train", "forecast", "--data", data, "--out", tmp_path / "out", *FORECAST) == (
        f"{data} {where}; expected UTF-8 text")


def test_horizon_longer_than_the_training_part_is_one_line(tmp_path, capsys):
    data = _series_csv(tmp_path / "s.csv", range(60))
    assert _error(capsys, "train", "forecast", "--data", data, "--out", tmp_path / "out", *FORECAST,
                  "--horizon", "50") == (
        f"{data}: the training part has 42 steps, fewer than lookback 5 + horizon 50; "
        "expected a shorter lookback or horizon, or smaller val/test parts")


def test_text_field_over_128_kib_is_read(tmp_path, capsys):
    long_text = "word " * 30_000  # 150,000 characters: over csv's default field limit of 131,072
    rows = [f'"{long_text}",pos'] + [f"text number {i},{('pos', 'neg')[i % 2]}" for i in range(20)]
    data = tmp_path / "t.csv"
    data.write_text("text,label\n" + "\n".join(rows) + "\n")
    _ok(capsys, "train", "textclass", "--data", data, "--out", tmp_path / "r", "--hidden-size", "4",
        "--embedding-dim", "4", "--max-length", "20", "--epochs", "1", "--quiet")
    # a number column with such a field: one short line, not csv's "field larger than field limit"
    series = _series_csv(tmp_path / "s.csv", range(60))
    series.write_text(series.read_text() + f'60,"{long_text}"\n')
    assert _error(capsys, "train", "forecast", "--data", series, "--out", tmp_path / "out", *FORECAST) == (
        f"{series} line 62, column 'y': expected a number, found {long_text[:37] + '...'!r}")


@pytest.mark.parametrize("key, value, problem", [
    ("model", 5, "'model' is a number, expected a JSON object"),
    ("task_state", [], "'task_state' is a JSON array, expected a JSON object"),
    ("weights", "x", "'weights' is a string, expected a JSON object"),
    ("task", 3, "'task' is a number, expected a string"),
])
def test_wrong_json_types_in_artifact_json_are_one_line(tmp_path, capsys, monkeypatch, key, value, problem):
    toy.register(monkeypatch)
    run = tmp_path / "r"
    _ok(capsys, "train", "toy", "--data", toy.write_series(tmp_path / "s.csv", n=120), "--out", run, *TOY)
    meta = json.loads((run / "artifact.json").read_text())
    (run / "artifact.json").write_text(json.dumps({**meta, key: value}))
    message = f"{run / 'artifact.json'}: damaged artifact ({problem})"
    with pytest.raises(UserError) as exc:
        rnnkit.load(run)
    assert str(exc.value) == message
    assert _error(capsys, "info", run) == message
    assert _error(capsys, "evaluate", run) == message


def test_info_into_a_closed_pipe_ends_quietly(tmp_path, capsys, monkeypatch):
    """``rnnkit info DIR | head -1``: the reader is gone before rnnkit writes; no BrokenPipeError
    traceback, exit status 141 (as a command ended by SIGPIPE)."""
    toy.register(monkeypatch)
    run = tmp_path / "r"
    _ok(capsys, "train", "toy", "--data", toy.write_series(tmp_path / "s.csv", n=120), "--out", run, *TOY)
    src = str(Path(rnnkit.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    p = subprocess.Popen([sys.executable, "-m", "rnnkit", "info", str(run)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    p.stdout.close()  # the pipe's only reader: every write of rnnkit's now fails with EPIPE
    err = p.stderr.read().decode()
    assert p.wait() == 141 and err == ""


# ----------------------------------------------------------------------------- 8: silent data issues


def test_sequence_classification_with_one_class_is_refused(tmp_path, capsys):
    data = _sequences_csv(tmp_path / "seq.csv", 30, classes=(7,))
    assert _error(capsys, "train", "seqclass", "--data", data, "--out", tmp_path / "out", *SEQCLASS) == (
        f"{data}: only one class (7) in the training data; need at least 2")


def test_forecast_times_must_increase_or_be_sorted_and_never_repeat(tmp_path, capsys):
    times = list(range(60))
    times[10], times[11] = 11, 10
    data = _series_csv(tmp_path / "s.csv", times)
    assert _error(capsys, "train", "forecast", "--data", data, "--out", tmp_path / "out", *FORECAST) == (
        f"{data} lines 12 and 13: time '10' comes before '11'; expected increasing times (or --sort-time to "
        "sort the rows)")
    dates = _series_csv(tmp_path / "d.csv", [f"2020-01-{d:02d}" for d in range(1, 29)] + ["2020-01-27"])
    assert _error(capsys, "train", "forecast", "--data", dates, "--out", tmp_path / "out", *FORECAST, "--sort-time") == (
        f"{dates} lines 28 and 30: time '2020-01-27' appears twice; expected each time once")
    _ok(capsys, "train", "forecast", "--data", data, "--out", tmp_path / "r", *FORECAST, "--sort-time")
    meta = json.loads((tmp_path / "r" / "artifact.json").read_text())
    assert meta["task_config"]["sort_time"] is True and meta["task_state"]["history"]["time"][-3:] == ["57", "58", "59"]


# ----------------------------------------------------------------------------- 9: evaluate --data


def test_evaluate_scores_all_of_a_file_given_with_data(tmp_path, capsys):
    train = _sequences_csv(tmp_path / "train.csv", 60)
    test = _sequences_csv(tmp_path / "test.csv", 370, seed=1)
    run = tmp_path / "r"
    _ok(capsys, "train", "seqclass", "--data", train, "--out", run, *SEQCLASS)
    metrics = json.loads(_ok(capsys, "evaluate", run, "--data", test, "--json"))
    assert metrics["examples"] == 370 and np.array(metrics["confusion"]).sum() == 370  # was 37: the val slice
    assert (run / "confusion_data.png").exists()
    assert "        examples 370\n" in _ok(capsys, "evaluate", run, "--data", test)
    assert json.loads(_ok(capsys, "evaluate", run, "--json"))["examples"] == 4  # the val split (--val-size 4)
    assert _error(capsys, "evaluate", run, "--data", test, "--split", "test") == (
        "--split test: a file given with --data is evaluated whole; leave out --split")


def test_evaluate_a_forecasting_file_scores_every_window_with_the_trained_scaler(tmp_path, capsys):
    run = tmp_path / "r"
    _ok(capsys, "train", "forecast", "--data", _series_csv(tmp_path / "s.csv", range(80)), "--out", run, *FORECAST,
        "--horizon", "2")
    other = _series_csv(tmp_path / "o.csv", range(30), [5 + math.cos(i) for i in range(30)])
    metrics = json.loads(_ok(capsys, "evaluate", run, "--data", other, "--json"))
    assert metrics["examples"] == 30 - 5 - 2 + 1 and "naive_mse" in metrics
    f = rnnkit.load(run)
    z = f.scaler.transform(np.array([[5 + math.cos(i)] for i in range(30)]))  # the trained scaler, not refitted
    assert metrics["naive_mse"] == pytest.approx(np.mean([(z[t + k, 0] - z[t - 1, 0]) ** 2 for t in range(5, 29)
                                                          for k in range(2)]))


def test_evaluate_a_text_file_scores_every_text_and_every_token(tmp_path, capsys):
    texts = [f"{w} game {i}" for i, w in enumerate(["team", "cake"] * 10)]
    train = tmp_path / "t.csv"
    train.write_text("text,label\n" + "".join(f"{t},{'sport' if 'team' in t else 'food'}\n" for t in texts))
    _ok(capsys, "train", "textclass", "--data", train, "--out", tmp_path / "tc", "--hidden-size", "4",
        "--embedding-dim", "4", "--epochs", "1", "--quiet")
    assert json.loads(_ok(capsys, "evaluate", tmp_path / "tc", "--data", train, "--json"))["examples"] == 20
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world, hello rnnkit. " * 20)
    _ok(capsys, "train", "textgen", "--data", corpus, "--out", tmp_path / "tg", "--hidden-size", "8",
        "--seq-len", "8", "--batch-size", "4", "--max-steps", "2", "--quiet")
    (tmp_path / "other.txt").write_text("hello rnnkit, hello world.")
    metrics = json.loads(_ok(capsys, "evaluate", tmp_path / "tg", "--data", tmp_path / "other.txt", "--json"))
    assert metrics["examples"] == metrics["tokens"] == len("hello rnnkit, hello world.") - 1
