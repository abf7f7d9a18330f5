"""The translator's network: a recurrent encoder-decoder with attention.

Shape letters: ``B`` sentence pairs, ``S`` source tokens, ``T`` target tokens, ``E`` embedding
width, ``H`` hidden size, ``D`` encoder directions, ``L`` layers, ``V`` target vocabulary,
``A`` attention width (= H).

Encoder (Bahdanau et al. 2015): source ids -> embedding -> any rnnkit :class:`Recurrent` stack
(bidirectional by default) -> memory ``m_1..m_S`` (S, D*H). The decoder's first state, layer l:
``s_0 = tanh(W_b [h_l,fwd at the last token; h_l,bwd at the first])`` (LSTM: cell state 0).

Decoder, step t (Luong et al. 2015, with input feeding):

    x_t     = [ e(y_{t-1}) ; a_{t-1} ]                     (2E,)   (without input feeding: e(y_{t-1}))
    s_t     = RNN(x_t, s_{t-1})                            (H,)    L layers of the model's cell
    alpha_t = softmax_j score(s_t, m_j)  over the source's real tokens
    c_t     = sum_j alpha_tj m_j                           (D*H,)
    a_t     = tanh(W_a [c_t ; s_t])                        (E,)    the attentional vector
    z_t     = E_y a_t + b  (tied target embeddings)  or  W_o a_t + b     (V,)

    score(s, m) = v^T tanh(W_q s + W_k m)   additive (Bahdanau)
    score(s, m) = s^T W m                   multiplicative (Luong's "general")

Without input feeding the decoder RNN reads all T target tokens in one call (the fused kernel);
with it, step by step. Decoding runs :meth:`Seq2SeqNet.step` with the state carried, as sampling
does (:mod:`rnnkit.tasks.seq2seq_search`).

Inputs are one int64 tensor ``x`` (B, 2, N): ``x[:, 0]`` the source ids, ``x[:, 1]`` the target
ids the decoder reads (BOS first), both padded with 0; ``lengths`` (B,) source lengths (None:
every source has N tokens). ``forward(x, state=None, lengths=None) -> (logits (B, T, V), None)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.models import ModelConfig
from rnnkit.recurrent import Recurrent

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS_END = UNK + 1  # the first id of a real token
ATTENTIONS = ("additive", "multiplicative")


@dataclass
class DecoderState:
    """What one decoding step carries, for N rows (sentences, or sentences x beams):
    ``hidden`` (L, N, H) (LSTM: ``(h, c)``), ``feed`` the last attentional vector (N, E) or None,
    ``memory`` (N, S, D*H), ``keys`` the memory projected for the score (N, S, A or H) and
    ``mask`` (N, S), True at the source's real tokens."""

    hidden: object
    feed: Optional[Tensor]
    memory: Tensor
    keys: Tensor
    mask: Tensor

    def select(self, index: Tensor) -> "DecoderState":
        """The rows ``index`` (N',) of every part (beam search reorders and repeats rows)."""
        hidden = (tuple(h.index_select(1, index) for h in self.hidden) if isinstance(self.hidden, tuple)
                  else self.hidden.index_select(1, index))
        feed = None if self.feed is None else self.feed.index_select(0, index)
        return DecoderState(hidden, feed, self.memory.index_select(0, index), self.keys.index_select(0, index),
                            self.mask.index_select(0, index))


class Attention(nn.Module):
    """Scores of decoder states against the memory, and the context they pick.
    ``forward(queries (N, T, H), state) -> (context (N, T, D*H), weights (N, T, S))``; weights are
    0 at padded source positions and sum to 1 over the real ones."""

    def __init__(self, kind: str, hidden: int, memory: int):
        super().__init__()
        if kind not in ATTENTIONS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, got {kind!r}")
        self.kind = kind
        self.key = nn.Linear(memory, hidden, bias=False)  # W_k (additive) or W (multiplicative)
        if kind == "additive":
            self.query = nn.Linear(hidden, hidden)
            self.v = nn.Linear(hidden, 1, bias=False)

    def keys(self, memory: Tensor) -> Tensor:
        return self.key(memory)  # (N, S, H): computed once per sentence

    def forward(self, queries: Tensor, state: DecoderState) -> tuple[Tensor, Tensor]:
        if self.kind == "additive":
            mixed = torch.tanh(self.query(queries).unsqueeze(2) + state.keys.unsqueeze(1))  # (N, T, S, H)
            scores = self.v(mixed).squeeze(-1)  # (N, T, S)
        else:
            scores = queries @ state.keys.transpose(1, 2)  # (N, T, S)
        scores = scores.masked_fill(~state.mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores.float(), -1).to(queries.dtype)
        return weights @ state.memory, weights


