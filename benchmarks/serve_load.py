"""Load test of ``rnnkit serve`` on loopback: mixed requests, 10% malformed, 16 concurrent clients.

    python -m benchmarks.serve_load [--requests 2000] [--clients 16] [--write]

Trains two tiny artifacts (textclass on a synthetic review CSV, textgen on a bundled text;
a few seconds), starts one ``rnnkit serve`` subprocess for each, and sends ``--requests``
requests from ``--clients`` threads (keep-alive HTTP/1.1): /predict (textclass), /generate
(textgen, 40 tokens), /health, /info, and 10% malformed ones (bad JSON, wrong types, empty or
too long inputs, unknown fields, temperature out of range, wrong route/method). Checks: zero
5xx; every malformed request gets a 4xx with an "error" message; every valid one a 200; both
servers answer /health at the end. Reports p50/p99 latency and requests/s; ``--write``
replaces the "Serving" section of BENCHMARKS.md. Bounded: every request has a 30 s timeout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

VALID = [
    ("tc", "POST", "/predict", {"texts": ["a good great film", "bad awful acting"]}),
    ("tc", "POST", "/predict", {"texts": ["fine film with good music"]}),
    ("tg", "POST", "/generate", {"prime": "the ", "length": 40, "temperature": 0.8}),
    ("tc", "GET", "/health", None),
    ("tg", "GET", "/info", None),
]
MALFORMED = [
    ("tc", "POST", "/predict", b"{not json"),
    ("tc", "POST", "/predict", {"texts": "not a list"}),
    ("tc", "POST", "/predict", {"texts": [1, 2, 3]}),
    ("tc", "POST", "/predict", {"texts": []}),
    ("tc", "POST", "/predict", {"texts": ["x" * 3000]}),
    ("tc", "POST", "/predict", {"text": ["typo in the field name"]}),
    ("tg", "POST", "/generate", {"prime": "the", "temperature": 50}),
    ("tg", "POST", "/generate", {"prime": "the", "length": "long"}),
    ("tg", "POST", "/generate", {"prime": ""}),
    ("tc", "POST", "/generate", {"prime": "wrong server"}),
    ("tg", "GET", "/generate", None),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_runs(tmp: Path) -> dict:
    from rnnkit.models import ModelConfig
    from rnnkit.tasks import get_task
    from rnnkit.training.config import TrainConfig
    from rnnkit.training.runner import train_task

    reviews = tmp / "reviews.csv"
    rng = random.Random(0)
    good, bad = ["good", "great", "fine", "lovely"], ["bad", "awful", "poor", "dull"]
    rows = [f"{' '.join(rng.choices(good if i % 2 else bad, k=4))} film {i},{'pos' if i % 2 else 'neg'}" for i in range(400)]
    reviews.write_text("text,label\n" + "\n".join(rows) + "\n")
    train = TrainConfig(max_steps=30, seed=0)
    train_task("textclass", str(reviews), tmp / "tc", ModelConfig(cell="gru", hidden_size=32, embedding_dim=16),
               train, get_task("textclass").Config(batch_size=32), progress=False)
    train_task("textgen", "shakespeare-excerpt", tmp / "tg", ModelConfig(hidden_size=64, embedding_dim=32),
               train, get_task("textgen").Config(seq_len=32, batch_size=16), progress=False)
    return {"tc": tmp / "tc", "tg": tmp / "tg"}


def start_server(run_dir: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "rnnkit", "serve", str(run_dir), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server for {run_dir} did not start: {proc.stderr.read().decode()[-2000:]}")


def client(ports: dict, plan: list, results: list, lock: threading.Lock) -> None:
    conns = {}
    for server, method, path, body, bad in plan:
        raw = body if isinstance(body, bytes) else (None if body is None else json.dumps(body).encode())
        t = time.perf_counter()
        for attempt in range(2):  # reconnect once if the server closed an idle keep-alive connection
            conn = conns.get(server) or http.client.HTTPConnection("127.0.0.1", ports[server], timeout=30)
            conns[server] = conn
            try:
                conn.request(method, path, body=raw, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                payload = resp.read()
                break
            except (http.client.HTTPException, OSError):
                conn.close()
                conns[server] = None
                if attempt:
                    raise
        dt = time.perf_counter() - t
        try:
            message = json.loads(payload).get("error") if resp.status >= 400 else None
        except (ValueError, AttributeError):
            message = None
        with lock:
            results.append((resp.status, dt, bad, message, path))


def run_load(ports: dict, requests: int, clients: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    plan = []
    for i in range(requests):
        bad = i % 10 == 0  # exactly 10% malformed
        server, method, path, body = rng.choice(MALFORMED if bad else VALID)
        plan.append((server, method, path, body, bad))
    rng.shuffle(plan)
    results, lock = [], threading.Lock()
    threads = [threading.Thread(target=client, args=(ports, plan[k::clients], results, lock)) for k in range(clients)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    lat = sorted(r[1] for r in results)
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000  # noqa: E731
    bad = [r for r in results if r[2]]
    good = [r for r in results if not r[2]]
    by_path = {}
    for status, dt, is_bad, _, path in good:
        by_path.setdefault(path, []).append(dt)
    return {
        "requests": len(results), "clients": clients, "wall_s": wall, "rps": len(results) / wall,
        "p50_ms": pct(0.50), "p99_ms": pct(0.99),
        "p50_ms_by_route": {p: sorted(v)[len(v) // 2] * 1000 for p, v in sorted(by_path.items())},
        "5xx": sum(r[0] >= 500 for r in results),
        "malformed": len(bad), "malformed_4xx_with_message": sum(400 <= r[0] < 500 and bool(r[3]) for r in bad),
        "valid": len(good), "valid_200": sum(r[0] == 200 for r in good),
    }


def write_section(stats: dict, command: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    routes = ", ".join(f"{p} {v:.1f} ms" for p, v in stats["p50_ms_by_route"].items())
    section = (
        "## Serving\n\n"
        f"`{command}` (loopback, 2-core machine shared with other jobs; two `rnnkit serve` processes: a textclass "
        "GRU H=32 on /predict and a textgen LSTM H=64 on /generate with 40 tokens per request).\n\n"
        "| requests | clients | malformed | 5xx | malformed answered 4xx + message | valid answered 200 | p50 ms | p99 ms | requests/s |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        f"| {stats['requests']} | {stats['clients']} | {stats['malformed']} | {stats['5xx']} | "
        f"{stats['malformed_4xx_with_message']} | {stats['valid_200']} | {stats['p50_ms']:.1f} | {stats['p99_ms']:.1f} | "
        f"{stats['rps']:.0f} |\n\n"
        f"Median latency of valid requests by route: {routes}. Both servers answered /health after the run.\n"
    )
    start = text.find("## Serving")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    path.write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--write", action="store_true", help="replace the Serving section of BENCHMARKS.md")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        runs = make_runs(Path(tmp))
        ports = {k: free_port() for k in runs}
        procs = [start_server(runs[k], ports[k]) for k in runs]
        try:
            stats = run_load(ports, args.requests, args.clients)
            alive = run_load(ports, 10, 1, seed=1)["5xx"] == 0
            for k in runs:
                conn = http.client.HTTPConnection("127.0.0.1", ports[k], timeout=10)
                conn.request("GET", "/health")
                alive = alive and conn.getresponse().status == 200
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)
    print(json.dumps(stats, indent=1))
    ok = (stats["5xx"] == 0 and stats["malformed_4xx_with_message"] == stats["malformed"]
          and stats["valid_200"] == stats["valid"] and alive)
    print("PASS" if ok else "FAIL")
    if args.write and ok:
        write_section(stats, "python -m benchmarks.serve_load --requests %d --clients %d" % (args.requests, args.clients))
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
