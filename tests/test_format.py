"""The model file (docs/format.md): fixtures written by earlier versions still read, every
layer kind round-trips, 1.2 files are used in place (kernels in their GEMMs' layouts, nothing
repacked), loading allocates no more than the file's size plus the model's Python objects,
and hostile files (truncated, bit-flipped, mutated headers, forged packed kernels) always give
a pybnn.FormatError naming what is wrong - never another exception or a crash."""
import json
import mmap
import os
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pybnn
from pybnn import io, layouts
from pybnn import layers as L
from pybnn.__main__ import describe_tensors

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "every_layer_1_2.bin"       # written by format 1.2 (make_fixture below)
FIXTURE_1_1 = DATA / "every_layer_1_1.bin"   # written by format 1.1: plain kernels
GRAPH = DATA / "graph_1_2.bin"               # a graph model, format 1.2 (make_fixture below)
DIGITS = DATA / "digits_1_0.bin"  # the digits example as format 1.0 wrote it
FUZZ = settings(max_examples=150, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def fixture_input():
    return np.random.default_rng(0).integers(0, 256, (3, 9, 8, 5)).astype(np.uint8)


def graph_model():
    """A graph of the layers a chain cannot hold: shortcuts (float and int8 Add), a
    concatenation of packed bits at a bit offset, grouped and depthwise convolutions, a
    per-channel affine layer."""
    inp = L.Input((9, 8, 5), dtype="uint8", scale=0.02, zero_point=100, name="image")
    x = L.Conv2D(12, 3, padding="same", name="stem")(inp)
    d = L.Conv2D(12, 3, strides=2, padding="same", groups=12, name="depthwise")(x)
    a = L.ChannelAffine(name="affine")(d)
    b1 = L.BinaryConv2D(20, 3, padding="same", pad_value=1, groups=2, name="grouped")(a)
    b2 = L.BinaryConv2D(13, 1, name="pointwise")(a)
    cat = L.Concatenate(name="cat")([L.Sign(name="s1")(b1), L.Sign(name="s2")(b2)])
    y = L.BinaryConv2D(12, 3, padding="same", use_scale=True, name="bconv")(cat)
    y = L.BatchNormalization(name="bn")(y)
    y = L.Add(name="add")([y, a])
    q = L.Quantize(0.05, 3, name="q")(y)
    q2 = L.Int8Conv2D(12, 1, output="int8", output_scale=0.07, output_zero_point=-1, name="int8")(q)
    q = L.Add(output_scale=0.08, output_zero_point=2, name="add_int8")([q2, q])
    out = L.Dense(8, name="head")(L.GlobalAveragePooling2D(name="gap")(q))
    return pybnn.Model(inp, out, name="graph")


def make_fixture():
    """Regenerate the 1.2 fixtures and their expected outputs (run this file as a script)."""
    from test_model import every_layer_model
    for model, path in ((every_layer_model().randomize(5), FIXTURE), (graph_model().randomize(6), GRAPH)):
        model.save(path)
        np.save(str(path).replace(".bin", "_out.npy"), model.predict_reference(fixture_input()))


def save_format_1_1(model, path):
    """`model` as pybnn's 1.1 writer wrote it: every kernel plain (HWIO; binary ones as bits)."""
    tensors, blobs = [], []
    for layer in model.layers:
        for (name, shape, kind), w in zip(layer.weight_specs(), layer.get_weights()):
            if kind == "bits":
                dtype, data = "bits", np.packbits(w.ravel() < 0, bitorder="little").tobytes()
            else:
                dtype = {"float": "float32", "int8": "int8", "int32": "int32"}[kind]
                data = np.ascontiguousarray(w, io.DTYPES[dtype]).tobytes()
            tensors.append({"layer": layer.name, "name": name, "dtype": dtype, "shape": list(shape),
                            "offset": 0, "nbytes": len(data), "crc32": zlib.crc32(data)})
            blobs.append(data)
    arch = {"class": "Sequential", "name": model.name,
            "layers": [{"class": type(l).__name__, "config": l.get_config()} for l in model.layers]}
    for _ in range(3):  # offsets live in the header: settle them
        header = json.dumps({"model": arch, "tensors": tensors}).encode()
        offset = io._align(24 + len(header) + 4)
        for t in tensors:
            t["offset"], offset = offset, io._align(offset + t["nbytes"])
    out = bytearray(struct.pack("<8sHHIQ", io.MAGIC, 1, 1, 0, len(header)) + header)
    out += struct.pack("<I", zlib.crc32(header))
    for t, data in zip(tensors, blobs):
        out += b"\0" * (t["offset"] - len(out)) + data
    Path(path).write_bytes(bytes(out))


def header_of(raw):
    hlen = struct.unpack_from("<Q", raw, 16)[0]
    return json.loads(raw[24:24 + hlen])


def rewrite(raw, header, minor=None):
    """A file with `header` (a dict) in place of raw's, with a valid header checksum, so that
    validation past the checksum is what gets exercised."""
    hlen = struct.unpack_from("<Q", raw, 16)[0]
    old_start = io._align(24 + hlen + 4)
    body = json.dumps(header, separators=(",", ":")).encode()
    start = io._align(24 + len(body) + 4)
    shift = start - old_start
    for t in header.get("tensors", []) if isinstance(header, dict) and isinstance(header.get("tensors"), list) else []:
        if isinstance(t, dict) and isinstance(t.get("offset"), int) and not isinstance(t["offset"], bool):
            t["offset"] += shift
    body = json.dumps(header, separators=(",", ":")).encode()
    start = io._align(24 + len(body) + 4)
    version = raw[8:12] if minor is None else struct.pack("<HH", 1, minor)
    prefix = raw[:8] + version + raw[12:16] + struct.pack("<Q", len(body)) + body + struct.pack("<I", zlib.crc32(body))
    return prefix + b"\0" * (start - len(prefix)) + raw[old_start:]


def tensor_entry(raw, layer, name):
    return next(t for t in header_of(raw)["tensors"] if (t["layer"], t["name"]) == (layer, name))


def patch_tensor(raw, layer, name, edit):
    """raw with tensor layer/name's bytes passed through edit(bytearray) and its CRC updated."""
    header = header_of(raw)
    t = next(t for t in header["tensors"] if (t["layer"], t["name"]) == (layer, name))
    data = bytearray(raw[t["offset"]:t["offset"] + t["nbytes"]])
    edit(data)
    t["crc32"] = zlib.crc32(data)
    raw = raw[:t["offset"]] + bytes(data) + raw[t["offset"] + t["nbytes"]:]
    return rewrite(raw, header)


def first_kernel(raw, dtype):
    return next((t["layer"], t["name"]) for t in header_of(raw)["tensors"] if t["dtype"] == dtype)


def load_or_format_error(path, verify=True):
    """Loading either succeeds or raises FormatError; anything else fails the test."""
    try:
        return pybnn.load_model(path, verify=verify)
    except pybnn.FormatError as e:
        assert str(path) in str(e)  # every message says which file
        return None


def mapped(array):
    """True if the array's memory is a read-only file mapping."""
    while isinstance(array, np.ndarray):
        array = array.base
    return isinstance(getattr(array, "obj", array), mmap.mmap)


# ---------------------------------------------------------------------------- versions

@pytest.mark.parametrize("path, version", [(FIXTURE, (1, 2)), (GRAPH, (1, 2)), (FIXTURE_1_1, (1, 1))])
def test_fixtures_of_every_version_read_and_predict(path, version):
    assert (io.read_file(path).major, io.read_file(path).minor) == version
    model = pybnn.load_model(path, verify=True)
    want = np.load(str(path).replace(".bin", "_out.npy"), allow_pickle=False)
    np.testing.assert_allclose(model.predict(fixture_input()), want, rtol=1e-4, atol=1e-6)


def test_format_1_0_files_still_read():
    mf = io.read_file(DIGITS, verify=True)
    assert (mf.major, mf.minor) == (1, 0) and mf.verified
    assert pybnn.load_model(DIGITS).output_spec.shape == (10,)


def test_1_2_files_are_used_in_place_and_older_kernels_are_packed_once():
    model = pybnn.load_model(FIXTURE)
    kernels = [l for l in model.layers if l.weight_specs() and getattr(l, "layout", None)]
    assert {l.layout for l in kernels} == set(layouts.LAYOUTS)  # the fixture has every kind
    for layer in model.layers:
        for (name, _, dtype), w in zip(layer.stored_specs(), layer._weights or []):
            data = w.data if isinstance(w, layouts.Packed) else w
            assert mapped(data) and not data.flags.writeable, f"{layer.name}/{name} was copied"
            assert data.ctypes.data % 64 == 0
        if layer in kernels:
            assert mapped(layer._wpacked), f"{layer.name}: the kernel function gets a copy"
    old = pybnn.load_model(FIXTURE_1_1)
    for layer in old.layers:
        if getattr(layer, "layout", None):
            assert not mapped(layer._wpacked) and layer._wpacked.ctypes.data % 64 == 0


def test_a_1_1_reader_sees_an_unknown_dtype_and_1_2_dtypes_need_1_2(tmp_path):
    raw = FIXTURE.read_bytes()
    path = tmp_path / "as_1_1.bin"
    path.write_bytes(rewrite(raw, header_of(raw), minor=1))
    with pytest.raises(pybnn.FormatError, match=r"unknown dtype '\w+' \(a kernel layout, which needs format 1.2\) "
                                                r"in a format 1.1 file"):
        pybnn.load_model(path)
    # and a 1.2 file must hold kernels in their layouts
    save_format_1_1(pybnn.load_model(FIXTURE), path)
    old = path.read_bytes()
    path.write_bytes(rewrite(old, header_of(old), minor=2))
    with pytest.raises(pybnn.FormatError, match=r"is int8\[3, 3, 5, 6\], expected int8_igemm\[3, 3, 5, 6\] "
                                                r"\(or, before format 1.2, int8\[3, 3, 5, 6\]\)"):
        pybnn.load_model(path)


# ---------------------------------------------------------------------------- round trips

def single_layer_model(kind, dense, c, filters, k, stride, padding, flags, spatial=(7, 6)):
    """A model of one layer of `kind` (e.g. "Binary", "Int8Binary", "" for float) after the
    input it takes (binary kinds: a float input through an implicit Sign, or a flattened
    binary grid for BinaryDense)."""
    quantized = kind.startswith("Int8")
    inp = L.Input(((c,) if dense else (*spatial, c)), dtype="int8" if quantized else "float32",
                  scale=0.05 if quantized else None, zero_point=3 if quantized else None)
    kwargs = {"use_bias": flags % 2 == 1}
    if kind == "Binary":
        kwargs["use_scale"] = flags // 2 % 2 == 1
    if kind.startswith("Int8") and flags // 4 % 2:
        kwargs.update(output="int8", output_scale=0.2, output_zero_point=-2)
    if dense:
        cls = getattr(L, f"{kind}Dense")
        pre = [L.Sign(), L.Flatten()] if kind == "Binary" and flags // 8 % 2 else []
        if pre:
            inp = L.Input((*spatial, c))
        return pybnn.Sequential([inp] + pre + [cls(filters, **kwargs)])
    cls = getattr(L, f"{kind}Conv2D")
    if kind == "Binary":
        kwargs["pad_value"] = (-1, 0, 1)[flags % 3]
    return pybnn.Sequential([inp, cls(filters, k, strides=stride, padding=padding, **kwargs)])


def model_input(model, n=2, seed=0):
    inp = model.layers[0]
    rng = np.random.default_rng(seed)
    if inp.dtype == "int8":
        return rng.integers(-128, 128, (n,) + inp.shape).astype(np.int8)
    return rng.standard_normal((n,) + inp.shape).astype(np.float32)


@settings(max_examples=60, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["", "Binary", "FloatBinary", "Int8", "Int8Binary"]), dense=st.booleans(),
       c=st.sampled_from([1, 3, 16, 31, 32, 33, 64, 65]), filters=st.sampled_from([1, 7, 8, 9, 16, 17, 32, 33]),
       k=st.sampled_from([1, 2, 3, (1, 3)]), stride=st.sampled_from([1, 2]),
       padding=st.sampled_from(["same", "valid"]), flags=st.integers(0, 15))
