"""The model zoo: every architecture builds, runs on every instruction-set path and matches
the NumPy reference of its folded graph, tensor by tensor; the published sizes have the
published parameter counts."""
import functools

import numpy as np
import pytest

import pybnn
from pybnn import zoo
from pybnn.__main__ import random_input
from pybnn.layers.base import to_user

# Small versions (the reference runs in exact integer / float64 arithmetic): AlexNet's
# smallest input that survives its three poolings and narrower fc6/fc7, 32x32 for the
# residual nets (Bi-Real Net's shortcut pooling needs sizes divisible by 32; QuickNet meets
# odd sizes on the way), 16x16 for BinaryNet.
ALEXNET = {"input_size": 67, "units": 1000}
SMALL = {"binarynet": {"input_size": 16}, "xnornet": ALEXNET, "xnornet_int8": ALEXNET, "bwn": ALEXNET,
         "bwn_int8": ALEXNET}
FLOAT_RTOL = 1e-5  # of the largest magnitude of each float tensor (float32 sums vs float64)


@functools.lru_cache(maxsize=None)
def small(name):
    """One weighted small model per name, shared by the tests (kernels pick their instruction
    set at each call)."""
    return zoo.build(name, classes=10, **SMALL.get(name, {"input_size": 32})).randomize(11)


def run_plan(model, x, method):
    """Every tensor of the folded plan: each op run with `method` ("call": kernels, each
    output in a buffer of its own; "reference": NumPy) on the outputs of the ops before it."""
    steps = model._planned()
    inputs = model._convert_inputs(x)
    values = []
    for step in steps:
        if not step.inputs:
            values.append(inputs[step.op.name])
            continue
        args = [values[j] for j in step.inputs]
        arg = args[0] if step.op.n_inputs == 1 else args
        values.append(np.array(getattr(step.op, method)(arg)))
    return steps, values


@functools.lru_cache(maxsize=None)
def reference_run(name):
    model = small(name)
    x = random_input(model.inputs[0], 2, np.random.default_rng(5))
    _, values = run_plan(model, x, "reference")
    return x, values


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_zoo_model_matches_the_reference_tensor_by_tensor(isa, name):
    """Bit-exact for binary and int8 tensors (even at the end of a network, no sign ever
    flips), float tensors within FLOAT_RTOL; predict() (the arena run) gives the same output
    as the ops run one by one."""
    x, want = reference_run(name)
    model = small(name)
    steps, got = run_plan(model, x, "call")
    assert len(got) == len(want)
    for step, g, w in zip(steps, got, want):
        spec = step.op.output_spec
        assert g.shape == w.shape, step.op.name
        if spec.kind == "float32":
            err = np.max(np.abs(g - w), initial=0) / max(np.max(np.abs(w), initial=0), 1e-30)
            assert err <= FLOAT_RTOL, f"{step.op.name}: relative error {err:.2e}"
        else:
            np.testing.assert_array_equal(g, w, err_msg=step.op.name)
    out = model._plan_outputs[0]
    y = model.predict(x)
    np.testing.assert_array_equal(y, to_user(steps[out].op.output_spec, got[out]))
    assert y.shape == (2, 10)


def test_predict_reference_is_the_reference_run():
    """The per-tensor check above runs the same computation as predict_reference(folded=True)."""
    x, want = reference_run("bireal18_stem")
    model = small("bireal18_stem")
    plan = model.plan()
    out = model._plan_outputs[0]
    np.testing.assert_array_equal(model.predict_reference(x, folded=True), to_user(plan[out].output_spec, want[out]))


def bn_channels(model):
    return sum(layer.input_spec.channels for layer in model._graph
               if isinstance(layer, pybnn.layers.BatchNormalization))


def params(model):
    return sum(layer.count_params() for layer in model._graph)


