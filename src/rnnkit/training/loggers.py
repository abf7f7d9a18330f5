"""Experiment logging through the trainer's callbacks: ``--log tensorboard`` on train, resume and tune.

:class:`TensorBoardLogger` writes, under ``RUN/tensorboard/``:

* ``train/loss``, ``train/grad_norm`` and ``train/tokens_per_s`` (means over the trainer's
  ``log_every`` window) and ``train/lr``, at the step that closes each window;
* ``val/<metric>`` for every numeric validation metric, at the step of each evaluation;
* ``config``: the run's task, model, data and training settings as JSON text, once per fit call.

Why the events are kept in memory: a save swaps in a whole new run directory
(:func:`rnnkit.artifacts.write_run`), so a file held open inside it would end up in the old
copy. The event file is instead added to every snapshot (``on_checkpoint``) and so is written
atomically with the checkpoint it belongs to: after a resume, the steps logged since the last
checkpoint are logged again, once. Each fit call writes its own event file (a resumed run adds
one and carries the earlier ones into its snapshots), which TensorBoard reads as one run.

The ``tensorboard`` package is optional (``pip install 'rnnkit[tensorboard]'``) and imported
only when a logger is made.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import os
import socket
import time
from typing import Sequence

from rnnkit.errors import UserError
from rnnkit.training.callbacks import Callback

LOGGERS = ("tensorboard",)  # the values --log takes
TENSORBOARD_DIR = "tensorboard"


def experiment_loggers(names: Sequence[str]) -> list[Callback]:
    """The callbacks for ``--log NAME ...`` (an empty list for none); a one-line error for an
    unknown name or a logger whose package is not installed."""
    loggers = []
    for name in dict.fromkeys(names or ()):  # each once, in the order given
        if name not in LOGGERS:
            raise UserError(f"--log: expected one of {', '.join(LOGGERS)}, got {name!r}")
        if importlib.util.find_spec("tensorboard") is None:
            raise UserError("--log tensorboard needs the tensorboard package: pip install 'rnnkit[tensorboard]'")
        loggers.append(TensorBoardLogger())
    return loggers


class TensorBoardLogger(Callback):
    """TensorBoard scalars and the config of a run, in ``RUN/tensorboard/`` (see the module docstring)."""

    def __init__(self):
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event = Event
        self._buffer = io.BytesIO()
        self._records = RecordWriter(self._buffer)
        self._records.write(Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
        self.file_name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}"
        self._config_logged = False
        self._earlier = None  # {relative path: bytes}: the event files of the run's earlier fit calls
        self._window = {"loss": 0.0, "grad_norm": 0.0, "tokens": 0, "seconds": 0.0, "steps": 0}

    def _write(self, step: int, summary) -> None:
        self._records.write(self._event(wall_time=time.time(), step=step, summary=summary).SerializeToString())

    def _scalars(self, step: int, values: dict) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        self._write(step, Summary(value=[Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()]))

    def _log_config(self, trainer) -> None:
        from tensorboard.plugins.text.summary_v2 import text_pb

        meta = trainer.meta
        config = {"task": meta.get("task"), "data": meta.get("data", {}).get("source"),
                  "model": meta.get("model"), "task_config": meta.get("task_config"),
                  "train": dataclasses.asdict(trainer.config)}
        text = json.dumps(config, indent=2, default=str)
        self._write(trainer.state.step, text_pb("config", "    " + text.replace("\n", "\n    ")))  # markdown code block
        self._config_logged = True

    def on_step_end(self, trainer, logs):
        if not self._config_logged:
            self._log_config(trainer)
        w = self._window
        w["loss"] += logs["loss"]
        w["grad_norm"] += logs["grad_norm"]
        w["tokens"] += logs["tokens"]
        w["seconds"] += logs["tokens"] / max(logs["tokens_per_s"], 1e-9)
        w["steps"] += 1
        if logs["step"] % max(1, trainer.config.log_every) == 0:
            n = w["steps"]
            self._scalars(logs["step"], {"train/loss": w["loss"] / n, "train/grad_norm": w["grad_norm"] / n,
                                         "train/lr": logs["lr"],
                                         "train/tokens_per_s": w["tokens"] / max(w["seconds"], 1e-9)})
            self._window = dict.fromkeys(w, 0)

    def on_eval_end(self, trainer, metrics):
        numeric = {f"val/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numeric:
            self._scalars(trainer.state.step, numeric)

    def on_checkpoint(self, trainer, files):
        if self._earlier is None:  # a save replaces RUN/tensorboard/ whole: carry a resumed run's files
            folder = trainer.run_dir / TENSORBOARD_DIR
            self._earlier = {f"{TENSORBOARD_DIR}/{f.name}": f.read_bytes() for f in sorted(folder.glob("events.*"))
                             if f.name != self.file_name} if trainer.resumed and folder.is_dir() else {}
        files.update(self._earlier)
        files[f"{TENSORBOARD_DIR}/{self.file_name}"] = self._buffer.getvalue()
