"""Sequential: folding is exact, conversions are documented, errors are clear, files round-trip."""
import json

import numpy as np
import pytest

import pybnn
from pybnn import layers as L


def bnn(fold=True, tail="softmax"):
    layers = [L.Input((9, 9, 3)),
              L.Conv2D(16, 3, padding="same", use_bias=False, name="conv1"),
              L.BatchNormalization(name="bn1"), L.Sign(name="sign1"),
              L.BinaryConv2D(40, 3, padding="same", pad_value=0, name="bconv2"),
              L.BatchNormalization(name="bn2"), L.Sign(name="sign2"),
              L.MaxPool2D(2, padding="same", name="pool2"),
              L.BinaryConv2D(33, 3, strides=2, padding="valid", pad_value=-1, name="bconv3"),
              L.BatchNormalization(name="bn3"), L.Sign(name="sign3"),
              L.Flatten(name="flatten"), L.BinaryDense(10, name="dense4"), L.BatchNormalization(name="bn4")]
    if tail == "softmax":
        layers.append(L.Softmax(name="softmax"))
    else:
        layers.append(L.Sign(name="sign4"))
    return pybnn.Sequential(layers, fold=fold)


def tie_heavy_weights(model, seed=0):
    """Random weights with BatchNorm means on integers and beta = 0, so many pre-sign values
    are exactly 0: the folded thresholds must reproduce sign(0) = +1 at those ties."""
    model.randomize(seed)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            c = layer.input_spec.channels
            gamma = rng.uniform(0.5, 2, c).astype(np.float32) * rng.choice([-1, 1], c)
            gamma[:2] = 0  # constant channels
            layer.set_weights([gamma, np.zeros(c, np.float32), rng.integers(-6, 7, c).astype(np.float32),
                               rng.uniform(0.5, 2, c).astype(np.float32)])
    return model


@pytest.mark.parametrize("tail", ["softmax", "sign"])
def test_folded_model_predicts_what_the_unfolded_one_does(isa, tail):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 9, 9, 3)).astype(np.float32)
    folded, unfolded = bnn(True, tail), bnn(False, tail)
    for model in (folded, unfolded):
        tie_heavy_weights(model)
    plan = folded.plan()
    assert len(plan) < len(unfolded.plan())
    assert not any(isinstance(op, L.BatchNormalization) for op in plan)
    a, b = folded.predict(x), unfolded.predict(x)
    if tail == "sign":
        np.testing.assert_array_equal(a, b)  # bit-exact through three binary layers
    else:
        np.testing.assert_array_equal(a.argmax(1), b.argmax(1))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # and both equal the NumPy reference of the unfolded layers
    np.testing.assert_allclose(unfolded.predict_reference(x), b, rtol=1e-5, atol=1e-6)
    if tail == "sign":
        np.testing.assert_array_equal(folded.predict_reference(x), a)


