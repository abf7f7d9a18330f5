"""rnnkit's benchmark suite: ``python -m benchmarks [--quick] [--shapes S1,S3] [--peers ...]``.

Two suites, each written as its own section of BENCHMARKS.md:

* ``training``: ms per training step (forward + backward + Adam) on the five shapes of
  cpu-facts.md (``benchmarks.shapes``) for every peer of ``shapes.PEERS``. Peers run
  interleaved (one sample each per round, in a shuffled order) after a warm-up, in this
  process, except torch.nn default (a worker process without rnnkit and with flush-to-zero
  off, as a user script runs) and Keras (a worker process; when Keras is not importable the
  table shows cpu-facts.md's numbers marked † "reference, not re-measured").
* ``generation``: chars/s of stateful one-char-at-a-time sampling (``benchmarks.generation``).

Run heavy suites through the machine's CPU lock: ``flock /tmp/rnnkit-cpu.lock python -m benchmarks``.
"""

from __future__ import annotations

import rnnkit  # noqa: F401  (first: turns flush-to-zero on before torch starts its threads)

import argparse
import json
import os
import random
import subprocess
import time
import sys
from pathlib import Path

import torch

from benchmarks import generation, keras_peer, report, shapes, timing
from benchmarks.worker import denormals_flushed

ROOT = Path(__file__).resolve().parent.parent
# Peers live in up to three processes. After a step, a process's OpenMP/Eigen threads keep
# spinning for a while (KMP_BLOCKTIME is 200 ms by default) and would steal the 2 cores from the
# next peer; a pause before each timed step lets them go idle.
SETTLE_SECONDS = 0.3
MIN_SAMPLE_SECONDS = 0.1


