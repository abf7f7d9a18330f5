"""Labelled sequences for classification: readers, per-feature normalisation, batch sources.

Every reader returns :class:`LabelledSequences`: ``x`` (N, T, F) float32 right-padded with NaN
past each sequence's length, ``lengths`` (N,) int64, ``labels`` (N,) int64 class ids in
[0, C), and ``label_names`` (C,) the original label text. Readers:

- ``read_arrays``: ``.npy`` (N, T, F) or (N, T) plus a labels file, or ``.npz`` holding ``x``/``y``
  (optionally ``lengths``), or Keras-style ``x_train``/``y_train``/``x_test``/``y_test``;
- ``read_csv``: wide (one sequence per row: label, then values) or long (``id``, ``time``,
  ``label``, feature columns; one row per step);
- ``read_ts``: UCR/UEA ``.ts`` files (multivariate, variable length, ``?`` missing values);
- ``read_idx`` / ``read_mnist``: the IDX files of MNIST (gzip or not).

Bad files raise :class:`rnnkit.errors.UserError` naming the file, the line and what was expected;
values must be finite numbers within float32's range (:mod:`rnnkit.data.numbers`), NaN only
where it marks a missing value.
"""

from __future__ import annotations

import gzip
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from rnnkit.data.batching import Batch
from rnnkit.data.numbers import cell_where, check_finite_array, parse_finite
from rnnkit.data.sources import csv_records
from rnnkit.errors import UserError

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_MODES = ("rows", "pixels", "permuted")
MISSING = ("", "?", "nan", "na")  # cells read as a missing value (NaN), case-insensitive
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class LabelledSequences:
    """x: (N, T, F) float32, NaN past each length; lengths: (N,); labels: (N,) in [0, C)."""

    x: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray
    label_names: list

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> "LabelledSequences":
        return LabelledSequences(self.x[index], self.lengths[index], self.labels[index], self.label_names)


# ---------------------------------------------------------------- labels and padding


def encode_labels(raw: Sequence, names: Optional[list] = None, where: str = "") -> tuple[np.ndarray, list]:
    """Map raw labels to ids 0..C-1. Names sort numerically when all labels are integers."""
    raw = [str(v).strip() for v in raw]
    if names is None:
        distinct = set(raw)
        try:
            names = sorted(distinct, key=lambda s: (_finite(float(s)), s))
        except ValueError:
            names = sorted(distinct)
    index = {n: i for i, n in enumerate(names)}
    ids = np.empty(len(raw), dtype=np.int64)
    for i, v in enumerate(raw):
        if v not in index:
            raise UserError(f"{where}: label {v!r} of sequence {i + 1} is not one of the known classes {names[:20]}")
        ids[i] = index[v]
    return ids, list(names)


def _finite(value: float) -> float:
    """A label's numeric sort key; "nan" or "inf" labels are sorted as text."""
    if not math.isfinite(value):
        raise ValueError(value)
    return value


def pad_ragged(seqs: list) -> tuple[np.ndarray, np.ndarray]:
    """List of (T_i, F) arrays -> (N, T_max, F) float32 padded with NaN, lengths (N,)."""
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    feats = seqs[0].shape[1]
    x = np.full((len(seqs), int(lengths.max()), feats), np.nan, dtype=np.float32)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
    return x, lengths


def concatenate(parts: list) -> LabelledSequences:
    """Several LabelledSequences with the same label names as one (padded to the longest)."""
    if len(parts) == 1:
        return parts[0]
    x = np.full((sum(len(p) for p in parts), max(p.x.shape[1] for p in parts), parts[0].x.shape[2]), np.nan,
                dtype=np.float32)
    at = 0
    for p in parts:
        x[at : at + len(p), : p.x.shape[1]] = p.x
        at += len(p)
    return LabelledSequences(x, np.concatenate([p.lengths for p in parts]), np.concatenate([p.labels for p in parts]),
                             parts[0].label_names)


