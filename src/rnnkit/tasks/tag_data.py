"""The tagger's data: where the sentences come from, the task state built from them, and batches.

Sources (``data``):

- a named dataset (``conll2003``, ``wnut17``, ``ud-en-ewt``): its train/dev/test files under
  ``RNNKIT_DATA`` (:mod:`rnnkit.data.sources`; never downloaded);
- a DIRECTORY: the file whose name contains ``train`` is the training part, the one with
  ``dev`` or ``valid`` the validation part and the one with ``test`` the test part (hidden
  files ignored); train is required, the others are optional, and two candidates for one part
  are an error. Without a dev file, ``val_fraction`` of train is held out;
- a FILE: its sentences split at random (``split_seed``) into ``test_fraction`` test,
  ``val_fraction`` validation and the rest train.

A file is CoNLL-U when ``format`` says so or, with ``format=auto``, when its name ends in
``.conllu``; else CoNLL columns (``word_column``, ``tag_column``).

Tags. When every training tag is ``O`` or ``P-TYPE`` (P one of B, I, E, S), the tags mark
entities (NER): every split is rewritten in the trained ``scheme`` (BIO or BIOES, from BIO,
IOB1 or BIOES files), and the tag set is ``O`` plus every prefix of the scheme for every type
found in any split. Otherwise the tags are plain labels (POS; ``scheme`` None), the set of those
found in any split. The label set is a property of the data; what is learned comes from train.

Task state (JSON, in the artifact): ``words`` (word vocabulary: PAD 0, OOV 1, then by frequency
in train; lower-cased with ``lowercase``), ``chars`` (the same for characters, original case),
``tags``, ``scheme``, ``lowercase``, ``max_word_length`` and ``network`` (word_dim, char_dim,
char_hidden, decoder).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from rnnkit.data import sources
from rnnkit.data.batching import Batch, BucketedBatches, batch_lengths  # noqa: F401  (tag's name for it)
from rnnkit.data.tagging import Sentence, read_conll, read_conllu, to_bio, to_bioes
from rnnkit.data.tokenize import OOV, Vocabulary, truncate
from rnnkit.errors import UserError
from rnnkit.tasks.tag_model import PAD_TAG

PARTS = ("train", "dev", "test")
_ENTITY_TAG = re.compile(r"[BIES]-.+")
_PART_WORDS = {"train": ("train",), "dev": ("dev", "valid"), "test": ("test",)}


# ----------------------------------------------------------------------------------- reading


def is_conllu(config, path: Path) -> bool:
    return config.format == "conllu" or (config.format == "auto" and path.name.endswith(".conllu"))


def read_sentences(config, path) -> list[Sentence]:
    """The sentences of one CoNLL or CoNLL-U file (see the module docstring)."""
    path = Path(path)
    if is_conllu(config, path):
        return read_conllu(path, config.conllu_column)
    return read_conll(path, config.tag_column, config.word_column)


def part_files(data: str) -> dict:
    """{part: Path} of a named dataset or a directory (train/dev/test, dev and test optional), or
    {"file": Path} for a single file."""
    found = sources.resolve(data, download=False)
    if isinstance(found, dict):
        return found
    if found.is_file():
        return {"file": found}
    files = [p for p in sorted(found.iterdir()) if p.is_file() and not p.name.startswith(".")]
    parts = {}
    for part, words in _PART_WORDS.items():
        matches = [p for p in files if any(w in p.name.lower() for w in words)]
        if len(matches) > 1:
            raise UserError(f"{found}: {len(matches)} files could be the {part} part "
                            f"({', '.join(p.name for p in matches)}); expected one")
        if matches:
            parts[part] = matches[0]
    if "train" not in parts:
        raise UserError(f"{found}: no training file; expected a file whose name contains 'train' "
                        "(and optionally 'dev' or 'valid', and 'test')")
    return parts


def split_file(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict:
    """{part: sorted indices} of N sentences: a seeded random ``test_fraction`` test,
    ``val_fraction`` validation, the rest train (at least one)."""
    order = np.random.default_rng(seed).permutation(n)
    n_test, n_val = int(round(test_fraction * n)), int(round(val_fraction * n))
    if n - n_test - n_val < 1:
        raise UserError(f"{n} sentences leave none for training after val_fraction {val_fraction} "
                        f"and test_fraction {test_fraction}; expected more sentences or smaller fractions")
    cut = {"test": order[:n_test], "dev": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    return {part: np.sort(idx) for part, idx in cut.items()}


def load_parts(config, data: str, files: Optional[dict] = None) -> dict:
    """{"train": [Sentence], "dev": [Sentence] | None, "test": [Sentence] | None} of ``data``
    (its :func:`part_files`, if already found); without a dev part, :func:`hold_out`."""
    files = files or part_files(data)
    if "file" in files:
        every = read_sentences(config, files["file"])
        cut = split_file(len(every), config.val_fraction, config.test_fraction, config.split_seed)
        return {part: [every[i] for i in idx] or None for part, idx in cut.items()}
    return hold_out({part: read_sentences(config, files[part]) if part in files else None for part in PARTS}, config)


def hold_out(parts: dict, config) -> dict:
    """``parts`` with, when there is no dev part, ``val_fraction`` of train (seeded by
    ``split_seed``) moved into it."""
    if parts.get("dev") or config.val_fraction == 0:
        return parts
    train = parts["train"]
    cut = split_file(len(train), config.val_fraction, 0.0, config.split_seed)
    return {**parts, "train": [train[i] for i in cut["train"]], "dev": [train[i] for i in cut["dev"]] or None}


def whole(config, data: str) -> list[Sentence]:
    """Every sentence of ``data``: all of a file, or its parts one after another."""
    files = part_files(data)
    return [s for part in ("file", *PARTS) if part in files for s in read_sentences(config, files[part])]


# ----------------------------------------------------------------------------------- tags


def entity_scheme(tags: Sequence[str]) -> bool:
    """Do these tags mark entities (each ``O`` or ``P-TYPE``, some not ``O``)?"""
    return any(t != "O" for t in tags) and all(t == "O" or _ENTITY_TAG.fullmatch(t) for t in tags)


def convert(sentences: Sequence[Sentence], scheme: Optional[str], where: str) -> list[Sentence]:
    """The sentences with their tags written in ``scheme`` (None: unchanged)."""
    if scheme is None:
        return list(sentences)
    write = to_bio if scheme == "BIO" else to_bioes
    out = []
    for k, s in enumerate(sentences):
        try:
            out.append(Sentence(s.words, write(s.tags), s.lines))
        except ValueError as exc:
            raise UserError(f"{where}sentence {k + 1}: {exc}") from None
    return out


def tag_set(tags: set, scheme: Optional[str]) -> list[str]:
    """The tags of the model: ``O`` and every prefix of ``scheme`` for every entity type in
    ``tags``, or (no scheme) the tags themselves, sorted."""
    if scheme is None:
        return sorted(tags)
    types = sorted({t[2:] for t in tags if t != "O"})
    return ["O"] + [f"{p}-{kind}" for kind in types for p in scheme if p != "O"]


def make_task_state(config, parts: dict) -> tuple[dict, dict]:
    """(task state, parts with tags in the trained scheme) from the loaded ``parts``."""
    train = parts["train"]
    scheme = config.scheme.upper() if entity_scheme([t for s in train for t in s.tags]) else None
    parts = {part: convert(ss, scheme, f"{part} data ") if ss else ss for part, ss in parts.items()}
    tags = {t for ss in parts.values() if ss for s in ss for t in s.tags}
    case = str.lower if config.lowercase else str
    words = Vocabulary.build(([case(w) for w in s.words] for s in train), config.max_vocab, config.min_word_count)
    chars = Vocabulary.build((list(w) for s in train for w in s.words), 1 << 30, 1)
    state = {
        "words": words.words, "chars": chars.words, "tags": tag_set(tags, scheme), "scheme": scheme,
        "lowercase": config.lowercase, "max_word_length": config.max_word_length,
        "network": {"word_dim": config.word_dim, "char_dim": config.char_dim, "char_hidden": config.char_hidden,
                    "decoder": config.decoder},
    }
    return state, parts


# ----------------------------------------------------------------------------------- encoding


class Encoder:
    """Sentences -> arrays (T, 1 + W_s) of word id and character ids, and tags -> ids, with the
    vocabularies and options of a task state."""

    def __init__(self, task_state: dict):
        self.words = Vocabulary.from_dict({"words": task_state["words"]})
        self.chars = Vocabulary.from_dict({"words": task_state["chars"]})
        self.tags = {t: i for i, t in enumerate(task_state["tags"])}
        self.tag_names = list(task_state["tags"])
        self.scheme = task_state["scheme"]
        self.lowercase = task_state["lowercase"]
        self.max_word_length = task_state["max_word_length"]

    def encode_words(self, words: Sequence[str]) -> np.ndarray:
        """(T, 1 + W) int64: column 0 the word ids, then each word's (first and last)
        ``max_word_length`` character ids, 0 after its end."""
        spelled = [truncate(list(w), self.max_word_length, "both") for w in words]
        out = np.zeros((len(words), 1 + max(len(c) for c in spelled)), dtype=np.int64)
        out[:, 0] = self.words.encode(w.lower() if self.lowercase else w for w in words)
        for t, chars in enumerate(spelled):
            out[t, 1:1 + len(chars)] = self.chars.encode(chars)
        return out

    def encode_tags(self, tags: Sequence[str], where: str) -> list[int]:
        unknown = [t for t in tags if t not in self.tags]
        if unknown:
            raise UserError(f"{where}tag {unknown[0]!r} was not seen in training; expected one of "
                            f"{', '.join(self.tag_names)}")
        return [self.tags[t] for t in tags]

    def decode_tags(self, ids: Sequence[int]) -> list[str]:
        return [self.tag_names[i] for i in ids]

    def source(self, sentences: Sequence[Sentence], batch_size: int, shuffle: bool, where: str = "",
               tagged: bool = True) -> BucketedBatches:
        """Length-bucketed batches of ``sentences`` (:func:`batch_source`); ``tagged=False``
        ignores their tags (targets all 0)."""
        items = [self.encode_words(s.words) for s in sentences]
        targets = [self.encode_tags(s.tags, f"{where}sentence {k + 1}: ") if tagged else [0] * len(s.words)
                   for k, s in enumerate(sentences)]
        return batch_source(items, targets, batch_size, shuffle)


def batch_source(items: list, targets: list, batch_size: int, shuffle: bool) -> BucketedBatches:
    """Batches of sentences of similar length: inputs (B, T, 1 + W) int64 (rows and words padded
    with 0), targets (B, T) int64 (``PAD_TAG`` at padding), lengths (B,), or None when every row
    has T words (then the recurrent layers run unpacked)."""

    def make_batch(indices):
        T = max(len(items[i]) for i in indices)
        W = max(items[i].shape[1] for i in indices)
        x = torch.zeros(len(indices), T, W, dtype=torch.int64)
        y = torch.full((len(indices), T), PAD_TAG, dtype=torch.int64)
        for row, i in enumerate(indices):
            n, w = items[i].shape
            x[row, :n, :w] = torch.from_numpy(items[i])
            y[row, :n] = torch.tensor(targets[i], dtype=torch.int64)
        lengths = torch.tensor([len(items[i]) for i in indices], dtype=torch.int64)
        return Batch(x, y, None if bool((lengths == T).all()) else lengths)

    return BucketedBatches([len(a) for a in items], batch_size, make_batch, shuffle=shuffle)


def oov_rate(encoder: Encoder, sentences: Sequence[Sentence]) -> float:
    """Fraction of the words of ``sentences`` outside the word vocabulary."""
    ids = [i for s in sentences for i in encoder.encode_words(s.words)[:, 0]]
    return float(np.mean(np.asarray(ids) == OOV)) if ids else 0.0
