"""``rnnkit serve DIR [--host 127.0.0.1] [--port 8000] [--token T] [limits]``: an HTTP server for one artifact."""

from __future__ import annotations

from dataclasses import fields

LIMIT_HELP = {
    "max_batch": "requests run together in one forward pass",
    "max_wait_ms": "how long a request waits for others to batch with",
    "max_queue": "queued requests before 503",
    "max_items": "inputs per request",
    "max_length": "steps/characters/words per input",
    "max_generate": "tokens per /generate",
    "max_body": "request body bytes",
    "max_connections": "open connections",
    "read_timeout_s": "seconds for a request's head, and again for its body",
    "idle_timeout_s": "seconds a keep-alive connection may wait for its next request",
}


def add_parser(sub):
    from rnnkit.serve import Limits
    from rnnkit.serve_guard import TOKEN_ENV

    d = Limits()
    p = sub.add_parser("serve", help="serve a trained model over HTTP (POST /predict, /tag, /transcribe, /generate; GET /health, /info)")
    p.add_argument("dir", help="run directory (artifact)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    p.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN' on every route but "
                   f"GET /health (default: ${TOKEN_ENV}, else none)")
    for f in fields(Limits):  # one flag per limit, typed and defaulted by the dataclass
        default = getattr(d, f.name)
        p.add_argument("--" + f.name.replace("_", "-"), "--" + f.name, dest=f.name, type=type(default),
                       default=default, help=f"{LIMIT_HELP[f.name]} (default: {default})")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from rnnkit.serve import Limits, serve
    from rnnkit.serve_guard import resolve_token

    limits = Limits(**{f.name: getattr(args, f.name) for f in fields(Limits)})
    serve(args.dir, host=args.host, port=args.port, limits=limits, token=resolve_token(args.token))
    return 0
