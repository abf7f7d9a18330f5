"""Generation speed: a 2-layer LSTM(256) char model (S4's) sampling one char at a time.

Both peers carry the state between steps and feed each sampled char back in (char-rnn's way);
batch 1 is interactive sampling, batch 64 is sampling many streams at once. chars/s counts
every stream: ``B * steps / seconds``. ``torch.nn`` is a hand-written loop over ``nn.LSTM``;
``rnnkit`` is the library's own sampler, ``TextGenerator.sample`` (what ``rnnkit sample``
runs), on the same weights.
"""

from __future__ import annotations

import time

import torch
from torch import nn

VOCAB, EMBED, HIDDEN, LAYERS = 65, 64, 256, 2


class CharModel(nn.Module):
    """Embedding(65, 64) -> 2 x LSTM(256) -> Linear(256, 65); ``rnn(x, state) -> (y, state)``."""

    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.embed, self.rnn, self.head = nn.Embedding(VOCAB, EMBED), rnn, nn.Linear(HIDDEN, VOCAB)

    def forward(self, tokens, state):
        y, state = self.rnn(self.embed(tokens), state)  # (B, 1, H)
        return self.head(y[:, -1]), state  # (B, V)


def build(peer: str):
    """The torch.nn CharModel, or an rnnkit TextGenerator holding the same weights."""
    torch.manual_seed(0)
    reference = CharModel(nn.LSTM(EMBED, HIDDEN, LAYERS, batch_first=True))
    if peer == "torch.nn":
        return reference.eval()
    from rnnkit.data.text import CharVocab
    from rnnkit.models import ModelConfig, SequenceModel
    from rnnkit.tasks.textgen import TextGenerator

    model = SequenceModel(ModelConfig(cell="lstm", hidden_size=HIDDEN, num_layers=LAYERS, embedding_dim=EMBED,
                                      input_size=VOCAB, output_size=VOCAB))
    model.encoder.load_state_dict(reference.embed.state_dict())
    model.rnn.load_state_dict(reference.rnn.state_dict())
    model.head.load_state_dict(reference.head.state_dict())
    return TextGenerator.from_model(model.eval(), CharVocab([chr(32 + i) for i in range(VOCAB)]))


@torch.inference_mode()
def chars_per_second(model, batch: int, steps: int, seed: int = 0) -> float:
    """Sample ``steps`` chars for ``batch`` streams; returns chars/s over all streams."""
    if not isinstance(model, CharModel):  # rnnkit's TextGenerator: one call samples everything
        start = time.perf_counter()
        model.sample(" ", steps, temperature=1.0, seed=seed, num_samples=batch)
        return batch * steps / (time.perf_counter() - start)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(batch, 1, dtype=torch.long)
    state = None
    start = time.perf_counter()
    for _ in range(steps):
        logits, state = model(tokens, state)
        tokens = torch.multinomial(torch.softmax(logits, -1), 1, generator=g)  # (B, 1)
    return batch * steps / (time.perf_counter() - start)


def run(peers, batches=(1, 64), steps: int = 1000, repeats: int = 3) -> dict:
    """{(peer, batch): [chars/s per repeat]}, peers interleaved within each repeat."""
    models = {p: build(p) for p in peers}
    results = {(p, b): [] for p in peers for b in batches}
    for b in batches:
        for p in peers:
            chars_per_second(models[p], b, 20)  # warm-up
        for r in range(repeats):
            order = peers[r % len(peers):] + peers[: r % len(peers)]
            for p in order:
                results[(p, b)].append(chars_per_second(models[p], b, steps, seed=r))
    return results
