"""TrainConfig and the dataclass <-> dict <-> flag helpers shared by every config.

Every field of ``ModelConfig``, ``TrainConfig`` and a task's ``Config`` is a CLI flag
(``--hidden-size``, ``--hidden_size`` also accepted) and a key in a JSON/TOML config file,
typed by the dataclass annotation (``int``, ``float``, ``str``, ``bool``, ``Optional[...]``).
Choices come from ``field(metadata={"choices": (...)})`` or :data:`KNOWN_CHOICES`.
Unknown keys are errors that name the nearest valid key. Settings resolve as
dataclass defaults < config file < flags.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from rnnkit.errors import UserError, check_at_least
from rnnkit.models import ENCODERS, HEADS
from rnnkit.recurrent import CELL_NAMES, MERGE_MODES
from rnnkit.training.schedules import SCHEDULES

OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop")

# choices of ModelConfig fields, taken from the modules that define them
KNOWN_CHOICES = {
    "encoder": ENCODERS,
    "cell": CELL_NAMES,
    "merge_mode": MERGE_MODES,
    "nonlinearity": ("tanh", "relu"),
    "head": HEADS,
    "use_fused": ("auto", "true", "false"),
}


def _choices(*values):
    return field(default=values[0], metadata={"choices": values})


@dataclass
class TrainConfig:
    """How to train; nothing here knows about tasks. ``0`` means "off" for the *_every knobs."""

    seed: int = 0  # seeds model init, dropout and batch order
    epochs: int = 10  # passes over the training batches (the run stops at whichever limit comes first)
    max_steps: Optional[int] = None  # optimizer steps (None: epochs decide)
    time_budget: Optional[float] = None  # seconds of training before a clean stop (None: no limit)
    # with time_budget: shorten the schedule (epochs/max_steps) to the steps that fit in the budget,
    # re-estimated from the measured seconds per step, so a cosine decay ends when the budget does
    schedule_to_budget: bool = False
    optimizer: str = _choices(*OPTIMIZERS)
    lr: float = 2e-3
    weight_decay: float = 0.0  # decoupled for adamw, L2 for the others
    momentum: float = 0.0  # sgd and rmsprop
    beta1: float = 0.9  # adam/adamw
    beta2: float = 0.999
    clip_grad_norm: Optional[float] = 5.0  # max global gradient L2 norm (None: no clipping)
    schedule: str = _choices(*SCHEDULES)
    warmup_steps: int = 0  # linear warm-up from lr/warmup_steps to lr
    min_lr: float = 0.0  # cosine floor
    step_size: int = 1000  # step schedule: multiply by gamma every step_size steps
    gamma: float = 0.5
    eval_every: int = 0  # evaluate every N steps (0: at the end of each epoch)
    eval_batches: int = 0  # validation batches per evaluation (0: all)
    checkpoint_every: int = 0  # write the run directory every N steps (0: at each evaluation)
    monitor: str = "loss"  # validation metric that selects the best weights and drives early stopping
    monitor_mode: str = _choices("min", "max")
    patience: int = 0  # early stopping after N evaluations without improvement (0: off)
    explode_factor: float = 10.0  # stop when the loss exceeds this times the first loss (0: off)
    log_every: int = 50  # progress line every N steps when not on a terminal
    device: str = _choices("cpu", "cuda", "auto")
    # bf16: forward and loss under torch.autocast(bfloat16); weights, optimizer and evaluation stay fp32.
    # Pays off where matmuls dominate and the CPU has AMX/AVX512-BF16 (BENCHMARKS.md has the ratios).
    precision: str = _choices("fp32", "bf16")
    # ema > 0: exponential moving average of the weights, a_t = d a_{t-1} + (1-d) w_t with
    # d = min(ema, (1+t)/(10+t)); evaluation, the best weights and the artifact use the average.
    ema: float = 0.0

    def __post_init__(self):
        check_choices(self)
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        positive = {"epochs": self.epochs, "max_steps": self.max_steps, "time_budget": self.time_budget,
                    "clip_grad_norm": self.clip_grad_norm, "step_size": self.step_size, "gamma": self.gamma}
        for name, value in positive.items():  # a run that cannot take one step is a mistake, not an empty model
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        check_at_least(self, 0, ("lr", "weight_decay", "momentum", "warmup_steps", "min_lr", "eval_every", "eval_batches",
                                 "checkpoint_every", "patience", "explode_factor", "log_every"))


# ----------------------------------------------------------------------------- typing

def field_types(cls) -> dict[str, Any]:
    """{field name: resolved annotation} (works with ``from __future__ import annotations``)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def field_choices(cls, name: str) -> Optional[tuple]:
    """Allowed values of a str field: its metadata["choices"], else KNOWN_CHOICES; None if free."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if _base_type(field_types(cls)[name])[0] is not str:
                return None
            return f.metadata.get("choices") or KNOWN_CHOICES.get(name)
    return None


def _base_type(tp) -> tuple[type, bool]:
    """(underlying type, allows None) for X or Optional[X]."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


