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


def test_shakespeare_long_trains_members_within_its_hour_then_joins_them(tmp_path):
    commands = _dry_run("shakespeare_long.sh", str(tmp_path))
    assert [c[0] for c in commands[:-1]] == ["train"] * (len(commands) - 1) and commands[-1][0] == "ensemble"
    configs = _configs(commands)
    assert len(configs) >= 2 and sum(c["train"].time_budget for c in configs) <= 60 * 60
    members = [c[c.index("--out") + 1] for c in commands[:-1]]
    assert commands[-1][1:1 + len(members)] == members  # the ensemble joins exactly the runs trained


@pytest.mark.parametrize("horizon", [96, 192, 336, 720])
def test_etth1_trains_members_within_twenty_minutes_then_joins_and_tests_them(tmp_path, horizon):
    commands = _dry_run("etth1.sh", str(tmp_path), str(horizon))
    assert [c[0] for c in commands[-2:]] == ["ensemble", "evaluate"]
    configs = _configs(commands)
    assert len(configs) >= 2 and all(c["data"].horizon == horizon for c in configs)
    assert sum(c["train"].time_budget for c in configs) <= 20 * 60
