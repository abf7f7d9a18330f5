"""seq2seq: data split and tokens, attention against a loop, decoders against greedy and brute
force, a tiny model that learns to reverse strings, and the command line."""

import itertools
import json

import pytest
import torch

from conftest import run_cli
from rnnkit.data.pairs import CharTokenizer, addition_pairs, normalise, read_pairs, split_part
from rnnkit.errors import UserError
from rnnkit.models import ModelConfig
from rnnkit.tasks.seq2seq import Seq2SeqConfig, Translator, prepare_pairs
from rnnkit.tasks.seq2seq_model import BOS, EOS, PAD, Seq2SeqNet
from rnnkit.tasks.seq2seq_search import beam_search, greedy
from rnnkit.training.config import TrainConfig


def tiny_net(cell="gru", attention="additive", input_feeding=True, vocab=6, seed=0) -> Seq2SeqNet:
    torch.manual_seed(seed)
    config = ModelConfig(cell=cell, embedding_dim=8, hidden_size=8, num_layers=2, bidirectional=True, input_size=7,
                         output_size=vocab)
    net = Seq2SeqNet(config, attention, input_feeding).eval()
    with torch.no_grad():  # larger weights than the init: peaked, varied distributions to search over
        for p in net.parameters():
            p.mul_(3.0)
    return net


def test_the_split_keeps_each_source_sentence_in_one_part():
    pairs = [(f"sentence {k % 40}", f"phrase {k}") for k in range(400)]  # each source 10 times, 10 targets
    parts, state, counts = prepare_pairs(Seq2SeqConfig(tokens="char", val_fraction=0.2, test_fraction=0.2), pairs)
    tokenizer = CharTokenizer(state["source_tokenizer"]["chars"])
    seen = {part: {tokenizer.decode(s) for s, _ in parts[part][0]} for part in parts}
    assert seen["train"] and seen["val"] and seen["test"]
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])
    assert sum(counts[f"{p}_pairs"] for p in parts) == 400
    assert split_part("sentence 3", 0.2, 0.2) == split_part("sentence 3", 0.2, 0.2)
    fractions = [split_part(f"s{k}", 0.05, 0.05) for k in range(20000)]
    assert fractions.count("test") / 20000 == pytest.approx(0.05, abs=0.006)


def test_reading_pairs_normalises_and_names_a_bad_line(tmp_path):
    good = tmp_path / "pairs.tsv"
    good.write_text("Go.\tVa\u00a0!\tCC-BY 2.0 (France)\n\nHi  there.\tSalut.\n", encoding="utf-8")
    assert read_pairs(good) == [("Go.", "Va !"), ("Hi there.", "Salut.")]
    bad = tmp_path / "bad.tsv"
    bad.write_text("Go.\tVa !\nno tab here\n", encoding="utf-8")
    with pytest.raises(UserError, match="bad.tsv:2: expected a source sentence, a tab and a target sentence"):
        read_pairs(bad)
    assert normalise(" a \t b ") == "a b"


def test_addition_problems_are_distinct_and_right():
    pairs = addition_pairs(300, 2, seed=1)
    assert len({p for p, _ in pairs}) == 300
    for problem, answer in pairs:
        a, b = problem.split("+")
        assert int(a) + int(b) == int(answer) and len(a) <= 2 and len(b) <= 2
    with pytest.raises(UserError, match="only 55 distinct problems"):
        addition_pairs(56, 1, seed=0)


def test_subword_tokens_round_trip():
    pytest.importorskip("sentencepiece")
    from rnnkit.data.pairs import SubwordTokenizer, tokenizer_from_dict

    texts = [f"le chat {w} mange la souris {w}." for w in ("noir", "blanc", "gris", "roux")] * 20
    tokenizer = SubwordTokenizer.train(texts, 60)
    again = tokenizer_from_dict(json.loads(json.dumps(tokenizer.to_dict())))
    ids = again.encode("le chat gris mange.")
    assert ids == tokenizer.encode("le chat gris mange.") and min(ids) >= 4
    assert again.decode(ids) == "le chat gris mange."


