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
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np

from rnnkit.errors import UserError
from rnnkit.runs import open_run
from rnnkit.tasks import get_task
from rnnkit.serve_guard import RequestError, parse_json_object, read_body, check_json_content_type

TEMPERATURE_MAX = 10.0
FLOAT32_MAX = float(np.finfo(np.float32).max)
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


# ----------------------------------------------------------------------------- validation

def _field(body: dict, name: str, kind, required: bool = True, default=None):
    if name not in body:
        if required:
            raise RequestError(422, f"missing field {name!r}")
        return default
    value = body[name]
    if value is None and not required:
        return default
    ok = isinstance(value, kind) and not (kind in (int, (int, float)) and isinstance(value, bool))
    if not ok:
        expected = {str: "a string", int: "an integer", list: "a list", (int, float): "a number"}[kind]
        raise RequestError(422, f"field {name!r}: expected {expected}, got {type(value).__name__}")
    return value


def _known(body: dict, fields: tuple) -> None:
    extra = sorted(set(body) - set(fields))
    if extra:
        raise RequestError(422, f"unknown field {extra[0]!r}; expected: {', '.join(fields)}")


def _numbers(rows, where: str, width: Optional[int]) -> np.ndarray:
    """A (T, F) float array from a list of rows (or a list of numbers: F = 1); finite values only."""
    if not isinstance(rows, list) or not rows:
        raise RequestError(422, f"{where}: expected a non-empty list")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in rows):
        rows = [[v] for v in rows]
    for t, row in enumerate(rows):
        if not isinstance(row, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row):
            raise RequestError(422, f"{where}[{t}]: expected a list of numbers")
        if width is not None and len(row) != width:
            raise RequestError(422, f"{where}[{t}]: expected {width} values per step, got {len(row)}")
    arr = np.asarray(rows, dtype=np.float64)
    if arr.ndim != 2:
        raise RequestError(422, f"{where}: steps have different numbers of values")
    if not np.isfinite(arr).all():
        raise RequestError(422, f"{where}: values must be finite numbers")
    if np.abs(arr).max() > FLOAT32_MAX:
        raise RequestError(422, f"{where}: values must lie within +-{FLOAT32_MAX:.3g} (the model computes in float32)")
    return arr


def _not_finite(where: str) -> RequestError:
    return RequestError(422, f"{where}: the model's output is not finite for these values; "
                             "are they on the scale of the training data?")


# ----------------------------------------------------------------------------- the jobs

class Job:
    """What one task serves: parse a request body, run a batch of parsed requests, describe itself."""

    route = "/predict"
    batched = True

    def __init__(self, facade, artifact, limits: Limits):
        self.facade, self.artifact, self.limits = facade, artifact, limits

    def parse(self, body: dict) -> Any:
        raise NotImplementedError

    def run(self, items: list) -> list:
        raise NotImplementedError

    def info(self) -> dict:
        return {}


class TextsJob(Job):
    def parse(self, body):
        _known(body, ("texts",))
        texts = _field(body, "texts", list)
        if not texts or len(texts) > self.limits.max_items:
            raise RequestError(422, f"field 'texts': expected 1 to {self.limits.max_items} texts, got {len(texts)}")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise RequestError(422, f"texts[{i}]: expected a string, got {type(t).__name__}")
            if len(t) > self.limits.max_length:
                raise RequestError(422, f"texts[{i}]: {len(t)} characters exceed the limit of {self.limits.max_length}")
        return texts

    def run(self, items):
        flat = [t for texts in items for t in texts]
        probs = self.facade.predict_proba(flat)
        return _split_predictions(probs, self.facade.labels, [len(t) for t in items], "texts")

    def info(self):
        return {"labels": list(self.facade.labels)}


