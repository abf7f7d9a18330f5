"""Named datasets and plain files: one lookup, checksummed downloads, and small readers.

``resolve(name_or_path)`` returns a Path (or ``{part: Path}`` for multi-file datasets):

1. a named dataset (``tinyshakespeare``, ``mnist``, ``imdb``, ``etth1``, ``etth2``,
   ``airline-passengers``, ``monthly-sunspots``, ``daily-min-temperatures``, ``m4-hourly``,
   ``fsdd`` (spoken digits), ``eng-fra`` (translation pairs), and for sequence labelling
   ``conll2003``, ``wnut17``, ``ud-en-ewt``) is looked up in the folder named by ``RNNKIT_DATA``
   (layout of shared/data, see its SOURCES.md), then in the cache
   (``RNNKIT_CACHE``, default ``~/.cache/rnnkit``), then downloaded into the cache from its
   canonical URL, pinned to a commit, and kept only if its SHA-256 matches. A dataset without a
   URL (``imdb``'s converted CSVs, the sequence-labelling sets) is never downloaded: when it is
   missing, one line says where it was looked for;
2. anything else is a file path and must exist.

Readers turn bad input into one-line ``UserError``s naming the file, the position and what was
expected: ``read_text``, ``csv_records``, ``read_csv_column``, ``read_idx``.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import hashlib
import io
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from rnnkit.data.numbers import cell_where, parse_finite
from rnnkit.errors import UserError

DATA_ENV = "RNNKIT_DATA"
CACHE_ENV = "RNNKIT_CACHE"


@dataclass(frozen=True)
class RemoteFile:
    relpath: str  # inside RNNKIT_DATA / the cache
    sha256: str
    url: Optional[str]  # None: no canonical download of this exact file


_GH = "https://raw.githubusercontent.com"
_CHAR_RNN = f"{_GH}/karpathy/char-rnn/6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare/input.txt"
_ETT = f"{_GH}/zhouhaoyi/ETDataset/1d16c8f4f943005d613b5bc962e9eeb06058cf07/ETT-small"
_TSDL = f"{_GH}/jbrownlee/Datasets/d20fcb6402ae34e653d4513b00f39257bb37ed7f"
_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist"
_M4 = "6c1067e5a57161249b17289a565178dc7a3fb3ca"

DATASETS: dict[str, dict[str, RemoteFile]] = {
    "tinyshakespeare": {"text": RemoteFile(
        "tinyshakespeare.txt", "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed", _CHAR_RNN)},
    "mnist": {
        "train_images": RemoteFile("mnist/train-images-idx3-ubyte.gz",
                                   "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                                   f"{_MNIST}/train-images-idx3-ubyte.gz"),
        "train_labels": RemoteFile("mnist/train-labels-idx1-ubyte.gz",
                                   "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                                   f"{_MNIST}/train-labels-idx1-ubyte.gz"),
        "test_images": RemoteFile("mnist/t10k-images-idx3-ubyte.gz",
                                  "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                                  f"{_MNIST}/t10k-images-idx3-ubyte.gz"),
        "test_labels": RemoteFile("mnist/t10k-labels-idx1-ubyte.gz",
                                  "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                                  f"{_MNIST}/t10k-labels-idx1-ubyte.gz"),
    },
    # the CSVs are converted from aclImdb_v1.tar.gz (see SOURCES.md): no URL serves these bytes
    "imdb": {
        "train": RemoteFile("imdb/imdb_train.csv.gz",
                            "35a5248c0ea2f8534a574db6ec56c7a8ba34353d9db4003c0e8ccd2265af1928", None),
        "test": RemoteFile("imdb/imdb_test.csv.gz",
                           "5ff1a4909c1690ed02649169472c893a199407bdf8109fabdaf7ade985c2edc4", None),
    },
    "etth1": {"csv": RemoteFile("ett/ETTh1.csv",
                                "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066", f"{_ETT}/ETTh1.csv")},
    "etth2": {"csv": RemoteFile("ett/ETTh2.csv",
                                "a3dc2c597b9218c7ce1cd55eb77b283fd459a1d09d753063f944967dd6b9218b", f"{_ETT}/ETTh2.csv")},
    "airline-passengers": {"csv": RemoteFile(
        "timeseries/airline-passengers.csv", "8cb51be753a718d9be5d76d7e238cc224792754676adc21faa59e954b0201621",
        f"{_TSDL}/airline-passengers.csv")},
    "monthly-sunspots": {"csv": RemoteFile(
        "timeseries/monthly-sunspots.csv", "c4ec8cc57d9f6fb6ecdb3e1f37f25b6f4badd5124c55931052b0cd2fc3bc71f3",
        f"{_TSDL}/monthly-sunspots.csv")},
    "daily-min-temperatures": {"csv": RemoteFile(
        "timeseries/daily-min-temperatures.csv", "8b9de63ed6789492bf497625e7f9beb96a63d367b4b0a21754006f749fa5e5da",
        f"{_TSDL}/daily-min-temperatures.csv")},
    # spoken digits (CC BY-SA 4.0): shared/data's reproducible tar of the 3,000 WAV files (SOURCES.md)
    "fsdd": {"tar": RemoteFile("speech/fsdd-recordings.tar",
                               "cb1c24b8149a7a24b81416c20af0ae0ce3eb0166ab6ba0956b22857f43bfc57e", None)},
    # translation (CC BY 2.0 FR): the manythings.org Anki export's fra.txt, gzipped (SOURCES.md)
    "eng-fra": {"pairs": RemoteFile("translation/eng-fra.txt.gz",
                                    "ec59d6aaba2103a1320330f39bec51dbebbb20cb6bbe9976bd16b0622c965a50", None)},
    # M4 Hourly (Makridakis et al. 2020): the competition's own files at a pinned commit
    "m4-hourly": {"train": RemoteFile("m4/Hourly-train.csv",
                                      "ea59b7783573c49077a835ab6465c7d66f1474783360f310988a9a737fbca62f",
                                      f"{_GH}/Mcompetitions/M4-methods/{_M4}/Dataset/Train/Hourly-train.csv"),
                  "test": RemoteFile("m4/Hourly-test.csv",
                                     "71a57fccb15e534d973626ada4fb87febf789e9317715b7cc6dd3b5f90db6f42",
                                     f"{_GH}/Mcompetitions/M4-methods/{_M4}/Dataset/Test/Hourly-test.csv")},
    # sequence labelling (see SOURCES.md): local copies only, never downloaded (CoNLL-2003 may not be
    # redistributed; every user builds or obtains it), so these have no URL and locate() refuses to fetch
    "conll2003": {
        "train": RemoteFile("ner/conll2003/train.txt",
                            "213953b5522fb7924802d883e50f027b2c6ffb5d4d0e63368ed82909f9b60423", None),
        "dev": RemoteFile("ner/conll2003/valid.txt",
                          "c02eb19809eafb83998326a0481942eb37d96f31826ae387cfe8773699969f5b", None),
        "test": RemoteFile("ner/conll2003/test.txt",
                           "dc4ac7f3d6d01a6bec59261814561da3b287b6b493b97d1f69c580b52ec1831b", None),
    },
    "wnut17": {
        "train": RemoteFile("ner/wnut17/wnut17train.conll",
                            "731820e13f71af324c6b55a1575ec2ce59fbaa2a0806f8f0400b98d56cd6a7a5", None),
        "dev": RemoteFile("ner/wnut17/emerging.dev.conll",
                          "e053b752b8155113ca66e7db08af5f2f5f43ab993694e4774f1ec5bad42312d8", None),
        "test": RemoteFile("ner/wnut17/emerging.test.annotated",
                           "2aa79b764e56ec9264a1b30fdd9b70195bd00ff400b62edd8f399d5f13c178f0", None),
    },
    "ud-en-ewt": {
        "train": RemoteFile("ud/en_ewt/en_ewt-ud-train.conllu",
                            "3fb78e2b55482c8ee00caa653af436c88c9e5bc9a73ce26e4ae3ddc79d2b7e7b", None),
        "dev": RemoteFile("ud/en_ewt/en_ewt-ud-dev.conllu",
                          "531a54ff90d6ab12201c5a50c3e78e6ddac4de69abc4bce5d275d3cd29efe2b6", None),
        "test": RemoteFile("ud/en_ewt/en_ewt-ud-test.conllu",
                           "e266e515a0a7547657ed3d90d9ba46487d6bd251f27ad4269d4e8a427c8555cd", None),
    },
}


def sha256_file(path: Union[str, Path], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "rnnkit")


def resolve(name_or_path: Union[str, Path], download: bool = True) -> Union[Path, dict[str, Path]]:
    """A named dataset's file(s) or an existing path (see the module docstring)."""
    key = str(name_or_path)
    if key in DATASETS:
        parts = {part: locate(remote, key, download) for part, remote in DATASETS[key].items()}
        return next(iter(parts.values())) if len(parts) == 1 else parts
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    match = difflib.get_close_matches(key, list(DATASETS), n=1, cutoff=0.6)
    hint = f"; did you mean {match[0]!r}?" if match else f" (named datasets: {', '.join(DATASETS)})"
    raise UserError(f"data {key!r}: no such file, and not a named dataset{hint}")


