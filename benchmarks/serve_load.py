"""Load test of ``rnnkit serve`` on loopback: mixed requests, 10% malformed, 1% oversized, 16 clients.

    python -m benchmarks.serve_load [--requests 2000] [--clients 16] [--write]

Trains two tiny artifacts (textclass on a synthetic review CSV, textgen on a bundled text;
a few seconds), starts one ``rnnkit serve`` subprocess for each, and sends ``--requests``
requests from ``--clients`` threads (keep-alive HTTP/1.1): /predict (textclass), /generate
(textgen, 40 tokens), /health, /info; 10% malformed ones (bad JSON, 100k-deep JSON, a
5,000-digit integer, text/plain bodies, wrong types, empty or too long inputs, unknown fields,
temperature out of range, wrong route/method); and 1% oversized chunked bodies (no
Content-Length; up to 64 MiB offered, sent until the server answers). Checks: zero 5xx; every
malformed or oversized request gets a 4xx with an "error" message; every valid one a 200; both
servers answer /health at the end; each server's resident memory (VmRSS of its process) grows by
at most 100 MB over the run; no traceback in the servers' logs. Prints a markdown table
(p50/p99 latency, requests/s); ``--write`` replaces the "Serving" section of BENCHMARKS.md.
Bounded: every request has a 30 s timeout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

VALID = [  # (server, method, path, body, content type: None is application/json)
    ("tc", "POST", "/predict", {"texts": ["a good great film", "bad awful acting"]}, None),
    ("tc", "POST", "/predict", {"texts": ["fine film with good music"]}, None),
    ("tg", "POST", "/generate", {"prime": "the ", "length": 40, "temperature": 0.8}, None),
    ("tc", "GET", "/health", None, None),
    ("tg", "GET", "/info", None, None),
]
MALFORMED = [  # (server, method, path, body, content type)
    ("tc", "POST", "/predict", b"{not json", None),
    ("tc", "POST", "/predict", b"[" * 100_000 + b"]" * 100_000, None),
    ("tc", "POST", "/predict", b'{"texts": [' + b"7" * 5000 + b"]}", None),
    ("tc", "POST", "/predict", {"texts": ["posted as text/plain"]}, "text/plain"),
    ("tc", "POST", "/predict", {"texts": "not a list"}, None),
    ("tc", "POST", "/predict", {"texts": [1, 2, 3]}, None),
    ("tc", "POST", "/predict", {"texts": []}, None),
    ("tc", "POST", "/predict", {"texts": ["x" * 3000]}, None),
    ("tc", "POST", "/predict", {"text": ["typo in the field name"]}, None),
    ("tg", "POST", "/generate", {"prime": "the", "temperature": 50}, None),
    ("tg", "POST", "/generate", {"prime": "the", "length": "long"}, None),
    ("tg", "POST", "/generate", {"prime": ""}, None),
    ("tc", "POST", "/generate", {"prime": "wrong server"}, None),
    ("tg", "GET", "/generate", None, None),
]
OVERSIZED = ("tc", "POST", "/predict", "chunked", None)  # 64 MiB offered, chunked, to a 1 MB limit
OVERSIZED_BLOCK, OVERSIZED_BLOCKS = b" " * 65536, 1024
MAX_RSS_GROWTH_MB = 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_runs(tmp: Path) -> dict:
    from rnnkit.models import ModelConfig
    from rnnkit.tasks import get_task
    from rnnkit.training.config import TrainConfig
    from rnnkit.runs import train_task

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


def start_server(run_dir: Path, port: int, log) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "rnnkit", "serve", str(run_dir), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server for {run_dir} did not start; its log: {log.name}")


def resident_mb(pid: int) -> float:
    """The resident memory (VmRSS) of process ``pid`` in MB, from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1000  # kB -> MB
    raise SystemExit(f"no VmRSS for process {pid}")


def post_oversized_chunked(port: int) -> tuple:
    """POST a chunked body far over the limit, block by block until the server answers or hangs
    up; returns (status, body of the answer)."""
    head = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    framed = b"%x\r\n%s\r\n" % (len(OVERSIZED_BLOCK), OVERSIZED_BLOCK)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        for _ in range(OVERSIZED_BLOCKS):
            if select.select([sock], [], [], 0)[0]:
                break  # answered
            try:
                sock.sendall(framed)
            except OSError:  # the server answered and closed while this block was on its way
                break
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.read()


