"""Every layer, on every ISA path, equals the NumPy reference (integers exactly, floats
within a stated tolerance) over an awkward grid of shapes."""
import itertools

import numpy as np
import pytest

import pybnn
from pybnn import layers as L

CHANNELS = [1, 3, 63, 64, 65, 130]
SIZES = [1, 5, 7, 28]
KERNELS = [1, 3, 5]
STRIDES = [1, 2]
PADDINGS = ["valid", "same", ((1, 0), (2, 1))]
PAD_VALUES = [0, 1, -1]
BATCHES = [1, 3]
FILTERS = [1, 7, 33, 64]

# Float accumulators sum in a different order than the float64 reference: relative
# tolerance 1e-5 on the result plus an absolute term scaled by the sum's magnitude.
FLOAT_RTOL = 1e-5


def conv_cases():
    """One case per (channels, kernel, stride, padding); the other axes cycle so every value
    of every axis appears, and no case has a kernel larger than its padded input."""
    cycle = itertools.count()
    cases = []
    for c, k, s, pad in itertools.product(CHANNELS, KERNELS, STRIDES, PADDINGS):
        i = next(cycle)
        size = SIZES[i % len(SIZES)]
        if c >= 64 and size == 28:
            size = 7  # keep the float64 reference fast
        h, w = size, SIZES[(i + 1) % len(SIZES)] if size != 28 else 5
        if pad == "valid" and (k > h or k > w):
            h, w = max(h, k), max(w, k)
        if isinstance(pad, tuple) and (k > h + 1 or k > w + 3):
            h, w = max(h, k), max(w, k)
        cases.append((c, h, w, k, s, pad, PAD_VALUES[i % 3], BATCHES[i % 2], FILTERS[i % 4]))
    return cases


CONV_CASES = conv_cases()


def input_layer(kind, shape):
    if kind == "int8":
        return L.Input(shape, dtype="int8", scale=0.05, zero_point=-3)
    return L.Input(shape)  # binary layers get a float input and an implicit Sign


def make_input(kind, batch, shape, rng):
    if kind == "int8":
        return rng.integers(-128, 128, (batch,) + shape).astype(np.int8)
    x = rng.standard_normal((batch,) + shape).astype(np.float32)
    x.flat[::7] = 0.0  # exercise sign(0) = +1
    return x


def check(model, x, exact):
    got = model.predict(x)
    want = model.predict_reference(x, folded=True)
    assert got.shape == want.shape and got.dtype == want.dtype
    if exact:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=FLOAT_RTOL, atol=FLOAT_RTOL * np.abs(want).max() + 1e-6)


CONV_KINDS = [  # (layer factory, input kind, exact?)
    ("Conv2D", lambda f, k, s, p, pv: L.Conv2D(f, k, strides=s, padding=p), "float32", False),
    ("FloatBinaryConv2D", lambda f, k, s, p, pv: L.FloatBinaryConv2D(f, k, strides=s, padding=p), "float32", False),
    ("BinaryConv2D", lambda f, k, s, p, pv: L.BinaryConv2D(f, k, strides=s, padding=p, pad_value=pv,
                                                          use_scale=True, use_bias=True), "binary", True),
    ("Int8Conv2D", lambda f, k, s, p, pv: L.Int8Conv2D(f, k, strides=s, padding=p), "int8", True),
    ("Int8BinaryConv2D", lambda f, k, s, p, pv: L.Int8BinaryConv2D(f, k, strides=s, padding=p), "int8", True),
]


@pytest.mark.parametrize("kind", CONV_KINDS, ids=[k[0] for k in CONV_KINDS])
def test_conv_matches_reference(isa, kind):
    name, make, in_kind, exact = kind
    rng = np.random.default_rng(0)
    for c, h, w, k, s, pad, pv, batch, filters in CONV_CASES:
        model = pybnn.Sequential([input_layer(in_kind, (h, w, c)), make(filters, k, s, pad, pv)]).randomize(rng.integers(1 << 30))
        check(model, make_input(in_kind, batch, (h, w, c), rng), exact)


@pytest.mark.parametrize("kind", CONV_KINDS, ids=[k[0] for k in CONV_KINDS])
def test_conv_dilation_and_relu(isa, kind):
    name, make, in_kind, exact = kind
    rng = np.random.default_rng(1)
    layer = make(9, 3, 1, "same", -1)
    layer.dilation_rate, layer.activation = (2, 2), "relu"
    model = pybnn.Sequential([input_layer(in_kind, (9, 8, 35)), layer]).randomize(3)
    check(model, make_input(in_kind, 2, (9, 8, 35), rng), exact)


