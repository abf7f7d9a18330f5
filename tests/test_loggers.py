"""--log tensorboard: the event files in RUN/tensorboard/ hold the logged scalars and the config,
read back with TensorBoard's own reader, across a resume."""

import json

import pytest

from conftest import cli_error, run_cli

pytest.importorskip("tensorboard", reason="--log tensorboard needs tensorboard (the test extra installs it)")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

TINY = ("--seq-len", 8, "--batch-size", 4, "--hidden-size", 8, "--embedding-dim", 8, "--eval-every", 2,
        "--log-every", 1, "--quiet", "--log", "tensorboard")


def _events(run):
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return events


def test_tensorboard_events_hold_every_logged_scalar_across_a_resume(tmp_path, capsys):
    run = tmp_path / "run"
    rc, _, _ = run_cli(capsys, "train", "textgen", "--data", "pangrams", "--out", run, "--max-steps", 4, *TINY)
    assert rc == 0
    rc, _, _ = run_cli(capsys, "resume", run, "--max-steps", 8, "--quiet", "--log", "tensorboard")
    assert rc == 0
    assert len(list((run / "tensorboard").iterdir())) == 2  # one event file per fit call
    events = _events(run)
    history = json.loads((run / "history.json").read_text())
    assert set(events.Tags()["scalars"]) == {
        "train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s",
        *(f"val/{k}" for k in history["eval"][0] if k not in ("step", "epoch"))}
    for tag, records, key in (("train/loss", history["train"], "loss"), ("train/lr", history["train"], "lr"),
                              ("val/loss", history["eval"], "loss"),
                              ("val/bits_per_char", history["eval"], "bits_per_char")):
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [r["step"] for r in records]  # steps 1..8 (2, 4, 6, 8), each once
        assert [e.value for e in logged] == pytest.approx([r[key] for r in records], rel=1e-6)  # float32
    assert [e.step for e in events.Scalars("train/grad_norm")] == list(range(1, 9))
    assert all(e.value > 0 for e in events.Scalars("train/tokens_per_s"))
    configs = [json.loads(e.tensor_proto.string_val[0].decode()) for e in events.Tensors("config")]
    assert [c["train"]["max_steps"] for c in configs] == [4, 8]
    assert configs[0]["task"] == "textgen" and configs[0]["model"]["hidden_size"] == 8


def test_log_tensorboard_without_the_package_is_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else find_spec(name, *a))
    assert cli_error(capsys, "train", "textgen", "--data", "pangrams", "--out", tmp_path / "run", "--log", "tensorboard") \
        == "--log tensorboard needs the tensorboard package: pip install 'rnnkit[tensorboard]'"
