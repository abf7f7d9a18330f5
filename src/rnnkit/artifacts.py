"""The run directory is the artifact: the same layout for every task, JSON + safetensors, no pickle.

::

    DIR/
      artifact.json       format + format_version, rnnkit version, task, created, model/train/task
                          configs, task_state (vocabulary | scaler | labels), metrics, data info
                          (with sha256), status, weights {file, sha256}
      model.safetensors   the selected (best validation) weights, torch-compatible names
      history.json        train loss every log_every steps, every evaluation
      curves.png          train/val loss and the monitored metric vs step
      checkpoint/         model.safetensors (last weights), optimizer.safetensors (+ .json for the
                          non-tensor part), trainer_state.json, rng.safetensors, carry.safetensors

Every save writes a complete new directory next to ``DIR`` (temp sibling, each file fsynced)
and swaps it in with one atomic ``renameat2(RENAME_EXCHANGE)`` on Linux (elsewhere: two
renames), so a failed or killed save never damages the artifact already there. Files in
``DIR`` that a save does not produce (a task's ``forecast.png``, ``samples.txt``) are kept.
A symlinked ``DIR`` is followed: the swap happens beside the link's target, the link stays.

artifact.json records the sha256 of every file it names: ``weights`` {file, sha256} and, with
a checkpoint, ``checkpoint`` {"sha256": {name: sha256}} (artifacts written before rnnkit
recorded it have none, and their checkpoints are read unchecked). Every file it names must lie
inside ``DIR``.
"""

from __future__ import annotations

import ctypes
import datetime
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from rnnkit.errors import UserError
from rnnkit.version import __version__

FORMAT = "rnnkit-artifact"
FORMAT_VERSION = 2  # 2: ensembles are directories of member runs (rnnkit.ensembles); 1: single runs still read
ARTIFACT_JSON = "artifact.json"
WEIGHTS = "model.safetensors"
CHECKPOINT = "checkpoint"


# ----------------------------------------------------------------------------- atomic writes

