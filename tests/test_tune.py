"""rnnkit tune: search spaces, pruning on the trainer's evaluations, the study in DIR (preset,
resume after an interrupted trial, worker processes) and the command line. Trials are tiny
textgen runs on the bundled pangrams text."""

import csv
import json
import time
from dataclasses import replace

import pytest
import torch

from conftest import assert_same_weights, cli_error, run_cli

optuna = pytest.importorskip("optuna", reason="rnnkit tune needs optuna (the test extra installs it)")

import rnnkit  # noqa: E402
from rnnkit.errors import UserError  # noqa: E402
from rnnkit.models import ModelConfig, SequenceModel  # noqa: E402
from rnnkit.tasks import TASK_MODULES  # noqa: E402
from rnnkit.training.config import TrainConfig  # noqa: E402
from rnnkit.training.trainer import Trainer  # noqa: E402
from rnnkit.tuning import make_spec, search_space  # noqa: E402
from rnnkit.tuning.space import DEFAULT_SPACES, trial_configs  # noqa: E402
from rnnkit.tuning.study import (  # noqa: E402
    PruneOnEvaluation, StudyLock, _trial_train, open_study, study_storage, work,
)

TINY = {  # a few-step textgen run; only the cell and the learning rate are searched
    "data": {"seq_len": 8, "batch_size": 4},
    "model": {"hidden_size": 8, "embedding_dim": 8},
    "train": {"max_steps": 6, "eval_every": 3, "log_every": 0},
    "tune": {"default_space": False, "model": {"cell": ["rnn", "gru"]},
             "train": {"lr": {"low": 1e-3, "high": 1e-1, "log": True}}},
}


def _study(out):
    return optuna.load_study(study_name="rnnkit", storage=f"sqlite:///{out / 'study.db'}")


# ------------------------------------------------------------------------------------ spaces

@pytest.mark.parametrize("task", list(TASK_MODULES))
def test_the_default_space_of_every_task_resolves_to_valid_configs(task):
    space = search_space(task)
    assert set(space.names()) == set(DEFAULT_SPACES[task]) and space.fixed == {}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(25):
        trial = study.ask()
        values = space.suggest(trial)
        configs = trial_configs(task, {}, values, trial.number)  # typed and checked as `rnnkit train` does
        for name, value in values.items():
            section, field = name.split(".")
            assert getattr(configs[section], field) == value
        assert configs["train"].seed == trial.number
        study.tell(trial, 0.0)


def test_the_tune_section_narrows_fixes_and_replaces_the_default_space():
    space = search_space("forecast", {"model": {"cell": ["gru"], "hidden_size": [16, 32]}, "data": {"lookback": 30},
                                      "train": {"lr": {"low": 1e-3, "high": 1e-2, "log": True}}})
    params = {p.name: p for p in space.params}
    assert space.fixed == {"model.cell": "gru", "data.lookback": 30}  # one choice or a value: fixed
    assert params["model.hidden_size"].choices == (16, 32)
    assert (params["train.lr"].low, params["train.lr"].high, params["train.lr"].log) == (1e-3, 1e-2, True)
    assert "data.window_norm" in params  # the rest of the default space stays
    only = search_space("forecast", {"default_space": False, "data": {"lookback": {"low": 10, "high": 40, "step": 10}}})
    assert only.names() == ["data.lookback"] and only.params[0].kind is int


@pytest.mark.parametrize("section, message", [
    ({"model": {"hiden_size": [8]}}, "[tune].model: unknown key 'hiden_size'; did you mean 'hidden_size'?"),
    ({"model": {"cell": ["lstm", "transformer"]}}, "[tune].model.cell: expected one of rnn, lstm, gru, mingru, "
                                                   "minlstm, got 'transformer'"),
    ({"model": {"cell": {"low": 1, "high": 2}}}, "[tune].model.cell: a range needs a number field; give a list "
                                                 "of choices instead"),
    ({"train": {"lr": {"low": 0.1, "high": 0.01}}}, "[tune].train.lr: expected low < high, got low=0.1, high=0.01"),
    ({"default_space": False, "model": {"cell": "gru"}}, "[tune]: nothing to search (every parameter is fixed); "
                                                        "add a list or a range"),
])
def test_a_bad_tune_section_is_one_line(section, message):
    with pytest.raises(UserError) as err:
        search_space("textgen", section)
    assert str(err.value) == message


# ----------------------------------------------------------------------------------- pruning

class _Chunks:
    """Two batches of a sine: a source for a model whose validation score the test sets."""

    def __len__(self):
        return 2

    def epoch(self, epoch, seed):
        from rnnkit.data.batching import Batch

        x = torch.sin(torch.arange(16.0)).view(2, 8, 1)
        for k in range(2):
            yield Batch(x[k:k + 1], x[k:k + 1])


def _fit_reporting(trial, validation_value):
    """A 6-step fit evaluated after every step, whose validation loss is always ``validation_value``."""
    torch.manual_seed(0)
    model = SequenceModel(ModelConfig(encoder="linear", input_size=1, embedding_dim=2, hidden_size=2, output_size=1))
    pruning = PruneOnEvaluation(trial)
    history = Trainer(TrainConfig(max_steps=6, eval_every=1, log_every=0), [pruning]).fit(
        model, _Chunks(), lambda out, batch: torch.nn.functional.mse_loss(out, batch.targets),
        lambda m: {"loss": validation_value})
    return history, pruning


