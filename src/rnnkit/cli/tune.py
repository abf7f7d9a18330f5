"""``rnnkit tune TASK --data D --out DIR --trials N | --time-budget S [--config FILE] [--jobs K]``."""

from __future__ import annotations

import sys

from rnnkit.cli.flags import add_log_flag

EXIT_INTERRUPTED = 130  # what a shell reports for a command ended by SIGINT (128 + 2)


def add_parser(sub):
    p = sub.add_parser("tune", help="search hyperparameters on the validation split (Optuna)",
                       description="Runs trials (normal rnnkit runs in DIR/trials/N, each with its own seed) "
                                   "chosen by Optuna's TPE sampler, scored on the validation split, pruned on "
                                   "their evaluations. The study is DIR/study.db: the same command resumes an "
                                   "interrupted search. Writes DIR/trials.csv, DIR/best-config.json (a preset "
                                   "for `rnnkit train --config`), DIR/best (the best run) and DIR/tuning.png. "
                                   "Needs optuna: pip install 'rnnkit[tune]'.")
    p.add_argument("task", nargs="?", help="textgen | forecast | textclass | seqclass | tag (or the config's `task`)")
    p.add_argument("--data", help="a named dataset or a file/folder path (or the config's `dataset`)")
    p.add_argument("--out", required=True, help="the study directory (created, or resumed when it holds a study)")
    p.add_argument("--trials", type=int, metavar="N",
                   help="stop when N trials have completed or been pruned (counting earlier calls)")
    p.add_argument("--time-budget", "--time_budget", type=float, metavar="SECONDS",
                   help="stop starting trials when this call has run this long (running ones are cut to it)")
    p.add_argument("--config", help="JSON or TOML file: [model] [train] [data] are every trial's base, "
                                    "[tune] the search space (see rnnkit.tuning.space)")
    p.add_argument("--jobs", type=int, default=1, metavar="K",
                   help="worker processes sharing the study, the CPU threads divided between them (default: 1)")
    p.add_argument("--pruner", choices=("median", "halving", "none"), default="median",
                   help="stop trials early on their evaluations: median (default), successive halving, or none")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_log_flag(p)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from rnnkit.tuning import tune

    try:
        summary = tune(args.task, args.data, args.out, args.trials, args.time_budget, args.config, args.jobs,
                       args.pruner, args.log, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"rnnkit: interrupted; `rnnkit tune` with --out {args.out} goes on with the study", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(summary.table())
    print(f"best: trial {summary.best_number}, val {summary.monitor} {summary.best_value:.6g}; "
          f"run {summary.out / 'best'}, preset {summary.preset}")
    return 0
