"""The ``rnnkit`` command line: registers the verbs and turns UserError into one line + exit 2.

Grammar (the task is a positional of ``train``; every other verb reads it from the artifact)::

    rnnkit train TASK --data NAME|PATH --out DIR [--config FILE] [--<field> VALUE ...] [--overwrite]
    rnnkit resume DIR [--epochs N] [--max-steps N] [--time-budget S]
    rnnkit evaluate DIR [--data NAME|PATH | --split val|test] [--json] [task options]
    rnnkit sample DIR [task options]      rnnkit predict DIR [task options]
    rnnkit info DIR [--json]              rnnkit demo
    rnnkit ensemble DIR1 DIR2 ... --out DIR [--weights equal|validation]
    rnnkit export DIR --format onnx [--out FILE]
    rnnkit serve DIR [--host H] [--port P] [limits]
    rnnkit tune TASK --data D --out DIR --trials N | --time-budget S [--config FILE] [--jobs K]
    rnnkit train|resume ... --nproc N     (data parallel: re-runs itself under torchrun)

Because task options depend on the task, the parser is built after a peek at the command line:
``train TASK`` (or the ``task`` key of ``--config``) or ``<verb> DIR`` (the artifact's task).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import warnings

from rnnkit.errors import UserError

VERBS_WITH_DIR = ("evaluate", "sample", "predict", "info", "resume")


def _positionals(argv: list[str]) -> list[str]:
    return [a for a in argv if not a.startswith("-")]


def peek_task(argv: list[str]):
    """The Task the command line is about, or None (then the verb reports what is missing)."""
    from rnnkit.tasks import get_task

    if not argv:
        return None
    cmd = argv[0]
    if cmd == "train":
        if len(argv) > 1 and not argv[1].startswith("-"):
            return get_task(argv[1])
        for i, a in enumerate(argv):
            if a == "--config" and i + 1 < len(argv) or a.startswith("--config="):
                from rnnkit.training.config import load_config_file

                path = a.split("=", 1)[1] if "=" in a else argv[i + 1]
                name = load_config_file(path).get("task")
                return get_task(name) if name else None
        return None
    if cmd in VERBS_WITH_DIR and len(argv) > 1 and not argv[1].startswith("-"):
        from rnnkit.artifacts import read_meta

        try:
            return get_task(read_meta(argv[1])["task"])
        except UserError:
            return None  # the verb itself reports the damaged/missing artifact
    return None


class VersionAction(argparse.Action):
    """``--version``: rnnkit's version on the first line, then torch's and the native kernels' state
    (built on first use, so this is also the way to build them ahead of a run)."""

    def __call__(self, parser, namespace, values, option_string=None):
        import torch

        from rnnkit import native
        from rnnkit.version import __version__

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the reason is printed below
            reason = native.unavailable_reason()
        state = "in use" if reason is None else f"not in use: {reason}"
        print(f"rnnkit {__version__}\ntorch {torch.__version__}\nnative kernels: {state}")
        parser.exit()


def build_parser(task=None):
    from rnnkit.cli import evaluate, info, resume, train, verbs
    from rnnkit.cli.flags import Parser

    parser = Parser(prog="rnnkit", description="Recurrent neural networks: train, evaluate and use five jobs.")
    parser.add_argument("--version", action=VersionAction, nargs=0,
                        help="show rnnkit's and torch's versions and whether the native kernels are in use, and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    train.add_parser(sub, task)
    resume.add_parser(sub)
    evaluate.add_parser(sub, task)
    verbs.add_parser(sub, "sample", task)
    verbs.add_parser(sub, "predict", task)
    info.add_parser(sub)
    for name in ("tune", "ensemble", "export", "serve"):  # searching, composing and deploying runs
        importlib.import_module(f"rnnkit.cli.{name}").add_parser(sub)
    if importlib.util.find_spec("rnnkit.cli.demo") is not None:
        demo = importlib.import_module("rnnkit.cli.demo")
        p = demo.add_parser(sub) or sub.choices.get("demo")
        if p is not None and p.get_default("func") is None:
            p.set_defaults(func=demo.run)
    return parser


def run(argv: list[str]) -> int:
    from rnnkit.cli.flags import unknown_option_error
    from rnnkit.training.distributed import launch_if_asked, strip_nproc

    launched = launch_if_asked(argv)  # train/resume --nproc N: the exit status of the torchrun workers
    if launched is not None:
        return launched
    if argv and argv[0] in ("train", "resume"):
        argv = strip_nproc(argv)  # --nproc 1: this process
    parser = build_parser(peek_task(argv))
    args, extras = parser.parse_known_args(argv)
    if extras:
        if args.command in VERBS_WITH_DIR and getattr(args, "dir", None):
            from rnnkit.artifacts import read_meta

            read_meta(args.dir)  # task options are unknown because the artifact is missing or damaged: say so
        sub = parser._subparsers._group_actions[0].choices.get(args.command) if args.command else parser
        raise unknown_option_error(extras, sub or parser)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    return int(args.func(args) or 0)


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """``warnings.formatwarning`` for the command line: one line, no source excerpt."""
    return f"rnnkit: warning: {' '.join(str(message).split())}\n"


EXIT_BROKEN_PIPE = 141  # what a shell reports for a command ended by SIGPIPE (128 + 13)


def _quiet_broken_pipe() -> int:
    """stdout's reader went away (``rnnkit info DIR | head -1``): point stdout at /dev/null, so
    the flush at exit cannot fail again, and end quietly as a SIGPIPE'd command would."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    warnings.formatwarning = one_line_warning
    try:
        status = run(argv)
        sys.stdout.flush()  # a closed pipe shows up here, not in the interpreter's flush at exit
        return status
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except UserError as exc:
        message = " ".join(str(exc).split("\n"))
        print(f"rnnkit: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rnnkit: interrupted (the last checkpoint is kept; `rnnkit resume DIR` continues)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
