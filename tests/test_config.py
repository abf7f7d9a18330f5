"""Config resolution: defaults < file < flags, typed by the dataclass, nearest-key errors."""

from pathlib import Path

import pytest

from rnnkit.cli.flags import apply_flags, resolve_configs, snake_case
from rnnkit.errors import UserError
from rnnkit.models import ModelConfig
from rnnkit.training.config import TrainConfig, coerce, from_dict, load_config_file

CLASSES = {"model": ModelConfig, "train": TrainConfig}


def test_precedence_defaults_file_flags(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[model]\nhidden_size = 32\nnum_layers = 2\n[train]\nlr = 0.01\nmax_steps = 7\n')
    cfg, _ = resolve_configs(CLASSES, f, {"num_layers": "3", "clip_grad_norm": "none", "bidirectional": "true"})
    assert cfg["model"].hidden_size == 32  # file over default
    assert cfg["model"].num_layers == 3  # flag over file
    assert cfg["model"].bidirectional is True and cfg["model"].cell == "lstm"
    assert cfg["train"].lr == 0.01 and cfg["train"].max_steps == 7 and cfg["train"].clip_grad_norm is None
    assert cfg["train"].epochs == TrainConfig().epochs


def test_json_file_and_types(tmp_path):
    f = tmp_path / "c.json"
    f.write_text('{"task": "textgen", "dataset": "tinyshakespeare", "train": {"lr": 1, "time_budget": 30}}')
    cfg, raw = resolve_configs(CLASSES, f, {})
    assert raw["task"] == "textgen" and cfg["train"].lr == 1.0 and isinstance(cfg["train"].lr, float)
    assert cfg["train"].time_budget == 30.0


@pytest.mark.parametrize("d, message", [
    ({"hidden_size": 1.5}, "c [model]: hidden_size: expected an integer, got 1.5"),
    ({"hidden_size": True}, "c [model]: hidden_size: expected an integer, got True"),
    ({"bidirectional": "maybe"}, "c [model]: bidirectional: expected true or false, got 'maybe'"),
    ({"cell": "lstmm"}, "c [model]: cell: expected one of rnn, lstm, gru, mingru, minlstm, got 'lstmm'"),
    ({"hiden_size": 3}, "c [model]: unknown key 'hiden_size'; did you mean 'hidden_size'?"),
    ({"zzz": 3}, "c [model]: unknown key 'zzz'"),
])
def test_file_value_errors(d, message):
    with pytest.raises(UserError) as err:
        from_dict(ModelConfig, d, "c [model]")
    assert str(err.value) == message


def test_flag_errors_and_choices():
    with pytest.raises(UserError, match=r"^--optimizer: expected one of adamw, adam, sgd, rmsprop, got 'adagrad'$"):
        apply_flags(TrainConfig(), {"optimizer": "adagrad"})
    with pytest.raises(UserError, match=r"^--schedule: expected one of constant, cosine, step, got 'linear'$"):
        apply_flags(TrainConfig(), {"schedule": "linear"})
    assert coerce("1e-3", float, "--lr") == 1e-3 and coerce("no", bool, "--x") is False


def test_config_file_errors(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[model\nhidden_size = 3\n")
    with pytest.raises(UserError, match=r"c.toml: invalid TOML \(.*line 1"):
        load_config_file(f)
    f.write_text("[trian]\nlr = 1\n")
    with pytest.raises(UserError, match=r"c.toml: unknown key 'trian'; did you mean 'train'\?$"):
        load_config_file(f)
    with pytest.raises(UserError, match=r"nope.toml: config file not found$"):
        load_config_file(tmp_path / "nope.toml")


def test_snake_case_metric_names():
    assert [snake_case(k) for k in ("loss", "bitsPerChar", "top-5 acc", "MAE")] == ["loss", "bits_per_char", "top_5_acc", "mae"]




def test_by_horizon_sections_are_gone(tmp_path):
    """Per-horizon sections were removed with in-run ensembles: such a file names the key."""
    f = tmp_path / "c.json"
    f.write_text('{"by_horizon": {"96": {}}}')
    with pytest.raises(UserError, match=r"c.json: unknown key 'by_horizon'"):
        load_config_file(f)


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.json")),
                         ids=lambda p: p.stem)
def test_every_preset_resolves_for_its_task(path):
    """Each configs/*.json names a task and dataset and its sections are that task's options."""
    from rnnkit.tasks import get_task

    d = load_config_file(path)
    task = get_task(d["task"])
    assert d.get("dataset") and set(d) <= {"task", "dataset", "data", "model", "train"}
    from_dict(task.Config, d.get("data", {}), str(path))
    from_dict(ModelConfig, d.get("model", {}), str(path))
    from_dict(TrainConfig, d.get("train", {}), str(path))