def test_relu_folds_into_the_float_output_convolution_before_it(isa):
    def build(fold):
        return pybnn.Sequential([
            L.Input((7, 7, 5)), L.Conv2D(12, 3, padding="same", name="c1"), L.BatchNormalization(name="bn1"),
            L.ReLU(name="r1"),                                    # after BN folds into c1: folds too
            L.BinaryConv2D(9, 3, strides=2, name="c2"), L.ReLU(name="r2"),   # float-output binary conv
            L.ReLU(max_value=3.0, name="r3"),                     # a cap: stays a layer
            L.Flatten(), L.Dense(4, activation="relu", name="d"), L.ReLU(name="r4")],  # has one already
            fold=fold)

    folded, unfolded = build(True), build(False)
    folded.randomize(3)
    for a, b in zip(unfolded.layers, folded.layers):
        if b.get_weights():
            a.set_weights(b.get_weights())
    names = [op.name for op in folded.plan()]
    assert "r1" not in names and "r2" not in names and "r3" in names and "r4" in names
    assert {"r1 -> activation of c1", "r2 -> activation of c2"} <= set(folded.fold_notes)
    x = np.random.default_rng(4).standard_normal((3, 7, 7, 5)).astype(np.float32)
    np.testing.assert_allclose(folded.predict(x), unfolded.predict(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(folded.predict(x), folded.predict_reference(x, folded=True), rtol=1e-5, atol=1e-5)


def test_folded_thresholds_are_exact_at_every_integer():
    """For a binary conv + BN + Sign, the folded bits equal the float chain at every reachable dot."""
    model = pybnn.Sequential([L.Input((50,)), L.Sign(), L.BinaryDense(64, use_bias=True, use_scale=True),
                              L.BatchNormalization(), L.Sign()])
    tie_heavy_weights(model, 3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 50)).astype(np.float32)
    unfolded = pybnn.Sequential([type(l).from_config(l.get_config()) for l in model.layers], fold=False)
    for a, b in zip(model.layers, unfolded.layers):
        if a.weight_specs():
            b.set_weights(a.get_weights())
    np.testing.assert_array_equal(model.predict(x), unfolded.predict(x))


def test_channel_affine_folds_like_batch_norm(isa):
    """ChannelAffine (and chains BN -> ChannelAffine -> ChannelAffine) folds exactly into the
    following Sign's thresholds, then the binary convolution writes bits; after a float
    convolution it folds into the multiplier and bias."""
    def build(fold):
        inp = L.Input((6, 6, 5), name="x")
        a = L.BinaryConv2D(33, 3, padding="same", use_bias=True, name="a")(inp)
        a = L.BatchNormalization(name="a_bn")(a)
        a = L.ChannelAffine(name="a_shift")(a)
        a = L.ChannelAffine(use_scale=False, name="a_move")(a)
        a = L.Sign(name="a_sign")(a)
        a = L.BinaryConv2D(9, 3, strides=2, name="b")(a)
        a = L.ChannelAffine(use_bias=False, name="b_scale")(a)
        bits = L.Sign(name="b_sign")(a)
        f = L.Conv2D(4, 3, name="f")(inp)
        f = L.ChannelAffine(name="f_affine")(f)
        return pybnn.Model(inp, [bits, f], fold=fold)

    folded, unfolded = build(True), build(False)
    rng = np.random.default_rng(3)
    folded.randomize(3)
    for layer in folded.layers:
        if isinstance(layer, L.ChannelAffine):
            c = layer.input_spec.channels
            weights = []
            if layer.use_scale:  # negative and zero scales: falling and constant channels
                weights.append(rng.choice([-2.0, -0.5, 0.0, 0.5, 3.0], c).astype(np.float32))
            if layer.use_bias:   # integers: many ties at the thresholds
                weights.append(rng.integers(-4, 5, c).astype(np.float32))
            layer.set_weights(weights)
    for a, b in zip(unfolded.layers, folded.layers):
        if b.get_weights():
            a.set_weights(b.get_weights())
    plan = folded.plan()
    assert not any(isinstance(op, (L.ChannelAffine, L.BatchNormalization)) for op in plan)
    assert "a_bn + a_sign -> per-channel thresholds in a_sign" in folded.fold_notes
    x = rng.standard_normal((5, 6, 6, 5)).astype(np.float32)
    (bits, f), (bits_u, f_u) = folded.predict(x), unfolded.predict(x)
    np.testing.assert_array_equal(bits, bits_u)
    np.testing.assert_array_equal(bits, unfolded.predict_reference(x)[0])
    np.testing.assert_allclose(f, f_u, rtol=1e-5, atol=1e-5)


def test_summary_lists_layers_params_bytes_and_mops(capsys):
    model = tie_heavy_weights(bnn())
    text = model.summary()
    assert "bconv2 (BinaryConv2D)" in text and "Total params" in text and "MOps" in text
    assert "Folded: bn2 + sign2" in text
    bconv2 = model.get_layer("bconv2")
    assert bconv2.count_params() == 3 * 3 * 16 * 40
    # in its kernel's layout: each tap's 16 channels in a 32-bit word, the 9 words of a channel
    # in 5 64-bit steps, 40 channels in 5 blocks of 8 (docs/format.md, bits_xgemm)
    assert bconv2.weight_bytes() == 5 * 5 * 64
    assert bconv2.mops() == pytest.approx(2 * 9 * 9 * 40 * 3 * 3 * 16 / 1e6)
    assert capsys.readouterr().out.startswith('Model: "sequential"')


def test_implicit_conversions_are_visible():
    model = pybnn.Sequential([L.Input((4, 4, 3)), L.BinaryConv2D(8, 3), L.Sign(), L.MaxPool2D(2), L.Softmax()])
    names = [l.name for l in model._graph]
    assert "binary_conv2d_1/sign" in names and "softmax_4/dequantize" in names
    assert "(implicit)" in model.summary(print_fn=None)
    model.randomize()
    x = np.random.default_rng(0).standard_normal((2, 4, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), model.predict_reference(x), rtol=1e-6)


def test_batch_size_splits_without_changing_results():
    model = tie_heavy_weights(bnn())
    x = np.random.default_rng(2).standard_normal((7, 9, 9, 3)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(x), model.predict(x, batch_size=3))
    assert model.predict(x[:0]).shape == (0, 10)


# ---------------------------------------------------------------------------- errors


def test_bad_predict_input_names_the_input_layer():
    model = tie_heavy_weights(bnn())
    with pytest.raises(pybnn.ShapeError, match=r"input_0.*\(batch,\) \+ \(9, 9, 3\).*\(9, 9, 3\)"):
        model.predict(np.zeros((9, 9, 3), np.float32))
    with pytest.raises(pybnn.ShapeError, match="shape"):
        model.predict(np.zeros((1, 9, 9, 4), np.float32))
    with pytest.raises(pybnn.ShapeError, match="dtype"):
        model.predict(np.zeros((1, 9, 9, 3), object))
    q = pybnn.Sequential([L.Input((4,), dtype="uint8", scale=0.1, zero_point=0), L.Int8Dense(2)]).randomize()
    with pytest.raises(pybnn.ShapeError, match="uint8"):
        q.predict(np.zeros((1, 4), np.float32))


def test_bad_weights_name_layer_and_expectation():
    model = bnn()
    conv = model.get_layer("bconv2")
    with pytest.raises(pybnn.WeightsError, match=r"bconv2.*expected 1 weight arrays"):
        conv.set_weights([np.zeros((3, 3, 16, 40)), np.zeros(40)])
    with pytest.raises(pybnn.WeightsError, match=r"bconv2.*kernel.*\(3, 3, 16, 40\).*\(3, 3, 40, 16\)"):
        conv.set_weights([np.zeros((3, 3, 40, 16))])
    with pytest.raises(pybnn.WeightsError, match="NaN"):
        conv.set_weights([np.full((3, 3, 16, 40), np.nan)])
    with pytest.raises(pybnn.WeightsError, match="numeric"):
        conv.set_weights([np.zeros((3, 3, 16, 40), dtype=object)])
    q = pybnn.Sequential([L.Input((4,), dtype="int8", scale=0.1, zero_point=0), L.Int8Dense(2, name="q")])
    with pytest.raises(pybnn.WeightsError, match=r"q.*kernel.*\[-127, 127\]"):
        q.get_layer("q").set_weights([np.full((4, 2), -128), np.ones(2), np.zeros(2)])
    with pytest.raises(pybnn.ShapeError, match=r"no weights"):
        model.predict(np.zeros((1, 9, 9, 3), np.float32))


@pytest.mark.parametrize("make, match", [
    (lambda: L.Conv2D(0, 3), "filters must be a positive int"),
    (lambda: L.Conv2D(-4, 3), "filters must be a positive int"),
    (lambda: L.Dense(2.5), "units must be a positive int"),
    (lambda: L.Conv2D(4, 0), "kernel_size must be >= 1"),
    (lambda: L.Conv2D(4, (3, 3, 3)), "kernel_size must be an int or a pair"),
    (lambda: L.Conv2D(4, 3, padding="full"), "padding must be"),
    (lambda: L.BinaryConv2D(4, 3, pad_value=2), "pad_value must be -1, 0 or 1"),
    (lambda: L.Conv2D(4, 3, activation="tanh"), "activation"),
    (lambda: L.Int8Conv2D(4, 3, output="int8"), "output_scale"),
    (lambda: L.Input((0, 3, 3)), "positive ints"),
    (lambda: L.Input((3, 3), dtype="float32"), r"\(H, W, C\) or \(C,\)"),
    (lambda: L.Input((3,), dtype="int8"), "scale"),
    (lambda: L.Quantize(0.0), "scale must be positive"),
])
def test_bad_constructor_arguments(make, match):
    with pytest.raises(pybnn.ConfigError, match=match):
        make()


def test_architecture_errors_name_both_layers():
    with pytest.raises(pybnn.ShapeError, match=r"conv.*kernel height 5.*larger than the padded input height 3"):
        pybnn.Sequential([L.Input((3, 8, 2)), L.Conv2D(4, 5, name="conv")])
    with pytest.raises(pybnn.ShapeError, match=r"'q'.*int8.*'input_0' produces float32.*Quantize"):
        pybnn.Sequential([L.Input((4,)), L.Int8Dense(2, name="q")])
    with pytest.raises(pybnn.ShapeError, match=r"dense.*Flatten.*'conv'"):
        pybnn.Sequential([L.Input((4, 4, 2)), L.Conv2D(3, 3, name="conv"), L.Dense(2, name="dense")])
    with pytest.raises(pybnn.ConfigError, match="first layer must be"):
        pybnn.Sequential([L.Dense(2)])
    with pytest.raises(pybnn.ConfigError, match="named 'a'"):
        pybnn.Sequential([L.Input((4,)), L.Dense(2, name="a"), L.Dense(2, name="a")])


# ---------------------------------------------------------------------------- files


def test_save_load_round_trip(tmp_path):
    model = tie_heavy_weights(bnn())
    x = np.random.default_rng(3).standard_normal((5, 9, 9, 3)).astype(np.float32)
    path = tmp_path / "m.bin"
    model.save(path)
    again = bnn().load(path)
    np.testing.assert_array_equal(again.predict(x), model.predict(x))
    rebuilt = pybnn.load_model(path)
    np.testing.assert_array_equal(rebuilt.predict(x), model.predict(x))
    # binary kernels are stored in their kernel's layout, one bit per weight (+ padding)
    raw = path.read_bytes()
    header = json.loads(raw[24:24 + int.from_bytes(raw[16:24], "little")])
    entry = next(t for t in header["tensors"] if t["layer"] == "bconv2" and t["name"] == "kernel")
    assert entry["dtype"] == "bits_xgemm" and entry["shape"] == [3, 3, 16, 40]
    assert entry["nbytes"] == 5 * 5 * 64 and entry["offset"] % 64 == 0
    for a, b in zip(rebuilt.layers, model.layers):
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(wa, wb)


def test_load_into_a_different_architecture_says_where(tmp_path):
    path = tmp_path / "m.bin"
    tie_heavy_weights(bnn()).save(path)
    other = bnn()
    other.layers[4].pad_value = 1
    with pytest.raises(pybnn.FormatError, match=r"layer 4 \('bconv2'\).*pad_value"):
        other.load(path)
    with pytest.raises(pybnn.FormatError, match="file has 15 layers, model .sequential. has 2"):
        pybnn.Sequential([L.Input((9, 9, 3)), L.Flatten()]).load(path)


def test_truncated_and_corrupt_files_raise_format_error(tmp_path):
    path = tmp_path / "m.bin"
    tie_heavy_weights(bnn()).save(path)
    raw = path.read_bytes()
    bad = tmp_path / "bad.bin"
    for cut in list(range(0, 64)) + list(range(64, len(raw), 97)):
        bad.write_bytes(raw[:cut])
        with pytest.raises(pybnn.FormatError):
            pybnn.load_model(bad)
    rng = np.random.default_rng(0)
    for _ in range(200):
        data = bytearray(raw)
        data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
        bad.write_bytes(bytes(data))
        try:
            pybnn.load_model(bad)
        except pybnn.FormatError:
            pass  # a flip inside the JSON can still leave a valid, equivalent file


def every_layer_model():
    return pybnn.Sequential([
        L.Input((9, 8, 5), dtype="uint8", scale=0.02, zero_point=100),
        L.Int8Conv2D(6, 3, strides=(2, 1), padding=((1, 0), (2, 1)), output="int8", output_scale=0.1,
                     output_zero_point=-4, activation="relu"),
        L.Int8BinaryConv2D(7, (1, 3), padding="same", dilation_rate=(1, 2)),
        L.FloatBinaryConv2D(9, 3, padding="same", activation="relu"),
        L.AveragePool2D(2, strides=1, padding="same"), L.PReLU(), L.ReLU(max_value=3.0),
        L.BatchNormalization(epsilon=1e-4), L.Sign(),
        L.BinaryConv2D(40, 3, padding="same", pad_value=-1, use_scale=True, use_bias=True),
        L.Sign(), L.MaxPool2D(2, padding="same"),
        L.Conv2D(8, 1), L.Quantize(0.05, 2), L.MaxPool2D(1),
        L.Int8Conv2D(4, 1, output="int8", output_scale=0.2), L.GlobalAveragePooling2D(),
        L.Int8Dense(12, output="int8", output_scale=0.3), L.Int8BinaryDense(11), L.Quantize(0.5),
        L.Dequantize(), L.FloatBinaryDense(10), L.Sign(), L.BinaryDense(9, use_scale=True),
        L.Dense(8), L.Flatten(), L.Softmax()])


def test_every_layer_config_round_trips_and_the_model_runs(isa, tmp_path):
    model = every_layer_model().randomize(5)
    for layer in model.layers:
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
    x = np.random.default_rng(0).integers(0, 256, (3, 9, 8, 5)).astype(np.uint8)
    y = model.predict(x)
    assert y.shape == (3, 8) and np.allclose(y.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(y, model.predict_reference(x), rtol=1e-4, atol=1e-6)
    model.save(tmp_path / "all.bin")
    np.testing.assert_array_equal(pybnn.load_model(tmp_path / "all.bin").predict(x), y)


def test_command_line_info_and_cpu(tmp_path, capsys):
    from pybnn.__main__ import main
    tie_heavy_weights(bnn()).save(tmp_path / "m.bin")
    assert main(["info", str(tmp_path / "m.bin")]) == 0
    assert "bconv2 (BinaryConv2D)" in capsys.readouterr().out
    (tmp_path / "bad.bin").write_bytes(b"nonsense")
    assert main(["info", str(tmp_path / "bad.bin")]) == 1
    assert "too short for a pybnn file" in capsys.readouterr().err
    assert main(["cpu"]) == 0 and '"available"' in capsys.readouterr().out
