"""The one training loop. Nothing here knows about tasks.

The model follows the SequenceModel call convention ``model(inputs, state, lengths) ->
(outputs, state)``; the task supplies ``loss_fn(outputs, batch) -> scalar`` and
``evaluate_fn(model) -> dict`` (snake_case metrics, run in eval mode without gradients).

One step: forward -> loss -> (stop if the loss is NaN/inf or exploding) -> backward ->
``clip_grad_norm_`` -> learning rate from the schedule -> optimizer step -> callbacks.
Stream batches (``Batch.carries_state``) get the previous batch's final state, detached
(truncated BPTT: values flow across the chunk boundary, gradients stop there); other batches
start from zeros. With ``ema`` the loop keeps an exponential moving average of the weights
(:class:`WeightAverage`); evaluation, the best weights and the artifact use it. A checkpoint
restores the model, optimizer, RNG states, carried state, data cursor, averaged weights, best
weights, history and callback states, so ``fit(..., resume=True)`` reaches the same weights as a
run that was never interrupted (bit-identical on CPU).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from rnnkit import artifacts
from rnnkit.errors import UserError
from rnnkit.runtime import seed_everything
from rnnkit.training import distributed
from rnnkit.training.callbacks import Callback, EarlyStopping
from rnnkit.training.config import TrainConfig
from rnnkit.training.schedules import learning_rate


BUDGET_FIT_AFTER = 10  # steps timed before schedule_to_budget trusts its seconds-per-step estimate


class TrainingDiverged(UserError):
    """The loss became NaN/inf or exploded; the last good checkpoint is kept."""


@dataclass
class History:
    """train: [{step, epoch, loss, lr, tokens_per_s}] (mean over each log window);
    eval: [{step, epoch, <metric>: value}]; best: the selected evaluation; stop_reason;
    steps_taken: optimizer steps of the fit call that returned it (not saved in history.json)."""

    train: list = field(default_factory=list)
    eval: list = field(default_factory=list)
    best: Optional[dict] = None
    stop_reason: str = ""
    steps_taken: int = field(default=0, compare=False)

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "steps_taken"}

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(**{k: d[k] for k in ("train", "eval", "best", "stop_reason") if k in d})


@dataclass
class LoopState:
    """Where the loop is; JSON in checkpoint/trainer_state.json."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0
    cursor: int = 0  # batches of ``epoch`` already consumed
    first_loss: Optional[float] = None
    best_value: Optional[float] = None
    best_step: Optional[int] = None
    last_eval_step: Optional[int] = None
    last_checkpoint_step: Optional[int] = None
    window_loss: float = 0.0  # sum of train losses since the last history record
    window_steps: int = 0
    window_tokens: int = 0
    window_time: float = 0.0


class WeightAverage:
    """Exponential moving average of a model's parameters (Polyak averaging).

    ``a_t = d_t a_{t-1} + (1 - d_t) w_t`` after optimizer step t (0-based), with
    ``d_t = min(decay, (1 + t) / (10 + t))`` so the first steps are not averaged with the
    random initialisation for long. Buffers are not averaged.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.params = list(model.parameters())
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - d)

    @contextmanager
    def applied(self):
        """Inside the block the model holds the averaged weights; its own come back after."""
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            torch._foreach_copy_(self.params, self.shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, saved)

    def tensors(self) -> dict:
        return {str(i): t for i, t in enumerate(self.shadow)}

    def load(self, tensors: dict) -> None:
        if len(tensors) != len(self.shadow):
            raise ValueError(f"{len(tensors)} averaged tensors for {len(self.shadow)} parameters")
        with torch.no_grad():
            for i, t in enumerate(self.shadow):
                t.copy_(tensors[str(i)])


def make_optimizer(cfg: TrainConfig, params: Iterable) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise UserError(f"optimizer: expected one of adamw, adam, sgd, rmsprop, got {cfg.optimizer!r}")


def detach_state(state):
    """Detach a recurrent state: a tensor, a tuple (h, c), or None."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return tuple(detach_state(s) for s in state)


def clip_gradients(model: torch.nn.Module, max_norm: Optional[float]) -> float:
    """Clip the global gradient norm to ``max_norm`` (None: no clipping); returns the norm before clipping."""
    limit = max_norm if max_norm is not None else math.inf
    return float(torch.nn.utils.clip_grad_norm_(model.parameters(), limit))


