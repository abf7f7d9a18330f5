"""HTTP serving of one run directory on Starlette + uvicorn (the optional ``serve`` extra).

``rnnkit serve DIR [--host 127.0.0.1] [--port 8000] [--token T]``; in Python
``make_app(DIR, Limits(), token=None)``.

Endpoints (JSON in, JSON out)::

    GET  /health    {"status": "ok", "task": ...}
    GET  /info      task, labels / vocabulary size / horizon, model config, metrics, limits, counters
    POST /predict   textclass: {"texts": [str, ...]}           -> {"predictions": [{"label", "probabilities"}]}
                    seqclass:  {"sequences": [[[f, ...], ...]]} -> same ((T_i, F) floats each; T_i may differ)
                    forecast:  {"history": [[v, ...], ...] | [v, ...], "horizon": int?}
                               -> {"forecast": [[v, ...], ...]} (horizon x columns, original scale)
    POST /tag       tag:       {"texts": [str, ...]} | {"sentences": [[word, ...], ...]}
                               -> {"results": [{"tokens", "tags", "entities"?: [{"type", "start", "end", "text"}]}]}
    POST /transcribe transcribe: {"wav": [base64, ...]} | {"sequences": [[[f, ...], ...]]}, "beam": int?
                               -> {"transcripts": [str, ...]}
    POST /translate seq2seq:   {"texts": [str, ...], "beam": int?} -> {"translations": [str, ...]}
    POST /generate  textgen:   {"prime": str, "length": int, "temperature": float, "top_k": int?,
                                "top_p": float?, "seed": int?} -> {"text": str}

Every request is validated (JSON object, known fields, types, sizes, lengths, temperature range)
and a bad one gets a 4xx ``{"error": "<one line>"}``: 400 unreadable or too deeply nested JSON,
or too long an integer; 401 missing or wrong token (when one is set); 404/405 wrong route or
method; 408 body too slow; 413 body too large; 415 not ``Content-Type: application/json``; 422
invalid field; 503 queue full. ``rnnkit.serve_guard`` holds these defences and the connection
limits. Every 5xx is logged with its reason. Concurrent /predict requests are *batched*: a
single worker takes up to ``max_batch`` queued requests (waiting at most ``max_wait_ms`` for
company), runs them as one forward pass in a thread, and answers each; /generate requests are
queued and run one at a time (each samples its own length). The event loop never runs the
model, so /health answers while a batch runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

from rnnkit.errors import UserError
from rnnkit.runs import open_run
from rnnkit.tasks import get_task
from rnnkit.serve_guard import RequestError, parse_json_object, read_body, check_json_content_type
from rnnkit.serve_jobs import JOBS, Job

log = logging.getLogger("rnnkit.serve")


@dataclass
class Limits:
    """Request limits and batching knobs (each a ``rnnkit serve`` flag)."""

    max_batch: int = 32  # requests run together in one forward pass
    max_wait_ms: float = 2.0  # how long the first request of a batch waits for more
    max_queue: int = 256  # requests waiting before new ones get 503
    max_items: int = 64  # texts/sequences per request
    max_length: int = 2000  # characters per text / prime, words per sentence, steps per sequence / history
    max_generate: int = 1000  # tokens per /generate
    max_body: int = 1_000_000  # request body bytes
    max_connections: int = 256  # open connections; a new one over the cap closes the longest-waiting idle one
    read_timeout_s: float = 10.0  # seconds for a request's head to arrive, and again for its body
    idle_timeout_s: float = 5.0  # seconds a keep-alive connection may wait for its next request

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not value > 0:
                raise UserError(f"--{name.replace('_', '-')}: expected a positive number, got {value}")


# ----------------------------------------------------------------------------- batching

class Batcher:
    """One worker draining a bounded queue: up to max_batch requests per model call, in a thread."""

    def __init__(self, job: Job, limits: Limits):
        self.job, self.limits = job, limits
        self.queue: Optional[asyncio.Queue] = None
        self.stats = {"requests": 0, "batches": 0, "largest_batch": 0, "rejected_full": 0}
        self._task = None

    async def start(self):
        self.queue = asyncio.Queue(self.limits.max_queue)
        self._task = asyncio.create_task(self._work())

    async def stop(self):
        if self._task is not None:
            self._task.cancel()

    async def submit(self, item) -> Any:
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((item, future))
        except asyncio.QueueFull:
            self.stats["rejected_full"] += 1
            raise RequestError(503, f"server busy: {self.limits.max_queue} requests already queued; retry later")
        return await future

    async def _take(self) -> list:
        first = [await self.queue.get()]
        if not self.job.batched:
            return first
        deadline = time.monotonic() + self.limits.max_wait_ms / 1000
        while len(first) < self.limits.max_batch:
            try:
                first.append(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                first.append(await asyncio.wait_for(self.queue.get(), left))
            except asyncio.TimeoutError:
                break
        return first

    async def _work(self):
        while True:
            batch = await self._take()
            items = [item for item, _ in batch]
            self.stats["batches"] += 1
            self.stats["requests"] += len(batch)
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
            try:
                results = await asyncio.to_thread(self.job.run, items)
            except UserError as exc:
                results = [RequestError(422, " ".join(str(exc).split()))] * len(batch)
            except Exception as exc:  # a bug: answer 500 with the reason, keep serving
                results = [exc] * len(batch)
            for (_, fut), res in zip(batch, results):
                if fut.done():  # the client went away
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)


# ----------------------------------------------------------------------------- the app

def _error(status: int, message: str):
    """The JSON answer to a failed request; 408/413 close the connection (the body may be unread)."""
    from starlette.responses import JSONResponse

    headers = {"Connection": "close"} if status in (408, 413) else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class Endpoints:
    """The routes' handlers for one loaded run directory."""

    def __init__(self, art, job: Job, limits: Limits):
        self.art, self.job, self.limits = art, job, limits
        self.batcher = Batcher(job, limits)

    async def handle(self, request):
        """POST /predict, /tag or /generate: read, validate, queue for the batcher, answer."""
        from starlette.requests import ClientDisconnect
        from starlette.responses import JSONResponse, Response

        where = f"{request.method} {request.url.path}"
        try:
            check_json_content_type(request.headers.get("content-type"))
            body = parse_json_object(await read_body(request, self.limits.max_body, self.limits.read_timeout_s))
            return JSONResponse(await self.batcher.submit(self.job.parse(body)))
        except RequestError as exc:
            if exc.status >= 500:
                log.warning("%s answered %d: %s", where, exc.status, exc)
            return _error(exc.status, str(exc))
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read it
        except Exception as exc:  # a bug: log it, and never leak a traceback to the client
            log.error("%s answered 500: %s: %s", where, type(exc).__name__, exc, exc_info=exc)
            return _error(500, f"internal error: {type(exc).__name__}")

    async def wrong_job(self, request):
        return _error(404, f"this server runs a {self.art.task} model: use POST {self.job.route}")

    async def health(self, request):
        from starlette.responses import JSONResponse

        return JSONResponse({"status": "ok", "task": self.art.task})

    async def info(self, request):
        from starlette.responses import JSONResponse

        art = self.art
        return JSONResponse({
            "task": art.task, "endpoint": self.job.route, "rnnkit_version": art.meta.get("rnnkit_version"),
            "model": art.meta.get("model"), "metrics": art.metrics, "limits": asdict(self.limits),
            "stats": dict(self.batcher.stats), **self.job.info(),
        })

    async def not_found(self, request, exc):
        status = getattr(exc, "status_code", 404)
        if status == 405:
            return _error(405, f"{request.method} is not allowed on {request.url.path}")
        return _error(status, f"no route {request.method} {request.url.path}; try GET /info")