@pytest.mark.parametrize("kind", ["additive", "multiplicative"])
def test_attention_matches_a_loop_and_ignores_padding(kind):
    net = tiny_net(attention=kind, input_feeding=False)
    source = torch.randint(4, 7, (2, 5))
    lengths = torch.tensor([5, 3])
    state = net.start(source, lengths)
    previous = torch.tensor([[BOS, 4, 5], [BOS, 5, 5]])
    _, _, weights = net.decode(previous, state)  # (2, 3, 5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3))
    assert (weights[1, :, 3:] == 0).all()
    s, _ = net.decoder(net.target_embedding(previous), state.hidden)  # (2, 3, H)
    a = net.attention
    for b in range(2):
        m = state.memory[b, : lengths[b]]  # (S_b, D*H)
        for t in range(3):
            if kind == "additive":
                scores = torch.stack([a.v(torch.tanh(a.query(s[b, t]) + a.key(m[j])))[0] for j in range(len(m))])
            else:
                scores = torch.stack([s[b, t] @ a.key(m[j]) for j in range(len(m))])
            torch.testing.assert_close(weights[b, t, : lengths[b]], torch.softmax(scores, 0))
    alone = net.start(source[1:, :3], lengths[1:])
    torch.testing.assert_close(net.decode(previous[1:], alone)[0], net.decode(previous, state)[0][1:])


@pytest.mark.parametrize("cell, feeding", [("gru", True), ("lstm", False)])
def test_beam_of_one_is_greedy_and_scores_are_summed_log_probs(cell, feeding):
    net = tiny_net(cell=cell, input_feeding=feeding)
    source, lengths = torch.randint(4, 7, (4, 6)), torch.tensor([6, 4, 5, 2])
    for (beam_ids, beam_score), (ids, score) in zip(beam_search(net, source, lengths, 1, 12), greedy(net, source, lengths, 12)):
        assert beam_ids == ids and beam_score == pytest.approx(score, abs=1e-5)
    for row, (ids, score) in enumerate(beam_search(net, source, lengths, 3, 12)):
        with torch.no_grad():
            state = net.start(source[row : row + 1, : lengths[row]], lengths[row : row + 1])
            logits, _, _ = net.decode(torch.tensor([[BOS] + ids]), state)
        log_probs = torch.log_softmax(logits[0], -1)
        ended = len(ids) < 12
        chosen = ids + [EOS] if ended else ids
        assert score == pytest.approx(float(log_probs[torch.arange(len(chosen)), chosen].sum()), abs=1e-4)


def brute_force_best(net, source, max_length, alpha):
    """The best (normalised) hypothesis over every token sequence: ``max_length`` steps at most."""
    V, best = net.config.output_size, (float("-inf"), None, None)
    tokens = [k for k in range(V) if k not in (EOS, PAD, BOS)]  # the decoders never choose PAD or BOS
    for n in range(max_length + 1):
        for ids in itertools.product(tokens, repeat=n):
            ids = list(ids)
            ended = n < max_length
            chosen = ids + [EOS] if ended else ids
            logits, _, _ = net.decode(torch.tensor([[BOS] + ids]), net.start(source, None))
            raw = float(torch.log_softmax(logits[0], -1)[torch.arange(len(chosen)), chosen].sum())
            normalised = raw / len(chosen) ** alpha
            if normalised > best[0]:
                best = (normalised, raw, ids)
    return best


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_a_wide_beam_finds_the_brute_force_best(alpha):
    net = tiny_net(vocab=7, seed=3)
    source = torch.tensor([[4, 6, 5]])
    with torch.no_grad():
        _, raw, ids = brute_force_best(net, source, 3, alpha)
        found = beam_search(net, source, None, 125, 3, alpha)[0]
    assert found[0] == ids and found[1] == pytest.approx(raw, abs=1e-5)


def test_translation_scores_are_sacrebleus():
    pytest.importorskip("sacrebleu")
    from rnnkit.metrics import translation_scores

    refs = ["The cat sat on the mat.", "It was not unexpected at all."]
    assert translation_scores(refs, refs) == {"bleu": pytest.approx(100.0), "chrf": pytest.approx(100.0), "exact_match": 1.0}
    wrong = translation_scores(refs, ["Dogs run.", "Nothing here matches."])
    assert wrong["bleu"] < 5 and wrong["exact_match"] == 0.0
    half = translation_scores(refs, ["The cat sat on the mat.", "Dogs run."])
    assert 0 < half["bleu"] < 100 and half["exact_match"] == 0.5


