"""The HTTP server: answers equal the façades', bad requests get 4xx JSON and the server keeps
serving, concurrent /predict requests are batched."""

import http.client
import json
import logging
import os
import resource
import select
import socket
import subprocess
import sys
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
from rnnkit.errors import UserError  # noqa: E402
from rnnkit.serve_guard import TOKEN_ENV, exposure_warning, resolve_token, uvicorn_config  # noqa: E402
from rnnkit.training.config import TrainConfig  # noqa: E402
from rnnkit.runs import train_task  # noqa: E402

TRAIN = TrainConfig(max_steps=2, log_every=1, seed=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn in a thread on a free loopback port."""

    def __init__(self, run_dir, limits=None, token=None):
        self.port = free_port()
        limits = limits or Limits(max_wait_ms=20)
        self.app = make_app(run_dir, limits, token)
        self.server = uvicorn.Server(uvicorn_config(self.app, "127.0.0.1", self.port, limits, log_level="error"))
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

    def request(self, method, path, body=None, raw=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
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
    ner = tmp / "ner.conll"
    people, places = ["John", "Mary", "Anna"], ["Paris", "Rome"]
    ner.write_text("".join(f"{people[i % 3]} NN B-PER\nvisited VB O\n{places[i % 2]} NN B-LOC\n. . O\n\n"
                           for i in range(20)))
    train_task("tag", str(ner), tmp / "tag", ModelConfig(hidden_size=8, bidirectional=True), TRAIN,
               get_task("tag").Config(word_dim=8, char_dim=4, char_hidden=4, min_word_count=1, batch_size=4),
               progress=False)
    from test_transcribe import tone_recordings

    train_task("transcribe", str(tone_recordings(tmp / "tones")), tmp / "tr", ModelConfig(hidden_size=8, bidirectional=True),
               TRAIN, get_task("transcribe").Config(n_mels=16, batch_size=4, val_size=2), progress=False)
    pairs = tmp / "pairs.tsv"
    pairs.write_text("".join(f"{w}\t{w[::-1]}\n" for w in ("abc", "bca", "cab", "aab", "bba", "cca") * 10))
    train_task("seq2seq", str(pairs), tmp / "s2s", ModelConfig(cell="gru", hidden_size=8, embedding_dim=8), TRAIN,
               get_task("seq2seq").Config(tokens="char", batch_size=8, val_fraction=0.3, test_fraction=0.0, beam=2),
               progress=False)
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


def test_tag_answers_texts_and_sentences_as_the_facade_does(runs):
    tagger = rnnkit.load(runs / "tag")
    with Server(runs / "tag") as srv:
        status, info = srv.request("GET", "/info")
        assert status == 200 and info["endpoint"] == "/tag" and info["scheme"] == tagger.scheme
        assert info["tags"] == tagger.tags
        status, out = srv.request("POST", "/tag", {"texts": ["Mary visited Rome.", "John, Anna visited Paris"]})
        want = tagger.annotate([["Mary", "visited", "Rome", "."], ["John", ",", "Anna", "visited", "Paris"]])
        assert status == 200 and out == {"results": want}
        assert [r["tags"] for r in want] == [tagger.predict("Mary visited Rome."), tagger.predict("John, Anna visited Paris")]
        status, out = srv.request("POST", "/tag", {"sentences": [["Anna", "visited", "Rome"]]})
        assert status == 200 and out["results"] == tagger.annotate([["Anna", "visited", "Rome"]])
        for bad, message in [({"texts": ["a"], "sentences": [["a"]]}, "expected one of the fields"),
                             ({}, "expected one of the fields"),
                             ({"texts": "Mary"}, "expected a list"),
                             ({"texts": []}, "expected 1 to"),
                             ({"texts": ["   "]}, "no words to tag"),
                             ({"texts": [3]}, "texts[0]: expected a string"),
                             ({"sentences": [["Mary", ""]]}, "sentences[0]: expected a list of non-empty words"),
                             ({"sentences": [[]]}, "sentences[0]: no words to tag"),
                             ({"sentences": [["w"] * 5000]}, "5000 words exceed the limit")]:
            status, payload = srv.request("POST", "/tag", bad)
            assert status == 422 and message in payload["error"], (bad, payload)
        status, payload = srv.request("POST", "/predict", {"texts": ["Mary"]})
        assert status == 404 and "POST /tag" in payload["error"]


def test_transcribe_answers_wav_files_and_feature_sequences_as_the_facade_does(runs):
    import base64

    reader = rnnkit.load(runs / "tr")
    wavs = sorted((runs / "tones").glob("*_ann_*.wav"))[:3]
    encoded = [base64.b64encode(w.read_bytes()).decode() for w in wavs]
    with Server(runs / "tr") as srv:
        status, info = srv.request("GET", "/info")
        assert status == 200 and info["endpoint"] == "/transcribe" and info["alphabet"] == ["a", "b"]
        status, out = srv.request("POST", "/transcribe", {"wav": encoded, "beam": 2})
        assert status == 200 and out == {"transcripts": reader.transcribe_files(wavs, beam=2)}
        feats = np.random.default_rng(0).normal(size=(2, 30, 16)).round(3)
        status, out = srv.request("POST", "/transcribe", {"sequences": feats.tolist()})
        assert status == 200 and out == {"transcripts": reader.predict(list(feats))}
        for bad, message in [({"wav": encoded, "sequences": []}, "expected one of the fields"),
                             ({"wav": ["not base64!"]}, "wav[0]: not valid base64"),
                             ({"wav": [base64.b64encode(b"hello").decode()]}, "wav[0]: not a PCM WAV file"),
                             ({"wav": encoded, "beam": 99}, "'beam': expected 1 to 16"),
                             ({"sequences": [[[1.0, 2.0]]]}, "expected 16 values per step")]:
            status, payload = srv.request("POST", "/transcribe", bad)
            assert status == 422 and message in payload["error"], (bad, payload)


def test_translate_answers_as_the_facade_does(runs):
    translator = rnnkit.load(runs / "s2s")
    with Server(runs / "s2s") as srv:
        status, info = srv.request("GET", "/info")
        assert status == 200 and info["endpoint"] == "/translate" and info["beam"] == 2
        status, out = srv.request("POST", "/translate", {"texts": ["abc", "cc"]})
        assert status == 200 and out == {"translations": translator.translate(["abc", "cc"], 2)}
        status, out = srv.request("POST", "/translate", {"texts": ["abc"], "beam": 1})
        assert status == 200 and out == {"translations": translator.translate(["abc"], 1)}
        for bad, message in [({"texts": ["abc"], "beam": 0}, "'beam': expected 1 to 16"),
                             ({"texts": [5]}, "texts[0]: expected a string"), ({}, "missing field 'texts'")]:
            status, payload = srv.request("POST", "/translate", bad)
            assert status == 422 and message in payload["error"], (bad, payload)


# ----------------------------------------------------------------------------- abuse (issue #31)

def request_head(path: str, **headers) -> bytes:
    """The request line and headers of a raw POST (``Content_Type`` -> ``Content-Type``)."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def send_until_answered(port: int, head: bytes, pieces, pause: float = 0.0):
    """Send ``head``, then ``pieces`` one by one (``pause`` s apart) until the server answers or
    hangs up; returns (status, JSON payload, body bytes sent, seconds until the answer)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        sent = 0
        for piece in pieces:
            if select.select([sock], [], [], pause)[0]:
                break  # an answer (or a hang-up) is waiting
            try:
                sock.sendall(piece)
            except OSError:  # the server answered and closed while we were sending
                break
            sent += len(piece)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, json.loads(response.read()), sent, time.monotonic() - start


def chunk(data: bytes) -> bytes:
    """``data`` framed as one chunk of Transfer-Encoding: chunked."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server hung up on ``sock`` (end of stream) within ``within`` seconds."""
    if not select.select([sock], [], [], within)[0]:
        return False
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_oversized_chunked_body_is_refused_while_streaming(runs):
    block = b" " * 65536
    with Server(runs / "tc", Limits(max_body=100_000)) as srv:
        head = request_head("/predict", Content_Type="application/json", Transfer_Encoding="chunked")
        status, payload, sent, _ = send_until_answered(srv.port, head, (chunk(block) for _ in range(960)))
        assert status == 413 and payload == {"error": "request body exceeds the limit of 100000 bytes"}
        assert sent < 20 * 2**20  # answered long before the 60 MiB were sent: nothing buffered beyond the limit
        head = request_head("/predict", Content_Type="application/json", Content_Length=10**9)
        status, payload, sent, _ = send_until_answered(srv.port, head, [])
        assert status == 413 and "of 1000000000 bytes exceeds the limit of 100000" in payload["error"]
        assert srv.request("GET", "/health")[0] == 200


def test_slow_body_gets_408_and_idle_connections_are_closed(runs):
    body = json.dumps({"texts": ["a good film"]}).encode()
    with Server(runs / "tc", Limits(read_timeout_s=1.0, idle_timeout_s=1.0)) as srv:
        head = request_head("/predict", Content_Type="application/json", Content_Length=len(body))
        pieces = [body[i : i + 1] for i in range(len(body))]  # one byte every 0.25 s: 6 s for the body
        status, payload, sent, seconds = send_until_answered(srv.port, head, pieces, pause=0.25)
        assert (status, payload) == (408, {"error": "request body not received within 1 s"})
        assert sent < len(body) and seconds < 4
        silent = socket.create_connection(("127.0.0.1", srv.port))  # sends nothing
        dripping = socket.create_connection(("127.0.0.1", srv.port))
        dripping.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")  # a request head that never ends
        assert closed_by_server(silent, 4) and closed_by_server(dripping, 4)
        silent.close(), dripping.close()
        assert srv.request("GET", "/health")[0] == 200


def test_connections_over_the_cap_close_the_longest_idle(runs):
    with Server(runs / "tc", Limits(max_connections=8, read_timeout_s=30)) as srv:
        idle = []
        for _ in range(20):
            idle.append(socket.create_connection(("127.0.0.1", srv.port)))
            time.sleep(0.02)
        assert srv.request("GET", "/health") == (200, {"status": "ok", "task": "textclass"})
        closed = [closed_by_server(s, 2 if i < 13 else 0.2) for i, s in enumerate(idle)]
        for s in idle:
            s.close()
    assert closed == [True] * 13 + [False] * 7  # 21 connections, a cap of 8: the 13 oldest went


def test_malformed_json_and_content_types_get_4xx(runs):
    deep = b"[" * 100_000 + b"]" * 100_000
    with Server(runs / "tc") as srv:
        status, payload = srv.request("POST", "/predict", raw=deep)
        assert (status, payload) == (400, {"error": "request body nests JSON 100000 levels deep; the limit is 32"})
        status, payload = srv.request("POST", "/predict", raw=b'{"texts": [' + b"9" * 5000 + b"]}")
        assert (status, payload) == (400, {"error": "request body has an integer of 5000 digits; the limit is 40"})
        status, payload = srv.request("POST", "/predict", raw=b'{"texts": ["a"]}',
                                      headers={"Content-Type": "text/plain"})
        assert (status, payload) == (415, {"error": "Content-Type must be application/json; got 'text/plain'"})
        ok = srv.request("POST", "/predict", {"texts": ["a"]},
                         headers={"Content-Type": "application/json; charset=utf-8"})
        assert ok[0] == 200 and ok[1]["predictions"][0]["label"] in ("neg", "pos")


MIXED = [  # (body, raw, content type, status)
    ({"texts": ["a good great film"]}, None, "application/json", 200),
    (None, b"{not json", "application/json", 400),
    (None, b"[" * 5000, "application/json", 400),
    (None, b'{"texts": [' + b"1" * 4400 + b"]}", "application/json", 400),
    ({"texts": ["a film"]}, None, "text/plain", 415),
    ({"texts": [1]}, None, "application/json", 422),
]


def test_200_concurrent_mixed_requests_are_all_answered_without_5xx(runs):
    def one(i):
        body, raw, content_type, want = MIXED[i % len(MIXED)]
        if i % 10 == 9:
            return srv.request("GET", "/health"), 200
        return srv.request("POST", "/predict", body, raw, headers={"Content-Type": content_type}), want

    with Server(runs / "tc") as srv:
        with ThreadPoolExecutor(200) as pool:
            answers = list(pool.map(one, range(200)))
    assert [status for (status, _), _ in answers] == [want for _, want in answers]
    assert all("error" in payload for (status, payload), _ in answers if status >= 400)


def test_token_guards_every_route_but_health(runs):
    with Server(runs / "tc", token="s3cret") as srv:
        assert srv.request("GET", "/health")[0] == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            status, payload = srv.request("POST", "/predict", {"texts": ["a"]}, headers=headers)
            assert status == 401 and "Authorization: Bearer <token>" in payload["error"]
        assert srv.request("GET", "/info")[0] == 401
        good = {"Authorization": "Bearer s3cret"}
        assert srv.request("POST", "/predict", {"texts": ["a"]}, headers=good)[0] == 200
        assert srv.request("GET", "/info", headers=good)[0] == 200


def test_a_5xx_is_logged_with_its_reason(runs, caplog):
    with Server(runs / "tc") as srv:
        def broken(items):
            raise RuntimeError("the model fell over")

        srv.app.state.job.run = broken
        with caplog.at_level(logging.ERROR, logger="rnnkit.serve"):
            status, payload = srv.request("POST", "/predict", {"texts": ["a"]})
    assert (status, payload) == (500, {"error": "internal error: RuntimeError"})
    [record] = [r for r in caplog.records if r.name == "rnnkit.serve"]
    assert record.getMessage() == "POST /predict answered 500: RuntimeError: the model fell over"
    assert record.exc_info[0] is RuntimeError


def test_token_resolution_and_exposure_warning(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert resolve_token(None) is None and resolve_token("abc") == "abc"
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert resolve_token(None) == "from-env" and resolve_token("flag") == "flag"
    with pytest.raises(UserError, match="--token: expected a non-empty token"):
        resolve_token("")
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert exposure_warning(host, None) is None
    assert exposure_warning("0.0.0.0", "t") is None
    assert exposure_warning("0.0.0.0", None) == ("serving on 0.0.0.0 without a token: anyone who can reach this "
                                                 "port can use the model (pass --token or set RNNKIT_SERVE_TOKEN)")


def test_cli_server_under_a_small_file_limit_survives_300_idle_connections(runs, tmp_path):
    """The CLI process (RNNKIT_SERVE_TOKEN set, 128 open files at most): a warning that fewer
    connections fit, /health answers while 300 idle connections are open, an access log line for
    each request, no traceback for clients that hang up."""
    port, out, err = free_port(), tmp_path / "out.log", tmp_path / "err.log"
    cmd = [sys.executable, "-m", "rnnkit", "serve", str(runs / "tc"), "--port", str(port), "--read-timeout-s", "2"]
    limit_files = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))  # noqa: E731
    env = {**os.environ, TOKEN_ENV: "s3cret"}
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=env, preexec_fn=limit_files)
    try:
        wait_for_health(port, proc)
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
        hung_up = socket.create_connection(("127.0.0.1", port))
        hung_up.sendall(request_head("/predict", Content_Type="application/json", Content_Length=100,
                                     Authorization="Bearer s3cret") + b'{"te')
        hung_up.close()  # in the middle of its body
        assert get_status(port, "GET", "/health") == 200
        assert get_status(port, "POST", "/predict", b'{"texts": ["a"]}') == 401
        assert get_status(port, "POST", "/predict", b'{"texts": ["a"]}', "Bearer s3cret") == 200
        for s in idle:
            s.close()
    finally:
        proc.terminate()
        proc.wait(20)
    log, errors = out.read_text(), err.read_text()
    assert '"GET /health HTTP/1.1" 200' in log and '"POST /predict HTTP/1.1" 401' in log
    assert '"POST /predict HTTP/1.1" 200' in log
    assert "rnnkit: warning: --max-connections 256 needs" in errors and "Traceback" not in errors