def locate(remote: RemoteFile, name: str = "", download: bool = True) -> Path:
    """RNNKIT_DATA, then the cache, then (if allowed) a checked download into the cache."""
    root = os.environ.get(DATA_ENV)
    if root and (Path(root) / remote.relpath).is_file():
        return Path(root) / remote.relpath
    cached = cache_dir() / remote.relpath
    if cached.is_file():
        return cached
    where = f"{DATA_ENV}/{remote.relpath}" if root else f"{cached}"
    if remote.url is None:
        raise UserError(f"dataset {name!r}: {remote.relpath} is not in {root or DATA_ENV + ' (unset)'} or "
                        f"{cache_dir()}, and has no download source (see shared/data/SOURCES.md)")
    if not download:
        raise UserError(f"dataset {name!r}: {remote.relpath} is missing ({where}); run with download allowed")
    return fetch(remote, cached)


def fetch(remote: RemoteFile, dest: Path, timeout: float = 60.0) -> Path:
    """Download ``remote.url`` to ``dest`` via a temp sibling; keep it only if the SHA-256 matches."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.part-", dir=dest.parent)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(remote.url, timeout=timeout) as resp:
                    for block in iter(lambda: resp.read(1 << 20), b""):
                        h.update(block)
                        out.write(block)
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise UserError(f"cannot download {remote.url} ({reason}); put the file at "
                                f"$RNNKIT_DATA/{remote.relpath} instead") from None
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != remote.sha256:
            raise UserError(f"download of {remote.url}: sha256 {h.hexdigest()}, expected {remote.sha256}; "
                            "the file was not kept")
        os.replace(tmp, dest)
        return dest
    finally:
        Path(tmp).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- readers

def read_bytes(path: Union[str, Path]) -> bytes:
    """File bytes, gunzipped for ``.gz``; missing, unreadable and empty files are UserErrors."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise UserError(f"{path}: not a valid gzip file ({exc})") from None
    if not data:
        raise UserError(f"{path}: file is empty")
    return data


