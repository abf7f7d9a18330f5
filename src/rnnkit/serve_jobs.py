"""What ``rnnkit serve`` answers for each kind of request a task takes (``Task.serve_input``):
a :class:`Job` parses and checks a request body (a bad one is a ``RequestError`` with a 4xx
status and one line), runs a batch of parsed requests through the loaded facade, and describes
itself for ``GET /info``. The HTTP side (batching, routes, limits) is :mod:`rnnkit.serve`."""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from rnnkit.errors import UserError
from rnnkit.serve_guard import RequestError

TEMPERATURE_MAX = 10.0
FLOAT32_MAX = float(np.finfo(np.float32).max)


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


def _items(body: dict, name: str, max_items: int) -> list:
    """The non-empty list ``body[name]`` of at most ``max_items`` items."""
    given = _field(body, name, list)
    if not given or len(given) > max_items:
        raise RequestError(422, f"field '{name}': expected 1 to {max_items} items, got {len(given)}")
    return given


def _text(item, where: str, limit: int) -> str:
    if not isinstance(item, str):
        raise RequestError(422, f"{where}: expected a string, got {type(item).__name__}")
    _within(where, len(item), limit, "characters")
    return item


def _within(where: str, size: int, limit: int, unit: str) -> None:
    if size > limit:
        raise RequestError(422, f"{where}: {size} {unit} exceed the limit of {limit}")


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
        texts = _items(body, "texts", self.limits.max_items)
        return [_text(t, f"texts[{i}]", self.limits.max_length) for i, t in enumerate(texts)]

    def run(self, items):
        flat = [t for texts in items for t in texts]
        probs = self.facade.predict_proba(flat)
        return _split_predictions(probs, self.facade.labels, [len(t) for t in items], "texts")

    def info(self):
        return {"labels": list(self.facade.labels)}


class SequencesJob(Job):
    def parse(self, body):
        _known(body, ("sequences",))
        seqs = _items(body, "sequences", self.limits.max_items)
        out = []
        for i, s in enumerate(seqs):
            out.append(_numbers(s, f"sequences[{i}]", self.facade.step_features))
            _within(f"sequences[{i}]", len(out[-1]), self.limits.max_length, "steps")
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
        given = _items(body, name, self.limits.max_items)
        return [self._words(item, f"{name}[{i}]", name == "texts", split_words) for i, item in enumerate(given)]

    def _words(self, item, where: str, is_text: bool, split_words) -> list:
        if is_text:
            item = split_words(_text(item, where, self.limits.max_length))
        elif not isinstance(item, list) or not all(isinstance(w, str) and w and not w.isspace() for w in item):
            raise RequestError(422, f"{where}: expected a list of non-empty words (strings)")
        if not item:
            raise RequestError(422, f"{where}: no words to tag")
        _within(where, len(item), self.limits.max_length, "words")
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


class TranscribeJob(Job):
    """Base64 WAV recordings (a recordings model) or feature sequences (T, F) (any model)."""

    route = "/transcribe"
    MAX_BEAM = 16

    def parse(self, body):
        import base64
        import binascii
        import io

        from rnnkit.tasks.transcribe import wav_features

        _known(body, ("wav", "sequences", "beam"))
        if ("wav" in body) == ("sequences" in body):
            raise RequestError(422, "expected one of the fields 'wav' (base64 WAV files) or 'sequences' (feature arrays)")
        beam = _field(body, "beam", int, required=False, default=1)
        if not 1 <= beam <= self.MAX_BEAM:
            raise RequestError(422, f"field 'beam': expected 1 to {self.MAX_BEAM}, got {beam}")
        name = "wav" if "wav" in body else "sequences"
        given = _items(body, name, self.limits.max_items)
        state, out = self.artifact.task_state, []
        for i, item in enumerate(given):
            where = f"{name}[{i}]"
            if name == "sequences":
                arr = _numbers(item, where, state["features"])
            elif not isinstance(item, str):
                raise RequestError(422, f"{where}: expected a base64 string, got {type(item).__name__}")
            else:
                try:
                    arr = wav_features(io.BytesIO(base64.b64decode(item, validate=True)), state, where)
                except (binascii.Error, ValueError):
                    raise RequestError(422, f"{where}: not valid base64") from None
                except UserError as exc:
                    raise RequestError(422, str(exc)) from None
            if not 1 <= len(arr) <= self.limits.max_length:
                raise RequestError(422, f"{where}: expected 1 to {self.limits.max_length} steps, got {len(arr)}")
            out.append(arr)
        return out, beam

    def run(self, items):
        answers = []
        for beam in sorted({b for _, b in items}):  # one pass per beam width asked for
            idx = [i for i, (_, b) in enumerate(items) if b == beam]
            flat = [a for i in idx for a in items[i][0]]
            texts, at = self.facade.predict(flat, beam), 0
            for i in idx:
                answers.append((i, {"transcripts": texts[at : at + len(items[i][0])]}))
                at += len(items[i][0])
        return [answer for _, answer in sorted(answers, key=lambda a: a[0])]

    def info(self):
        state = self.artifact.task_state
        return {"alphabet": state["alphabet"], "features": state["features"], "reads": "wav" if state["audio"] else "sequences",
                "max_beam": self.MAX_BEAM}


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


class TranslateJob(Job):
    """Sentences to translate, with an optional beam width (the run's by default)."""

    route = "/translate"
    MAX_BEAM = 16

    def parse(self, body):
        _known(body, ("texts", "beam"))
        beam = _field(body, "beam", int, required=False, default=self.facade.config.beam)
        if not 1 <= beam <= self.MAX_BEAM:
            raise RequestError(422, f"field 'beam': expected 1 to {self.MAX_BEAM}, got {beam}")
        texts = _items(body, "texts", self.limits.max_items)
        return [_text(t, f"texts[{i}]", self.limits.max_length) for i, t in enumerate(texts)], beam

    def run(self, items):
        answers = []
        for beam in sorted({b for _, b in items}):  # one pass per beam width asked for
            idx = [i for i, (_, b) in enumerate(items) if b == beam]
            translated, at = self.facade.translate([t for i in idx for t in items[i][0]], beam), 0
            for i in idx:
                answers.append((i, {"translations": translated[at : at + len(items[i][0])]}))
                at += len(items[i][0])
        return [answer for _, answer in sorted(answers, key=lambda a: a[0])]

    def info(self):
        return {"beam": self.facade.config.beam, "max_beam": self.MAX_BEAM}


# the job for each kind of request a task takes (``Task.serve_input``)
JOBS = {"texts": TextsJob, "sequences": SequencesJob, "history": HistoryJob, "prime": GenerateJob,
        "sentences": TagJob, "recordings": TranscribeJob, "pairs": TranslateJob}