def send_one(conns: dict, ports: dict, request: tuple) -> tuple:
    """Send one planned request on the client's keep-alive connection to its server."""
    server, method, path, body, content_type = request
    if body == "chunked":
        return post_oversized_chunked(ports[server])
    raw = body if isinstance(body, bytes) else (None if body is None else json.dumps(body).encode())
    headers = {"Content-Type": content_type or "application/json"}
    for attempt in range(2):  # reconnect once if the server closed the connection (idle, or after a 413)
        conn = conns.get(server) or http.client.HTTPConnection("127.0.0.1", ports[server], timeout=30)
        conns[server] = conn
        try:
            conn.request(method, path, body=raw, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            if resp.will_close:
                conn.close()
                conns[server] = None
            return resp.status, payload
        except (http.client.HTTPException, OSError):
            conn.close()
            conns[server] = None
            if attempt:
                raise


def client(ports: dict, plan: list, results: list, lock: threading.Lock) -> None:
    conns = {}
    for request, kind in plan:
        t = time.perf_counter()
        status, payload = send_one(conns, ports, request)
        dt = time.perf_counter() - t
        try:
            message = json.loads(payload).get("error") if status >= 400 else None
        except (ValueError, AttributeError):
            message = None
        with lock:
            results.append((status, dt, kind, message, request[2]))


def make_plan(requests: int, seed: int) -> list:
    """``requests`` (request, kind) pairs: every 10th malformed, every 100th oversized, shuffled."""
    rng = random.Random(seed)
    plan = []
    for i in range(requests):
        if i % 100 == 5:
            plan.append((OVERSIZED, "oversized"))
        elif i % 10 == 0:
            plan.append((rng.choice(MALFORMED), "malformed"))
        else:
            plan.append((rng.choice(VALID), "valid"))
    rng.shuffle(plan)
    return plan


def run_load(ports: dict, requests: int, clients: int, seed: int = 0) -> dict:
    plan = make_plan(requests, seed)
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
    by_path = {}
    for status, dt, kind, _, path in results:
        if kind == "valid":
            by_path.setdefault(path, []).append(dt)
    count = lambda kind, ok: sum(r[2] == kind and ok(r) for r in results)  # noqa: E731
    answered_4xx = lambda r: 400 <= r[0] < 500 and bool(r[3])  # noqa: E731
    answered_413 = lambda r: r[0] == 413 and bool(r[3])  # noqa: E731
    return {
        "requests": len(results), "clients": clients, "wall_s": wall, "rps": len(results) / wall,
        "p50_ms": pct(0.50), "p99_ms": pct(0.99),
        "p50_ms_by_route": {p: sorted(v)[len(v) // 2] * 1000 for p, v in sorted(by_path.items())},
        "5xx": sum(r[0] >= 500 for r in results),
        "malformed": count("malformed", bool), "malformed_4xx_with_message": count("malformed", answered_4xx),
        "oversized": count("oversized", bool), "oversized_413_with_message": count("oversized", answered_413),
        "valid": count("valid", bool), "valid_200": count("valid", lambda r: r[0] == 200),
    }


def markdown_table(stats: dict) -> str:
    rss = ", ".join(f"{k} {before:.0f} → {after:.0f}" for k, (before, after) in stats["rss_mb"].items())
    return (
        "| requests | clients | malformed → 4xx + message | oversized chunked → 413 + message | valid → 200 | 5xx "
        "| tracebacks in logs | server RSS MB before → after | p50 ms | p99 ms | requests/s |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|\n"
        f"| {stats['requests']} | {stats['clients']} | {stats['malformed_4xx_with_message']} / {stats['malformed']} "
        f"| {stats['oversized_413_with_message']} / {stats['oversized']} | {stats['valid_200']} / {stats['valid']} "
        f"| {stats['5xx']} | {stats['tracebacks']} | {rss} | {stats['p50_ms']:.1f} | {stats['p99_ms']:.1f} "
        f"| {stats['rps']:.0f} |\n"
    )


def write_section(stats: dict, command: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    routes = ", ".join(f"{p} {v:.1f} ms" for p, v in stats["p50_ms_by_route"].items())
    section = (
        "## Serving\n\n"
        f"`{command}` (loopback; two `rnnkit serve` processes: a textclass GRU H=32 on /predict and a textgen "
        "LSTM H=64 on /generate with 40 tokens per request).\n\n" + markdown_table(stats) + "\n"
        f"Median latency of valid requests by route: {routes}. Both servers answered /health after the run.\n"
    )
    start = text.find("## Serving")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    path.write_text(text)


def load_servers(runs: dict, requests: int, clients: int, logs: Path) -> dict:
    """Start a server per artifact, run the load, check /health after it; the stats, with each
    server's resident memory before and after and the tracebacks in their logs."""
    ports = {k: free_port() for k in runs}
    log_files = {k: open(logs / f"{k}.log", "wb") for k in runs}
    procs = {k: start_server(runs[k], ports[k], log_files[k]) for k in runs}
    try:
        before = {k: resident_mb(p.pid) for k, p in procs.items()}
        stats = run_load(ports, requests, clients)
        after = {k: resident_mb(p.pid) for k, p in procs.items()}
        alive = run_load(ports, 10, 1, seed=1)["5xx"] == 0
        for k in runs:
            conn = http.client.HTTPConnection("127.0.0.1", ports[k], timeout=10)
            conn.request("GET", "/health")
            alive = alive and conn.getresponse().status == 200
    finally:
        for p in procs.values():
            p.terminate()
            p.wait(10)
        for f in log_files.values():
            f.close()
    stats["rss_mb"] = {k: (before[k], after[k]) for k in runs}
    stats["tracebacks"] = sum((logs / f"{k}.log").read_text().count("Traceback") for k in runs)
    stats["alive"] = alive
    return stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--write", action="store_true", help="replace the Serving section of BENCHMARKS.md")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        runs = make_runs(Path(tmp))
        stats = load_servers(runs, args.requests, args.clients, Path(tmp))
    print(json.dumps(stats, indent=1))
    print()
    print(markdown_table(stats))
    grown = max(after - before for before, after in stats["rss_mb"].values())
    ok = (stats["5xx"] == 0 and stats["malformed_4xx_with_message"] == stats["malformed"]
          and stats["oversized_413_with_message"] == stats["oversized"] and stats["valid_200"] == stats["valid"]
          and stats["alive"] and stats["tracebacks"] == 0 and grown <= MAX_RSS_GROWTH_MB)
    print("PASS" if ok else "FAIL")
    if args.write and ok:
        write_section(stats, "python -m benchmarks.serve_load --requests %d --clients %d" % (args.requests, args.clients))
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