def reversal_file(path, n=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    lines = []
    for _ in range(n):
        word = "".join("abcd"[int(k)] for k in torch.randint(0, 4, (int(torch.randint(2, 6, (1,), generator=g)),),
                                                                generator=g))
        lines.append(f"{word}\t{word[::-1]}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_tiny_translator_learns_to_reverse_strings(tmp_path):
    config = Seq2SeqConfig(tokens="char", val_fraction=0.15, test_fraction=0.15, batch_size=32, beam=3,
                           label_smoothing=0.0)
    t = Translator(config, ModelConfig(cell="gru", embedding_dim=16, hidden_size=32, bidirectional=True),
                   TrainConfig(epochs=25, lr=0.01, log_every=0))
    t.fit(str(reversal_file(tmp_path / "rev.tsv")), out=str(tmp_path / "run"))
    report = t.evaluate(split="test", beam=3)
    assert report["exact_match"] > 0.9 and report["chrf"] > 80  # one-word sentences: BLEU's 4-grams say nothing
    assert t.translate(["abcd", "dda"]) == ["dcba", "add"]


def test_cli_train_evaluate_predict_and_plot(tmp_path, capsys):
    pytest.importorskip("sacrebleu")
    run = tmp_path / "run"
    data = reversal_file(tmp_path / "rev.tsv", n=120)
    rc, out, err = run_cli(capsys, "train", "seq2seq", "--data", data, "--out", run, "--tokens", "char",
                           "--embedding-dim", "8", "--hidden-size", "8", "--max-steps", "4", "--batch-size", "16",
                           "--quiet")
    assert rc == 0, err
    rc, out, err = run_cli(capsys, "evaluate", run, "--split", "test", "--json", "--beam", "2")
    report = json.loads(out)
    assert rc == 0 and {"loss", "perplexity", "bleu", "chrf", "exact_match"} <= set(report)
    assert report["decoder"] == "beam search, width 2" and 0 <= report["bleu"] <= 100
    png = tmp_path / "attention.png"
    rc, out, err = run_cli(capsys, "predict", run, "--text", "abc", "dcb", "--plot", png)
    assert rc == 0 and len(out.splitlines()) == 2 and png.read_bytes()[:4] == b"\x89PNG"
    bad = tmp_path / "bad.tsv"
    bad.write_text("abc\tcba\nabc\n", encoding="utf-8")
    rc, out, err = run_cli(capsys, "train", "seq2seq", "--data", bad, "--out", tmp_path / "run2", "--tokens", "char")
    assert rc == 2 and f"{bad}:2: expected a source sentence" in err


@pytest.mark.parametrize("cell, feeding", [("gru", True), ("lstm", False)])
def test_onnx_encoder_and_decoder_step_decode_as_the_network(tmp_path, capsys, cell, feeding):
    ort = pytest.importorskip("onnxruntime")
    import numpy as np

    from rnnkit.export import export_onnx
    from rnnkit.runs import open_run

    run = tmp_path / "run"
    flags = ["--input-feeding", "true" if feeding else "false"]
    rc, _, err = run_cli(capsys, "train", "seq2seq", "--data", reversal_file(tmp_path / "rev.tsv", n=80), "--out", run,
                         "--tokens", "char", "--cell", cell, "--embedding-dim", "8", "--hidden-size", "8",
                         "--bidirectional", *flags, "--max-steps", "2", "--batch-size", "16", "--quiet")
    assert rc == 0, err
    first, side = export_onnx(run)
    meta = json.loads(side.read_text())
    assert set(meta["graphs"]) == {"encoder", "decoder_step"} and meta["decoding"]["eos"] == EOS
    encoder = ort.InferenceSession(str(run / meta["graphs"]["encoder"]["model_file"]), providers=["CPUExecutionProvider"])
    step = ort.InferenceSession(str(run / meta["graphs"]["decoder_step"]["model_file"]), providers=["CPUExecutionProvider"])
    source, lengths = torch.tensor([[4, 5, 6, 7], [6, 5, 0, 0], [7, 7, 4, 0]]), torch.tensor([4, 2, 3])
    start = encoder.run(None, {"source": source.numpy(), "lengths": lengths.numpy()})
    memory, keys, mask, *state = start
    previous, tokens = np.full(3, BOS, dtype=np.int64), []
    names = [i["name"] for i in meta["graphs"]["decoder_step"]["inputs"]][4:]
    for _ in range(8):
        log_probs, _, *state = step.run(None, {"previous": previous, "memory": memory, "keys": keys, "mask": mask,
                                               **dict(zip(names, state))})
        log_probs[:, [PAD, BOS]] = -np.inf  # as the decoders do
        previous = log_probs.argmax(-1)
        tokens.append(previous)
    net = open_run(run).build_model()
    want = greedy(net, source, lengths, 8)
    for row, (ids, _) in enumerate(want):
        got = [int(t[row]) for t in tokens]
        got = got[: got.index(EOS)] if EOS in got else got
        assert got == ids
