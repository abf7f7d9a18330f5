"""Sentence pairs for sequence-to-sequence jobs: reading, normalising, splitting, tokenising.

- :func:`read_pairs`: a tab-separated file (``.tsv``/``.txt``, optionally ``.gz``): source, tab,
  target on each line; further columns (Tatoeba's attribution) are ignored. Text is Unicode
  NFKC-normalised (so the no-break spaces of French typography become spaces), whitespace runs
  become one space, case is kept.
- :func:`split_part`: the fixed split. A pair's part is decided by the SHA-1 of its source
  sentence alone: the first 8 hex digits as a fraction u in [0, 1); ``test`` when u < test
  fraction, ``val`` when u < test + val, else ``train``. One source sentence never lands in two
  parts, and the split does not depend on the file's order or size.
- Tokenisers (``encode(text) -> ids``, ``decode(ids) -> text``, ``size``, ``to_dict``): subwords
  from a sentencepiece unigram model trained on the training part (the model is kept in the
  artifact as base64 of its bytes), or characters. Ids 0-3 are PAD, BOS, EOS and UNK in both.
- :func:`tutorial_subset`: the pairs PyTorch's translation tutorial keeps (short sentences whose
  English side starts "i am", "he is", "you are", ...).
- :func:`addition_pairs`: Keras' addition example ("535+61" -> "596"), generated with a seed.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import re
import unicodedata
from pathlib import Path

import numpy as np

from rnnkit.errors import UserError

SPECIALS = 4  # PAD, BOS, EOS, UNK
_SPACES = re.compile(r"\s+")


def normalise(text: str) -> str:
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def read_pairs(path) -> list[tuple[str, str]]:
    """(source, target) pairs of a tab-separated file; a line without a tab, or with an empty
    side, is an error naming the file and line."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    pairs = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                columns = line.rstrip("\n").split("\t")
                if len(columns) < 2 or not columns[0].strip() or not columns[1].strip():
                    raise UserError(f"{path}:{number}: expected a source sentence, a tab and a target sentence")
                pairs.append((normalise(columns[0]), normalise(columns[1])))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (OSError, EOFError) as exc:
        raise UserError(f"{path}: cannot read: {exc}") from None
    if not pairs:
        raise UserError(f"{path}: no sentence pairs")
    return pairs


def split_part(source: str, val_fraction: float, test_fraction: float) -> str:
    """``train``, ``val`` or ``test`` for a pair with this source sentence (module docstring)."""
    u = int(hashlib.sha1(source.encode("utf-8")).hexdigest()[:8], 16) / 16**8
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


TUTORIAL_PREFIXES = ("i am ", "i m ", "he is", "he s ", "she is", "she s ", "you are", "you re ", "we are", "we re ",
                     "they are", "they re ")


def _tutorial_form(text: str) -> str:
    """The tutorial's normalisation: ASCII, lower case, space before . ! ?, other non-letters to spaces."""
    ascii_text = "".join(c for c in unicodedata.normalize("NFD", text.lower().strip()) if unicodedata.category(c) != "Mn")
    return re.sub(r"[^a-zA-Z!?]+", " ", re.sub(r"([.!?])", r" \1", ascii_text)).strip()


def tutorial_subset(pairs: list, max_words: int = 10) -> list:
    """The (English, other) pairs PyTorch's "translation with a sequence to sequence network and
    attention" tutorial keeps: both sides under ``max_words`` words and the English one starting
    with one of :data:`TUTORIAL_PREFIXES`, in the tutorial's normalised form. The pairs keep their
    own text (case, accents, punctuation)."""
    kept = []
    for english, other in pairs:
        e, o = _tutorial_form(english), _tutorial_form(other)
        if len(e.split(" ")) < max_words and len(o.split(" ")) < max_words and e.startswith(TUTORIAL_PREFIXES):
            kept.append((english, other))
    return kept


class CharTokenizer:
    """Characters as tokens: id 4 + k for ``chars[k]``, UNK for any other character."""

    kind = "char"

    def __init__(self, chars: list):
        self.chars = list(chars)
        self._ids = {c: SPECIALS + k for k, c in enumerate(self.chars)}

    @classmethod
    def train(cls, texts: list, vocab_size: int = 0) -> "CharTokenizer":
        return cls(sorted({c for t in texts for c in t}))

    @property
    def size(self) -> int:
        return SPECIALS + len(self.chars)

    def encode(self, text: str) -> list:
        return [self._ids.get(c, 3) for c in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[i - SPECIALS] for i in ids if i >= SPECIALS)

    def pieces(self, ids) -> list:
        return [self.chars[i - SPECIALS] if i >= SPECIALS else "<unk>" for i in ids]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}


class SubwordTokenizer:
    """A sentencepiece model (unigram LM, Kudo 2018) over raw text; decoding restores spaces."""

    kind = "subword"

    def __init__(self, model: bytes):
        import sentencepiece

        self.model = model
        self.processor = sentencepiece.SentencePieceProcessor(model_proto=model)

    @classmethod
    def train(cls, texts: list, vocab_size: int) -> "SubwordTokenizer":
        """Trained on ``texts`` with at most ``vocab_size`` pieces (fewer on a small corpus)."""
        import io

        try:
            import sentencepiece
        except ImportError:
            raise UserError("subword tokens need sentencepiece: pip install 'rnnkit[seq2seq]'") from None
        out = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=out, vocab_size=vocab_size, model_type="unigram",
            character_coverage=1.0, hard_vocab_limit=False, pad_id=0, bos_id=1, eos_id=2, unk_id=3,
            num_threads=1, input_sentence_size=0, minloglevel=2)
        return cls(out.getvalue())

    @property
    def size(self) -> int:
        return self.processor.get_piece_size()

    def encode(self, text: str) -> list:
        return self.processor.encode(text)

    def decode(self, ids) -> str:
        return self.processor.decode([i for i in ids if i >= SPECIALS or i == 3])

    def pieces(self, ids) -> list:
        return [self.processor.id_to_piece(i) for i in ids]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "model": base64.b64encode(self.model).decode("ascii")}


TOKENIZERS = {"char": CharTokenizer, "subword": SubwordTokenizer}


def tokenizer_from_dict(d: dict):
    if d["kind"] == "char":
        return CharTokenizer(d["chars"])
    return SubwordTokenizer(base64.b64decode(d["model"]))


def addition_pairs(count: int, digits: int, seed: int) -> list[tuple[str, str]]:
    """``count`` distinct problems "a+b" -> "a+b's sum", a and b with 1 to ``digits`` digits each
    (Keras' addition example; a+b and b+a count as one problem, as there)."""
    rng = np.random.default_rng(seed)
    seen, pairs = set(), []
    limit = 10**digits
    if count > (limit * (limit + 1)) // 2:
        raise UserError(f"addition: only {(limit * (limit + 1)) // 2} distinct problems have {digits} digits; "
                        f"asked for {count}")
    while len(pairs) < count:
        a, b = (int(rng.integers(0, 10 ** int(rng.integers(1, digits + 1)))) for _ in range(2))
        if (min(a, b), max(a, b)) in seen:
            continue
        seen.add((min(a, b), max(a, b)))
        pairs.append((f"{a}+{b}", str(a + b)))
    return pairs
