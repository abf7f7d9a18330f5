"""Sequence-labelling data: CoNLL / CoNLL-U readers, tag schemes and the entities they mark.

Readers return one :class:`Sentence` (words and their tags, same length) per sentence:

- ``read_conll(path, tag_column, word_column)``: one token per line, columns separated by spaces
  or tabs (CoNLL-2003 ``token POS chunk NER``; WNUT-17 ``token<TAB>tag``), a blank line after
  each sentence (the last may be missing), ``-DOCSTART-`` lines skipped;
- ``read_conllu(path, column)``: CoNLL-U, 10 tab-separated columns, ``#`` comments skipped, and
  multiword-token lines (ID ``3-4``) and empty nodes (ID ``5.1``) skipped, so the tagged units
  are the syntactic words.

Windows line ends and a UTF-8 byte-order mark are accepted. A problem with the file is a one-line
``UserError`` naming the file, the line and what was expected, e.g.
``train.conllu line 17: expected 10 tab-separated columns, found 7``.

Tag schemes. An entity of type X over tokens s..e-1 is written

- BIO (IOB2): ``B-X I-X ... I-X``;
- IOB1: ``I-X ... I-X``, with ``B-X`` only where it directly follows another X entity;
- BIOES (IOBES): ``S-X`` for one token, else ``B-X I-X ... I-X E-X``;

and ``O`` is outside every entity. :func:`spans` reads entities with the chunk rules of the
CoNLL shared tasks' ``conlleval`` script (with its IOBES extension), which accept any mix of
prefixes: a chunk starts at ``B-``/``S-``, at ``I-``/``E-`` after ``O``, ``E-`` or ``S-``, and
wherever the type changes; it ends after ``E-``/``S-``, before ``B-``/``S-``/``O`` and wherever
the type changes. So an ``I-X`` after ``O`` or after ``B-Y`` begins a new X entity.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from rnnkit.data.sources import read_text
from rnnkit.errors import UserError

PREFIXES = {"BIO": "BIO", "IOB1": "BIO", "BIOES": "BIOES"}  # scheme -> the tag prefixes it uses
CONLLU_COLUMNS = {"upos": 3, "xpos": 4}  # tag column (0-based) of the 10 CoNLL-U fields
_SEPARATOR = re.compile(r"[ \t]+")  # not str.split(): a token may hold other Unicode spaces
_WORD = re.compile(r"(?:[^\W\d_]\.){2,}|\w+(?:[-.]\w+)*|'\w+|[^\w\s]")


@dataclass
class Sentence:
    """One sentence: ``words`` and ``tags``, one tag per word. A reader also keeps each word's
    line of the file (``lines``, without its line end; not compared), so a tagger can write the
    file back with a column added."""

    words: list[str]
    tags: list[str]
    lines: list[str] = field(default_factory=list, compare=False, repr=False)


# ------------------------------------------------------------------------------------ readers


def read_conll(path, tag_column: int = -1, word_column: int = 0) -> list[Sentence]:
    """The sentences of a CoNLL column file; ``tag_column`` and ``word_column`` index the columns
    as Python does (-1 = the last). Every token line must have as many columns as the first."""
    path = Path(path)
    sentences, width = [], None
    for block in _blocks(path):
        sentence = Sentence([], [])
        for number, line in block:
            columns = _SEPARATOR.split(line.strip(" \t"))
            if columns[0] == "-DOCSTART-":
                continue
            if width is None:
                width, first = len(columns), number
                _check_column(path, number, width, tag_column, "tag_column")
                _check_column(path, number, width, word_column, "word_column")
            elif len(columns) != width:
                raise UserError(f"{path} line {number}: expected {width} columns like line {first}, found {len(columns)}")
            sentence.words.append(columns[word_column])
            sentence.tags.append(columns[tag_column])
            sentence.lines.append(line)
        if sentence.words:
            sentences.append(sentence)
    return _nonempty(path, sentences, "token lines of space- or tab-separated columns")


def read_conllu(path, column: str = "upos") -> list[Sentence]:
    """The sentences of a CoNLL-U file, each word tagged with its ``"upos"`` or ``"xpos"``."""
    if column not in CONLLU_COLUMNS:
        raise UserError(f"column must be 'upos' or 'xpos', got {column!r}")
    path, index = Path(path), CONLLU_COLUMNS[column]
    sentences = []
    for block in _blocks(path):
        sentence = Sentence([], [])
        for number, line in block:
            if line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) != 10:
                raise UserError(f"{path} line {number}: expected 10 tab-separated columns, found {len(fields)}")
            if not fields[0].isdigit():
                if re.fullmatch(r"\d+(-\d+|\.\d+)", fields[0]):
                    continue  # multiword token or empty node: not a tagged word
                raise UserError(f"{path} line {number}: expected a word ID (1, 2, ... or n-m, n.m), "
                                f"found {fields[0]!r}")
            sentence.words.append(fields[1])
            sentence.tags.append(fields[index])
            sentence.lines.append(line)
        if sentence.words:
            sentences.append(sentence)
    return _nonempty(path, sentences, "word lines of 10 tab-separated columns")


def _blocks(path: Path) -> Iterator[list[tuple[int, str]]]:
    """The file's non-blank lines as (1-based line number, line without its line end), grouped
    into the runs between blank lines."""
    block = []
    for number, line in enumerate(read_text(path).removeprefix("\ufeff").split("\n"), 1):
        line = line.removesuffix("\r")
        if line.strip(" \t"):
            block.append((number, line))
        elif block:
            yield block
            block = []
    if block:
        yield block


def _check_column(path: Path, number: int, width: int, index: int, name: str) -> None:
    if not -width <= index < width:
        raise UserError(f"{path} line {number}: {name} {index} is out of range; the line has {width} columns "
                        f"(0 to {width - 1}, or -1 for the last)")


def _nonempty(path: Path, sentences: list, expected: str) -> list[Sentence]:
    if not sentences:
        raise UserError(f"{path}: no sentences found; expected {expected}, a blank line after each sentence")
    return sentences


def split_words(text: str) -> list[str]:
    """Raw text as word tokens for a tagger, roughly as CoNLL-2003 and WNUT-17 split them:
    abbreviations of single letters and dots (``U.S.``), runs of letters and digits with inner
    hyphens and dots (``e-mail``, ``3.5``), an apostrophe clitic on its own (``it's`` -> ``it``,
    ``'s``), and every other non-space character as one token:
    ``"Hi, I'm in the U.S. now."`` -> Hi , I 'm in the U.S. now ."""
    return _WORD.findall(text)


# ---------------------------------------------------------------------------------- schemes


def spans(tags: Sequence[str], scheme: str = "BIO") -> list[tuple[str, int, int]]:
    """The entities ``(type, start, end)`` (end exclusive) of one sentence's tags, in order, by
    the conlleval chunk rules of the module docstring. ``scheme`` ("BIO", "IOB1" or "BIOES")
    names the prefixes the tags may use; another tag is a ValueError."""
    if scheme not in PREFIXES:
        raise ValueError(f"scheme must be one of {', '.join(PREFIXES)}, got {scheme!r}")
    found, start, previous = [], None, ("O", "")
    for index, tag in enumerate([*tags, "O"]):  # the final O closes an entity at the end
        current = _parse(tag, PREFIXES[scheme])
        if start is not None and _chunk_ends(previous, current):
            found.append((previous[1], start, index))
            start = None
        if _chunk_starts(previous, current):
            start = index
        previous = current
    return found


def _chunk_ends(previous: tuple[str, str], current: tuple[str, str]) -> bool:
    """conlleval's endOfChunk: does an entity end between the previous tag and this one?"""
    (p, p_type), (c, c_type) = previous, current
    return p in "ES" or (p in "BI" and c in "BSO") or (p != "O" and p_type != c_type)


def _chunk_starts(previous: tuple[str, str], current: tuple[str, str]) -> bool:
    """conlleval's startOfChunk: does an entity start at this tag?"""
    (p, p_type), (c, c_type) = previous, current
    return c in "BS" or (c in "IE" and p in "OES") or (c != "O" and p_type != c_type)


def _parse(tag: str, prefixes: str) -> tuple[str, str]:
    """``"B-PER"`` -> ``("B", "PER")``, ``"O"`` -> ``("O", "")``; ValueError for another shape."""
    if tag == "O":
        return "O", ""
    prefix, dash, kind = tag.partition("-")
    if not dash or not kind or len(prefix) != 1 or prefix not in prefixes.replace("O", ""):
        expected = ", ".join(f"{p}-TYPE" for p in prefixes if p != "O")
        raise ValueError(f"tag {tag!r} is not 'O' or one of {expected}")
    return prefix, kind


def to_bio(tags: Sequence[str]) -> list[str]:
    """The same entities in BIO (IOB2); the input may be BIO, IOB1 or BIOES."""
    return _write(spans(tags, "BIOES"), len(tags), "BIO")


def iob1_to_bio(tags: Sequence[str]) -> list[str]:
    """IOB1 tags (CoNLL-2003's original files) in BIO: an ``I-X`` that begins an entity becomes
    ``B-X``. The same as :func:`to_bio`, but a tag outside IOB1 (``E-``, ``S-``) is refused."""
    return _write(spans(tags, "IOB1"), len(tags), "BIO")


def to_bioes(tags: Sequence[str]) -> list[str]:
    """The same entities in BIOES; the input may be BIO, IOB1 or BIOES."""
    return _write(spans(tags, "BIOES"), len(tags), "BIOES")


def _write(found: list[tuple[str, int, int]], length: int, scheme: str) -> list[str]:
    """Tags (length,) marking the entities ``found`` in ``scheme`` ("BIO" or "BIOES")."""
    tags = ["O"] * length
    for kind, start, end in found:
        tags[start:end] = [f"I-{kind}"] * (end - start)
        tags[start] = f"B-{kind}"
        if scheme == "BIOES":
            tags[end - 1] = f"E-{kind}" if end - start > 1 else f"S-{kind}"
    return tags
