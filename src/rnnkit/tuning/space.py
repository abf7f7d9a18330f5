"""Search spaces of ``rnnkit tune``: a default per task, which a config file's ``[tune]`` section
overrides or narrows, and the configs a trial's sampled values resolve to.

A parameter is named ``SECTION.FIELD`` after the config-file section and dataclass field it sets
(``model.hidden_size``, ``train.lr``, ``data.seq_len``); its spec is one of

* a list: the choices (``cell = ["lstm", "gru"]``), sampled as a categorical;
* a table ``{low, high, log?, step?}``: a range of an int or float field;
* a single value: fixed (the parameter is no longer searched; its value goes into every trial).

``[tune]`` holds sub-tables ``model``, ``train`` and ``data`` of such specs, and ``default_space``
(true by default: the task's default space with the file's specs on top; false: only the
file's specs)::

    [tune]
    default_space = true
    [tune.model]
    cell = ["gru"]                 # narrowed to one choice
    hidden_size = [32, 64]
    [tune.train]
    lr = {low = 1e-3, high = 3e-2, log = true}
    [tune.data]
    lookback = 30                  # fixed: not searched

A trial's configs are the dataclass defaults < the file's ``[model]``/``[train]``/``[data]``
sections < the fixed values < the sampled values, each typed and checked as ``rnnkit train``
checks a config file; ``train.seed`` is the file's seed plus the trial number (each trial its
own seed) unless the space sets it. The default spaces live here, with the tuner, rather than as
a Task hook: they are tuning policy (ranges worth searching in a fixed budget), not part of a
task's data contract, and one table shows them all.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from rnnkit.errors import UserError
from rnnkit.models import ModelConfig
from rnnkit.tasks import get_task
from rnnkit.training.config import (
    SECTIONS, _base_type, check_keys, coerce, field_choices, field_types, from_dict,
)

_COMMON = {
    "model.cell": ["lstm", "gru"],
    "model.hidden_size": [64, 128, 256],
    "model.num_layers": {"low": 1, "high": 2},
    "model.dropout": {"low": 0.0, "high": 0.5},
    "train.lr": {"low": 3e-4, "high": 1e-2, "log": True},
}

# The default search space of each task: the common model and optimiser settings, the sequence
# length (or lookback) and the task's own options. Narrow them with [tune] for small data.
DEFAULT_SPACES = {
    "textgen": {**_COMMON, "model.num_layers": {"low": 1, "high": 3}, "model.embedding_dim": [32, 64, 128],
                "data.seq_len": [50, 100, 200]},
    "forecast": {**_COMMON, "model.hidden_size": [32, 64, 128], "data.lookback": [14, 30, 60, 90],
                 "data.window_norm": ["none", "last"], "data.dense_targets": [True, False],
                 "data.loss": ["mse", "mae"]},
    "textclass": {**_COMMON, "model.bidirectional": [False, True], "model.head": ["last", "max", "concat"],
                  "model.embedding_dim": [64, 128], "model.embedding_dropout": {"low": 0.0, "high": 0.5},
                  "data.max_length": [100, 200, 400]},
    "seqclass": {**_COMMON, "model.bidirectional": [False, True], "model.head": ["last", "mean", "max"],
                 "data.augment_shift": [0, 1, 2]},
    "tag": {**_COMMON, "data.char_hidden": [0, 25, 50], "data.decoder": ["crf", "softmax"],
            "data.batch_size": [16, 32]},
    "transcribe": {**_COMMON, "model.bidirectional": [False, True], "data.batch_size": [16, 32, 64],
                   "data.subsample": [1, 2, 3]},
    "seq2seq": {**_COMMON, "model.embedding_dim": [64, 128, 256], "model.embedding_dropout": {"low": 0.0, "high": 0.3},
                "data.attention": ["additive", "multiplicative"], "data.input_feeding": [False, True],
                "data.label_smoothing": [0.0, 0.1], "data.batch_size": [32, 64, 128]},
}

TUNE_KEYS = ("default_space",) + SECTIONS


def config_classes(task_name: str) -> dict[str, type]:
    """{config-file section: its dataclass} for ``task_name``."""
    from rnnkit.training.config import TrainConfig

    return {"model": ModelConfig, "train": TrainConfig, "data": get_task(task_name).Config}


@dataclass(frozen=True)
class Param:
    """One searched setting: ``choices`` (categorical) or ``low``..``high`` (``log``, ``step``)."""

    name: str  # SECTION.FIELD
    kind: type  # the field's type: int, float, str or bool
    choices: tuple = ()
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None

    def suggest(self, trial) -> Any:
        """This parameter's value in an Optuna ``trial`` (sampled, or the enqueued one)."""
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind is int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)


