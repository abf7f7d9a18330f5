"""Single-thread CPU-time micro-benchmark of training steps, for judging changes on a busy machine.

``python -m benchmarks.micro --shapes S4,S5 --peers "torch.nn+ftz,rnnkit rec_dropout=0.25" [--repeats 5]``

One thread (``torch.set_num_threads(1)``; ``--threads``), time measured with ``time.process_time``
(CPU time of this process, so other processes on the machine disturb it much less than wall
time; ``--wall`` for wall time, the only meaningful clock with several threads), peers
of ``benchmarks.shapes.PEERS`` that run in this process, interleaved one step each per round.
Prints the median ms per step and the ratio to the first peer. The suite (``python -m
benchmarks``) stays the measurement of record; this is the engineer's quick check.
"""

from __future__ import annotations

import rnnkit  # noqa: F401  (first: flush-to-zero before torch starts its threads)

import argparse
import statistics
import time

import torch

from benchmarks import shapes, timing


CLOCK = time.process_time  # --wall switches to time.perf_counter


def cpu_step(trainee: timing.Trainee) -> float:
    """Seconds (CPU time by default) of one training step (zero_grad, forward, loss, backward, Adam)."""
    start = CLOCK()
    trainee.opt.zero_grad(set_to_none=True)
    loss = shapes.loss_fn(trainee.shape, trainee.model(trainee.x), trainee.y)
    loss.backward()
    trainee.opt.step()
    return CLOCK() - start


def run(shape_name: str, peers: list, repeats: int, warmup: int) -> dict:
    """{peer: (median ms, path)} for one shape."""
    shape = shapes.SHAPES[shape_name]
    trainees = {p: timing.Trainee(shape, shapes.build_peer(p, shape)) for p in peers}
    times = {p: [] for p in peers}
    for _ in range(warmup):
        for t in trainees.values():
            cpu_step(t)
    for r in range(repeats):
        order = peers[r % len(peers):] + peers[: r % len(peers)]
        for p in order:
            times[p].append(cpu_step(trainees[p]))
    return {p: (statistics.median(times[p]) * 1e3, getattr(trainees[p].model.rnn, "last_path", None)) for p in peers}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.micro", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="S4,S5")
    ap.add_argument("--peers", default="torch.nn+ftz,rnnkit rec_dropout=0.25",
                    help="comma list of in-process peers; ratios are to the first")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--wall", action="store_true", help="wall time (perf_counter) instead of process CPU time")
    args = ap.parse_args(argv)
    global CLOCK
    torch.set_num_threads(args.threads)
    if args.wall:
        CLOCK = time.perf_counter
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    for p in peers:
        if p not in shapes.PEERS or shapes.PEERS[p][0] != "main":
            raise SystemExit(f"peer {p!r} is not an in-process peer; choose from "
                             f"{[k for k, v in shapes.PEERS.items() if v[0] == 'main']}")
    for s in args.shapes.split(","):
        applies = [p for p in peers if shapes.PEERS[p][2] is None or s in shapes.PEERS[p][2]]
        res = run(s, applies, args.repeats, args.warmup)
        base = res[applies[0]][0]
        for p in applies:
            ms, path = res[p]
            print(f"{s} {p:32s} {ms:9.1f} ms  x{ms / base:5.2f}  path={path}", flush=True)


if __name__ == "__main__":
    main()