class Worker:
    """A peer in a subprocess (``benchmarks.worker``); ``steps(shape, n)`` -> n step times."""

    def __init__(self, kind: str):
        env = dict(os.environ, RNNKIT_FLUSH_DENORMAL="0", PYTHONPATH=str(ROOT))
        python = keras_peer.python() if kind == "keras" else sys.executable
        self.proc = subprocess.Popen([python, "-m", "benchmarks.worker", kind], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ftz = None

    def steps(self, shape: str, n: int) -> list:
        self.proc.stdin.write(json.dumps({"shape": shape, "steps": n}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker died (exit {self.proc.wait()})")
        reply = json.loads(line)
        self.ftz = reply["ftz"]
        return reply["times"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def _applies(peer: str, shape: shapes.Shape) -> bool:
    only = shapes.PEERS[peer][2]
    if only is not None and shape.name not in only:
        return False
    return not (peer.endswith("reset_after=False") and shape.cell != "gru")


def run_training(shape_names, peers, repeats: int, warmup: int, log=print) -> dict:
    """{(peer, shape): timing.Samples}, peers interleaved per round."""
    samples = {}
    workers = {}
    try:
        for name in shape_names:
            shape = shapes.SHAPES[name]
            run, models = {}, {}
            for p in peers:
                if not _applies(p, shape):
                    continue
                where = shapes.PEERS[p][0]
                if where == "main":
                    trainee = timing.Trainee(shape, shapes.build_peer(p, shape))
                    run[p] = (lambda step: lambda n: [step() for _ in range(n)])(trainee.step)
                    models[p] = trainee.model.rnn
                elif where == "worker-keras" and not keras_peer.available():
                    samples[(p, name)] = timing.Samples([shapes.KERAS_REFERENCE_MS[name] / 1e3], reference=True)
                else:
                    kind = where.split("-")[1]
                    if kind not in workers:
                        workers[kind] = Worker(kind)
                    run[p] = (lambda w: lambda n: w.steps(name, n))(workers[kind])
            order = list(run)
            fastest = min(min(run[p](max(1, warmup))) for p in order)
            # Short steps (S1, S2: a few ms) are noisy one at a time: one sample is then the mean
            # of enough consecutive steps to last about MIN_SAMPLE_SECONDS.
            per_sample = max(1, min(50, round(MIN_SAMPLE_SECONDS / max(fastest, 1e-4))))
            shuffler = random.Random(f"{name}-rounds")
            for r in range(repeats):
                # A fresh order every round: in a rotated fixed order each peer would always run
                # right after the same neighbour (a worker process waking up, warm or cold caches).
                for p in shuffler.sample(order, len(order)):
                    time.sleep(SETTLE_SECONDS)
                    times = run[p](per_sample)
                    samples.setdefault((p, name), timing.Samples()).times.append(sum(times) / len(times))
            for p, rnn in models.items():
                samples[(p, name)].path = getattr(rnn, "last_path", None)
            log(f"{name}: " + ", ".join(f"{p} {samples[(p, name)].median_ms:.1f}" for p in order))
    finally:
        for w in workers.values():
            w.close()
    if "torch" in workers and workers["torch"].ftz:
        raise RuntimeError("the torch.nn-default worker flushes denormals; its numbers would be wrong")
    return samples


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 repeats, 1 warm-up, 300 generated chars (< 2 min)")
    ap.add_argument("--shapes", default=",".join(shapes.SHAPES), help="comma list, e.g. S3,S5")
    ap.add_argument("--peers", default=",".join(shapes.PEERS), help="comma list of peer names (see shapes.PEERS)")
    ap.add_argument("--repeats", type=int, default=None, help="timed samples per peer (default 15; quick 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per peer first (default 2; quick 1)")
    ap.add_argument("--suites", default="training,generation", help="training and/or generation")
    ap.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"), help="file to update ('' = do not write)")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    command = "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv)
    if os.environ.get(keras_peer.KERAS_PYTHON_ENV):
        command = f"{keras_peer.KERAS_PYTHON_ENV}={os.environ[keras_peer.KERAS_PYTHON_ENV]} {command}"
    repeats = args.repeats or (3 if args.quick else 15)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    shape_names = [s.strip() for s in args.shapes.split(",") if s.strip()]
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    for bad in [s for s in shape_names if s not in shapes.SHAPES] + [p for p in peers if p not in shapes.PEERS]:
        sys.exit(f"unknown shape or peer {bad!r}; shapes: {list(shapes.SHAPES)}, peers: {list(shapes.PEERS)}")
    if not denormals_flushed():
        sys.exit("this process does not flush denormals (RNNKIT_FLUSH_DENORMAL=0?); the +ftz peers need it")
    suites = args.suites.split(",")
    out = Path(args.output) if args.output else None
    print(f"machine: {report.machine()}", flush=True)
    if "training" in suites:
        peak = timing.matmul_peak_gflops()
        samples = run_training(shape_names, peers, repeats, warmup, log=lambda m: print(m, flush=True))
        peak = max(peak, timing.matmul_peak_gflops())  # the ceiling: the better of before and after
        print(f"fp32 matmul peak: {peak:.0f} GFLOP/s", flush=True)
        body = report.training_tables(shape_names, peers, samples, peak_gflops=peak)
        legend = ("\n† Keras is not importable here: its column repeats cpu-facts.md (TF 2.21 / Keras 3.15, same "
                  "machine class), reference, not re-measured.\n" if any(s.reference for s in samples.values()) else "")
        shape_lines = "\n".join(f"- {s}: {shapes.SHAPES[s].title}" for s in shape_names)
        body = (f"{shape_lines}\n\nPeers interleaved (a shuffled order every round), {warmup} warm-up + {repeats} timed steps each. "
                f"torch.nn = default torch in a worker process without flush-to-zero; every other torch peer "
                f"runs in this process with flush-to-zero (rnnkit sets it on import).\n\n{body}{legend}")
        print(body, flush=True)
        if out:
            report.write_section(out, "training step", command, body)
    if "generation" in suites:
        steps = 300 if args.quick else 1000
        results = generation.run(["torch.nn", "rnnkit"], steps=steps, repeats=3)
        body = (f"2-layer LSTM(256) char model (Emb(65,64), Linear(256,65)), stateful sampling one char at a "
                f"time for {steps} steps; 3 repeats, interleaved.\n\n{report.generation_table(results)}")
        print(body, flush=True)
        if out:
            report.write_section(out, "generation", command, body)


if __name__ == "__main__":
    main()
