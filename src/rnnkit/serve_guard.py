"""The server's defences against careless or hostile clients (used by ``rnnkit.serve``).

- Request bodies: ``Content-Type: application/json`` only (415), at most ``max_body`` bytes counted
  while the stream is read, chunked or not (413 as soon as it is exceeded, and a declared
  Content-Length over the limit before reading), all of it within ``read_timeout_s`` (408).
- JSON: at most ``MAX_JSON_DEPTH`` levels of arrays/objects and integers of at most
  ``MAX_INT_DIGITS`` digits (400), checked before or while parsing, so no input reaches a
  RecursionError or an unbounded integer conversion.
- Connections: at most ``max_connections`` open (a new one over the cap closes the longest-waiting
  connection that has no request in progress, else itself); each request head must arrive within
  ``read_timeout_s`` of the connection opening or of the previous answer, and an idle keep-alive
  connection closes after ``idle_timeout_s``. Headers are limited to ``MAX_HEADER_BYTES``. The
  soft open-file limit is raised to fit the connections, or the cap lowered with a warning.
- Optional token: every route but ``GET /health`` needs ``Authorization: Bearer <token>`` (401).
"""

from __future__ import annotations

import asyncio
import copy
import errno
import hmac
import ipaddress
import json
import logging
import os
import re
from typing import Optional

import numpy as np

from rnnkit.errors import UserError

MAX_JSON_DEPTH = 32  # the deepest request rnnkit reads ({"sequences": [[[...]]]}) nests 4 levels
MAX_INT_DIGITS = 40  # larger integers are no valid field or value (a float64 holds up to ~309 digits)
MAX_HEADER_BYTES = 16 * 1024  # request line + headers (h11's incomplete-event limit)
FILE_RESERVE = 32  # open files kept free beyond the connections: listener, logs, worker threads
TOKEN_ENV = "RNNKIT_SERVE_TOKEN"
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_OPENERS, _CLOSERS = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)


class RequestError(Exception):
    """A client mistake: HTTP ``status`` and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# ----------------------------------------------------------------------------- request bodies

def check_json_content_type(content_type: Optional[str]) -> None:
    """415 unless the request declares ``application/json`` (parameters such as charset allowed).

    Browsers send text/plain or form types cross-site without asking first; JSON they don't."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type != "application/json":
        got = f"got {content_type[:60]!r}" if content_type else "none was sent"
        raise RequestError(415, f"Content-Type must be application/json; {got}")


