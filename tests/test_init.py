"""Initialisation schemes of the recurrent layers."""

import pytest
import torch

import rnnkit


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_keras_init_orthogonal_recurrent_glorot_input_zero_bias(cell):
    torch.manual_seed(0)
    layer = rnnkit.Recurrent(cell, 5, 8, num_layers=2, bidirectional=True, init="keras")
    G = layer.num_gates
    for name, p in layer.named_parameters():
        if name.startswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        elif name.startswith("weight_hh"):
            for block in p.detach().view(G, 8, 8):  # each gate's (H, H) block is orthogonal
                torch.testing.assert_close(block @ block.T, torch.eye(8), atol=1e-5, rtol=0)
        else:
            fan_out, fan_in = p.shape
            bound = (6.0 / (fan_in + fan_out)) ** 0.5
            assert p.abs().max() <= bound and p.abs().max() > 0.5 * bound, name


def test_keras_init_keeps_forget_bias_option():
    layer = rnnkit.LSTM(3, 4, init="keras", forget_bias=1.0)
    torch.testing.assert_close(layer.bias_ih_l0[4:8], torch.ones(4))
    assert torch.count_nonzero(layer.bias_ih_l0[:4]) == 0


def test_torch_init_is_uniform_within_bound():
    layer = rnnkit.GRU(3, 16)
    bound = 1 / 16**0.5
    assert all(p.abs().max() <= bound for p in layer.parameters())


def test_unknown_init_is_refused():
    with pytest.raises(ValueError, match="unknown init 'xavier'"):
        rnnkit.RNN(3, 4, init="xavier")


def test_keras_init_of_the_whole_model():
    from rnnkit.models import ModelConfig, SequenceModel

    torch.manual_seed(0)
    model = SequenceModel(ModelConfig(encoder="embedding", input_size=500, embedding_dim=16, cell="gru",
                                      hidden_size=8, head="last", output_size=3, init="keras"))
    emb = model.encoder.weight
    assert emb.abs().max() <= 0.05 and emb.abs().max() > 0.045  # U(-0.05, 0.05)
    bound = (6.0 / (8 + 3)) ** 0.5
    assert model.head.weight.abs().max() <= bound and torch.count_nonzero(model.head.bias) == 0
    default = SequenceModel(ModelConfig(encoder="embedding", input_size=500, embedding_dim=16, cell="gru",
                                        hidden_size=8, head="last", output_size=3))
    assert default.encoder.weight.std() > 0.9  # torch's N(0, 1)
