"""The sequence tagger's network: word and character features -> BiLSTM -> tag scores -> CRF.

Shape letters: ``B`` sentences, ``T`` words (tokens), ``W`` characters per word, ``C`` tags,
``E`` word-vector width (``word_dim``), ``Ec`` character-vector width (``char_dim``), ``Hc``
character hidden size (``char_hidden``), ``H`` word-level hidden size, ``D`` = 2 directions.

Inputs are one int64 tensor ``x`` (B, T, 1 + W): ``x[..., 0]`` the word ids (0 = padding),
``x[..., 1:]`` each word's character ids, left-aligned, 0 after its last character. With
``lengths`` (B,) (None: every row has T words) the network computes, for a word ``w_t`` with
characters ``c_1..c_m``, its features

    r_t = [ e(w_t) ; hf_m ; hb_1 ]                        (E + 2 Hc,)
    hf_k = LSTM_f(emb(c_k), hf_{k-1}),  hb_k = LSTM_b(emb(c_k), hb_{k+1})

(Lample et al. 2016: the forward character LSTM's state after the last character and the
backward one's after the first; ``char_hidden = 0`` leaves the characters out). Then, with
dropout on ``r_t`` (``ModelConfig.embedding_dropout``), between the word-level layers
(``dropout``) and before the output layer (``head_dropout``):

    h_1..h_n = BiLSTM(r_1..r_n)                           (T, D*H)  (any rnnkit cell, L layers)
    E_t      = W h_t + b                                  (C,)      the emissions

``forward(x, state=None, lengths=None) -> (emissions (B, T, C), None)``; positions past a row's
length are zeros. The ``crf`` decoder adds a :class:`~rnnkit.crf.CRF` (transition scores
``A`` (C, C), constrained by the tag scheme) that scores whole tag paths: training minimises its
negative log-likelihood, decoding takes the Viterbi path. The ``softmax`` decoder reads each
token alone: cross-entropy per token, argmax decoding.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.crf import CRF, allowed_transitions
from rnnkit.models import ModelConfig, SequenceModel, pool
from rnnkit.recurrent import Recurrent

PAD_TAG = -100  # target of a padding position (ignored by the loss and the metrics)
DECODERS = ("crf", "softmax")


class CharEncoder(nn.Module):
    """Each word's characters -> one vector: char embedding, a one-layer BiLSTM (rnnkit's
    :class:`~rnnkit.recurrent.Recurrent`) over the characters, and its final forward and
    backward states concatenated. ``forward(chars (B, T, W)) -> (B, T, 2*Hc)``; a padding
    word (no characters) gets zeros. Only the real words run, as one batch of N words, except
    under ONNX tracing, where every slot runs (a traced graph cannot choose rows by value) and
    the padding slots are zeroed after: the same numbers for every real word."""

    def __init__(self, num_chars: int, char_dim: int, char_hidden: int):
        super().__init__()
        self.embedding = nn.Embedding(num_chars, char_dim)
        self.rnn = Recurrent("lstm", char_dim, char_hidden, bidirectional=True)
        self.output_size = 2 * char_hidden

    def forward(self, chars: Tensor) -> Tensor:
        if torch.jit.is_tracing():
            return self._every_slot(chars)
        B, T, _ = chars.shape
        word_lengths = (chars != 0).sum(-1)  # (B, T)
        real = word_lengths > 0
        out = chars.new_zeros(B, T, self.output_size, dtype=self.embedding.weight.dtype)
        if not bool(real.any()):
            return out
        lengths = word_lengths[real]  # (N,)
        words = chars[real][:, : int(lengths.max())]  # (N, W')
        y, state = self.rnn(self.embedding(words), None, lengths.cpu())  # (N, W', 2Hc)
        out[real] = pool(y, state, "last", lengths, self.rnn).to(out.dtype)  # (N, 2Hc)
        return out

    def _every_slot(self, chars: Tensor) -> Tensor:
        """The traceable form: all B*T word slots as one batch, a padding slot read as one
        character (padding id 0) and then zeroed."""
        B, T, W = chars.shape
        words = chars.reshape(B * T, W)
        word_lengths = (words != 0).sum(-1)  # (B*T,)
        y, state = self.rnn(self.embedding(words), None, word_lengths.clamp(min=1))
        pooled = pool(y, state, "last", word_lengths, self.rnn)  # (B*T, 2Hc)
        return (pooled * (word_lengths > 0).unsqueeze(-1).to(pooled.dtype)).reshape(B, T, self.output_size)


class TaggerNet(nn.Module):
    """Word embedding + :class:`CharEncoder` -> :class:`~rnnkit.models.SequenceModel` (identity
    encoder, bidirectional recurrent stack, per-step linear head to C tags) -> optional CRF.

    Built from the run's ``ModelConfig`` (recurrent options; ``input_size`` = E + 2 Hc and
    ``output_size`` = C come from the data) and the task state (``words``, ``chars``, ``tags``,
    ``scheme``, ``network``: word_dim, char_dim, char_hidden, decoder). ``tags`` and
    ``scheme`` stay on the network, so :func:`decode` and the metrics need nothing else.
    """

    def __init__(self, config: ModelConfig, task_state: dict):
        super().__init__()
        net = task_state["network"]
        self.config = config
        self.tags, self.scheme = list(task_state["tags"]), task_state["scheme"]
        self.word_embedding = nn.Embedding(len(task_state["words"]), net["word_dim"])
        self.chars = CharEncoder(len(task_state["chars"]), net["char_dim"], net["char_hidden"]) \
            if net["char_hidden"] > 0 else None
        self.sequence = SequenceModel(config)
        self.crf = self._make_crf() if net["decoder"] == "crf" else None
        for emb in (self.word_embedding, self.chars.embedding if self.chars else None):
            if emb is not None:  # U(+-sqrt(3/E)): unit variance per vector, as Lample et al. start
                bound = math.sqrt(3.0 / emb.embedding_dim)
                nn.init.uniform_(emb.weight, -bound, bound)

    def _make_crf(self) -> CRF:
        C = len(self.tags)
        if self.scheme is None:  # POS-like tags: every transition allowed
            return CRF(C)
        return CRF(C, *allowed_transitions(self.tags, self.scheme))

    def state_layers(self) -> list:
        """Stateless: a tagger reads whole sentences (export describes no state)."""
        return [None]

    def forward(self, inputs: Tensor, state=None, lengths=None):
        x = self.word_embedding(inputs[..., 0])  # (B, T, E)
        if self.chars is not None:
            x = torch.cat([x, self.chars(inputs[..., 1:])], dim=-1)  # (B, T, E + 2Hc)
        emissions, _ = self.sequence(x, None, lengths)  # (B, T, C)
        if lengths is not None:  # padding scores exactly 0, whatever the bias
            T = inputs.shape[1]
            valid = torch.arange(T, device=inputs.device) < torch.as_tensor(lengths, device=inputs.device).unsqueeze(1)
            emissions = emissions.masked_fill(~valid.unsqueeze(-1), 0.0)
        return emissions, None


def tagger_model_config(model: ModelConfig, input_size: int, num_tags: int) -> ModelConfig:
    """The user's recurrent options with what the tagger fixes: identity encoder of
    ``input_size`` = E + 2 Hc features, bidirectional layers, a per-step head to C tags."""
    return replace(model, encoder="identity", input_size=input_size, bidirectional=True, head="per_step",
                   bag=False, output_size=num_tags)


def row_lengths(targets: Tensor) -> Tensor:
    """(B,) tokens per row of targets (B, T), padding marked ``PAD_TAG``."""
    return (targets != PAD_TAG).sum(1)


def tag_loss(crf: Optional[CRF], emissions: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """The training loss of emissions (B, T, C) against targets (B, T) (``PAD_TAG`` at padding):
    with a CRF its negative log-likelihood per sentence (mean over the B rows, or ``"sum"``),
    else the cross-entropy per token (mean over the real tokens, or ``"sum"``)."""
    if crf is not None:
        return crf.nll(emissions, targets, row_lengths(targets), reduction=reduction)
    return F.cross_entropy(emissions.flatten(0, 1), targets.flatten(), ignore_index=PAD_TAG, reduction=reduction)


@torch.no_grad()
def decode(model: TaggerNet, emissions: Tensor, lengths: Tensor) -> list[list[int]]:
    """The tag ids of each row's best path: Viterbi under the model's CRF, else the argmax per
    token; emissions (B, T, C), lengths (B,) -> B lists of lengths[b] ids."""
    if model.crf is not None:
        paths = model.crf.viterbi(emissions.float(), lengths)[0]
    else:
        paths = emissions.argmax(-1)
    return [row[:n].tolist() for row, n in zip(paths, lengths.tolist())]
