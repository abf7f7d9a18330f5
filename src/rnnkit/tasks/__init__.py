"""The registry of jobs. Task modules are imported on first use, so ``import rnnkit`` stays light."""

from __future__ import annotations

import importlib

from rnnkit.tasks.base import Task

TASK_MODULES = {
    "textgen": "rnnkit.tasks.textgen",
    "forecast": "rnnkit.tasks.forecast",
    "textclass": "rnnkit.tasks.textclass",
    "seqclass": "rnnkit.tasks.seqclass",
    "tag": "rnnkit.tasks.tag",
    "transcribe": "rnnkit.tasks.transcribe",
    "seq2seq": "rnnkit.tasks.seq2seq",
}


def get_task(name: str) -> Task:
    """The task registered under ``name`` (each module exposes ``TASK``); a clear error otherwise."""
    from rnnkit.errors import UserError

    if name not in TASK_MODULES:
        raise UserError(f"unknown task {name!r}; expected one of: {', '.join(TASK_MODULES)}")
    return importlib.import_module(TASK_MODULES[name]).TASK
