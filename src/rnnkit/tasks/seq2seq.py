"""Sequence to sequence (translation): ``Translator`` and the ``seq2seq`` task.

Data (:mod:`rnnkit.data.pairs`): ``eng-fra`` (Tatoeba English-French pairs), ``addition`` (Keras'
addition problems, generated), or a tab-separated FILE (source, tab, target; further columns
ignored). ``--reverse`` swaps the sides. The fixed split puts a pair in train, val or test by a
hash of its source sentence (90/5/5 by default). Tokens are sentencepiece subwords (one model per
side, trained on the training part, at most ``vocab_size`` pieces) or characters; pairs with
more than ``max_length`` tokens on either side are left out of every part (counted in the
artifact's data info).

The network and its equations: :mod:`rnnkit.tasks.seq2seq_model` (encoder, attention, decoder
with input feeding, tied target embeddings); decoding: :mod:`rnnkit.tasks.seq2seq_search`
(greedy, beam search with length normalisation).

Metrics (``evaluate``): ``loss`` (cross-entropy per target token, EOS included, no label
smoothing), ``perplexity``, ``bleu`` and ``chrf`` (sacrebleu's corpus scores, 0-100, cased, on
the detokenised text against the raw references), ``exact_match`` (a fraction). Validation
during training decodes greedily; ``rnnkit evaluate`` uses the preset's ``beam``.

Command line::

    rnnkit train seq2seq --data eng-fra --out runs/en-fr --config configs/eng-fra.json
    rnnkit evaluate runs/en-fr --split test --json [--beam 5]
    rnnkit predict runs/en-fr --text "I am cold." [--plot attention.png]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.data.batching import Batch, BucketedBatches
from rnnkit.data.pairs import TOKENIZERS, addition_pairs, read_pairs, split_part, tokenizer_from_dict, tutorial_subset
from rnnkit.errors import UserError, check_at_least
from rnnkit.models import ModelConfig
from rnnkit.tasks.base import BatchSource, PreparedData, Task
from rnnkit.tasks.classify import Classifier
from rnnkit.tasks.seq2seq_model import ATTENTIONS, BOS, EOS, PAD, Seq2SeqNet, export_graphs, seq2seq_model_config
from rnnkit.tasks.seq2seq_search import translate_ids


def _choice(default: str, choices: tuple, help: str):
    return field(default=default, metadata={"choices": choices, "help": help})


@dataclass
class Seq2SeqConfig:
    """Data and network options of the seq2seq task (each one a CLI flag and a preset key)."""

    tokens: str = _choice("subword", tuple(TOKENIZERS), "subword: sentencepiece pieces; char: characters")
    vocab_size: int = 8000  # subword pieces per side, at most
    max_length: int = 50  # tokens per side; longer pairs are left out; also the decoding limit
    reverse: bool = False  # translate the second column into the first
    tutorial_filter: bool = False  # keep only the PyTorch tutorial's pairs (rnnkit.data.pairs.tutorial_subset)
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    problems: int = 50000  # addition: distinct problems generated
    digits: int = 3  # addition: digits per number, at most
    data_seed: int = 0  # addition: seeds the problems
    attention: str = _choice("additive", ATTENTIONS, "additive (Bahdanau) or multiplicative (Luong)")
    input_feeding: bool = True  # the decoder reads its last attentional vector
    tie_embeddings: bool = True  # the output layer shares the target embedding
    label_smoothing: float = 0.1
    beam: int = 5  # beam width of evaluate and predict (1: greedy)
    length_penalty: float = 1.0  # finished hypotheses ranked by score / length ** this
    batch_size: int = 64  # sentence pairs per batch

    def __post_init__(self):
        for name in ("val_fraction", "test_fraction", "label_smoothing"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        check_at_least(self, 1, ("vocab_size", "max_length", "problems", "digits", "beam", "batch_size"), UserError)


# ----------------------------------------------------------------------------------------- data


@dataclass
class PairBatch(Batch):
    """A batch of sentence pairs: inputs (B, 2, N) (source ids; BOS + target ids), targets (B, T)
    (target ids + EOS, PAD after), lengths (B,) source lengths, ``references`` the B raw targets."""

    references: tuple = ()


def pair_source(encoded: list, references: list, batch_size: int, shuffle: bool) -> Optional[BucketedBatches]:
    """Length-bucketed batches of ``encoded`` [(source ids, target ids)] (by source length)."""
    if not encoded:
        return None

    def make_batch(indices):
        rows = [encoded[i] for i in indices]
        N = max(max(len(s), len(t) + 1) for s, t in rows)
        x = torch.zeros(len(rows), 2, N, dtype=torch.int64)
        y = torch.zeros(len(rows), max(len(t) for _, t in rows) + 1, dtype=torch.int64)
        for b, (s, t) in enumerate(rows):
            x[b, 0, : len(s)] = torch.tensor(s)
            x[b, 1, : len(t) + 1] = torch.tensor([BOS] + t)
            y[b, : len(t) + 1] = torch.tensor(t + [EOS])
        lengths = torch.tensor([len(s) for s, _ in rows])
        return PairBatch(x, y, lengths, references=tuple(references[i] for i in indices))

    return BucketedBatches([len(s) for s, _ in encoded], batch_size, make_batch, shuffle=shuffle)


def read_named(config: Seq2SeqConfig, data: str) -> tuple[list, dict]:
    """(pairs, data info) of ``eng-fra``, ``addition`` or a file."""
    from rnnkit.data import sources

    if data == "addition":
        return addition_pairs(config.problems, config.digits, config.data_seed), {"name": "addition"}
    path = sources.resolve(data)
    return read_pairs(path), {"name": str(data), "sha256": sources.sha256_file(path)}


def prepare_pairs(config: Seq2SeqConfig, pairs: list) -> tuple[dict, dict, dict]:
    """({part: (encoded pairs, raw targets)}, task state, counts) from (source, target) pairs."""
    if config.tutorial_filter:
        pairs = tutorial_subset(pairs)
    if config.reverse:
        pairs = [(t, s) for s, t in pairs]
    parts: dict = {"train": [], "val": [], "test": []}
    for s, t in pairs:
        parts[split_part(s, config.val_fraction, config.test_fraction)].append((s, t))
    if not parts["train"]:
        raise UserError("no sentence pair fell in the training part")
    tokenizer = TOKENIZERS[config.tokens]
    source = tokenizer.train([s for s, _ in parts["train"]], config.vocab_size)
    target = tokenizer.train([t for _, t in parts["train"]], config.vocab_size)
    out, counts = {}, {}
    for part, rows in parts.items():
        encoded = [(source.encode(s), target.encode(t), t) for s, t in rows]
        kept = [(s, t, raw) for s, t, raw in encoded if 1 <= len(s) <= config.max_length and len(t) <= config.max_length]
        out[part] = ([(s, t) for s, t, _ in kept], [raw for _, _, raw in kept])
        counts[f"{part}_pairs"], counts[f"{part}_too_long"] = len(kept), len(rows) - len(kept)
    state = {"source_tokenizer": source.to_dict(), "target_tokenizer": target.to_dict(), "max_length": config.max_length,
             "network": {"attention": config.attention, "input_feeding": config.input_feeding,
                         "tie_embeddings": config.tie_embeddings}}
    return out, state, counts


# ----------------------------------------------------------------------------------------- task


def token_loss(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0, reduction: str = "mean") -> Tensor:
    """Cross-entropy of logits (B, T', V) against targets (B, T) (PAD ignored) per target token."""
    T = min(logits.shape[1], targets.shape[1])
    return F.cross_entropy(logits[:, :T].flatten(0, 1).float(), targets[:, :T].flatten(), ignore_index=PAD,
                           label_smoothing=label_smoothing, reduction=reduction)


def translation_pass(net: Seq2SeqNet, batches: Iterable[Batch], target_tokenizer, beam: int = 1, max_length: int = 50,
                     length_penalty: float = 1.0) -> tuple[list, list, float, int]:
    """(references, translations, summed token loss, target tokens) of one pass, in batch order."""
    was_training = net.training
    net.eval()
    refs, hyps, loss_sum, tokens = [], [], 0.0, 0
    device = next(net.parameters()).device
    try:
        with torch.no_grad():
            for batch in batches:
                batch = batch.to(device)  # lengths stay on the CPU
                logits, _ = net(batch.inputs, None, batch.lengths)
                loss_sum += float(token_loss(logits, batch.targets, reduction="sum"))
                tokens += int((batch.targets != PAD).sum())
                source = batch.inputs[:, 0, : int(batch.lengths.max())]
                found = translate_ids(net, source, batch.lengths, beam, max_length, length_penalty)
                hyps += [target_tokenizer.decode(ids) for ids, _ in found]
                refs += list(batch.references)
    finally:
        net.train(was_training)
    return refs, hyps, loss_sum, tokens


def translation_report(refs: list, hyps: list, loss_sum: float, tokens: int) -> dict:
    """``loss``, ``perplexity``, ``bleu``, ``chrf`` (0-100) and ``exact_match`` (a fraction)."""
    from rnnkit import metrics

    loss = loss_sum / tokens if tokens else float("nan")
    scores = metrics.translation_scores(refs, hyps)
    return {"loss": loss, "perplexity": metrics.perplexity(loss), **scores}


class Seq2SeqTask(Task):
    name = "seq2seq"
    Config = Seq2SeqConfig
    takes_lengths = True
    serve_input = "pairs"

    def prepare(self, config: Seq2SeqConfig, data: str, seed: int = 0) -> PreparedData:
        pairs, info = read_named(config, data)
        parts, state, counts = prepare_pairs(config, pairs)
        made = {part: pair_source(*parts[part], config.batch_size, part == "train") for part in parts}
        return PreparedData(made["train"], made["val"], made["test"], state, {**info, **counts})

    def model_config(self, task_state: dict, config: Seq2SeqConfig, model: ModelConfig) -> ModelConfig:
        sizes = [tokenizer_from_dict(task_state[k]).size for k in ("source_tokenizer", "target_tokenizer")]
        return seq2seq_model_config(model, *sizes)

    def build_model(self, model_config: ModelConfig, task_state: dict) -> Seq2SeqNet:
        net = Seq2SeqNet(model_config, **task_state["network"])
        net.target_tokenizer = tokenizer_from_dict(task_state["target_tokenizer"])  # so evaluate() can spell
        net.max_length = int(task_state["max_length"])
        return net

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        return token_loss(outputs, batch.targets)

    def loss_fn(self, config: Seq2SeqConfig, model=None):
        """Cross-entropy per target token with the config's label smoothing."""
        return lambda outputs, batch: token_loss(outputs, batch.targets, config.label_smoothing)

    def evaluate(self, model: Seq2SeqNet, batches: Iterable[Batch]) -> dict:
        """The report with greedy decoding (what validation during training reads)."""
        return translation_report(*translation_pass(model, batches, model.target_tokenizer, 1, model.max_length))

    def ensemble_key(self, task_state: dict) -> dict:
        raise UserError("task 'seq2seq' has no ensembles yet")

    def export_graphs(self, model: Seq2SeqNet) -> dict:
        """The encoder and one decoder step (:func:`rnnkit.tasks.seq2seq_model.export_graphs`)."""
        return export_graphs(model)

    def export_extras(self, model: Seq2SeqNet) -> dict:
        """How to decode with the two graphs."""
        return {"decoding": {"bos": BOS, "eos": EOS, "pad": PAD, "max_length": model.max_length,
                             "steps": "encoder(source, lengths) gives the first state; feed decoder_step the last "
                                      "token (BOS first) and the state, then its *_out state, until EOS; "
                                      "never choose PAD or BOS"}}

    def load(self, artifact) -> "Translator":
        return Translator.from_artifact(artifact)

    def add_arguments(self, verb: str, parser) -> None:
        if verb in ("evaluate", "predict"):
            parser.add_argument("--beam", type=int, default=None, help="beam width (default: the run's; 1: greedy)")
        if verb == "predict":
            given = parser.add_mutually_exclusive_group(required=True)
            given.add_argument("--text", nargs="+", help="sentences to translate")
            given.add_argument("--input", help="a text file, one sentence per line")
            parser.add_argument("--plot", default=None, help="PNG of the attention weights of the --text sentences")

    def run_verb(self, verb: str, facade: "Translator", args) -> Optional[int]:
        beam = args.beam if getattr(args, "beam", None) else facade.config.beam
        if verb == "predict":
            texts = args.text if args.text else read_lines(Path(args.input))
            for text in facade.translate(texts, beam):
                print(text)
            if args.plot:
                facade.plot_attention(texts[:4], args.plot)
            return 0
        if verb == "evaluate":
            if beam > 1:
                net = facade.model
                report = translation_report(*translation_pass(net, args.evaluation_source.epoch(0, 0),
                                                              net.target_tokenizer, beam, net.max_length,
                                                              facade.config.length_penalty))
                args.metrics.update(report, decoder=f"beam search, width {beam}")
            return 0
        return super().run_verb(verb, facade, args)


def read_lines(path: Path) -> list[str]:
    from rnnkit.data.pairs import normalise

    try:
        lines = [normalise(line) for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read UTF-8 text: {exc}") from None
    lines = [line for line in lines if line]
    if not lines:
        raise UserError(f"{path}: no sentences")
    return lines


TASK = Seq2SeqTask()


# --------------------------------------------------------------------------------------- facade


class Translator(Classifier):
    """Translate sentences: ``fit``, ``translate``, ``evaluate``, ``plot_attention``; what
    ``rnnkit.load`` returns for a seq2seq run. ``config``: :class:`Seq2SeqConfig`; ``model``: the
    recurrent options (a bidirectional encoder by default); ``train``: a ``TrainConfig``."""

    task = TASK

    def __init__(self, config: Optional[Seq2SeqConfig] = None, model: Optional[ModelConfig] = None, train=None):
        super().__init__(config, model or ModelConfig(cell="gru", bidirectional=True), train)

    def fit(self, data: str, out: Optional[str] = None, callbacks=()) -> "Translator":
        """Train on ``data`` (``eng-fra``, ``addition`` or a tab-separated file) with the shared
        Trainer; ``metrics`` becomes the greedy report on validation."""
        return self._fit(data, None, out, callbacks)

    def _report(self, source: BatchSource, beam: int = 1) -> dict:
        net = self._require()[0]
        return translation_report(*translation_pass(net, source.epoch(0, 0), net.target_tokenizer, beam, net.max_length,
                                                    self.config.length_penalty))

    def _encode(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        from rnnkit.data.pairs import normalise

        state = self._require()[1]
        tokenizer = tokenizer_from_dict(state["source_tokenizer"])
        ids = [tokenizer.encode(normalise(t))[: state["max_length"]] or [3] for t in texts]
        x = torch.zeros(len(ids), max(len(i) for i in ids), dtype=torch.int64)
        for row, i in enumerate(ids):
            x[row, : len(i)] = torch.tensor(i)
        return x, torch.tensor([len(i) for i in ids])

    def translate(self, texts: Sequence[str], beam: Optional[int] = None) -> list[str]:
        """The translation of each sentence (beam search of width ``beam``, the run's by default)."""
        net = self._require()[0]
        if isinstance(texts, str):
            raise UserError("translate expects a list of sentences")
        device = next(net.parameters()).device
        out = []
        for start in range(0, len(texts), 64):
            x, lengths = self._encode(texts[start : start + 64])
            found = translate_ids(net, x.to(device), lengths, beam or self.config.beam, net.max_length,
                                  self.config.length_penalty)
            out += [net.target_tokenizer.decode(ids) for ids, _ in found]
        return out

    def attention(self, text: str, beam: Optional[int] = None) -> tuple[list, list, Tensor]:
        """(source pieces, translation pieces + EOS, weights (T, S)) of one sentence's translation."""
        net, state = self._require()
        x, lengths = self._encode([text])
        x = x.to(next(net.parameters()).device)
        ids = translate_ids(net, x, lengths, beam or self.config.beam, net.max_length, self.config.length_penalty)[0][0]
        previous = torch.tensor([[BOS] + ids], device=x.device)
        with torch.no_grad():
            net.eval()
            _, _, weights = net.decode(previous, net.start(x, lengths))
        source = tokenizer_from_dict(state["source_tokenizer"])
        return source.pieces(x[0].tolist()), net.target_tokenizer.pieces(ids) + ["</s>"], weights[0].cpu()

    def plot_attention(self, texts: Sequence[str], path) -> None:
        """A PNG of the attention weights of each sentence's translation (one panel each)."""
        from rnnkit import plots
        from rnnkit.artifacts import write_file_atomic

        write_file_atomic(Path(path), plots.attention_png([self.attention(t) for t in texts]))

    def evaluate(self, data: Optional[str] = None, split: str = "test", beam: Optional[int] = None) -> dict:
        """The report on the ``split`` part of ``data`` (by default the data it was trained on),
        decoded by beam search of width ``beam`` (the run's by default; 1: greedy)."""
        return self._report_on(data, split, lambda source: self._report(source, beam or self.config.beam),
                               "eng-fra, addition or a tab-separated file")
