"""textgen: data streams, full-pass metrics, the stateful sampler, presets and the sample CLI."""

import math

import pytest
import torch
import torch.nn.functional as F

import rnnkit
from rnnkit import native
from rnnkit.cli.main import main as cli_main
from rnnkit.data.text import CharVocab, TextStream, WordVocab, split_text
from rnnkit.errors import UserError
from rnnkit.models import ModelConfig, SequenceModel
from rnnkit.tasks.textgen import (TASK, TextgenConfig, TextGenerator, _Stepper, bundled_text, filter_logits,
                                  full_pass_metrics, prepare_text)

TEXT = "the cat sat on the mat. the dog ate the hat! " * 6


def _generator(cell="lstm", layers=2, hidden=16, seed=0, text=TEXT) -> TextGenerator:
    torch.manual_seed(seed)
    vocab = CharVocab.from_text(text)
    model = SequenceModel(ModelConfig(cell=cell, hidden_size=hidden, num_layers=layers, embedding_dim=8,
                                      input_size=len(vocab), output_size=len(vocab)))
    return TextGenerator.from_model(model, vocab)


# -- data --------------------------------------------------------------------------------------
def test_vocab_round_trip_and_word_level():
    v = CharVocab.from_text("hello world")
    assert v.tokens == [" ", "d", "e", "h", "l", "o", "r", "w"]
    assert v.decode(v.encode("world")) == "world"
    assert CharVocab.from_dict(v.to_dict()).tokens == v.tokens
    w = WordVocab.from_text("To be, or not to be.")
    assert w.decode(w.encode("to be, or not")) == "to be, or not"
    assert isinstance(CharVocab.from_dict(w.to_dict()), WordVocab)


def test_split_by_position():
    ids = torch.arange(100)
    train, val = split_text(ids, 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))
    assert split_text(ids, 0.0)[1] is None


def test_streams_are_contiguous_and_deterministic():
    ids = torch.arange(1000)
    s = TextStream(ids, batch_size=4, seq_len=10)
    batches = list(s.epoch(3, seed=7))
    assert len(batches) == len(s) == 24  # 999 pairs // (4 * 10)
    for a, b in zip(batches, batches[1:]):
        assert torch.equal(b.inputs[:, 0], a.inputs[:, -1] + 1)  # row i continues row i
        assert b.carries_state
    assert all(torch.equal(b.targets, b.inputs + 1) for b in batches)
    again = list(s.epoch(3, seed=7))
    assert all(torch.equal(a.inputs, b.inputs) for a, b in zip(batches, again))
    offsets = {int(next(iter(s.epoch(e, 7))).inputs[0, 0]) for e in range(20)}
    assert len(offsets) > 1 and max(offsets) <= 999 - 4 * 240


def test_ordered_pass_visits_every_pair_once():
    ids = torch.arange(50)
    s = TextStream(ids, batch_size=1, seq_len=8, shuffle=False)
    inputs = torch.cat([b.inputs for b in s.epoch(0, 0)], dim=1)
    assert inputs.tolist() == [list(range(49))]


def test_windows_cover_every_offset():
    s = TextStream(torch.arange(11), batch_size=4, seq_len=5, mode="windows")
    starts = sorted(int(b.inputs[i, 0]) for b in s.epoch(0, 1) for i in range(b.size))
    assert starts == list(range(6))