def test_every_layer_kind_round_trips_through_both_formats(tmp_path, kind, dense, c, filters, k, stride, padding,
                                                          flags):
    """Saved (1.2: kernels in their layouts) and loaded both ways, and as a 1.1 writer wrote it
    (plain kernels packed at load): identical predictions, weights and packed bytes."""
    model = single_layer_model(kind, dense, c, filters, k, stride, padding, flags).randomize(flags)
    x = model_input(model)
    want = model.predict(x)
    model.save(tmp_path / "m.bin")
    save_format_1_1(model, tmp_path / "m11.bin")
    rebuilt = pybnn.load_model(tmp_path / "m.bin", verify=True)
    same_arch = single_layer_model(kind, dense, c, filters, k, stride, padding, flags).load(tmp_path / "m.bin")
    old = pybnn.load_model(tmp_path / "m11.bin", verify=True)
    for loaded in (rebuilt, same_arch, old):
        np.testing.assert_array_equal(loaded.predict(x), want)
        for a, b in zip(loaded.layers, model.layers):
            for wa, wb in zip(a.get_weights(), b.get_weights()):
                np.testing.assert_array_equal(wa, wb)
            if getattr(b, "layout", None):  # set_weights, the file and the old file: the same bytes
                np.testing.assert_array_equal(a._weights[0].data, b._weights[0].data)
    layer = model.layers[-1]
    if getattr(layer, "layout", None):
        assert tensor_entry((tmp_path / "m.bin").read_bytes(), layer.name, "kernel")["dtype"] == layer.layout
        # set_weights(get_weights()) reproduces the packed kernel
        before = layer._weights[0].data.copy()
        layer.set_weights(layer.get_weights())
        np.testing.assert_array_equal(layer._weights[0].data, before)