class Seq2SeqNet(nn.Module):
    """Encoder-decoder with attention (module docstring). ``model``: the recurrent options
    (cell, embedding_dim, hidden_size, num_layers, bidirectional encoder, dropout between layers,
    embedding_dropout on the embeddings, head_dropout on a_t) with ``input_size`` = source
    vocabulary and ``output_size`` = target vocabulary."""

    def __init__(self, model: ModelConfig, attention: str = "additive", input_feeding: bool = True,
                 tie_embeddings: bool = True):
        super().__init__()
        self.config, self.input_feeding = model, input_feeding
        E, H, L = model.embedding_dim, model.hidden_size, model.num_layers
        common = dict(dropout=model.dropout, recurrent_dropout=model.recurrent_dropout, layer_norm=model.layer_norm,
                      forget_bias=model.forget_bias, init=model.init)
        self.source_embedding = nn.Embedding(model.input_size, E, padding_idx=PAD)
        self.encoder = Recurrent(model.cell, E, H, L, bidirectional=model.bidirectional, **common)
        memory = self.encoder.output_size
        self.bridge = nn.Linear(memory, H)
        self.target_embedding = nn.Embedding(model.output_size, E, padding_idx=PAD)
        self.decoder = Recurrent(model.cell, 2 * E if input_feeding else E, H, L, **common)
        self.attention = Attention(attention, H, memory)
        self.combine = nn.Linear(memory + H, E, bias=False)  # W_a
        self.output = nn.Linear(E, model.output_size)
        if tie_embeddings:
            self.output.weight = self.target_embedding.weight

    # -- encoder -------------------------------------------------------------------------------
    def start(self, source: Tensor, lengths: Optional[Tensor]) -> DecoderState:
        """Encode source ids (N, S) (``lengths`` (N,) or None) -> the decoder's first state."""
        c = self.config
        x = F.dropout(self.source_embedding(source), c.embedding_dropout, self.training)  # (N, S, E)
        memory, final = self.encoder(x, None, lengths)  # (N, S, D*H), (L*D, N, H)
        h = final[0] if isinstance(final, tuple) else final
        D = self.encoder.num_directions
        per_layer = h.view(c.num_layers, D, *h.shape[1:]).permute(0, 2, 1, 3).flatten(2)  # (L, N, D*H)
        s0 = torch.tanh(self.bridge(per_layer))  # (L, N, H)
        hidden = (s0, torch.zeros_like(s0)) if c.cell == "lstm" else s0
        S = source.shape[1]
        n = torch.full((source.shape[0],), S) if lengths is None else torch.as_tensor(lengths)
        mask = torch.arange(S, device=source.device) < n.to(source.device).unsqueeze(1)  # (N, S)
        feed = memory.new_zeros(source.shape[0], c.embedding_dim) if self.input_feeding else None
        return DecoderState(hidden, feed, memory, self.attention.keys(memory), mask)

    # -- decoder -------------------------------------------------------------------------------
    def _attend(self, s: Tensor, state: DecoderState) -> tuple[Tensor, Tensor]:
        """Decoder outputs s (N, T, H) -> attentional vectors a (N, T, E), weights (N, T, S)."""
        context, weights = self.attention(s, state)
        return torch.tanh(self.combine(torch.cat([context, s], -1))), weights

    def _logits(self, a: Tensor) -> Tensor:
        return self.output(F.dropout(a, self.config.head_dropout, self.training))  # (N, T, V)

    def decode(self, previous: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState, Tensor]:
        """Teacher forcing: the target ids read (N, T) -> (logits (N, T, V), state after, weights (N, T, S))."""
        e = F.dropout(self.target_embedding(previous), self.config.embedding_dropout, self.training)  # (N, T, E)
        if not self.input_feeding:
            s, hidden = self.decoder(e, state.hidden)  # (N, T, H)
            a, weights = self._attend(s, state)
            return self._logits(a), replace(state, hidden=hidden), weights
        outs, maps = [], []
        for t in range(previous.shape[1]):
            x = torch.cat([e[:, t : t + 1], state.feed.unsqueeze(1)], -1)  # (N, 1, 2E)
            s, hidden = self.decoder(x, state.hidden)
            a, weights = self._attend(s, state)
            state = replace(state, hidden=hidden, feed=a[:, 0])
            outs.append(a)
            maps.append(weights)
        return self._logits(torch.cat(outs, 1)), state, torch.cat(maps, 1)

    def step(self, previous: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState, Tensor]:
        """One decoding step: the last ids (N,) -> (log-probabilities (N, V), state, weights (N, S))."""
        logits, state, weights = self.decode(previous.unsqueeze(1), state)
        return torch.log_softmax(logits[:, 0].float(), -1), state, weights[:, 0]

    def forward(self, x: Tensor, state=None, lengths=None):
        source, previous = x[:, 0], x[:, 1]
        S = source.shape[1] if lengths is None else int(torch.as_tensor(lengths).max())
        T = max(int((previous != PAD).sum(1).max()), 1)
        logits, _, _ = self.decode(previous[:, :T], self.start(source[:, :S], lengths))
        return logits, None