def _write_file(path: Path, data: bytes) -> None:
    """Write and fsync one file (the only place bytes reach the disk; tests inject failures here)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False when the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def _swap_in(new: Path, target: Path) -> None:
    """Make ``target`` the contents of ``new``; afterwards ``new`` holds the old contents (or is gone)."""
    if not target.exists():
        os.rename(new, target)
    elif not _exchange(new, target):
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rmdir(old)
        os.rename(target, old)
        os.rename(new, target)
        os.rename(old, new)
    _fsync_dir(target.parent)


def _keep_extras(old: Path, new: Path, written: dict) -> None:
    """Hard-link (or copy) files of the existing run dir that this save does not rewrite."""
    tops = {Path(rel).parts[0] for rel in written}
    for entry in old.iterdir():
        if entry.name in tops or entry.name == CHECKPOINT and CHECKPOINT in tops:
            continue
        dest = new / entry.name
        if entry.is_dir():
            shutil.copytree(entry, dest, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, dest)


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_run(run_dir: str | Path, files: dict[str, bytes], keep_extras: bool = True) -> None:
    """Atomically replace ``run_dir`` by ``files`` ({relative path: bytes}) plus, with
    ``keep_extras``, the files of the existing ``run_dir`` that ``files`` does not name.
    A symlinked ``run_dir`` is followed (the new directory replaces the link's target)."""
    run_dir = Path(run_dir).resolve()
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.tmp-", dir=run_dir.parent))
    try:
        for rel, data in files.items():
            _write_file(tmp / rel, data)
        if keep_extras and run_dir.is_dir():
            _keep_extras(run_dir, tmp, files)
        for d in {(tmp / rel).parent for rel in files}:
            _fsync_dir(d)
        _fsync_dir(tmp)
        _swap_in(tmp, run_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # after the swap it holds the previous snapshot


def write_file_atomic(path: str | Path, data: bytes) -> None:
    """One file: temp sibling + fsync + os.replace (for files a task adds to a finished run)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- encoding

def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_bytes(obj: Any) -> bytes:
    """UTF-8 JSON of ``obj``. NaN and infinities are not JSON: a non-finite float (a metric that
    could not be computed, e.g. a loss that diverged) is written as null."""
    return (json.dumps(_finite_or_null(obj), indent=2, sort_keys=False, allow_nan=False) + "\n").encode("utf-8")


def _finite_or_null(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_null(v) for v in obj]
    return obj


def tensors_bytes(tensors: dict[str, torch.Tensor], metadata: Optional[dict] = None) -> bytes:
    """safetensors bytes of CPU, contiguous, unshared copies of ``tensors``."""
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), **(metadata or {})}
    return st_save(clean, metadata=meta)


def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """torch optimizer state_dict -> (tensors "state.<param>.<key>", JSON for everything else)."""
    tensors, scalars = {}, {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], info: dict) -> dict:
    state: dict = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for name, value in info.get("scalars", {}).items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in info["param_groups"]]
    return {"state": state, "param_groups": groups}


def header() -> dict:
    """The fields every artifact.json starts with: format, format_version, rnnkit_version, created."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "rnnkit_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def snapshot_files(meta: dict, weights: dict[str, torch.Tensor], history: dict,
                   checkpoint: Optional[dict[str, bytes]] = None) -> dict[str, bytes]:
    """The files of one run-directory snapshot (checkpoint: {name: bytes} under checkpoint/)."""
    blob = tensors_bytes(weights, {"task": str(meta.get("task", ""))})
    doc = {**header(), **meta, "weights": {"file": WEIGHTS, "sha256": sha256_bytes(blob)}}
    if checkpoint:
        doc[CHECKPOINT] = {"sha256": {name: sha256_bytes(data) for name, data in checkpoint.items()}}
    files = {ARTIFACT_JSON: json_bytes(doc), WEIGHTS: blob, "history.json": json_bytes(history)}
    for name, data in (checkpoint or {}).items():
        files[f"{CHECKPOINT}/{name}"] = data
    return files


# ----------------------------------------------------------------------------- reading

def _read_json(path: Path, what: str, sha256: Optional[str] = None) -> dict:
    """A JSON object from ``path`` (its sha256 checked when given); a damaged file is a UserError."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: not found ({what})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read {what} ({exc.__class__.__name__})") from None
    _check_sha256(path, data, what, sha256)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: damaged {what} (not UTF-8: {exc.reason} at byte {exc.start})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} line {exc.lineno} column {exc.colno}: damaged {what} ({exc.msg})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: damaged {what} (expected a JSON object)")
    return doc


def _check_sha256(path: Path, data: bytes, what: str, sha256: Optional[str]) -> None:
    if sha256 is not None and sha256_bytes(data) != sha256:
        raise UserError(f"{path}: damaged {what} (sha256 does not match artifact.json)")


def read_tensors(path: Path, what: str, sha256: Optional[str] = None) -> dict[str, torch.Tensor]:
    """Load a safetensors file, checking its sha256 when given; damaged files are a UserError."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: not found ({what})") from None
    _check_sha256(path, data, what, sha256)
    try:
        return st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: damaged {what} ({str(exc).splitlines()[0]})") from None


def read_meta(run_dir: str | Path) -> dict:
    """artifact.json, checked: the format name and a format_version this rnnkit can read."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such artifact directory")
    path = run_dir / ARTIFACT_JSON
    if not path.exists():
        raise UserError(f"{run_dir}: not an rnnkit artifact (no {ARTIFACT_JSON})")
    doc = _read_json(path, ARTIFACT_JSON)
    if doc.get("format") != FORMAT:
        raise UserError(f"{path}: not an rnnkit artifact (format {doc.get('format')!r}, expected {FORMAT!r})")
    version = doc.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UserError(f"{path}: damaged artifact (format_version {version!r}, expected an integer)")
    if version > FORMAT_VERSION:
        raise UserError(
            f"{path}: format_version {version} is newer than this rnnkit ({FORMAT_VERSION}, rnnkit "
            f"{doc.get('rnnkit_version', '?')} wrote it); upgrade rnnkit"
        )
    if "task" not in doc:
        raise UserError(f"{path}: damaged artifact (missing 'task')")
    for key, kind in _META_TYPES.items():  # "weights" is checked before "weights.file"
        parent, _, name = key.rpartition(".")
        holder = doc.get(parent, {}) if parent else doc
        if name in holder and not isinstance(holder[name], kind):
            raise UserError(f"{path}: damaged artifact ({key!r} is {_json_type(holder[name])}, "
                            f"expected {_json_type(kind())})")
    if "weights" in doc:  # a run that names files (a composition of runs names none)
        _check_named_files(run_dir, doc, path)
    return _read_v1(doc, path) if version == 1 else doc


# task_config keys of format_version 1 for ensembles trained inside one run, which rnnkit no longer has
_V1_ENSEMBLE_KEYS = ("ensemble", "ensemble_lead_share", "member_weights")


def _v1_networks(doc: dict) -> int:
    """How many networks a format_version 1 artifact's model holds (> 1: an ensemble in one model)."""
    state = doc.get("task_state", {})
    in_turn = doc.get("in_turn", {})
    if in_turn and "member" not in in_turn:  # the ensemble of a run whose members trained in turn
        return len(in_turn.get("shares", ())) or 2
    return max(int(state.get("ensemble", 1)), int(state.get("spec", {}).get("ensemble", 1)))


def _v1_rebuild_hint(doc: dict, run_dir: Path, networks: int) -> str:
    """How to make a format_version 2 ensemble of what a format_version 1 one held."""
    if doc.get("in_turn"):  # its members are runs of their own under members/<m>
        members = " ".join(str(run_dir / "members" / str(m)) for m in range(networks))
        return f"`rnnkit ensemble {members} --out NEW_DIR`"
    return ("train each member with `rnnkit train` (its own --seed) and join the runs with "
            "`rnnkit ensemble RUN_1 RUN_2 ... --out NEW_DIR`")


def _read_v1(doc: dict, path: Path) -> dict:
    """A format_version 1 artifact.json as this rnnkit reads it: a single network keeps working (its
    task_config without the ensemble keys; a member trained in turn keeps its own loss), an
    ensemble inside one model is a one-line error."""
    networks = _v1_networks(doc)
    if networks > 1:
        raise UserError(f"{path}: an ensemble of {networks} networks inside one model (format_version 1, rnnkit "
                        f"{doc.get('rnnkit_version', '?')}), a layout this rnnkit no longer reads; rebuild it as "
                        f"format_version 2: {_v1_rebuild_hint(doc, path.parent, networks)}")
    config = {k: v for k, v in doc.get("task_config", {}).items() if k not in _V1_ENSEMBLE_KEYS}
    if "," in str(config.get("loss", "")):  # one loss per member: this member's
        config["loss"] = config["loss"].split(",")[doc.get("in_turn", {}).get("member", 0)].strip()
    return {**doc, "task_config": config}


def _check_named_files(run_dir: Path, doc: dict, path: Path) -> None:
    """Every file artifact.json names lies inside the run directory (no absolute path, no ``..``
    or symlink leading out); the weights entry and the checkpoint sums are JSON objects."""
    weights, checkpoint = doc["weights"], doc.get(CHECKPOINT, {})
    if not isinstance(weights, dict) or not isinstance(checkpoint, dict) \
            or not isinstance(checkpoint.get("sha256", {}), dict):
        raise UserError(f"{path}: damaged artifact (weights and checkpoint must be JSON objects)")
    named = [("weights.file", weights.get("file", WEIGHTS))]
    named += [("checkpoint.sha256 key", f"{CHECKPOINT}/{name}") for name in checkpoint.get("sha256", {})]
    root = run_dir.resolve()
    for key, rel in named:
        inside = isinstance(rel, str) and rel and not Path(rel).is_absolute()
        if not inside or root not in (root / rel).resolve().parents:
            raise UserError(f"{path}: {key} {rel!r} is not a file inside the run directory {run_dir}")


def checkpoint_sha256(meta: dict) -> dict:
    """{checkpoint file name: sha256} recorded in artifact.json ({} in artifacts older than that)."""
    return meta.get(CHECKPOINT, {}).get("sha256", {})


# the JSON type of each key rnnkit reads (when present): an object (dict) or a string
_META_TYPES = {"task": str, "model": dict, "train": dict, "task_config": dict, "task_state": dict, "metrics": dict,
               "data": dict, "weights": dict, "weights.file": str, "weights.sha256": str}


def _json_type(value) -> str:
    """``value``'s JSON type with its article: "a JSON object", "a string", "a number", ..."""
    if isinstance(value, bool) or value is None:
        return "true/false" if value is not None else "null"
    for kind, name in ((dict, "a JSON object"), (list, "a JSON array"), (str, "a string"), ((int, float), "a number")):
        if isinstance(value, kind):
            return name
    return type(value).__name__