@pytest.mark.parametrize("kind", ["Binary", "FloatBinary", "Int8Binary"])
def test_binary_kernels_keep_signs_as_the_reference_binarizes(kind):
    """0.0 and -0.0 pack as +1, negatives as -1, whatever the layout (docs/semantics.md)."""
    model = single_layer_model(kind, False, 5, 9, 3, 1, "same", 1).randomize()
    layer = model.layers[-1]
    kernel = np.zeros((3, 3, 5, 9), np.float32)
    kernel[0, 0, :, :4] = -0.0
    kernel[1, 1, :2] = -0.5
    layer.set_weights([kernel] + layer.get_weights()[1:])
    np.testing.assert_array_equal(layer.get_weights()[0], np.where(kernel < 0, -1, 1).astype(np.float32))
    x = model_input(model)
    np.testing.assert_allclose(model.predict(x), model.predict_reference(x), rtol=1e-5, atol=1e-5)


def test_saving_over_the_file_a_model_is_mapped_from(tmp_path):
    path = tmp_path / "m.bin"
    path.write_bytes(FIXTURE.read_bytes())
    model = pybnn.load_model(path)
    y = model.predict(fixture_input())
    model.save(path)  # a new file renamed over the mapped one
    np.testing.assert_array_equal(model.predict(fixture_input()), y)
    np.testing.assert_array_equal(pybnn.load_model(path, verify=True).predict(fixture_input()), y)
    assert [p.name for p in tmp_path.iterdir()] == ["m.bin"]


