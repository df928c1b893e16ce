"""The pybnn model file: architecture + weights in one flat little-endian file.

Layout (docs/format.md has the byte-level specification):
  0   8 bytes  magic b"\\x89PYBNN\\r\\n"
  8   u16      major version (readers refuse a newer major)
  10  u16      minor version
  12  u32      flags (0)
  16  u64      header length H
  24  H bytes  header: UTF-8 JSON {"model": {...architecture...}, "tensors": [...]}
  then tensor data, every tensor starting at a multiple of 64 bytes from the file start.
Binary kernels are stored at one bit per weight ("bits": bit 1 = -1, little-endian bit
order over the C-order elements).  No pickle: the header is JSON, tensors are raw arrays.
"""
import json
import struct
import zlib

import numpy as np

from .errors import FormatError, PyBNNError

MAGIC = b"\x89PYBNN\r\n"
MAJOR, MINOR = 1, 0
ALIGN = 64
_PREFIX = struct.Struct("<8sHHIQ")
_DTYPES = {"float32": np.dtype("<f4"), "int8": np.dtype("i1"), "int32": np.dtype("<i4")}
_STORED = {"float": "float32", "int8": "int8", "int32": "int32", "bits": "bits"}
MAX_HEADER = 64 << 20


def _encode(kind, array):
    if kind == "bits":
        return np.packbits(np.asarray(array).ravel() < 0, bitorder="little").tobytes()
    return np.ascontiguousarray(array, dtype=_DTYPES[_STORED[kind]]).tobytes()


def _nbytes(dtype, shape):
    count = int(np.prod(shape, dtype=np.int64))
    return (count + 7) // 8 if dtype == "bits" else count * _DTYPES[dtype].itemsize