def test_binary_conv_to_bits_and_int8_outputs(isa):
    """Folded bit output (conv + Sign) and requantized int8 output are integer-exact."""
    rng = np.random.default_rng(2)
    for c, h, w, k, s, pad, pv, batch, filters in CONV_CASES[::3]:
        bits = pybnn.Sequential([L.Input((h, w, c)), L.BinaryConv2D(filters, k, strides=s, padding=pad,
                                 pad_value=pv, use_bias=True), L.Sign()]).randomize(4)
        check(bits, make_input("float32", batch, (h, w, c), rng), True)
        assert bits.plan()[-1].output_spec.kind == "binary" and len(bits.plan()) == 3  # Sign folded away
        q = pybnn.Sequential([input_layer("int8", (h, w, c)), L.Int8Conv2D(filters, k, strides=s, padding=pad,
                              output="int8", output_scale=0.5, output_zero_point=3, activation="relu")]).randomize(5)
        check(q, make_input("int8", batch, (h, w, c), rng), True)
        qb = pybnn.Sequential([input_layer("int8", (h, w, c)), L.Int8BinaryConv2D(filters, k, strides=s,
                               padding=pad, output="int8", output_scale=0.3)]).randomize(6)
        check(qb, make_input("int8", batch, (h, w, c), rng), True)
        sq = pybnn.Sequential([input_layer("int8", (h, w, c)), L.Int8Conv2D(filters, k, strides=s, padding=pad),
                               L.Sign()]).randomize(7)
        check(sq, make_input("int8", batch, (h, w, c), rng), True)


DENSE_KINDS = [
    (lambda u: L.Dense(u), "float32", False),
    (lambda u: L.FloatBinaryDense(u), "float32", False),
    (lambda u: L.BinaryDense(u, use_scale=True, use_bias=True), "binary", True),
    (lambda u: L.Int8Dense(u), "int8", True),
    (lambda u: L.Int8BinaryDense(u), "int8", True),
    (lambda u: L.Int8Dense(u, output="int8", output_scale=0.7, output_zero_point=-5), "int8", True),
]


@pytest.mark.parametrize("kind", DENSE_KINDS, ids=["Dense", "FloatBinaryDense", "BinaryDense", "Int8Dense",
                                                   "Int8BinaryDense", "Int8Dense-int8"])
def test_dense_matches_reference(isa, kind):
    make, in_kind, exact = kind
    rng = np.random.default_rng(3)
    for c, units, batch in itertools.product(CHANNELS, FILTERS, BATCHES):
        model = pybnn.Sequential([input_layer(in_kind, (c,)), make(units)]).randomize(int(rng.integers(1 << 30)))
        check(model, make_input(in_kind, batch, (c,), rng), exact)


@pytest.mark.parametrize("c", [1, 3, 33, 64, 65])
def test_binary_dense_after_flatten_reads_grid_in_place(isa, c):
    rng = np.random.default_rng(c)
    model = pybnn.Sequential([L.Input((5, 3, c)), L.Sign(), L.Flatten(), L.BinaryDense(10)]).randomize(c)
    x = make_input("float32", 3, (5, 3, c), rng)
    check(model, x, True)
    # Same numbers as the float dense layer on the ±1 values in (h, w, c) order.
    kernel = model.get_layer("binary_dense_3").get_weights()[0]
    signs = np.where(x < 0, -1, 1).reshape(3, -1)
    np.testing.assert_array_equal(model.predict(x), signs @ kernel)


@pytest.mark.parametrize("in_kind", ["float32", "int8"])
@pytest.mark.parametrize("c", CHANNELS)
def test_sign(isa, in_kind, c):
    rng = np.random.default_rng(c)
    x = make_input(in_kind, 3, (5, 7, c), rng)
    if in_kind == "float32":
        x.flat[1::5] = -0.0
        x.flat[2::11] = np.nan
    model = pybnn.Sequential([input_layer(in_kind, (5, 7, c)), L.Sign()])
    got = model.predict(x)
    check(model, x, True)
    negative = x < 0 if in_kind == "float32" else x < -3
    np.testing.assert_array_equal(got, np.where(negative, -1.0, 1.0))


def test_sign_encoding_literal():
    """Bit 0 is +1, bit 1 is -1, channel c at bit c % 32 of word c // 32, padding bits zero."""
    model = pybnn.Sequential([L.Input((1, 1, 6)), L.Sign()])
    x = np.array([1.0, -1.0, 0.0, -0.0, np.nan, -2.0], np.float32).reshape(1, 1, 1, 6)
    bits = model.plan()[-1].call(x)
    assert bits.dtype == np.uint32 and bits.shape == (1, 1, 1, 1)
    assert int(bits[0, 0, 0, 0]) == 0b100010
    model = pybnn.Sequential([L.Input((1, 1, 33)), L.Sign()])
    bits = model.plan()[-1].call(-np.ones((1, 1, 1, 33), np.float32))
    assert bits.tolist() == [[[[0xFFFFFFFF, 1]]]]