# -- metrics -------------------------------------------------------------------------------------
def test_validation_pass_matches_direct_computation():
    gen = _generator()
    prep = prepare_text(TextgenConfig(val_fraction=0.5), TEXT)
    val_ids = gen.vocab.encode(TEXT)[len(TEXT) - len(TEXT) // 2:]
    with torch.no_grad():
        logits, _ = gen.model(val_ids[:-1].view(1, -1))  # one run over the whole validation text
        direct = F.cross_entropy(logits[0].double(), val_ids[1:]).item()
    m = TASK.evaluate(gen.model, prep.val)
    assert m["tokens"] == len(val_ids) - 1
    assert m["loss"] == pytest.approx(direct, rel=1e-6)
    chunked = full_pass_metrics(gen.model, TextStream(val_ids, 1, 7, shuffle=False).epoch(0, 0))
    assert chunked["loss"] == pytest.approx(direct, rel=1e-6)  # state carried across 7-step chunks
    assert m["bits_per_char"] == pytest.approx(m["nats_per_char"] / math.log(2), rel=1e-12)
    assert m["perplexity"] == pytest.approx(math.exp(m["nats_per_char"]))


# -- sampling ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell,native_kernels", [("lstm", True), ("lstm", False), ("gru", True), ("rnn", True)])
def test_stepper_matches_full_forward(cell, native_kernels, monkeypatch):
    if not native_kernels:  # the LSTM's torch.lstm_cell way
        monkeypatch.setattr(native, "kernels_for", lambda name, like: None)
    gen = _generator(cell)
    ids = gen.vocab.encode("the cat sat")
    step = _Stepper(gen.model)
    assert step.direct
    assert (step.kernel is not None) == (cell == "lstm" and native_kernels and native.unavailable_reason() is None)
    _assert_steps_equal_full_forward(gen.model, step, ids)


def _assert_steps_equal_full_forward(model, step, ids):
    """Feeding ids[0] through the model, then ids[1:] one step at a time, gives the full run's logits."""
    with torch.no_grad():
        full, _ = model(ids.view(1, -1))
        _, state = model(ids[:1].view(1, -1))
        state = step.split_state(state)
        logits = []
        for t in range(1, len(ids)):
            out, state = step(ids[t : t + 1], state)
            logits.append(out)
    torch.testing.assert_close(torch.stack(logits, 1), full[:, 1:], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(native.unavailable_reason() is not None, reason="the LSTM sampling step needs the native kernels")
@pytest.mark.parametrize("bias", [True, False])
def test_native_lstm_sampling_step_equals_the_layer_in_float64(bias):
    """The joined-weights native step (gates reordered, g doubled, c carried as -2c) for a
    batch of 3 streams, checked step by step against the model's own layer in float64."""
    torch.manual_seed(1)
    vocab = CharVocab.from_text(TEXT)
    model = SequenceModel(ModelConfig(cell="lstm", hidden_size=20, num_layers=2, embedding_dim=6,
                                      input_size=len(vocab), output_size=len(vocab)))
    if not bias:
        model.rnn = rnnkit.Recurrent("lstm", 6, 20, 2, bias=False)
    model = model.double().eval()
    step = _Stepper(model)
    assert step.kernel is not None
    tokens = torch.tensor([[1, 4, 2, 7, 3], [0, 0, 5, 5, 1], [6, 2, 2, 3, 4]])
    with torch.no_grad():
        full, _ = model(tokens)
        _, state = model(tokens[:, :1])
        state = step.split_state(state)
        for t in range(1, tokens.shape[1]):
            out, state = step(tokens[:, t], state)
            torch.testing.assert_close(out, full[:, t], rtol=1e-12, atol=1e-12)


def test_sampling_is_deterministic_with_a_seed():
    gen = _generator()
    a = gen.sample("the", 40, temperature=1.0, seed=3)
    assert a == gen.sample("the", 40, temperature=1.0, seed=3)
    assert a.startswith("the") and len(a) == 43
    assert a != gen.sample("the", 40, temperature=1.0, seed=4)
    many = gen.sample("the", 20, seed=3, num_samples=5)
    assert isinstance(many, list) and len(many) == 5 and len(set(many)) > 1
    assert gen.sample("the", 20, temperature=0) == gen.sample("the", 20, temperature=0, seed=9)


def _fixed_distribution_generator(logits):
    """A model whose next-token logits are ``logits`` whatever the input (head weight 0)."""
    text = "abcdefgh"
    gen = _generator(text=text)
    with torch.no_grad():
        gen.model.head.weight.zero_()
        gen.model.head.bias.copy_(torch.tensor(logits))
    return gen


def test_top_k_and_top_p_only_emit_allowed_characters():
    probs = torch.tensor([0.30, 0.25, 0.15, 0.10, 0.08, 0.06, 0.04, 0.02])
    gen = _fixed_distribution_generator(probs.log().tolist())
    out = gen.sample("a", 400, top_k=3, seed=0, num_samples=4)
    assert set("".join(s[1:] for s in out)) == set("abc")
    out = gen.sample("a", 400, top_p=0.6, seed=0, num_samples=4)  # mass before c is 0.55 < 0.6 -> keep a, b, c
    assert set("".join(s[1:] for s in out)) == set("abc")
    out = gen.sample("a", 400, top_p=0.5, seed=0, num_samples=4)  # mass before b is 0.30 < 0.5 -> keep a, b
    assert set("".join(s[1:] for s in out)) == set("ab")
    assert gen.sample("a", 50, top_k=1, seed=0) == "a" * 51
    assert gen.sample("a", 10, temperature=0) == "a" * 11


def test_filter_logits_hand_computed():
    z = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    assert torch.isinf(filter_logits(z, 2, None)).tolist() == [[False, False, True, True]]
    p = z.softmax(-1)[0]  # 0.644, 0.237, 0.087, 0.032
    kept = ~torch.isinf(filter_logits(z, None, float(p[0] + 0.01)))
    assert kept.tolist() == [[True, True, False, False]]


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.5, 0.3, 0.2, 0, 0, 0, 0, 0]) + 1e-9
    gen = _fixed_distribution_generator(probs.log().tolist())
    out = "".join(gen.sample("a", 500, seed=1, num_samples=8))
    counts = torch.tensor([out.count(c) for c in "abc"], dtype=torch.float64) / len(out)
    torch.testing.assert_close(counts, torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), atol=0.03, rtol=0)


