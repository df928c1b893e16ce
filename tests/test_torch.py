"""pybnn.torch: every module kind exported and run by pybnn gives what the module computes in
PyTorch (eval mode), on awkward shapes; training gradients; errors for what pybnn cannot run.

Tolerances (docs/torch.md): binary and int8 kinds, pybnn.torch's BatchNorm, max pooling, Sign
and Quantize are bit-identical; float accumulations (Conv2d, Linear, FloatBinary*) agree to
float32 rounding of the sum, |diff| <= 1e-5 * max |output|; other float layers to 1e-6
relative (nn.BatchNorm rounds in another order than pybnn).

PyTorch is a training dependency, not an inference one: .ci/arm runs the suite without it and
ignores this file.
"""
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import pybnn
from pybnn import torch as bt
from conftest import subprocess_env


def awkward(shape, seed=0, zeros=0.2):
    """Normal values with exact zeros, -0.0 among them (sign(0) = sign(-0.0) = +1)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    x[rng.random(shape) < zeros] = 0.0
    x[rng.random(shape) < zeros / 2] = -0.0
    return torch.from_numpy(x)


def randomize_bn(bn, seed, integer_means=False):
    """Running statistics and affine parameters that make signs non-trivial (ties included)."""
    g = torch.Generator().manual_seed(seed)
    c = bn.num_features
    with torch.no_grad():
        mean = torch.randint(-4, 5, (c,), generator=g).float() if integer_means else torch.randn(c, generator=g)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
        if bn.affine:
            bn.weight.copy_((torch.rand(c, generator=g) + 0.5) * torch.sign(torch.randn(c, generator=g)))
            bn.bias.copy_(torch.zeros(c) if integer_means else torch.randn(c, generator=g))
    return bn


def compare(model, x, tmp_path, **export_args):
    """(torch eval output, pybnn output in torch layout, pybnn model); also checks that the
    written file loads into a model predicting the same."""
    path = tmp_path / "m.bin"
    pm = bt.export(model, path, x, **export_args)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    got = pm.predict(bt.nhwc(x))
    np.testing.assert_array_equal(pybnn.load_model(path).predict(bt.nhwc(x)), got)
    return expected, (got.transpose(0, 3, 1, 2) if got.ndim == 4 else got), pm


def assert_float_close(got, expected):
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


# ---------------------------------------------------------------------------- binarization

def test_sign_and_its_straight_through_gradient():
    x = torch.tensor([-2.0, -1.0, -0.5, -0.0, 0.0, 0.5, 1.0, 3.0, float("nan")], requires_grad=True)
    y = bt.sign_ste(x)
    assert y.tolist()[:8] == [-1, -1, -1, 1, 1, 1, 1, 1] and y[8] == 1  # sign(0) = sign(-0.0) = +1
    y.sum().backward()
    assert x.grad.tolist()[:8] == [0, 1, 1, 1, 1, 1, 1, 0]  # hard-tanh gradient: |x| <= 1


def test_import_pybnn_does_not_import_torch(tmp_path):
    code = "import sys, pybnn, pybnn.layers, pybnn.io; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=subprocess_env())


# ---------------------------------------------------------------------------- binary kinds

BINARY_CONV_CASES = [  # in, out, kernel, stride, padding, dilation, pad_value, scale, bias, H, W
    (1, 5, 3, 1, "same", 1, 0, False, False, 7, 9),
    (33, 17, 3, 2, "same", 1, -1, True, False, 9, 8),
    (70, 33, 3, 1, "valid", 1, 1, False, True, 6, 7),
    (65, 32, (3, 2), (2, 1), ((1, 0), (2, 1)), 1, 1, True, True, 7, 5),
    (32, 64, 1, 1, "valid", 1, 0, False, False, 5, 5),
    (31, 9, 5, 2, 2, 1, -1, False, True, 11, 10),
    (3, 7, 3, 1, "same", 2, 1, True, False, 9, 9),
    (40, 3, 3, 3, "same", 1, 0, False, False, 1, 1),
]


@pytest.mark.parametrize("cin,cout,k,s,padding,d,pad_value,scale,bias,h,w", BINARY_CONV_CASES)
def test_binary_conv2d_is_exact(cin, cout, k, s, padding, d, pad_value, scale, bias, h, w, tmp_path):
    torch.manual_seed(cin * cout)
    conv = bt.BinaryConv2d(cin, cout, k, s, padding, d, pad_value, bias=bias, scale=scale)
    expected, got, pm = compare(nn.Sequential(conv), awkward((3, cin, h, w), cin), tmp_path)
    np.testing.assert_array_equal(got, expected)
    layer = pm.get_layer("0")
    assert isinstance(layer, pybnn.layers.BinaryConv2D) and layer.pad_value == pad_value


@pytest.mark.parametrize("cin,cout,scale,bias", [(70, 33, False, False), (1, 1, True, True), (64, 10, True, False)])
def test_binary_linear_is_exact(cin, cout, scale, bias, tmp_path):
    torch.manual_seed(cin)
    model = nn.Sequential(bt.BinaryLinear(cin, cout, bias=bias, scale=scale))
    expected, got, _ = compare(model, awkward((4, cin), 1), tmp_path)
    np.testing.assert_array_equal(got, expected)


def test_binary_chain_with_folded_thresholds_is_exact(tmp_path):
    """BatchNorm + sign between binary layers: pybnn folds them into integer thresholds, with
    ties (integer means, beta = 0) falling on sign(0) = +1, and pools on packed bits."""
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict([
        ("bconv1", bt.BinaryConv2d(35, 40, 3, padding="same")), ("bn1", randomize_bn(bt.BatchNorm2d(40), 1, True)),
        ("sign1", bt.BinaryActivation()), ("pool1", nn.MaxPool2d(3, 2, padding=1)),
        ("bconv2", bt.BinaryConv2d(40, 33, 3, stride=2, padding="valid", pad_value=-1)),
        ("bn2", randomize_bn(bt.BatchNorm2d(33), 2, True)), ("sign2", bt.BinaryActivation()),
        ("flatten", nn.Flatten()), ("dense", bt.BinaryLinear(33 * 2 * 2, 7)),
        ("bn3", randomize_bn(bt.BatchNorm1d(7), 3, True)), ("sign3", bt.BinaryActivation()),
    ]))
    expected, got, pm = compare(model, awkward((5, 35, 9, 10), 2), tmp_path)
    np.testing.assert_array_equal(got, expected)
    notes = " ".join(pm.fold_notes)
    assert "bconv2 + sign2 -> bconv2 writes packed bits" in notes and "bn1 + sign1" in notes


def test_float_binary_kinds_match_to_float_rounding(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(bt.FloatBinaryConv2d(33, 20, 3, stride=2, padding="same"), nn.ReLU(),
                          bt.FloatBinaryConv2d(20, 9, (1, 3), padding=((0, 1), (2, 0)), bias=False), nn.Flatten(),
                          bt.FloatBinaryLinear(9 * 5 * 5, 5))
    expected, got, _ = compare(model, awkward((3, 33, 7, 9)), tmp_path)
    assert_float_close(got, expected)


def test_float_conv_and_linear_match_to_float_rounding(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 17, 3, stride=2, padding=1), nn.Conv2d(17, 8, 3, padding="same", dilation=2),
                          nn.Conv2d(8, 6, (2, 3), padding="valid", bias=False), nn.Flatten(), nn.Linear(6 * 4 * 3, 11))
    expected, got, pm = compare(model, awkward((2, 3, 9, 10)), tmp_path)
    assert_float_close(got, expected)
    assert pm.get_layer("1").dilation_rate == (2, 2)


# ---------------------------------------------------------------------------- int8 kinds

def int8_data(shape, seed):
    """Asymmetric activations (a nonzero zero point) with exact zeros."""
    x = awkward(shape, seed) * 0.7 + 0.4
    x[x.abs() < 0.1] = 0
    return x


@pytest.mark.parametrize("kind", [bt.Int8Conv2d, bt.Int8BinaryConv2d])
def test_int8_conv_kinds_are_exact_after_calibration(kind, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(kind(33, 19, 3, stride=2, padding="same"), nn.ReLU(),
                          kind(19, 8, (3, 1), padding=((2, 0), (0, 1)), bias=False))
    calibration = int8_data((16, 33, 9, 7), 1)
    expected, got, pm = compare(model, int8_data((3, 33, 9, 7), 2), tmp_path, calibration_data=calibration)
    np.testing.assert_array_equal(got, expected)
    q = pm.get_layer("0.input_quant")
    assert isinstance(q, pybnn.layers.Quantize) and q.zero_point != 0
    assert isinstance(pm.get_layer("0"), pybnn.layers.Int8BinaryConv2D if kind is bt.Int8BinaryConv2d
                      else pybnn.layers.Int8Conv2D)


@pytest.mark.parametrize("kind", [bt.Int8Linear, bt.Int8BinaryLinear])
def test_int8_dense_kinds_are_exact_after_calibration(kind, tmp_path):
    torch.manual_seed(1)
    model = nn.Sequential(kind(70, 33), bt.BatchNorm1d(33), kind(33, 5, bias=False))
    randomize_bn(model[1], 0)
    expected, got, _ = compare(model, int8_data((4, 70), 3), tmp_path, calibration_data=int8_data((32, 70), 4))
    np.testing.assert_array_equal(got, expected)


def test_int8_error_is_calibration_error():
    """The int8 layer's eval output is the float convolution up to quantization error."""
    torch.manual_seed(0)
    conv = bt.Int8Conv2d(16, 8, 3, padding="same")
    x = torch.rand(8, 16, 6, 6)
    bt.calibrate(nn.Sequential(conv), x)
    with torch.no_grad():
        exact = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
        error = (conv.eval()(x) - exact).abs().max() / exact.abs().max()
    assert 0 < error < 0.01  # 0.4% measured