def _flatten_state(state) -> dict[str, torch.Tensor]:
    if state is None:
        return {}
    if isinstance(state, torch.Tensor):
        return {"h": state}
    return {str(i): s for i, s in enumerate(state)}


def _unflatten_state(tensors: dict, device):
    if not tensors:
        return None
    if "h" in tensors:
        return tensors["h"].to(device)
    return tuple(tensors[str(i)].to(device) for i in range(len(tensors)))


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device: 'cuda' was asked for but torch sees no CUDA device")
    return torch.device(name)


class Trainer:
    """``Trainer(TrainConfig, callbacks).fit(model, train, loss_fn, evaluate_fn, run_dir, meta) -> History``.

    train: a BatchSource (``len()`` batches per epoch, ``epoch(e, seed)`` reproducible).
    run_dir: where snapshots go (see :mod:`rnnkit.artifacts`); None trains in memory only.
    meta: JSON-able fields for artifact.json (task, model, task_config, task_state, data).
    The best weights (on ``config.monitor``, ``config.monitor_mode``) are loaded into the model
    when fit returns; without ``evaluate_fn`` the last weights are the selected ones.
    """

    def __init__(self, config: TrainConfig, callbacks: Iterable[Callback] = ()):
        self.config = config
        self.callbacks = list(callbacks)
        if config.patience > 0:
            self.callbacks.append(EarlyStopping(config.patience))
        self.state = LoopState()
        self.history = History()
        self.total_steps = 0
        self.run_dir: Optional[Path] = None
        self.final_save = False
        self._stop_reason = ""
        self._meta: dict = {}
        self._resumed = False
        self._t0 = time.monotonic()

    # -- control -------------------------------------------------------------------------------
    def stop(self, reason: str) -> None:
        """Ask the loop to stop cleanly after the current step (saves a final snapshot)."""
        if not self._stop_reason:
            self._stop_reason = reason

    @property
    def meta(self) -> dict:
        """The run's artifact fields given to ``fit`` (task, model, task_config, task_state, data)."""
        return self._meta

    @property
    def resumed(self) -> bool:
        """Whether this fit call continues a run from its checkpoint (``fit(..., resume=True)``)."""
        return self._resumed

    @property
    def elapsed(self) -> float:
        """Seconds since this fit call started (the time budget counts per call)."""
        return time.monotonic() - self._t0

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, model, train, loss_fn: Callable, evaluate_fn: Optional[Callable] = None,
            run_dir=None, meta: Optional[dict] = None, resume: bool = False) -> History:
        cfg = self.config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._meta = dict(meta or {})
        self._device = _device(cfg.device)
        self.dist = distributed.context(self._device)  # DDP under torchrun, else a no-op
        self._t0 = time.monotonic()
        model.to(self._device).train()
        net = self.dist.wrap(model)
        opt = make_optimizer(cfg, model.parameters())
        self.average = WeightAverage(model, cfg.ema) if cfg.ema > 0 else None
        self.total_steps = self._planned_steps = self._total(len(train))
        self._fresh = not resume  # the first save of a new run replaces an old directory wholesale
        self._resumed, self._resumed_complete = resume, False
        carry, best = None, None
        if resume:
            carry, best = self._restore(model, opt)
        else:
            self.state, self.history = LoopState(), History()
            seed_everything(cfg.seed)
        s, steps_here = self.state, 0
        while not self._stop_reason:
            if s.epoch >= cfg.epochs:
                self.stop(f"finished {cfg.epochs} epochs")
                break
            batches = itertools.islice(train.epoch(s.epoch, cfg.seed), s.cursor, None)
            for batch in batches:
                if cfg.max_steps is not None and s.step >= cfg.max_steps:
                    break
                if self.dist.any(cfg.time_budget is not None and self.elapsed >= cfg.time_budget):
                    self.stop(f"time budget of {cfg.time_budget:g} s reached at step {s.step}")
                    break
                carry = self._step(net, opt, batch, carry, loss_fn)
                steps_here += 1
                self._fit_schedule_to_budget(steps_here)
                if cfg.eval_every and s.step % cfg.eval_every == 0:
                    best = self._evaluate(model, evaluate_fn, best)
                if self._checkpoint_due() and not self._stop_reason:
                    self._save(model, opt, carry, best)
                if self.dist.any(bool(self._stop_reason)):
                    self.stop("stopped on another rank")
                    break
            else:
                s.epoch, s.cursor, carry = s.epoch + 1, 0, None
                if not cfg.eval_every:
                    best = self._evaluate(model, evaluate_fn, best)
                if not self._stop_reason and (self._checkpoint_due(epoch_end=True)):
                    self._save(model, opt, carry, best)
                continue
            if cfg.max_steps is not None and s.step >= cfg.max_steps:
                self.stop(f"reached max_steps={cfg.max_steps}")
        return self._finish(model, opt, carry, best, evaluate_fn, steps_here)

    def _total(self, per_epoch: int) -> int:
        total = self.config.epochs * per_epoch
        return min(total, self.config.max_steps) if self.config.max_steps is not None else total

    def _fit_schedule_to_budget(self, steps_here: int) -> None:
        """With ``schedule_to_budget``: total_steps = the steps this call's time budget still has
        room for at the seconds per step measured so far (never more than planned). The lr is
        then a function of the step and that estimate, so a resumed call refits to its budget."""
        cfg = self.config
        if not cfg.schedule_to_budget or cfg.time_budget is None or steps_here < BUDGET_FIT_AFTER:
            return
        elapsed = self.elapsed
        fits = self.state.step + int(max(0.0, cfg.time_budget - elapsed) * steps_here / elapsed)
        self.total_steps = max(self.state.step + 1, min(self._planned_steps, fits))

    def _step(self, model, opt, batch, carry, loss_fn):
        cfg, s = self.config, self.state
        t = time.perf_counter()
        batch, share = self.dist.shard(batch.to(self._device))  # this rank's rows (all of them alone)
        with torch.autocast(self._device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            outputs, state = model(batch.inputs, carry if batch.carries_state else None, batch.lengths)
            loss = loss_fn(outputs.float(), batch)
        value = self.dist.reduce_loss(loss.detach(), share)  # the global batch's mean
        self._check_loss(value, "loss")
        opt.zero_grad(set_to_none=True)
        self.dist.backward_loss(loss, share).backward()
        norm = clip_gradients(model, cfg.clip_grad_norm)
        self._check_loss(norm, "gradient norm")
        lr = self.lr_at(s.step)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        if self.average is not None:
            self.average.update(s.step)
        s.step += 1
        s.cursor += 1
        if s.first_loss is None:
            s.first_loss = value
        dt = time.perf_counter() - t
        s.window_loss, s.window_steps = s.window_loss + value, s.window_steps + 1
        s.window_tokens, s.window_time = s.window_tokens + batch.num_tokens, s.window_time + dt
        logs = {"step": s.step, "epoch": s.epoch, "loss": value, "lr": lr, "grad_norm": norm,
                "tokens": batch.num_tokens, "tokens_per_s": batch.num_tokens / max(dt, 1e-9)}
        if s.step % max(1, cfg.log_every) == 0:
            self._record_train()
        for cb in self.callbacks:
            cb.on_step_end(self, logs)
        return detach_state(state) if batch.carries_state else None

    def lr_at(self, step: int) -> float:
        c = self.config
        return learning_rate(step, c.lr, c.schedule, c.warmup_steps, self.total_steps, c.min_lr, c.step_size, c.gamma)

    def _check_loss(self, value: float, what: str) -> None:
        s, f = self.state, self.config.explode_factor
        bad = not math.isfinite(value)
        exploded = what == "loss" and f > 0 and s.first_loss is not None and value > f * max(s.first_loss, 1e-12)
        if not (bad or exploded):
            return
        why = f"{what} is {value}" if bad else f"loss {value:.4g} exceeds {f:g} x the first loss {s.first_loss:.4g}"
        kept = (f"the last good checkpoint (step {s.last_checkpoint_step}) is kept in {self.run_dir}"
                if s.last_checkpoint_step is not None else "no checkpoint was written")
        raise TrainingDiverged(f"training diverged at step {s.step + 1}: {why}; {kept}; "
                               f"try a lower --lr or --clip-grad-norm")

    def _record_train(self) -> None:
        s = self.state
        if not s.window_steps:
            return
        self.history.train.append({
            "step": s.step, "epoch": s.epoch, "loss": s.window_loss / s.window_steps,
            "lr": self.lr_at(max(0, s.step - 1)), "tokens_per_s": s.window_tokens / max(s.window_time, 1e-9),
        })
        s.window_loss, s.window_steps, s.window_tokens, s.window_time = 0.0, 0, 0, 0.0

    def _evaluate(self, model, evaluate_fn, best):
        """Run evaluate_fn (eval mode, no grad, RNG untouched); update the best weights."""
        s, cfg = self.state, self.config
        if evaluate_fn is None or s.last_eval_step == s.step:
            return best
        model.eval()
        with self._averaged(), torch.no_grad(), torch.random.fork_rng(devices=[] if self._device.type == "cpu" else None):
            metrics = self.dist.on_rank0(  # rank 0 evaluates, every rank gets its metrics
                lambda: {k: float(v) if isinstance(v, (int, float)) else v for k, v in evaluate_fn(model).items()})
            weights = {k: v.detach().clone() for k, v in model.state_dict().items()}  # the evaluated ones
        model.train()
        if cfg.monitor not in metrics:
            raise UserError(f"monitor: {cfg.monitor!r} is not a validation metric; expected one of: "
                            f"{', '.join(metrics)}")
        s.last_eval_step = s.step
        record = {"step": s.step, "epoch": s.epoch, **metrics}
        self.history.eval.append(record)
        value = metrics[cfg.monitor]
        better = s.best_value is None or (value < s.best_value if cfg.monitor_mode == "min" else value > s.best_value)
        if better and math.isfinite(value):
            s.best_value, s.best_step = value, s.step
            self.history.best = record
            best = weights
        for cb in self.callbacks:
            cb.on_eval_end(self, metrics)
        return best

    def _averaged(self):
        """A context holding the averaged weights in the model (a no-op without ``ema``)."""
        return self.average.applied() if self.average is not None else nullcontext()

    def _selected_weights(self, model) -> dict:
        """Without a best evaluation: the averaged weights with ``ema``, else the current ones."""
        with self._averaged():
            return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def _checkpoint_due(self, epoch_end: bool = False) -> bool:
        s, cfg = self.state, self.config
        if self.run_dir is None:
            return False
        if cfg.checkpoint_every:
            return not epoch_end and s.step % cfg.checkpoint_every == 0
        return s.last_eval_step == s.step or epoch_end

    # -- snapshots -----------------------------------------------------------------------------
    def _save(self, model, opt, carry, best, status: str = "training") -> None:
        s = self.state
        s.last_checkpoint_step = s.step
        self.final_save = status == "complete"  # callbacks may add costly files only then
        carry = self.dist.gather_state(carry)  # the global batch's state (collective: every rank)
        if not self.dist.is_writer:
            self._fresh = False
            return
        weights = best if best is not None else self._selected_weights(model)
        ckpt = self._checkpoint_files(model, opt, carry)
        meta = {**self._meta, "train": dataclasses.asdict(self.config), "status": status, "step": s.step,
                "epoch": s.epoch, "stop_reason": self._stop_reason, "metrics": self._metrics()}
        files = artifacts.snapshot_files(meta, weights, self.history.to_dict(), ckpt)
        for cb in self.callbacks:
            cb.on_checkpoint(self, files)
        artifacts.write_run(self.run_dir, files, keep_extras=not self._fresh)
        self._fresh = False

    def _metrics(self) -> dict:
        out = {}
        if self.history.best:
            out.update({f"val_{k}": v for k, v in self.history.best.items() if k not in ("step", "epoch")})
            out["best_step"] = self.history.best["step"]
        if self.history.train:
            out["train_loss"] = self.history.train[-1]["loss"]
        return out

    def _checkpoint_files(self, model, opt, carry) -> dict[str, bytes]:
        tensors, opt_info = artifacts.flatten_optimizer(opt.state_dict())
        np_state = np.random.get_state()
        rng = {"torch_cpu": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64))}
        if torch.cuda.is_available():
            for i, st in enumerate(torch.cuda.get_rng_state_all()):
                rng[f"cuda.{i}"] = st
        trainer_state = {
            "loop": dataclasses.asdict(self.state),
            "stop_reason": self._stop_reason,
            "callbacks": {f"{i}:{type(cb).__name__}": cb.state_dict() for i, cb in enumerate(self.callbacks)},
            "optimizer": opt_info,
            "numpy_rng": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python_rng": _py_rng_to_json(random.getstate()),
            "schedule": {"total_steps": self.total_steps, "lr": self.lr_at(self.state.step)},
        }
        return {
            "model.safetensors": artifacts.tensors_bytes(model.state_dict()),
            "optimizer.safetensors": artifacts.tensors_bytes(tensors),
            "rng.safetensors": artifacts.tensors_bytes(rng),
            "carry.safetensors": artifacts.tensors_bytes(_flatten_state(carry)),
            "trainer_state.json": artifacts.json_bytes(trainer_state),
            **({"average.safetensors": artifacts.tensors_bytes(self.average.tensors())} if self.average else {}),
        }

    def _restore(self, model, opt):
        """Load the checkpoint of ``run_dir`` (each file checked against the sha256 artifact.json
        records, where it does); returns (carried state, best weights)."""
        if self.run_dir is None:
            raise ValueError("resume=True needs run_dir")
        ck = self.run_dir / artifacts.CHECKPOINT
        meta = artifacts.read_meta(self.run_dir)
        self._resumed_complete = meta.get("status") == "complete"
        sums = artifacts.checkpoint_sha256(meta)
        ts = artifacts._read_json(ck / "trainer_state.json", "checkpoint state", sums.get("trainer_state.json"))

        def tensors(name, what):
            return artifacts.read_tensors(ck / name, what, sums.get(name))

        try:
            self.state = LoopState(**ts["loop"])
            self._stop_reason = ""
            model.load_state_dict(tensors("model.safetensors", "checkpoint weights"))
            opt.load_state_dict(artifacts.unflatten_optimizer(tensors("optimizer.safetensors", "optimizer state"),
                                                              ts["optimizer"]))
            for i, cb in enumerate(self.callbacks):
                cb.load_state_dict(ts["callbacks"].get(f"{i}:{type(cb).__name__}", {}))
            _restore_rng(tensors("rng.safetensors", "RNG state"), ts)
            carry = _unflatten_state(tensors("carry.safetensors", "carried state"), self._device)
            if self.average is not None:
                self.average.load(tensors("average.safetensors", "averaged weights"))
            carry = self.dist.shard_state(carry)  # this rank's streams of the global state
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
            detail = str(exc).splitlines()[0] if str(exc) else ""
            raise UserError(f"{ck}: damaged checkpoint ({exc.__class__.__name__}: {detail})") from None
        self.history = History.from_dict(artifacts._read_json(self.run_dir / "history.json", "history"))
        best = None
        if self.history.best is not None:
            best = {k: v.to(self._device) for k, v in artifacts.read_tensors(
                self.run_dir / meta["weights"].get("file", artifacts.WEIGHTS), "weights",
                meta["weights"].get("sha256")).items()}
        return carry, best

    def _finish(self, model, opt, carry, best, evaluate_fn, steps_here) -> History:
        """After the loop: the last record and evaluation, the final (``complete``) save and the
        selected weights loaded. A resumed run with nothing left to train that was not marked
        complete yet (killed before its final save) is finished the same way."""
        completing = self._resumed and not steps_here and not self._resumed_complete
        if steps_here or completing:
            self._record_train()
            best = self._evaluate(model, evaluate_fn, best)
        self.history.stop_reason = self._stop_reason
        self.history.steps_taken = steps_here
        first = self.run_dir is not None and not (self.run_dir / artifacts.ARTIFACT_JSON).exists()
        if self.run_dir is not None and (steps_here or completing or first):
            self._save(model, opt, carry, best, status="complete")
        if best is None and self.average is not None:
            best = self._selected_weights(model)
        if best is not None:
            model.load_state_dict(best)
        for cb in self.callbacks:
            cb.on_fit_end(self, self.history)
        return self.history


def _restore_rng(rng: dict, ts: dict) -> None:
    """Set torch's (CPU and CUDA), numpy's and Python's generators to a checkpoint's states."""
    torch.set_rng_state(rng["torch_cpu"])
    cuda = [rng[f"cuda.{i}"] for i in range(torch.cuda.device_count()) if f"cuda.{i}" in rng]
    if cuda:
        torch.cuda.set_rng_state_all(cuda)
    name, pos, has_gauss, cached = ts["numpy_rng"]
    np.random.set_state((name, rng["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_py_rng_from_json(ts["python_rng"]))


def _py_rng_to_json(state) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _py_rng_from_json(data) -> tuple:
    version, internal, gauss = data
    return (version, tuple(internal), gauss)


__all__ = ["Trainer", "History", "TrainingDiverged", "make_optimizer", "detach_state", "json"]
