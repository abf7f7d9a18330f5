"""The five training shapes of /work/shared/design/cpu-facts.md, their data and their models.

Each shape is a model ``encoder -> recurrent layer(s) -> head`` trained with Adam on one fixed
synthetic batch. The recurrent layer is either ``torch.nn.{RNN,LSTM,GRU}`` or an rnnkit layer
with options (see ``PEERS``); all peers of one shape start from the same weights.

| id | model | B | T |
|----|-------|---|---|
| S1 | SimpleRNN H=32 on 28 features (MNIST rows), last state -> Linear(32, 10) | 64 | 28 |
| S2 | 2 x LSTM H=32 on 1 feature (two sines), last state -> Linear(32, 1), MSE | 32 | 50 |
| S3 | Embedding(10000, 128) + BiGRU H=64 (IMDB), both final states -> Linear(128, 1), BCE | 32 | 200 |
| S4 | Embedding(65, 64) + 2 x LSTM H=256 (char LM), per-step Linear(256, 65), CE | 64 | 100 |
| S5 | LSTM H=128 on 1 feature (pixel MNIST), last state -> Linear(128, 10) | 64 | 784 |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class Shape:
    """One benchmark shape. ``vocab`` set means token inputs through an Embedding of width ``features``."""

    name: str
    title: str
    cell: str  # "rnn" | "lstm" | "gru"
    hidden: int
    layers: int
    bidirectional: bool
    batch: int
    steps: int
    features: int
    vocab: Optional[int]
    head: str  # "last" (final state -> classes) | "per_step" (LM head on every step)
    outputs: int
    loss: str  # "ce" | "mse" | "bce"


SHAPES = {
    s.name: s
    for s in (
        Shape("S1", "SimpleRNN H=32, B=64, T=28, F=28 (MNIST rows)", "rnn", 32, 1, False, 64, 28, 28, None, "last", 10, "ce"),
        Shape("S2", "2xLSTM H=32, B=32, T=50, F=1 (two sines)", "lstm", 32, 2, False, 32, 50, 1, None, "last", 1, "mse"),
        Shape("S3", "Emb(10000,128) + BiGRU H=64, B=32, T=200 (IMDB)", "gru", 64, 1, True, 32, 200, 128, 10000, "last", 1, "bce"),
        Shape("S4", "Emb(65,64) + 2xLSTM H=256, B=64, T=100, per-step head (char LM)", "lstm", 256, 2, False, 64, 100, 64, 65, "per_step", 65, "ce"),
        Shape("S5", "LSTM H=128, B=64, T=784, F=1 (pixel MNIST)", "lstm", 128, 1, False, 64, 784, 1, None, "last", 10, "ce"),
    )
}

# Reference numbers from cpu-facts.md (ms per training step), used when Keras is not importable.
KERAS_REFERENCE_MS = {"S1": 2.50, "S2": 10.8, "S3": 59.8, "S4": 263.0, "S5": 249.0}


GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def training_flops(shape: Shape) -> float:
    """Matmul FLOPs of one training step of the shape's standard model: 3 x the forward's.

    Forward, per layer and direction: ``2 B T (F + H) G H`` (input and recurrent projections,
    G gates); head ``2 B (T) D H outputs``. Backward is twice the forward (input and weight
    gradients), the usual count; element-wise work is not counted. S4: 33.3 GFLOP.
    """
    B, T, H, D = shape.batch, shape.steps, shape.hidden, 2 if shape.bidirectional else 1
    forward, width = 0.0, shape.features
    for _ in range(shape.layers):
        forward += D * 2 * B * T * (width + H) * GATES[shape.cell] * H
        width = D * H
    forward += 2 * B * (T if shape.head == "per_step" else 1) * width * shape.outputs
    return 3 * forward


def make_batch(shape: Shape, seed: int = 1) -> tuple[Tensor, Tensor]:
    """The fixed synthetic batch: inputs (B, T) tokens or (B, T, F) floats, and targets."""
    g = torch.Generator().manual_seed(seed)
    B, T = shape.batch, shape.steps
    if shape.vocab is not None:
        x = torch.randint(0, shape.vocab, (B, T), generator=g)
    elif shape.name == "S2":
        t = torch.linspace(0, 8 * torch.pi, T + 1)
        phase = torch.rand(B, 1, generator=g) * 6.28
        wave = torch.sin(t + phase) + 0.5 * torch.sin(2.3 * t + phase)  # (B, T+1)
        x, y = wave[:, :T].unsqueeze(-1), wave[:, T:]
        return x, y
    else:
        x = torch.rand(B, T, shape.features, generator=g)  # pixels / rows in [0, 1)
    if shape.head == "per_step":
        y = torch.randint(0, shape.outputs, (B, T), generator=g)
    elif shape.loss == "bce":
        y = torch.randint(0, 2, (B, 1), generator=g).float()
    else:
        y = torch.randint(0, shape.outputs, (B,), generator=g)
    return x, y


def torch_rnn(shape: Shape) -> nn.Module:
    """The torch.nn layer of this shape (batch_first)."""
    cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[shape.cell]
    return cls(shape.features, shape.hidden, shape.layers, batch_first=True, bidirectional=shape.bidirectional)


class ShapeModel(nn.Module):
    """encoder (Embedding or identity) -> recurrent ``rnn`` -> head. ``rnn(x) -> (y, state)``."""

    def __init__(self, shape: Shape, rnn: nn.Module):
        super().__init__()
        self.shape = shape
        self.embed = nn.Embedding(shape.vocab, shape.features) if shape.vocab else None
        self.rnn = rnn
        D = 2 if shape.bidirectional else 1
        self.head = nn.Linear(shape.hidden * D, shape.outputs)

    def forward(self, x: Tensor) -> Tensor:
        if self.embed is not None:
            x = self.embed(x)  # (B, T, F)
        y, state = self.rnn(x)  # (B, T, D*H)
        if self.shape.head == "per_step":
            return self.head(y)  # (B, T, V)
        h = state[0] if isinstance(state, tuple) else state  # (L*D, B, H)
        if self.shape.bidirectional:
            return self.head(torch.cat([h[-2], h[-1]], dim=-1))
        return self.head(h[-1])


def loss_fn(shape: Shape, out: Tensor, y: Tensor) -> Tensor:
    if shape.loss == "mse":
        return F.mse_loss(out, y)
    if shape.loss == "bce":
        return F.binary_cross_entropy_with_logits(out, y)
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def reference_state(shape: Shape) -> dict:
    """The shared initial weights of every peer: a torch.nn model built with seed 0."""
    torch.manual_seed(0)
    return ShapeModel(shape, torch_rnn(shape)).state_dict()


def build_torch(shape: Shape) -> ShapeModel:
    model = ShapeModel(shape, torch_rnn(shape))
    model.load_state_dict(reference_state(shape))
    return model


def build_rnnkit(shape: Shape, **options) -> ShapeModel:
    """The shape with ``rnnkit.Recurrent(cell, ..., **options)``; shared weights copied in.

    ``options`` may hold ``force_path`` ("fused" | "bptt" | "scan" | "reference"), set as an
    attribute, and ``cell`` (replaces the shape's cell; the recurrent weights are then its own).
    """
    import rnnkit  # only here: the torch.nn-default worker must never import rnnkit

    force_path = options.pop("force_path", None)
    cell = options.pop("cell", shape.cell)
    rnn = rnnkit.Recurrent(cell, shape.features, shape.hidden, shape.layers,
                           bidirectional=shape.bidirectional, **options)
    if force_path is not None:
        rnn.force_path = force_path
    model = ShapeModel(shape, rnn)
    state = reference_state(shape)
    if cell != shape.cell:  # another cell (minGRU/minLSTM): shared encoder and head, its own recurrent weights
        state = {k: v for k, v in state.items() if not k.startswith("rnn.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(".ln_" in k or k.startswith("rnn.") and cell != shape.cell for k in missing), (
        missing, unexpected)
    return model


# peer name -> (where it runs, rnnkit options or None for torch.nn, shapes it applies to or None = all)
PEERS = {
    "torch.nn": ("worker-torch", None, None),
    "torch.nn+ftz": ("main", None, None),
    "rnnkit": ("main", {}, None),
    "rnnkit use_fused=False": ("main", {"use_fused": False}, None),
    "rnnkit reference loop": ("main", {"use_fused": False, "force_path": "reference"}, None),
    "rnnkit rec_dropout=0.25": ("main", {"recurrent_dropout": 0.25}, None),
    "rnnkit layer_norm": ("main", {"layer_norm": True}, None),
    "rnnkit GRU reset_after=False": ("main", {"reset_after": False}, ("S3",)),
    # the same shape with the cell replaced by minGRU / minLSTM (Feng et al., 2024; same H, layers,
    # directions): the ratio to torch.nn+ftz is issue 8's "minGRU >= 10x LSTM throughput" on S5
    "rnnkit minGRU": ("main", {"cell": "mingru"}, None),
    "rnnkit minLSTM": ("main", {"cell": "minlstm"}, None),
    "keras": ("worker-keras", None, None),
}


def build_peer(peer: str, shape: Shape) -> ShapeModel:
    """The model of ``peer`` for ``shape`` (torch.nn or rnnkit; Keras lives in keras_peer)."""
    _, options, _ = PEERS[peer]
    if options is None:
        return build_torch(shape)
    return build_rnnkit(shape, **dict(options))
