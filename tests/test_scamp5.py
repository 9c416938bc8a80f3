"""The SCAMP-5 weight text: our writer reproduces the authors' two files; the parser reads them back."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import need
from core.errors import InputError
from export.scamp5 import KERNEL_KEYS, TEXT_ORDER, kernels_from_text_order, read_scamp5_text, write_scamp5_text
from pixelrnn.model import ModelConfig, PixelRNN

AUTHORS = {"gesture": "cam_noise_iw10.txt", "lips": "lip_iw10.txt"}
UNUSED = "cnn_model.thresh2"  # in the authors' files, used by no forward pass, not in our models


@pytest.mark.parametrize("task", ["gesture", "lips"])
def test_writer_reproduces_the_authors_files(task, ref_dir, authors_models, tmp_path):
    theirs_path = need(ref_dir / "weights_for_scamp" / AUTHORS[task])
    ours_path = write_scamp5_text(model=authors_models[task], path=tmp_path / "w.txt")
    theirs, ours = read_scamp5_text(theirs_path), read_scamp5_text(ours_path)
    assert list(ours) == [k for k in theirs if k != UNUSED]
    for key, value in ours.items():
        assert value.shape == theirs[key].shape, key
        assert np.array_equal(value, theirs[key]), key
    # and the text itself, whitespace included, apart from the unused entry
    lines = theirs_path.read_text().splitlines()
    i = lines.index(UNUSED + ":")
    assert ours_path.read_text().splitlines() == lines[:i] + lines[i + 2:]


@pytest.mark.parametrize("task", ["gesture", "lips"])
def test_kernel_layout_maps_back_to_the_model(task, ref_dir, authors_models):
    text = read_scamp5_text(need(ref_dir / "weights_for_scamp" / AUTHORS[task]))
    w = authors_models[task].sensor_weights()
    assert np.array_equal(kernels_from_text_order(text["cnn_model.conv1.weight"]), w.conv1)
    for key, kernel in zip(KERNEL_KEYS[1:], (w.w_fi, w.w_fh, w.w_oi[0], w.w_oh[0])):
        assert np.array_equal(kernels_from_text_order(text[key])[0], kernel), key
    # the documented layout, literally: block 1 is map 4, rows bottom to top
    assert TEXT_ORDER[:5] == (0, 4, 8, 12, 1)
    assert np.array_equal(text["cnn_model.conv1.weight"][1], w.conv1[4][::-1].ravel())


def test_round_trip_of_a_trained_style_model(tmp_path):
    torch.manual_seed(3)
    model = PixelRNN(ModelConfig(num_classes=3, gate_threshold=False)).eval()  # latent, not +-1
    with torch.no_grad():
        model.fin_conv.fill_(-0.3)
    path = write_scamp5_text(model=model, path=tmp_path / "m.txt")
    text = read_scamp5_text(path)
    w = model.sensor_weights()
    assert "rnn_model.rnn_threshold" not in text
    assert np.array_equal(kernels_from_text_order(text["cnn_model.conv1.weight"]), w.conv1)
    fin = model.fin_conv.detach().numpy().reshape(1, 1, 1, 1)
    assert np.array_equal(text["fin_conv.weight"], np.where(fin >= 0, 1.0, -1.0))  # sign(0) = +1
    assert np.array_equal(text["fc.weight"].astype(np.float32), model.fc.weight.detach().numpy())
    assert text["cnn_model.thresh1"][0] == np.float32(w.thresh1)
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("content,match", [
    ("[1.0]\n", "line 1: value before"),
    ("thresh3:\n[1.0\n", "line 2: cannot parse"),
    ("conv:\n    { \n        {1,-1,2},\n    }, \n", "line 3: kernel row"),
    ("thresh3:\n[1.0]\nthresh3:\n[2.0]\n", "line 3: duplicate"),
    ("thresh3:\nfc.bias:\n[1.0]\n", "'thresh3' has no value"),
    ("thresh3:\nhello\n", "line 2: unexpected text"),
    ("", "no SCAMP-5 weight entries"),
])
def test_parser_refuses_malformed_text_in_one_line(tmp_path, content, match):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(InputError, match=match) as err:
        read_scamp5_text(path)
    assert "\n" not in str(err.value)


def test_parser_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_scamp5_text(tmp_path / "none.txt")
