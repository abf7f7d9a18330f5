"""rnnkit.metrics.entity_scores: hand-computed fixtures, seqeval's published README example, and
a comparison with conlleval itself, transcribed below from its Perl: the startOfChunk/endOfChunk
tables (with the IOBES extension: E- and S- rows) and its token-by-token counting loop."""

import math
import random

import pytest

from rnnkit.metrics import entity_scores

# (previous prefix, current prefix) pairs, as listed in conlleval's endOfChunk / startOfChunk;
# a change of type also ends a chunk after any non-O tag and starts one at any non-O tag.
END_OF_CHUNK = {("B", "B"), ("B", "O"), ("B", "S"), ("I", "B"), ("I", "S"), ("I", "O"),
                ("E", "E"), ("E", "I"), ("E", "O"), ("E", "S"), ("E", "B"),
                ("S", "E"), ("S", "I"), ("S", "O"), ("S", "S"), ("S", "B")}
START_OF_CHUNK = {("B", "B"), ("I", "B"), ("O", "B"), ("S", "B"), ("E", "B"),
                  ("B", "S"), ("I", "S"), ("O", "S"), ("S", "S"), ("E", "S"),
                  ("O", "I"), ("S", "I"), ("E", "I"), ("S", "E"), ("E", "E"), ("O", "E")}


def _end_of_chunk(prev, tag, prev_type, kind):
    return (prev, tag) in END_OF_CHUNK or (prev != "O" and prev_type != kind)


def _start_of_chunk(prev, tag, prev_type, kind):
    return (prev, tag) in START_OF_CHUNK or (tag != "O" and prev_type != kind)


def _split(tag):
    prefix, _, kind = tag.partition("-")
    return prefix, kind


def _conlleval(true_seqs, pred_seqs) -> dict:
    """conlleval's main loop: one pass over the tokens, a blank line (both tags O) after each
    sentence; returns its counters {"correct": n, "true": n, "guessed": n, per type as
    ("correct", X) ..., "tokens", "right_tokens"}."""
    c = {"correct": 0, "true": 0, "guessed": 0, "tokens": 0, "right_tokens": 0}
    in_correct, last = False, ("O", "", "O", "")
    rows = [(t, p, i < len(true)) for true, pred in zip(true_seqs, pred_seqs)
            for i, (t, p) in enumerate([*zip(true, pred), ("O", "O")])]
    for true_tag, pred_tag, is_token in rows:
        (correct, correct_type), (guessed, guessed_type) = _split(true_tag), _split(pred_tag)
        last_correct, last_correct_type, last_guessed, last_guessed_type = last
        true_ends = _end_of_chunk(last_correct, correct, last_correct_type, correct_type)
        pred_ends = _end_of_chunk(last_guessed, guessed, last_guessed_type, guessed_type)
        if in_correct:
            if true_ends and pred_ends and last_guessed_type == last_correct_type:
                in_correct = False
                for key in ("correct", ("correct", last_correct_type)):
                    c[key] = c.get(key, 0) + 1
            elif true_ends != pred_ends or guessed_type != correct_type:
                in_correct = False
        true_starts = _start_of_chunk(last_correct, correct, last_correct_type, correct_type)
        pred_starts = _start_of_chunk(last_guessed, guessed, last_guessed_type, guessed_type)
        if true_starts and pred_starts and guessed_type == correct_type:
            in_correct = True
        for starts, name, kind in ((true_starts, "true", correct_type), (pred_starts, "guessed", guessed_type)):
            if starts:
                for key in (name, (name, kind)):
                    c[key] = c.get(key, 0) + 1
        if is_token:
            c["tokens"] += 1
            c["right_tokens"] += true_tag == pred_tag
        last = (correct, correct_type, guessed, guessed_type)
    return c


def _scores(true, pred) -> dict:
    return entity_scores([s.split() for s in true], [s.split() for s in pred])


def test_exact_match():
    r = _scores(["B-PER I-PER O B-LOC", "O"], ["B-PER I-PER O B-LOC", "O"])
    assert (r["precision"], r["recall"], r["f1"], r["accuracy"]) == (1.0, 1.0, 1.0, 1.0)
    assert (r["true_entities"], r["predicted_entities"], r["correct_entities"], r["tokens"]) == (2, 2, 2, 5)
    assert r["per_type"] == {"LOC": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
                             "PER": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}}


