"""PixelRNN.decode on uint8 levels in eval mode gathers the decoder's elementwise part from a (maps, 256)
table: the logits must be bit-identical to the float path (the same float ops on the same values),
for every head and readout layout; training and autograd keep the float path."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pixelrnn.model import ModelConfig, PixelRNN  # noqa: E402

LAYOUTS = [dict(), dict(readout_every=2, readout_bits=1, readout_pool=2), dict(readout_every=4, readout_bits=2),
           dict(readout_every=8, out_channels=2, readout_bits=4, readout_pool=4)]


def _model(decoder: str, layout: dict, seed: int) -> PixelRNN:
    torch.manual_seed(seed)
    model = PixelRNN(ModelConfig(num_classes=7, decoder=decoder, decoder_hidden=64, **layout))
    with torch.no_grad():                       # BN statistics and affine away from their defaults
        model.bn.running_mean.uniform_(-2, 2)
        model.bn.running_var.uniform_(0.5, 3)
        model.bn.weight.uniform_(-2, 2)
        model.bn.bias.uniform_(-1, 1)
        if decoder == "authors":
            model.thresh3.fill_(0.3)
            model.fin_conv.uniform_(-1, 1)
    return model.eval()


@pytest.mark.parametrize("decoder", ["authors", "mlp", "cnn"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=["authors", "f2-1bit-pool2", "f4-2bit", "f8-k2-4bit-pool4"])
def test_table_decode_is_bit_identical_to_the_float_path(decoder, layout):
    model = _model(decoder, layout, seed=len(layout))
    lay = model.config.layout
    rng = np.random.default_rng(3)
    levels = torch.from_numpy(rng.integers(0, 2 ** lay.bits, (37, *lay.shape), dtype=np.uint8))
    with torch.no_grad():
        table = model.decode(levels)
        floats = model.decode_analog(model.dequantize(levels.to(torch.float32)))
    assert table.shape == (37, 7)
    assert torch.equal(table, floats)
    if lay.is_authors:                          # the authors' layout also takes (B, 64, 64)
        with torch.no_grad():
            assert torch.equal(model.decode(levels[:, 0]), floats)


def test_training_and_autograd_keep_the_float_path():
    model = _model("authors", LAYOUTS[1], seed=0)
    lay = model.config.layout
    levels = torch.from_numpy(np.random.default_rng(4).integers(0, 2, (5, *lay.shape), dtype=np.uint8))
    model.decode(levels).sum().backward()       # grad enabled: gradients reach the decoder
    assert model.fc.weight.grad is not None and model.fin_conv.grad is not None
    model.train()
    with torch.no_grad():                       # train mode: BN uses the batch, not a per-level table
        out = model.decode(levels)
        ref = model.decode_analog(model.dequantize(levels.to(torch.float32)))
    assert torch.equal(out, ref)
