"""The HTTP server: answers equal the façades', bad requests get 4xx JSON and the server keeps
serving, concurrent /predict requests are batched."""

import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")

import rnnkit  # noqa: E402
from rnnkit.models import ModelConfig  # noqa: E402
from rnnkit.serve import Limits, make_app  # noqa: E402
from rnnkit.training.config import TrainConfig  # noqa: E402
from rnnkit.training.runner import train_task  # noqa: E402

TRAIN = TrainConfig(max_steps=2, log_every=1, seed=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn in a thread on a free loopback port."""

    def __init__(self, run_dir, limits=None):
        self.port = free_port()
        self.app = make_app(run_dir, limits or Limits(max_wait_ms=20))
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)

    def request(self, method, path, body=None, raw=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        payload = json.loads(resp.read())
        conn.close()
        return resp.status, payload


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    text = tmp / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 20)
    reviews = tmp / "reviews.csv"
    reviews.write_text("text,label\n" + "\n".join(
        f"{'good great' if i % 2 else 'bad awful'} film {i},{'pos' if i % 2 else 'neg'}" for i in range(40)) + "\n")
    from rnnkit.tasks import get_task

    train_task("textgen", str(text), tmp / "tg", ModelConfig(hidden_size=8, embedding_dim=6), TRAIN,
               get_task("textgen").Config(seq_len=8, batch_size=4), progress=False)
    train_task("textclass", str(reviews), tmp / "tc", ModelConfig(cell="gru", hidden_size=8, embedding_dim=6), TRAIN,
               get_task("textclass").Config(batch_size=8), progress=False)
    train_task("forecast", "sines", tmp / "fc", ModelConfig(hidden_size=8), TRAIN,
               get_task("forecast").Config(lookback=12, horizon=3, batch_size=16, sines_series="40,10,10"), progress=False)
    return tmp


BAD_PREDICT = [
    (None, b"{not json", 400, "not valid JSON"),
    (None, b"[1, 2]", 400, "JSON object"),
    ({"texts": "one string"}, None, 422, "expected a list"),
    ({"texts": [1, 2]}, None, 422, "texts[0]: expected a string"),
    ({"texts": []}, None, 422, "expected 1 to"),
    ({"texts": ["x" * 5000]}, None, 422, "exceed the limit"),
    ({"texts": ["ok"], "extra": 1}, None, 422, "unknown field 'extra'"),
    ({}, None, 422, "missing field 'texts'"),
]


def test_textclass_predict_health_info_and_errors(runs):
    clf = rnnkit.load(runs / "tc")
    with Server(runs / "tc") as srv:
        assert srv.request("GET", "/health") == (200, {"status": "ok", "task": "textclass"})
        status, info = srv.request("GET", "/info")
        assert status == 200 and info["endpoint"] == "/predict" and info["labels"] == ["neg", "pos"]
        texts = ["good great film", "bad awful film", "unknown words here"]
        status, out = srv.request("POST", "/predict", {"texts": texts})
        assert status == 200
        want = clf.predict_proba(texts)
        for row, p in zip(out["predictions"], want):
            assert row["label"] == clf.labels[int(np.argmax(p))]
            assert row["probabilities"]["pos"] == pytest.approx(p[1], abs=1e-6)
        for body, raw, code, message in BAD_PREDICT:
            status, payload = srv.request("POST", "/predict", body, raw)
            assert (status, message in payload["error"]) == (code, True), (body, raw, payload)
            assert srv.request("GET", "/health")[0] == 200  # still serving
        status, payload = srv.request("POST", "/generate", {"prime": "a"})
        assert status == 404 and "POST /predict" in payload["error"]
        assert srv.request("GET", "/predict")[0] == 405
        assert srv.request("GET", "/nope")[0] == 404
        big = Limits(max_body=100)
    with Server(runs / "tc", big) as srv:
        status, payload = srv.request("POST", "/predict", {"texts": ["word " * 50]})
        assert status == 413 and "exceeds the limit of 100" in payload["error"]


def test_concurrent_predicts_are_batched(runs):
    clf = rnnkit.load(runs / "tc")
    texts = [f"good film {i}" if i % 2 else f"bad film {i}" for i in range(48)]
    want = clf.predict_proba(texts)
    with Server(runs / "tc", Limits(max_wait_ms=50, max_batch=16)) as srv:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda t: srv.request("POST", "/predict", {"texts": [t]}), texts))
        stats = srv.request("GET", "/info")[1]["stats"]
    assert all(s == 200 for s, _ in answers)
    for (_, out), p in zip(answers, want):  # batched with others == alone (padding is masked)
        assert out["predictions"][0]["probabilities"]["pos"] == pytest.approx(p[1], abs=1e-5)
    assert stats["requests"] == 48 and stats["batches"] < 48 and stats["largest_batch"] > 1


def test_generate_matches_sample_and_validates(runs):
    gen = rnnkit.load(runs / "tg")
    with Server(runs / "tg") as srv:
        body = {"prime": "the ", "length": 20, "temperature": 0.8, "seed": 7}
        status, out = srv.request("POST", "/generate", body)
        assert status == 200 and out["text"] == gen.sample("the ", 20, temperature=0.8, seed=7)
        for bad, message in [({"prime": "the", "temperature": 11}, "'temperature': expected 0 to 10"),
                             ({"prime": "the", "temperature": "hot"}, "expected a number"),
                             ({"prime": "the", "length": 10**6}, "'length': expected 0 to"),
                             ({"prime": "the", "length": True}, "expected an integer"),
                             ({"prime": ""}, "'prime': expected 1 to"),
                             ({"prime": "\u00e9"}, "not in the model's vocabulary"),
                             ({"prime": "the", "top_p": 0}, "'top_p'")]:
            status, payload = srv.request("POST", "/generate", bad)
            assert status == 422 and message in payload["error"], (bad, payload)
        assert srv.request("POST", "/generate", {"prime": "a", "length": 3})[0] == 200


def test_forecast_predict_matches_facade(runs):
    fc = rnnkit.load(runs / "fc")
    history = np.sin(np.arange(30) / 3.0)
    with Server(runs / "fc") as srv:
        status, out = srv.request("POST", "/predict", {"history": history.tolist(), "horizon": 5})
        assert status == 200
        from rnnkit.data.series import Series

        np.testing.assert_allclose(out["forecast"], fc.predict(5, Series(history)).values, rtol=1e-5, atol=1e-6)
        status, payload = srv.request("POST", "/predict", {"history": [1.0, 2.0]})
        assert status == 422 and "expected 12 to" in payload["error"]
        status, payload = srv.request("POST", "/predict", {"history": [1.0] * 11 + [float("nan")]})
        assert status == 400 or (status == 422 and "finite" in payload["error"])
