"""Kernel layouts: each convolution kind keeps its kernel in the layout its GEMM reads, in
memory and in model files (format 1.2), so a file's bytes are used in place and nothing is
repacked at load.  docs/format.md ("Kernel layouts") specifies them byte by byte; the C
headers named below pack and check them.

    layout          layers                          GEMM (header magic)
    bits_xgemm      BinaryConv2D, BinaryDense       XNOR-popcount, bgemm.h (no header)
    bits_fbgemm     FloatBinaryConv2D, ...Dense     fbgemm, fbgemm.h ("PFB1")
    bits_ibgemm     Int8BinaryConv2D, ...Dense      ibgemm, igemm.h ("PBQ1")
    int8_igemm      Int8Conv2D, Int8Dense           igemm, igemm.h ("PBQ8")
    float32_sgemm   Conv2D                          sgemm, fbgemm.h ("PFS1")

A packed kernel has the logical shape (KH, KW, Cin, Cout) of the convolution the layer runs
(dense layers: (1, 1, K, units), or (H, W, C, units) for a BinaryDense over a flattened binary
grid), K = KH*KW*Cin in the row order of an HWIO kernel.  This module knows the layouts' sizes
(in exact Python integers, for validating hostile files), builds them from logical weights or
from the plain tensors of format 1.0/1.1 files (bits are packed as bits, never widened), and
unpacks them for get_weights() and the NumPy reference.
"""
import numpy as np

from ._kernels import bconv as kbin, gemm as kgemm

HEADER = 64  # bytes of the GEMM headers: uint32 magic, K, cout, 52 zero bytes
# empty_aligned(shape, dtype=uint8): np.empty starting on a cache line, for the kernels' 64-byte
# SIMD loads and stores: packed kernels (pack_groups), activation arenas and layer outputs.
empty_aligned = kgemm.empty_aligned

LAYOUTS = ("bits_xgemm", "bits_fbgemm", "bits_ibgemm", "int8_igemm", "float32_sgemm")
_GEMM = {"bits_fbgemm": "fbgemm", "bits_ibgemm": "ibgemm", "int8_igemm": "igemm", "float32_sgemm": "sgemm"}


