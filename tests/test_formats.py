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
from rnnkit.cli.main import main

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
    art = artifacts.read_artifact(run)
    assert art.task_config.loss == "mae" and not hasattr(art.task_config, "ensemble")
    assert rnnkit.load(run).predict(2).values.shape == (2, 1)
