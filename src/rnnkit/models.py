"""The one model every job uses: input encoder -> recurrent stack -> head.

``SequenceModel(ModelConfig)``; the config is a plain JSON-able dataclass stored in every
artifact, so a model is rebuilt from ``artifact.json`` alone.

Shapes: inputs (B, T) token ids for ``encoder="embedding"`` (or (B, T, K): K ids per step whose
vectors are summed, e.g. a word and its hashed bigram), (B, T, F) floats otherwise;
outputs (B, T, O) for ``head="per_step"``, (B, O) for ``last``, ``mean``, ``max`` and ``concat``
(``[last; max; mean]``, the concat pooling of ULMFiT, Howard & Ruder 2018).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.errors import UserError, check_at_least
from rnnkit.recurrent import Recurrent, merge_directions

ENCODERS = ("embedding", "linear", "identity")
HEADS = ("per_step", "last", "mean", "max", "concat")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a SequenceModel (dimensions come from the data)."""

    encoder: str = "embedding"  # embedding (token ids) | linear (features -> embedding_dim) | identity
    input_size: int = 1  # vocabulary size V (embedding) or features per step F
    embedding_dim: int = 64  # width after the encoder (ignored by identity)
    embedding_dropout: float = 0.0  # dropout on the encoder output (training only)
    cell: str = "lstm"  # rnn | lstm | gru | mingru | minlstm
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = False
    merge_mode: str = "concat"  # how the last layer's directions merge: concat | sum | mean | mul
    dropout: float = 0.0  # between recurrent layers
    recurrent_dropout: float = 0.0  # variational, inside the recurrence
    weight_dropout: float = 0.0  # DropConnect on W_hh, one mask per forward call (keeps the fused kernel)
    layer_norm: bool = False
    nonlinearity: str = "tanh"  # rnn cell only
    reset_after: bool = True  # gru cell only
    forget_bias: Optional[float] = None  # lstm cell only; None keeps torch's init
    init: str = "torch"  # torch (as torch.nn: N(0, 1) embedding) | keras (as Keras layers: U(+-0.05) embedding,
    # glorot-uniform input and head weights, orthogonal recurrent, zero biases)
    head: str = "per_step"  # per_step | last | mean | max | concat (pooled over valid steps)
    head_dropout: float = 0.0  # dropout on the recurrent features before the head
    bag: bool = False  # pooled heads: also read the mean input vector over valid steps (fastText's bag of n-grams)
    output_size: int = 1  # classes C, vocabulary V, or values per step
    use_fused: str = "auto"  # auto | true | false (see rnnkit.fused)

    def __post_init__(self):
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        for name in ("embedding_dropout", "dropout", "recurrent_dropout", "weight_dropout", "head_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        check_at_least(self, 1, ("input_size", "embedding_dim", "hidden_size", "num_layers", "output_size"))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**d)


def _fused_flag(value: str):
    return {"auto": "auto", "true": True, "false": False}[str(value).lower()]


class SequenceModel(nn.Module):
    """encoder -> Recurrent stack -> head. ``forward(inputs, state=None, lengths=None) -> (outputs, state)``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        if c.encoder == "embedding":
            self.encoder = nn.Embedding(c.input_size, c.embedding_dim)
            rnn_input = c.embedding_dim
        elif c.encoder == "linear":
            self.encoder = nn.Linear(c.input_size, c.embedding_dim)
            rnn_input = c.embedding_dim
        else:
            self.encoder = nn.Identity()
            rnn_input = c.input_size
        self.rnn = Recurrent(
            c.cell, rnn_input, c.hidden_size, c.num_layers, bidirectional=c.bidirectional, dropout=c.dropout,
            recurrent_dropout=c.recurrent_dropout, weight_dropout=c.weight_dropout, layer_norm=c.layer_norm, merge_mode=c.merge_mode,
            use_fused=_fused_flag(c.use_fused), nonlinearity=c.nonlinearity, reset_after=c.reset_after,
            forget_bias=c.forget_bias, init=c.init,
        )
        if c.bag and c.head == "per_step":  # checked here: classification tasks turn per_step into last
            raise UserError("bag needs a pooled head (last, mean, max or concat), not per_step "
                            "(text generation and forecasting predict every step)")
        pooled = 3 if c.head == "concat" else 1  # [last; max; mean]
        self.head = nn.Linear(pooled * self.rnn.output_size + (rnn_input if c.bag else 0), c.output_size)
        if c.init == "keras":
            self._keras_init()

    def _keras_init(self) -> None:
        """Keras's defaults: Embedding U(-0.05, 0.05); Dense glorot-uniform kernel, zero bias.
        (The recurrent layer initialises itself.) A N(0, 1) embedding under Adam at 1e-3 moves
        slowly relative to its own scale; the small Keras start learns faster on text."""
        with torch.no_grad():
            if isinstance(self.encoder, nn.Embedding):
                self.encoder.weight.uniform_(-0.05, 0.05)
            for linear in (m for m in (self.encoder, self.head) if isinstance(m, nn.Linear)):
                nn.init.xavier_uniform_(linear.weight)
                nn.init.zeros_(linear.bias)

    def stepper(self, make_stepper):
        """What generates one step at a time: ``make_stepper(self)``, the task's stepping rule."""
        return make_stepper(self)

    def state_layers(self) -> list:
        """The Recurrent that carries this network's state, in a list of one (export reads it)."""
        return [self.rnn]

    def features(self, inputs: Tensor, state=None, lengths=None):
        """Recurrent features before the head: (B, T, D*H) for per_step, (B, D*H) pooled, (B, 3*D*H) concat;
        with ``bag``, the mean input vector over valid steps (B, E) is appended."""
        c = self.config
        x = self.encoder(inputs)  # (B, T, E), or (B, T, K, E) for K ids per step
        if x.dim() == 4:
            x = x.sum(2)  # several ids per step (word + hashed n-grams, fastText-style): sum their vectors
        x = F.dropout(x, c.embedding_dropout, self.training)  # (B, T, E)
        y, state = self.rnn(x, state, lengths)  # (B, T, D*H)
        if c.head == "per_step":
            return y, state
        hows = ("last", "max", "mean") if c.head == "concat" else (c.head,)
        pooled = [pool(y, state, how, lengths, self.rnn) for how in hows]
        if c.bag:
            pooled.append(pool(x, None, "mean", lengths, self.rnn))
        return (torch.cat(pooled, dim=-1) if len(pooled) > 1 else pooled[0]), state

    def forward(self, inputs: Tensor, state=None, lengths=None):
        feats, state = self.features(inputs, state, lengths)
        feats = F.dropout(feats, self.config.head_dropout, self.training)
        return self.head(feats), state


def pool(y: Tensor, state, how: str, lengths: Optional[Tensor], rnn: Recurrent) -> Tensor:
    """Pool outputs over valid steps. y: (B, T, D*H) -> (B, D*H).

    ``last`` takes the final state of the last layer, i.e. the forward direction at each
    sequence's last valid step and the reverse direction at step 0 (as Keras's
    Bidirectional(return_sequences=False) does), merged with the layer's merge mode.
    """
    if how == "last":
        h = state[0] if isinstance(state, tuple) else state  # (L*D, B, H)
        last = h[-rnn.num_directions :]  # (D, B, H)
        if rnn.num_directions == 1:
            return last[0]
        return merge_directions(torch.cat([last[0], last[1]], dim=-1), rnn.merge_mode)
    if lengths is None:
        return y.mean(1) if how == "mean" else y.amax(1)
    lengths = torch.as_tensor(lengths, device=y.device)
    valid = (torch.arange(y.shape[1], device=y.device) < lengths.unsqueeze(1)).unsqueeze(-1)  # (B, T, 1)
    if how == "mean":
        return (y * valid).sum(1) / lengths.unsqueeze(1).to(y.dtype)
    return y.masked_fill(~valid, float("-inf")).amax(1)