@pytest.mark.parametrize("filtered", [False, True])
def test_temperature_sharpens_the_distribution(filtered):
    """T = 0.5 draws from p^2 / sum(p^2), with and without the top-k filter (two code paths)."""
    probs = torch.tensor([0.5, 0.3, 0.2, 0, 0, 0, 0, 0]) + 1e-9
    gen = _fixed_distribution_generator(probs.log().tolist())
    out = "".join(gen.sample("a", 500, temperature=0.5, seed=2, num_samples=8, top_k=3 if filtered else None))
    counts = torch.tensor([out.count(c) for c in "abc"], dtype=torch.float64) / len(out)
    expected = torch.tensor([0.25, 0.09, 0.04], dtype=torch.float64) / 0.38
    torch.testing.assert_close(counts, expected, atol=0.03, rtol=0)


def test_unknown_prime_characters_are_a_user_error():
    gen = _generator()
    with pytest.raises(UserError, match=r"prime has 2 char\(s\) not in the model's vocabulary: 'Q', 'X'$"):
        gen.sample("the QX cat Q", 5)
    with pytest.raises(UserError, match="top_p must be in"):
        gen.sample("the", 5, top_p=0)
    with pytest.raises(UserError, match="prime must contain"):
        gen.sample("", 5)


# -- presets and CLI -----------------------------------------------------------------------------
def test_hello_world_preset_greedy_continues_world(tmp_path, capsys):
    out = tmp_path / "hello"
    assert cli_main(["train", "textgen", "--config", "configs/hello-world.json", "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli_main(["sample", str(out), "--prime", "hello", "--length", "6", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.strip() == "hello world"
    gen = rnnkit.load(out)
    assert isinstance(gen, TextGenerator)
    assert gen.sample("hello", 6, temperature=0) == "hello world"
    assert cli_main(["sample", str(out), "--prime", "hex", "--length", "3"]) == 2
    assert "prime has 1 char(s) not in the model's vocabulary: 'x'" in capsys.readouterr().err


def test_bundled_texts():
    assert bundled_text("hello-world") == "hello world"
    assert bundled_text("pangrams").startswith("The quick brown fox")
    with pytest.raises(UserError, match="unknown bundled text"):
        bundled_text("nope")