@dataclass(frozen=True)
class SearchSpace:
    """The searched parameters and the fixed values every trial gets (both by ``SECTION.FIELD``)."""

    params: tuple
    fixed: dict

    def suggest(self, trial) -> dict:
        """{name: value} of every searched parameter for ``trial``."""
        return {p.name: p.suggest(trial) for p in self.params}

    def names(self) -> list[str]:
        return [p.name for p in self.params]


def search_space(task_name: str, tune_section: Optional[dict] = None, where: str = "[tune]") -> SearchSpace:
    """The task's default space updated (or, with ``default_space = false``, replaced) by a
    config file's ``[tune]`` section; every spec checked against its field's type and choices."""
    tune_section = dict(tune_section or {})
    check_keys(tune_section, TUNE_KEYS, where)
    use_default = tune_section.pop("default_space", True)
    if not isinstance(use_default, bool):
        raise UserError(f"{where}: default_space: expected true or false, got {use_default!r}")
    specs = dict(DEFAULT_SPACES[task_name]) if use_default else {}
    classes = config_classes(task_name)
    for section, table in tune_section.items():
        if not isinstance(table, dict):
            raise UserError(f"{where}.{section}: expected a table of FIELD = spec, got {table!r}")
        check_keys(table, field_types(classes[section]), f"{where}.{section}")
        specs.update({f"{section}.{name}": spec for name, spec in table.items()})
    params, fixed = [], {}
    for name, spec in specs.items():
        section, field_name = name.split(".", 1)
        parsed = _parse(name, spec, classes[section], field_name, f"{where}.{name}")
        if isinstance(parsed, Param):
            params.append(parsed)
        else:
            fixed[name] = parsed
    if not params:
        raise UserError(f"{where}: nothing to search (every parameter is fixed); add a list or a range")
    return SearchSpace(tuple(params), fixed)


def _parse(name: str, spec: Any, cls: type, field_name: str, where: str):
    """A :class:`Param` for a list or a range, the typed value for a fixed spec."""
    tp = field_types(cls)[field_name]
    base = _base_type(tp)[0]
    choices = field_choices(cls, field_name)
    if isinstance(spec, list):
        if not spec:
            raise UserError(f"{where}: expected at least one choice")
        values = tuple(coerce(v, tp, where, choices) for v in spec)
        return values[0] if len(values) == 1 else Param(name, base, choices=values)
    if isinstance(spec, dict):
        return _range(name, spec, tp, base, where)
    return coerce(spec, tp, where, choices)


def _range(name: str, spec: dict, tp, base: type, where: str) -> Param:
    check_keys(spec, ("low", "high", "log", "step"), where)
    if base not in (int, float):
        raise UserError(f"{where}: a range needs a number field; give a list of choices instead")
    if "low" not in spec or "high" not in spec:
        raise UserError(f"{where}: a range needs low and high")
    low, high = (coerce(spec[k], base, f"{where}.{k}") for k in ("low", "high"))
    log = coerce(spec.get("log", False), bool, f"{where}.log")
    step = coerce(spec["step"], base, f"{where}.step") if "step" in spec else None
    if not low < high:
        raise UserError(f"{where}: expected low < high, got low={low}, high={high}")
    if log and (low <= 0 or step is not None):
        raise UserError(f"{where}: a log range needs low > 0 and no step")
    return Param(name, base, low=low, high=high, log=log, step=step)


def trial_configs(task_name: str, file: dict, values: dict, seed_offset: int) -> dict:
    """{section: dataclass} of one trial: defaults < the file's sections < ``values``
    ({SECTION.FIELD: value}: fixed and sampled); ``train.seed`` the file's seed + ``seed_offset``
    unless ``values`` sets it."""
    sections = {s: dict(file.get(s) or {}) for s in SECTIONS}
    sections["train"]["seed"] = coerce(sections["train"].get("seed", 0), int, "[train] seed") + seed_offset
    for name, value in values.items():
        section, field_name = name.split(".", 1)
        sections[section][field_name] = value
    return {s: from_dict(cls, sections[s], f"trial [{s}]") for s, cls in config_classes(task_name).items()}


def configs_dict(configs: dict) -> dict:
    """{section: JSON-able dict} of :func:`trial_configs`'s dataclasses."""
    return {s: dataclasses.asdict(c) for s, c in configs.items()}
