"""ONNX import (pybnn.convert): binary networks written in PyTorch the way public BNN code
writes them (tests/torch_bnns.py), exported with torch.onnx, converted, and compared with
onnxruntime: binary tensors bit for bit, float outputs within float rounding."""
import io
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

import pybnn
import torch_bnns as T
from pybnn import layers as L
from pybnn.convert import from_onnx
from pybnn.convert.check import compare_onnx, nhwc, run_onnxruntime


@pytest.fixture(autouse=True)
def seeded():
    """PyTorch seeds its generator differently in every process: fix it, so that every test
    builds the same networks (the module-scoped exports below are made inside a test, after this)."""
    torch.manual_seed(0)


def export(net, shape, opset=None):
    """The ONNX model of `net` (TorchScript exporter, as torch.onnx.export(dynamo=False)), with a
    dynamic batch axis."""
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(*shape),), f, dynamo=False, opset_version=opset, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return onnx.load_from_string(f.getvalue())


def images(shape, n=3, seed=1):
    return np.random.default_rng(seed).standard_normal((n,) + shape[1:]).astype(np.float32)


def kinds(model):
    names = [type(layer).__name__ for layer in model.layers]
    return {k: names.count(k) for k in set(names)}


def binary_inputs(proto, model):
    """ONNX names of the tensors that the binary convolutions of the converted model read."""
    names = []
    for node in proto.graph.node:
        layer = next((l for l in model.layers if l.name == node.name.lstrip("/")), None)
        if isinstance(layer, L.BinaryConv2D) and not layer.dense and node.input[0] not in names:
            names.append(node.input[0])
    return names


def assert_matches_onnxruntime(proto, model, x, rtol=1e-4):
    (name, worst, scale, _), = compare_onnx(proto, model, feeds={"x": x})
    assert worst <= rtol * max(scale, 1.0), (name, worst, scale)


def assert_binary_tensors_identical(proto, model, x):
    """Every tensor a binary convolution reads is, in pybnn, exactly onnxruntime's ±1 tensor."""
    names = binary_inputs(proto, model)
    assert names
    probe = from_onnx(proto, outputs=names)
    for name, worst, scale, differ in compare_onnx(proto, probe, feeds={"x": x}, outputs=names):
        assert scale == 1.0 and differ == 0, (name, worst, differ)


NETS = {  # name: (factory, input shape, expected layer counts)
    "xnor": (T.XNORNet, (1, 3, 12, 12), {"BinaryConv2D": 3, "BinaryDense": 1, "Conv2D": 1, "Dense": 1}),
    "bireal": (T.BiRealNet, (1, 3, 8, 8), {"BinaryConv2D": 4, "Conv2D": 2, "Add": 4}),
    "reactnet": (T.ReActNet, (1, 3, 16, 16), {"BinaryConv2D": 7, "PReLU": 6, "Concatenate": 1}),
}


@pytest.fixture(scope="module")
def exported():
    cache = {}

    def get(name, opset=None):
        if (name, opset) not in cache:
            factory, shape, _ = NETS[name]
            net = T.randomize(factory(), seed=1)
            if hasattr(net, "binarize_weights"):
                net.binarize_weights()
            cache[name, opset] = net, export(net, shape, opset)
        return cache[name, opset]
    return get


