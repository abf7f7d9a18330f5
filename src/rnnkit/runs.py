"""Runs by name and by directory: train a registered task, resume, evaluate, open and load a run
directory (a single network or an ensemble). The CLI verbs and ``rnnkit.load`` map onto this.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from rnnkit import artifacts, rundir
from rnnkit.data.sources import resolve, sha256_file
from rnnkit.ensembles import EnsembleArtifact
from rnnkit.errors import UserError
from rnnkit.models import ModelConfig
from rnnkit.tasks import get_task
from rnnkit.tasks.artifact import Artifact
from rnnkit.training.config import TrainConfig
from rnnkit.training.runner import fit_held
from rnnkit.training.trainer import History


def open_run(run_dir) -> Artifact:
    """The run directory read: an :class:`~rnnkit.tasks.artifact.Artifact`, or for an ensemble an
    :class:`~rnnkit.ensembles.EnsembleArtifact` (the same interface over its member runs)."""
    meta = artifacts.read_meta(run_dir)
    return EnsembleArtifact(run_dir, meta) if "ensemble" in meta else Artifact(run_dir, meta)


def load(run_dir):
    """The job's ready-to-use object for a run directory (TextGenerator, Forecaster, ...)."""
    artifact = open_run(run_dir)
    return get_task(artifact.task).load(artifact)


def train_task(task_name: str, data: str, out, model: Optional[ModelConfig] = None,
               train: Optional[TrainConfig] = None, task_config: Any = None, overwrite: bool = False,
               progress: bool = True, callbacks: Sequence = ()) -> History:
    """Prepare the data, build the model from it, train, and write the run directory ``out``
    (checked, locked and swept first: see :func:`rnnkit.rundir.writing`). ``callbacks``: the
    caller's own trainer callbacks (experiment loggers, a tuner's pruning)."""
    task = get_task(task_name)
    out = Path(out)
    model, train = model or ModelConfig(), train or TrainConfig()
    task_config = task_config if task_config is not None else task.Config()
    with rundir.writing(out, replace=overwrite):
        prep = task.prepare(task_config, data, train.seed)
        mc = task.model_config(prep.task_state, task_config, model)
        net = task.new_model(mc, prep.task_state, task_config, train.seed)
        meta = task.run_meta(mc, task_config, prep.task_state, {"source": str(data), **(prep.data_info or {})})
        return fit_held(task, net, prep, train, task_config, out, meta, progress, callbacks=callbacks)


RESUME_OVERRIDES = ("epochs", "max_steps", "time_budget")


def _resume_source(art: Artifact) -> str:
    """The data source ``art`` was trained on, checked to be unchanged."""
    data = art.data.get("source")
    if not data:
        raise UserError(f"{art.path / artifacts.ARTIFACT_JSON}: no data source recorded; cannot resume")
    _check_data(art, data)
    return data


def _check_data(art: Artifact, data: str) -> None:
    stored = art.data.get("sha256")
    if not stored:
        return
    try:
        path = resolve(data)
    except UserError:
        return  # prepare() will report it
    if isinstance(path, Path) and path.is_file() and sha256_file(path) != stored:
        raise UserError(f"{path}: data changed since training (sha256 {sha256_file(path)[:12]}..., "
                        f"artifact has {stored[:12]}...); expected the same file")


def resume_run(run_dir, overrides: Optional[dict] = None, progress: bool = True,
               callbacks: Sequence = ()) -> Optional[History]:
    """Continue an interrupted run from ``run_dir/checkpoint``; None when it is complete and no
    override extends it. ``run_dir`` is checked, locked and swept first (see :mod:`rnnkit.rundir`).
    ``callbacks``: as for :func:`train_task`."""
    run_dir = Path(run_dir)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    art = open_run(run_dir)
    if not (run_dir / artifacts.CHECKPOINT / "trainer_state.json").exists():
        raise UserError(f"{run_dir}: no checkpoint/ to resume from")
    if art.meta.get("status") == "complete" and not overrides and not art.meta.get("stop_reason", "").startswith("time budget"):
        return None
    with rundir.writing(run_dir):
        return _resume_single(open_run(run_dir), overrides, progress, callbacks)  # read again, under the lock


def _resume_single(art: Artifact, overrides: dict, progress: bool, callbacks: Sequence) -> History:
    """Continue the run ``art`` from its checkpoint."""
    task = get_task(art.task)
    train = dataclasses.replace(art.train_config, **overrides)
    data = _resume_source(art)
    task_config = art.task_config
    prep = task.prepare(task_config, data, train.seed)
    net = task.build_model(art.model_config, art.task_state)
    meta = {k: art.meta[k] for k in ("task", "model", "task_config", "task_state", "data") if k in art.meta}
    return fit_held(task, net, prep, train, task_config, art.path, meta, progress, resume=True, callbacks=callbacks)


def evaluation_source(task, art: Artifact, data: Optional[str] = None, split: Optional[str] = None):
    """What ``rnnkit evaluate`` scores: all of ``data`` (a file given to evaluate, read with the
    trained task state: ``Task.prepare_whole``), or the ``split`` ("val" by default, or "test")
    of the data the run was trained on."""
    if data is not None:
        if split is not None:
            raise UserError(f"--split {split}: a file given with --data is evaluated whole; leave out --split")
        return task.prepare_whole(art.task_config, data, art.task_state)
    data, split = art.data.get("source"), split or "val"
    if not data:
        raise UserError(f"{art.path}: no data source recorded; pass --data")
    prep = task.prepare(art.task_config, data, art.train_config.seed)
    source = {"val": prep.val, "test": prep.test}[split]
    if source is None:
        raise UserError(f"{data}: no {split} split for this task config")
    return source


def evaluate_run(run_dir, data: Optional[str] = None, split: Optional[str] = None) -> dict:
    """The task's metrics of the saved (selected) weights on all of ``data`` or on the ``val``
    (default) or ``test`` split of the training data (:func:`evaluation_source`), plus
    ``examples``: how many examples (sequences, texts, windows; textgen: tokens) were scored."""
    art = open_run(run_dir)
    task = get_task(art.task)
    return score(task, art, evaluation_source(task, art, data, split))


def score(task, art: Artifact, source) -> dict:
    """The task's metrics of ``art``'s saved weights on every batch of ``source``, plus
    ``examples``: how many examples (sequences, texts, windows; textgen: tokens) were scored."""
    model = art.build_model()
    scored = [0]

    def counted(batches):
        for batch in batches:
            scored[0] += task.examples(batch)
            yield batch

    with torch.no_grad():
        metrics = task.evaluate(model, counted(source.epoch(0, art.train_config.seed)))
    return {**metrics, "examples": scored[0]}
