"""Transcription with CTC: ``Transcriber`` and the ``transcribe`` task.

A recurrent network reads a feature sequence x (T, F) and gives, at every step, scores over the
C = A + 1 classes (the A characters of the alphabet and the blank, id 0); its log-softmax y_t is
trained with connectionist temporal classification, -log p(l | x) summed over every alignment
of the transcript l (:mod:`rnnkit.ctc`, ``torch.nn.functional.ctc_loss``), so no frame needs a
label. Decoding reads the best alignment (greedy) or searches prefixes (``--beam N``).

Data (``prepare``):

- ``mnist-digits``: strings of ``min_digits``-``max_digits`` MNIST digits side by side with
  random gaps, read column by column (F = 28; :class:`rnnkit.data.transcripts.DigitStrings`):
  ``train_strings`` from the training images, ``test_strings`` from the test images, and as many
  validation strings from ``val_images`` training images held out (stratified) from the rest;
- ``fsdd-connected``: 2-6 FSDD recordings of one speaker joined with random silences and light
  noise (:func:`prepare_connected`; ``train_strings`` / ``test_strings`` of them);
- a folder or tar of recordings named ``TRANSCRIPT_SPEAKER_TAKE.wav`` (``0427_ann_3.wav``):
  normalised log-mel/MFCC frames (:mod:`rnnkit.data.speech`); takes 0-4 are the test part (or
  ``--test-speaker``), and ``val_size`` of the rest is held out.

Subsampling: ``--subsample s`` joins s consecutive frames into one step (T -> ceil(T/s) steps of
s*F features; :func:`rnnkit.data.transcripts.stack_frames`), so the recurrence runs s times fewer
steps; with ``--encoder linear`` the first layer is then a convolution of width s and stride s.
Every step still has to leave room for CTC's blanks between repeated characters.

Metrics (``evaluate``; fractions): ``loss`` (CTC per target character, averaged over sequences),
``cer`` (character error rate: on digit strings, the digit error rate), ``sequence_accuracy`` and,
when transcripts have spaces, ``wer`` (:func:`rnnkit.metrics.transcription_scores`).

Command line::

    rnnkit train transcribe --data mnist-digits --out runs/digits --config configs/mnist-digits.json
    rnnkit evaluate runs/digits --split test --json [--beam 8]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit import metrics
from rnnkit.ctc import beam_decode, greedy_decode
from rnnkit.data.batching import Batch, BucketedBatches, batch_lengths
from rnnkit.data.images import IMAGE_SUFFIXES
from rnnkit.data.transcripts import FeatureItems, digit_strings, stack_frames
from rnnkit.errors import UserError, check_at_least
from rnnkit.models import ModelConfig
from rnnkit.tasks.base import BatchSource, PreparedData, Task
from rnnkit.tasks.classify import Classifier

PAD = -1  # target id past a transcript's end
BLANK = 0


@dataclass
class TranscribeConfig:
    """Data options of the transcribe task (each one a CLI flag and a preset key)."""

    min_digits: int = 3  # mnist-digits: digits per string, at least
    max_digits: int = 7  # mnist-digits: and at most
    max_gap: int = 8  # mnist-digits: blank columns before, between and after the digits, 0 to this
    train_strings: int = 30000  # mnist-digits, fsdd-connected: strings made of training images / recordings
    test_strings: int = 3000  # mnist-digits, fsdd-connected: test strings (and as many for validation)
    val_images: int = 5000  # mnist-digits: training images held out to make the validation strings
    data_seed: int = 0  # mnist-digits: seeds the strings; recordings: the validation split
    val_size: float = 0.1  # recordings: held out from the training part, a fraction (< 1) or a count
    audio_features: str = field(default="logmel", metadata={"choices": ("logmel", "mfcc")})  # recordings: frames
    n_mels: int = 40  # recordings: mel bands
    test_speaker: str = ""  # recordings: this speaker is the test part (default: takes 0-4)
    subsample: int = 1  # join this many consecutive frames into one recurrent step (T -> T/s, F -> s*F);
    # with the model's linear encoder, a convolution of width s and stride s in front of the recurrence
    batch_size: int = 32

    def __post_init__(self):
        check_at_least(self, 1, ("min_digits", "train_strings", "test_strings", "val_images", "n_mels", "subsample",
                                       "batch_size"),
                       UserError)
        check_at_least(self, 0, ("max_gap", "val_size"), UserError)
        if self.max_digits < self.min_digits:
            raise UserError(f"max_digits ({self.max_digits}) is below min_digits ({self.min_digits})")


Config = TranscribeConfig


# ---------------------------------------------------------------------------------------- data


def prepare_digits(config: TranscribeConfig) -> tuple[dict, dict]:
    """({train, val, test} DigitStrings, info) from the named ``mnist`` dataset."""
    from rnnkit.data import sources
    from rnnkit.data.sequences import read_mnist
    from rnnkit.tasks.classify import split_validation

    mnist = read_mnist(sources.resolve("mnist"))
    (images, labels), (test_images, test_labels) = mnist["train"], mnist["test"]
    train_i, val_i = split_validation(labels, config.val_images, config.data_seed)
    draw = dict(min_digits=config.min_digits, max_digits=config.max_digits, max_gap=config.max_gap)
    seed = config.data_seed * 3
    parts = {"train": digit_strings(images[train_i], labels[train_i], config.train_strings, seed, **draw),
             "val": digit_strings(images[val_i], labels[val_i], config.test_strings, seed + 1, **draw),
             "test": digit_strings(test_images, test_labels, config.test_strings, seed + 2, **draw)}
    return parts, {"name": "mnist-digits", "train_images": len(train_i), "val_images": len(val_i)}


def prepare_recordings(path, config: TranscribeConfig) -> tuple[dict, dict, dict]:
    """({train, val, test} FeatureItems, info, audio options) from TRANSCRIPT_SPEAKER_TAKE.wav files."""
    from rnnkit.data import speech

    parts = speech.split_recordings(speech.read_recordings(path), config.test_speaker)
    features = speech.AudioFeatures(kind=config.audio_features, n_mels=config.n_mels)
    features.sample_rate = parts["train"][0].rate

    def items(recordings):
        seqs = speech.labelled_features(recordings, features) if recordings else None
        frames = [] if seqs is None else [x[:n] for x, n in zip(seqs.x, seqs.lengths)]
        return FeatureItems(frames, [r.label for r in recordings])

    train = items(parts["train"])
    size = config.val_size if config.val_size >= 1 else round(config.val_size * len(train))
    order = np.random.default_rng(config.data_seed).permutation(len(train))
    out = {"train": train.subset(order[int(size):]), "val": train.subset(order[: int(size)]), "test": items(parts["test"])}
    return out, {"name": str(path)}, features.to_dict()


def prepare_connected(config: TranscribeConfig) -> tuple[dict, dict, dict]:
    """({train, val, test} FeatureItems, info, audio options) of connected spoken digits made from
    FSDD: training strings from takes 10-49, validation strings from takes 5-9, test strings from
    takes 0-4 (the official test recordings)."""
    from rnnkit.data import sources, speech
    from rnnkit.data.transcripts import connected_recordings

    recordings = speech.read_recordings(sources.resolve("fsdd"))
    pools = {"train": [r for r in recordings if r.take >= 10], "val": [r for r in recordings if 5 <= r.take < 10],
             "test": [r for r in recordings if r.take < 5]}
    counts = {"train": config.train_strings, "val": config.test_strings, "test": config.test_strings}
    features = speech.AudioFeatures(kind=config.audio_features, n_mels=config.n_mels, sample_rate=recordings[0].rate)
    parts = {}
    for k, (part, pool) in enumerate(pools.items()):
        pairs = connected_recordings(pool, counts[part], config.data_seed * 3 + k)
        parts[part] = FeatureItems([features.frames(x).astype(np.float16) for x, _ in pairs], [t for _, t in pairs])
    return parts, {"name": "fsdd-connected"}, features.to_dict()


def make_source(items, alphabet: dict, batch_size: int, shuffle: bool, where: str = "",
                subsample: int = 1) -> Optional[BucketedBatches]:
    """Length-bucketed batches: inputs (B, T, s*F) float32 (the items' frames joined ``subsample``
    = s at a time, 0 past a row's end), targets (B, L) character ids (``PAD`` after), lengths
    (B,) or None when every row has T steps."""
    if items is None or len(items) == 0:
        return None
    encoded = []
    for i in range(len(items)):
        text = items.transcript(i)
        unknown = sorted(set(text) - set(alphabet))
        if unknown:
            raise UserError(f"{where}transcript {text!r}: character {unknown[0]!r} is not in the training alphabet")
        encoded.append([alphabet[c] for c in text])

    def make_batch(indices):
        feats = [stack_frames(items.features(i), subsample) for i in indices]
        T, L = max(len(f) for f in feats), max(max(len(encoded[i]) for i in indices), 1)
        x = torch.zeros(len(indices), T, feats[0].shape[1])
        y = torch.full((len(indices), L), PAD, dtype=torch.int64)
        for row, (f, i) in enumerate(zip(feats, indices)):
            x[row, : len(f)] = torch.from_numpy(np.asarray(f, dtype=np.float32))
            y[row, : len(encoded[i])] = torch.tensor(encoded[i], dtype=torch.int64)
        lengths = torch.tensor([len(f) for f in feats], dtype=torch.int64)
        return Batch(x, y, None if bool((lengths == T).all()) else lengths)

    steps = [-(-items.length(i) // subsample) for i in range(len(items))]
    return BucketedBatches(steps, batch_size, make_batch, shuffle=shuffle)


# ---------------------------------------------------------------------------------------- task


def ctc_loss(outputs: Tensor, batch: Batch, reduction: str = "mean") -> Tensor:
    """CTC negative log-likelihood of the batch's transcripts under outputs (B, T, C) (logits):
    per sequence divided by its transcript's length, then the batch mean (``"sum"``: summed)."""
    log_probs = torch.log_softmax(outputs.float(), -1).transpose(0, 1)  # (T, B, C)
    frames = batch_lengths(batch)
    targets = batch.targets
    target_lengths = (targets != PAD).sum(1)
    losses = F.ctc_loss(log_probs, targets[targets != PAD], frames, target_lengths, blank=BLANK,
                        reduction="none", zero_infinity=True) / target_lengths.clamp(min=1)
    return losses.mean() if reduction == "mean" else losses.sum()


@torch.no_grad()
def transcription_pass(model, batches: Iterable[Batch], alphabet: Sequence[str], beam: int = 1) -> tuple[list, list, float, int]:
    """(references, hypotheses, summed loss, sequences) of one eval-mode pass, in batch order."""
    was_training = model.training
    model.eval()
    refs, hyps, loss_sum, count = [], [], 0.0, 0
    try:
        for batch in batches:
            outputs = model(batch.inputs, None, batch.lengths)[0].float()  # (B, T, C)
            loss_sum += float(ctc_loss(outputs, batch, "sum"))
            count += outputs.shape[0]
            log_probs, frames = torch.log_softmax(outputs, -1), batch_lengths(batch)
            ids = greedy_decode(log_probs, frames) if beam <= 1 else beam_decode(log_probs, frames, beam)
            hyps += ["".join(alphabet[i - 1] for i in row) for row in ids]
            refs += ["".join(alphabet[i - 1] for i in row[row != PAD].tolist()) for row in batch.targets]
    finally:
        model.train(was_training)
    return refs, hyps, loss_sum, count


def transcription_report(refs: list, hyps: list, loss_sum: float, count: int) -> dict:
    """``loss``, ``cer``, ``sequence_accuracy`` and (transcripts with spaces) ``wer``."""
    scores = metrics.transcription_scores(refs, hyps)
    report = {"loss": loss_sum / count if count else float("nan"), "cer": scores["cer"],
              "sequence_accuracy": scores["sequence_accuracy"]}
    if any(" " in r for r in refs):
        report["wer"] = scores["wer"]
    return report


def wav_features(source, task_state: dict, where: str) -> np.ndarray:
    """(T, F) features of one WAV recording (a path or an open binary file), as in training."""
    from rnnkit.data import audio, speech

    if not task_state["audio"]:
        raise UserError(f"{where}: this model reads pictures of digit strings, not recordings")
    samples, rate = audio.read_wav(source, where)
    features = speech.AudioFeatures(**task_state["audio"])
    if rate != features.sample_rate:
        raise UserError(f"{where}: sample rate {rate} Hz; the model was trained on {features.sample_rate} Hz")
    return features.frames(samples, f"{where}: ")


def file_features(path: Path, task_state: dict) -> np.ndarray:
    """(T, F) features of one input file, prepared as the model's training data was."""
    if task_state["audio"]:
        if path.suffix.lower() != ".wav":
            raise UserError(f"{path}: this model reads recordings; expected a .wav file")
        return wav_features(path, task_state, str(path))
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise UserError(f"{path}: this model reads pictures of digit strings; expected one of {', '.join(IMAGE_SUFFIXES)}")
    from rnnkit.data.transcripts import strip_from_image

    return strip_from_image(path)


class TranscribeTask(Task):
    name = "transcribe"
    Config = TranscribeConfig
    takes_lengths = True
    serve_input = "recordings"

    def prepare(self, config: TranscribeConfig, data: str, seed: int = 0) -> PreparedData:
        if data == "mnist-digits":
            parts, info = prepare_digits(config)
            audio = None
        elif data == "fsdd-connected":
            parts, info, audio = prepare_connected(config)
        else:
            from rnnkit.data import sources

            parts, info, audio = prepare_recordings(sources.resolve(data), config)
        train = parts["train"]
        alphabet = sorted({c for i in range(len(train)) for c in train.transcript(i)})
        if not alphabet:
            raise UserError(f"{data}: the training transcripts are empty")
        ids = {c: k + 1 for k, c in enumerate(alphabet)}  # 0 is the blank
        state = {"kind": "mnist-digits" if audio is None else "recordings", "alphabet": alphabet,
                 "features": int(train.features(0).shape[1]), "subsample": config.subsample, "audio": audio}
        sources_ = {part: make_source(parts[part], ids, config.batch_size, part == "train", f"{part} data: ",
                                      config.subsample)
                    for part in ("train", "val", "test")}
        counts = {part: len(parts[part]) for part in ("train", "val", "test")}
        return PreparedData(sources_["train"], sources_["val"], sources_["test"], state, {**info, **counts})

    def model_config(self, task_state: dict, config: TranscribeConfig, model: ModelConfig) -> ModelConfig:
        from dataclasses import replace

        encoder = "linear" if model.encoder == "linear" else "identity"
        return replace(model, encoder=encoder, input_size=task_state["features"] * task_state.get("subsample", 1),
                       head="per_step", bag=False, output_size=len(task_state["alphabet"]) + 1)

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        return ctc_loss(outputs, batch)

    def evaluate(self, model, batches: Iterable[Batch]) -> dict:
        return transcription_report(*transcription_pass(model, batches, model.alphabet))

    def build_model(self, model_config: ModelConfig, task_state: dict):
        model = super().build_model(model_config, task_state)
        model.alphabet = list(task_state["alphabet"])  # so evaluate() can spell what it decodes
        model.subsample = int(task_state.get("subsample", 1))
        return model

    def ensemble_key(self, task_state: dict) -> dict:
        raise UserError("task 'transcribe' has no ensembles yet: averaging CTC frame posteriors of "
                        "separately trained runs is not implemented")

    def load(self, artifact) -> "Transcriber":
        return Transcriber.from_artifact(artifact)

    def export_axes(self, task_state: dict) -> tuple[dict, dict]:
        return {0: "batch", 1: "time"}, {0: "batch", 1: "time"}  # scores at every step

    def export_extras(self, model) -> dict:
        """``decoder``: CTC over the graph's per-step scores: class 0 the blank, class k + 1 ``alphabet[k]``;
        ``subsample``: the graph's inputs are the features s frames at a time (step t: frames s*t..s*t+s-1)."""
        return {"decoder": {"kind": "ctc", "blank": BLANK, "alphabet": list(model.alphabet)},
                "subsample": getattr(model, "subsample", 1)}

    def add_arguments(self, verb: str, parser) -> None:
        if verb in ("evaluate", "predict"):
            parser.add_argument("--beam", type=int, default=1, help="prefix beam search of this width (1: greedy)")
        if verb == "predict":
            parser.add_argument("--input", nargs="+", required=True,
                                help="WAV recordings or pictures of digit strings; prints FILE<TAB>transcript")

    def run_verb(self, verb: str, facade: "Transcriber", args) -> Optional[int]:
        if verb == "predict":
            for path, text in zip(args.input, facade.transcribe_files(args.input, args.beam)):
                print(f"{path}\t{text}")
            return 0
        if verb == "evaluate":
            if args.beam > 1:
                report = transcription_report(*transcription_pass(facade.model, args.evaluation_source.epoch(0, 0),
                                                                  facade.alphabet, args.beam))
                args.metrics.update(report, decoder=f"prefix beam search, width {args.beam}")
            return 0
        return super().run_verb(verb, facade, args)


TASK = TranscribeTask()


# --------------------------------------------------------------------------------------- facade


class Transcriber(Classifier):
    """Transcribe feature sequences: ``fit``, ``predict``, ``evaluate``; what ``rnnkit.load``
    returns for a transcribe run. Construction, training and loading are the classifiers'
    (:class:`~rnnkit.tasks.classify.Classifier`). ``config``: :class:`TranscribeConfig`;
    ``model``: the recurrent options (bidirectional by default); ``train``: a ``TrainConfig``."""

    task = TASK

    def __init__(self, config: Optional[TranscribeConfig] = None, model: Optional[ModelConfig] = None, train=None):
        super().__init__(config, model or ModelConfig(bidirectional=True), train)

    @property
    def alphabet(self) -> list:
        """The characters; class k + 1 of the network is ``alphabet[k]`` (0 is the blank)."""
        return list(self._require()[1]["alphabet"])

    def fit(self, data: str, out: Optional[str] = None, callbacks=()) -> "Transcriber":
        """Train on ``data`` (``mnist-digits`` or a folder/tar of recordings) with the shared
        Trainer (best-validation weights kept); ``metrics`` becomes the report on validation."""
        return self._fit(data, None, out, callbacks)

    def _report(self, source: BatchSource, beam: int = 1) -> dict:
        return transcription_report(*transcription_pass(self._require()[0], source.epoch(0, 0), self.alphabet, beam))

    def _label_names(self) -> list:
        return self.alphabet

    def predict(self, features: Sequence[np.ndarray], beam: int = 1) -> list[str]:
        """The transcript of each feature sequence (T_i, F), prepared as the model's data was."""
        model, state = self._require()
        arrays = [np.asarray(f, dtype=np.float32) for f in features]
        if not arrays or any(a.ndim != 2 or a.shape[1] != state["features"] or len(a) == 0 for a in arrays):
            raise UserError(f"predict expects a list of (T, {state['features']}) feature arrays, T >= 1")
        source = make_source(FeatureItems(arrays, [""] * len(arrays)), {}, self.config.batch_size, False, "",
                             int(state.get("subsample", 1)))
        order = [i for idx in source.batch_indices(0, 0) for i in idx.tolist()]  # bucketed: back to input order
        hyps = transcription_pass(model, source.epoch(0, 0), self.alphabet, beam)[1]
        out = [""] * len(arrays)
        for i, text in zip(order, hyps):
            out[i] = text
        return out

    def transcribe_files(self, paths: Sequence, beam: int = 1) -> list[str]:
        """The transcript of each file: a WAV recording (a recordings model: its features are
        computed as in training) or a picture of a digit string (an ``mnist-digits`` model)."""
        state = self._require()[1]
        return self.predict([file_features(Path(p), state) for p in paths], beam)

    def evaluate(self, data: Optional[str] = None, split: str = "test", beam: int = 1) -> dict:
        """The report on the ``split`` part (train, val or test) of ``data``; by default of the
        data it was trained on."""
        return self._report_on(data, split, lambda source: self._report(source, beam),
                               "mnist-digits, fsdd-connected or a folder of recordings")
