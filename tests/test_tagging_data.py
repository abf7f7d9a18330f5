"""rnnkit.data.tagging: CoNLL / CoNLL-U readers on slices of the real files and on hand-written
fixtures (DOCSTART, multiword tokens, empty nodes, CRLF), their one-line errors, and the tag
schemes: entity spans by hand, conversions and their round trips on random sequences."""

import random
import re

import pytest

from rnnkit.data.tagging import Sentence, iob1_to_bio, read_conll, read_conllu, spans, to_bio, to_bioes
from rnnkit.errors import UserError
from tests.conftest import need_file


def _head(data_dir, relative: str, lines: int, tmp_path):
    """The first ``lines`` lines of a real data file, copied to a temporary file."""
    source = need_file(data_dir, relative)
    with open(source, "rb") as f:
        head = b"".join(f.readline() for _ in range(lines))
    target = tmp_path / source.name
    target.write_bytes(head)
    return target, head.decode("utf-8").splitlines()


def _write(tmp_path, name: str, text: str, newline: str = "\n"):
    path = tmp_path / name
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


# ------------------------------------------------------------------------------- real slices


def test_wnut17_slice(data_dir, tmp_path):
    path, lines = _head(data_dir, "ner/wnut17/wnut17train.conll", 50, tmp_path)
    sentences = read_conll(path)
    token_lines = [line.split("\t") for line in lines if line.strip()]
    assert [w for s in sentences for w in s.words] == [w for w, _ in token_lines]
    assert [t for s in sentences for t in s.tags] == [t for _, t in token_lines]
    assert len(sentences) == 1 + sum(1 for a, b in zip(lines, lines[1:]) if not a.strip() and b.strip())
    first = sentences[0]
    assert first.words[:3] == ["@paulwalk", "It", "'s"] and len(first.words) == len(first.tags)
    assert spans(first.tags) == [("location", 14, 17), ("location", 18, 19)]  # Empire State Building, ESB


def test_en_ewt_slice(data_dir, tmp_path):
    path, lines = _head(data_dir, "ud/en_ewt/en_ewt-ud-dev.conllu", 162, tmp_path)  # has a 29-30 token
    upos, xpos = read_conllu(path), read_conllu(path, column="xpos")
    assert upos[0] == Sentence("From the AP comes this story :".split(), "ADP DET PROPN VERB DET NOUN PUNCT".split())
    assert xpos[0].tags == "IN DT NNP VBZ DT NN :".split()
    words = [line.split("\t") for line in lines if re.match(r"\d+\t", line)]
    assert [w for s in upos for w in s.words] == [f[1] for f in words]
    assert [t for s in upos for t in s.tags] == [f[3] for f in words]
    assert len(upos) == sum(1 for line in lines if line.startswith("# sent_id"))
    assert upos[-1].words[-4:] == ["they", "did", "n't", "."]  # not the surface token "didn't"


def test_conll2003_slice_skips_docstart(data_dir, tmp_path):
    path, lines = _head(data_dir, "ner/conll2003/valid.txt", 40, tmp_path)
    sentences = read_conll(path)
    rows = [line.split(" ") for line in lines if line.strip() and not line.startswith("-DOCSTART-")]
    assert [w for s in sentences for w in s.words] == [r[0] for r in rows]
    assert [t for s in sentences for t in s.tags] == [r[3] for r in rows]
    chunks = read_conll(path, tag_column=2)
    assert [t for s in chunks for t in s.tags] == [r[2] for r in rows]


# ---------------------------------------------------------------------------- hand fixtures

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC


Peter NNP B-NP B-PER
-DOCSTART- -X- -X- O
Blackburn NNP I-NP I-PER"""  # two blank lines, a DOCSTART inside a block, no final blank line

CONLLU = """# sent_id = 1
# text = I can't go.
1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_
2-3\tcan't\t_\t_\t_\t_\t_\t_\t_\t_
2\tca\tcan\tAUX\tMD\t_\t4\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_
3.1\tgo\tgo\tVERB\tVB\t_\t_\t_\t4:conj\t_
4\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_

