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
Tensors are used in place from the map (read-only arrays), convolution kernels included: since
1.2 each is stored in the layout its kernel reads (pybnn.layouts), so opening a file costs the
same whatever the weight size.  Older files' plain kernels are packed at load.  Tensor
checksums are verified on request (`verify=True`, `pybnn info --verify`), the header's always.
No pickle anywhere.
"""
import json
import mmap
import os
import secrets
import struct
import zlib

import numpy as np

from . import layouts
from .errors import FormatError, PyBNNError

MAGIC = b"\x89PYBNN\r\n"
MAJOR, MINOR = 1, 2
ALIGN = 64
_PREFIX = struct.Struct("<8sHHIQ")
_CRC = struct.Struct("<I")
DTYPES = {"float32": np.dtype("<f4"), "int8": np.dtype("i1"), "int32": np.dtype("<i4"), "bits": np.dtype("u1")}
LAYOUTS_SINCE = 2  # the minor version that added the kernel layouts
MAX_HEADER = 64 << 20
MAX_RANK = 8
MAX_KERNEL_DIM = 2**31 - 1  # the kernels take sizes as C ints
# Kernels of 1.0/1.1 files are packed at load; their layouts take about the plain tensors'
# bytes (a few % of padding; more for layers of very few channels, up to 512 bytes per bit
# for a binary kernel of 1 input and 1 output channel), so an older file whose layouts would
# exceed this is refused as hostile rather than allowed to allocate hundreds of times its size.
MAX_REPACK_FACTOR, MAX_REPACK_EXTRA = 8, 1 << 20


def _align(n):
    return -(-n // ALIGN) * ALIGN


def tensor_nbytes(dtype, shape):
    """Bytes a tensor of `shape` takes in the file: bits are packed 8 per byte; a kernel
    layout's size follows from its (KH, KW, Cin, Cout) shape (pybnn.layouts)."""
    if dtype in layouts.LAYOUTS:
        return layouts.nbytes(dtype, shape)
    count = 1
    for s in shape:
        count *= s
    return (count + 7) // 8 if dtype == "bits" else count * DTYPES[dtype].itemsize


def _stored_bytes(dtype, weight):
    """The bytes a model file holds for a layer's weight (a buffer; no copy for kernels)."""
    if isinstance(weight, layouts.Packed):
        return weight.data
    if dtype == "bits":  # a plain binary kernel (depthwise layers): element i is bit i, 1 = -1
        return np.packbits(np.asarray(weight).ravel() < 0, bitorder="little")
    return np.ascontiguousarray(weight, dtype=DTYPES[dtype])


# ---------------------------------------------------------------------------- writing

def save_model(model, path):
    """Write the file next to `path` and rename it over `path`, so that a model mapped from
    `path` keeps its (old) file while the new one is written."""
    tensors, blobs = [], []
    for layer in model.layers:
        if not layer.weight_specs():
            continue
        if layer._weights is None:
            raise FormatError(f"{model.name}: layer '{layer.name}' has no weights to save")
        for (name, shape, dtype), weight in zip(layer.stored_specs(), layer._weights):
            data = _stored_bytes(dtype, weight)
            tensors.append({"layer": layer.name, "name": name, "dtype": dtype, "shape": list(shape),
                            "offset": 0, "nbytes": data.nbytes, "crc32": zlib.crc32(data)})
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
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as f:
            f.write(_PREFIX.pack(MAGIC, MAJOR, MINOR, 0, len(header)))
            f.write(header)
            f.write(_CRC.pack(zlib.crc32(header)))
            for t, data in zip(tensors, blobs):
                f.write(b"\0" * (t["offset"] - f.tell()))
                f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------- reading

