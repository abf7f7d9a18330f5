"""Hyperparameter search on the validation split: ``rnnkit tune`` and ``rnnkit.tune``.

An Optuna study (TPE sampler; median, successive-halving or no pruning, fed by the trainer's
evaluations) whose trials are normal rnnkit runs, each with its own seed, in ``DIR/trials/N``.
The study lives in ``DIR/study.db``, so a tune command that was interrupted (Ctrl-C, SIGKILL)
goes on where it stopped when run again with the same DIR; ``jobs`` worker processes share it.
Trials are scored on the validation split only (``TrainConfig.monitor``, best value of the run);
the test split is never read.

* :mod:`rnnkit.tuning.space`: the default search space per task and the ``[tune]`` section;
* :mod:`rnnkit.tuning.study`: storage, locks, interrupted trials, the trial loop, pruning;
* :mod:`rnnkit.tuning.results`: the trials table, best preset, best link, plot and summary.

The package is named ``tuning`` so that the function ``rnnkit.tune`` is not shadowed by a
submodule of the same name.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional, Sequence, Union

from rnnkit.errors import UserError
from rnnkit.training.config import check_config, load_config_file
from rnnkit.training.loggers import experiment_loggers
from rnnkit.tuning.results import TuneSummary, format_table, write_results
from rnnkit.tuning.space import search_space, trial_configs
from rnnkit.tuning.study import (
    PRUNERS, STUDY_FILE, StudyLock, TuneSpec, open_study, require_optuna, retry_interrupted, study_storage, work,
)

IDENTITY_KEYS = ("task", "data", "monitor", "direction")  # a study in DIR is resumed only with the same ones


def tune(task: Optional[str], data: Optional[str], out, trials: Optional[int] = None,
         time_budget: Optional[float] = None, config: Union[str, Path, dict, None] = None, jobs: int = 1,
         pruner: str = "median", log: Sequence[str] = (), progress: bool = True) -> TuneSummary:
    """Search ``task``'s hyperparameters on ``data``'s validation split into the study directory
    ``out`` until ``trials`` trials have finished (COMPLETE or PRUNED, counting those of earlier
    calls) or ``time_budget`` seconds of this call are spent, whichever comes first; returns the
    :class:`~rnnkit.tuning.results.TuneSummary` (``summary.best`` loads the best run).

    config: a config file (or its dict): ``[model]/[train]/[data]`` are every trial's base and
    ``[tune]`` the search space (:mod:`rnnkit.tuning.space`); ``task``/``data`` may come from its
    ``task``/``dataset``. jobs: worker processes sharing the study, each with the torch threads
    divided between them. log: experiment loggers of every trial (``"tensorboard"``).
    """
    spec = make_spec(task, data, out, trials, time_budget, config, jobs, pruner, log, progress)
    _check_out(Path(spec.out))
    Path(spec.out).mkdir(parents=True, exist_ok=True)
    lock = StudyLock(spec.out, exclusive=True)
    try:
        storage = study_storage(spec.out)
        study = open_study(spec, storage)
        _check_identity(spec, study)
        retried = retry_interrupted(study, storage)
        if retried and progress:
            print(f"interrupted trials {', '.join(map(str, retried))}: marked failed, their parameters queued again",
                  file=sys.stderr)
        _run_workers(spec, jobs, lock)
        return write_results(spec, open_study(spec, storage))
    finally:
        lock.release()


def make_spec(task, data, out, trials, time_budget, config, jobs, pruner, log, progress) -> TuneSpec:
    """The checked :class:`TuneSpec` of a tune call (every user mistake a one-line error here,
    before the study is touched)."""
    require_optuna()
    file = _config_dict(config)
    task = task or file.get("task")
    if not task:
        raise UserError("tune: expected a task (textgen, forecast, textclass, seqclass, tag) or a config with `task`")
    if file.get("task") not in (None, task):
        raise UserError(f"{config}: task {file['task']!r} does not match {task!r}")
    data = data or file.get("dataset")
    if not data:
        raise UserError("tune: expected --data NAME|PATH (or `dataset` in the config file)")
    _check_limits(trials, time_budget, jobs, pruner)
    experiment_loggers(log)  # a missing logger package is reported now, not in the first trial
    space = search_space(task, file.get("tune"), f"{config} [tune]" if isinstance(config, (str, Path)) else "[tune]")
    base = trial_configs(task, file, space.fixed, 0)["train"]
    if {"train.monitor", "train.monitor_mode"} & set(space.names()):
        raise UserError("[tune]: train.monitor and train.monitor_mode choose the study's objective; fix them in [train]")
    threads = 0
    if jobs > 1:
        import torch

        threads = max(1, torch.get_num_threads() // jobs)
    return TuneSpec(task=task, data=str(data), out=str(out), file=file, space=space, monitor=base.monitor,
                    direction="minimize" if base.monitor_mode == "min" else "maximize", trials=trials,
                    budget=time_budget, deadline=time.time() + time_budget if time_budget else None, pruner=pruner,
                    log=tuple(log or ()), progress=progress, threads=threads, seed=base.seed)


def _config_dict(config) -> dict:
    if config is None:
        return {}
    if isinstance(config, dict):
        return check_config(dict(config), "config")
    return load_config_file(config)


def _check_limits(trials, time_budget, jobs, pruner) -> None:
    if trials is None and time_budget is None:
        raise UserError("tune: expected --trials N and/or --time-budget SECONDS")
    if trials is not None and trials < 1:
        raise UserError(f"--trials: expected a positive integer, got {trials}")
    if time_budget is not None and time_budget <= 0:
        raise UserError(f"--time-budget: expected a positive number of seconds, got {time_budget:g}")
    if jobs < 1:
        raise UserError(f"--jobs: expected a positive integer, got {jobs}")
    if pruner not in PRUNERS:
        raise UserError(f"--pruner: expected one of {', '.join(PRUNERS)}, got {pruner!r}")


def _check_out(out: Path) -> None:
    """DIR is new, empty or a study (its study.db): tune never writes into anything else."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / STUDY_FILE).is_file():
        raise UserError(f"--out {out}: is not empty and holds no rnnkit study ({STUDY_FILE}); "
                        "choose a new or empty directory")