# ---------------------------------------------------------------------------- compression

def test_binary_kernels_take_a_32nd_of_float32_plus_headers(tmp_path):
    model = pybnn.Sequential([L.Input((8, 8, 64)), L.FloatBinaryConv2D(64, 3, padding="same", name="fb"),
                              L.BinaryConv2D(128, 3, padding="same", use_scale=True, name="b"),
                              L.Quantize(0.1), L.Int8BinaryConv2D(64, 3, padding="same", name="ib"),
                              L.Dequantize(), L.Flatten(), L.BinaryDense(64, name="bd")]).randomize()
    for name, cin, cout, extra in [("fb", 64, 64, 64), ("b", 64, 128, 0), ("ib", 128, 64, 64 + 4 * 64),
                                   ("bd", 64, 64, 0)]:
        layer = model.get_layer(name)
        (_, shape, dtype), = [s for s in layer.stored_specs() if s[0] == "kernel"]
        float_bytes = 4 * int(np.prod(shape))
        assert io.tensor_nbytes(dtype, shape) == float_bytes // 32 + extra, name  # headers, weight sums
    model.save(tmp_path / "m.bin")
    text = "\n".join(describe_tensors(io.read_file(tmp_path / "m.bin"), model))  # what `pybnn info` prints
    binary_line = next(line for line in text.splitlines() if line.startswith("Binary-weight layers"))
    ratio = float(binary_line.split(", ")[-1].split("x")[0])
    assert 28 < ratio < 32  # kernels at 1/32, plus float32 scales and biases
    assert "b/kernel" in text and "bits_xgemm" in text and "[3, 3, 64, 128]" in text


