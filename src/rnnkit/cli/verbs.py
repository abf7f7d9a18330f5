"""``rnnkit sample DIR`` / ``rnnkit predict DIR``: the task's own verb, options from its hooks."""

from __future__ import annotations

from rnnkit.errors import UserError

HELP = {"sample": "generate from a text model", "predict": "predict with a trained model"}


def add_parser(sub, verb: str, task=None):
    p = sub.add_parser(verb, help=HELP[verb])
    p.add_argument("dir")
    if task is not None:
        task.add_arguments(verb, p)
    p.set_defaults(func=run, verb=verb, task_obj=task)
    return p


def run(args):
    import rnnkit
    from rnnkit.artifacts import read_artifact

    art = read_artifact(args.dir)  # reports a missing/damaged artifact
    if args.task_obj is None:
        raise UserError(f"{args.dir}: unknown task {art.task!r}")
    return args.task_obj.run_verb(args.verb, rnnkit.load(args.dir), args)