class SequencesJob(Job):
    def parse(self, body):
        _known(body, ("sequences",))
        seqs = _field(body, "sequences", list)
        if not seqs or len(seqs) > self.limits.max_items:
            raise RequestError(422, f"field 'sequences': expected 1 to {self.limits.max_items} sequences, got {len(seqs)}")
        F = self.facade.step_features
        out = []
        for i, s in enumerate(seqs):
            arr = _numbers(s, f"sequences[{i}]", F)
            if len(arr) > self.limits.max_length:
                raise RequestError(422, f"sequences[{i}]: {len(arr)} steps exceed the limit of {self.limits.max_length}")
            out.append(arr)
        return out

    def run(self, items):
        flat = [a for seqs in items for a in seqs]
        T, F = max(len(a) for a in flat), flat[0].shape[1]
        x = np.zeros((len(flat), T, F), dtype=np.float32)
        for i, a in enumerate(flat):
            x[i, : len(a)] = a
        lengths = np.asarray([len(a) for a in flat], dtype=np.int64)
        probs = self.facade.predict_proba(x, lengths)
        return _split_predictions(probs, self.facade.label_names, [len(s) for s in items], "sequences")

    def info(self):
        return {"labels": list(self.facade.label_names), "features": self.facade.step_features}


class HistoryJob(Job):
    def parse(self, body):
        _known(body, ("history", "horizon"))
        state = self.artifact.task_state
        F, L = len(state["columns"]) + len(state.get("covariates", [])), state["lookback"]
        values = _numbers(_field(body, "history", list), "history", F)
        if not L <= len(values) <= self.limits.max_length:
            raise RequestError(422, f"field 'history': expected {L} to {self.limits.max_length} steps, got {len(values)}")
        horizon = _field(body, "horizon", int, required=False, default=state["horizon"])
        if not 1 <= horizon <= self.limits.max_generate:
            raise RequestError(422, f"field 'horizon': expected 1 to {self.limits.max_generate}, got {horizon}")
        if horizon > state["horizon"] and state.get("covariates"):
            raise RequestError(422, f"field 'horizon': a model with covariates forecasts at most {state['horizon']} steps")
        return values[-L:], horizon

    def run(self, items):
        from rnnkit.tasks.forecast import predict_windows

        f, out = self.facade, [None] * len(items)
        model = f._require_model()
        for horizon in sorted({h for _, h in items}):  # one forward pass per distinct horizon
            idx = [i for i, (_, h) in enumerate(items) if h == horizon]
            z = np.stack([f.scaler.transform(items[i][0]) for i in idx])  # (N, L, F)
            y = predict_windows(model, z, horizon)  # (N, K, C) scaled
            for i, yi in zip(idx, y):
                forecast = f._target_scaler().inverse_transform(yi)
                out[i] = {"forecast": forecast.tolist()} if np.isfinite(forecast).all() else _not_finite("history")
        return out

    def info(self):
        s = self.artifact.task_state
        return {"columns": s["columns"], "covariates": s.get("covariates", []), "lookback": s["lookback"],
                "horizon": s["horizon"]}


