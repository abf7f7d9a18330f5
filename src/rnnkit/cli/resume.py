"""``rnnkit resume DIR [--epochs N] [--max-steps N] [--time-budget S]``: continue an interrupted run."""

from __future__ import annotations

from rnnkit.cli.flags import add_log_flag, apply_flags, given_flags
from rnnkit.training.config import TrainConfig


def add_parser(sub):
    p = sub.add_parser("resume", help="continue an interrupted run from its checkpoint")
    p.add_argument("dir")
    p.add_argument("--epochs", dest="flag:epochs", metavar="INT", help="raise the epoch limit")
    p.add_argument("--max-steps", "--max_steps", dest="flag:max_steps", metavar="INT", help="change the step limit")
    p.add_argument("--time-budget", "--time_budget", dest="flag:time_budget", metavar="SECONDS",
                   help="seconds for this continuation")
    p.add_argument("--quiet", action="store_true")
    add_log_flag(p)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from rnnkit.runs import resume_run
    from rnnkit.training.loggers import experiment_loggers

    flags = given_flags(args)
    typed = apply_flags(TrainConfig(), flags)
    overrides = {k: getattr(typed, k) for k in flags}
    history = resume_run(args.dir, overrides, progress=not args.quiet, callbacks=experiment_loggers(args.log))
    if history is None:
        print(f"{args.dir}: run already complete; nothing to resume")
    elif not history.steps_taken:  # killed before its final save, or its budget was spent
        print(f"{args.dir}: nothing left to train ({history.stop_reason}); the run is marked complete")
    else:
        print(f"saved {args.dir}" + (f" ({history.stop_reason})" if history.stop_reason else ""))
    return 0
