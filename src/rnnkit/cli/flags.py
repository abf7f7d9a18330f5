"""Dataclass fields as argparse flags, and the defaults < config file < flags resolution."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
from typing import Any

from rnnkit.errors import UserError
from rnnkit.training.config import (
    _base_type, coerce, field_choices, field_types, from_dict, load_config_file,
)

FLAG_PREFIX = "flag:"


class Parser(argparse.ArgumentParser):
    """argparse that raises UserError (one line) instead of printing usage and exiting."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        cmd = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        raise UserError(f"{cmd}: {message}" if cmd else message)


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_dataclass_flags(parser, cls, title: str, seen: set) -> None:
    """One ``--field-name`` (and ``--field_name``) per field of ``cls``; shared names are added once
    and set every config that has the field."""
    group = parser.add_argument_group(title)
    types = field_types(cls)
    for f in dataclasses.fields(cls):
        if f.name in seen:
            continue
        seen.add(f.name)
        opts = [flag_name(f.name)] + ([f"--{f.name}"] if "_" in f.name else [])
        base, optional = _base_type(types[f.name])
        choices = field_choices(cls, f.name)
        kind = "{" + ",".join(choices) + "}" if choices else getattr(base, "__name__", "value")
        default = f.default if f.default is not dataclasses.MISSING else "(required)"
        help_text = f.metadata.get("help", "")
        help_text = f"{help_text} " if help_text else ""
        kwargs = dict(dest=FLAG_PREFIX + f.name, default=None, metavar=kind.upper() if not choices else kind,
                      help=f"{help_text}(default: {default})")
        if base is bool:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        group.add_argument(*opts, **kwargs)


def add_log_flag(parser) -> None:
    """``--log NAME`` (repeatable): experiment loggers fed by the trainer's callbacks."""
    from rnnkit.training.loggers import LOGGERS

    parser.add_argument("--log", action="append", choices=LOGGERS, default=[],
                        help="log loss, metrics, learning rate, gradient norm, throughput and the config "
                             "to RUN/tensorboard/ (needs the tensorboard package; off by default)")


def given_flags(args) -> dict[str, str]:
    return {k[len(FLAG_PREFIX):]: v for k, v in vars(args).items() if k.startswith(FLAG_PREFIX) and v is not None}


def apply_flags(obj, flags: dict[str, Any]):
    """A copy of dataclass ``obj`` with the given flag strings typed and applied."""
    types = field_types(type(obj))
    changes = {name: coerce(value, types[name], flag_name(name), field_choices(type(obj), name))
               for name, value in flags.items() if name in types}
    if not changes:
        return obj
    try:
        return dataclasses.replace(obj, **changes)
    except UserError:
        raise
    except (ValueError, TypeError) as exc:
        raise UserError(f"{', '.join(flag_name(n) for n in changes)}: {exc}") from None


def resolve_configs(classes: dict[str, type], config_path, flags: dict[str, str]) -> tuple[dict, dict]:
    """{section: instance} from defaults < config file sections < flags, plus the file dict."""
    file = load_config_file(config_path) if config_path else {}
    out = {}
    for section, cls in classes.items():
        obj = from_dict(cls, file.get(section, {}), f"{config_path} [{section}]") if section in file else cls()
        out[section] = apply_flags(obj, flags)
    return out, file


def unknown_option_error(extras: list[str], parser) -> UserError:
    token = extras[0]
    if not token.startswith("-"):
        return UserError(f"unexpected argument {token!r}")
    name = token.split("=", 1)[0]
    options = [o for a in _all_actions(parser) for o in a.option_strings]
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    hint = f"; did you mean {match[0]}?" if match else ""
    return UserError(f"unknown option {name}{hint}")


def _all_actions(parser):
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_actions(sub)


def snake_case(name: str) -> str:
    s = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", str(name))
    return re.sub(r"[^0-9a-zA-Z]+", "_", s).strip("_").lower()