class GenerateJob(Job):
    route = "/generate"
    batched = False
    FIELDS = ("prime", "length", "temperature", "top_k", "top_p", "seed")

    def parse(self, body):
        _known(body, self.FIELDS)
        lim = self.limits
        prime = _field(body, "prime", str)
        if not 1 <= len(prime) <= lim.max_length:
            raise RequestError(422, f"field 'prime': expected 1 to {lim.max_length} characters, got {len(prime)}")
        unknown = self.facade.vocab.unknown(prime)
        if unknown:
            raise RequestError(422, f"field 'prime': {unknown[0]!r} is not in the model's vocabulary")
        length = _field(body, "length", int, required=False, default=100)
        if not 0 <= length <= lim.max_generate:
            raise RequestError(422, f"field 'length': expected 0 to {lim.max_generate}, got {length}")
        temperature = float(_field(body, "temperature", (int, float), required=False, default=1.0))
        if not (0.0 <= temperature <= TEMPERATURE_MAX) or math.isnan(temperature):
            raise RequestError(422, f"field 'temperature': expected 0 to {TEMPERATURE_MAX:g}, got {temperature}")
        top_k = _field(body, "top_k", int, required=False)
        if top_k is not None and top_k < 1:
            raise RequestError(422, f"field 'top_k': expected an integer >= 1, got {top_k}")
        top_p = _field(body, "top_p", (int, float), required=False)
        if top_p is not None and not 0 < top_p <= 1:
            raise RequestError(422, f"field 'top_p': expected a number in (0, 1], got {top_p}")
        seed = _field(body, "seed", int, required=False)
        if seed is not None and not 0 <= seed < 2**63:
            raise RequestError(422, f"field 'seed': expected 0 <= seed < 2**63, got {seed}")
        return dict(prime=prime, length=length, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)

    def run(self, items):
        return [{"text": self.facade.sample(**kw)} for kw in items]

    def info(self):
        return {"vocab_size": len(self.facade.vocab), "max_temperature": TEMPERATURE_MAX}


class TagJob(Job):
    """Raw texts (split into words as ``rnnkit predict --text`` does) or sentences already split."""

    route = "/tag"

    def parse(self, body):
        from rnnkit.data.tagging import split_words

        _known(body, ("texts", "sentences"))
        if ("texts" in body) == ("sentences" in body):
            raise RequestError(422, "expected one of the fields 'texts' (strings) or 'sentences' (lists of words)")
        name = "texts" if "texts" in body else "sentences"
        given = _field(body, name, list)
        if not given or len(given) > self.limits.max_items:
            raise RequestError(422, f"field '{name}': expected 1 to {self.limits.max_items} items, got {len(given)}")
        return [self._words(item, f"{name}[{i}]", name == "texts", split_words) for i, item in enumerate(given)]

    def _words(self, item, where: str, is_text: bool, split_words) -> list:
        if is_text:
            if not isinstance(item, str):
                raise RequestError(422, f"{where}: expected a string, got {type(item).__name__}")
            if len(item) > self.limits.max_length:
                raise RequestError(422, f"{where}: {len(item)} characters exceed the limit of {self.limits.max_length}")
            item = split_words(item)
        elif not isinstance(item, list) or not all(isinstance(w, str) and w and not w.isspace() for w in item):
            raise RequestError(422, f"{where}: expected a list of non-empty words (strings)")
        if not item:
            raise RequestError(422, f"{where}: no words to tag")
        if len(item) > self.limits.max_length:
            raise RequestError(422, f"{where}: {len(item)} words exceed the limit of {self.limits.max_length}")
        return item

    def run(self, items):
        flat = [words for sentences in items for words in sentences]
        tagged, out, at = self.facade.annotate(flat), [], 0
        for sentences in items:
            out.append({"results": tagged[at : at + len(sentences)]})
            at += len(sentences)
        return out

    def info(self):
        return {"tags": self.facade.tags, "scheme": self.facade.scheme}


def _split_predictions(probs: np.ndarray, labels, counts: list, where: str) -> list:
    """One answer per request from the probabilities (N, C) of all their inputs, ``counts`` each
    (a request whose inputs gave non-finite probabilities gets a 422 instead)."""
    rows, out, at = [], [], 0
    for p in probs:
        rows.append({"label": labels[int(np.argmax(p))],
                     "probabilities": {str(lab): float(v) for lab, v in zip(labels, p)}})
    for n in counts:
        finite = np.isfinite(probs[at : at + n]).all()
        out.append({"predictions": rows[at : at + n]} if finite else _not_finite(where))
        at += n
    return out


# the job for each kind of request a task takes (``Task.serve_input``)
JOBS = {"texts": TextsJob, "sequences": SequencesJob, "history": HistoryJob, "prime": GenerateJob,
        "sentences": TagJob}


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