_EXPECTED = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def coerce(value: Any, tp, where: str, choices: Optional[tuple] = None) -> Any:
    """Convert a flag string or a JSON/TOML value to the annotated type; UserError otherwise."""
    base, optional = _base_type(tp)
    if optional and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
        return None
    out = _convert(value, base)
    if out is _BAD:
        expected = _EXPECTED.get(base, getattr(base, "__name__", str(base)))
        if optional:
            expected += " or none"
        raise UserError(f"{where}: expected {expected}, got {value!r}")
    if choices and out not in choices:
        raise UserError(f"{where}: expected one of {', '.join(map(str, choices))}, got {value!r}")
    return out


_BAD = object()


def _convert(value, base):
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        return _BAD
    if isinstance(value, bool):
        return _BAD
    if base is int:
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                return _BAD
        return _BAD
    if base is float:
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return _BAD
        return _BAD
    if base is str:
        return value if isinstance(value, str) else _BAD
    return value


def check_choices(obj) -> None:
    """Raise UserError when a str field holds a value outside its declared choices."""
    for f in dataclasses.fields(obj):
        choices = f.metadata.get("choices")
        if choices and getattr(obj, f.name) not in choices:
            raise UserError(f"{f.name}: expected one of {', '.join(choices)}, got {getattr(obj, f.name)!r}")


def nearest(name: str, valid) -> str:
    """'; did you mean 'x'?' for the closest valid name, or ''."""
    match = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f"; did you mean {match[0]!r}?" if match else ""


def check_keys(d: dict, valid, where: str) -> None:
    for key in d:
        if key not in valid:
            raise UserError(f"{where}: unknown key {key!r}{nearest(key, valid)}")


def from_dict(cls, d: dict, where: str, base: Any = None):
    """Build ``cls`` from ``base`` (an instance, or the defaults) updated by ``d``, typed and checked."""
    types = field_types(cls)
    check_keys(d, types, where)
    values = dataclasses.asdict(base) if base is not None else {}
    for key, value in d.items():
        values[key] = coerce(value, types[key], f"{where}: {key}", field_choices(cls, key))
    return build(cls, values, where)


def build(cls, values: dict, where: str):
    """cls(**values), turning the dataclass's own validation errors into UserError."""
    try:
        return cls(**values)
    except UserError:
        raise
    except (ValueError, TypeError) as exc:
        raise UserError(f"{where}: {exc}") from None


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


# ----------------------------------------------------------------------------- config files

SECTIONS = ("model", "train", "data")
# [tune]: the search space of ``rnnkit tune`` (read by rnnkit.tuning; ``train`` ignores it)
TOP_LEVEL = ("task", "dataset", "tune") + SECTIONS


def load_config_file(path: str | Path) -> dict:
    """Read a JSON (``.json``) or TOML (anything else) config file; sections model/train/data
    (and tune), top-level ``task`` and ``dataset``. Unknown top-level keys are errors."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read config file ({exc.__class__.__name__}: {exc})") from None
    if path.suffix.lower() == ".json":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg})") from None
    else:
        import tomllib

        try:
            d = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"{path}: invalid TOML ({exc})") from None
    return check_config(d, str(path))


def check_config(d: Any, where: str) -> dict:
    """``d`` (a config file's contents, or the same dict given from Python) checked: a dict whose
    top-level keys are known and whose sections are dicts."""
    if not isinstance(d, dict):
        raise UserError(f"{where}: expected a table/object at the top level")
    check_keys(d, TOP_LEVEL, where)
    for section in SECTIONS + ("tune",):
        if section in d and not isinstance(d[section], dict):
            raise UserError(f"{where}: [{section}] must be a table/object, got {d[section]!r}")
    return d
