"""SequenceModel heads: pooled features computed by hand from the layer outputs."""

import pytest
import torch

from rnnkit.errors import UserError
from rnnkit.models import ModelConfig, SequenceModel


def test_concat_head_is_last_max_mean_over_valid_steps():
    torch.manual_seed(0)
    cfg = ModelConfig(encoder="identity", input_size=3, cell="rnn", hidden_size=4, head="concat", output_size=2)
    model = SequenceModel(cfg).eval()
    x, lengths = torch.randn(3, 6, 3), torch.tensor([6, 2, 4])
    with torch.no_grad():
        feats, _ = model.features(x, lengths=lengths)
        assert feats.shape == (3, 12) and model.head.in_features == 12
        for b, n in enumerate(lengths.tolist()):
            y, _ = model.rnn(x[b : b + 1, :n])  # the sequence alone, no padding
            expected = torch.cat([y[0, -1], y[0].amax(0), y[0].mean(0)])
            torch.testing.assert_close(feats[b], expected, rtol=1e-5, atol=1e-6)
        logits, _ = model(x, lengths=lengths)
        torch.testing.assert_close(logits, model.head(feats))


def test_bag_appends_the_mean_input_vector_over_valid_steps():
    torch.manual_seed(0)
    cfg = ModelConfig(encoder="embedding", input_size=20, embedding_dim=5, cell="gru", hidden_size=4,
                      bidirectional=True, head="max", bag=True, output_size=2)
    model = SequenceModel(cfg).eval()
    ids = torch.randint(0, 20, (3, 6, 2))  # a word and its hashed bigram per step
    lengths = torch.tensor([6, 2, 4])
    with torch.no_grad():
        feats, _ = model.features(ids, lengths=lengths)
        assert feats.shape == (3, 8 + 5) and model.head.in_features == 13
        for b, n in enumerate(lengths.tolist()):
            vectors = model.encoder.weight[ids[b, :n]].sum(1)  # (n, E): each step's ids summed
            y, _ = model.rnn(vectors.unsqueeze(0))
            expected = torch.cat([y[0].amax(0), vectors.mean(0)])
            torch.testing.assert_close(feats[b], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="bag needs a pooled head"):
        SequenceModel(ModelConfig(head="per_step", bag=True))