# sent_id = 2
1\tYes\tyes\tINTJ\tUH\t_\t0\troot\t_\t_
"""


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_conll_fixture(tmp_path, newline):
    sentences = read_conll(_write(tmp_path, "a.txt", CONLL, newline))
    assert sentences == [Sentence(["EU", "rejects", "German"], ["B-ORG", "O", "B-MISC"]),
                         Sentence(["Peter", "Blackburn"], ["B-PER", "I-PER"])]
    assert read_conll(_write(tmp_path, "b.txt", CONLL, newline), tag_column=1, word_column=-4)[1] == \
        Sentence(["Peter", "Blackburn"], ["NNP", "NNP"])


def test_conll_tabs_and_byte_order_mark(tmp_path):
    path = tmp_path / "w.conll"
    path.write_bytes("\ufeffNew\tB-location\nYork\tI-location\n\nok\tO\n".encode("utf-8"))
    assert read_conll(path) == [Sentence(["New", "York"], ["B-location", "I-location"]), Sentence(["ok"], ["O"])]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_conllu_fixture_skips_comments_multiword_tokens_and_empty_nodes(tmp_path, newline):
    path = _write(tmp_path, "a.conllu", CONLLU, newline)
    assert read_conllu(path) == [Sentence(["I", "ca", "n't", "go"], ["PRON", "AUX", "PART", "VERB"]),
                                 Sentence(["Yes"], ["INTJ"])]
    assert read_conllu(path, "xpos")[0].tags == ["PRP", "MD", "RB", "VB"]


# ----------------------------------------------------------------------------------- errors


def _error(reader, path, **kwargs) -> str:
    with pytest.raises(UserError) as caught:
        reader(path, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_conllu_wrong_column_count_names_the_line(tmp_path):
    path = _write(tmp_path, "train.conllu", CONLLU.replace("3\tn't\tnot\tPART\tRB\t_\t", "3\tn't\tnot\tPART\t", 1))
    assert _error(read_conllu, path) == f"{path} line 6: expected 10 tab-separated columns, found 8"


def test_conllu_space_separated_line_is_refused(tmp_path):
    path = _write(tmp_path, "s.conllu", "1 I I PRON PRP _ 0 root _ _\n")
    assert _error(read_conllu, path) == f"{path} line 1: expected 10 tab-separated columns, found 1"


def test_conllu_bad_word_id(tmp_path):
    path = _write(tmp_path, "i.conllu", "\n\n" + CONLLU.replace("4\tgo", "x4\tgo"))
    assert _error(read_conllu, path) == f"{path} line 10: expected a word ID (1, 2, ... or n-m, n.m), found 'x4'"


def test_conllu_unknown_column_name(tmp_path):
    path = _write(tmp_path, "a.conllu", CONLLU)
    assert _error(read_conllu, path, column="lemma") == "column must be 'upos' or 'xpos', got 'lemma'"


def test_conll_ragged_line(tmp_path):
    path = _write(tmp_path, "r.txt", CONLL.replace("Peter NNP B-NP B-PER", "Peter B-PER"))
    assert _error(read_conll, path) == f"{path} line 8: expected 4 columns like line 3, found 2"


@pytest.mark.parametrize("column", [4, -5])
def test_conll_column_out_of_range(tmp_path, column):
    path = _write(tmp_path, "c.txt", CONLL)
    assert _error(read_conll, path, tag_column=column) == \
        f"{path} line 3: tag_column {column} is out of range; the line has 4 columns (0 to 3, or -1 for the last)"
    assert "word_column 2 is out" in _error(read_conll, _write(tmp_path, "w.conll", "a\tO\n"), word_column=2)


def test_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.conll"
    path.write_bytes("a\tO\n\nCaf\u00e9\tB-LOC\n".encode("latin-1"))
    assert _error(read_conll, path) == \
        f"{path} line 3 (byte 8): not valid UTF-8 (byte 0xe9); expected UTF-8 text"


@pytest.mark.parametrize("text, reason", [("", "file is empty"), ("\n \n\r\n", "file is empty (only whitespace)")])
def test_empty_file(tmp_path, text, reason):
    path = _write(tmp_path, "e.conll", text)
    assert _error(read_conll, path) == f"{path}: {reason}"


def test_no_sentences(tmp_path):
    path = _write(tmp_path, "d.txt", "-DOCSTART- -X- -X- O\n\n")
    assert _error(read_conll, path) == \
        f"{path}: no sentences found; expected token lines of space- or tab-separated columns, a blank line after each sentence"
    path = _write(tmp_path, "c.conllu", "# only a comment\n")
    assert _error(read_conllu, path) == \
        f"{path}: no sentences found; expected word lines of 10 tab-separated columns, a blank line after each sentence"


def test_missing_file(tmp_path):
    assert _error(read_conll, tmp_path / "nope.conll") == f"{tmp_path / 'nope.conll'}: no such file"


# ---------------------------------------------------------------------------------- schemes


@pytest.mark.parametrize("tags, expected", [
    ("B-PER I-PER O B-LOC", [("PER", 0, 2), ("LOC", 3, 4)]),
    ("O I-PER I-PER O", [("PER", 1, 3)]),                           # I- after O begins an entity
    ("I-PER", [("PER", 0, 1)]),                                     # ... so does I- at the start
    ("B-PER I-LOC I-LOC", [("PER", 0, 1), ("LOC", 1, 3)]),          # I-X after B-Y: a new X entity
    ("B-PER B-PER I-PER", [("PER", 0, 1), ("PER", 1, 3)]),
    ("O B-ORG I-ORG", [("ORG", 1, 3)]),                             # an entity ending the sentence
    ("S-PER B-LOC I-LOC E-LOC S-LOC O", [("PER", 0, 1), ("LOC", 1, 4), ("LOC", 4, 5)]),
    ("B-LOC E-LOC E-LOC I-LOC", [("LOC", 0, 2), ("LOC", 2, 3), ("LOC", 3, 4)]),  # E- and I- after E-
    ("O E-PER B-PER S-PER", [("PER", 1, 2), ("PER", 2, 3), ("PER", 3, 4)]),
    ("O O", []),
    ("", []),
])
def test_spans_by_hand(tags, expected):
    assert spans(tags.split(), "BIOES") == expected


def test_spans_refuse_tags_outside_the_scheme():
    with pytest.raises(ValueError, match=r"^tag 'S-PER' is not 'O' or one of B-TYPE, I-TYPE$"):
        spans(["S-PER"], "BIO")
    for bad in ("PER", "B-", "B_PER", "BI-PER"):
        with pytest.raises(ValueError, match=f"tag '{bad}' is not"):
            spans([bad], "BIOES")
    with pytest.raises(ValueError, match="scheme must be one of BIO, IOB1, BIOES, got 'IOB2'"):
        spans([], "IOB2")


def test_conversions_by_hand():
    bio = "B-PER I-PER O B-LOC B-LOC I-LOC I-LOC".split()
    assert to_bioes(bio) == "B-PER E-PER O S-LOC B-LOC I-LOC E-LOC".split()
    assert to_bio(to_bioes(bio)) == bio
    assert iob1_to_bio("I-PER I-PER B-PER O I-LOC I-ORG".split()) == "B-PER I-PER B-PER O B-LOC B-ORG".split()
    with pytest.raises(ValueError, match="tag 'E-PER' is not"):
        iob1_to_bio(["B-PER", "E-PER"])


TYPES = ["PER", "LOC", "ORG"]


def _random_bio(rng: random.Random, length: int) -> list:
    """A valid BIO sequence: an I-X only ever continues an X entity."""
    tags = []
    for _ in range(length):
        inside = tags and tags[-1] != "O"
        choice = rng.random()
        if inside and choice < 0.4:
            tags.append("I-" + tags[-1][2:])
        else:
            tags.append("O" if choice < 0.7 else "B-" + rng.choice(TYPES))
    return tags


@pytest.mark.parametrize("seed", range(5))
def test_round_trips_on_random_sequences(seed):
    rng = random.Random(seed)
    for _ in range(100):
        bio = _random_bio(rng, rng.randrange(0, 12))
        assert to_bio(to_bioes(bio)) == bio and to_bio(bio) == bio and iob1_to_bio(bio) == bio
        assert spans(to_bioes(bio), "BIOES") == spans(bio)
        any_mix = [rng.choice(["O", "O"] + [f"{p}-{t}" for p in "BIES" for t in TYPES[:2]]) for _ in bio]
        assert spans(to_bio(any_mix)) == spans(any_mix, "BIOES") == spans(to_bioes(any_mix), "BIOES")
        assert to_bioes(to_bio(any_mix)) == to_bioes(any_mix)