@pytest.mark.parametrize("name", sorted(NETS))
def test_public_bnns_match_onnxruntime(isa, exported, name):
    net, proto = exported(name)
    model = from_onnx(proto)
    counts = kinds(model)
    for kind, count in NETS[name][2].items():
        assert counts.get(kind) == count, (kind, counts)
    for layer in model.layers:
        if isinstance(layer, L.BinaryConv2D):
            # sign(W) * mean|W| per output channel: a binary kernel with its scale
            assert layer.use_scale and (layer.dense or layer.pad_value == 0)
    assert not any(isinstance(l, (L.FloatBinaryConv2D, L.Dequantize)) for l in model.layers)
    x = images(NETS[name][1])
    assert_matches_onnxruntime(proto, model, x)
    assert_binary_tensors_identical(proto, model, x)
    with torch.no_grad():  # and onnxruntime agrees with PyTorch itself
        np.testing.assert_allclose(model.predict(nhwc(x)), net(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-4)


def test_folding_of_imported_nets(exported):
    """What the importer makes folds as pybnn folds its own layers: RSign shifts and BatchNorm
    into thresholds, BatchNorm after binary convolutions into their multipliers."""
    model = from_onnx(exported("reactnet")[1])
    plan = model.plan()
    signs = [op for op in plan if isinstance(op, L.Sign)]
    assert signs and all(op.thresholds is not None for op in signs)  # move11 / move21 folded in
    assert not any(isinstance(op, L.BatchNormalization) for op in plan)


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_opsets(exported, opset):
    net, proto = exported("bireal", opset)
    x = images(NETS["bireal"][1], seed=opset)
    model = from_onnx(proto)
    assert kinds(model)["BinaryConv2D"] == 4
    assert_matches_onnxruntime(proto, model, x)


def test_model_file_round_trip(exported, tmp_path):
    _, proto = exported("reactnet")
    model = from_onnx(proto)
    model.save(tmp_path / "r.bin")
    x = nhwc(images(NETS["reactnet"][1]))
    np.testing.assert_array_equal(pybnn.load_model(tmp_path / "r.bin").predict(x), model.predict(x))


@pytest.mark.parametrize("how", ["sign", "detach", "where", "where_gt", "where_lt", "hardtanh", "rsign"])
def test_straight_through_forms(isa, how):
    """Each way of writing sign(x) imports as a pybnn binarization (a Sign, after a ChannelAffine
    where the threshold is not 0).  (The exporter folds each BatchNorm into the ±1 weights of
    the convolution before it: ±gamma' per channel, a binary kernel with a scale.)"""
    net = T.randomize(T.STENet(how), seed=2)
    net.binarize_weights()
    proto = export(net, (1, 3, 8, 8))
    model = from_onnx(proto)
    counts = kinds(model)
    assert counts["BinaryConv2D"] == 2 and counts["BinaryDense"] == 1 and counts["Sign"] == 3
    assert counts.get("ChannelAffine", 0) == (3 if how in ("where_gt", "rsign") else 0)
    x = images((1, 3, 8, 8), n=4, seed=3)
    assert_matches_onnxruntime(proto, model, x)
    assert_binary_tensors_identical(proto, model, x)


class SignOfInput(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.act = T.SignSTE(how)
        self.conv = nn.Conv2d(5, 6, 3, padding=1, bias=False)
        self.conv.weight.data = torch.where(torch.randn(6, 5, 3, 3) >= 0, 1.0, -1.0)

    def forward(self, x):
        return self.conv(self.act(x))


@pytest.mark.parametrize("how", ["sign", "where", "where_gt"])
def test_binarization_at_zero(how):
    """torch.where(x >= 0, 1, -1) is pybnn's sign exactly, zeros included; x > 0 too (a shifted
    threshold); torch.sign(0) = 0 while pybnn binarizes 0 to +1, so Sign matches everywhere
    except at exact zeros."""
    proto = export(SignOfInput(how).eval(), (1, 5, 6, 6))
    model = from_onnx(proto)
    x = images((1, 5, 6, 6), n=2, seed=4)
    x[:, :, ::2, 1::3] = 0.0
    ref = nhwc(run_onnxruntime(proto, {"x": x})["y"])
    got = model.predict(nhwc(x))
    if how != "sign":
        np.testing.assert_array_equal(got, ref)  # integer sums of ±1: exact in float32 too
    else:
        x[:, :, ::2, 1::3] = 1.0  # pybnn's sign(0): what onnxruntime computes with +1 there
        np.testing.assert_array_equal(got, nhwc(run_onnxruntime(proto, {"x": x})["y"]))


class Padded(nn.Module):
    """Explicit F.pad of a binary tensor before an unpadded convolution (pad values 0, +1, -1),
    and zero F.pad before a float convolution."""

    def __init__(self, value):
        super().__init__()
        self.value = value
        self.stem = nn.Conv2d(3, 7, 3)
        self.conv = nn.Conv2d(7, 35, 3, bias=False)
        self.conv.weight.data = torch.where(torch.randn(35, 7, 3, 3) >= 0, 1.0, -1.0)

    def forward(self, x):
        x = self.stem(F.pad(x, (1, 1, 1, 1)))
        return self.conv(F.pad(torch.where(x >= 0, 1.0, -1.0), (1, 2, 0, 1), value=self.value))


@pytest.mark.parametrize("value", [0.0, 1.0, -1.0])
def test_pad_folds_into_convolutions(isa, value):
    proto = export(Padded(value).eval(), (1, 3, 7, 6))
    model = from_onnx(proto)
    conv = next(l for l in model.layers if isinstance(l, L.BinaryConv2D))
    assert conv.pad_value == value and conv.padding == ((0, 1), (1, 2))
    stem = next(l for l in model.layers if isinstance(l, L.Conv2D))
    assert stem.padding == ((1, 1), (1, 1))
    x = images((1, 3, 7, 6), seed=5)
    (_, worst, _, _), = compare_onnx(proto, model, feeds={"x": x})
    assert worst == 0  # sums of ±1 are exact in float32 as well


class FloatFlatten(nn.Module):
    """A float Linear on a flattened (C, H, W) tensor: its rows are permuted to pybnn's (h, w, c)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3)
        self.fc = nn.Linear(5 * 4 * 3, 6)

    def forward(self, x):
        return F.softmax(self.fc(torch.flatten(F.relu(self.conv(x)), 1)), dim=1)


def test_flatten_order_of_float_dense():
    proto = export(FloatFlatten().eval(), (1, 3, 6, 5))
    model = from_onnx(proto)
    assert model.get_layer("conv/Conv").activation == "relu"  # Conv -> Relu fused
    assert_matches_onnxruntime(proto, model, images((1, 3, 6, 5), seed=6), rtol=1e-5)


class Misc(nn.Module):
    """Float operators around BNNs: LeakyReLU, ceil-mode max pooling, ReLU6 (Clip), arithmetic with
    per-channel and scalar constants, ReduceMean, GlobalMaxPool, a scalar PReLU, Concat of features,
    Softmax; two outputs, one 4-D (NHWC in pybnn)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 6, 3)
        self.prelu = nn.PReLU()
        self.register_buffer("c", torch.linspace(-1, 1, 6).view(1, 6, 1, 1))

    def forward(self, x):
        x = F.max_pool2d(F.leaky_relu(self.conv(x), 0.1), 3, stride=2, ceil_mode=True)
        y = F.relu6(self.conv2(x)) * self.c - 0.25
        y = 2.0 - (y / 3.0 + self.c) - y
        a = y.mean((2, 3))
        b = F.adaptive_max_pool2d(y, 1).flatten(1)
        return F.softmax(torch.cat([a, self.prelu(b)], 1), dim=1), x


def test_float_operators_and_two_outputs(isa):
    net = Misc().eval()
    with torch.no_grad():
        net.prelu.weight.fill_(0.3)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 10, 9),), f, dynamo=False, input_names=["x"])
    proto = onnx.load_from_string(f.getvalue())
    model = from_onnx(proto)
    assert any("Div" in note for note in model.convert_notes)
    rows = compare_onnx(proto, model, feeds={"x": images((1, 3, 10, 9), n=1, seed=9)})
    assert len(rows) == 2 and model.output_spec.shape == (12,)
    for name, worst, scale, _ in rows:
        assert worst <= 1e-5 * max(scale, 1), (name, worst, scale)