POOL_CASES = [(c, h, w, p, s, pad) for c, (h, w), p, s, pad in itertools.product(
    [1, 3, 33, 64, 65], [(1, 1), (5, 7), (7, 5), (28, 28)], [1, 2, 3], [1, 2], ["valid", "same"])
    if not (pad == "valid" and (p > h or p > w))]


@pytest.mark.parametrize("in_kind", ["float32", "int8", "binary"])
def test_max_pool(isa, in_kind):
    rng = np.random.default_rng(4)
    for c, h, w, p, s, pad in POOL_CASES:
        first = [L.Input((h, w, c))] + ([L.Sign()] if in_kind == "binary" else [])
        if in_kind == "int8":
            first = [input_layer("int8", (h, w, c))]
        model = pybnn.Sequential(first + [L.MaxPool2D(p, s, pad)])
        check(model, make_input(in_kind, 2, (h, w, c), rng), in_kind != "float32")


@pytest.mark.parametrize("in_kind", ["float32", "int8"])
def test_average_pools(isa, in_kind):
    rng = np.random.default_rng(5)
    for c, h, w, p, s, pad in POOL_CASES[::4]:
        for layer in (L.AveragePool2D(p, s, pad), L.GlobalAveragePooling2D()):
            model = pybnn.Sequential([input_layer(in_kind, (h, w, c)), layer])
            check(model, make_input(in_kind, 2, (h, w, c), rng), in_kind == "int8")


def test_int8_average_pool_rounds_half_away_from_zero():
    model = pybnn.Sequential([L.Input((1, 2, 1), dtype="int8", scale=1.0, zero_point=0), L.AveragePool2D((1, 2))])
    x = np.array([[[[1], [2]]], [[[-1], [-2]]], [[[3], [4]]]], np.int8)
    np.testing.assert_array_equal(model.predict(x).ravel(), [2, -2, 4])


def test_float_layers():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 5, 5, 7)).astype(np.float32)
    model = pybnn.Sequential([L.Input((5, 5, 7)), L.BatchNormalization(), L.PReLU(), L.ReLU(max_value=0.8),
                              L.Flatten(), L.Dense(4), L.Softmax()]).randomize(1)
    check(model, x, False)
    y = model.predict(x)
    np.testing.assert_allclose(y.sum(axis=1), 1, rtol=1e-6)
    q = pybnn.Sequential([L.Input((5, 5, 7)), L.Quantize(0.1, 3), L.Dequantize()])
    np.testing.assert_array_equal(q.predict(x), (np.clip(np.rint(x / np.float32(0.1)) + 3, -128, 127) - 3)
                                  .astype(np.float32) * np.float32(0.1))


def test_channel_affine(isa):
    """x * scale[c] + bias[c], the product rounded first; either part optional."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 4, 5, 37)).astype(np.float32)
    model = pybnn.Sequential([L.Input((4, 5, 37)), L.ChannelAffine(), L.ChannelAffine(use_scale=False),
                              L.ChannelAffine(use_bias=False)]).randomize(2)
    check(model, x, True)
    (s1, b1), (b2,), (s3,) = (layer.get_weights() for layer in model.layers[1:])
    want = ((x * s1 + b1).astype(np.float32) + b2).astype(np.float32) * s3
    np.testing.assert_array_equal(model.predict(x), want)
    with pytest.raises(pybnn.ConfigError, match="nothing to do"):
        L.ChannelAffine(use_scale=False, use_bias=False)


@pytest.mark.parametrize("slope, max_value", [(0.0, None), (0.0, 6.0), (0.1, None)])
def test_relu_bits_equal_reference(slope, max_value):
    """ReLU's fast paths give the reference's bits, signed zeros, NaN and infinities included."""
    special = [0.0, -0.0, np.nan, np.inf, -np.inf, -1e-45, 1e-45, -3.5, 2.25, 7.0]
    x = np.concatenate([special, np.random.default_rng(8).standard_normal(86)]).astype(np.float32)
    model = pybnn.Sequential([L.Input((96,)), L.ReLU(max_value=max_value, negative_slope=slope)])
    with np.errstate(invalid="ignore"):  # -inf * 0 is NaN, in both
        got, want = model.predict(x[None]), model.predict_reference(x[None])
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_uint8_image_enters_int8_layer_exactly(isa):
    """Pixels (uint8, scale s, zero point z) reach Int8Conv2D as q = pixel - 128, zp = z - 128."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (2, 9, 9, 3)).astype(np.uint8)
    conv = L.Int8Conv2D(8, 3, padding="same")
    model = pybnn.Sequential([L.Input((9, 9, 3), dtype="uint8", scale=1 / 255, zero_point=128), conv]).randomize(2)
    kernel, scale, bias = conv.get_weights()
    real = (pixels.astype(np.float64) - 128) / 255
    want = pybnn.reference.conv2d(pixels.astype(np.int64) - 128, kernel, (1, 1), (1, 1), ((1, 1), (1, 1))) + bias
    np.testing.assert_array_equal(model.predict(pixels), (want.astype(np.float32) * (np.float64(1 / 255) * scale).astype(np.float32)))
    assert np.abs(model.predict(pixels) - pybnn.reference.conv2d(real, kernel * scale, (1, 1), (1, 1),
                                                                   ((1, 1), (1, 1))) - bias * scale / 255).max() < 1e-4


