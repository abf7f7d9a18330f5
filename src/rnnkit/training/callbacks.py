"""Callbacks: four hooks and a state_dict, nothing more.

``on_step_end(trainer, logs)`` after every optimizer step (logs: step, epoch, loss, lr,
grad_norm, tokens, tokens_per_s); ``on_eval_end(trainer, metrics)`` after each validation
pass; ``on_checkpoint(trainer, files)`` while a snapshot of the run directory is assembled
(add ``{relative path: bytes}`` to ``files`` to write more files atomically with it);
``on_fit_end(trainer, history)``. A callback that holds state returns it, JSON-able, from
``state_dict()``; it is saved in ``checkpoint/trainer_state.json`` and restored on resume.
A callback stops the run with ``trainer.stop(reason)``.
"""

from __future__ import annotations

import sys
import time


MAX_EVAL_ITEMS = 6  # metrics on one progress line; per-class ones would make it unreadable


class Callback:
    def on_step_end(self, trainer, logs: dict) -> None:
        pass

    def on_eval_end(self, trainer, metrics: dict) -> None:
        pass

    def on_checkpoint(self, trainer, files: dict) -> None:
        pass

    def on_fit_end(self, trainer, history) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class EarlyStopping(Callback):
    """Stop after ``patience`` evaluations in a row without a new best monitored metric."""

    def __init__(self, patience: int):
        self.patience = patience
        self.wait = 0

    def on_eval_end(self, trainer, metrics):
        if trainer.state.best_step == trainer.state.step:
            self.wait = 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            s = trainer.state
            trainer.stop(
                f"early stopping: val {trainer.config.monitor} did not improve for {self.wait} evaluations "
                f"(best {s.best_value:.6g} at step {s.best_step})"
            )

    def state_dict(self):
        return {"wait": self.wait}

    def load_state_dict(self, state):
        self.wait = int(state.get("wait", 0))


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ProgressBar(Callback):
    """A live bar (loss, tokens/s, ETA) on a terminal; plain lines every ``log_every`` steps otherwise.

    Writes to ``stream`` (stderr by default), so stdout stays clean for ``--json`` output.
    """

    def __init__(self, stream=None, log_every: int = 50, width: int = 24):
        self.stream = stream or sys.stderr
        self.log_every = max(1, log_every)
        self.width = width
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self._start = None
        self._start_step = 0

    def _eta(self, trainer, step) -> str:
        total = trainer.total_steps
        rate = (step - self._start_step) / max(1e-9, time.monotonic() - self._start)
        eta = (total - step) / rate if total and rate > 0 else 0.0
        budget = trainer.config.time_budget
        if budget:
            eta = min(eta, budget - trainer.elapsed) if total else budget - trainer.elapsed
        return _fmt_time(eta)

    def on_step_end(self, trainer, logs):
        step = logs["step"]
        if self._start is None:
            self._start, self._start_step = time.monotonic(), step - 1
        total = trainer.total_steps
        text = (
            f"step {step}/{total} epoch {logs['epoch'] + 1} loss {logs['loss']:.4f} "
            f"lr {logs['lr']:.3g} {logs['tokens_per_s']:.0f} tok/s ETA {self._eta(trainer, step)}"
        )
        if self.live:
            done = int(self.width * step / total) if total else 0
            bar = "#" * done + "." * (self.width - done)
            self.stream.write(f"\r[{bar}] {text}\x1b[K")
            self.stream.flush()
        elif step % self.log_every == 0 or step == 1:
            self.stream.write(text + "\n")
            self.stream.flush()

    def on_eval_end(self, trainer, metrics):
        shown = list(metrics.items())[:MAX_EVAL_ITEMS]  # tasks list their headline metrics first
        more = f" (+{len(metrics) - len(shown)} more in history.json)" if len(metrics) > len(shown) else ""
        items = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown) + more
        self.stream.write(("\n" if self.live else "") + f"eval step {trainer.state.step}: {items}\n")
        self.stream.flush()

    def on_fit_end(self, trainer, history):
        if self.live:
            self.stream.write("\n")
        if history.stop_reason:
            self.stream.write(f"stopped: {history.stop_reason}\n")
        self.stream.flush()


class CurvesPlot(Callback):
    """Adds ``curves.png`` (train/val loss and the monitored metric vs step) to the final snapshot
    and to intermediate ones at most every ``every_s`` seconds (a snapshot without it keeps the
    previous curves.png); rendering a figure is slow next to a training step, so it must not run at every checkpoint."""

    def __init__(self, every_s: float = 60.0):
        self.every_s = every_s
        self._last = time.monotonic()

    def on_checkpoint(self, trainer, files):
        if not trainer.final_save and time.monotonic() - self._last < self.every_s:
            return
        from rnnkit.plots import curves_png

        files["curves.png"] = curves_png(trainer.history.to_dict(), trainer.config.monitor)
        self._last = time.monotonic()
