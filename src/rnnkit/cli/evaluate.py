"""``rnnkit evaluate DIR [--data PATH | --split val|test] [--json]``: metrics of the saved weights.

A file given with ``--data`` is evaluated whole (no split), read with the trained vocabulary,
scaler and labels; without it, the ``--split`` (default val) of the training data. The output
always says how many examples were scored (``examples``).
"""

from __future__ import annotations

import json
import math


def add_parser(sub, task=None):
    import argparse

    from rnnkit.cli.verbs import list_task_options_in_help

    p = sub.add_parser("evaluate", help="metrics of a run's selected weights on a file, or on the val or test split",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", help="a run directory (its task may add options)")
    p.add_argument("--data", help="evaluate on all of this file (or dataset) instead of a split of the training data")
    p.add_argument("--split", choices=("val", "test"), default=None,
                   help="which split of the training data (default: val); not with --data")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    if task is not None:
        task.add_arguments("evaluate", p)
    else:
        list_task_options_in_help(p, "evaluate")
    p.set_defaults(func=run, task_obj=task)
    return p


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def run(args) -> int:
    from rnnkit.cli.flags import snake_case
    from rnnkit.runs import evaluation_source, open_run, score
    from rnnkit.tasks import Task, get_task

    art = open_run(args.dir)
    source = evaluation_source(get_task(art.task), art, args.data, args.split)  # prepared once
    metrics = {snake_case(k): _clean(v) for k, v in score(get_task(art.task), art, source).items()}
    args.split = args.split or (None if args.data else "val")  # None: the task's verb scores all of --data
    task = args.task_obj
    if task is not None and type(task).run_verb is not Task.run_verb:
        args.metrics, args.evaluation_source = metrics, source
        task.run_verb("evaluate", task.load(art), args)
        metrics = {snake_case(k): _clean(v) for k, v in args.metrics.items()}
    if args.json:
        print(json.dumps(metrics))
    else:
        for k, v in metrics.items():
            print(f"{k:>16} {v:.6g}" if isinstance(v, float) else f"{k:>16} {v}")
    return 0
