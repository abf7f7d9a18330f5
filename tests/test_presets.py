"""The ensemble presets (benchmarks/presets/*.sh): valid bash, every member config resolves, the
training budgets stay within the presets' totals, and the steps are the documented ones (a dry
run with RNNKIT=echo prints the commands instead of running them)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from rnnkit.cli.flags import resolve_configs
from rnnkit.models import ModelConfig
from rnnkit.tasks import get_task
from rnnkit.training.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ROOT / "benchmarks" / "presets"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the preset scripts are bash")


def _dry_run(script: str, *args) -> list:
    """The rnnkit command lines ``script`` would run, each as a list of words."""
    done = subprocess.run(["bash", str(PRESETS / script), *args], capture_output=True, text=True, check=True,
                          env={**os.environ, "RNNKIT": "echo"})
    return [line.split() for line in done.stdout.splitlines()]


def _configs(commands: list) -> list:
    """{section: instance} of every `train ... --config FILE` among ``commands`` (flags applied)."""
    out = []
    for words in commands:
        if words[0] != "train":
            continue
        task = get_task(words[1])
        flags = {words[i][2:].replace("-", "_"): words[i + 1] for i in range(2, len(words) - 1)
                 if words[i].startswith("--") and words[i] not in ("--config", "--data", "--out")}
        path = words[words.index("--config") + 1]
        classes = {"model": ModelConfig, "train": TrainConfig, "data": task.Config}
        out.append(resolve_configs(classes, path, flags)[0])
    return out


@pytest.mark.parametrize("script", ["shakespeare_long.sh", "etth1.sh"])
def test_scripts_are_valid_bash(script):
    subprocess.run(["bash", "-n", str(PRESETS / script)], check=True)
    text = (PRESETS / script).read_text()
    assert "set -euo pipefail" in text


def test_shakespeare_long_trains_three_members_for_an_hour_then_averages(tmp_path):
    commands = _dry_run("shakespeare_long.sh", str(tmp_path))
    assert [c[0] for c in commands] == ["train", "train", "train", "ensemble"]
    configs = _configs(commands)
    assert [c["train"].time_budget for c in configs] == [1800, 900, 900]  # 60 minutes in all
    assert [c["train"].seed for c in configs] == [0, 1, 2]
    assert all(c["train"].precision == "bf16" and c["model"].cell == "lstm" for c in configs)
    assert commands[-1][1:4] == [str(tmp_path / f"member-{i}") for i in (1, 2, 3)]


@pytest.mark.parametrize("horizon, eval_every, weights", [(96, 0, "equal"), (192, 62, "validation"),
                                                          (336, 62, "validation"), (720, 0, "equal")])
def test_etth1_trains_an_mse_and_an_mae_member_within_twenty_minutes(tmp_path, horizon, eval_every, weights):
    commands = _dry_run("etth1.sh", str(tmp_path), str(horizon))
    assert [c[0] for c in commands] == ["train", "train", "ensemble", "evaluate"]
    configs = _configs(commands)
    assert [c["data"].loss for c in configs] == ["mse", "mae"]
    assert all(c["data"].horizon == horizon and c["train"].eval_every == eval_every for c in configs)
    assert sum(c["train"].time_budget for c in configs) <= 20 * 60
    assert commands[2][-2:] == ["--weights", weights]
    assert all(c["data"].architecture == "segrnn" and c["data"].lookback == 720 for c in configs)
