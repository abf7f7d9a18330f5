"""``rnnkit ensemble DIR1 DIR2 ... --out DIR [--weights equal|validation]``: finished runs averaged."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("ensemble", help="average finished runs of one task and data into one artifact",
                       description="Joins finished runs (same task, data and data options) into one run "
                                   "directory that sample/evaluate/predict/serve/export/info use like any run: "
                                   "their probabilities (or forecasts) averaged.")
    p.add_argument("runs", nargs="+", metavar="DIR", help="run directories, two or more")
    p.add_argument("--out", required=True, help="the ensemble's run directory to create")
    p.add_argument("--weights", choices=("equal", "validation"), default="equal",
                   help="equal (default), or chosen on the validation split (never worse there than the best run)")
    p.add_argument("--data", help="the runs' data, where its recorded source moved (for validation)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory at --out")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from rnnkit.ensembles import build_ensemble

    art = build_ensemble(args.runs, args.out, args.weights, args.data, args.overwrite)
    weights = ", ".join(f"{w:.3g}" for w in art.weights)
    loss = art.metrics.get("val_loss")
    members = [m["metrics"].get("val_loss") for m in art.meta["ensemble"]["members"]]
    scores = (f"; val loss {loss:.4g} (runs: {', '.join('?' if v is None else f'{v:.4g}' for v in members)})"
              if loss is not None else "")
    print(f"saved {args.out} ({len(art.members)} {art.task} runs, {args.weights} weights {weights}{scores})")
    return 0
