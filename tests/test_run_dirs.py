"""Run directories (issue #31): --overwrite replaces only a previous run; output problems are found
before any data is read; symlinked run directories stay links; stale snapshots are swept; files
named in artifact.json stay inside the run; one writer per run (the lock); checksummed
checkpoints; a resume with nothing left to train marks the run complete."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rnnkit
import rnnkit_toytask as toy
from rnnkit import artifacts, rundir
from rnnkit.runs import open_run
from rnnkit.cli.main import main
from conftest import cli_error as _error, run_cli as _cli

TESTS = Path(__file__).parent
TRAIN = ["--epochs", "2", "--hidden-size", "6", "--seq-len", "5", "--checkpoint-every", "2", "--eval-every", "4",
         "--seed", "3", "--quiet", "--use-fused", "false"]
CHECKPOINT_FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors", "carry.safetensors",
                    "trainer_state.json")


pytestmark = pytest.mark.usefixtures("toy_task")


class _Killed(BaseException):
    """Stands for a SIGKILL in the middle of a save."""


def _train_killed_at(monkeypatch, out, csv, at) -> None:
    """``rnnkit train`` (TRAIN: 8 steps, a save every 2) killed at the save ``at(artifact.json) -> bool``
    picks; the saves before it are on disk."""
    real = artifacts.write_run

    def write_run(run_dir, files, keep_extras=True):
        if at(json.loads(files["artifact.json"])):
            raise _Killed()
        real(run_dir, files, keep_extras)

    with monkeypatch.context() as patch:
        patch.setattr(artifacts, "write_run", write_run)
        with pytest.raises(_Killed):
            main(["train", "toy", "--data", str(csv), "--out", str(out), *TRAIN])


@pytest.fixture
def run(tmp_path, csv, monkeypatch):
    """A run killed after 5 of its 8 steps: status training, checkpoint at step 4."""
    out = tmp_path / "run"
    _train_killed_at(monkeypatch, out, csv, lambda meta: meta["step"] == 6)
    assert artifacts.read_meta(out)["status"] == "training" and artifacts.read_meta(out)["step"] == 4
    return out




def _tree(path: Path) -> dict:
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _untimed_history(run: Path) -> dict:
    """history.json without the measured tokens_per_s."""
    history = json.loads((run / "history.json").read_text())
    for record in history["train"]:
        record.pop("tokens_per_s")
    return history


def _no_data_read(monkeypatch):
    """Make preparing the data fail loudly: the checks under test must come first."""
    def prepare(*args):
        raise AssertionError("the data was prepared before the run directory was checked")

    monkeypatch.setattr(toy.ToyTask, "prepare", prepare)


# -- 1. --overwrite replaces only a previous run -------------------------------------------------

def test_overwrite_replaces_only_a_previous_run(tmp_path, csv, capsys, monkeypatch):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    (mine / "sub" / "data.txt").write_text("keep me too")
    before = _tree(mine)
    assert _error(capsys, "train", "toy", "--data", csv, "--out", mine, *TRAIN, "--overwrite") == (
        f"--out {mine}: is not empty and holds no rnnkit run (no artifact.json); choose a new or empty "
        "directory; --overwrite replaces only a previous run")
    message = _error(capsys, "train", "toy", "--data", csv, "--out", mine, *TRAIN)
    assert message == (f"--out {mine}: is not empty and holds no rnnkit run (no artifact.json); "
                       "choose a new or empty directory") and "--overwrite" not in message
    monkeypatch.chdir(mine)
    assert _error(capsys, "train", "toy", "--data", csv, "--out", ".", *TRAIN, "--overwrite").startswith(
        "--out .: is not empty and holds no rnnkit run")
    assert _tree(mine) == before and {p.name for p in mine.iterdir()} == {"notes.txt", "sub"}
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _cli(capsys, "train", "toy", "--data", csv, "--out", empty, *TRAIN, "--max-steps", "2")[0] == 0
    assert _error(capsys, "train", "toy", "--data", csv, "--out", empty, *TRAIN) == (
        f"--out {empty}: already holds an artifact; use `rnnkit resume {empty}`, another --out, or --overwrite")
    assert _cli(capsys, "train", "toy", "--data", csv, "--out", empty, *TRAIN, "--overwrite")[0] == 0
    assert artifacts.read_meta(empty)["step"] == 8  # the previous run (2 steps) was replaced


def test_an_interrupted_run_without_artifact_json_counts_as_a_run(tmp_path):
    for rel in ("checkpoint/trainer_state.json",):
        d = tmp_path / rel.split("/")[0]
        (d / rel).parent.mkdir(parents=True)
        (d / rel).write_text("{}")
        assert rundir.is_run(d)
        rundir.check_out_dir(d, overwrite=True)  # may be replaced
        with pytest.raises(rnnkit.errors.UserError, match="already holds a run; use `rnnkit resume"):
            rundir.check_out_dir(d, overwrite=False)
    (tmp_path / "user" / "checkpoint").mkdir(parents=True)  # a folder of that name alone is not a run
    assert not rundir.is_run(tmp_path / "user")


# -- 4. output problems are found before any data is read ------------------------------------------

def test_out_under_a_file_is_refused_before_the_data_is_read(tmp_path, capsys, monkeypatch):
    _no_data_read(monkeypatch)
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (afile / "sub", afile / "a" / "b"):
        assert _error(capsys, "train", "toy", "--data", tmp_path / "s.csv", "--out", out, *TRAIN) == (
            f"--out {out}: {afile} is not a directory")
    assert afile.read_text() == "x"


def test_parent_without_room_for_the_temp_copy_is_refused_before_training(tmp_path, capsys, monkeypatch):
    """Saves create a temp sibling in the parent; a parent that refuses it (here: a mkdtemp that
    fails as on a read-only parent, which root would not see) is one line before any data is read."""
    _no_data_read(monkeypatch)
    parent = tmp_path / "ro"
    (parent / "out").mkdir(parents=True)  # the run directory itself is writable
    real = rundir.tempfile.mkdtemp

    def mkdtemp(prefix=None, dir=None, **kw):
        if Path(dir) == parent:
            raise PermissionError(13, "Permission denied")
        return real(prefix=prefix, dir=dir, **kw)

    monkeypatch.setattr(rundir.tempfile, "mkdtemp", mkdtemp)
    assert _error(capsys, "train", "toy", "--data", tmp_path / "s.csv", "--out", parent / "out", *TRAIN) == (
        f"--out {parent / 'out'}: cannot create the save's temporary copy in {parent} (Permission denied)")
    assert list(parent.iterdir()) == [parent / "out"]


def test_unwritable_run_directory_is_refused_before_resuming(run, capsys, monkeypatch):
    _no_data_read(monkeypatch)
    real = rundir.os.access
    monkeypatch.setattr(rundir.os, "access", lambda p, mode: False if Path(p) == run else real(p, mode))
    assert _error(capsys, "resume", run) == f"{run}: cannot write into {run} (permission denied)"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_parent_is_refused_for_real(tmp_path, csv, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        assert _error(capsys, "train", "toy", "--data", csv, "--out", parent / "out", *TRAIN).startswith(
            f"--out {parent / 'out'}: cannot create the save's temporary copy in {parent}")
    finally:
        parent.chmod(0o755)


# -- 7a. symlinked run directories ----------------------------------------------------------------

def test_symlinked_run_directory_stays_a_link(tmp_path, csv, capsys):
    disk = tmp_path / "disk2"
    (disk / "real").mkdir(parents=True)
    (tmp_path / "runs").mkdir()
    link = tmp_path / "runs" / "r"
    link.symlink_to(disk / "real", target_is_directory=True)
    assert _cli(capsys, "train", "toy", "--data", csv, "--out", link, *TRAIN, "--max-steps", "4")[0] == 0
    assert _cli(capsys, "resume", link, "--max-steps", "8")[0] == 0
    assert link.is_symlink() and os.readlink(link) == str(disk / "real")
    assert artifacts.read_meta(disk / "real")["step"] == 8
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["r"]  # no copy, temp or lock beside the link
    assert {p.name for p in disk.iterdir()} == {"real", ".real.lock"}


# -- 7b. stale snapshots ---------------------------------------------------------------------------

def test_stale_snapshots_of_the_run_are_swept_at_resume(run, capsys):
    parent = run.parent
    stale = [parent / ".run.tmp-abcd1234", parent / ".run.old-x_Y9zzzz"]
    others = [parent / ".run.tmp-notours", parent / ".other.tmp-abcd1234", parent / ".run.lock"]
    for d in stale + others[:2]:
        (d / "checkpoint").mkdir(parents=True)
        (d / "checkpoint" / "model.safetensors").write_bytes(b"old snapshot")
    assert _cli(capsys, "resume", run)[0] == 0
    assert not any(d.exists() for d in stale)
    assert all(d.exists() for d in others)


def test_snapshots_of_a_missing_run_are_kept(tmp_path):
    """A save killed between the two renames of the fallback swap leaves the only copy in a snapshot."""
    snapshot = tmp_path / ".gone.old-abcd1234"
    snapshot.mkdir()
    assert rundir.stale_snapshots(tmp_path / "gone") == [snapshot]
    rundir.sweep_stale_snapshots(tmp_path / "gone")
    assert snapshot.is_dir()


# -- 7c. files named in artifact.json stay inside the run ---------------------------------------------

@pytest.mark.parametrize("where", ["relative", "absolute", "symlink"])
def test_weights_file_outside_the_run_is_refused(run, where):
    outside = run.parent / "outside.safetensors"
    shutil.copy(run / "model.safetensors", outside)  # a loadable file, sha256 matching
    meta = json.loads((run / "artifact.json").read_text())
    name = {"relative": "../outside.safetensors", "absolute": str(outside), "symlink": "link.safetensors"}[where]
    if where == "symlink":
        (run / name).symlink_to(outside)
    meta["weights"]["file"] = name
    (run / "artifact.json").write_text(json.dumps(meta))
    with pytest.raises(rnnkit.errors.UserError) as err:
        rnnkit.load(run)
    assert str(err.value) == (f"{run / 'artifact.json'}: weights.file {name!r} is not a file inside the run "
                              f"directory {run}")


def test_checkpoint_names_outside_the_run_are_refused(run, capsys):
    meta = json.loads((run / "artifact.json").read_text())
    meta.setdefault("checkpoint", {"sha256": {}})["sha256"]["../../../etc/passwd"] = "0" * 64
    (run / "artifact.json").write_text(json.dumps(meta))
    assert _error(capsys, "resume", run) == (f"{run / 'artifact.json'}: checkpoint.sha256 key "
                                             f"'checkpoint/../../../etc/passwd' is not a file inside the run "
                                             f"directory {run}")


# -- 7d. one writer per run --------------------------------------------------------------------------

HOLD = """import sys
from rnnkit import rundir
with rundir.writing(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_writer_is_refused_while_the_first_runs(run, csv, capsys):
    src = Path(rnnkit.__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(TESTS)])}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        stale = run.parent / ".run.tmp-abcd1234"
        stale.mkdir()  # the other writer's snapshot, as far as we can tell: left alone
        lock = run.parent / ".run.lock"
        assert _error(capsys, "resume", run) == (
            f"{run}: another rnnkit process is writing this run directory (it holds {lock}); wait for it to finish")
        assert _error(capsys, "train", "toy", "--data", csv, "--out", run, *TRAIN, "--overwrite") == (
            f"--out {run}: another rnnkit process is writing this run directory (it holds {lock}); "
            "wait for it to finish")
        assert stale.is_dir() and artifacts.read_meta(run)["step"] == 4
    finally:
        holder.communicate("")
    assert holder.returncode == 0
    assert _cli(capsys, "resume", run)[0] == 0 and artifacts.read_meta(run)["step"] == 8