# (channels, groups, filters): 2 and 3 groups of odd widths, groups crossing 32-bit words,
# depthwise (one input channel per group) with multipliers 1 and 2.
GROUPS = [(6, 2, 4), (99, 3, 33), (70, 2, 34), (65, 5, 10), (13, 13, 13), (40, 40, 80)]


@pytest.mark.parametrize("kind", CONV_KINDS, ids=[k[0] for k in CONV_KINDS])
@pytest.mark.parametrize("shape", GROUPS, ids=[f"c{c}g{g}f{f}" for c, g, f in GROUPS])
def test_grouped_conv_matches_reference(isa, kind, shape):
    name, make, in_kind, exact = kind
    c, groups, filters = shape
    rng = np.random.default_rng(c * groups)
    for i, (h, w, k, s, pad) in enumerate([(7, 5, 3, 1, "same"), (6, 9, 3, 2, "valid"),
                                           (1, 1, 1, 1, "valid"), (5, 5, 3, 2, ((1, 0), (2, 1)))]):
        layer = make(filters, k, s, pad, PAD_VALUES[i % 3])
        layer.groups = groups
        model = pybnn.Sequential([input_layer(in_kind, (h, w, c)), layer]).randomize(i)
        check(model, make_input(in_kind, 1 + i % 2, (h, w, c), rng), exact)


@pytest.mark.parametrize("shape", GROUPS, ids=[f"c{c}g{g}f{f}" for c, g, f in GROUPS])
def test_grouped_conv_bit_and_int8_outputs(isa, shape):
    """Folded outputs of grouped layers: bits joined across groups at any bit offset, int8."""
    c, groups, filters = shape
    rng = np.random.default_rng(groups)
    bits = pybnn.Sequential([L.Input((6, 7, c)), L.BinaryConv2D(filters, 3, padding="same", pad_value=-1,
                             groups=groups), L.BatchNormalization(), L.Sign()]).randomize(1)
    check(bits, make_input("float32", 2, (6, 7, c), rng), True)
    assert bits.plan()[-1].output_spec.kind == "binary" and len(bits.plan()) == 3
    q = pybnn.Sequential([input_layer("int8", (6, 7, c)), L.Int8Conv2D(filters, 3, strides=2, padding="same",
                          groups=groups, output="int8", output_scale=0.5, output_zero_point=3)]).randomize(2)
    check(q, make_input("int8", 2, (6, 7, c), rng), True)
    sq = pybnn.Sequential([input_layer("int8", (6, 7, c)), L.Int8BinaryConv2D(filters, 1, groups=groups),
                           L.Sign()]).randomize(3)
    check(sq, make_input("int8", 2, (6, 7, c), rng), True)


def test_grouped_conv_config_and_errors(tmp_path):
    layer = L.Conv2D(8, 3, groups=4, name="g")
    assert layer.get_config()["groups"] == 4 and "groups" not in L.Conv2D(8, 3).get_config()
    model = pybnn.Sequential([L.Input((5, 5, 12)), layer]).randomize(0)
    assert layer.weight_specs()[0][1] == (3, 3, 3, 8)
    model.save(tmp_path / "g.bin")
    x = np.random.default_rng(0).standard_normal((2, 5, 5, 12)).astype(np.float32)
    np.testing.assert_array_equal(pybnn.load_model(tmp_path / "g.bin").predict(x), model.predict(x))
    with pytest.raises(pybnn.ConfigError, match="multiple of groups"):
        L.BinaryConv2D(10, 3, groups=4)
    with pytest.raises(pybnn.ShapeError, match=r"input channels \(10\) must be a multiple of groups \(4\)"):
        pybnn.Sequential([L.Input((5, 5, 10)), L.Conv2D(8, 3, groups=4)])
    with pytest.raises(pybnn.ConfigError, match="groups must be a positive int"):
        L.Int8Conv2D(8, 3, groups=0)
    with pytest.raises(pybnn.ConfigError, match="dense layers have no groups"):
        L.Dense(8, groups=2)
