"""The digits example end to end (examples/digits): a network trained with pybnn.torch and
exported predicts in pybnn what it predicts in PyTorch on the held-out test set (the binary
layers exactly), and the shipped model files reach the accuracy the README states.

Needs PyTorch and scikit-learn (which ships the digits): .ci/arm ignores this file (PyTorch is
a training dependency, not an inference one).
"""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pybnn
from pybnn import torch as bt

EXAMPLE = Path(__file__).parent.parent / "examples" / "digits"
sys.path.insert(0, str(EXAMPLE))
import classify  # noqa: E402
import train_digits  # noqa: E402
from digits_data import load_split, to_input  # noqa: E402


@pytest.fixture(scope="module")
def split():
    train_pixels, train_labels, test_pixels, test_labels, _ = load_split()
    return train_digits.nchw(train_pixels), train_labels, test_pixels, test_labels


@pytest.fixture
def one_thread():
    """Small batches train fastest on one thread (and several spin against each other on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("int8", [False, True], ids=["float-first-layer", "int8-first-and-last-layers"])
def test_trained_network_predicts_the_same_in_pybnn(int8, split, tmp_path, one_thread):
    x_train, y_train, test_pixels, y_test = split
    torch.manual_seed(1)
    model = train_digits.train(train_digits.build_model(int8), x_train, y_train, epochs=3, seed=1, log=None)
    pm = bt.export(model, tmp_path / "digits.bin", x_train[:1], calibration_data=x_train if int8 else None)

    torch_probs = train_digits.predict(model, train_digits.nchw(test_pixels))
    pybnn_probs = pm.predict(to_input(test_pixels))
    assert (torch_probs.argmax(1) == y_test).mean() > 0.7  # trained (chance is 0.1): the comparison means something
    agree = (torch_probs.argmax(1) == pybnn_probs.argmax(1)).mean()
    assert agree >= 0.995
    if int8:  # int8 first and last layers compute in integers: only bn4's fold into dense4 rounds
        assert agree == 1
        np.testing.assert_allclose(pybnn_probs, torch_probs, rtol=1e-5, atol=1e-6)

    # The binary part alone (bconv2 to pool3), fed PyTorch's own sign1 bits: exact.
    head, binary = model[:3], model[3:11]
    assert isinstance(binary[0], bt.BinaryConv2d) and isinstance(binary[-1], torch.nn.MaxPool2d)
    with torch.no_grad():
        bits = head(train_digits.nchw(test_pixels))
        expected = binary(bits).numpy()
    got = bt.export(binary, tmp_path / "binary.bin", bits[:1]).predict(bt.nhwc(bits))
    np.testing.assert_array_equal(got.transpose(0, 3, 1, 2), expected)


@pytest.mark.parametrize("name,stated", [("digits.bin", 443), ("digits_int8.bin", 444)])
def test_shipped_models_reach_the_stated_test_accuracy(name, stated):
    """The counts train_digits.py printed when it wrote the files (98.4% and 98.7%)."""
    accuracy, right, total = classify.test_set_accuracy(pybnn.load_model(EXAMPLE / name))
    assert (right, total) == (stated, 450)
