"""Sequence labelling (NER, POS): ``Tagger`` and the ``tag`` task, a BiLSTM-CRF.

Data, tag schemes and the task state: :mod:`rnnkit.tasks.tag_data` (named datasets
``conll2003``, ``wnut17``, ``ud-en-ewt``, a directory of train/dev/test files, or one CoNLL or
CoNLL-U file split at random). The network and its equations: :mod:`rnnkit.tasks.tag_model`
(word vectors + a character BiLSTM per word -> bidirectional recurrent layers -> tag scores ->
CRF, or a softmax per token with ``decoder=softmax``). The word-level layers are always
bidirectional (a tagger reads the whole sentence), with the user's ``ModelConfig`` otherwise
(cell, hidden_size, num_layers, dropouts); ``ModelConfig.embedding_dim`` is not used:
``word_dim`` is the word vectors' width.

Metrics (``evaluate``; every figure a fraction): for entity tags (BIO / IOB1 / BIOES files)
``loss``, ``f1``, ``precision``, ``recall`` of whole entities (conlleval's rules,
:func:`rnnkit.metrics.entity_scores`) and token ``accuracy``; for plain tags (POS) ``loss`` and
``accuracy`` only (an entity F1 means nothing there, and a token-level micro F1 would only
repeat the accuracy). ``loss``: the CRF's negative log-likelihood per sentence, or the
cross-entropy per token. ``rnnkit evaluate`` adds each entity type's precision, recall, F1 and
support.

Command line::

    rnnkit train tag --data conll2003 --out runs/ner --config configs/conll2003.json
    rnnkit evaluate runs/ner --split test --json
    rnnkit predict runs/ner --text "John Smith flew to Paris."
    rnnkit predict runs/ner --input sentences.conll --output tagged.conll
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import torch

from rnnkit import metrics
from rnnkit.data.batching import Batch
from rnnkit.data.sources import DATASETS, sha256_file
from rnnkit.data.tagging import Sentence, spans, split_words
from rnnkit.data.tokenize import Vocabulary, copy_word_vectors
from rnnkit.errors import UserError, check_at_least
from rnnkit.models import ModelConfig
from rnnkit.tasks.base import BatchSource, PreparedData, Task
from rnnkit.tasks.classify import Classifier
from rnnkit.tasks.tag_data import (
    Encoder, batch_lengths, convert, hold_out, load_parts, make_task_state, oov_rate, part_files, read_sentences, whole,
)
from rnnkit.tasks.tag_model import DECODERS, TaggerNet, decode, tag_loss, tagger_model_config


def _choice(default: str, choices: tuple, help: str):
    return field(default=default, metadata={"choices": choices, "help": help})


@dataclass
class TagConfig:
    """Data and network options of the tag task (each one a CLI flag and a preset key)."""

    format: str = _choice("auto", ("auto", "conll", "conllu"), "file format; auto: CoNLL-U for *.conllu, else CoNLL")
    word_column: int = 0  # CoNLL: column of the word (Python index)
    tag_column: int = -1  # CoNLL: column of the tag (-1: the last)
    conllu_column: str = _choice("upos", ("upos", "xpos"), "CoNLL-U: which tag column")
    scheme: str = _choice("bio", ("bio", "bioes"), "entity tags are trained (and scored) in this scheme")
    lowercase: bool = True  # word vocabulary lower-cased (characters keep their case)
    min_word_count: int = 2  # rarer training words share the OOV vector (which so gets trained)
    max_vocab: int = 50000  # word ids kept, PAD and OOV included
    max_word_length: int = 20  # characters read per word (its first and last ones)
    word_dim: int = 100  # E: word vector width
    char_dim: int = 25  # Ec: character vector width
    char_hidden: int = 25  # Hc: character BiLSTM units per direction (0: no character features)
    decoder: str = _choice("crf", DECODERS, "crf: best tag path (Viterbi); softmax: each token alone")
    word_vectors: Optional[str] = None  # GloVe/word2vec text file (width word_dim) to start the word vectors
    val_fraction: float = 0.1  # held out from train when there is no dev file
    test_fraction: float = 0.1  # a single FILE only: held out for the test split
    split_seed: int = 0  # seeds the random splits above
    batch_size: int = 32  # sentences per batch

    def __post_init__(self):
        for name in ("val_fraction", "test_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        check_at_least(self, 1, ("max_word_length", "word_dim", "char_dim", "batch_size", "min_word_count"), UserError)
        check_at_least(self, 3, ("max_vocab",), UserError)
        check_at_least(self, 0, ("char_hidden",), UserError)


# ----------------------------------------------------------------------------------------- task


def prepare_parts(config: TagConfig, parts: dict, info: dict) -> PreparedData:
    """The task state from ``parts`` ({"train", "dev", "test"} sentence lists, dev and test may
    be None) and their length-bucketed batch sources."""
    state, parts = make_task_state(config, parts)
    enc = Encoder(state)

    def source(part, shuffle):
        return enc.source(parts[part], config.batch_size, shuffle, f"{part} data ") if parts.get(part) else None

    counts = {f"{part}_sentences": len(parts[part] or []) for part in ("train", "dev", "test")}
    oov = {"dev_oov_rate": round(oov_rate(enc, parts["dev"]), 6)} if parts.get("dev") else {}
    return PreparedData(source("train", True), source("dev", False), source("test", False), state,
                        {**info, **counts, **oov})


class TagTask(Task):
    name = "tag"
    Config = TagConfig
    serve_input = "sentences"
    takes_lengths = True

    def prepare(self, config: TagConfig, data: str, seed: int = 0) -> PreparedData:
        files = part_files(data)
        info = {"name": str(data)}
        if "file" in files:
            info["sha256"] = sha256_file(files["file"])
        elif str(data) in DATASETS:
            info["sha256"] = {part: remote.sha256 for part, remote in DATASETS[str(data)].items()}
        return prepare_parts(config, load_parts(config, data, files), info)

    def prepare_whole(self, config: TagConfig, data: str, task_state: dict) -> BatchSource:
        """Every sentence of ``data``, read with the trained vocabularies, tags and scheme."""
        sentences = convert(whole(config, data), task_state["scheme"], f"{data} ")
        return Encoder(task_state).source(sentences, config.batch_size, False, f"{data} ")

    def model_config(self, task_state: dict, config: TagConfig, model: ModelConfig) -> ModelConfig:
        net = task_state["network"]
        return tagger_model_config(model, net["word_dim"] + 2 * net["char_hidden"], len(task_state["tags"]))

    def build_model(self, model_config: ModelConfig, task_state: dict) -> TaggerNet:
        return TaggerNet(model_config, task_state)

    def init_model(self, model: TaggerNet, task_state: dict, config: TagConfig) -> int:
        """Copy pretrained word vectors (``config.word_vectors``) into the word embedding; returns words found."""
        if not config.word_vectors:
            return 0
        return copy_word_vectors(model.word_embedding.weight, Vocabulary(task_state["words"]), config.word_vectors)

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Cross-entropy per token (the softmax decoder's loss; the CRF's needs the network: ``loss_fn``)."""
        return tag_loss(None, outputs, batch.targets)

    def loss_fn(self, config: TagConfig, model=None):
        """The network's CRF negative log-likelihood per sentence, or cross-entropy per token."""
        crf = getattr(model, "crf", None)
        return lambda outputs, batch: tag_loss(crf, outputs, batch.targets)

    def evaluate(self, model: TaggerNet, batches: Iterable[Batch]) -> dict:
        """``loss``, then ``f1``, ``precision``, ``recall`` (entity tags only) and ``accuracy``."""
        report = tag_report(model, *tagging_pass(model, batches))
        return {k: report[k] for k in ("loss", "f1", "precision", "recall", "accuracy") if k in report}

    def example_inputs(self, model_config: ModelConfig, task_state: dict, batch: int, time: int) -> torch.Tensor:
        """(B, T, 1 + W) word ids and W = 4 character ids per word (the last word one character shorter)."""
        words = torch.randint(1, len(task_state["words"]), (batch, time, 1))
        chars = torch.randint(1, len(task_state["chars"]), (batch, time, 4))
        chars[:, -1, -1] = 0
        return torch.cat([words, chars], dim=-1)

    def export_axes(self, task_state: dict) -> tuple[dict, dict]:
        return {0: "batch", 1: "time", 2: "word_length"}, {0: "batch", 1: "time"}  # emissions per word

    def export_extras(self, model: TaggerNet) -> dict:
        """``decoder``: the tag names and, for a CRF, its constrained scores (transitions [from,
        to], start, end); the best path is Viterbi over them and the graph's emissions."""
        decoder = {"kind": "crf" if model.crf is not None else "softmax", "tags": model.tags, "scheme": model.scheme}
        if model.crf is not None:
            transitions, start, end = (t.detach().tolist() for t in model.crf.constrained())
            decoder.update(transitions=transitions, start=start, end=end)
        return {"decoder": decoder}

    def ensemble_key(self, task_state: dict) -> dict:
        raise UserError("task 'tag' has no ensembles yet: its CRF scores whole tag paths, and averaging "
                        "members' paths is not implemented")

    def load(self, artifact) -> "Tagger":
        return Tagger.from_artifact(artifact)

    # -- CLI verbs: rnnkit predict DIR --text "..." | --input FILE [--output FILE]; rnnkit evaluate DIR
    def add_arguments(self, verb: str, parser) -> None:
        if verb == "predict":
            parser.add_argument("--text", help="tag this text (split into words and punctuation); prints word<TAB>tag "
                                               "lines, then a blank line and the entities as type<TAB>start-end<TAB>words")
            parser.add_argument("--input", help="tag a CoNLL / CoNLL-U file: each word line with the predicted tag added "
                                                "as a last column")
            parser.add_argument("--output", help="with --input: write the tagged file here instead of stdout")

    def run_verb(self, verb: str, facade: "Tagger", args) -> Optional[int]:
        if verb == "predict":
            return _predict_command(facade, args)
        if verb == "evaluate":
            report = tag_report(facade.model, *tagging_pass(facade.model, args.evaluation_source.epoch(0, 0)))
            args.metrics.update(flat_report(report))
            return 0
        return super().run_verb(verb, facade, args)


