"""Artifacts: round trip, atomic replace (a failed/killed save keeps the previous artifact),
no pickle anywhere, version and damage checks, optimizer flattening."""

import json
import pickletools

import pytest
import torch

import rnnkit
import rnnkit_toytask as toy
from rnnkit import artifacts
from rnnkit.runs import open_run
from rnnkit.errors import UserError
from rnnkit.models import ModelConfig
from rnnkit.training.config import TrainConfig
from rnnkit.runs import train_task


@pytest.fixture
def run(tmp_path, monkeypatch):
    toy.register(monkeypatch)
    csv = toy.write_series(tmp_path / "s.csv", n=120)
    out = tmp_path / "run"
    model = ModelConfig(hidden_size=6, embedding_dim=4, use_fused="false")
    train_task("toy", str(csv), out, model, TrainConfig(epochs=2, eval_every=2), progress=False)
    return out


def test_round_trip_load_returns_the_facade(run):
    art = open_run(run)
    assert art.meta["format"] == "rnnkit-artifact" and art.meta["format_version"] == artifacts.FORMAT_VERSION
    assert art.meta["rnnkit_version"] == rnnkit.__version__ and art.task == "toy"
    assert art.task_config == toy.ToyConfig() and art.model_config.encoder == "linear"
    assert art.data["sha256"] == artifacts.sha256_bytes((run.parent / "s.csv").read_bytes())
    assert set(art.meta["metrics"]) >= {"val_loss", "val_rmse", "best_step", "train_loss"}
    facade = rnnkit.load(run)
    assert isinstance(facade, toy.ToyModel)
    weights = art.state_dict()
    for k, v in facade.model.state_dict().items():
        assert torch.equal(v, weights[k])
    assert {p.name for p in run.iterdir()} == {"artifact.json", "model.safetensors", "history.json", "curves.png", "checkpoint"}
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _has_pickle(data: bytes) -> bool:
    """True when ``data`` parses as a pickle stream (opcodes up to STOP) or is a zip (torch.save)."""
    if data[:4] == b"PK\x03\x04":
        return True
    try:
        ops = list(pickletools.genops(data))
        return len(ops) > 1 and ops[-1][0].name == "STOP"
    except Exception:
        return False


def test_pickle_detector_detects_pickle():
    import pickle

    assert _has_pickle(pickle.dumps({"a": [1, 2]}, protocol=2)) and _has_pickle(pickle.dumps(3.0, protocol=5))
    assert not _has_pickle(b'{"a": 1}')


def test_no_pickle_in_any_file(run):
    files = [p for p in run.rglob("*") if p.is_file()]
    assert len(files) >= 9
    for path in files:
        data = path.read_bytes()
        assert not _has_pickle(data), path
        assert b"torch._utils" not in data and b"_rebuild_tensor" not in data, path
        if path.suffix == ".json":
            json.loads(data)
        elif path.suffix == ".safetensors":
            header_len = int.from_bytes(data[:8], "little")
            header = json.loads(data[8:8 + header_len])
            assert header.pop("__metadata__")["format"] == "rnnkit-artifact"
            end = max((v["data_offsets"][1] for v in header.values()), default=0)
            assert len(data) == 8 + header_len + end  # nothing but the header and raw tensor bytes
        else:
            assert path.suffix == ".png"


@pytest.mark.parametrize("fail_at", [0, 3, 7])
def test_failed_save_keeps_previous_artifact(run, monkeypatch, fail_at):
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    calls = []
    real = artifacts._write_file

    def dying_write(path, data):
        calls.append(path)
        if len(calls) > fail_at:
            raise OSError("disk full (injected)")
        real(path, data)

    monkeypatch.setattr(artifacts, "_write_file", dying_write)
    with pytest.raises(OSError):
        from rnnkit.runs import resume_run

        resume_run(run, {"epochs": 4}, progress=False)
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in run.parent.iterdir() if p.name.startswith(".run.tmp-")]  # temp removed
    rnnkit.load(run)


def test_kill_between_swap_steps_keeps_a_loadable_artifact(run, monkeypatch):
    """The swap is one renameat2(RENAME_EXCHANGE): at no instant is there a half-written DIR."""
    seen = []
    real = artifacts._swap_in

    def watching(new, target):
        seen.append(artifacts.read_meta(target)["step"])  # old artifact intact right before
        real(new, target)
        seen.append(artifacts.read_meta(target)["step"])  # new one complete right after

    monkeypatch.setattr(artifacts, "_swap_in", watching)
    from rnnkit.runs import resume_run

    resume_run(run, {"epochs": 3}, progress=False)
    assert seen[0] < seen[-1]


def test_exchange_is_atomic_swap(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x").write_text("new"), (b / "x").write_text("old")
    if not artifacts._exchange(a, b):
        pytest.skip("renameat2 is not available here")
    assert (b / "x").read_text() == "new" and (a / "x").read_text() == "old"


def test_newer_format_version_is_one_line_error(run):
    meta = json.loads((run / "artifact.json").read_text())
    meta["format_version"] = 99
    (run / "artifact.json").write_text(json.dumps(meta))
    with pytest.raises(UserError) as err:
        rnnkit.load(run)
    assert str(err.value) == (f"{run / 'artifact.json'}: format_version 99 is newer than this rnnkit (2, rnnkit "
                              f"{rnnkit.__version__} wrote it); upgrade rnnkit")


def test_damaged_weights_and_json_are_user_errors(run):
    blob = bytearray((run / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (run / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(UserError, match=r"model.safetensors: damaged weights \(sha256 does not match artifact.json\)$"):
        rnnkit.load(run)
    (run / "artifact.json").write_text('{"format": "rnnkit-artifact",')
    with pytest.raises(UserError, match=r"artifact.json line 1 column 30: damaged artifact.json \(Expecting property name"):
        rnnkit.load(run)


def test_optimizer_state_flatten_round_trip():
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    tensors, info = artifacts.flatten_optimizer(opt.state_dict())
    blob = artifacts.tensors_bytes(tensors)
    json.dumps(info)
    from safetensors.torch import load

    restored = artifacts.unflatten_optimizer(load(blob), json.loads(json.dumps(info)))
    opt2 = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone())], lr=0.1)
    opt2.load_state_dict(restored)
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(v, opt2.state_dict()["state"][0][k])
