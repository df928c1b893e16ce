"""The pybnn model file: architecture + weights in one flat little-endian file, read through a
memory map.  docs/format.md is the byte-level specification; in short:

  0   8 bytes  magic b"\\x89PYBNN\\r\\n"
  8   u16      major version (a reader refuses another major)
  10  u16      minor version (minor additions are ignorable: a reader reads every minor)
  12  u32      flags (0; a reader refuses unknown bits)
  16  u64      header length H
  24  H bytes  header: UTF-8 JSON {"model": {...architecture...}, "tensors": [...]}
  24+H  u32    CRC-32 of the header bytes (since 1.1)
  then tensor data, every tensor starting at a multiple of 64 bytes from the file start, in
  increasing offset order, never overlapping.
Tensors are used in place from the map (read-only arrays), so opening a file costs the same
whatever the weight size; tensor checksums are verified on request (`verify=True`,
`pybnn info --verify`), the header's always.  No pickle anywhere.
"""
import json
import mmap
import os
import struct
import zlib

import numpy as np

from .errors import FormatError, PyBNNError

MAGIC = b"\x89PYBNN\r\n"
MAJOR, MINOR = 1, 1
ALIGN = 64
_PREFIX = struct.Struct("<8sHHIQ")
_CRC = struct.Struct("<I")
DTYPES = {"float32": np.dtype("<f4"), "int8": np.dtype("i1"), "int32": np.dtype("<i4"), "bits": np.dtype("u1")}
_STORED = {"float": "float32", "int8": "int8", "int32": "int32", "bits": "bits"}
MAX_HEADER = 64 << 20
MAX_RANK = 8


