"""Graph models (functional API): shortcuts, concatenation, several inputs and outputs,
folding across branches, the activation arena, files."""
import json
import threading

import numpy as np
import pytest

import pybnn
from pybnn import layers as L
from test_format import header_of, rewrite


def residual_net(pad_value=0, channels=40):
    """A Bi-Real-style net: float stem, two binary blocks with identity shortcuts (the second
    BN feeds both the next Sign and the next Add, so it must not fold into thresholds), a
    downsampling shortcut (pool + 1x1 conv), global pooling and a float dense head."""
    inp = L.Input((9, 9, 3), name="image")
    x = L.Conv2D(channels, 3, padding="same", use_bias=False, name="stem")(inp)
    x = L.BatchNormalization(name="stem_bn")(x)
    for b in range(2):
        y = L.BinaryConv2D(channels, 3, padding="same", pad_value=pad_value, name=f"b{b}_conv")(x)
        y = L.BatchNormalization(name=f"b{b}_bn")(y)
        x = L.Add(name=f"b{b}_add")([y, x])
    y = L.BinaryConv2D(64, 3, strides=2, padding="same", pad_value=pad_value, name="down_conv")(x)
    y = L.BatchNormalization(name="down_bn")(y)
    s = L.AveragePool2D(2, padding="same", name="down_pool")(x)
    s = L.Conv2D(64, 1, use_bias=False, name="down_proj")(s)
    s = L.BatchNormalization(name="down_proj_bn")(s)
    x = L.Add(name="down_add")([y, s])
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(10, name="fc")(x)
    return pybnn.Model(inp, out, name="residual")


def images(n=3, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 9, 9, 3)).astype(np.float32)


