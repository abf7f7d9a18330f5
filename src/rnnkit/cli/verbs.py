"""``rnnkit sample DIR`` / ``rnnkit predict DIR``: the task's own verb, options from its hooks."""

from __future__ import annotations

from rnnkit.errors import UserError

HELP = {"sample": "generate from a text model", "predict": "predict with a trained model"}


def add_parser(sub, verb: str, task=None):
    import argparse

    p = sub.add_parser(verb, help=HELP[verb], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", help="a run directory (its task decides the options)")
    if task is not None:
        task.add_arguments(verb, p)
    else:
        list_task_options_in_help(p, verb)
    p.set_defaults(func=run, verb=verb, task_obj=task)
    return p


def list_task_options_in_help(parser, verb: str) -> None:
    """Without a run directory the task is unknown: ``--help`` then lists each task's options
    for ``verb`` (built only when help is printed, since it imports every task module)."""
    def format_help():
        parser.epilog = _options_by_task(verb)
        return type(parser).format_help(parser)

    parser.format_help = format_help


def _options_by_task(verb: str) -> str:
    """Help text without a DIR: which options each task takes for ``verb``."""
    import argparse

    from rnnkit.tasks import TASK_MODULES, get_task

    lines = []
    for name in TASK_MODULES:
        probe = argparse.ArgumentParser(add_help=False)
        get_task(name).add_arguments(verb, probe)
        flags = [a.option_strings[0] for a in probe._actions if a.option_strings]
        if flags:
            lines.append(f"  {name}: {' '.join(flags)}")
    return (f"task options (`rnnkit {verb} DIR --help` describes those of DIR's task):\n" + "\n".join(lines)
            if lines else None)


def run(args):
    from rnnkit.runs import open_run

    art = open_run(args.dir)  # reports a missing/damaged artifact
    if args.task_obj is None:
        raise UserError(f"{args.dir}: unknown task {art.task!r}")
    return args.task_obj.run_verb(args.verb, args.task_obj.load(art), args)