def test_info_command_lists_dtypes_bytes_and_checksum_status(tmp_path, capsys):
    from pybnn.__main__ import main
    assert main(["info", str(FIXTURE)]) == 0
    out = capsys.readouterr().out
    for text in ("format 1.2", "bits_xgemm", "int8_igemm", "float32_sgemm", "bits_fbgemm", "bits_ibgemm",
                 "smaller than float32", "tensors not checked"):
        assert text in out
    assert main(["info", str(FIXTURE_1_1), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "all tensors verified" in out and "packed into their layouts at load" in out


# ---------------------------------------------------------------------------- hostile files

def test_truncated_at_every_offset(tmp_path):
    bad = tmp_path / "cut.bin"
    bad.write_bytes(FIXTURE.read_bytes())
    for cut in reversed(range(bad.stat().st_size)):
        os.truncate(bad, cut)  # (much faster than writing each prefix)
        with pytest.raises(pybnn.FormatError):
            pybnn.load_model(bad)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 7)), min_size=1, max_size=4))
def test_bit_flips_are_detected_or_harmless(tmp_path, flips):
    raw = bytearray(FIXTURE.read_bytes())
    for pos, bit in flips:
        raw[pos % len(raw)] ^= 1 << bit
    path = tmp_path / "flipped.bin"
    path.write_bytes(bytes(raw))
    model = load_or_format_error(path)
    if model is not None:  # a flip in zero padding: the same model
        x = fixture_input()
        np.testing.assert_array_equal(model.predict(x), pybnn.load_model(FIXTURE).predict(x))


HOSTILE = st.one_of(st.integers(-2**70, 2**70), st.sampled_from([0, -1, 1, 2**31, 2**32, 2**63, -2**63, 64]),
                    st.floats(allow_nan=True), st.text(max_size=5), st.none(), st.booleans(),
                    st.sampled_from(list(layouts.LAYOUTS) + ["bits"]),
                    st.lists(st.integers(-5, 2**40), max_size=9), st.dictionaries(st.text(max_size=3), st.integers()))


@st.composite
def mutated_headers(draw):
    """The fixture's header with one value somewhere in its tree replaced, deleted or
    duplicated."""
    header = header_of(FIXTURE.read_bytes())
    node, path = header, []
    while isinstance(node, (dict, list)) and node and (not path or draw(st.integers(0, 3))):
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        path.append((node, key))
        node = node[key]
    if not path:
        return header
    parent, key = path[-1]
    action = draw(st.sampled_from(["replace", "delete", "duplicate"]))
    if action == "replace":
        parent[key] = draw(HOSTILE)
    elif action == "delete":
        del parent[key]
    elif isinstance(parent, list):
        parent.append(parent[key])
    else:
        parent[key] = [parent[key], parent[key]]
    return header


@FUZZ
@given(mutated_headers())
def test_mutated_headers_give_format_errors(tmp_path, header):
    path = tmp_path / "mutated.bin"
    path.write_bytes(rewrite(FIXTURE.read_bytes(), header))
    model = load_or_format_error(path)
    if model is not None:  # an equivalent header (e.g. a renamed model): it must run
        model.predict(fixture_input())


def _kernel(h, layout):
    return next(t for t in h["tensors"] if t["dtype"] == layout)


@pytest.mark.parametrize("edit, message", [
    (lambda h: h["tensors"][1].update(offset=h["tensors"][0]["offset"]), "overlaps"),
    (lambda h: h["tensors"][0].update(offset=h["tensors"][0]["offset"] + 1), "misaligned"),
    (lambda h: h["tensors"][-1].update(offset=2**40), "past the end"),
    (lambda h: h["tensors"][0].update(nbytes=h["tensors"][0]["nbytes"] * 2), "bytes declared"),
    (lambda h: _kernel(h, "float32").update(shape=[2**62, 2**62]), "bytes declared"),
    (lambda h: h["tensors"][0].update(dtype="float64"), "unknown dtype"),
    (lambda h: h["tensors"][0].update(shape=[-1, 4]), "negative size"),
    (lambda h: h["tensors"].append(dict(h["tensors"][0], offset=2**20)), "appears twice|past the end"),
    (lambda h: _kernel(h, "bits_xgemm").update(shape=[3, 9, 40]), r"shape \[KH, KW, Cin, Cout\]"),
    (lambda h: _kernel(h, "bits_xgemm").update(shape=[3, 3, 0, 40]), r"shape \[KH, KW, Cin, Cout\]"),
    (lambda h: _kernel(h, "int8_igemm").update(shape=[1, 1, 2**31, 2**31]), r"shape \[KH, KW, Cin, Cout\]"),
    (lambda h: _kernel(h, "bits_ibgemm").update(shape=[1, 3, 6, 2**20]), "bytes declared"),
    (lambda h: _kernel(h, "bits_fbgemm").update(dtype="bits_ibgemm"), "bytes declared|header is not"),
    (lambda h: _kernel(h, "float32_sgemm").update(dtype="float32", shape=[1, 1, 40, 8], nbytes=1280),
     r"is float32\[1, 1, 40, 8\], expected float32_sgemm"),
    (lambda h: h["model"]["layers"][1].update({"class": "Conv9D"}), "unknown kind 'Conv9D'"),
    (lambda h: h["model"]["layers"][1]["config"].update(filters=7), "tensor .* is|does not build"),
    (lambda h: h["model"]["layers"][1]["config"].update(kernel_size=[40, 40]), "does not build|invalid config"),
    (lambda h: h["model"]["layers"][0]["config"].update(shape=[9, 8, 6]), r"expected int8_igemm\[3, 3, 6, 6\]"),
    (lambda h: h["model"].update({"class": "Graph"}), "unsupported model class"),
])
def test_hostile_headers_name_what_is_wrong(tmp_path, edit, message):
    raw = FIXTURE.read_bytes()
    header = header_of(raw)
    edit(header)
    path = tmp_path / "hostile.bin"
    path.write_bytes(rewrite(raw, header))
    with pytest.raises(pybnn.FormatError, match=message):
        pybnn.load_model(path)