async def read_body(request, max_body: int, timeout_s: float) -> bytes:
    """The request body, at most ``max_body`` bytes, all of it within ``timeout_s`` seconds.

    Raises RequestError 413 (over the limit: declared, or counted while reading, so a chunked
    body is never buffered beyond it), 408 (too slow); starlette's ClientDisconnect passes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and (len(declared) > len(str(max_body)) or int(declared) > max_body):
        raise RequestError(413, f"request body of {declared[:30]} bytes exceeds the limit of {max_body}")
    try:
        return await asyncio.wait_for(_read_at_most(request, max_body), timeout_s)
    except asyncio.TimeoutError:
        raise RequestError(408, f"request body not received within {timeout_s:g} s") from None


async def _read_at_most(request, max_body: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body:
            raise RequestError(413, f"request body exceeds the limit of {max_body} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def json_depth(raw: bytes) -> int:
    """How deeply arrays/objects nest in ``raw`` (brackets inside strings don't count).

    An upper bound for malformed text, which json.loads rejects anyway."""
    skeleton = np.frombuffer(_JSON_STRING.sub(b'""', raw), dtype=np.uint8)
    steps = np.isin(skeleton, _OPENERS).astype(np.int64) - np.isin(skeleton, _CLOSERS)
    return int(steps.cumsum().max(initial=0))


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise RequestError(400, f"request body has an integer of {digits} digits; the limit is {MAX_INT_DIGITS}")
    return int(text)


def parse_json_object(raw: bytes) -> dict:
    """A JSON object from ``raw``, or RequestError 400 with the reason (never another exception)."""
    depth = json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise RequestError(400, f"request body nests JSON {depth} levels deep; the limit is {MAX_JSON_DEPTH}")
    try:
        body = json.loads(raw, parse_int=_bounded_int)
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"request body is not valid JSON (line {exc.lineno} column {exc.colno})") from None
    except (ValueError, RecursionError):  # undecodable bytes; a backstop for the depth check
        raise RequestError(400, "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise RequestError(400, f"request body must be a JSON object, got {type(body).__name__}")
    return body


# ----------------------------------------------------------------------------- token

def resolve_token(flag: Optional[str]) -> Optional[str]:
    """The token from ``--token``, else from RNNKIT_SERVE_TOKEN, else None (no authentication)."""
    token = flag if flag is not None else os.environ.get(TOKEN_ENV)
    if token is None:
        return None
    where = "--token" if flag is not None else TOKEN_ENV
    if not token or not token.isascii() or not token.isprintable() or " " in token:
        raise UserError(f"{where}: expected a non-empty token of printable ASCII without spaces")
    return token


def exposure_warning(host: str, token: Optional[str]) -> Optional[str]:
    """A warning when the server listens beyond this machine without a token, else None."""
    if token is not None or host in LOCAL_HOSTS:
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return (f"serving on {host} without a token: anyone who can reach this port can use the model "
            f"(pass --token or set {TOKEN_ENV})")


class TokenGuard:
    """ASGI middleware: every HTTP request but ``GET /health`` needs ``Authorization: Bearer <token>``."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] == "/health" or self._authorized(scope["headers"]):
            await self.app(scope, receive, send)
            return
        from starlette.responses import JSONResponse

        response = JSONResponse({"error": "missing or wrong token: send the header 'Authorization: Bearer <token>'"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer", "Connection": "close"})
        await response(scope, receive, send)

    def _authorized(self, headers) -> bool:
        given = dict(headers).get(b"authorization", b"")
        scheme, _, credentials = given.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self.token)


# ----------------------------------------------------------------------------- connections

def guarded_protocol(max_connections: int, read_timeout_s: float) -> type:
    """uvicorn's h11 protocol with a connection cap and a deadline for each request head."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        head_deadline = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self.opened_at = self.loop.time()
            self._arm_head_deadline()
            if len(self.connections) > max_connections:
                waiting = [c for c in self.connections if c is not self and c.awaits_request()]
                victim = min(waiting, key=lambda c: c.opened_at, default=self)
                victim.transport.close()
                self.connections.discard(victim)  # closing: no longer counts towards uvicorn's limit

        def connection_lost(self, exc):
            if self.head_deadline is not None:
                self.head_deadline.cancel()
            super().connection_lost(exc)

        def on_response_complete(self):
            super().on_response_complete()
            self._arm_head_deadline()

        def awaits_request(self) -> bool:
            """No request in progress: nothing received yet, or the last one answered."""
            return self.cycle is None or self.cycle.response_complete

        def _arm_head_deadline(self):
            if self.head_deadline is not None:
                self.head_deadline.cancel()
            self.head_deadline = self.loop.call_later(read_timeout_s, self._close_if_no_request, self.cycle)

        def _close_if_no_request(self, cycle_when_armed):
            if self.cycle is cycle_when_armed and self.awaits_request():
                self.transport.close()

    return GuardedH11Protocol


class AcceptErrorLog:
    """Event-loop exception handler: running out of open files (or memory) while accepting
    connections is one warning line a second at most, not a traceback per try (asyncio retries a
    second later); anything else goes to asyncio's default handler."""

    RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

    def __init__(self):
        self.last_warning = -1.0

    def __call__(self, loop, context) -> None:
        exc = context.get("exception")
        if not (isinstance(exc, OSError) and exc.errno in self.RESOURCE_ERRORS):
            loop.default_exception_handler(context)
        elif loop.time() - self.last_warning >= 1.0:
            self.last_warning = loop.time()
            logging.getLogger("rnnkit.serve").warning("cannot accept connections (%s); retrying", exc.strerror)


def fit_file_limit(max_connections: int) -> int:
    """Raise the soft open-file limit so ``max_connections`` fit; where the hard limit forbids it,
    the number of connections that fit (at least 1) with a warning. Unix; elsewhere unchanged.

    Each connection is budgeted two files: its own, and one for a connection accepted from the
    listen backlog (as long as the cap) before the cap closes an older one. Should a burst still
    run out, asyncio retries accepting a second later (AcceptErrorLog keeps that to one line)."""
    try:
        import resource
    except ImportError:
        return max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else FILE_RESERVE
    need = in_use + FILE_RESERVE + 2 * max_connections
    if soft == resource.RLIM_INFINITY or soft >= need:
        return max_connections
    soft = need if hard == resource.RLIM_INFINITY else min(need, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    fits = (soft - in_use - FILE_RESERVE) // 2
    if fits < max_connections:
        import warnings

        fits = max(fits, 1)
        warnings.warn(f"--max-connections {max_connections} needs {need} open files but the limit is {soft} "
                      f"(ulimit -n); serving at most {fits} connections", stacklevel=2)
    return fits


def uvicorn_config(app, host: str, port: int, limits, log_level: str = "info"):
    """uvicorn's Config with the limits applied, an access log, and rnnkit.serve's errors logged."""
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["loggers"]["rnnkit.serve"] = {"handlers": ["default"], "level": "INFO"}
    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level, log_config=log_config, access_log=True,
        http=guarded_protocol(limits.max_connections, limits.read_timeout_s),
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_keep_alive=limits.idle_timeout_s,
        limit_concurrency=limits.max_connections + 1,  # uvicorn answers 503 from here (it counts the asker too)
        backlog=limits.max_connections,  # connections waiting to be accepted: no more than could be served
    )
