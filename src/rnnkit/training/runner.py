"""Train / resume / evaluate any registered task from configs: the glue the CLI maps onto.

Nothing task-specific: the task supplies ``prepare``, ``model_config``, ``build_model``,
``loss`` and ``evaluate`` (see :mod:`rnnkit.tasks.base`).
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any, Optional

import torch

from rnnkit import artifacts, rundir
from rnnkit.data.sources import resolve, sha256_file
from rnnkit.errors import UserError
from rnnkit.models import ModelConfig
from rnnkit.tasks import get_task
from rnnkit.training import distributed
from rnnkit.training.callbacks import CurvesPlot, ProgressBar
from rnnkit.training.config import TrainConfig
from rnnkit.training.trainer import History, Trainer


def _evaluate_fn(task, source, train: TrainConfig):
    if source is None:
        return None
    limit = train.eval_batches or None
    return lambda model: task.evaluate(model, itertools.islice(source.epoch(0, train.seed), limit))


def _callbacks(train: TrainConfig, progress: bool):
    progress = progress and distributed.is_writer()  # one progress bar, rank 0's
    return ([ProgressBar(log_every=train.log_every)] if progress else []) + [CurvesPlot()]


def train_task(task_name: str, data: str, out, model: Optional[ModelConfig] = None,
               train: Optional[TrainConfig] = None, task_config: Any = None, overwrite: bool = False,
               progress: bool = True) -> History:
    """Prepare the data, build the model from it, train, and write the run directory ``out``
    (checked, locked and swept first: see :func:`rnnkit.rundir.writing`)."""
    task = get_task(task_name)
    out = Path(out)
    model, train = model or ModelConfig(), train or TrainConfig()
    task_config = task_config if task_config is not None else task.Config()
    with rundir.writing(out, replace=overwrite):
        prep = task.prepare(task_config, data, train.seed)
        mc = task.model_config(prep.task_state, task_config, model)
        net = task.new_model(mc, prep.task_state, task_config, train.seed)
        meta = {"task": task.name, "model": dataclasses.asdict(mc), "task_config": dataclasses.asdict(task_config),
                "task_state": prep.task_state, "data": {"source": str(data), **(prep.data_info or {})}}
        return _fit(task, net, prep, train, task_config, out, meta, progress)


def fit_prepared(task, net, prep, train: TrainConfig, task_config, out, meta: dict, progress: bool,
                 resume: bool = False) -> History:
    """Train ``net`` on prepared data with the one Trainer; the CLI's runs and the façades' ``fit``
    share it. A new run's ``out``
    may be empty, new or a previous run (replaced), never anything else."""
    with rundir.writing(out, replace=None if resume else True):
        return _fit(task, net, prep, train, task_config, out, meta, progress, resume)


def _fit(task, net, prep, train: TrainConfig, task_config, out, meta: dict, progress: bool,
         resume: bool = False) -> History:
    """:func:`fit_prepared` once ``out`` is held for writing."""
    trainer = Trainer(train, _callbacks(train, progress))
    return trainer.fit(net, prep.train, task.loss_fn(task_config), _evaluate_fn(task, prep.val, train),
                       run_dir=out, meta=meta, resume=resume)


RESUME_OVERRIDES = ("epochs", "max_steps", "time_budget")


def _resume_source(art: artifacts.Artifact) -> str:
    """The data source ``art`` was trained on, checked to be unchanged."""
    data = art.data.get("source")
    if not data:
        raise UserError(f"{art.path / artifacts.ARTIFACT_JSON}: no data source recorded; cannot resume")
    _check_data(art, data)
    return data


def _check_data(art: artifacts.Artifact, data: str) -> None:
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


def resume_run(run_dir, overrides: Optional[dict] = None, progress: bool = True) -> Optional[History]:
    """Continue an interrupted run from ``run_dir/checkpoint``; None when it is complete and no
    override extends it. ``run_dir`` is checked, locked and swept first (see :mod:`rnnkit.rundir`)."""
    run_dir = Path(run_dir)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    art = artifacts.read_artifact(run_dir)
    if not (run_dir / artifacts.CHECKPOINT / "trainer_state.json").exists():
        raise UserError(f"{run_dir}: no checkpoint/ to resume from")
    if art.meta.get("status") == "complete" and not overrides and not art.meta.get("stop_reason", "").startswith("time budget"):
        return None
    with rundir.writing(run_dir):
        return _resume_single(artifacts.read_artifact(run_dir), overrides, progress)  # read again, under the lock


def _resume_single(art: artifacts.Artifact, overrides: dict, progress: bool) -> History:
    """Continue the run ``art`` from its checkpoint."""
    task = get_task(art.task)
    train = dataclasses.replace(art.train_config, **overrides)
    data = _resume_source(art)
    task_config = art.task_config
    prep = task.prepare(task_config, data, train.seed)
    net = task.build_model(art.model_config, art.task_state)
    meta = {k: art.meta[k] for k in ("task", "model", "task_config", "task_state", "data") if k in art.meta}
    return _fit(task, net, prep, train, task_config, art.path, meta, progress, resume=True)


def evaluation_source(task, art: artifacts.Artifact, data: Optional[str] = None, split: Optional[str] = None):
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
    art = artifacts.read_artifact(run_dir)
    task = get_task(art.task)
    source = evaluation_source(task, art, data, split)
    model = art.build_model()
    scored = [0]

    def counted(batches):
        for batch in batches:
            scored[0] += task.examples(batch)
            yield batch

    with torch.no_grad():
        metrics = task.evaluate(model, counted(source.epoch(0, art.train_config.seed)))
    return {**metrics, "examples": scored[0]}
