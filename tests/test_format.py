"""The model file (docs/format.md): a fixture written by an earlier version still reads, loads
are memory-mapped, and hostile files (truncated, bit-flipped, mutated headers) always give a
pybnn.FormatError naming what is wrong - never another exception or a crash."""
import json
import mmap
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pybnn
from pybnn import io
from pybnn import layers as L

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "every_layer_1_1.bin"       # written by format 1.1 (make_fixture below)
DIGITS_1_0 = DATA / "digits_1_0.bin"  # the digits example as format 1.0 wrote it
FUZZ = settings(max_examples=150, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def fixture_input():
    return np.random.default_rng(0).integers(0, 256, (3, 9, 8, 5)).astype(np.uint8)


def make_fixture():
    """Regenerate the fixture and its expected outputs (run this file as a script)."""
    from test_model import every_layer_model
    model = every_layer_model().randomize(5)
    model.save(FIXTURE)
    np.save(DATA / "every_layer_1_1_out.npy", model.predict_reference(fixture_input()))


def test_fixture_written_by_an_earlier_version_still_reads_and_predicts():
    model = pybnn.load_model(FIXTURE, verify=True)
    want = np.load(DATA / "every_layer_1_1_out.npy", allow_pickle=False)
    np.testing.assert_allclose(model.predict(fixture_input()), want, rtol=1e-4, atol=1e-6)


def test_format_1_0_files_still_read():
    mf = io.read_file(DIGITS_1_0, verify=True)
    assert (mf.major, mf.minor) == (1, 0) and mf.verified
    assert pybnn.load_model(DIGITS_1_0).output_spec.shape == (10,)


def mapped(array):
    """True if the array's memory is a read-only file mapping."""
    while isinstance(array, np.ndarray):
        array = array.base
    return isinstance(getattr(array, "obj", array), mmap.mmap)


def test_float_weights_are_used_in_place_from_the_map():
    model = pybnn.load_model(FIXTURE)
    floats = [(layer.name, name, w) for layer in model.layers if layer.weight_specs()
              for (name, _, kind), w in zip(layer.weight_specs(), layer._weights) if kind == "float"]
    assert len(floats) > 5
    for layer, name, w in floats:
        assert mapped(w) and not w.flags.writeable, f"{layer}/{name} was copied"


def rewrite(raw, header):
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
    prefix = raw[:16] + struct.pack("<Q", len(body)) + body + struct.pack("<I", zlib.crc32(body))
    return prefix + b"\0" * (start - len(prefix)) + raw[old_start:]


def header_of(raw):
    hlen = struct.unpack_from("<Q", raw, 16)[0]
    return json.loads(raw[24:24 + hlen])


def load_or_format_error(path, verify=True):
    """Loading either succeeds or raises FormatError; anything else fails the test."""
    try:
        return pybnn.load_model(path, verify=verify)
    except pybnn.FormatError as e:
        assert str(path) in str(e)  # every message says which file
        return None


def test_truncated_at_every_offset(tmp_path):
    raw = FIXTURE.read_bytes()
    bad = tmp_path / "cut.bin"
    for cut in range(len(raw)):
        bad.write_bytes(raw[:cut])
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
    load_or_format_error(path)


@pytest.mark.parametrize("edit, message", [
    (lambda h: h["tensors"][1].update(offset=h["tensors"][0]["offset"]), "overlaps"),
    (lambda h: h["tensors"][0].update(offset=h["tensors"][0]["offset"] + 1), "misaligned"),
    (lambda h: h["tensors"][-1].update(offset=2**40), "past the end"),
    (lambda h: h["tensors"][0].update(nbytes=h["tensors"][0]["nbytes"] * 2), "bytes declared"),
    (lambda h: h["tensors"][0].update(shape=[2**62, 2**62]), "bytes declared"),
    (lambda h: h["tensors"][0].update(dtype="float64"), "unknown dtype"),
    (lambda h: h["tensors"][0].update(shape=[-1, 4]), "negative size"),
    (lambda h: h["tensors"].append(dict(h["tensors"][0], offset=2**20)), "appears twice|past the end"),
    (lambda h: h["model"]["layers"][1].update({"class": "Conv9D"}), "unknown kind 'Conv9D'"),
    (lambda h: h["model"]["layers"][1]["config"].update(filters=7), "tensor .* is|does not build"),
    (lambda h: h["model"]["layers"][1]["config"].update(kernel_size=[40, 40]), "does not build|invalid config"),
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


def test_prefix_errors(tmp_path):
    raw = FIXTURE.read_bytes()
    cases = [(b"GIF89a\0\0" + raw[8:], "bad magic"), (raw[:8] + struct.pack("<H", 2) + raw[10:], "version 2.1"),
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


if __name__ == "__main__":
    make_fixture()