@pytest.mark.parametrize("pad_value", [0, 1, -1])
def test_residual_graph_matches_reference(isa, pad_value):
    model = residual_net(pad_value).randomize(3)
    x = images()
    y = model.predict(x)
    assert y.shape == (3, 10)
    np.testing.assert_allclose(y, model.predict_reference(x), rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(y, model.predict_reference(x, folded=True), rtol=2e-4, atol=2e-4)


def test_folding_respects_branches():
    model = residual_net().randomize(3)
    notes = model.plan() and model.fold_notes
    # stem_bn feeds a Sign (implicit) and an Add: it folds into the conv before it, never
    # into the Sign's thresholds (the Add needs its float output)
    assert not any("stem_bn + " in n for n in notes)
    assert "stem_bn -> multiplier and bias of stem" in notes
    assert any("down_proj_bn -> multiplier and bias of down_proj" in n for n in notes)
    assert any("b0_bn -> multiplier and bias of b0_conv" in n for n in notes)
    unfolded = residual_net()
    unfolded.fold = False
    for a, b in zip(unfolded.layers, model.layers):
        if b.get_weights():
            a.set_weights(b.get_weights())
    x = images(5, 2)
    np.testing.assert_allclose(model.predict(x), unfolded.predict(x), rtol=2e-4, atol=2e-4)


def test_binary_branches_fold_to_thresholds_exactly(isa):
    """BN + Sign on a branch fold into thresholds when the BN output goes nowhere else; the
    graph's bit outputs equal the unfolded graph's bit for bit."""
    def build(fold):
        inp = L.Input((7, 7, 5), name="x")
        a = L.BinaryConv2D(33, 3, padding="same", name="a")(inp)
        a = L.BatchNormalization(name="a_bn")(a)
        a = L.Sign(name="a_sign")(a)
        b = L.BinaryConv2D(31, 1, name="b")(inp)
        b = L.BatchNormalization(name="b_bn")(b)
        b = L.Sign(name="b_sign")(b)
        c = L.Concatenate(name="cat")([a, b])
        out = L.BinaryConv2D(9, 3, strides=2, pad_value=-1, name="c")(c)
        out = L.BatchNormalization(name="c_bn")(out)
        return pybnn.Model(inp, L.Sign(name="c_sign")(out), fold=fold)

    folded, unfolded = build(True), build(False)
    folded.randomize(4)
    for a, b in zip(unfolded.layers, folded.layers):
        if b.get_weights():
            a.set_weights(b.get_weights())
    x = np.random.default_rng(5).standard_normal((4, 7, 7, 5)).astype(np.float32)
    assert any("a_bn + a_sign" in n or "a + a_sign" in n for n in folded.plan() and folded.fold_notes)
    np.testing.assert_array_equal(folded.predict(x), unfolded.predict(x))
    np.testing.assert_array_equal(folded.predict(x), unfolded.predict_reference(x))


@pytest.mark.parametrize("channels", [(64, 40), (40, 33, 7), (32, 1)])
def test_concatenate_binary(isa, channels):
    inp = L.Input((5, 4, sum(channels)), name="x")
    parts = []
    start = 0
    # split the input with 1x1 binary convs of the wanted widths, then join them again
    for i, c in enumerate(channels):
        parts.append(L.BinaryConv2D(c, 1, name=f"p{i}")(inp))
        start += c
    signs = [L.Sign(name=f"s{i}")(p) for i, p in enumerate(parts)]
    out = L.Concatenate(name="cat")(signs)
    model = pybnn.Model(inp, out).randomize(1)
    x = np.random.default_rng(0).standard_normal((2, 5, 4, sum(channels))).astype(np.float32)
    np.testing.assert_array_equal(model.predict(x), model.predict_reference(x))
    assert model.output_spec.kind == "binary" and model.output_spec.shape == (5, 4, sum(channels))


def test_concatenate_float_and_int8_and_mixed():
    inp = L.Input((3, 3, 4), "int8", scale=0.1, zero_point=2, name="q")
    a = L.Int8Conv2D(5, 1, output="int8", output_scale=0.2, output_zero_point=1, name="a")(inp)
    b = L.Int8Conv2D(6, 1, output="int8", output_scale=0.2, output_zero_point=1, name="b")(inp)
    c = L.Int8Conv2D(7, 1, output="int8", output_scale=0.3, output_zero_point=0, name="c")(inp)
    same = L.Concatenate(name="same")([a, b])       # one scale: stays int8
    mixed = L.Concatenate(name="mixed")([b, c])     # two scales: dequantized to float32
    model = pybnn.Model(inp, [same, mixed]).randomize(2)
    specs = {s.op.name: s.op.output_spec for s in model._steps}
    assert specs["same"].kind == "int8" and specs["mixed"].kind == "float32"
    assert "mixed/dequantize_0" in specs and "mixed/dequantize_1" in specs
    x = np.random.default_rng(3).integers(-128, 128, (2, 3, 3, 4)).astype(np.int8)
    got, want = model.predict(x), model.predict_reference(x)
    assert isinstance(got, list) and len(got) == 2
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert got[0].shape == (2, 3, 3, 11) and got[1].shape == (2, 3, 3, 13)


def test_add_int8_exact_and_float_of_three():
    inp = L.Input((4, 4, 8), "int8", scale=0.05, zero_point=-3, name="q")
    a = L.Int8Conv2D(8, 3, padding="same", output="int8", output_scale=0.5, output_zero_point=4, name="a")(inp)
    s = L.Add(output_scale=0.4, output_zero_point=-2, name="add8")([a, inp])
    f = L.Add(name="addf")([a, s, inp])  # float32: all three dequantized
    model = pybnn.Model(inp, [s, f]).randomize(5)
    x = np.random.default_rng(6).integers(-128, 128, (3, 4, 4, 8)).astype(np.int8)
    got, want = model.predict(x), model.predict_reference(x)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    # the int8 rule, written out
    q_a = model.plan()[1].reference(x)  # a's int8 output
    real = (q_a.astype(np.float32) - 4) * np.float32(0.5 / 0.4) + (x.astype(np.float32) + 3) * np.float32(0.05 / 0.4)
    expect = np.clip(np.rint(real) - 2, -128, 127)
    np.testing.assert_array_equal(pybnn.reference.dequantize(np.asarray(expect, np.int8), 0.4, -2), got[0])


def test_several_inputs_and_outputs():
    a = L.Input((6,), name="a")
    b = L.Input((6,), name="b")
    s = L.Add(name="sum")([a, b])
    d = L.Dense(3, name="head")(s)
    model = pybnn.Model([b, a], [d, s]).randomize(0)  # input order as given, not creation order
    xa, xb = np.ones((2, 6), np.float32), np.arange(12, dtype=np.float32).reshape(2, 6)
    head, total = model.predict([xb, xa])
    np.testing.assert_array_equal(total, xa + xb)
    np.testing.assert_allclose(head, model.predict_reference([xb, xa])[0], rtol=1e-6)
    with pytest.raises(pybnn.ShapeError, match="list of 2 input batches"):
        model.predict(xa)


def test_graph_errors_are_clear():
    inp = L.Input((4, 4, 3))
    conv = L.Conv2D(4, 3)
    conv(inp)
    with pytest.raises(pybnn.ConfigError, match="already connected"):
        conv(inp)
    with pytest.raises(pybnn.ConfigError, match="list of two or more"):
        L.Add()(inp)
    with pytest.raises(pybnn.ConfigError, match="takes one tensor"):
        L.ReLU()([inp, inp])
    other = L.Input((4, 4, 3))
    y = L.Add()([L.ReLU()(inp), L.ReLU()(other)])
    with pytest.raises(pybnn.ConfigError, match="not among the model's inputs"):
        pybnn.Model(inp, y)
    with pytest.raises(pybnn.ConfigError, match="Sequential.*several tensors|several tensors"):
        pybnn.Sequential([L.Input((3,)), L.Add()])
    x1 = L.Input((4, 4, 3), name="x1")
    with pytest.raises(pybnn.ShapeError, match="one shape"):
        pybnn.Model(x1, L.Add(name="bad")([L.Conv2D(4, 1, name="c1")(x1), L.Conv2D(5, 1, name="c2")(x1)]))
    x2 = L.Input((4, 4, 3), name="x2")
    with pytest.raises(pybnn.ShapeError, match="Quantize"):
        pybnn.Model(x2, L.Add(output_scale=0.1, name="q")([L.ReLU(name="r1")(x2), L.ReLU(name="r2")(x2)]))


def test_arena_reuses_memory_and_outputs_are_copies():
    model = residual_net().randomize(1)
    arena, total, two = model.activation_bytes(1)
    assert arena < total  # tensors share memory
    # a residual graph keeps a shortcut alive beside the two tensors of the running layer
    three = sorted((pybnn.model._nbytes(s.op.output_spec, 1) for s in model._planned() if s.inputs),
                   reverse=True)[:3]
    assert arena <= sum(three) + 3 * pybnn.model.ALIGN
    x = images(2)
    first = model.predict(x)
    first_copy = first.copy()
    second = model.predict(images(2, 9))
    np.testing.assert_array_equal(first, first_copy)  # the second call did not write into the first result
    assert not np.shares_memory(first, second)


def test_chain_arena_is_the_two_largest_activations():
    model = pybnn.Sequential([L.Input((16, 16, 8)), L.Conv2D(16, 3, padding="same"), L.ReLU(),
                              L.Conv2D(8, 3, padding="same"), L.ReLU(), L.Flatten(), L.Dense(4)]).randomize(0)
    arena, total, two = model.activation_bytes(4)
    assert arena == two  # both largest are multiples of 64 bytes here


def test_activations_start_on_cache_lines():
    """Arena buffers and a layer call's own output start on 64-byte boundaries (NumPy alone
    starts arrays of more than ~100 KB 16 bytes past one), for batches large and small."""
    model = pybnn.Sequential([L.Input((32, 32, 40)), L.Conv2D(40, 3, padding="same"), L.ReLU(),
                              L.Conv2D(24, 3, padding="same")]).randomize(0)
    for n in (1, 3):
        model.predict(np.zeros((n, 32, 32, 40), np.float32))
        buffers = [b for b in model._arena(model._planned(), model._plan_outputs, n) if b is not None]
        assert buffers and model.activation_bytes(n)[0] > 200_000
        assert [b.ctypes.data % 64 for b in buffers] == [0] * len(buffers)
    conv = next(layer for layer in model.layers if isinstance(layer, L.Conv2D))
    for n in (1, 5):
        y = conv.call(np.ones((n, 32, 32, 40), np.float32))
        assert y.shape == (n, 32, 32, 40) and y.ctypes.data % 64 == 0


def test_threads_predict_concurrently_on_one_model():
    model = residual_net().randomize(2)
    xs = [images(2, s) for s in range(4)]
    want = [model.predict(x) for x in xs]
    got = [None] * 4

    def run(i):
        for _ in range(5):
            got[i] = model.predict(xs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_graph_file_round_trip_and_mismatch(tmp_path):
    model = residual_net().randomize(7)
    path = tmp_path / "res.bin"
    model.save(path)
    header = json.loads(path.read_bytes()[24:24 + int.from_bytes(path.read_bytes()[16:24], "little")])
    assert header["model"]["class"] == "Model" and header["model"]["outputs"] == ["fc"]
    x = images(4)
    loaded = pybnn.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    again = residual_net().load(path)
    np.testing.assert_array_equal(again.predict(x), model.predict(x))
    # the same layers wired differently: the error names the layer and both wirings
    inp = L.Input((9, 9, 3), name="image")
    x_ = L.Conv2D(40, 3, padding="same", use_bias=False, name="stem")(inp)
    x_ = L.BatchNormalization(name="stem_bn")(x_)
    y = L.BinaryConv2D(40, 3, padding="same", name="b0_conv")(x_)
    y = L.BatchNormalization(name="b0_bn")(y)
    x_ = L.Add(name="b0_add")([x_, y])  # operands swapped
    y = L.BinaryConv2D(40, 3, padding="same", name="b1_conv")(x_)
    y = L.BatchNormalization(name="b1_bn")(y)
    x_ = L.Add(name="b1_add")([y, x_])
    y = L.BinaryConv2D(64, 3, strides=2, padding="same", name="down_conv")(x_)
    y = L.BatchNormalization(name="down_bn")(y)
    s = L.AveragePool2D(2, padding="same", name="down_pool")(x_)
    s = L.Conv2D(64, 1, use_bias=False, name="down_proj")(s)
    s = L.BatchNormalization(name="down_proj_bn")(s)
    x_ = L.Add(name="down_add")([y, s])
    out = L.Dense(10, name="fc")(L.GlobalAveragePooling2D(name="gap")(x_))
    with pytest.raises(pybnn.FormatError, match=r"'b0_add'.*\['b0_bn', 'stem_bn'\].*\['stem_bn', 'b0_bn'\]"):
        pybnn.Model(inp, out, name="residual").load(path)
    with pytest.raises(pybnn.FormatError, match="'Model' model"):
        pybnn.Sequential([L.Input((9, 9, 3)), L.Flatten(), L.Dense(10)]).load(path)


@pytest.mark.parametrize("edit, match", [
    (lambda m: m["layers"][2].__setitem__("inbound", ["fc"]), "inbound must list earlier layers"),
    (lambda m: m["layers"][2].__setitem__("inbound", ["nope"]), "inbound must list earlier layers"),
    (lambda m: m["layers"][2].__setitem__("inbound", 7), "inbound must list earlier layers"),
    (lambda m: m["layers"][2].__setitem__("inbound", ["image", "stem"]), "takes one tensor"),
    (lambda m: m.__setitem__("outputs", ["zz"]), "outputs must list layers"),
    (lambda m: m.__setitem__("inputs", []), "inputs must list layers"),
    (lambda m: m["layers"][0].__setitem__("inbound", ["stem"]), "is an Input but lists inbound"),
])
def test_hostile_graph_headers(tmp_path, edit, match):
    path = tmp_path / "res.bin"
    residual_net().randomize(0).save(path)
    raw = path.read_bytes()
    header = header_of(raw)
    edit(header["model"])
    path.write_bytes(rewrite(raw, header))
    with pytest.raises(pybnn.FormatError, match=match):
        pybnn.load_model(path)


def test_profile_and_summary_of_a_graph(capsys):
    model = residual_net().randomize(0)
    text = model.summary(print_fn=None)
    assert "Inputs" in text and "b0_bn, stem_bn" in text and "Activations (batch 1): arena" in text
    rows = model.profile(images(1), repeats=2)
    names = [r["name"] for r in rows]
    assert "b0_add" in names and "fc" in names
    assert abs(sum(r["share"] for r in rows) - 1) < 1e-6
    conv = next(r for r in rows if r["name"] == "b0_conv")
    assert conv["gops"] > 0 and conv["isa"] in pybnn.cpu.available()


def test_command_line_bench(tmp_path, capsys):
    from pybnn.__main__ import main
    path, out = tmp_path / "res.bin", tmp_path / "bench.json"
    residual_net().randomize(0).save(path)
    assert main(["bench", str(path), "--batch", "2", "--threads", "1", "--repeats", "3", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "b1_conv" in text and "ms per image" in text
    rows = json.loads(out.read_text())["layers"]
    assert [r["name"] for r in rows if r["kind"] == "Add"] == ["b0_add", "b1_add", "down_add"]
    assert main(["bench", str(path), "--batch", "0"]) == 1


@pytest.mark.parametrize("affine_first", [True, False])
def test_batch_norm_folds_into_the_add_that_reads_it(isa, affine_first):
    """QuickNet's block: a ReLU'd binary convolution, BN, then the shortcut Add.  The BN (or a
    ChannelAffine) runs inside the Add's pass, on either operand, bit for bit as unfolded."""
    def build(fold):
        inp = L.Input((6, 7, 40), name="x")
        y = L.BinaryConv2D(40, 3, padding="same", pad_value=1, activation="relu", name="conv")(inp)
        y = (L.ChannelAffine(name="bn") if affine_first else L.BatchNormalization(name="bn"))(y)
        s = L.ReLU(name="r")(inp)
        out = L.Add(name="add")([y, s] if affine_first else [s, y])
        return pybnn.Model(inp, L.Add(name="add2")([out, s, s]), fold=fold)

    folded, unfolded = build(True), build(False)
    folded.randomize(3)
    for a, b in zip(unfolded.layers, folded.layers):
        if b.get_weights():
            a.set_weights(b.get_weights())
    assert "bn" not in [op.name for op in folded.plan()]
    assert "bn -> computed inside add" in folded.fold_notes
    x = np.random.default_rng(1).standard_normal((2, 6, 7, 40)).astype(np.float32)
    got = folded.predict(x)
    np.testing.assert_array_equal(got.view(np.uint32), unfolded.predict(x).view(np.uint32))
    np.testing.assert_array_equal(got.view(np.uint32), folded.predict_reference(x, folded=True).view(np.uint32))
