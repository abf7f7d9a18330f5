"""``rnnkit serve DIR [--host 127.0.0.1] [--port 8000] [limits]``: an HTTP server for one artifact."""

from __future__ import annotations


def add_parser(sub):
    from rnnkit.serve import Limits

    d = Limits()
    p = sub.add_parser("serve", help="serve a trained model over HTTP (POST /predict, /generate; GET /health, /info)")
    p.add_argument("dir", help="run directory (artifact)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    p.add_argument("--max-batch", "--max_batch", type=int, default=d.max_batch,
                   help=f"requests run together in one forward pass (default: {d.max_batch})")
    p.add_argument("--max-wait-ms", "--max_wait_ms", type=float, default=d.max_wait_ms,
                   help=f"how long a request waits for others to batch with (default: {d.max_wait_ms})")
    p.add_argument("--max-queue", "--max_queue", type=int, default=d.max_queue,
                   help=f"queued requests before 503 (default: {d.max_queue})")
    p.add_argument("--max-items", "--max_items", type=int, default=d.max_items,
                   help=f"inputs per request (default: {d.max_items})")
    p.add_argument("--max-length", "--max_length", type=int, default=d.max_length,
                   help=f"steps/characters per input (default: {d.max_length})")
    p.add_argument("--max-generate", "--max_generate", type=int, default=d.max_generate,
                   help=f"tokens per /generate (default: {d.max_generate})")
    p.add_argument("--max-body", "--max_body", type=int, default=d.max_body,
                   help=f"request body bytes (default: {d.max_body})")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from rnnkit.serve import Limits, serve

    limits = Limits(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                    max_items=args.max_items, max_length=args.max_length, max_generate=args.max_generate,
                    max_body=args.max_body)
    serve(args.dir, host=args.host, port=args.port, limits=limits)
    return 0
