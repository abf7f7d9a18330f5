"""Artifacts written by past format versions (tests/fixtures/artifacts/v*/) still load and work.

The expected values were computed with the code that wrote the fixtures (see the fixtures'
README.md), so these tests compare against an independent reference, not against themselves.
"""

import json
import shutil
from pathlib import Path

import pytest

import rnnkit
from rnnkit import artifacts
from rnnkit.runs import open_run
from rnnkit.cli.main import main
from rnnkit.errors import UserError

V1 = Path(__file__).parent / "fixtures" / "artifacts" / "v1"


def _copy(tmp_path, name: str) -> Path:
    """A writable copy of a fixture run (evaluate and export may add files to a run directory)."""
    return Path(shutil.copytree(V1 / name, tmp_path / name))


def test_v1_textgen_run_loads_samples_and_evaluates_as_it_did(tmp_path, capsys):
    run = _copy(tmp_path, "textgen")
    gen = rnnkit.load(run)
    assert gen.sample("The ", 12, temperature=0) == "The diddddddiddd"  # rnnkit at 4238f6c
    stored = json.loads((run / "artifact.json").read_text())["metrics"]["val_loss"]
    assert main(["evaluate", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(stored, rel=1e-6)
    assert main(["info", str(run)]) == 0
    assert "format v1" in capsys.readouterr().out


def test_v1_forecast_run_loads_and_predicts_as_it_did(tmp_path, capsys):
    run = _copy(tmp_path, "forecast")
    f = rnnkit.load(run)
    pred = f.predict(2)
    assert pred.values[:, 0].tolist() == pytest.approx([0.17315099483600732, -0.05442976701560658], rel=1e-5)
    stored = json.loads((run / "artifact.json").read_text())["metrics"]["val_mse"]
    assert main(["evaluate", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mse"] == pytest.approx(stored, rel=1e-6)
    assert artifacts.read_meta(run)["format_version"] == 1


def test_v1_ensemble_inside_one_model_is_a_one_line_error(tmp_path, capsys):
    run = _copy(tmp_path, "textgen-ensemble")
    for argv in (["sample", str(run), "--prime", "The "], ["info", str(run)], ["evaluate", str(run)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"rnnkit: error: {run / 'artifact.json'}: ")
        assert "an ensemble of 2 networks inside one model (format_version 1, rnnkit 0.1.0)" in err


def test_v1_member_of_an_ensemble_trained_in_turn_loads_with_its_own_loss(tmp_path):
    """Format 1 wrote each member of an ensemble trained in turn as a run of its own, whose
    task_config still held the ensemble's keys and one loss per member."""
    run = _copy(tmp_path, "forecast")
    meta = json.loads((run / "artifact.json").read_text())
    meta["task_config"].update(ensemble=2, ensemble_lead_share=0.5, member_weights="validation", loss="mse,mae")
    meta["in_turn"] = {"member": 1, "shares": [0.5, 0.5]}
    (run / "artifact.json").write_text(json.dumps(meta))
    art = open_run(run)
    assert art.task_config.loss == "mae" and not hasattr(art.task_config, "ensemble")
    assert rnnkit.load(run).predict(2).values.shape == (2, 1)


def test_v1_ensemble_trained_in_turn_names_the_command_that_rebuilds_it(tmp_path):
    """Format 1's in-turn ensemble kept its members as runs under members/<m>: the error says how
    `rnnkit ensemble` joins them into a format 2 ensemble."""
    run = _copy(tmp_path, "forecast")
    meta = json.loads((run / "artifact.json").read_text())
    meta["in_turn"] = {"shares": [0.5, 0.25, 0.25]}
    (run / "artifact.json").write_text(json.dumps(meta))
    with pytest.raises(UserError) as err:
        rnnkit.load(run)
    assert str(err.value).endswith(f"rebuild it as format_version 2: `rnnkit ensemble {run}/members/0 "
                                   f"{run}/members/1 {run}/members/2 --out NEW_DIR`")


def test_v1_single_run_joins_a_v2_ensemble(tmp_path):
    """A format 1 run is a member like any other: with a new run of the same data and options."""
    from rnnkit.models import ModelConfig
    from rnnkit.tasks import get_task
    from rnnkit.training.config import TrainConfig
    from rnnkit.runs import train_task

    old = _copy(tmp_path, "textgen")
    config = get_task("textgen").Config(seq_len=8, batch_size=2, val_fraction=0.2)
    train_task("textgen", "pangrams", tmp_path / "new", ModelConfig(cell="gru", hidden_size=4, embedding_dim=4),
               TrainConfig(max_steps=2, seed=1), config, progress=False)
    gen = rnnkit.ensemble([old, tmp_path / "new"], out=tmp_path / "ens", weights="validation")
    assert len(gen.sample("The ", 8, temperature=0)) == 12
    assert open_run(tmp_path / "ens").members[0].meta["format_version"] == 1
