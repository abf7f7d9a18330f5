"""Fit a prepared task with the one Trainer: the path every run takes, from the CLI (through
:mod:`rnnkit.runs`) and from the facades' ``fit``.

Nothing task-specific: the task object supplies ``loss_fn`` and ``evaluate`` (see
:mod:`rnnkit.tasks.base`); this module never looks a task up by name.
"""

from __future__ import annotations

import itertools
from typing import Sequence

from rnnkit import rundir
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


def fit_prepared(task, net, prep, train: TrainConfig, task_config, out, meta: dict, progress: bool,
                 resume: bool = False, callbacks: Sequence = ()) -> History:
    """Train ``net`` on prepared data with the one Trainer; the CLI's runs and every façade's
    ``fit`` share it (``callbacks``: the caller's own, run before the progress bar and curves). A
    new run's ``out`` may be empty, new or a previous run (replaced), never anything else."""
    with rundir.writing(out, replace=None if resume else True):
        return fit_held(task, net, prep, train, task_config, out, meta, progress, resume, callbacks)


def fit_held(task, net, prep, train: TrainConfig, task_config, out, meta: dict, progress: bool,
             resume: bool = False, callbacks: Sequence = ()) -> History:
    """:func:`fit_prepared` once ``out`` is held for writing (:func:`rnnkit.rundir.writing`)."""
    trainer = Trainer(train, [*callbacks, *_callbacks(train, progress)])
    return trainer.fit(net, prep.train, task.loss_fn(task_config, net), _evaluate_fn(task, prep.val, train),
                       run_dir=out, meta=meta, resume=resume)
