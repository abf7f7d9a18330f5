"""The Optuna study behind ``rnnkit tune``: its SQLite file in DIR, the locks that let K worker
processes share it, the retry of interrupted trials, and the trial loop each worker runs.

Layout of DIR::

    study.db          the Optuna study (SQLite; every worker reads and writes it)
    .tune.lock        held by the tune command and each of its workers while they run (flock)
    .claim.lock       taken for the moment a worker counts the trials and asks for a new one
    trials/N/         trial N: a normal rnnkit run directory

Interrupted trials: a trial whose process ended without telling the study (SIGKILL, Ctrl-C)
stays RUNNING in it. Only a tune command that holds ``.tune.lock`` alone can start, so at its
start every RUNNING trial is a leftover: it is marked FAIL (user attribute ``interrupted``) and
its parameters are queued again, so the interrupted configuration is tried afresh (a new
number, a new run directory; the partial one is left as it was).

Counting: the study is done when ``trials`` trials are COMPLETE or PRUNED (failed ones do not
count) or when the time budget is spent: a trial starts only while at least
``MIN_LEFT_FRACTION`` of the budget is left, and trains for at most the time that is left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from rnnkit.errors import UserError
from rnnkit.training.callbacks import Callback
from rnnkit.training.trainer import TrainingDiverged
from rnnkit.tuning.space import SearchSpace, configs_dict, trial_configs

try:
    import fcntl
except ImportError:  # not POSIX: no locks, one worker
    fcntl = None

STUDY_FILE = "study.db"
STUDY_NAME = "rnnkit"
TRIALS_DIR = "trials"
LOCK_FILE = ".tune.lock"
CLAIM_LOCK_FILE = ".claim.lock"
SQLITE_TIMEOUT_S = 120  # how long a worker waits for another one's SQLite write
MIN_LEFT_FRACTION = 0.05  # of the time budget: no trial starts with less left
MAX_FAILED_IN_A_ROW = 5  # diverged (or invalid) trials in a row before a worker gives up
PRUNERS = ("median", "halving", "none")
WORKER_SEED_STRIDE = 1000  # sampler seeds of the workers lie this far apart


@dataclass(frozen=True)
class TuneSpec:
    """What every worker needs to run trials (picklable: it is handed to spawned processes)."""

    task: str
    data: str
    out: str  # the study directory DIR
    file: dict  # the config file's contents (sections model/train/data/tune)
    space: SearchSpace
    monitor: str  # the validation metric the study optimises (the trials' TrainConfig.monitor)
    direction: str  # "minimize" | "maximize"
    trials: Optional[int] = None  # stop when this many trials are COMPLETE or PRUNED
    budget: Optional[float] = None  # seconds of this tune call
    deadline: Optional[float] = None  # time.time() when the budget ends
    pruner: str = "median"
    log: tuple = ()
    progress: bool = True
    threads: int = 0  # torch threads per worker (0: leave as is)
    seed: int = 0  # the file's training seed: trial seeds and sampler seeds start here


def require_optuna():
    """The optuna module, quiet; a one-line error telling how to install it when it is missing."""
    try:
        import optuna
    except ImportError:
        raise UserError("rnnkit tune needs optuna: pip install 'rnnkit[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def make_pruner(name: str):
    """median: stop a trial whose intermediate value is worse than the median of earlier trials'
    at the same evaluation (once 5 trials have finished); halving: successive halving
    (asynchronous); none: never prune."""
    optuna = require_optuna()
    if name == "median":
        return optuna.pruners.MedianPruner()
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"--pruner: expected one of {', '.join(PRUNERS)}, got {name!r}")


def study_storage(out):
    """Optuna's storage over ``DIR/study.db`` (SQLite; a writer waits for another's lock)."""
    optuna = require_optuna()
    path = Path(out).resolve() / STUDY_FILE
    return optuna.storages.RDBStorage(f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT_S}})


def open_study(spec: TuneSpec, storage, worker: int = 0):
    """The study in ``storage`` (created if new), with a TPE sampler whose seed differs between
    workers and between tune calls (so a resumed study does not draw its first trials again)."""
    optuna = require_optuna()
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction=spec.direction,
                                pruner=make_pruner(spec.pruner), load_if_exists=True)
    seed = spec.seed + WORKER_SEED_STRIDE * worker + len(study.get_trials(deepcopy=False))
    study.sampler = optuna.samplers.TPESampler(seed=seed)
    return study


# ----------------------------------------------------------------------------------------- locks

def _open_lock(path: Path) -> Optional[int]:
    if fcntl is None:
        return None
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise UserError(f"{path}: cannot create the study's lock file ({exc.strerror})") from None


class StudyLock:
    """``DIR/.tune.lock``: exclusive while one tune command sets the study up (and runs it alone),
    shared by it and its workers while several run; a second tune command on DIR is refused."""

    def __init__(self, out, exclusive: bool):
        self.path = Path(out) / LOCK_FILE
        self.fd = _open_lock(self.path)
        if self.fd is None:
            return
        try:
            fcntl.flock(self.fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise UserError(f"{Path(out)}: another rnnkit tune is running this study (it holds {self.path}); "
                            "wait for it to finish") from None

    def share(self) -> None:
        """Let this command's workers take the lock too (a second tune command stays refused)."""
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_SH)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


@contextlib.contextmanager
def _claim_lock(out) -> Iterator[None]:
    fd = _open_lock(Path(out) / CLAIM_LOCK_FILE)
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fd is not None:
            os.close(fd)


