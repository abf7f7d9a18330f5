"""Labelled texts from files: CSV / TSV / JSON lines (optionally .gz) and the ``aclImdb`` folder tree.

``read_labelled(path, text_column, label_column) -> (texts, labels)``; labels are strings.
``read_aclimdb(root, split) -> (texts, labels)`` reads ``root/<split>/{neg,pos}/*.txt``.
Every problem with the file is a one-line ``UserError`` naming the file, the line and what was
expected.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from rnnkit.errors import UserError

ACLIMDB_CLASSES = ("neg", "pos")


def _read_text(path: Path) -> str:
    """The whole file as UTF-8 (gunzipped when it ends in .gz)."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise UserError(f"{path}: not a valid gzip file ({e})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(f"{path} line {line}: byte 0x{raw[e.start]:02x} is not valid UTF-8; expected UTF-8 text") from None


def _format(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    ext = suffixes[-1].lower() if suffixes else ""
    if ext in (".csv", ".tsv", ".jsonl"):
        return ext[1:]
    if ext == ".json":
        return "jsonl"
    raise UserError(f"{path}: unknown file type {ext or '(none)'!r}; expected .csv, .tsv or .jsonl (optionally .gz)")


def read_labelled(path, text_column: str = "text", label_column: str = "label") -> tuple[list[str], list[str]]:
    """Texts and string labels from a CSV/TSV (header row) or JSON-lines file, or an aclImdb split."""
    path = Path(path)
    if path.is_dir():
        return read_aclimdb(path.parent, path.name)
    kind = _format(path)
    content = _read_text(path)
    if not content.strip():
        raise UserError(f"{path}: the file is empty; expected {'a header row with ' if kind != 'jsonl' else ''}"
                        f"columns {text_column},{label_column}")
    if kind == "jsonl":
        return _read_jsonl(path, content, text_column, label_column)
    return _read_delimited(path, content, "\t" if kind == "tsv" else ",", text_column, label_column)


def _read_delimited(path: Path, content: str, delimiter: str, text_column: str, label_column: str):
    from rnnkit.data.sources import csv_records

    (_, header), *records = csv_records(content, path, delimiter)
    for col in (text_column, label_column):
        if col not in header:
            raise UserError(f"{path} line 1: no column {col!r}; the header has {', '.join(map(repr, header))}")
    ti, li = header.index(text_column), header.index(label_column)
    texts, labels = [], []
    for line, row in records:
        if not row:
            continue  # blank line
        if len(row) != len(header):
            raise UserError(f"{path} line {line}: expected {len(header)} columns "
                            f"({','.join(header)}), found {len(row)}")
        texts.append(row[ti])
        labels.append(row[li].strip())
    if not texts:
        raise UserError(f"{path}: no rows after the header; expected labelled texts")
    return texts, labels


def _read_jsonl(path: Path, content: str, text_column: str, label_column: str):
    texts, labels = [], []
    for lineno, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} line {lineno}: not valid JSON ({e.msg}); expected one object per line") from None
        if not isinstance(record, dict):
            raise UserError(f"{path} line {lineno}: expected a JSON object, found {type(record).__name__}")
        for key in (text_column, label_column):
            if key not in record:
                raise UserError(f"{path} line {lineno}: no key {key!r}; the object has {', '.join(map(repr, record))}")
        texts.append(str(record[text_column]))
        labels.append(str(record[label_column]))
    return texts, labels


def read_aclimdb(root, split: str) -> tuple[list[str], list[str]]:
    """``root/split/{neg,pos}/<id>_<rating>.txt`` -> texts and labels ("neg"/"pos"), sorted by id."""
    root = Path(root)
    texts, labels = [], []
    for label in ACLIMDB_CLASSES:
        folder = root / split / label
        if not folder.is_dir():
            raise UserError(f"{folder}: folder not found; expected the aclImdb layout {split}/{{neg,pos}}/*.txt")
        files = sorted(folder.glob("*.txt"), key=lambda p: (int(p.stem.split("_")[0]) if p.stem.split("_")[0].isdigit() else 0, p.name))
        for f in files:
            texts.append(_read_text(f))
            labels.append(label)
    if not texts:
        raise UserError(f"{root / split}: no .txt files under neg/ and pos/")
    return texts, labels