def save_model(model, path):
    tensors, blobs, offset = [], [], 0
    for layer in model.layers:
        if not layer.weight_specs():
            continue
        if layer._weights is None:
            raise FormatError(f"{model.name}: layer '{layer.name}' has no weights to save")
        for (name, shape, kind), array in zip(layer.weight_specs(), layer._weights):
            data = _encode(kind, array)
            tensors.append({"layer": layer.name, "name": name, "dtype": _STORED[kind], "shape": list(shape),
                            "offset": offset, "nbytes": len(data), "crc32": zlib.crc32(data)})
            blobs.append(data)
            offset += -(-len(data) // ALIGN) * ALIGN
    arch = {"class": "Sequential", "name": model.name,
            "layers": [{"class": type(l).__name__, "config": l.get_config()} for l in model.layers]}
    header = json.dumps({"model": arch, "tensors": tensors}, separators=(",", ":")).encode()
    data_start = -(-(_PREFIX.size + len(header)) // ALIGN) * ALIGN
    for t in tensors:
        t["offset"] += data_start
    # Offsets changed the header length only if their digits grew; iterate to a fixed point.
    while True:
        header = json.dumps({"model": arch, "tensors": tensors}, separators=(",", ":")).encode()
        start = -(-(_PREFIX.size + len(header)) // ALIGN) * ALIGN
        if start == data_start:
            break
        for t in tensors:
            t["offset"] += start - data_start
        data_start = start
    with open(path, "wb") as f:
        f.write(_PREFIX.pack(MAGIC, MAJOR, MINOR, 0, len(header)))
        f.write(header)
        for t, data in zip(tensors, blobs):
            f.write(b"\0" * (t["offset"] - f.tell()))
            f.write(data)


def read_file(path):
    """Parse and validate a model file; returns (architecture dict, {(layer, name): array})."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise FormatError(f"{path}: cannot read: {e}") from None
    if len(raw) < _PREFIX.size:
        raise FormatError(f"{path}: {len(raw)} bytes is too short for a pybnn file (header prefix is {_PREFIX.size})")
    magic, major, minor, flags, hlen = _PREFIX.unpack_from(raw)
    if magic != MAGIC:
        raise FormatError(f"{path}: not a pybnn model file (bad magic at byte 0)")
    if major != MAJOR:
        raise FormatError(f"{path}: format version {major}.{minor} is not readable by this reader ({MAJOR}.x)")
    if hlen > min(MAX_HEADER, len(raw) - _PREFIX.size):
        raise FormatError(f"{path}: header length {hlen} at byte 16 exceeds the file ({len(raw)} bytes)")
    try:
        header = json.loads(raw[_PREFIX.size:_PREFIX.size + hlen].decode("utf-8"))
        arch, entries = header["model"], header["tensors"]
        if not isinstance(arch, dict) or not isinstance(entries, list):
            raise TypeError("model must be an object and tensors a list")
    except (ValueError, KeyError, TypeError) as e:
        raise FormatError(f"{path}: malformed header at byte {_PREFIX.size}: {e}") from None
    tensors = {}
    for i, t in enumerate(entries):
        try:
            key = (str(t["layer"]), str(t["name"]))
            dtype, shape = t["dtype"], [int(s) for s in t["shape"]]
            offset, nbytes, crc = int(t["offset"]), int(t["nbytes"]), int(t["crc32"])
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"{path}: tensor entry {i} is malformed: {e}") from None
        where = f"{path}: tensor {key[0]}/{key[1]}"
        if dtype not in _STORED.values():
            raise FormatError(f"{where}: unknown dtype {dtype!r}")
        if any(s < 0 for s in shape) or len(shape) > 8:
            raise FormatError(f"{where}: invalid shape {shape}")
        if nbytes != _nbytes(dtype, shape):
            raise FormatError(f"{where}: {nbytes} bytes stored, {dtype}{shape} needs {_nbytes(dtype, shape)}")
        if offset < _PREFIX.size + hlen or offset % ALIGN or offset + nbytes > len(raw):
            raise FormatError(f"{where}: data at byte {offset} (+{nbytes}) is outside the data area "
                              f"or misaligned (file has {len(raw)} bytes)")
        data = raw[offset:offset + nbytes]
        if zlib.crc32(data) != crc:
            raise FormatError(f"{where}: checksum mismatch (data at byte {offset} is corrupt)")
        if key in tensors:
            raise FormatError(f"{where}: appears twice")
        if dtype == "bits":
            count = int(np.prod(shape, dtype=np.int64))
            bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[:count]
            array = np.where(bits == 1, np.float32(-1), np.float32(1)).reshape(shape)
        else:
            array = np.frombuffer(data, _DTYPES[dtype]).reshape(shape)
        tensors[key] = array
    return arch, tensors


def load_weights(model, path):
    arch, tensors = read_file(path)
    layers = arch.get("layers") if isinstance(arch.get("layers"), list) else None
    if layers is None:
        raise FormatError(f"{path}: header has no layer list")
    if len(layers) != len(model.layers):
        raise FormatError(f"{path}: file has {len(layers)} layers, model '{model.name}' has {len(model.layers)}")
    for i, (entry, layer) in enumerate(zip(layers, model.layers)):
        cls = entry.get("class") if isinstance(entry, dict) else None
        config = entry.get("config") if isinstance(entry, dict) else None
        if cls != type(layer).__name__:
            raise FormatError(f"{path}: layer {i} is {cls} in the file but {type(layer).__name__} "
                              f"('{layer.name}') in the model")
        mine = json.loads(json.dumps(layer.get_config()))
        if not isinstance(config, dict) or config != mine:
            diff = sorted(k for k in set(mine) | set(config or {}) if (config or {}).get(k) != mine.get(k))
            raise FormatError(f"{path}: layer {i} ('{layer.name}') differs from the file in {diff}: "
                              f"file {[(k, (config or {}).get(k)) for k in diff]}, model {[(k, mine.get(k)) for k in diff]}")
    for layer in model.layers:
        specs = layer.weight_specs()
        if not specs:
            continue
        arrays = []
        for name, shape, kind in specs:
            array = tensors.get((layer.name, name))
            if array is None:
                raise FormatError(f"{path}: no tensor {layer.name}/{name} in the file")
            if tuple(array.shape) != tuple(shape) or _STORED[kind] != _dtype_name(array, kind):
                raise FormatError(f"{path}: tensor {layer.name}/{name} is {array.dtype}{list(array.shape)}, "
                                  f"expected {_STORED[kind]}{list(shape)}")
            arrays.append(array)
        try:
            layer.set_weights(arrays)
        except PyBNNError as e:
            raise FormatError(f"{path}: {e}") from None


def _dtype_name(array, kind):
    return "bits" if kind == "bits" and array.dtype == np.float32 else str(array.dtype)


def load_model(path):
    """Rebuild a model from the architecture stored in the file and load its weights."""
    from . import layers as L
    from .model import Sequential
    arch, _ = read_file(path)
    if arch.get("class") != "Sequential" or not isinstance(arch.get("layers"), list):
        raise FormatError(f"{path}: unsupported model class {arch.get('class')!r}")
    built = []
    for i, entry in enumerate(arch["layers"]):
        cls = L.LAYERS.get(entry.get("class")) if isinstance(entry, dict) else None
        if cls is None:
            raise FormatError(f"{path}: layer {i} has unknown kind {entry.get('class') if isinstance(entry, dict) else entry!r}")
        try:
            built.append(cls.from_config(dict(entry.get("config") or {})))
        except (PyBNNError, TypeError) as e:
            raise FormatError(f"{path}: layer {i} ({entry.get('class')}) has an invalid config: {e}") from None
    try:
        model = Sequential(built, name=str(arch.get("name", "sequential")))
    except PyBNNError as e:
        raise FormatError(f"{path}: the stored architecture does not build: {e}") from None
    return model.load(path)
