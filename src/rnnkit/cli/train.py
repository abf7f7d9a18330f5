"""``rnnkit train TASK --data NAME|PATH --out DIR [--config FILE] [--<field> VALUE ...]``."""

from __future__ import annotations

from rnnkit.cli.flags import add_dataclass_flags, add_log_flag, given_flags, resolve_configs
from rnnkit.errors import UserError
from rnnkit.models import ModelConfig
from rnnkit.training.config import TrainConfig


def add_parser(sub, task=None):
    p = sub.add_parser("train", help="train a task and write its run directory",
                       description="Every ModelConfig/TrainConfig/task Config field is a flag; "
                                   "settings resolve as defaults < --config file < flags.")
    p.add_argument("task", nargs="?", help="textgen | forecast | textclass | seqclass | tag (or the config's `task`)")
    p.add_argument("--data", help="a named dataset or a file/folder path (or the config's `dataset`)")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--config", help="JSON or TOML file: top-level task/dataset, sections [model] [train] [data]")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory (at the first save)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_log_flag(p)
    seen = set()
    add_dataclass_flags(p, TrainConfig, "training options", seen)
    add_dataclass_flags(p, ModelConfig, "model options", seen)
    if task is not None:
        add_dataclass_flags(p, task.Config, f"{task.name} data options", seen)
    p.set_defaults(func=run, task_obj=task)
    return p


def run(args) -> int:
    from rnnkit.tasks import get_task
    from rnnkit.runs import train_task
    from rnnkit.training.loggers import experiment_loggers

    task = args.task_obj
    if task is None and args.task:
        task = get_task(args.task)
    if task is None:
        raise UserError("train: expected a task (textgen, forecast, textclass, seqclass, tag) or a --config with `task`")
    classes = {"model": ModelConfig, "train": TrainConfig, "data": task.Config}
    configs, file = resolve_configs(classes, args.config, given_flags(args))
    if file.get("task") not in (None, task.name):
        raise UserError(f"{args.config}: task {file['task']!r} does not match the command line's {task.name!r}")
    data = args.data or file.get("dataset")
    if not data:
        raise UserError("train: expected --data NAME|PATH (or `dataset` in the config file)")
    history = train_task(task.name, data, args.out, configs["model"], configs["train"], configs["data"],
                         overwrite=args.overwrite, progress=not args.quiet, callbacks=experiment_loggers(args.log))
    best = history.best or {}
    summary = ", ".join(f"{k} {v:.4g}" for k, v in best.items() if isinstance(v, float))
    print(f"saved {args.out}" + (f" (best at step {best.get('step')}: {summary})" if best else ""))
    return 0
