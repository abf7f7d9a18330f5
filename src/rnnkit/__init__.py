"""rnnkit: recurrent neural networks on PyTorch.

Importing rnnkit first flushes denormal floats to zero (see :mod:`rnnkit.runtime`);
set ``RNNKIT_FLUSH_DENORMAL=0`` to keep torch's default.
"""

from rnnkit import runtime as _runtime

_runtime.configure_from_env()

from rnnkit.cells import GRUCell, LSTMCell, MinGRUCell, MinLSTMCell, RNNCell  # noqa: E402
from rnnkit.recurrent import GRU, LSTM, RNN, Recurrent  # noqa: E402
from rnnkit.version import __version__  # noqa: E402


# Imported on first use (``rnnkit.TextGenerator``), so ``import rnnkit`` stays light.
_LAZY = {
    "ModelConfig": "rnnkit.models",
    "SequenceModel": "rnnkit.models",
    "TrainConfig": "rnnkit.training.config",
    "Trainer": "rnnkit.training.trainer",
    "TextGenerator": "rnnkit.tasks.textgen",
    "Forecaster": "rnnkit.tasks.forecast",
    "TextClassifier": "rnnkit.tasks.textclass",
    "SequenceClassifier": "rnnkit.tasks.seqclass",
    "Tagger": "rnnkit.tasks.tag",
    "Transcriber": "rnnkit.tasks.transcribe",
    "Translator": "rnnkit.tasks.seq2seq",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rnnkit' has no attribute {name!r}")


def load(path):
    """The job's ready-to-use object saved in a run directory (TextGenerator, Forecaster, ...)."""
    from rnnkit.runs import load as _load

    return _load(path)


def ensemble(runs, out, weights: str = "equal", data=None, overwrite: bool = False):
    """Join finished runs of one task and data into one ensemble artifact ``out`` and return it
    loaded (the task's facade). ``weights``: ``"equal"`` or ``"validation"`` (chosen on the
    validation split); ``data`` replaces the runs' recorded data source. See :mod:`rnnkit.ensembles`."""
    from rnnkit.ensembles import build_ensemble

    build_ensemble(list(runs), out, weights, data, overwrite)
    return load(out)


def tune(task, data, out, trials=None, time_budget=None, config=None, jobs: int = 1, pruner: str = "median",
         log=(), progress: bool = True):
    """Search ``task``'s hyperparameters on ``data``'s validation split into the study directory
    ``out`` (resumed when it holds one) for ``trials`` finished trials and/or ``time_budget``
    seconds; ``config``: a config file or its dict (``[tune]`` narrows the search space).
    Returns the study summary; ``summary.best`` is the best run loaded. See :mod:`rnnkit.tuning`."""
    from rnnkit.tuning import tune as _tune

    return _tune(task, data, out, trials, time_budget, config, jobs, pruner, log, progress)


__all__ = [
    "__version__",
    "RNNCell",
    "LSTMCell",
    "GRUCell",
    "MinGRUCell",
    "MinLSTMCell",
    "Recurrent",
    "RNN",
    "LSTM",
    "GRU",
    "load",
    "ensemble",
    "tune",
    *_LAZY,
]