def make_app(run_dir, limits: Optional[Limits] = None, token: Optional[str] = None):
    """The Starlette app serving ``run_dir`` (loaded once, here); with ``token``, every route but
    GET /health needs ``Authorization: Bearer <token>``."""
    try:
        from starlette.applications import Starlette
        from starlette.middleware import Middleware
        from starlette.routing import Route
    except ImportError:
        raise UserError("serving needs the 'serve' extra: pip install 'rnnkit[serve]'") from None
    from contextlib import asynccontextmanager

    from rnnkit.serve_guard import AcceptErrorLog, TokenGuard

    limits = limits or Limits()
    art = open_run(run_dir)
    task = get_task(art.task)
    if task.serve_input not in JOBS:
        raise UserError(f"{art.path}: a {art.task} run cannot be served yet (rnnkit serve answers "
                        f"{', '.join(JOBS)} requests)")
    ends = Endpoints(art, JOBS[task.serve_input](task.load(art), art, limits), limits)
    others = sorted({job.route for job in JOBS.values()} - {ends.job.route})
    routes = [Route(ends.job.route, ends.handle, methods=["POST"]),
              *[Route(other, ends.wrong_job, methods=["POST"]) for other in others],
              Route("/health", ends.health, methods=["GET"]), Route("/info", ends.info, methods=["GET"])]

    @asynccontextmanager
    async def lifespan(app):
        asyncio.get_running_loop().set_exception_handler(AcceptErrorLog())
        await ends.batcher.start()
        yield
        await ends.batcher.stop()

    middleware = [Middleware(TokenGuard, token=token)] if token is not None else []
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware,
                    exception_handlers={404: ends.not_found, 405: ends.not_found})
    app.state.batcher, app.state.job = ends.batcher, ends.job
    return app


def serve(run_dir, host: str = "127.0.0.1", port: int = 8000, limits: Optional[Limits] = None,
          token: Optional[str] = None) -> None:
    """Run the server until interrupted (uvicorn, one process; the model runs in a worker thread).

    Logs every request (uvicorn's access log on stdout) and every 5xx with its reason (stderr)."""
    try:
        import uvicorn
    except ImportError:
        raise UserError("serving needs the 'serve' extra: pip install 'rnnkit[serve]'") from None
    import dataclasses
    import warnings

    from rnnkit.serve_guard import exposure_warning, fit_file_limit, uvicorn_config

    limits = dataclasses.replace(limits or Limits())  # a copy: the connection cap may shrink below
    warning = exposure_warning(host, token)
    if warning:
        warnings.warn(warning, stacklevel=2)
    app = make_app(run_dir, limits, token)  # loads the model first: its open files count too
    limits.max_connections = fit_file_limit(limits.max_connections)
    print(f"serving {run_dir} on http://{host}:{port} (POST {app.state.job.route}, GET /health, GET /info)", flush=True)
    uvicorn.Server(uvicorn_config(app, host, port, limits)).run()