@pytest.mark.parametrize("layout", layouts.LAYOUTS)
def test_forged_packed_kernels_cannot_make_a_kernel_read_out_of_bounds(tmp_path, layout):
    """A packed kernel whose header lies (K, cout, magic, reserved bytes) is refused at load;
    one whose panels, padding and weight sums are garbage (valid checksum) loads and runs:
    it can only give wrong numbers.  A config and shape made to claim a larger kernel than
    its bytes is refused before any kernel runs."""
    raw = FIXTURE.read_bytes()
    layer, name = first_kernel(raw, layout)
    path = tmp_path / "forged.bin"
    if layout != "bits_xgemm":  # header fields: magic, K, cout, a reserved byte
        for pos in (0, 4, 8, 40):
            path.write_bytes(patch_tensor(raw, layer, name, lambda d: d.__setitem__(pos, d[pos] ^ 1)))
            with pytest.raises(pybnn.FormatError, match=f"tensor {layer}/{name}: data at byte \\d+: its {layout} "
                                                        f"header is not that of K = "):
                pybnn.load_model(path)
    rng = np.random.default_rng(0)
    body = 0 if layout == "bits_xgemm" else layouts.HEADER
    path.write_bytes(patch_tensor(raw, layer, name, lambda d: d.__setitem__(
        slice(body, None), rng.integers(0, 256, len(d) - body, dtype=np.uint8).tobytes())))
    model = load_or_format_error(path, verify=True)  # the checksum is valid: only values can refuse it
    model = model or pybnn.load_model(path)
    x = fixture_input()
    with np.errstate(all="ignore"):  # garbage weights: any numbers
        assert model.predict(x).shape == (3, 8) and model.predict_reference(x).shape == (3, 8)
    # claim a kernel of one more input channel: shape and size no longer fit the data
    header = header_of(raw)
    t = next(t for t in header["tensors"] if (t["layer"], t["name"]) == (layer, name))
    t["shape"][2] += 1
    t["nbytes"] = layouts.nbytes(layout, t["shape"])
    path.write_bytes(rewrite(raw, header))
    with pytest.raises(pybnn.FormatError, match="header is not|overlaps|past the end|expected"):
        pybnn.load_model(path)


def test_packed_kernels_beyond_the_gemms_limits_are_refused():
    """Sizes a GEMM cannot run exactly (int8: K <= 65536) are refused like a bad header."""
    shape = (1, 1, 65537, 1)
    data = np.zeros(layouts.nbytes("int8_igemm", shape), np.uint8)
    assert "igemm cannot run it: K = 65537 must be in [1, 65536]" in layouts.Packed("int8_igemm", shape, data).problem()
    assert "bytes, a bits_fbgemm kernel" in layouts.Packed("bits_fbgemm", (1, 1, 3, 3), data[:10]).problem()
    good = layouts.pack("int8_igemm", np.ones((1, 1, 5, 3), np.int8))
    assert good.problem() is None and layouts.Packed("int8_igemm", (1, 1, 5, 4), good.data).problem()


