"""The rnnkit CLI: train/resume/evaluate/info/predict on a toy task; SIGKILL + resume gives
bit-identical weights; every listed bad input is one pinned line on stderr, exit 2, nothing written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rnnkit
from rnnkit.artifacts import read_tensors
from rnnkit.cli.main import main
from conftest import run_cli as _cli

TESTS = Path(__file__).parent
TRAIN = ["--epochs", "2", "--hidden-size", "6", "--embedding-dim", "4", "--seq-len", "5", "--eval-every", "3",
         "--checkpoint-every", "2", "--embedding-dropout", "0.2", "--seed", "5", "--quiet", "--use-fused", "false"]


pytestmark = pytest.mark.usefixtures("toy_task")


def test_train_evaluate_info_predict(tmp_path, csv, capsys):
    rc, out, _ = _cli(capsys, "train", "toy", "--data", csv, "--out", tmp_path / "r", *TRAIN)
    assert rc == 0 and out.startswith(f"saved {tmp_path / 'r'} (best at step ")
    rc, out, err = _cli(capsys, "evaluate", tmp_path / "r", "--split", "test", "--json")
    metrics = json.loads(out)  # exactly one JSON object
    assert rc == 0 and out.count("\n") == 1 and set(metrics) == {"loss", "rmse", "examples"}
    assert metrics["rmse"] == pytest.approx(metrics["loss"] ** 0.5)
    rc, out, _ = _cli(capsys, "info", tmp_path / "r", "--json")
    info = json.loads(out)
    assert info["task"] == "toy" and info["status"] == "complete" and info["step"] == 2 * 4
    rc, out, _ = _cli(capsys, "predict", tmp_path / "r", "--values", "0.1,0.5,0.9")
    assert rc == 0 and float(out) == pytest.approx(rnnkit.load(tmp_path / "r").predict([0.1, 0.5, 0.9]), abs=1e-6)


def test_snake_and_kebab_flags_and_config_precedence(tmp_path, csv, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('task = "toy"\n[model]\nhidden_size = 5\ncell = "gru"\n[train]\nepochs = 1\n[data]\nseq_len = 4\n')
    rc, _, err = _cli(capsys, "train", "--config", cfg, "--data", csv, "--out", tmp_path / "r", "--hidden_size", "7",
                      "--quiet", "--use_fused", "false")
    assert rc == 0, err
    meta = json.loads((tmp_path / "r" / "artifact.json").read_text())
    assert meta["model"]["hidden_size"] == 7 and meta["model"]["cell"] == "gru"  # flag > file > default
    assert meta["train"]["epochs"] == 1 and meta["task_config"]["seq_len"] == 4
    assert meta["train"]["lr"] == 2e-3  # default


def _run(args, env_extra=None, check=True):
    src = Path(rnnkit.__file__).parents[1]  # the rnnkit under test, not whichever one is installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(src)]), **(env_extra or {})}
    code = "import rnnkit_toytask as t, sys; t.cli_main(sys.argv[1:])"
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def _weights(d):
    return {n: read_tensors(d / n, n) for n in ("model.safetensors", "checkpoint/model.safetensors")}


def test_sigkill_during_training_and_during_save_then_resume_is_bit_identical(tmp_path, csv):
    _run(["train", "toy", "--data", csv, "--out", tmp_path / "ref", *TRAIN])
    ref = _weights(tmp_path / "ref")
    # killed right after step 5 (last checkpoint: step 4)
    p = _run(["train", "toy", "--data", csv, "--out", tmp_path / "a", *TRAIN], {"RNNKIT_TEST_KILL_AT_STEP": "5"}, False)
    assert p.returncode == -9
    assert json.loads((tmp_path / "a" / "artifact.json").read_text())["step"] == 4
    # killed half-way through writing a file of the second save (a save writes 8 files)
    p = _run(["train", "toy", "--data", csv, "--out", tmp_path / "b", *TRAIN], {"RNNKIT_TEST_KILL_AT_WRITE": "12"}, False)
    assert p.returncode == -9
    assert json.loads((tmp_path / "b" / "artifact.json").read_text())["step"] == 2
    rnnkit.load(tmp_path / "b")  # the previous artifact is intact and loadable
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for d in ("a", "b"):
            assert main(["resume", str(tmp_path / d), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    for d in ("a", "b"):
        got = _weights(tmp_path / d)
        for name, tensors in ref.items():
            for k, v in tensors.items():
                assert torch.equal(v, got[name][k]), (d, name, k)


def _bad(capsys, tmp_path, *argv):
    rc, out, err = _cli(capsys, *argv)
    assert rc == 2 and out == "" and err.count("\n") == 1 and err.startswith("rnnkit: error: ")
    assert not (tmp_path / "out").exists()  # nothing written
    return err[len("rnnkit: error: "):].rstrip("\n")


def test_bad_inputs_one_line_exit_2(tmp_path, csv, capsys):
    def train(data, *extra):
        return _bad(capsys, tmp_path, "train", "toy", "--data", data, "--out", tmp_path / "out", "--quiet", *extra)

    assert train(tmp_path / "missing.csv") == (
        f"data '{tmp_path / 'missing.csv'}': no such file, and not a named dataset (named datasets: tinyshakespeare, "
        "mnist, imdb, etth1, etth2, airline-passengers, monthly-sunspots, daily-min-temperatures, fsdd, eng-fra, m4-hourly, "
        "conll2003, wnut17, "
        "ud-en-ewt)")
    (tmp_path / "empty.csv").write_bytes(b"")
    assert train(tmp_path / "empty.csv") == f"{tmp_path / 'empty.csv'}: file is empty"
    (tmp_path / "bin.csv").write_bytes(b"value\n1.0\n\xff\xfe\n")
    assert train(tmp_path / "bin.csv") == (
        f"{tmp_path / 'bin.csv'} line 3 (byte 10): not valid UTF-8 (byte 0xff); expected UTF-8 text")
    assert train(csv, "--column", "Value") == f"{csv}: no column 'Value'; expected one of: value; did you mean 'value'?"
    (tmp_path / "nan.csv").write_text("value\n1\n2\nnan\n4\n")
    assert train(tmp_path / "nan.csv") == f"{tmp_path / 'nan.csv'} line 4, column 'value': expected a finite number, found 'nan'"
    assert train(csv, "--hidden-size", "abc") == "--hidden-size: expected an integer, got 'abc'"
    assert train(csv, "--lr", "fast") == "--lr: expected a number, got 'fast'"
    assert train(csv, "--cell", "lstmm") == "--cell: expected one of rnn, lstm, gru, mingru, minlstm, got 'lstmm'"
    assert train(csv, "--max-steps", "x") == "--max-steps: expected an integer or none, got 'x'"
    assert train(csv, "--weight-dropout", "1.0") == "--weight-dropout: weight_dropout must be in [0, 1), got 1.0"
    assert train(csv, "--ema", "1.5") == "--ema: ema must be in [0, 1), got 1.5"
    # numbers of the right type but out of range: one line, not a traceback or an untrained model
    assert train(csv, "--epochs", "0") == "--epochs: epochs must be positive, got 0"
    assert train(csv, "--max-steps", "0") == "--max-steps: max_steps must be positive, got 0"
    assert train(csv, "--lr", "-1") == "--lr: lr must not be negative, got -1.0"
    assert train(csv, "--beta2", "1") == "--beta2: beta2 must be in [0, 1), got 1.0"
    assert train(csv, "--hidden-size", "0") == "--hidden-size: hidden_size must be at least 1, got 0"
    assert train(csv, "--num-layers", "0") == "--num-layers: num_layers must be at least 1, got 0"
    assert train(csv, "--hiden-size", "3") == "unknown option --hiden-size; did you mean --hidden-size?"
    assert _bad(capsys, tmp_path, "train", "toyy", "--data", csv, "--out", tmp_path / "out") == (
        "unknown task 'toyy'; expected one of: textgen, forecast, textclass, seqclass, tag, transcribe, seq2seq, toy")
    cfg = tmp_path / "c.json"
    cfg.write_text('{"model": {"hiden_size": 4}}')
    assert train(csv, "--config", cfg) == f"{cfg} [model]: unknown key 'hiden_size'; did you mean 'hidden_size'?"
    cfg.write_text('{"modle": {}}')
    assert train(csv, "--config", cfg) == f"{cfg}: unknown key 'modle'; did you mean 'model'?"


def test_bad_artifacts_one_line_exit_2(tmp_path, csv, capsys):
    run = tmp_path / "r"
    assert _cli(capsys, "train", "toy", "--data", csv, "--out", run, *TRAIN)[0] == 0
    assert _bad(capsys, tmp_path, "sample", run) == "task 'toy' has no 'sample' command"
    assert _bad(capsys, tmp_path, "evaluate", tmp_path / "nope") == f"{tmp_path / 'nope'}: no such artifact directory"
    # with a task option the artifact would have defined: still the missing directory, not "unknown option"
    assert _bad(capsys, tmp_path, "predict", tmp_path / "nope", "--horizon", "3") == (
        f"{tmp_path / 'nope'}: no such artifact directory")
    meta = json.loads((run / "artifact.json").read_text())
    (run / "artifact.json").write_text(json.dumps({**meta, "format_version": 3}))
    assert _bad(capsys, tmp_path, "evaluate", run) == (
        f"{run / 'artifact.json'}: format_version 3 is newer than this rnnkit (2, rnnkit {rnnkit.__version__} wrote "
        "it); upgrade rnnkit")
    (run / "artifact.json").write_text("{")
    assert _bad(capsys, tmp_path, "info", run).startswith(f"{run / 'artifact.json'} line 1 column 2: damaged artifact.json")
    (run / "artifact.json").write_text(json.dumps(meta))
    (run / "model.safetensors").write_bytes(b"garbage")
    assert _bad(capsys, tmp_path, "predict", run, "--values", "1") == (
        f"{run / 'model.safetensors'}: damaged weights (sha256 does not match artifact.json)")
    assert _bad(capsys, tmp_path, "train", "toy", "--data", csv, "--out", run) == (
        f"--out {run}: already holds an artifact; use `rnnkit resume {run}`, another --out, or --overwrite")



@pytest.mark.parametrize("argv, message", [
    (["forecast", "--horizon", "0"], "--horizon: horizon must be at least 1, got 0"),
    (["forecast", "--lookback", "0"], "--lookback: lookback must be at least 1, got 0"),
    (["forecast", "--batch-size", "0"], "--batch-size: batch_size must be at least 1, got 0"),
    (["forecast", "--val", "-1"], "--val: val must not be negative, got -1.0"),
    (["seqclass", "--batch-size", "0"], "--batch-size: batch_size must be at least 1, got 0"),
    (["seqclass", "--val-size", "-1"], "--val-size: val_size must not be negative, got -1.0"),
    (["textclass", "--ngram-buckets", "-1"], "ngram_buckets must not be negative, got -1"),
])
def test_out_of_range_task_options_are_one_line_errors(tmp_path, capsys, argv, message):
    """Checked when the options are read, before any data: no traceback (these gave ZeroDivisionError,
    a reshape error and an OverflowError), nothing written."""
    task, *flags = argv
    assert _bad(capsys, tmp_path, "train", task, "--data", tmp_path / "unread.csv", "--out", tmp_path / "out",
                "--quiet", *flags) == message


def test_verb_help_without_a_run_lists_each_tasks_options(capsys):
    for verb, line in (("predict", "forecast: --data --horizon --out --plot"), ("sample", "textgen: --prime --length"),
                       ("evaluate", "forecast: --backtest --stride")):
        with pytest.raises(SystemExit) as exit_:
            main([verb, "--help"])
        assert exit_.value.code == 0 and line in capsys.readouterr().out