def _ceil(a, b):
    return -(-a // b)


def nbytes(layout, shape):
    """Bytes of a kernel of logical shape (KH, KW, Cin, Cout) in `layout` (sizes >= 0); a
    grouped kernel (G, KH, KW, Cin/G, Cout/G) is G such kernels, each padded to 64 bytes."""
    if len(shape) == 5:
        return shape[0] * _group_stride(layout, shape[1:])
    kh, kw, c, cout = shape
    k = kh * kw * c
    if layout == "bits_xgemm":  # blocks of 8 channels x 64-bit steps of the tap-major word rows
        return _ceil(cout, 8) * _ceil(kh * kw * _ceil(c, 32), 2) * 64
    if layout == "bits_fbgemm":  # panels of 32 channels, a uint32 per k
        return HEADER + _ceil(cout, 32) * k * 4
    if layout == "float32_sgemm":  # panels of 32 channels, 32 floats per k
        return HEADER + _ceil(cout, 32) * k * 128
    panel = _ceil(k, 4) * (8 if layout == "bits_ibgemm" else 64)  # 16 channels x 4-k quads
    return HEADER + _ceil(cout, 16) * (panel + 16 * 4)  # + an int32 weight sum per channel


def _group_stride(layout, shape4):
    """Bytes from one group's kernel to the next in a grouped kernel (64-byte aligned)."""
    return _ceil(nbytes(layout, shape4), 64) * 64


class Packed:
    """A kernel in `layout`.  `data`: its bytes, a 1-D uint8 array (a read-only view of a model
    file's map, or starting on a multiple of 64 bytes in memory); `array`: what the kernel
    function takes (data itself, or the uint32 (blocks, steps, 16) view of bits_xgemm);
    `shape`: the logical (KH, KW, Cin, Cout)."""

    __slots__ = ("layout", "shape", "data", "array")

    def __init__(self, layout, shape, data):
        self.layout, self.shape, self.data = layout, tuple(int(s) for s in shape), data
        if len(self.shape) == 5:  # grouped: the kernel functions take group(g).array
            self.array = None
        elif layout == "bits_xgemm":
            kh, kw, c, cout = self.shape
            self.array = data.view(np.uint32).reshape(kbin.packed_weights_shape(c, cout, kh, kw))
        else:
            self.array = data

    def problem(self):
        """None if the GEMM will accept this kernel: its sizes within the GEMM's limits, and
        the GEMM's own check (size, magic, K, cout, zero reserved bytes; bits_xgemm has no
        header, its size is all there is to check).  Otherwise what is wrong."""
        if self.data.size != nbytes(self.layout, self.shape):
            return f"{self.data.size} bytes, a {self.layout} kernel of shape {list(self.shape)} has " \
                   f"{nbytes(self.layout, self.shape)}"
        if len(self.shape) == 5:
            for g in range(self.shape[0]):
                problem = self.group(g).problem()
                if problem:
                    return f"group {g}: {problem}"
            return None
        kh, kw, c, cout = self.shape
        if self.layout == "bits_xgemm":
            return None
        gemm, k = _GEMM[self.layout], kh * kw * c
        try:
            kgemm.packed_size(gemm, k, cout)
        except (ValueError, OverflowError) as e:
            return f"{gemm} cannot run it: {e}"
        if not kgemm.packed_ok(gemm, self.data, k, cout):
            return f"its {self.layout} header is not that of K = {k}, cout = {cout} (magic, K, cout, zero bytes)"
        return None

    def _panels(self, dtype, per_panel):
        """The panel bytes (after the header, before any weight sums) as (panels, ...) of dtype."""
        kh, kw, c, cout = self.shape
        count = _ceil(cout, 32 if self.layout in ("bits_fbgemm", "float32_sgemm") else 16)
        size = count * int(np.prod(per_panel)) * np.dtype(dtype).itemsize
        return self.data[HEADER:HEADER + size].view(dtype).reshape((count,) + per_panel)

    def group(self, g):
        """Group g of a grouped kernel: a Packed (KH, KW, Cin/G, Cout/G) viewing its bytes."""
        shape4 = self.shape[1:]
        start = g * _group_stride(self.layout, shape4)
        return Packed(self.layout, shape4, self.data[start:start + nbytes(self.layout, shape4)])

    def unpack(self):
        """The logical kernel (KH, KW, Cin, Cout), a new array: float32 +-1 for the bits
        layouts, int8 or float32 for the others (grouped: (KH, KW, Cin/G, Cout), the groups'
        output channels in order)."""
        if len(self.shape) == 5:
            return np.concatenate([self.group(g).unpack() for g in range(self.shape[0])], axis=-1)
        kh, kw, c, cout = self.shape
        k = kh * kw * c
        if self.layout == "bits_xgemm":
            blocks, steps, _ = self.array.shape
            words = _ceil(c, 32)
            rows = self.array.reshape(blocks, steps, 8, 2).transpose(0, 2, 1, 3).reshape(blocks * 8, steps * 2)
            rows = np.ascontiguousarray(rows[:cout, :kh * kw * words])
            bits = np.unpackbits(rows.view(np.uint8), axis=1, bitorder="little")
            neg = bits.reshape(cout, kh * kw, words * 32)[:, :, :c].reshape(cout, k).T
        elif self.layout == "bits_fbgemm":  # bit j of word (p, k): channel 32p + j
            words = self._panels(np.uint32, (k,))
            bits = np.unpackbits(words.view(np.uint8).reshape(-1, k, 4), axis=2, bitorder="little")
            neg = bits.transpose(1, 0, 2).reshape(k, -1)[:, :cout]
        elif self.layout == "bits_ibgemm":  # bit 32*(c%2) + 8*j + c//2 of word (p, q): channel c, k = 4q + j
            kq = _ceil(k, 4)
            bits = np.unpackbits(self._panels(np.uint8, (kq, 8)), axis=2, bitorder="little")
            bits = bits.reshape(-1, kq, 2, 4, 8).transpose(1, 3, 0, 4, 2)  # (q, j, panel, c//2, c%2)
            neg = bits.reshape(kq * 4, -1)[:k, :cout]
        elif self.layout == "int8_igemm":  # byte 4c + j of block (p, q): channel c, k = 4q + j
            kq = _ceil(k, 4)
            w = self._panels(np.int8, (kq, 16, 4)).transpose(1, 3, 0, 2).reshape(kq * 4, -1)
            return np.ascontiguousarray(w[:k, :cout]).reshape(self.shape)
        else:  # float32_sgemm: row k of panel p holds channels 32p .. 32p + 31
            w = self._panels(np.float32, (k, 32)).transpose(1, 0, 2).reshape(k, -1)
            return np.ascontiguousarray(w[:, :cout]).reshape(self.shape)
        return (np.float32(1) - np.float32(2) * neg.astype(np.float32)).reshape(self.shape)

    def values_ok(self):
        """False if the kernel holds values a layer refuses (int8 -128, non-finite floats).
        Reductions only: no array as large as the kernel is made."""
        if len(self.shape) == 5:
            return all(self.group(g).values_ok() for g in range(self.shape[0]))
        if self.layout == "int8_igemm":
            kq = _ceil(self.shape[0] * self.shape[1] * self.shape[2], 4)
            return int(self._panels(np.int8, (kq * 64,)).min()) >= -127
        if self.layout == "float32_sgemm":
            panels = self._panels(np.float32, (self.shape[0] * self.shape[1] * self.shape[2] * 32,))
            return bool(np.isfinite(panels.min()) and np.isfinite(panels.max()))
        return True


def from_bits(layout, bits, shape):
    """Pack a binary kernel from its HWIO bits (element i is bit i % 8 of byte i // 8, 1 = -1:
    a model file's plain `bits` tensor), reading them as bits (C packers, no wider copy)."""
    kh, kw, c, cout = shape
    if layout == "bits_xgemm":
        wp = kbin.pack_weights_bits(bits, c, cout, kh, kw, 1, cout)
        return Packed(layout, shape, wp.reshape(-1).view(np.uint8))
    return Packed(layout, shape, kgemm.pack_binary_bits(_GEMM[layout], bits, kh * kw * c, cout, 1, cout))


def pack(layout, kernel):
    """Pack a logical kernel (KH, KW, Cin, Cout): float32 (binarized, -1 where w < 0, for the
    bits layouts and sign(0) = +1 as everywhere), int8 for int8_igemm."""
    kh, kw, c, cout = kernel.shape
    matrix = kernel.reshape(kh * kw * c, cout)  # (K, cout), a view of a contiguous kernel
    if layout == "float32_sgemm":
        return Packed(layout, kernel.shape, kgemm.pack_float_weights(np.ascontiguousarray(matrix, np.float32)))
    if layout == "int8_igemm":
        return Packed(layout, kernel.shape, kgemm.pack_int8_weights(matrix.T))
    return from_bits(layout, np.packbits(kernel < 0, axis=None, bitorder="little"), kernel.shape)


def from_plain(layout, dtype, data, shape):
    """Pack the kernel of a format 1.0/1.1 file: `data` is its plain tensor (HWIO float32 or
    int8 array, or the bytes of a `bits` tensor), read where it lies in the map."""
    if dtype == "bits":
        return from_bits(layout, data, shape)
    return pack(layout, data.reshape(shape))


def pack_groups(layout, kernel, groups):
    """Pack a grouped kernel (KH, KW, Cin/G, Cout): group g's output channels
    [g*Cout/G, (g+1)*Cout/G) as a kernel of its own, each starting on a multiple of 64 bytes."""
    kh, kw, cg, cout = kernel.shape
    shape4 = (kh, kw, cg, cout // groups)
    stride = _group_stride(layout, shape4)
    data = empty_aligned(groups * stride)
    data.fill(0)
    fg = cout // groups
    for g in range(groups):
        part = pack(layout, np.ascontiguousarray(kernel[..., g * fg:(g + 1) * fg]))
        data[g * stride:g * stride + part.data.size] = part.data
    return Packed(layout, (groups,) + shape4, data)