def _align(n):
    return -(-n // ALIGN) * ALIGN


def tensor_nbytes(dtype, shape):
    """Bytes a tensor of `shape` takes in the file: bits are packed 8 per byte."""
    count = 1
    for s in shape:
        count *= s
    return (count + 7) // 8 if dtype == "bits" else count * DTYPES[dtype].itemsize


def encode(kind, array):
    """The stored bytes of a layer weight of dtype kind `kind` (layers' weight_specs)."""
    if kind == "bits":  # bit i of the little-endian bit stream = element i (C order); 1 = negative
        return np.packbits(np.asarray(array).ravel() < 0, bitorder="little").tobytes()
    return np.ascontiguousarray(array, dtype=DTYPES[_STORED[kind]]).tobytes()


# ---------------------------------------------------------------------------- writing

def save_model(model, path):
    tensors, blobs = [], []
    for layer in model.layers:
        if not layer.weight_specs():
            continue
        if layer._weights is None:
            raise FormatError(f"{model.name}: layer '{layer.name}' has no weights to save")
        for (name, shape, kind), array in zip(layer.weight_specs(), layer._weights):
            data = encode(kind, array)
            tensors.append({"layer": layer.name, "name": name, "dtype": _STORED[kind], "shape": list(shape),
                            "offset": 0, "nbytes": len(data), "crc32": zlib.crc32(data)})
            blobs.append(data)
    arch = architecture(model)
    # Offsets live in the header, whose length depends on their digits: iterate to a fixed point.
    data_start = -1
    while True:
        header = json.dumps({"model": arch, "tensors": tensors}, separators=(",", ":")).encode()
        start = _align(_PREFIX.size + len(header) + _CRC.size)
        if start == data_start:
            break
        data_start, offset = start, start
        for t in tensors:
            t["offset"] = offset
            offset = _align(offset + t["nbytes"])
    with open(path, "wb") as f:
        f.write(_PREFIX.pack(MAGIC, MAJOR, MINOR, 0, len(header)))
        f.write(header)
        f.write(_CRC.pack(zlib.crc32(header)))
        for t, data in zip(tensors, blobs):
            f.write(b"\0" * (t["offset"] - f.tell()))
            f.write(data)


# ---------------------------------------------------------------------------- reading

class Tensor:
    """One tensor of a model file: metadata and a read-only view of its bytes in the map."""

    __slots__ = ("layer", "name", "dtype", "shape", "offset", "nbytes", "crc32", "data")

    def __init__(self, layer, name, dtype, shape, offset, nbytes, crc32, data):
        self.layer, self.name, self.dtype, self.shape = layer, name, dtype, tuple(shape)
        self.offset, self.nbytes, self.crc32, self.data = offset, nbytes, crc32, data

    def array(self):
        """The tensor as stored: float32/int8/int32 of `shape`, or for bits the packed bytes."""
        if self.dtype == "bits":
            return self.data
        return self.data.view(DTYPES[self.dtype]).reshape(self.shape)

    def values(self):
        """Numeric values: bits as float32 ±1 of `shape` (a new array), others as array()."""
        if self.dtype != "bits":
            return self.array()
        count = int(np.prod(self.shape, dtype=np.int64))
        bits = np.unpackbits(self.data, bitorder="little", count=count)
        return (np.float32(1) - np.float32(2) * bits).reshape(self.shape)

    def __repr__(self):
        return f"Tensor({self.layer}/{self.name}, {self.dtype}{list(self.shape)}, offset {self.offset})"


class ModelFile:
    """A parsed, validated model file.  `tensors` maps (layer, name) to Tensor."""

    def __init__(self, path, major, minor, size, arch, tensors, mapping):
        self.path, self.major, self.minor, self.size = path, major, minor, size
        self.arch, self.tensors, self._mapping = arch, tensors, mapping
        self.verified = False

    def verify(self):
        """Check every tensor's CRC-32 (reads all weight bytes); raises FormatError."""
        for t in self.tensors.values():
            if zlib.crc32(t.data) != t.crc32:
                raise FormatError(f"{self.path}: tensor {t.layer}/{t.name}: checksum mismatch "
                                  f"(data at byte {t.offset}, {t.nbytes} bytes, is corrupt)")
        self.verified = True
        return self


def _int(value, what, where):
    if isinstance(value, bool) or not isinstance(value, int):
        raise FormatError(f"{where}: {what} must be an integer, got {value!r}")
    return value


def read_file(path, verify=False):
    """Map, parse and validate a model file (see the module doc); returns a ModelFile."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < _PREFIX.size:
                raise FormatError(f"{path}: {size} bytes is too short for a pybnn file "
                                  f"(header prefix is {_PREFIX.size})")
            mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise FormatError(f"{path}: cannot read: {e}") from None
    buf = np.frombuffer(mapping, np.uint8)
    magic, major, minor, flags, hlen = _PREFIX.unpack_from(mapping)
    if magic != MAGIC:
        raise FormatError(f"{path}: not a pybnn model file (bad magic at byte 0)")
    if major != MAJOR:
        raise FormatError(f"{path}: format version {major}.{minor} is not readable by this reader ({MAJOR}.x)")
    if flags:
        raise FormatError(f"{path}: unknown flags {flags:#x} at byte 12")
    crc_size = _CRC.size if minor >= 1 else 0
    if hlen > MAX_HEADER or _PREFIX.size + hlen + crc_size > size:
        raise FormatError(f"{path}: header length {hlen} at byte 16 exceeds the file ({size} bytes)")
    header = bytes(mapping[_PREFIX.size:_PREFIX.size + hlen])
    data_start = _PREFIX.size + hlen + crc_size
    if crc_size and _CRC.unpack_from(mapping, _PREFIX.size + hlen)[0] != zlib.crc32(header):
        raise FormatError(f"{path}: header checksum mismatch (header at byte {_PREFIX.size} or its "
                          f"CRC at byte {_PREFIX.size + hlen} is corrupt)")
    try:
        parsed = json.loads(header.decode("utf-8"))
        arch, entries = parsed["model"], parsed["tensors"]
        if not isinstance(arch, dict) or not isinstance(entries, list):
            raise TypeError("model must be an object and tensors a list")
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise FormatError(f"{path}: malformed header at byte {_PREFIX.size}: {e}") from None
    tensors, end = {}, data_start
    for i, t in enumerate(entries):
        where = f"{path}: tensor entry {i}"
        if not isinstance(t, dict) or not all(k in t for k in ("layer", "name", "dtype", "shape", "offset",
                                                                  "nbytes", "crc32")):
            raise FormatError(f"{where}: must be an object with layer, name, dtype, shape, offset, nbytes, crc32")
        if not isinstance(t["layer"], str) or not isinstance(t["name"], str):
            raise FormatError(f"{where}: layer and name must be strings")
        key = (t["layer"], t["name"])
        where = f"{path}: tensor {key[0]}/{key[1]}"
        dtype, shape = t["dtype"], t["shape"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise FormatError(f"{where}: unknown dtype {dtype!r} (expected one of {', '.join(DTYPES)})")
        if not isinstance(shape, list) or len(shape) > MAX_RANK:
            raise FormatError(f"{where}: shape must be a list of at most {MAX_RANK} sizes, got {shape!r}")
        shape = [_int(s, "every shape entry", where) for s in shape]
        offset, nbytes = _int(t["offset"], "offset", where), _int(t["nbytes"], "nbytes", where)
        crc = _int(t["crc32"], "crc32", where)
        if min(shape, default=0) < 0:
            raise FormatError(f"{where}: negative size in shape {shape}")
        if nbytes != tensor_nbytes(dtype, shape):
            raise FormatError(f"{where}: {nbytes} bytes declared, {dtype}{shape} needs {tensor_nbytes(dtype, shape)}")
        if offset % ALIGN or offset < end or offset + nbytes > size:
            raise FormatError(f"{where}: data at byte {offset} (+{nbytes}) is misaligned, overlaps the header or "
                              f"the previous tensor (which ends at byte {end}), or runs past the end of the file "
                              f"({size} bytes)")
        if key in tensors:
            raise FormatError(f"{where}: appears twice")
        end = offset + nbytes
        tensors[key] = Tensor(key[0], key[1], dtype, shape, offset, nbytes, crc, buf[offset:end])
    model_file = ModelFile(path, major, minor, size, arch, tensors, mapping)
    return model_file.verify() if verify else model_file


def architecture(model):
    """The header's "model" object: Sequential chains list their layers in order; graphs
    (pybnn.Model) also give each layer's inputs and the model's inputs and outputs."""
    from .model import Sequential
    chain = isinstance(model, Sequential)
    layers = []
    for layer in model.layers:
        entry = {"class": type(layer).__name__, "config": layer.get_config()}
        if not chain:
            entry["inbound"] = model.inbound_names(layer)
        layers.append(entry)
    arch = {"class": "Sequential" if chain else "Model", "name": model.name, "layers": layers}
    if not chain:
        arch["inputs"] = [l.name for l in model.inputs]
        arch["outputs"] = [model.layers[i].name for i in model._outputs]
    return arch


def _check_architecture(model, mf):
    """Raise FormatError saying where the file's architecture differs from the model's."""
    path, mine = mf.path, architecture(model)
    if mf.arch.get("class") != mine["class"]:
        raise FormatError(f"{path}: the file holds a {mf.arch.get('class')!r} model, '{model.name}' is a "
                          f"{mine['class']}")
    layers = mf.arch.get("layers") if isinstance(mf.arch.get("layers"), list) else None
    if layers is None:
        raise FormatError(f"{path}: header has no layer list")
    if len(layers) != len(model.layers):
        raise FormatError(f"{path}: file has {len(layers)} layers, model '{model.name}' has {len(model.layers)}")
    for i, (entry, want, layer) in enumerate(zip(layers, mine["layers"], model.layers)):
        entry = entry if isinstance(entry, dict) else {}
        if entry.get("class") != want["class"]:
            raise FormatError(f"{path}: layer {i} is {entry.get('class')} in the file but {want['class']} "
                              f"('{layer.name}') in the model")
        config, config_mine = entry.get("config"), json.loads(json.dumps(want["config"]))
        if not isinstance(config, dict) or config != config_mine:
            diff = sorted(k for k in set(config_mine) | set(config or {})
                          if (config or {}).get(k) != config_mine.get(k))
            raise FormatError(f"{path}: layer {i} ('{layer.name}') differs from the file in {diff}: "
                              f"file {[(k, (config or {}).get(k)) for k in diff]}, "
                              f"model {[(k, config_mine.get(k)) for k in diff]}")
        if entry.get("inbound") != want.get("inbound"):
            raise FormatError(f"{path}: layer {i} ('{layer.name}') takes {entry.get('inbound')} in the file "
                              f"but {want.get('inbound')} in the model")
    for key in ("inputs", "outputs"):
        if mf.arch.get(key) != mine.get(key):
            raise FormatError(f"{path}: the file's model {key} are {mf.arch.get(key)}, the model's {mine.get(key)}")


def load_weights(model, source, verify=False):
    """Load a model's weights from a path or a ModelFile (read_file) after checking that the
    file's architecture is the model's; returns the ModelFile."""
    mf = source if isinstance(source, ModelFile) else read_file(source, verify)
    path = mf.path
    _check_architecture(model, mf)
    used = set()
    for layer in model.layers:
        specs = layer.weight_specs()
        if not specs:
            continue
        arrays = []
        for name, shape, kind in specs:
            t = mf.tensors.get((layer.name, name))
            if t is None:
                raise FormatError(f"{path}: no tensor {layer.name}/{name} in the file")
            if t.shape != tuple(shape) or t.dtype != _STORED[kind]:
                raise FormatError(f"{path}: tensor {layer.name}/{name} is {t.dtype}{list(t.shape)}, "
                                  f"expected {_STORED[kind]}{list(shape)}")
            arrays.append(t.values())
            used.add((layer.name, name))
        try:
            layer.set_weights(arrays, check_values=mf.verified)
        except PyBNNError as e:
            raise FormatError(f"{path}: {e}") from None
    extra = sorted(set(mf.tensors) - used)
    if extra:
        raise FormatError(f"{path}: tensors {', '.join(f'{a}/{b}' for a, b in extra)} belong to no layer of the model")
    return mf


def load_model(path, verify=False):
    """Rebuild a model from the architecture stored in the file and load its weights."""
    from . import layers as L
    from .model import Model, Sequential
    mf = read_file(path, verify)
    arch = mf.arch
    if arch.get("class") not in ("Sequential", "Model") or not isinstance(arch.get("layers"), list):
        raise FormatError(f"{path}: unsupported model class {arch.get('class')!r}")
    built = []
    for i, entry in enumerate(arch["layers"]):
        kind = entry.get("class") if isinstance(entry, dict) else entry
        cls = L.LAYERS.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise FormatError(f"{path}: layer {i} has unknown kind {kind!r}")
        config = entry.get("config")
        if config is not None and not isinstance(config, dict):
            raise FormatError(f"{path}: layer {i} ({kind}) config must be an object")
        try:
            built.append(cls.from_config(dict(config or {})))
        except (PyBNNError, TypeError, ValueError) as e:
            raise FormatError(f"{path}: layer {i} ({entry.get('class')}) has an invalid config: {e}") from None
    try:
        if arch["class"] == "Sequential":
            model = Sequential(built, name=str(arch.get("name", "sequential")))
        else:
            model = _connect(path, arch, built, Model)
    except PyBNNError as e:
        if isinstance(e, FormatError):
            raise
        raise FormatError(f"{path}: the stored architecture does not build: {e}") from None
    load_weights(model, mf)
    return model


def _connect(path, arch, built, model_class):
    """A graph from its layers in file order, each calling on its "inbound" layers (which a
    file must list before it: that also rules out cycles)."""
    from .layers import Input
    nodes = {}
    for i, (entry, layer) in enumerate(zip(arch["layers"], built)):
        if layer.name in nodes:
            raise FormatError(f"{path}: layer {i}: two layers are named {layer.name!r}")
        inbound = entry.get("inbound", [])
        if isinstance(layer, Input):
            if inbound:
                raise FormatError(f"{path}: layer {i} ('{layer.name}') is an Input but lists inbound layers")
            nodes[layer.name] = layer
            continue
        if (not isinstance(inbound, list) or not inbound
                or not all(isinstance(n, str) and n in nodes for n in inbound)):
            raise FormatError(f"{path}: layer {i} ('{layer.name}'): inbound must list earlier layers by name, "
                              f"got {inbound!r}")
        sources = [nodes[n] for n in inbound]
        nodes[layer.name] = layer(sources if layer.n_inputs != 1 or len(sources) > 1 else sources[0])
    ends = {}
    for key in ("inputs", "outputs"):
        names = arch.get(key)
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n in nodes for n in names):
            raise FormatError(f"{path}: model {key} must list layers of the file by name, got {names!r}")
        ends[key] = [nodes[n] for n in names]
    return model_class(ends["inputs"], ends["outputs"], name=str(arch.get("name", "model")))