def test_int8_kernels_out_of_range_are_refused_when_verifying(tmp_path):
    raw = FIXTURE.read_bytes()
    layer, name = first_kernel(raw, "int8_igemm")
    path = tmp_path / "m.bin"
    path.write_bytes(patch_tensor(raw, layer, name, lambda d: d.__setitem__(layouts.HEADER, 0x80)))  # -128
    pybnn.load_model(path).predict(fixture_input())  # not read by default: runs
    with pytest.raises(pybnn.FormatError, match="outside the layer's range"):
        pybnn.load_model(path, verify=True)


def test_prefix_errors(tmp_path):
    raw = FIXTURE.read_bytes()
    cases = [(b"GIF89a\0\0" + raw[8:], "bad magic"), (raw[:8] + struct.pack("<H", 2) + raw[10:], "version 2.2"),
             (raw[:12] + struct.pack("<I", 4) + raw[16:], "unknown flags"),
             (raw[:16] + struct.pack("<Q", 2**63) + raw[24:], "header length"),
             (raw[:30] + bytes([raw[30] ^ 1]) + raw[31:], "header checksum")]
    for data, message in cases:
        (tmp_path / "p.bin").write_bytes(data)
        with pytest.raises(pybnn.FormatError, match=message):
            pybnn.load_model(tmp_path / "p.bin")
    with pytest.raises(pybnn.FormatError, match="cannot read"):
        pybnn.load_model(tmp_path / "missing.bin")


def test_tensor_checksums_are_checked_on_request(tmp_path):
    raw = bytearray(FIXTURE.read_bytes())
    raw[-1] ^= 0x10  # inside the last tensor's data
    path = tmp_path / "c.bin"
    path.write_bytes(bytes(raw))
    pybnn.load_model(path)  # default: mapped, not read
    with pytest.raises(pybnn.FormatError, match="checksum mismatch"):
        pybnn.load_model(path, verify=True)


def test_older_files_that_would_pack_to_far_more_than_their_size_are_refused(tmp_path):
    """A 1.1 binary kernel of 1 input and 1 output channel pads each bit to a 64-byte line."""
    model = pybnn.Sequential([L.Input((200, 200, 1)), L.BinaryConv2D(1, 200)]).randomize()
    save_format_1_1(model, tmp_path / "wide.bin")
    size = (tmp_path / "wide.bin").stat().st_size
    assert layouts.nbytes("bits_xgemm", (200, 200, 1, 1)) > 8 * size + (1 << 20)
    with pytest.raises(pybnn.FormatError, match=r"would take 1,280,000 bytes, more than 8x its size"):
        pybnn.load_model(tmp_path / "wide.bin")
    model.save(tmp_path / "wide12.bin")  # as 1.2 the file holds the layout: fine
    np.testing.assert_array_equal(pybnn.load_model(tmp_path / "wide12.bin").predict(model_input(model)),
                                  model.predict(model_input(model)))


# ---------------------------------------------------------------------------- memory

def header_length(raw):
    return min(struct.unpack_from("<Q", raw, 16)[0], len(raw)) if len(raw) >= 24 else 0


def load_peak(path, verify=False):
    """Peak bytes traced while loading (NumPy reports its arrays to tracemalloc); None if refused."""
    tracemalloc.start()
    try:
        pybnn.load_model(path, verify=verify)
        refused = False
    except pybnn.FormatError:
        refused = True
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, refused


def allocation_bound(raw, plain_kernels=0):
    """docs/format.md, "Memory": the file's size, plus the model's Python objects (at most 16
    bytes per header byte, + 64 KiB), plus for 1.0/1.1 files the packed kernels."""
    return len(raw) + 16 * header_length(raw) + (64 << 10) + plain_kernels


def packed_kernel_bytes(path):
    model = pybnn.load_model(path)
    return sum(layouts.nbytes(l.layout, l._kernel4_shape()) for l in model.layers if getattr(l, "layout", None))


@pytest.mark.parametrize("path", [FIXTURE, GRAPH, FIXTURE_1_1, DIGITS])
def test_loading_allocates_no_more_than_the_file_and_its_objects(path):
    raw = path.read_bytes()
    old = io.read_file(path).minor < 2
    pybnn.load_model(path)  # imports and caches warmed up
    for verify in (False, True):
        peak, refused = load_peak(path, verify)
        assert not refused and peak <= allocation_bound(raw, packed_kernel_bytes(path) if old else 0), peak