def get_status(port: int, method: str, path: str, body=None, authorization=None) -> int:
    """The status of one request on a fresh connection (5 s timeout)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    headers = {"Content-Type": "application/json", **({"Authorization": authorization} if authorization else {})}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    conn.close()
    return response.status


def wait_for_health(port: int, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited"
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the server did not start")


def test_out_of_range_values_and_non_finite_outputs_get_422(runs):
    with Server(runs / "fc") as srv:
        status, payload = srv.request("POST", "/predict", {"history": [1e39] * 12})
        assert (status, payload) == (422, {"error": "history: values must lie within +-3.4e+38 (the model computes "
                                                    "in float32)"})
    with Server(runs / "tc") as srv:
        srv.app.state.job.facade.predict_proba = lambda texts: np.full((len(texts), 2), np.nan)
        status, payload = srv.request("POST", "/predict", {"texts": ["a", "b"]})
        assert status == 422 and payload["error"].startswith("texts: the model's output is not finite")


def test_serve_warns_off_loopback_without_token_and_rejects_an_empty_token(runs, monkeypatch, capsys):
    from rnnkit.cli.main import main

    started = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: started.append(self.config.host))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append(kw.get("host")))
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.warns(UserWarning, match="^serving on 0.0.0.0 without a token: anyone who can reach"):
        assert main(["serve", str(runs / "tc"), "--host", "0.0.0.0"]) == 0
    assert started == ["0.0.0.0"]
    assert main(["serve", str(runs / "tc"), "--token", ""]) == 2
    assert capsys.readouterr().err == ("rnnkit: error: --token: expected a non-empty token of printable ASCII "
                                       "without spaces\n")
    assert started == ["0.0.0.0"]