class Tensor:
    """One tensor of a model file: metadata and a read-only view of its bytes in the map."""

    __slots__ = ("layer", "name", "dtype", "shape", "offset", "nbytes", "crc32", "data")

    def __init__(self, layer, name, dtype, shape, offset, nbytes, crc32, data):
        self.layer, self.name, self.dtype, self.shape = layer, name, dtype, tuple(shape)
        self.offset, self.nbytes, self.crc32, self.data = offset, nbytes, crc32, data

    def array(self):
        """The tensor as stored, a view of the map: float32/int8/int32 of `shape`; the bytes
        of bits; a pybnn.layouts.Packed for a kernel layout."""
        if self.dtype in layouts.LAYOUTS:
            return layouts.Packed(self.dtype, self.shape, self.data)
        if self.dtype == "bits":
            return self.data
        return self.data.view(DTYPES[self.dtype]).reshape(self.shape)

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
        known = list(DTYPES) + list(layouts.LAYOUTS if minor >= LAYOUTS_SINCE else ())
        if not isinstance(dtype, str) or dtype not in known:
            newer = " (a kernel layout, which needs format 1.2)" if dtype in layouts.LAYOUTS else ""
            raise FormatError(f"{where}: unknown dtype {dtype!r}{newer} in a format {major}.{minor} file "
                              f"(this reader, format {MAJOR}.{MINOR}, knows {', '.join(known)})")
        if not isinstance(shape, list) or len(shape) > MAX_RANK:
            raise FormatError(f"{where}: shape must be a list of at most {MAX_RANK} sizes, got {shape!r}")
        shape = [_int(s, "every shape entry", where) for s in shape]
        offset, nbytes = _int(t["offset"], "offset", where), _int(t["nbytes"], "nbytes", where)
        crc = _int(t["crc32"], "crc32", where)
        if min(shape, default=0) < 0:
            raise FormatError(f"{where}: negative size in shape {shape}")
        if dtype in layouts.LAYOUTS and (len(shape) not in (4, 5) or not all(1 <= s <= MAX_KERNEL_DIM for s in shape)):
            raise FormatError(f"{where}: a {dtype} kernel has shape [KH, KW, Cin, Cout] (grouped: [G, KH, KW, "
                              f"Cin/G, Cout/G]) of sizes in [1, {MAX_KERNEL_DIM}], got {shape}")
        if nbytes != tensor_nbytes(dtype, shape):
            raise FormatError(f"{where}: {nbytes} bytes declared, {dtype}{shape} needs {tensor_nbytes(dtype, shape)}")
        if offset % ALIGN or offset < end or offset + nbytes > size:
            raise FormatError(f"{where}: data at byte {offset} (+{nbytes}) is misaligned, overlaps the header or "
                              f"the previous tensor (which ends at byte {end}), or runs past the end of the file "
                              f"({size} bytes)")
        if key in tensors:
            raise FormatError(f"{where}: appears twice")
        end = offset + nbytes
        tensors[key] = tensor = Tensor(key[0], key[1], dtype, shape, offset, nbytes, crc, buf[offset:end])
        problem = tensor.array().problem() if dtype in layouts.LAYOUTS else None
        if problem:
            raise FormatError(f"{where}: data at byte {offset}: {problem}")
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
    plan, repack = [], 0  # (layer, [(tensor, dtype, shape, packed at load)]); bytes packed at load
    for layer in model.layers:
        if not layer.weight_specs():
            continue
        entries = []
        stored, before_1_2 = layer.stored_specs(), layer.stored_specs(packed=False)
        for (name, shape, dtype), (_, plain_shape, plain) in zip(stored, before_1_2):
            t = mf.tensors.get((layer.name, name))
            if t is None:
                raise FormatError(f"{path}: no tensor {layer.name}/{name} in the file")
            old_plain = mf.minor < LAYOUTS_SINCE and dtype != plain and (t.dtype, t.shape) == (plain, plain_shape)
            if (t.dtype, t.shape) != (dtype, shape) and not old_plain:
                also = f" (or, before format 1.2, {plain}{list(plain_shape)})" if dtype != plain else ""
                raise FormatError(f"{path}: tensor {layer.name}/{name} is {t.dtype}{list(t.shape)}, "
                                  f"expected {dtype}{list(shape)}{also}")
            # bytes made at load: kernels of older files packed; plain bits widened to floats
            repack += tensor_nbytes(dtype, shape) if old_plain else 4 * 8 * t.nbytes if t.dtype == "bits" else 0
            entries.append((t, dtype, shape, old_plain))
        plan.append((layer, entries))
    if repack > MAX_REPACK_FACTOR * mf.size + MAX_REPACK_EXTRA:
        raise FormatError(f"{path}: packing this format {mf.major}.{mf.minor} file's kernels for its layers "
                          f"would take {repack:,} bytes, more than {MAX_REPACK_FACTOR}x its size + "
                          f"{MAX_REPACK_EXTRA:,}: refused")
    for layer, entries in plan:
        arrays = []
        for t, dtype, shape, old_plain in entries:
            try:  # a kernel of an older file is packed here, from its plain tensor in the map
                arrays.append(layouts.from_plain(dtype, t.dtype, t.array(), shape) if old_plain else
                              _signs(t) if t.dtype == "bits" else t.array())
            except ValueError as e:
                raise FormatError(f"{path}: tensor {t.layer}/{t.name}: {e}") from None
        try:
            layer.set_weights(arrays, check_values=mf.verified)
        except PyBNNError as e:
            raise FormatError(f"{path}: {e}") from None
    used = {(t.layer, t.name) for _, entries in plan for t, *_ in entries}
    extra = sorted(set(mf.tensors) - used)
    if extra:
        raise FormatError(f"{path}: tensors {', '.join(f'{a}/{b}' for a, b in extra)} belong to no layer of the model")
    return mf


def _signs(t):
    """A plain bits tensor (the kernel of a depthwise binary-weight layer) as float32 +-1."""
    count = int(np.prod(t.shape, dtype=np.int64))
    bits = np.unpackbits(t.data, bitorder="little", count=count)
    return (np.float32(1) - np.float32(2) * bits).reshape(t.shape)


def load_model(path, verify=False):
    """Rebuild a model from the architecture stored in the file (a path or a ModelFile from
    read_file) and load its weights."""
    from . import layers as L
    from .model import Model, Sequential
    mf = path if isinstance(path, ModelFile) else read_file(path, verify)
    path = mf.path
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