def test_pruning_stops_a_trial_whose_intermediate_value_is_worse_than_the_median():
    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    for value in (1.0, 2.0):  # two finished trials: the median at every evaluation is 1.5
        trial = study.ask()
        for step in range(1, 7):
            trial.report(value, step)
        study.tell(trial, value)
    worse = study.ask()
    history, pruning = _fit_reporting(worse, 3.0)
    assert pruning.pruned_at == 1 and history.steps_taken == 1 and len(history.eval) == 1
    assert history.stop_reason == "pruned by the tuner after evaluation 1 (val loss 3)"
    assert study.trials[2].intermediate_values == {1: 3.0}
    better = study.ask()
    history, pruning = _fit_reporting(better, 0.5)
    assert pruning.pruned_at is None and history.steps_taken == 6
    assert study.trials[3].intermediate_values == {step: 0.5 for step in range(1, 7)}


# ----------------------------------------------------------------------------------- studies

def test_tune_writes_a_preset_that_reproduces_the_best_trial(tmp_path, capsys):
    config = tmp_path / "tune.json"
    config.write_text(json.dumps(TINY))
    out = tmp_path / "study"
    rc, stdout, _ = run_cli(capsys, "tune", "textgen", "--data", "pangrams", "--out", out, "--trials", 3,
                            "--config", config, "--log", "tensorboard")
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    best = summary["best"]
    assert summary["trials"] == {"complete": 3} and summary["monitor"] == "loss"
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["number"] for r in rows] == ["0", "1", "2"]
    assert float(min(rows, key=lambda r: float(r["value"]))["value"]) == best["value"]
    assert f"best: trial {best['number']}, val loss {best['value']:.6g}" in stdout
    assert (out / "best").resolve() == (out / "trials" / str(best["number"])).resolve()
    assert type(rnnkit.load(out / "best")).__name__ == "TextGenerator"
    assert (out / "tuning.png").read_bytes()[:4] == b"\x89PNG"
    assert list((out / "trials" / "0" / "tensorboard").glob("events.out.tfevents.*"))
    again = tmp_path / "again"
    rc, _, _ = run_cli(capsys, "train", "textgen", "--config", out / "best-config.json", "--out", again, "--quiet")
    assert rc == 0
    assert json.loads((again / "artifact.json").read_text())["metrics"]["val_loss"] == best["value"]
    assert_same_weights(out / "best", again)


def test_an_interrupted_trial_is_retried_when_tune_runs_again(tmp_path):
    out = tmp_path / "study"
    spec = make_spec("textgen", "pangrams", out, 2, None, TINY, 1, "median", (), False)
    out.mkdir()
    killed = open_study(spec, study_storage(out)).ask()  # a trial whose process died: RUNNING for ever
    killed_params = spec.space.suggest(killed)
    holder = StudyLock(out, exclusive=True)  # another tune command running the study
    with pytest.raises(UserError, match="another rnnkit tune is running this study"):
        rnnkit.tune("textgen", "pangrams", out, trials=2, config=TINY, progress=False)
    holder.release()
    summary = rnnkit.tune("textgen", "pangrams", out, trials=2, config=TINY, progress=False)
    trials = _study(out).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[0].user_attrs["interrupted"] is True
    assert trials[1].params == killed_params and trials[1].user_attrs["retry_of"] == 0
    assert summary.counts == {"fail": 1, "complete": 2} and summary.rows[0]["state"] == "fail (interrupted)"
    with pytest.raises(UserError, match="holds a study with data 'pangrams', not 'hello-world'; use another --out"):
        rnnkit.tune("textgen", "hello-world", out, trials=2, config=TINY, progress=False)


def test_two_workers_share_the_study_and_finish_exactly_the_planned_trials(tmp_path):
    out = tmp_path / "study"
    summary = rnnkit.tune("textgen", "pangrams", out, trials=4, config=TINY, jobs=2, progress=False)
    trials = _study(out).trials
    assert [t.number for t in trials] == [0, 1, 2, 3] and {t.state.name for t in trials} == {"COMPLETE"}
    assert {t.user_attrs["worker"] for t in trials} <= {0, 1}
    assert summary.best_value == min(t.value for t in trials)


def test_the_time_budget_caps_each_trial_and_stops_new_ones(tmp_path):
    out = tmp_path / "study"
    spec = make_spec("textgen", "pangrams", out, None, 100.0, TINY, 1, "median", (), False)
    left = _trial_train(TrainConfig(time_budget=500.0), spec).time_budget
    assert 90.0 < left <= 100.0
    assert _trial_train(TrainConfig(time_budget=5.0), spec).time_budget == 5.0
    out.mkdir()
    work(replace(spec, deadline=time.time() + 1.0))  # less than 5 % of the budget left: no trial starts
    assert _study(out).trials == []


# ------------------------------------------------------------------------------ command line

def test_tune_needs_a_limit_a_study_directory_and_optuna(tmp_path, capsys, monkeypatch):
    out = tmp_path / "study"
    assert cli_error(capsys, "tune", "textgen", "--data", "pangrams", "--out", out) == \
        "tune: expected --trials N and/or --time-budget SECONDS"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "artifact.json").write_text("{}")
    assert cli_error(capsys, "tune", "textgen", "--data", "pangrams", "--out", tmp_path / "run", "--trials", 1) == \
        f"--out {tmp_path / 'run'}: is not empty and holds no rnnkit study (study.db); choose a new or empty directory"
    monkeypatch.setitem(__import__("sys").modules, "optuna", None)  # as if it were not installed
    assert cli_error(capsys, "tune", "textgen", "--data", "pangrams", "--out", out, "--trials", 2) == \
        "rnnkit tune needs optuna: pip install 'rnnkit[tune]'"
    assert not out.exists()
