"""``rnnkit demo``: offline, about a minute on 2 CPU cores.

Trains a character-level LSTM on the Shakespeare excerpt bundled with rnnkit (the first
100 kB of Tiny Shakespeare), prints a sample, and leaves a complete run directory
(``artifact.json``, ``model.safetensors``, ``curves.png``) that ``rnnkit sample DIR`` reads.
"""

from __future__ import annotations

import json
from pathlib import Path

DEMO_TEXT = "shakespeare-excerpt"


def add_parser(subparsers):
    p = subparsers.add_parser("demo", help="train a small text model offline and sample from it (~1 min)")
    p.add_argument("--out", default="runs/demo", help="run directory to write (default runs/demo)")
    p.add_argument("--time-budget", "--time_budget", dest="time_budget", type=float, default=60.0,
                   help="seconds of training (default 60)")
    p.add_argument("--prime", default="ROMEO:", help="text to start the sample with")
    p.add_argument("--length", type=int, default=300, help="characters to sample (default 300)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)
    return p


def _is_old_demo(out: Path) -> bool:
    """An earlier demo's run directory may be replaced; anything else is left to the usual check."""
    try:
        meta = json.loads((out / "artifact.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return meta.get("data", {}).get("name") == DEMO_TEXT


def run(args) -> int:
    from rnnkit.models import ModelConfig
    from rnnkit.runs import load, train_task
    from rnnkit.tasks.textgen import TextgenConfig
    from rnnkit.training.config import TrainConfig

    out = Path(args.out)
    data = TextgenConfig(seq_len=64, batch_size=32, val_fraction=0.1)
    model = ModelConfig(cell="lstm", hidden_size=256, num_layers=1, embedding_dim=32)
    train = TrainConfig(optimizer="adamw", lr=4e-3, schedule="cosine", warmup_steps=20, min_lr=2e-4, epochs=30,
                        max_steps=1200, time_budget=args.time_budget, eval_every=300, clip_grad_norm=1.0,
                        seed=args.seed, log_every=100)
    print(f"rnnkit demo: training a 1-layer LSTM(256) on the bundled Shakespeare excerpt for up to "
          f"{args.time_budget:g} s -> {out}")
    history = train_task("textgen", DEMO_TEXT, out, model, train, data, overwrite=_is_old_demo(out))
    gen = load(out)
    best = history.best or (history.eval[-1] if history.eval else {})
    if "bits_per_char" in best:
        print(f"validation: {best['nats_per_char']:.3f} nats/char = {best['bits_per_char']:.3f} bits/char "
              f"(a uniform guess over {len(gen.vocab)} characters: {__import__('math').log2(len(gen.vocab)):.2f})")
    print(f"\n--- sample (temperature {args.temperature:g}, seed {args.seed}) ---")
    print(gen.sample(args.prime, args.length, temperature=args.temperature, seed=args.seed))
    print("---")
    written = ", ".join(sorted(p.name for p in out.iterdir() if p.is_file()))
    print(f"wrote {out}: {written}")
    print(f"more: rnnkit sample {out} --prime \"JULIET:\" --length 500 --temperature 0.7")
    return 0
