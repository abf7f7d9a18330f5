"""Translation quality at a fixed training-time budget: an rnnkit seq2seq preset beside a
hand-written torch.nn encoder-decoder built as PyTorch's translation tutorial builds it, in one
process, on the same split and the same subword tokens.

    RNNKIT_DATA=../shared/data python benchmarks/seq2seq_quality.py eng-fra --json /tmp/en-fr.json
    RNNKIT_DATA=../shared/data python benchmarks/seq2seq_quality.py addition --runs preset

Data: the preset's own preparation (:func:`rnnkit.tasks.seq2seq.prepare_pairs`: the fixed hash
split, sentencepiece models trained on the training part, the length limit). Both models keep
the weights of their best validation BLEU (greedy) and read test once, at the end; BLEU and chrF
are sacrebleu's, cased, on detokenised text against the raw references.

``preset``: ``configs/NAME.json`` through the library (``rnnkit.Translator``), its time budget
set to ``--budget`` when given; test decoded with the preset's beam.

``baseline``: PyTorch's "NLP from scratch: translation with a sequence to sequence network and
attention" model: ``EncoderRNN`` (Embedding(V_s, 256), dropout 0.1, ``nn.GRU(256, 256)``),
``AttnDecoderRNN`` with Bahdanau attention (query: the decoder state, keys: the encoder outputs,
``Va(tanh(Wa q + Ua k))``), GRU input ``[embedding; context]``, ``Linear(256, V_t)``; teacher
forcing, NLL per target token (padding ignored, masked attention), Adam 1e-3, batch 64,
gradients clipped at 5, greedy decoding, a validation pass every ``--eval-every`` steps.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import rnnkit  # noqa: F401  (flush denormals before torch's first parallel op)
from benchmarks.budget_loop import train_for_budget
from rnnkit.data.pairs import tokenizer_from_dict
from rnnkit.metrics import translation_scores
from rnnkit.models import ModelConfig
from rnnkit.tasks.seq2seq import Seq2SeqConfig, Translator, prepare_pairs, read_named
from rnnkit.training.config import TrainConfig, from_dict, load_config_file

ROOT = Path(__file__).resolve().parents[1]
PAD, BOS, EOS = 0, 1, 2


def run_preset(name: str, budget: float | None) -> dict:
    path = ROOT / "configs" / f"{name}.json"
    d = load_config_file(path)
    train = {**d["train"], **({"time_budget": budget} if budget else {})}
    t = Translator(from_dict(Seq2SeqConfig, d["data"], str(path)), from_dict(ModelConfig, d["model"], str(path)),
                   from_dict(TrainConfig, train, str(path)))
    t0 = time.monotonic()
    t.fit(d["dataset"])
    seconds = time.monotonic() - t0
    test = t.evaluate(split="test")
    return {"val": t.metrics, "test": test, "steps": t.history.steps_taken, "stop": t.history.stop_reason,
            "fit_seconds": round(seconds, 1)}


# ------------------------------------------------------------------------------ the tutorial's model


class EncoderRNN(nn.Module):
    def __init__(self, vocab: int, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.embedding = nn.Embedding(vocab, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, source, lengths):  # (B, S) -> outputs (B, S, H), hidden (1, B, H)
        packed = nn.utils.rnn.pack_padded_sequence(self.dropout(self.embedding(source)), lengths, batch_first=True,
                                                   enforce_sorted=False)
        out, hidden = self.gru(packed)
        return nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=source.shape[1])[0], hidden


class AttnDecoderRNN(nn.Module):
    def __init__(self, vocab: int, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.embedding = nn.Embedding(vocab, hidden)
        self.Wa, self.Ua, self.Va = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 1)
        self.gru = nn.GRU(2 * hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)
        self.dropout = nn.Dropout(dropout)

    def step(self, token, hidden, keys, mask):  # (B,), (1, B, H), (B, S, H), (B, S) -> log-probs (B, V), hidden
        embedded = self.dropout(self.embedding(token)).unsqueeze(1)  # (B, 1, H)
        scores = self.Va(torch.tanh(self.Wa(hidden.transpose(0, 1)) + self.Ua(keys))).squeeze(-1)  # (B, S)
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)
        context = torch.bmm(weights.unsqueeze(1), keys)  # (B, 1, H)
        output, hidden = self.gru(torch.cat([embedded, context], -1), hidden)
        return F.log_softmax(self.out(output.squeeze(1)), -1), hidden


class Tutorial(nn.Module):
    def __init__(self, source_vocab: int, target_vocab: int):
        super().__init__()
        self.encoder, self.decoder = EncoderRNN(source_vocab), AttnDecoderRNN(target_vocab)

    def forward(self, source, lengths, previous):  # teacher forcing -> log-probs (B, T, V)
        keys, hidden = self.encoder(source, lengths)
        mask = torch.arange(source.shape[1]) < lengths.unsqueeze(1)
        steps = []
        for t in range(previous.shape[1]):
            log_probs, hidden = self.decoder.step(previous[:, t], hidden, keys, mask)
            steps.append(log_probs)
        return torch.stack(steps, 1)

    @torch.no_grad()
    def greedy(self, source, lengths, max_length):
        keys, hidden = self.encoder(source, lengths)
        mask = torch.arange(source.shape[1]) < lengths.unsqueeze(1)
        token, out = torch.full((source.shape[0],), BOS), []
        for _ in range(max_length):
            log_probs, hidden = self.decoder.step(token, hidden, keys, mask)
            token = log_probs.argmax(-1)
            out.append(token)
        rows = torch.stack(out, 1).tolist()
        return [row[: row.index(EOS)] if EOS in row else row for row in rows]


def batches(encoded, order, size=64):
    for i in range(0, len(order), size):
        rows = [encoded[j] for j in order[i : i + size]]
        S, T = max(len(s) for s, _ in rows), max(len(t) for _, t in rows) + 1
        source, previous, target = (torch.zeros(len(rows), n, dtype=torch.int64) for n in (S, T, T))
        for b, (s, t) in enumerate(rows):
            source[b, : len(s)] = torch.tensor(s)
            previous[b, : len(t) + 1] = torch.tensor([BOS] + t)
            target[b, : len(t) + 1] = torch.tensor(t + [EOS])
        yield source, torch.tensor([len(s) for s, _ in rows]), previous, target


def scores(model, encoded, references, tokenizer, max_length) -> dict:
    model.eval()
    hyps = []
    for source, lengths, _, _ in batches(encoded, list(range(len(encoded))), 256):
        hyps += [tokenizer.decode(ids) for ids in model.greedy(source, lengths, max_length)]
    model.train()
    return translation_scores(references, hyps)


def run_baseline(name: str, budget: float, eval_every: int, seed: int = 0) -> dict:
    path = ROOT / "configs" / f"{name}.json"
    d = load_config_file(path)
    config = from_dict(Seq2SeqConfig, d["data"], str(path))
    parts, state, _ = prepare_pairs(config, read_named(config, d["dataset"])[0])
    sizes = [tokenizer_from_dict(state[k]).size for k in ("source_tokenizer", "target_tokenizer")]
    target_tokenizer = tokenizer_from_dict(state["target_tokenizer"])
    torch.manual_seed(seed)
    model = Tutorial(*sizes)
    train = parts["train"][0]

    def loss_of(batch):
        source, lengths, previous, target = batch
        log_probs = model(source, lengths, previous)
        return F.nll_loss(log_probs.flatten(0, 1), target.flatten(), ignore_index=PAD)

    run = train_for_budget(model, lambda: batches(train, torch.randperm(len(train)).tolist()), loss_of,
                           lambda: scores(model, *parts["val"], target_tokenizer, config.max_length)["bleu"], budget,
                           eval_every)
    return {"val_bleu": run["val"], "test": scores(model, *parts["test"], target_tokenizer, config.max_length),
            "steps": run["steps"], "train_seconds": run["train_seconds"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("preset")
    p.add_argument("--runs", default="preset,baseline")
    p.add_argument("--budget", type=float, default=None, help="training seconds (default: the preset's time_budget)")
    p.add_argument("--eval-every", type=int, default=2000, help="baseline validation interval in steps")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(2)
    budget = args.budget or load_config_file(ROOT / "configs" / f"{args.preset}.json")["train"]["time_budget"]
    out = {"preset": args.preset, "budget_s": budget, "torch": torch.__version__}
    for run in args.runs.split(","):
        out[run] = run_preset(args.preset, budget) if run == "preset" else run_baseline(args.preset, budget,
                                                                                        args.eval_every)
        print(json.dumps(out, indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