def test_quantize_module_is_exact_and_trains_straight_through(tmp_path):
    q = bt.Quantize()
    x = int8_data((64, 50), 0) * 3
    q.train()(x)  # training mode observes the range
    assert q.calibrated
    scale, zero_point = q.qparams()
    # exported as pybnn's Quantize, then implicitly dequantized into the Dense after it
    model = nn.Sequential(q, nn.Linear(50, 3))
    expected, got, pm = compare(model, x, tmp_path)
    assert_float_close(got, expected)
    layer = pm.get_layer("0")
    assert (layer.scale, layer.zero_point) == (scale, zero_point)
    np.testing.assert_array_equal(pybnn.Sequential([pybnn.layers.Input((50,)), pybnn.layers.Quantize(
        scale, zero_point)]).predict(x.numpy()), q.eval()(x).numpy())
    # straight-through gradient, zero where the value clips
    q.train()
    x = torch.tensor([0.0, 1.0, 1e6, -1e6], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [1, 1, 0, 0]


# ---------------------------------------------------------------------------- other layers

def test_batch_norm_is_exact_and_torch_batch_norm_close(tmp_path):
    x = awkward((3, 13, 5, 4)) * 5
    ours = nn.Sequential(randomize_bn(bt.BatchNorm2d(13, eps=1e-3), 0))
    expected, got, pm = compare(ours, x, tmp_path)
    np.testing.assert_array_equal(got, expected)
    assert pm.get_layer("0").epsilon == 1e-3
    theirs = nn.Sequential(randomize_bn(nn.BatchNorm2d(13, affine=False), 1))
    expected, got, _ = compare(theirs, x, tmp_path)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("pool,exact", [
    (nn.MaxPool2d(2), True), (nn.MaxPool2d(3, 2, padding=1), True), (nn.MaxPool2d((3, 2), (1, 2)), True),
    (nn.MaxPool2d(2, ceil_mode=True), True),  # no partial windows on an even map: same size
    (nn.AvgPool2d(3, 2, padding=1, count_include_pad=False), False), (nn.AvgPool2d(2), False),
    (nn.AdaptiveAvgPool2d(1), False), (nn.AdaptiveAvgPool2d((2, 3)), False), (nn.AdaptiveMaxPool2d(2), True),
])
def test_pooling(pool, exact, tmp_path):
    x = awkward((3, 33, 6, 6))
    for prefix in ([], [bt.BinaryActivation()]):  # float pooling, then pooling of packed bits
        expected, got, _ = compare(nn.Sequential(*prefix, pool), x, tmp_path)
        if exact:
            np.testing.assert_array_equal(got, expected)
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_activations_and_softmax(tmp_path):
    torch.manual_seed(0)
    prelu = nn.PReLU(9)
    with torch.no_grad():
        prelu.weight.uniform_(-1, 1)
    model = nn.Sequential(nn.ReLU6(), nn.Conv2d(9, 9, 1), prelu, nn.LeakyReLU(0.3), nn.PReLU(), nn.Dropout(),
                          nn.Identity(), nn.ReLU(), nn.Softmax(dim=1))
    expected, got, _ = compare(model, awkward((2, 9, 3, 5)) * 8, tmp_path)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_flatten_order_is_carried_to_the_next_dense_layer(tmp_path):
    """torch flattens (C, H, W), pybnn (H, W, C): per-feature parameters between the Flatten and
    the Linear, and the Linear's columns, are permuted; outputs come back in torch's order."""
    torch.manual_seed(0)
    prelu = nn.PReLU(5 * 3 * 4)
    with torch.no_grad():
        prelu.weight.uniform_(-1, 1)
    model = nn.Sequential(nn.Conv2d(2, 5, 3, padding=1), nn.Flatten(), randomize_bn(bt.BatchNorm1d(60), 0), prelu,
                          nn.Linear(60, 6), nn.Flatten(), nn.Softmax(dim=-1))
    expected, got, _ = compare(model, awkward((3, 2, 3, 4)), tmp_path)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_binarynet_cifar10_example_exports_exactly(tmp_path):
    """examples/binarynet_cifar10.py with random weights: the float first layer's signs agree to
    float rounding, everything after them (8 binary layers, all folded) exactly."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))
    import binarynet_cifar10 as example
    model = example.random_weights(example.build_model(), batches=1, batch_size=8)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    head, tail = model[:3], model[3:]  # conv1, bn1, sign1 | the binary layers
    expected, got, _ = compare(head, images, tmp_path)
    assert (got == expected).mean() > 0.999
    expected, got, pm = compare(tail, head(images).detach(), tmp_path)
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)  # bn9 folded into fc9: float rounding
    assert sum("writes packed bits" in note for note in pm.fold_notes) == 7


# ---------------------------------------------------------------------------- export

def test_export_prints_the_folds_and_restores_the_training_mode(tmp_path, capsys):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), randomize_bn(bt.BatchNorm2d(8), 0), bt.BinaryActivation(),
                          bt.BinaryConv2d(8, 4, 3)).train()
    model[1].eval()  # modes differ between modules (a slice of a model is a new, training container)
    bt.export(model, tmp_path / "m.bin", torch.zeros(1, 3, 8, 8), print_summary=True)
    text = capsys.readouterr().out
    assert "Folded: 1 + 2 -> per-channel thresholds in 2" in text and "3 (BinaryConv2D)" in text
    assert [m.training for m in model] == [True, False, True, True] and model.training


def test_calibration_data_sets_the_ranges(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(bt.Int8Conv2d(3, 4, 3), nn.ReLU(), bt.Int8Linear(4, 2))
    model = nn.Sequential(model[0], nn.AdaptiveAvgPool2d(1), nn.Flatten(), model[2])
    data = torch.rand(10, 3, 5, 5) * 2 - 0.5
    pm = bt.export(model, tmp_path / "m.bin", data[:1], calibration_data=data)
    q = pm.get_layer("0.input_quant")
    assert q.scale == pytest.approx(2.0 / 255, rel=0.02) and q.zero_point < -60
    assert float(model[0].input_quant.min_val) == float(data.min())


class MyConv(nn.Conv2d):
    def forward(self, x):
        return super().forward(x) * 2


class NotSequential(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(x) + x


X = torch.zeros(1, 3, 7, 7)
ERRORS = [  # model, message
    (nn.Sequential(nn.Conv2d(3, 4, 3, groups=1), nn.Conv2d(4, 4, 3, groups=2)), r"module '1' \(Conv2d\): groups=2"),
    (nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")), r"'0' \(Conv2d\): padding_mode='reflect'"),
    (nn.Sequential(nn.Sequential(nn.ReLU(), nn.LSTM(7, 3))), r"module '0.1' \(LSTM\): pybnn has no layer"),
    (nn.Sequential(nn.Upsample(scale_factor=2)), r"'0' \(Upsample\): pybnn has no layer"),
    (nn.Sequential(MyConv(3, 3, 1)), r"'0' \(MyConv\): pybnn has no layer"),
    (NotSequential(), r"export takes an nn.Sequential, got NotSequential"),
    (nn.Sequential(nn.MaxPool2d(2, dilation=2)), r"'0' \(MaxPool2d\): dilation=2"),
    (nn.Sequential(nn.MaxPool2d(2, ceil_mode=True)), r"'0' \(MaxPool2d\): ceil_mode=True gives \(4, 4\)"),
    (nn.Sequential(nn.AvgPool2d(3, 1, padding=1)), r"'0' \(AvgPool2d\): count_include_pad=True"),
    (nn.Sequential(nn.AvgPool2d(2, divisor_override=3)), r"'0' \(AvgPool2d\): divisor_override=3"),
    (nn.Sequential(nn.AdaptiveAvgPool2d(2)), r"'0' \(AdaptiveAvgPool2d\): output 2x2 does not divide"),
    (nn.Sequential(nn.BatchNorm2d(3, track_running_stats=False)), r"'0' \(BatchNorm2d\): has no running statistics"),
    (nn.Sequential(nn.Flatten(2)), r"'0' \(Flatten\): start_dim=2"),
    (nn.Sequential(nn.Softmax(dim=2)), r"'0' \(Softmax\): dim=2"),
    (nn.Sequential(nn.Linear(7, 3)), r"'0' \(Linear\): takes a \(3, 7, 7\) tensor"),
    (nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten()), r"'1' \(Flatten\): the model ends on flattened"),
    (nn.Sequential(nn.Flatten(), nn.Dropout1d()), r"'1' \(Dropout1d\): pybnn has no layer"),
    (nn.Sequential(nn.Flatten(), nn.Hardtanh(0, 1)), r"'1' \(Hardtanh\): pybnn has no layer"),
    (nn.Sequential(bt.Int8Conv2d(3, 3, 1)), r"module '0.input_quant' \(Quantize\): no activation range observed"),
    (nn.Sequential(nn.Conv2d(4, 3, 1)), r"'0' \(Conv2d\) fails on the example input of shape \(1, 3, 7, 7\)"),
    (nn.Sequential(bt.BinaryConv2d(3, 3, 9)), r"'0' \(BinaryConv2d\): .*kernel height 9 .* larger than"),
]


@pytest.mark.parametrize("model,message", ERRORS)
def test_what_pybnn_cannot_run_is_refused_naming_the_module(model, message, tmp_path):
    path = tmp_path / "m.bin"
    with pytest.raises(pybnn.ConfigError, match=message):
        bt.export(model, path, X)
    assert not path.exists()


def test_bad_module_arguments_raise_config_errors():
    with pytest.raises(pybnn.ConfigError, match="pad_value must be -1, 0 or 1"):
        bt.BinaryConv2d(3, 3, 3, pad_value=2)
    with pytest.raises(pybnn.ConfigError, match="padding must be"):
        bt.FloatBinaryConv2d(3, 3, 3, padding="full")
    with pytest.raises(pybnn.ConfigError, match="out_channels must be a positive int"):
        bt.Int8Linear(3, 0)


# ---------------------------------------------------------------------------- training

def test_modules_train_and_latent_weights_clip():
    torch.manual_seed(0)
    model = nn.Sequential(bt.Int8Conv2d(3, 8, 3, padding="same"), bt.BatchNorm2d(8), bt.BinaryActivation(),
                          bt.BinaryConv2d(8, 8, 3, stride=2, padding="same", pad_value=-1, scale=True),
                          bt.BatchNorm2d(8), bt.BinaryActivation(), bt.FloatBinaryConv2d(8, 8, 3),
                          bt.Int8BinaryConv2d(8, 4, 2), nn.Flatten(), bt.BinaryLinear(16, 3, bias=True)).train()
    x, y = torch.randn(16, 3, 10, 10), torch.randint(0, 3, (16,))
    optimizer = torch.optim.SGD(model.parameters(), lr=10.0)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    optimizer.step()
    bt.clip_latent_weights(model)
    for m in (model[3], model[6], model[7], model[9]):
        assert m.weight.abs().max() <= 1
    assert model[0].weight.abs().max() > 1  # int8 weights are not latent binary weights
    assert model[0].input_quant.calibrated and model[7].input_quant.calibrated


def test_recompute_batch_norm_uses_the_final_weights_only_for_batch_norm():
    torch.manual_seed(0)
    model = nn.Sequential(bt.Int8Conv2d(3, 6, 3), bt.BatchNorm2d(6), bt.BinaryActivation(), nn.Flatten(),
                          bt.BinaryLinear(6 * 3 * 3, 4), nn.BatchNorm1d(4, momentum=0.3))
    x = torch.rand(20, 3, 5, 5)
    bt.calibrate(model, x)
    quant_range = (float(model[0].input_quant.min_val), float(model[0].input_quant.max_val))
    model.train()
    model[4].eval()
    bt.recompute_batch_norm(model, x, batch_size=10)
    with torch.no_grad():
        conv_out = model[0].eval()(x)
    model[0].train()
    torch.testing.assert_close(model[1].running_mean, conv_out.mean((0, 2, 3)))  # the mean of two equal batches
    assert (float(model[0].input_quant.min_val), float(model[0].input_quant.max_val)) == quant_range
    assert [m.training for m in model] == [True, True, True, True, False, True] and model[5].momentum == 0.3