def test_boundary_errors_count_as_wrong():
    # PER found one token short; LOC right; ORG found one token too long
    r = _scores(["B-PER I-PER O B-LOC O B-ORG O"], ["B-PER O O B-LOC O B-ORG I-ORG"])
    assert (r["true_entities"], r["predicted_entities"], r["correct_entities"]) == (3, 3, 1)
    assert r["precision"] == pytest.approx(1 / 3) and r["recall"] == pytest.approx(1 / 3)
    assert r["f1"] == pytest.approx(1 / 3) and r["accuracy"] == pytest.approx(5 / 7)
    assert r["per_type"]["PER"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_type_errors_count_against_both_types():
    r = _scores(["B-PER I-PER O B-PER"], ["B-LOC I-LOC O B-PER"])
    assert r["per_type"]["PER"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert r["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["precision"] == 0.5 and r["recall"] == 0.5 and r["accuracy"] == 0.5


def test_i_after_o_starts_an_entity():
    r = _scores(["O B-PER I-PER O"], ["O I-PER I-PER O"])
    assert r["correct_entities"] == 1 and r["f1"] == 1.0 and r["accuracy"] == 0.75


def test_i_after_b_of_another_type_starts_an_entity():
    r = _scores(["B-PER B-LOC I-LOC"], ["B-PER I-LOC I-LOC"])
    assert (r["true_entities"], r["predicted_entities"], r["correct_entities"]) == (2, 2, 2)
    assert r["f1"] == 1.0 and r["accuracy"] == pytest.approx(2 / 3)


def test_bioes_tags_and_mixed_schemes():
    r = _scores(["S-PER O B-LOC I-LOC E-LOC", "B-ORG E-ORG S-ORG"], ["S-PER O B-LOC I-LOC I-LOC", "B-ORG I-ORG B-ORG"])
    # the LOC ending in I- still closes at the sentence end; "B-ORG I-ORG B-ORG" reads as the same two ORGs
    assert (r["true_entities"], r["predicted_entities"], r["correct_entities"]) == (4, 4, 4)
    assert r["accuracy"] == pytest.approx(5 / 8)
    r = _scores(["B-LOC E-LOC S-LOC"], ["B-LOC E-LOC B-LOC"])
    assert r["f1"] == 1.0


def test_no_predictions_and_no_entities_divide_by_nothing():
    r = _scores(["B-PER I-PER O"], ["O O O"])
    assert (r["precision"], r["recall"], r["f1"]) == (0.0, 0.0, 0.0) and r["predicted_entities"] == 0
    r = _scores(["O O"], ["O B-LOC"])
    assert (r["precision"], r["recall"], r["f1"]) == (0.0, 0.0, 0.0)
    assert r["per_type"] == {"LOC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}}
    r = entity_scores([], [])
    assert math.isnan(r["accuracy"]) and (r["f1"], r["tokens"], r["per_type"]) == (0.0, 0, {})


def test_seqeval_readme_example():
    # seqeval's README (its default mode follows conlleval): f1 0.50, accuracy 0.80,
    # MISC 0.00 / 0.00 / 0.00 support 1, PER 1.00 / 1.00 / 1.00 support 1
    r = _scores(["O O O B-MISC I-MISC I-MISC O", "B-PER I-PER O"],
                ["O O B-MISC I-MISC I-MISC I-MISC O", "B-PER I-PER O"])
    assert (r["precision"], r["recall"], r["f1"], r["accuracy"]) == (0.5, 0.5, 0.5, 0.8)
    assert r["per_type"] == {"MISC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
                             "PER": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}}


def test_unequal_lengths_are_value_errors():
    with pytest.raises(ValueError, match="sequence 1: 2 true tags but 1 predicted ones"):
        _scores(["O", "O O"], ["O", "O"])
    with pytest.raises(ValueError, match="2 true sequences but 1 predicted ones"):
        _scores(["O", "O"], ["O"])


def _random_tags(rng: random.Random, length: int, prefixes: str) -> list:
    return [rng.choice(["O"] * 3 + [f"{p}-{t}" for p in prefixes for t in ("PER", "LOC")]) for _ in range(length)]


@pytest.mark.parametrize("prefixes", ["BI", "BIES"])
def test_matches_conlleval_on_random_sequences(prefixes):
    rng = random.Random(len(prefixes))
    for _ in range(150):
        lengths = [rng.randrange(0, 9) for _ in range(rng.randrange(1, 4))]
        true = [_random_tags(rng, n, prefixes) for n in lengths]
        pred = [[t if rng.random() < 0.6 else _random_tags(rng, 1, prefixes)[0] for t in s] for s in true]
        got, want = entity_scores(true, pred), _conlleval(true, pred)
        assert (got["correct_entities"], got["true_entities"], got["predicted_entities"]) == \
            (want["correct"], want["true"], want["guessed"])
        assert got["tokens"] == want["tokens"]
        if want["tokens"]:
            assert got["accuracy"] == want["right_tokens"] / want["tokens"]
        for kind, row in got["per_type"].items():
            correct, support = want.get(("correct", kind), 0), want.get(("true", kind), 0)
            assert row["support"] == support
            assert row["recall"] == pytest.approx(correct / support if support else 0.0)