TASK = TagTask()


# ------------------------------------------------------------------------------ evaluation pass


@torch.no_grad()
def tagging_pass(model: TaggerNet, batches: Iterable[Batch]) -> tuple[list, list, float]:
    """(true tag ids, predicted tag ids, summed loss) of one eval-mode pass: one list per
    sentence, in batch order; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    true, pred, loss_sum = [], [], 0.0
    try:
        for batch in batches:
            emissions = model(batch.inputs, None, batch.lengths)[0].float()  # (B, T, C)
            loss_sum += float(tag_loss(model.crf, emissions, batch.targets, reduction="sum"))
            lengths = batch_lengths(batch)
            pred += decode(model, emissions, lengths)
            true += [row[:n].tolist() for row, n in zip(batch.targets, lengths.tolist())]
    finally:
        model.train(was_training)
    return true, pred, loss_sum


def tag_report(model: TaggerNet, true: list, pred: list, loss_sum: float) -> dict:
    """The metrics of a :func:`tagging_pass` (see the module docstring): for entity tags the
    whole :func:`rnnkit.metrics.entity_scores`, else ``accuracy`` and ``tokens``; plus ``loss``."""
    names = model.tags
    true_tags = [[names[i] for i in row] for row in true]
    pred_tags = [[names[i] for i in row] for row in pred]
    tokens = sum(len(row) for row in true)
    loss = loss_sum / max(len(true) if model.crf is not None else tokens, 1) if true else float("nan")
    if model.scheme is not None:
        return {"loss": loss, **metrics.entity_scores(true_tags, pred_tags)}
    right = sum(t == p for ts, ps in zip(true, pred) for t, p in zip(ts, ps))
    return {"loss": loss, "accuracy": right / tokens if tokens else float("nan"), "tokens": tokens}


def flat_report(report: dict) -> dict:
    """A :func:`tag_report` as ``rnnkit evaluate`` prints it: the summary, the entity counts and
    ``precision_<type>``, ``recall_<type>``, ``f1_<type>``, ``support_<type>`` per entity type."""
    flat = {k: v for k, v in report.items() if k != "per_type"}
    for kind, row in report.get("per_type", {}).items():
        flat.update({f"{key}_{kind}": value for key, value in row.items()})
    return flat


# ------------------------------------------------------------------------------ rnnkit predict


def _predict_command(tagger: "Tagger", args) -> int:
    if (args.text is None) == (args.input is None):
        raise UserError('predict: expected --text "..." or --input FILE (one of them)')
    if args.output and args.input is None:
        raise UserError("predict: --output goes with --input FILE")
    if args.text is not None:
        words = split_words(args.text)
        if not words:
            raise UserError("--text: no words to tag")
        tagged = tagger.annotate([words])[0]
        lines = [f"{w}\t{t}" for w, t in zip(words, tagged["tags"])]
        if "entities" in tagged:
            lines += [""] + [f"{e['type']}\t{e['start']}-{e['end']}\t{e['text']}" for e in tagged["entities"]]
        print("\n".join(lines))
        return 0
    sentences = read_sentences(tagger.config, args.input)
    text = tagged_conll(sentences, tagger.predict([s.words for s in sentences]))
    if args.output:
        from rnnkit.artifacts import write_file_atomic

        write_file_atomic(Path(args.output), text.encode("utf-8"))
    else:
        sys.stdout.write(text)
    return 0


def tagged_conll(sentences: Sequence[Sentence], tags: Sequence[Sequence[str]]) -> str:
    """Each sentence's word lines with its predicted tag appended (after a tab if the line has
    one, else a space), a blank line after each sentence."""
    out = []
    for sentence, predicted in zip(sentences, tags):
        out += [f"{line}{chr(9) if chr(9) in line else ' '}{tag}" for line, tag in zip(sentence.lines, predicted)]
        out.append("")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------- façade


class Tagger(Classifier):
    """Tag sentences (NER, POS): ``fit``, ``predict``, ``evaluate``; what ``rnnkit.load`` returns
    for a tag run. Construction, training and loading are the classifiers' (:class:`Classifier`).

    ``config``: :class:`TagConfig`; ``model``: the user's ``ModelConfig`` (recurrent options;
    bidirectional always); ``train``: a ``TrainConfig``.
    """

    task = TASK

    def __init__(self, config: Optional[TagConfig] = None, model: Optional[ModelConfig] = None, train=None):
        super().__init__(config, model or ModelConfig(bidirectional=True), train)

    @property
    def tags(self) -> list[str]:
        """The tag set; tag id k is ``tags[k]``."""
        return list(self._require()[1]["tags"])

    @property
    def scheme(self) -> Optional[str]:
        """"BIO" or "BIOES" for entity tags, None for plain tags (POS)."""
        return self._require()[1]["scheme"]

    def fit(self, sentences: Optional[Sequence[Sequence[str]]] = None, tags: Optional[Sequence[Sequence[str]]] = None,
            val_sentences=None, val_tags=None, data: Optional[str] = None, out: Optional[str] = None,
            callbacks=()) -> "Tagger":
        """Train with the shared Trainer on ``sentences`` (lists of words) and their ``tags``
        (lists of tags, one per word), or on a dataset/folder/file ``data``.

        Validation: ``val_sentences``/``val_tags`` if given, else ``config.val_fraction`` of the
        training sentences; the best-validation weights are kept (``TrainConfig.monitor``), and
        ``metrics`` becomes the report on validation. ``out`` also writes the run directory.
        """
        if data is None and (sentences is None or tags is None):
            raise UserError("fit needs sentences and tags, or data=<dataset, folder or file>")

        def prepare_given(seed: int) -> PreparedData:
            parts = {"train": _sentences(sentences, tags, ""), "test": None,
                     "dev": _sentences(val_sentences, val_tags, "validation ") if val_sentences is not None else None}
            return prepare_parts(self.config, hold_out(parts, self.config), {"name": "sentences"})

        return self._fit(data, prepare_given, out, callbacks)

    def predict(self, sentences: Union[str, Sequence[Sequence[str]]], batch_size: Optional[int] = None):
        """The tags of each sentence (a list of words) of ``sentences``: one list of tags per
        sentence. A string is one text: split into words (:func:`rnnkit.data.tagging.split_words`)
        and tagged, returning one list of tags."""
        if isinstance(sentences, str):
            words = split_words(sentences)
            return self.predict([words], batch_size)[0] if words else []
        model, state = self._require()
        sentences = [list(s) for s in sentences]
        if any(isinstance(s, str) for s in sentences) or not all(sentences):
            raise UserError("predict expects a string or a list of sentences, each a non-empty list of words")
        enc = Encoder(state)
        tagged = [Sentence(s, ["O"] * len(s)) for s in sentences]
        source = enc.source(tagged, batch_size or self.config.batch_size, shuffle=False, tagged=False)
        order = [i for idx in source.batch_indices(0, 0) for i in idx.tolist()]  # bucketed: back to input order
        pred = tagging_pass(model, source.epoch(0, 0))[1]
        out = [None] * len(sentences)
        for i, ids in zip(order, pred):
            out[i] = enc.decode_tags(ids)
        return out

    def annotate(self, sentences: Sequence[Sequence[str]]) -> list[dict]:
        """Each sentence (a list of words) tagged: ``{"tokens", "tags"}``, and for entity tags
        ``"entities"``: ``[{"type", "start", "end", "text"}]`` (word positions, end exclusive)."""
        out = []
        for words, tags in zip(sentences, self.predict(sentences)):
            tagged = {"tokens": list(words), "tags": tags}
            if self.scheme is not None:
                tagged["entities"] = [{"type": kind, "start": start, "end": end, "text": " ".join(words[start:end])}
                                      for kind, start, end in spans(tags, "BIOES")]
            out.append(tagged)
        return out

    def evaluate(self, sentences=None, tags=None, data: Optional[str] = None) -> dict:
        """The report (:func:`tag_report`: loss, entity precision/recall/F1 overall and per type,
        accuracy) on ``sentences`` with their ``tags``, or on all of ``data``."""
        state = self._require()[1]
        if data is not None:
            return self._report(self.task.prepare_whole(self.config, data, state))
        given = convert(_sentences(sentences, tags, ""), state["scheme"], "")
        return self._report(Encoder(state).source(given, self.config.batch_size, shuffle=False))

    def _report(self, source: BatchSource) -> dict:
        model = self._require()[0]
        return tag_report(model, *tagging_pass(model, source.epoch(0, 0)))

    def _label_names(self) -> list:
        return self.tags


def _sentences(words: Sequence[Sequence[str]], tags: Sequence[Sequence[str]], what: str) -> list[Sentence]:
    """Sentence objects from parallel lists of word lists and tag lists, checked."""
    if tags is None or len(words) != len(tags):
        raise UserError(f"got {len(words)} {what}sentences but {0 if tags is None else len(tags)} tag lists; "
                        "expected one list of tags per sentence")
    out = []
    for k, (w, t) in enumerate(zip(words, tags)):
        if isinstance(w, str) or not w or len(w) != len(t):
            raise UserError(f"{what}sentence {k + 1}: expected a non-empty list of words with one tag each, "
                            f"got {len(w)} words and {len(t)} tags")
        out.append(Sentence([str(x) for x in w], [str(x) for x in t]))
    return out