def retry_interrupted(study, storage) -> list[int]:
    """Mark the study's RUNNING trials FAIL (``interrupted``) and queue their parameters again;
    their numbers. Call only while holding the study lock alone (then no trial really runs)."""
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(study.study_name)
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_user_attr(trial_id, "interrupted", True)
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        if t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
    return [t.number for t in stale]


# ----------------------------------------------------------------------------------------- trials

class PruneOnEvaluation(Callback):
    """Reports the monitored validation metric to an Optuna trial after every evaluation and, when
    the study's pruner says so, stops the run cleanly (``trainer.stop``: the run directory is
    saved as usual, marked with the reason). The step reported is the evaluation's index (1, 2,
    ...), not the optimizer step, so that trials with other batch sizes or sequence lengths are
    compared at the same point of their schedules (per epoch, or per ``eval_every`` steps)."""

    def __init__(self, trial):
        self.trial = trial
        self.pruned_at: Optional[int] = None

    def on_eval_end(self, trainer, metrics):
        monitor = trainer.config.monitor
        value, step = float(metrics[monitor]), len(trainer.history.eval)
        self.trial.report(value, step)
        if self.trial.should_prune():
            self.pruned_at = step
            trainer.stop(f"pruned by the tuner after evaluation {step} (val {monitor} {value:.6g})")


def _claim(study, spec: TuneSpec):
    """A new trial of the study, or None when it has enough trials or the budget is spent."""
    from optuna.trial import TrialState

    with _claim_lock(spec.out):
        if spec.deadline is not None and spec.deadline - time.time() < MIN_LEFT_FRACTION * spec.budget:
            return None
        if spec.trials is not None:
            counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
            if len(study.get_trials(deepcopy=False, states=counted)) >= spec.trials:
                return None
        return study.ask()


def _trial_train(train, spec: TuneSpec):
    """The trial's TrainConfig with its time budget cut to what is left of the study's."""
    if spec.deadline is None:
        return train
    left = max(1e-3, spec.deadline - time.time())
    return dataclasses.replace(train, time_budget=min(train.time_budget or math.inf, left))


class InvalidTrialConfig(UserError):
    """The sampled values make an invalid config (e.g. a burn-in longer than the lookback)."""


def run_trial(trial, spec: TuneSpec, worker: int) -> tuple[float, bool]:
    """Train trial ``trial`` into DIR/trials/N: (its best validation value, pruned?)."""
    from rnnkit.runs import train_task
    from rnnkit.training.loggers import experiment_loggers

    values = spec.space.suggest(trial)
    try:
        configs = trial_configs(spec.task, spec.file, {**spec.space.fixed, **values}, trial.number)
    except UserError as exc:
        raise InvalidTrialConfig(str(exc)) from None
    trial.set_user_attr("config", configs_dict(configs))
    trial.set_user_attr("worker", worker)
    pruning = PruneOnEvaluation(trial)
    start = time.monotonic()
    history = train_task(spec.task, spec.data, Path(spec.out) / TRIALS_DIR / str(trial.number), configs["model"],
                         _trial_train(configs["train"], spec), configs["data"], overwrite=True, progress=False,
                         callbacks=[pruning, *experiment_loggers(spec.log)])
    trial.set_user_attr("seconds", round(time.monotonic() - start, 3))
    trial.set_user_attr("stop_reason", history.stop_reason)
    best = history.best or {}
    if not isinstance(best.get(spec.monitor), (int, float)):
        raise UserError(f"{spec.data}: trial {trial.number} has no validation {spec.monitor}; "
                        "tune needs a validation split (see the task's val options)")
    return float(best[spec.monitor]), pruning.pruned_at is not None


def _report(spec: TuneSpec, trial, outcome: str) -> None:
    if spec.progress:
        params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
        print(f"trial {trial.number} {outcome} ({params})", file=sys.stderr, flush=True)


def work(spec: TuneSpec, worker: int = 0, child: bool = False) -> None:
    """Run trials of the study until it has ``spec.trials`` finished ones or the budget is spent
    (``child``: a worker process of a tune command, which shares its lock and stops when it dies).
    Diverged or invalid trials are marked FAIL and the worker goes on (up to MAX_FAILED_IN_A_ROW
    in a row); any other error marks the trial FAIL and ends the worker. An interrupt leaves the
    trial RUNNING, for the next tune command to retry (:func:`retry_interrupted`)."""
    from optuna.trial import TrialState

    lock = StudyLock(spec.out, exclusive=False) if child else None
    if spec.threads:
        import torch

        torch.set_num_threads(spec.threads)
    parent, failed = os.getppid(), 0
    study = open_study(spec, study_storage(spec.out), worker)
    try:
        while not (child and os.getppid() != parent):
            trial = _claim(study, spec)
            if trial is None:
                return
            try:
                value, pruned = run_trial(trial, spec, worker)
            except (TrainingDiverged, InvalidTrialConfig) as exc:
                failed = _failed(study, trial, spec, exc, failed + 1)
                continue
            except Exception as exc:
                _failed(study, trial, spec, exc, MAX_FAILED_IN_A_ROW)
            failed = 0
            if pruned:
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, value)
            _report(spec, trial, f"{'pruned' if pruned else 'complete'}: val {spec.monitor} {value:.6g}")
    finally:
        if lock is not None:
            lock.release()


def _failed(study, trial, spec: TuneSpec, exc: Exception, failed: int) -> int:
    """Mark ``trial`` FAIL with the error; raise it when ``failed`` trials in a row is too many."""
    from optuna.trial import TrialState

    trial.set_user_attr("error", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    study.tell(trial, state=TrialState.FAIL)
    _report(spec, trial, f"failed: {trial.user_attrs['error']}")
    if failed >= MAX_FAILED_IN_A_ROW:
        raise exc
    return failed