def test_weights_that_are_not_binary_give_a_float_layer_and_a_note():
    net = SignOfInput("where").eval()
    net.conv.weight.data[2, 0, 0, 0] = 0.0  # torch.sign of a zero weight is 0: not ±1
    proto = export(net, (1, 5, 6, 6))
    model = from_onnx(proto)
    assert kinds(model).get("Conv2D") == 1 and "BinaryConv2D" not in kinds(model)
    assert any("not binary" in note for note in model.convert_notes)
    assert_matches_onnxruntime(proto, model, images((1, 5, 6, 6), seed=7), rtol=1e-6)


# ---------------------------------------------------------------------------- errors


class SignOfRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.sign(F.relu(self.conv(x)))


class SignOfBinarySums(nn.Module):
    """sign of a binary convolution without bias: its integer sums are often exactly 0."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 2, bias=False)
        self.conv.weight.data = torch.where(torch.randn(4, 3, 2, 2) >= 0, 1.0, -1.0)

    def forward(self, x):
        return torch.sign(self.conv(torch.where(x >= 0, 1.0, -1.0)))


class Squared(nn.Module):
    def forward(self, x):
        return x * x


class Sigmoid(nn.Module):
    def forward(self, x):
        return torch.sigmoid(x)


class Heaviside(nn.Module):
    def forward(self, x):
        return torch.where(x >= 0, 1.0, 0.0)


class ReflectPad(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(F.pad(x, (1, 1, 1, 1), mode="reflect"))


class HalfPad(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(F.pad(torch.sign(x), (1, 1, 1, 1), value=0.5))


@pytest.mark.parametrize("net, match", [
    (SignOfRelu(), r"node '/Sign' \(Sign\): the sign of a tensor with many exact zeros"),
    (SignOfBinarySums(), r"node '/Sign' \(Sign\): .* integer sums of a binary or int8 layer"),
    (Squared(), r"node '/Mul' \(Mul\): Mul of two computed tensors"),
    (Sigmoid(), r"node '/Sigmoid' \(Sigmoid\): this operator is not supported"),
    (Heaviside(), r"node '/Where' \(Where\): selects between \[1.0\] and \[0.0\]"),
    (ReflectPad(), r"node '/Pad' \(Pad\): mode 'reflect'"),
    (HalfPad(), r"node '/conv/Conv' \(Conv\): pads a binary input with 0.5"),
])
def test_unsupported_graphs_name_node_op_and_reason(net, match):
    proto = export(net.eval(), (1, 3, 6, 6))
    with pytest.raises(pybnn.ConvertError, match=match):
        from_onnx(proto)


def test_bad_files_and_outputs(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(pybnn.ConvertError, match="bad.onnx: not a readable ONNX model"):
        from_onnx(tmp_path / "bad.onnx")
    proto = export(FloatFlatten().eval(), (1, 3, 6, 5))
    with pytest.raises(pybnn.ConvertError, match="no tensor named 'nope'"):
        from_onnx(proto, outputs=["nope"])
    flat = [n.output[0] for n in proto.graph.node if n.op_type == "Flatten"]
    with pytest.raises(pybnn.ConvertError, match="flattened in NCHW order"):
        from_onnx(proto, outputs=flat)


# ---------------------------------------------------------------------------- quantized graphs


def qlinear_model(act_type):
    """QuantizeLinear -> QLinearConv (per-channel int8 weights, int32 bias) -> MaxPool ->
    QLinearConv (±1 weights) -> DequantizeLinear, activations int8 or uint8, written with
    onnx.helper as ONNX quantization tools write them."""
    rng = np.random.default_rng(0)
    np_act = np.uint8 if act_type == TensorProto.UINT8 else np.int8
    zp0 = 128 if np_act is np.uint8 else 0

    def c(name, value):
        return numpy_helper.from_array(np.asarray(value), name)

    inits = [c("s0", np.float32(0.03)), c("z0", np_act(zp0 + 3)),
             c("w1", rng.integers(-127, 128, (6, 3, 3, 3)).astype(np.int8)),
             c("ws1", rng.uniform(0.002, 0.01, 6).astype(np.float32)), c("wz1", np.zeros(6, np.int8)),
             c("s1", np.float32(0.05)), c("z1", np_act(zp0 - 7)), c("b1", rng.integers(-900, 900, 6).astype(np.int32)),
             c("w2", rng.choice([-1, 1], (5, 6, 1, 1)).astype(np.int8)), c("ws2", np.float32(0.01)),
             c("wz2", np.int8(0)), c("s2", np.float32(0.04)), c("z2", np_act(zp0 + 1))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s0", "z0"], ["q0"]),
             helper.make_node("QLinearConv", ["q0", "s0", "z0", "w1", "ws1", "wz1", "s1", "z1", "b1"], ["q1"],
                              pads=[1, 1, 1, 1], strides=[2, 1]),
             helper.make_node("MaxPool", ["q1"], ["q1p"], kernel_shape=[2, 2], strides=[1, 1]),
             helper.make_node("QLinearConv", ["q1p", "s1", "z1", "w2", "ws2", "wz2", "s2", "z2"], ["q2"]),
             helper.make_node("DequantizeLinear", ["q2", "s2", "z2"], ["y"])]
    graph = helper.make_graph(nodes, "qlinear", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                               ["n", 3, 9, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("act_type", [TensorProto.INT8, TensorProto.UINT8])
def test_qlinear_conv(isa, act_type):
    proto = qlinear_model(act_type)
    model = from_onnx(proto)
    counts = kinds(model)
    assert counts["Int8Conv2D"] == counts["Int8BinaryConv2D"] == counts["Quantize"] == 1
    x = images((1, 3, 9, 8), n=4, seed=8)
    (_, worst, _, differ), = compare_onnx(proto, model, feeds={"x": x})
    # int8 requantization rounds float32(acc) * M half to even like onnxruntime, but pybnn
    # computes M = in_scale * w_scale / out_scale in float64, onnxruntime in float32: M may
    # differ in its last bit, and a result by one step (0.04) where acc * M is within rounding of
    # a half (with onnxruntime's M the results are identical): 6 of these 560 outputs
    assert worst <= 0.04 * 1.0001 and differ <= 10


def test_qdq_model_from_onnxruntime_quantization(tmp_path):
    """A float PyTorch model quantized by onnxruntime.quantization (QDQ format, uint8
    activations, per-channel int8 weights): convolutions and the dense layer become int8 layers."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 12, 3, stride=2)
            self.fc = nn.Linear(12 * 3 * 3, 5)

        def forward(self, x):
            x = F.relu(self.conv1(x))
            x = F.relu(self.conv2(x))
            return self.fc(torch.flatten(x, 1))

    torch.manual_seed(0)
    (tmp_path / "f.onnx").write_bytes(export(Net().eval(), (1, 3, 8, 8), 13).SerializeToString())
    calib = [{"x": images((1, 3, 8, 8), n=1, seed=s)} for s in range(8)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calib)

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    proto = onnx.load(str(tmp_path / "q.onnx"))
    model = from_onnx(proto)
    counts = kinds(model)
    assert counts.get("Int8Conv2D") == 2 and counts.get("Int8Dense") == 1, counts
    x = images((1, 3, 8, 8), n=1, seed=9)
    (_, worst, scale, _), = compare_onnx(proto, model, feeds={"x": x})
    assert worst <= 1e-5 * scale  # the same quantized graph: equal up to float rounding (docs/convert.md)


# ---------------------------------------------------------------------------- command line


def test_command_line_convert_and_check(exported, tmp_path, capsys):
    from pybnn.__main__ import main
    _, proto = exported("bireal")
    src = tmp_path / "bireal.onnx"
    src.write_bytes(proto.SerializeToString())
    assert main(["convert", str(src), "-o", str(tmp_path / "b.bin"), "--check"]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "largest |pybnn - onnxruntime|" in out
    x = nhwc(images(NETS["bireal"][1]))
    np.testing.assert_array_equal(pybnn.load_model(tmp_path / "b.bin").predict(x), from_onnx(proto).predict(x))
    (tmp_path / "sig.onnx").write_bytes(export(Sigmoid().eval(), (1, 3, 4, 4)).SerializeToString())
    assert main(["convert", str(tmp_path / "sig.onnx"), "-o", str(tmp_path / "s.bin")]) == 1
    assert "(Sigmoid): this operator is not supported" in capsys.readouterr().err