def _check_identity(spec: TuneSpec, study) -> None:
    """A new study records its task, data, metric and direction; a resumed one must match them."""
    mine = {"task": spec.task, "data": spec.data, "monitor": spec.monitor, "direction": spec.direction}
    stored = study.user_attrs
    if not stored:
        for key, value in mine.items():
            study.set_user_attr(key, value)
        return
    for key in IDENTITY_KEYS:
        if stored.get(key) != mine[key]:
            raise UserError(f"{spec.out}: holds a study with {key} {stored.get(key)!r}, not {mine[key]!r}; "
                            "use another --out")


def _run_workers(spec: TuneSpec, jobs: int, lock: StudyLock) -> None:
    """The trials, in this process (jobs=1) or in ``jobs`` spawned worker processes, each of
    which runs :func:`~rnnkit.tuning.study.work` once and exits (a worker's one-line error is
    raised here after all have ended)."""
    if jobs == 1:
        work(spec)
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    errors = context.SimpleQueue()
    lock.share()  # the workers hold it too, so a second tune command stays refused while any runs
    workers = [context.Process(target=worker_main, args=(spec, i, errors), name=f"rnnkit-tune-{i}")
               for i in range(jobs)]
    for process in workers:
        process.start()
    for process in workers:
        process.join()
    if not errors.empty():
        raise UserError(errors.get())
    failed = [f"{p.name} (exit status {p.exitcode})" for p in workers if p.exitcode]
    if failed:
        raise RuntimeError(f"tune workers failed: {', '.join(failed)}; see their tracebacks above")


def worker_main(spec: TuneSpec, worker: int, errors) -> None:
    """A worker process: :func:`work`; a user error goes to the tune command through ``errors``,
    an interrupt ends the process quietly (its trial stays RUNNING, to be retried)."""
    try:
        work(spec, worker, child=True)
    except UserError as exc:
        errors.put(str(exc))
    except KeyboardInterrupt:
        sys.exit(130)


__all__ = ["tune", "TuneSummary", "format_table", "search_space"]