def read_text(path: Union[str, Path]) -> str:
    """UTF-8 text; an undecodable byte is reported with its offset."""
    data = read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UserError(f"{path} line {line} (byte {exc.start}): not valid UTF-8 "
                        f"(byte 0x{data[exc.start]:02x}); expected UTF-8 text") from None
    if not text.strip():
        raise UserError(f"{path}: file is empty (only whitespace)")
    return text


def csv_records(text: str, path, delimiter: str = ",") -> list[tuple[int, list[str]]]:
    """(line where the record starts, fields) for every record of CSV ``text``, blank lines
    included (as empty lists). A field may be as long as the file (csv's default limit of
    128 KiB would refuse a long text); malformed CSV is a UserError naming the line."""
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, len(text)))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    records, line = [], 1
    try:
        for row in reader:
            records.append((line, row))
            line = reader.line_num + 1
    except csv.Error as exc:
        raise UserError(f"{path} line {line}: not valid CSV ({exc})") from None
    finally:
        csv.field_size_limit(limit)
    return records


def read_csv_rows(path: Union[str, Path]) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line, row)]) of a CSV with a header row; blank lines are skipped."""
    records = csv_records(read_text(path), path)
    header, body = records[0][1], [(n, r) for n, r in records[1:] if r]
    if not body:
        raise UserError(f"{path}: no data rows after the header")
    return header, body


def read_csv_column(path: Union[str, Path], column: str) -> np.ndarray:
    """One numeric column of a CSV with a header, as float64 (N,); NaN/inf/non-numbers are errors.

    Line numbers in errors count the header as line 1.
    """
    header, rows = read_csv_rows(path)
    if column not in header:
        match = difflib.get_close_matches(column, header, n=1, cutoff=0.5)
        hint = f"; did you mean {match[0]!r}?" if match else ""
        raise UserError(f"{path}: no column {column!r}; expected one of: {', '.join(header)}{hint}")
    j = header.index(column)
    return np.array([parse_finite(row[j] if j < len(row) else "", cell_where(path, line, column))
                     for line, row in rows], dtype=np.float64)


def read_idx(path: Union[str, Path]) -> np.ndarray:
    """An IDX file (MNIST): uint8 array of the stored shape; the header is checked."""
    data = read_bytes(path)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise UserError(f"{path}: not an IDX uint8 file (magic {data[:4].hex()}, expected 00 00 08 0N)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) if dims else 0
    if len(data) - offset != expected:
        raise UserError(f"{path}: truncated IDX file ({len(data) - offset} bytes of data, expected {expected})")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)
