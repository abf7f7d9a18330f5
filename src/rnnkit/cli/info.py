"""``rnnkit info DIR [--json]``: what a run directory holds."""

from __future__ import annotations

import json


def add_parser(sub):
    p = sub.add_parser("info", help="describe a run directory")
    p.add_argument("dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from rnnkit.runs import open_run

    art = open_run(args.dir)
    n_params = sum(int(t.numel()) for t in art.state_dict().values())
    doc = {k: art.meta.get(k) for k in ("task", "format_version", "rnnkit_version", "created", "status",
                                          "stop_reason", "step", "epoch", "metrics", "data", "model", "task_config")}
    doc.update(art.description(), parameters=n_params)
    if args.json:
        print(json.dumps(doc))
        return 0
    step = f", step {art.meta['step']}" if "step" in art.meta else ""
    print(f"{args.dir}: {art.task} ({art.meta.get('status', '?')}{step}), "
          f"format v{art.meta['format_version']}, rnnkit {art.meta.get('rnnkit_version', '?')}")
    for line in art.model_lines(n_params):
        print(f"  {line}")
    data = art.data
    print(f"  data: {data.get('source', data.get('name', '?'))}" + (f" sha256 {data['sha256'][:12]}..." if data.get("sha256") else ""))
    for k, v in (art.metrics or {}).items():
        print(f"  {k}: {v:.6g}" if isinstance(v, float) else f"  {k}: {v}")
    if art.meta.get("stop_reason"):
        print(f"  stopped: {art.meta['stop_reason']}")
    return 0