@settings(max_examples=120, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_hostile_files_allocate_no_more_than_their_size_and_objects(tmp_path, data):
    raw = FIXTURE.read_bytes()
    how = data.draw(st.sampled_from(["truncate", "flip", "header"]))
    if how == "truncate":
        bad = raw[:data.draw(st.integers(0, len(raw)))]
    elif how == "flip":
        flipped = bytearray(raw)
        for pos, bit in data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 7)), min_size=1,
                                           max_size=4)):
            flipped[pos] ^= 1 << bit
        bad = bytes(flipped)
    else:
        bad = rewrite(raw, data.draw(mutated_headers()))
    path = tmp_path / "hostile.bin"
    path.write_bytes(bad)
    peak, _ = load_peak(path, verify=data.draw(st.booleans()))
    assert peak <= allocation_bound(bad), (how, peak, len(bad))


def test_load_allocation_does_not_grow_with_weight_size(tmp_path):
    """The same layers with 1000x more weight bytes: the same allocations (a few per-channel
    arrays and the model's objects)."""
    def model(inputs):
        return pybnn.Sequential([L.Input((inputs,)), L.Dense(64), L.FloatBinaryDense(64), L.Sign(),
                                 L.BinaryDense(64), L.Quantize(0.1), L.Int8Dense(64, output="int8", output_scale=0.1),
                                 L.Int8BinaryDense(64)]).randomize()
    peaks = []
    for inputs in (32, 32768):
        model(inputs).save(tmp_path / f"{inputs}.bin")
        pybnn.load_model(tmp_path / f"{inputs}.bin")
        peaks.append(load_peak(tmp_path / f"{inputs}.bin")[0])
    size = (tmp_path / "32768.bin").stat().st_size
    assert size > 8 << 20 and peaks[1] < peaks[0] + (16 << 10) and peaks[1] < size / 50, (peaks, size)


GROUPED = [("", 12, 4), ("Binary", 70, 2), ("FloatBinary", 9, 3), ("Int8", 12, 3), ("Int8Binary", 33, 3),
           ("", 8, 8), ("Int8", 8, 8), ("FloatBinary", 6, 6), ("Int8Binary", 6, 6), ("Binary", 5, 5)]


@pytest.mark.parametrize("kind, c, groups", GROUPED)
def test_grouped_kernels_are_stored_per_group_and_used_in_place(tmp_path, kind, c, groups):
    """A grouped layer stores one kernel per group in its layout ([G, KH, KW, Cin/G, Cout/G])
    and each group's GEMM reads its kernel from the map; depthwise layers on float or int8
    input store the plain kernel their direct kernel reads."""
    cls = getattr(L, f"{kind}Conv2D")
    inp = L.Input((6, 5, c), "int8", scale=0.1, zero_point=1) if kind.startswith("Int8") else L.Input((6, 5, c))
    model = pybnn.Sequential([inp, cls(2 * groups, 3, padding="same", groups=groups, name="g")]).randomize(groups)
    x = model_input(model)
    model.save(tmp_path / "g.bin")
    loaded = pybnn.load_model(tmp_path / "g.bin", verify=True)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    np.testing.assert_array_equal(loaded.layers[1].get_weights()[0], model.layers[1].get_weights()[0])
    entry = tensor_entry((tmp_path / "g.bin").read_bytes(), "g", "kernel")
    layer = loaded.layers[1]
    if layer._depthwise():
        assert entry["dtype"] in ("float32", "int8", "bits") and entry["shape"] == [3, 3, 1, 2 * groups]
    else:
        assert entry["dtype"] == layer.layout and entry["shape"] == [groups, 3, 3, c // groups, 2]
        for part in layer._parts:
            assert mapped(part._wpacked) and part._wpacked.ctypes.data % 64 == 0


def test_a_forged_group_header_is_refused_naming_the_group(tmp_path):
    model = pybnn.Sequential([L.Input((5, 5, 12)), L.FloatBinaryConv2D(6, 3, groups=3, name="g")]).randomize(0)
    model.save(tmp_path / "g.bin")
    raw = (tmp_path / "g.bin").read_bytes()
    stride = layouts.nbytes("bits_fbgemm", [3, 3, 4, 2])
    stride = -(-stride // 64) * 64
    (tmp_path / "g.bin").write_bytes(patch_tensor(raw, "g", "kernel", lambda d: d.__setitem__(
        2 * stride + 4, d[2 * stride + 4] ^ 1)))
    with pytest.raises(pybnn.FormatError, match="tensor g/kernel.*group 2: its bits_fbgemm header"):
        pybnn.load_model(tmp_path / "g.bin")


if __name__ == "__main__":
    make_fixture()
