"""SequenceModel heads: pooled features computed by hand from the layer outputs."""

import torch

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