@pytest.mark.parametrize("name, published", [
    # torchvision ResNet-18: the same convolutions, BN and head as Bi-Real Net-18
    ("bireal18", 11_689_512),
    # Larq Zoo documentation of QuickNetSmall / QuickNet / QuickNetLarge
    ("quicknet_small", 12_655_688), ("quicknet", 13_234_088), ("quicknet_large", 23_342_248),
])
def test_full_size_parameter_counts_match_the_published_ones(name, published):
    """Both published counts leave out BN's moving mean and variance (2 numbers per channel),
    which pybnn counts (its BN layers hold all four, as Keras does)."""
    model = zoo.build(name)
    assert model.input_spec.shape == (224, 224, 3) and model.output_spec.shape == (1000,)
    assert params(model) - 2 * bn_channels(model) == published


def kernel_bytes(model):
    return sum(np.prod(shape) * {"float": 4, "int8": 1, "bits": 1 / 8}[kind] for layer in model._graph
               for tensor, shape, kind in layer.weight_specs() if tensor == "kernel")


def test_full_size_binarynet_and_alexnet_weights():
    # BinaryNet: 3x3 convolutions 3-128-128-256-256-512-512, then 8192-1024-1024-10
    convs = [3, 128, 128, 256, 256, 512, 512]
    expect = sum(9 * a * b for a, b in zip(convs, convs[1:])) + 8192 * 1024 + 1024 * 1024 + 1024 * 10
    assert kernel_bytes(zoo.build("binarynet")) * 8 == expect == 14_022_016  # all binary
    # XNOR-Net AlexNet: the seed's 22.7 MiB (10.9 MiB with int8 conv1 and fc8) are the
    # kernels: conv1 and fc8 at 4 (1) bytes, conv2..fc7 at 1 bit per weight
    assert round(kernel_bytes(zoo.build("xnornet")) / 2**20, 1) == 22.7
    assert round(kernel_bytes(zoo.build("xnornet_int8")) / 2**20, 1) == 10.9
    model = zoo.build("bwn")
    assert [layer.output_spec.shape for layer in model.layers if layer.name in ("pool5", "fc6", "fc8")] == \
        [(6, 6, 256), (4096,), (1000,)]


def test_folding_of_the_zoo_graphs():
    """What makes them fast: XNOR-Net's convolutions write packed bits, Bi-Real Net's BN
    folds into its binary convolutions, the stem's ReLUs into their convolutions."""
    model = small("xnornet")
    model.plan()
    assert "conv3 + conv4_sign -> conv3 writes packed bits (integer thresholds)" in model.fold_notes
    assert "fc6 + fc7_sign -> fc6 writes packed bits (integer thresholds)" in model.fold_notes
    model = small("bireal18_stem")
    plan = [op.name for op in model.plan()]
    assert "s1b0_bn -> multiplier and bias of s1b0_conv" in model.fold_notes
    assert "stem2b_relu -> activation of stem2b" in model.fold_notes
    assert not any(name.endswith(("_bn", "_relu")) for name in plan)
    # QuickNet's BN follows a ReLU'd binary convolution: it runs inside the residual Add's pass
    model = small("quicknet")
    assert "s1b0_bn" not in [op.name for op in model.plan()]
    assert any(n.startswith("s1b0_bn -> computed inside s1b0_") for n in model.fold_notes)


def test_zoo_graph_files_round_trip(tmp_path):
    for name in ("bireal18_stem", "quicknet_small"):
        model = small(name)
        model.save(tmp_path / f"{name}.bin")
        x = random_input(model.inputs[0], 1, np.random.default_rng(0))
        np.testing.assert_array_equal(pybnn.load_model(tmp_path / f"{name}.bin").predict(x), model.predict(x))


def test_zoo_errors():
    with pytest.raises(pybnn.ConfigError, match="unknown model 'resnet'"):
        zoo.build("resnet")
    with pytest.raises(pybnn.ConfigError, match="size must be one of"):
        zoo.quicknet("tiny")
    with pytest.raises(pybnn.ShapeError, match="s4b0_add.*one shape"):
        zoo.birealnet18(input_size=48)  # stage 4 gets 3x3: the stride-2 conv gives 2x2, the pooling 1x1