def _as_sequences(x: np.ndarray, y, lengths, names, where: str) -> LabelledSequences:
    if x.ndim == 2:
        x = x[:, :, None]  # (N, T) -> (N, T, 1)
    if x.ndim != 3:
        raise UserError(f"{where}: expected an array of shape (N, T, F) or (N, T), got shape {x.shape}")
    y = np.asarray(y).reshape(-1)
    if len(y) != len(x):
        raise UserError(f"{where}: {len(x)} sequences but {len(y)} labels; expected one label per sequence")
    check_finite_array(x, where)
    x = x.astype(np.float32, copy=True)
    if lengths is None:
        lengths = np.full(len(x), x.shape[1], dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    if len(lengths) != len(x) or lengths.min(initial=1) < 1 or lengths.max(initial=1) > x.shape[1]:
        raise UserError(f"{where}: lengths must be {len(x)} integers in [1, {x.shape[1]}]")
    x[np.arange(x.shape[1])[None, :] >= lengths[:, None]] = np.nan
    ids, names = encode_labels(y.tolist(), names, where)
    return LabelledSequences(x, lengths, ids, names)


# ---------------------------------------------------------------- NPY / NPZ


def _first_key(arrays, keys, path):
    for k in keys:
        if k in arrays:
            return arrays[k]
    return None


def read_arrays(path, labels_path=None, names=None) -> dict:
    """Read .npy/.npz; returns {"train": LabelledSequences, "test": LabelledSequences?}.

    ``.npz`` keys: ``x`` (or ``X``/``inputs``), ``y`` (or ``labels``/``targets``), optional
    ``lengths``; or ``x_train``, ``y_train`` [, ``x_test``, ``y_test``]. ``.npy`` needs
    ``labels_path`` (another .npy of N labels), unless it is used for prediction only.
    """
    path = Path(path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        else:
            arrays = {"x": np.load(path, allow_pickle=False)}
            if labels_path is not None:
                arrays["y"] = np.load(labels_path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable NumPy .npy/.npz file without pickled objects ({e})") from None
    if "x_train" in arrays:
        out = {"train": _as_sequences(arrays["x_train"], _need(arrays, "y_train", path), None, names, str(path))}
        if "x_test" in arrays:
            out["test"] = _as_sequences(arrays["x_test"], _need(arrays, "y_test", path), None, out["train"].label_names, str(path))
        return out
    x = _first_key(arrays, ("x", "X", "inputs"), path)
    if x is None:
        raise UserError(f"{path}: expected arrays named x and y (or x_train/y_train), found {sorted(arrays)}")
    y = _first_key(arrays, ("y", "labels", "targets"), path)
    if y is None:
        hint = "pass the labels file" if path.suffix == ".npy" else "add an array named y"
        raise UserError(f"{path}: no labels found; {hint}")
    return {"train": _as_sequences(x, y, arrays.get("lengths"), names, str(path))}


def _need(arrays, key, path):
    if key not in arrays:
        raise UserError(f"{path}: array {key!r} is missing; expected it next to {key.replace('y_', 'x_')}")
    return arrays[key]


def read_unlabelled_array(path) -> tuple[np.ndarray, np.ndarray]:
    """For prediction: .npy (N, T, F) / (N, T) or .npz with ``x`` [+ ``lengths``] -> (x, lengths)."""
    path = Path(path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            x = _first_key(arrays, ("x", "X", "inputs", "x_test"), path)
            lengths = arrays.get("lengths")
        else:
            x, lengths = np.load(path, allow_pickle=False), None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable NumPy .npy/.npz file without pickled objects ({e})") from None
    if x is None:
        raise UserError(f"{path}: expected an array named x")
    seqs = _as_sequences(np.asarray(x), np.zeros(len(x)), lengths, None, str(path))
    return seqs.x, seqs.lengths


# ---------------------------------------------------------------- CSV


def _float(text: str, path, line: int, column) -> float:
    return parse_finite(text, cell_where(path, line, column), MISSING, float32=True)


def read_csv(path, label_column: str = "label", features: int = 1, names=None) -> LabelledSequences:
    """A CSV of labelled sequences.

    Long format (header has ``id`` and ``time``): one row per step; ``id`` groups rows into
    sequences, ``time`` orders them, ``label_column`` is the class, every other column is a
    feature. Wide format otherwise: one sequence per row, the label column (by name when there
    is a header, else the first column) then T*F values, step-major (t0f0, t0f1, ..., t1f0, ...);
    rows may be shorter (variable length; trailing empty cells are dropped).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8") as f:
            text = f.read()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read as CSV text ({e})") from None
    rows = [(n, r) for n, r in csv_records(text, path) if any(c.strip() for c in r)]  # (line, fields)
    if not rows:
        raise UserError(f"{path}: the file is empty; expected one labelled sequence per row")
    header = [c.strip().lower() for c in rows[0][1]]
    if "id" in header and "time" in header:
        return _read_long_csv(path, rows, header, label_column.lower(), names)
    return _read_wide_csv(path, rows, header, label_column.lower(), features, names)


def _read_long_csv(path, rows, header, label_column, names) -> LabelledSequences:
    if label_column not in header:
        raise UserError(f"{path}:{rows[0][0]}: long-format CSV needs a {label_column!r} column, found {header}")
    i_id, i_time, i_label = header.index("id"), header.index("time"), header.index(label_column)
    feat_cols = [i for i in range(len(header)) if i not in (i_id, i_time, i_label)]
    if not feat_cols:
        raise UserError(f"{path}:{rows[0][0]}: long-format CSV has no feature columns besides id, time, {label_column}")
    groups: dict = {}
    columns = [c.strip() for c in rows[0][1]]
    for n, r in rows[1:]:
        if len(r) != len(header):
            raise UserError(f"{path}:{n}: expected {len(header)} fields like the header, got {len(r)}")
        where = f"{path}:{n}"
        step = (_float(r[i_time], path, n, columns[i_time]), [_float(r[i], path, n, columns[i]) for i in feat_cols])
        label = r[i_label].strip()
        g = groups.setdefault(r[i_id].strip(), (label, []))
        if g[0] != label:
            raise UserError(f"{where}: sequence {r[i_id].strip()!r} has label {label!r} but earlier rows say {g[0]!r}")
        g[1].append(step)
    seqs = [np.array([v for _, v in sorted(steps, key=lambda s: s[0])], dtype=np.float32) for _, steps in groups.values()]
    x, lengths = pad_ragged(seqs)
    ids, names = encode_labels([g[0] for g in groups.values()], names, str(path))
    return LabelledSequences(x, lengths, ids, names)


def _read_wide_csv(path, rows, header, label_column, features, names) -> LabelledSequences:
    has_header = label_column in header
    i_label = header.index(label_column) if has_header else 0
    labels, seqs = [], []
    for n, r in rows[1:] if has_header else rows:
        cells = [(i, c) for i, c in enumerate(r) if i != i_label]
        while cells and not cells[-1][1].strip():
            cells.pop()
        if not cells or len(cells) % features:
            raise UserError(f"{path}:{n}: expected a label and a positive multiple of {features} values, got {len(cells)} values")
        seqs.append(np.array([_float(c, path, n, i + 1) for i, c in cells], dtype=np.float32).reshape(-1, features))
        labels.append(r[i_label])
    x, lengths = pad_ragged(seqs)
    ids, names = encode_labels(labels, names, str(path))
    return LabelledSequences(x, lengths, ids, names)


# ---------------------------------------------------------------- UCR/UEA .ts


def read_ts(path, names=None) -> LabelledSequences:
    """A UCR/UEA ``.ts`` file: ``@`` header lines, then ``@data`` and one case per line.

    A case is ``dim1:dim2:...:label``, each dimension comma-separated values (``?`` = missing,
    kept as NaN and filled with the feature mean after normalisation). Dimensions of one case may
    differ in length; the case's length is the longest one.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="strict").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read as a .ts text file ({e})") from None
    meta, data_at = {}, None
    for n, line in enumerate(lines, start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.lower() == "@data":
            data_at = n
            break
        if not s.startswith("@"):
            raise UserError(f"{path}:{n}: expected a header line starting with @ before @data, got {s[:40]!r}")
        key, _, value = s[1:].partition(" ")
        meta[key.lower()] = value.strip()
    if data_at is None:
        raise UserError(f"{path}: no @data line; expected a UCR/UEA .ts file")
    if meta.get("timestamps", "false").lower() == "true":
        raise UserError(f"{path}: @timeStamps true is not supported; expected plain comma-separated values")
    class_names = meta.get("classlabel", "").split()
    if not class_names or class_names[0].lower() != "true":
        raise UserError(f"{path}: expected '@classLabel true <labels...>' in the header (a labelled classification file)")
    labels, seqs, dims = [], [], None
    for n, line in enumerate(lines[data_at:], start=data_at + 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        *parts, label = s.split(":")
        start = len(line) - len(line.lstrip())  # 0-based offset of the case in the line
        if not parts:
            raise UserError(f"{path}:{n}: expected 'values:...:label', found no ':' separator")
        if dims is None:
            dims = len(parts)
        elif len(parts) != dims:
            raise UserError(f"{path}:{n}: expected {dims} dimensions like the first case, got {len(parts)}")
        seqs.append(_ts_case(parts, path, n, start))
        labels.append(label)
    if not seqs:
        raise UserError(f"{path}: no cases after @data")
    x, lengths = pad_ragged(seqs)
    ids, names = encode_labels(labels, names or class_names[1:], str(path))
    return LabelledSequences(x, lengths, ids, names)


def _ts_case(parts: list, path, line: int, start: int) -> np.ndarray:
    """'1,2,3' per dimension -> (T, D) with NaN where a dimension is shorter. Errors give the
    character column of the value (the case starts at 0-based offset ``start`` of its line)."""
    cols, column = [], start + 1
    for p in parts:
        cols.append([])
        for v in p.split(","):
            cols[-1].append(_float(v, path, line, column))
            column += len(v) + 1  # and the ',' or ':' after it
    out = np.full((max(len(c) for c in cols), len(cols)), np.nan, dtype=np.float32)
    for d, c in enumerate(cols):
        out[: len(c), d] = c
    return out


# ---------------------------------------------------------------- IDX / MNIST


def read_idx(path) -> np.ndarray:
    """An IDX file (LeCun's format), gzip-compressed or not -> numpy array of its shape and type.

    Header: two zero bytes, a type code (0x08 uint8 ... 0x0E float64), the number of
    dimensions, then one big-endian uint32 per dimension; the data follow, big-endian.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
        raise UserError(f"{path}: not an IDX file; expected magic 0x0000 + type code (0x08-0x0E) + ndim, got {raw[:4].hex() or 'nothing'}")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise UserError(f"{path}: IDX header is truncated; expected {ndim} dimension sizes")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    body = raw[4 + 4 * ndim :]
    if len(body) != need:
        raise UserError(f"{path}: IDX header says shape {shape} ({need} data bytes) but the file holds {len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        if (folder / name).exists():
            return folder / name
    raise UserError(f"{folder}: MNIST file {stem}[.gz] is missing; expected the four official IDX files")


def read_mnist(folder) -> dict:
    """The official split: {"train": (images (60000, 28, 28) uint8, labels), "test": (10000, ...)}.

    ``folder``: a folder holding the four IDX files, or {"train_images": path, "train_labels",
    "test_images", "test_labels"} as :func:`rnnkit.data.sources.resolve` returns for ``mnist``.
    """
    out = {}
    for split, (img_stem, lab_stem) in MNIST_FILES.items():
        if isinstance(folder, dict):
            img_path, lab_path = Path(folder[f"{split}_images"]), Path(folder[f"{split}_labels"])
        else:
            img_path, lab_path = _find(Path(folder), img_stem), _find(Path(folder), lab_stem)
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UserError(f"{img_path}: expected (N, rows, cols) images matching {len(labels)} labels, got {images.shape}")
        out[split] = (images, labels.astype(np.int64))
    return out


def mnist_view(images: Tensor, mode: str, permutation: Optional[Tensor] = None) -> Tensor:
    """Images (B, 28, 28) in [0, 1] -> sequences: rows (B, 28, 28) | pixels / permuted (B, 784, 1)."""
    if mode == "rows":
        return images
    flat = images.reshape(images.shape[0], -1, 1)  # (B, 784, 1)
    if mode == "permuted":
        flat = flat[:, permutation]
    return flat


def random_shift(images: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image (B, H, W) by integers in [-max_shift, max_shift] on both axes; zero fill."""
    b, h, w = images.shape
    pad = torch.nn.functional.pad(images, (max_shift,) * 4)  # (B, H+2s, W+2s)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, :]  # (B, 1, W)
    return pad[torch.arange(b)[:, None, None], rows, cols]


# ---------------------------------------------------------------- normalisation


def fit_normalizer(x: np.ndarray, per_feature: bool = True) -> dict:
    """Mean and std over the valid (non-NaN) steps of x (N, T, F): {"mean": (F,), "std": (F,)}.

    ``per_feature=False`` uses one mean/std for all features (repeated F times), which suits
    pixels, where a per-column std of a nearly always black border column would blow up.
    """
    flat = x.reshape(-1, x.shape[-1])
    if not per_feature:
        flat = flat.reshape(-1, 1)
    valid = ~np.isnan(flat)
    count = valid.sum(0)
    filled = np.where(valid, flat, 0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(0) / count
        std = np.sqrt(np.maximum((filled**2).sum(0) / count - mean**2, 0.0))
    if not per_feature:
        mean, std = np.repeat(mean, x.shape[-1]), np.repeat(std, x.shape[-1])
    mean = np.where(np.isnan(mean), 0.0, mean)
    std = np.where(~(std > 1e-8), 1.0, std)  # constant or all-missing features keep their scale
    return {"mean": mean.tolist(), "std": std.tolist()}


def normalize(x: Tensor, norm: Optional[dict]) -> Tensor:
    """(x - mean) / std per feature; missing values (NaN, including padding) become 0 (= the mean)."""
    if norm is not None:
        x = (x - torch.tensor(norm["mean"], dtype=x.dtype)) / torch.tensor(norm["std"], dtype=x.dtype)
    return torch.nan_to_num(x, nan=0.0)


# ---------------------------------------------------------------- batches


class SequenceSource:
    """Batches of (inputs (B, T, F), targets (B,), lengths (B,) | None) from in-memory arrays.

    ``raw``: (N, ...) float tensor; ``transform(raw_batch, training, generator) -> (B, T, F)``
    turns a raw batch into model inputs (augmentation, MNIST view, normalisation). Order is a
    permutation seeded by (seed, epoch) when ``shuffle``, so an epoch can be replayed exactly.
    Batches are cut to their longest sequence; ``lengths`` is None when all are full length.
    """

    def __init__(self, raw: Tensor, lengths: Tensor, labels: Tensor, batch_size: int,
                 transform: Callable, shuffle: bool = False):
        self.raw, self.lengths, self.labels = raw, lengths, labels
        self.batch_size, self.transform, self.shuffle = batch_size, transform, shuffle
        self.full_length = int(lengths.max()) if len(lengths) else 0

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def epoch(self, epoch: int = 0, seed: int = 0) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.labels), generator=gen) if self.shuffle else torch.arange(len(self.labels))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self._batch(idx, gen)

    def _batch(self, idx: Tensor, gen: torch.Generator) -> Batch:
        lengths = self.lengths[idx]
        x = self.transform(self.raw[idx], self.shuffle, gen)  # (B, T, F)
        longest = int(lengths.max())
        x = x[:, :longest]  # (B, T_batch, F)
        if bool((lengths == longest).all()):
            return Batch(x, self.labels[idx], None)  # dense: the fused kernels run without packing
        return Batch(x, self.labels[idx], lengths)
