"""Importing the authors' weights, our checkpoint round trip, and refusal of anything else."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pixelrnn.checkpoint import CheckpointError, from_authors_state_dict, load_model, save_checkpoint
from pixelrnn.model import ModelConfig, PixelRNN


def test_authors_gesture_and_lip_layouts(ref_dir, authors_models):
    gesture, lips = authors_models["gesture"], authors_models["lips"]
    assert gesture.config.num_classes == 9 and gesture.config.gate_threshold
    assert lips.config.num_classes == 4 and not lips.config.gate_threshold
    sd = torch.load(ref_dir / "pretrained" / "cam_noise.pt", map_location="cpu", weights_only=True)
    w = gesture.sensor_weights()
    assert np.array_equal(w.conv1, sd["cnn_model.conv1.weight"][:, 0].numpy())
    assert w.rnn_threshold == pytest.approx(float(sd["rnn_model.rnn_threshold"]))
    assert lips.sensor_weights().rnn_threshold == 0.0
    assert w.program_hash() != lips.sensor_weights().program_hash()


def test_finetuned_decoder_shares_the_sensor_program(ref_dir, authors_models):
    tuned = load_model(ref_dir / "pretrained" / "cam_noise_finetuned.pt")
    assert tuned.sensor_weights().program_hash() == authors_models["gesture"].sensor_weights().program_hash()


def test_our_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    model = PixelRNN(ModelConfig(num_classes=5, classes=list("abcde"), timesteps=3)).eval()
    path = save_checkpoint(model, tmp_path / "m.pt", extra={"epoch": 3})
    loaded = load_model(path)
    assert loaded.config == model.config
    frames = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # identical weights; logits may differ in the last bits between calls (multi-threaded
    # Linear reductions sum in varying order), so 1e-5 absolute on values of order 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(frames), model(frames), rtol=0, atol=1e-5)
    assert not list(tmp_path.glob("*.tmp"))


def test_refuses_other_state_dicts_and_garbage(tmp_path):
    other = tmp_path / "resnet.pt"
    torch.save({"conv.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(CheckpointError, match="not a PixelRNN state dict"):
        load_model(other)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable PyTorch weights file"):
        load_model(junk)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.pt")
    tensor_only = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor_only)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_model(tensor_only)


def test_truncated_authors_file_is_refused(ref_dir, tmp_path):
    data = (ref_dir / "pretrained" / "lips_no_noise.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_model(cut)


def test_state_dict_with_wrong_shapes_is_refused(ref_dir):
    sd = torch.load(ref_dir / "pretrained" / "lips_no_noise.pt", map_location="cpu", weights_only=True)
    sd["fc.weight"] = torch.zeros(4, 100)
    with pytest.raises(CheckpointError, match="shapes"):
        from_authors_state_dict(sd)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, value):
    """Issue 16: a checkpoint with NaN/inf weights is refused at load, not evaluated into nonsense."""
    path = save_checkpoint(PixelRNN(ModelConfig(num_classes=3)), tmp_path / "m.pt")
    data = torch.load(path, weights_only=True)
    data["state_dict"]["fc.weight"][1, 2] = value
    torch.save(data, path)
    with pytest.raises(CheckpointError, match=r"tensor fc\.weight holds 1 NaN or infinite"):
        load_model(path)
    from pixelrnn.checkpoint import _AUTHORS_COMMON, _AUTHORS_IGNORED

    ours = data["state_dict"]
    authors = {theirs: ours[mine] for theirs, mine in _AUTHORS_COMMON.items()}
    authors.update({name: torch.zeros(1) for name in _AUTHORS_IGNORED}, **{"rnn_model.rnn_threshold": torch.zeros(1)})
    authors["cnn_model.conv1.weight"] = torch.ones(16, 1, 5, 5)
    authors["fc.weight"] = torch.full((3, 4096), value)
    with pytest.raises(CheckpointError, match=r"tensor fc\.weight holds 12288 NaN or infinite"):
        from_authors_state_dict(authors)


def test_absurd_timesteps_are_refused(tmp_path):
    path = save_checkpoint(PixelRNN(ModelConfig(num_classes=3)), tmp_path / "m.pt")
    data = torch.load(path, weights_only=True)
    data["config"]["timesteps"] = 10 ** 9
    torch.save(data, path)
    with pytest.raises(CheckpointError, match=r"timesteps must be an integer 1\.\.1024"):
        load_model(path)