def test_the_lock_is_held_across_every_save(run, capsys, monkeypatch):
    import fcntl

    real, saves = artifacts.write_run, []

    def write_run(run_dir, files, keep_extras=True):
        real(run_dir, files, keep_extras)
        fd = os.open(rundir.lock_path(run_dir), os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        saves.append(run_dir)

    monkeypatch.setattr(artifacts, "write_run", write_run)
    assert _cli(capsys, "resume", run)[0] == 0
    assert len(saves) == 3  # steps 6 and 8, then the final save


# -- 7e. checksummed checkpoints ---------------------------------------------------------------------

def test_checkpoint_files_are_checksummed_and_verified_on_resume(run, tmp_path, capsys):
    sums = artifacts.read_meta(run)["checkpoint"]["sha256"]
    assert set(sums) == set(CHECKPOINT_FILES)
    for name, sha in sums.items():
        assert artifacts.sha256_bytes((run / "checkpoint" / name).read_bytes()) == sha
    for name in CHECKPOINT_FILES:
        damaged = tmp_path / f"damaged-{name}"
        shutil.copytree(run, damaged)
        path = damaged / "checkpoint" / name
        blob = bytearray(path.read_bytes())
        blob[-3] ^= 0x01  # a flip in the tensor data parses fine: only the checksum sees it
        path.write_bytes(bytes(blob))
        assert _error(capsys, "resume", damaged).startswith(f"{path}: damaged "), name
        assert _error(capsys, "resume", damaged).endswith("(sha256 does not match artifact.json)")


def test_damaged_trainer_state_is_one_line(run, tmp_path, capsys):
    state = run / "checkpoint" / "trainer_state.json"
    meta = json.loads((run / "artifact.json").read_text())
    meta.pop("checkpoint", None)  # unchecked, as in artifacts written before the sums: the JSON is still checked
    (run / "artifact.json").write_text(json.dumps(meta))
    good = state.read_text()
    state.write_text(good[:-40])
    assert _error(capsys, "resume", run).startswith(f"{state} line ")
    state.write_text(json.dumps({**json.loads(good), "callbacks": []}))
    assert _error(capsys, "resume", run) == (
        f"{run / 'checkpoint'}: damaged checkpoint (AttributeError: 'list' object has no attribute 'get')")


def test_checkpoint_without_sums_as_older_rnnkit_wrote_it_still_resumes(run, tmp_path, csv, capsys):
    ref = tmp_path / "ref"
    assert _cli(capsys, "train", "toy", "--data", csv, "--out", ref, *TRAIN)[0] == 0
    meta = json.loads((run / "artifact.json").read_text())
    assert meta.pop("checkpoint")
    (run / "artifact.json").write_text(json.dumps(meta))
    assert _cli(capsys, "resume", run)[0] == 0
    for k, v in open_run(ref).state_dict().items():
        assert torch.equal(v, open_run(run).state_dict()[k]), k


# -- 7f. a resume with nothing left to train ---------------------------------------------------------------

def test_resume_with_no_steps_left_marks_the_run_complete(tmp_path, csv, capsys, monkeypatch):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert _cli(capsys, "train", "toy", "--data", csv, "--out", ref, *TRAIN)[0] == 0
    _train_killed_at(monkeypatch, cut, csv, lambda meta: meta["status"] == "complete")  # after the last step
    capsys.readouterr()
    assert artifacts.read_meta(cut)["status"] == "training" and artifacts.read_meta(cut)["step"] == 8
    rc, out, _ = _cli(capsys, "resume", cut)
    assert rc == 0 and out == f"{cut}: nothing left to train (finished 2 epochs); the run is marked complete\n"
    got, want = artifacts.read_meta(cut), artifacts.read_meta(ref)
    assert got["status"] == "complete" and got["stop_reason"] == want["stop_reason"] == "finished 2 epochs"
    assert got["metrics"] == want["metrics"] and got["step"] == want["step"]
    assert _untimed_history(cut) == _untimed_history(ref)
    rc, out, _ = _cli(capsys, "resume", cut)
    assert rc == 0 and out == f"{cut}: run already complete; nothing to resume\n"