def seq2seq_model_config(model: ModelConfig, source_vocab: int, target_vocab: int) -> ModelConfig:
    """The user's recurrent options with the vocabularies the data gives."""
    return replace(model, encoder="embedding", input_size=source_vocab, output_size=target_vocab, head="per_step",
                   bag=False)


# ----------------------------------------------------------------------------------- ONNX graphs


class EncoderGraph(nn.Module):
    """``forward(source (B, S) int64, lengths (B,) int64) -> memory (B, S, D*H), keys (B, S, H),
    mask (B, S) bool, h (L, B, H) [, c (L, B, H)] [, feed (B, E)]``: the decoder's first state."""

    def __init__(self, net: Seq2SeqNet):
        super().__init__()
        self.net = net

    def forward(self, source: Tensor, lengths: Tensor):
        state = self.net.start(source, lengths)
        hidden = state.hidden if isinstance(state.hidden, tuple) else (state.hidden,)
        feed = (state.feed,) if state.feed is not None else ()
        return (state.memory, state.keys, state.mask, *hidden, *feed)


class DecoderStepGraph(nn.Module):
    """``forward(previous (B,) int64, memory, keys, mask, h [, c] [, feed]) -> log_probs (B, V),
    weights (B, S), h [, c] [, feed]``: one step of :meth:`Seq2SeqNet.step`; feed the state back."""

    def __init__(self, net: Seq2SeqNet):
        super().__init__()
        self.net = net
        self.lstm = net.config.cell == "lstm"

    def forward(self, previous: Tensor, memory: Tensor, keys: Tensor, mask: Tensor, *rest: Tensor):
        hidden, rest = ((rest[0], rest[1]), rest[2:]) if self.lstm else (rest[0], rest[1:])
        state = DecoderState(hidden, rest[0] if rest else None, memory, keys, mask)
        log_probs, state, weights = self.net.step(previous, state)
        hidden = state.hidden if isinstance(state.hidden, tuple) else (state.hidden,)
        return (log_probs, weights, *hidden, *(() if state.feed is None else (state.feed,)))


def export_graphs(net: Seq2SeqNet) -> dict:
    """The encoder and decoder-step graphs to export: ``{name: (module, example args, input names,
    output names, dynamic axes)}``."""
    B, S = 2, 5
    source, lengths = torch.randint(SPECIALS_END, net.config.input_size, (B, S)), torch.tensor([S, S - 2])
    with torch.no_grad():
        start = EncoderGraph(net)(source, lengths)
    state_names = ["h", "c"] if net.config.cell == "lstm" else ["h"]
    state_names += ["feed"] if net.input_feeding else []
    encoder_axes = {"source": {0: "batch", 1: "source_time"}, "lengths": {0: "batch"},
                    "memory": {0: "batch", 1: "source_time"}, "keys": {0: "batch", 1: "source_time"},
                    "mask": {0: "batch", 1: "source_time"}}
    encoder_axes.update({n: ({1: "batch"} if n in ("h", "c") else {0: "batch"}) for n in state_names})
    step_axes = {"previous": {0: "batch"}, "log_probs": {0: "batch"}, "weights": {0: "batch", 1: "source_time"},
                 **{k: encoder_axes[k] for k in ("memory", "keys", "mask")}}
    for n in state_names:
        step_axes[n] = step_axes[n + "_out"] = encoder_axes[n]
    step_args = (torch.full((B,), BOS, dtype=torch.int64), *start)
    return {
        "encoder": (EncoderGraph(net), (source, lengths), ["source", "lengths"],
                    ["memory", "keys", "mask", *state_names], encoder_axes),
        "decoder_step": (DecoderStepGraph(net), step_args, ["previous", "memory", "keys", "mask", *state_names],
                         ["log_probs", "weights", *[n + "_out" for n in state_names]], step_axes),
    }

