"""Dataset lookup: RNNKIT_DATA, cache, checked download (file:// URLs, no network), readers."""

import gzip
import hashlib

import numpy as np
import pytest

from rnnkit.data import sources
from rnnkit.errors import UserError


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNKIT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "data").mkdir()
    return tmp_path


def _fake(monkeypatch, tmp_path, content: bytes, sha=None):
    src = tmp_path / "remote.csv"
    src.write_bytes(content)
    remote = sources.RemoteFile("timeseries/airline-passengers.csv", sha or hashlib.sha256(content).hexdigest(),
                                src.as_uri())
    monkeypatch.setitem(sources.DATASETS, "airline-passengers", {"csv": remote})
    return remote


def test_named_dataset_from_rnnkit_data(env):
    f = env / "data" / "timeseries" / "airline-passengers.csv"
    f.parent.mkdir()
    f.write_text('"Month","Passengers"\n"1949-01",112')
    assert sources.resolve("airline-passengers") == f
    assert sources.sha256_file(f) == hashlib.sha256(f.read_bytes()).hexdigest()


def test_download_into_cache_with_checksum(env, monkeypatch):
    remote = _fake(monkeypatch, env, b"Month,Passengers\n1949-01,112\n")
    path = sources.resolve("airline-passengers")
    assert path == env / "cache" / remote.relpath and path.read_bytes().startswith(b"Month")
    (env / "remote.csv").unlink()  # second lookup uses the cache, no download
    assert sources.resolve("airline-passengers") == path


def test_bad_checksum_keeps_nothing(env, monkeypatch):
    remote = _fake(monkeypatch, env, b"tampered\n", sha="0" * 64)
    with pytest.raises(UserError, match=r"sha256 [0-9a-f]{64}, expected 0{64}; the file was not kept$"):
        sources.resolve("airline-passengers")
    assert not (env / "cache" / remote.relpath).exists()
    assert list((env / "cache" / "timeseries").iterdir()) == []


def test_no_download_when_not_allowed_and_unreachable(env, monkeypatch):
    _fake(monkeypatch, env, b"x")
    with pytest.raises(UserError, match="is missing"):
        sources.resolve("airline-passengers", download=False)
    (env / "remote.csv").unlink()
    with pytest.raises(UserError, match=r"^cannot download file://.*; put the file at \$RNNKIT_DATA/timeseries/"):
        sources.resolve("airline-passengers")


def test_multi_file_and_no_source(env):
    for rel in ("mnist/train-images-idx3-ubyte.gz", "mnist/train-labels-idx1-ubyte.gz",
                "mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz"):
        (env / "data" / rel).parent.mkdir(exist_ok=True)
        (env / "data" / rel).write_bytes(b"x")
    parts = sources.resolve("mnist")
    assert set(parts) == {"train_images", "train_labels", "test_images", "test_labels"}
    with pytest.raises(UserError, match=r"dataset 'imdb': imdb/imdb_train.csv.gz is not in .* and has no download source"):
        sources.resolve("imdb")


def test_paths_and_unknown_names(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("hi")
    assert sources.resolve(str(f)) == f
    with pytest.raises(UserError, match=r"^data 'tinyshakespear': no such file, and not a named dataset; did you mean 'tinyshakespeare'\?$"):
        sources.resolve("tinyshakespear")


def test_readers(tmp_path):
    f = tmp_path / "s.csv.gz"
    f.write_bytes(gzip.compress(b'"Month","Passengers"\n"1949-01",112\n"1949-02",118'))
    assert sources.read_csv_column(f, "Passengers").tolist() == [112.0, 118.0]
    idx = tmp_path / "l.idx"
    idx.write_bytes(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + bytes([1, 2, 3]))
    assert sources.read_idx(idx).tolist() == [1, 2, 3]
    idx.write_bytes(b"\x00\x00\x08\x01" + (4).to_bytes(4, "big") + bytes([1, 2, 3]))
    with pytest.raises(UserError, match=r"truncated IDX file \(3 bytes of data, expected 4\)$"):
        sources.read_idx(idx)
    (tmp_path / "w.csv").write_text("a\n")
    with pytest.raises(UserError, match=r"w.csv: no data rows after the header$"):
        sources.read_csv_column(tmp_path / "w.csv", "a")


def test_real_checksums_match_sources_md(data_dir):
    for name, parts in sources.DATASETS.items():
        for remote in parts.values():
            path = data_dir / remote.relpath
            if path.exists() and path.stat().st_size < 3_000_000:
                assert sources.sha256_file(path) == remote.sha256, name
    assert isinstance(np.zeros(1), np.ndarray)
