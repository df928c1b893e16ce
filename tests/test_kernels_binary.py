"""Binary kernels (bit packing, binary convolution, binary max pooling) against small
independent NumPy oracles, on every instruction-set path this machine has."""
import numpy as np
import pytest

import pybnn.cpu
from pybnn import reference as ref
from pybnn._kernels import bconv, bitpack

ISAS = pybnn.cpu.available()
CHANNELS = [1, 3, 31, 32, 33, 63, 64, 65, 130]
HALF_WORDS = [15, 16, 17, 47, 48, 49]  # edges of the 16-channel AVX-512 compares

# Variants each kernel implements; asking for another path falls back to the best lower one.
IMPLEMENTED = {
    "pack_float": {"scalar", "sse4", "avx2", "avx512", "neon"},
    "pack_int8": {"scalar", "sse4", "avx2", "avx512", "neon"},
    "unpack": {"scalar", "avx2", "avx512", "neon"},
    "bconv2d": {"scalar", "sse4", "avx2", "avx512", "neon"},
    "bmaxpool2d": {"scalar", "avx2", "avx512", "neon"},
}


def isa_num(name):
    return pybnn.cpu.ISAS.index(name)


def expected_isa(kernel, name):
    """The variant a kernel should report when asked for `name` on this machine."""
    avail = set(ISAS)
    options = [i for i, n in enumerate(pybnn.cpu.ISAS)
               if n in IMPLEMENTED[kernel] and n in avail and i <= isa_num(name)]
    return max(options)


# ------------------------------------------------------------------------------ oracles

def ref_pack(bits):
    """bool (..., C) with True = -1 -> uint32 (..., ceil(C/32)), channel c = bit c%32."""
    c = bits.shape[-1]
    words = (c + 31) // 32
    padded = np.zeros(bits.shape[:-1] + (words * 32,), dtype=np.uint64)
    padded[..., :c] = bits
    weights = np.uint64(1) << np.arange(32, dtype=np.uint64)
    return (padded.reshape(bits.shape[:-1] + (words, 32)) * weights).sum(-1).astype(np.uint32)


def ref_unpack(words, c):
    """uint32 (..., words) -> float64 (..., C) of +-1."""
    ch = np.arange(c)
    bit = (words[..., ch // 32] >> (ch % 32).astype(np.uint32)) & 1
    return np.where(bit == 1, -1.0, 1.0)


def ref_sign(x):
    """+1 where x >= 0 (and for NaN), -1 where x < 0."""
    return np.where(x < 0, -1.0, 1.0)


def ref_conv(xf, wf, sh, sw, dh, dw, pt, pl, hout, wout, pad_value):
    """xf (N,H,W,C) of +-1, wf (Cout,KH,KW,C) of +-1 -> int64 (N,hout,wout,Cout)."""
    n, h, w, c = xf.shape
    cout, kh, kw, _ = wf.shape
    pb = max(0, (hout - 1) * sh + dh * (kh - 1) + 1 - h - pt)
    pr = max(0, (wout - 1) * sw + dw * (kw - 1) + 1 - w - pl)
    xp = np.full((n, pt + h + pb, pl + w + pr, c), float(pad_value))
    xp[:, pt:pt + h, pl:pl + w] = xf
    out = np.zeros((n, hout, wout, cout))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i * dh:i * dh + (hout - 1) * sh + 1:sh,
                       j * dw:j * dw + (wout - 1) * sw + 1:sw]
            out += patch @ wf[:, i, j, :].T
    return out.astype(np.int64)


def ref_maxpool(xf, kh, kw, sh, sw, pt, pl, hout, wout):
    """Max pooling of +-1 floats, skipping out-of-range positions (padded with -inf)."""
    n, h, w, c = xf.shape
    xp = np.full((n, pt + h + kh + hout * sh, pl + w + kw + wout * sw, c), -np.inf)
    xp[:, pt:pt + h, pl:pl + w] = xf
    out = np.full((n, hout, wout, c), -np.inf)
    for i in range(kh):
        for j in range(kw):
            out = np.maximum(out, xp[:, i:i + (hout - 1) * sh + 1:sh, j:j + (wout - 1) * sw + 1:sw])
    return out


def same_pads(size, k, s, d):
    """TF 'SAME': (out, pad_before)."""
    ek = d * (k - 1) + 1
    out = -(-size // s)
    total = max((out - 1) * s + ek - size, 0)
    return out, total // 2


# ------------------------------------------------------------------------------ pack_float

def test_pack_float_literal_encoding():
    x = np.array([[1, -1, 0, -0.0, np.nan, -2]], dtype=np.float32)
    out = np.zeros((1, 1), dtype=np.uint32)
    for name in ISAS:
        out[:] = 0xFFFFFFFF
        bitpack.pack_float(x, out, isa=isa_num(name))
        assert out[0, 0] == 0b100010 == 34
    x = np.array([[np.inf, -np.inf, -np.nan, 1e-45, -1e-45]], dtype=np.float32)
    bitpack.pack_float(x, out)
    assert out[0, 0] == 0b10010


def test_pack_float_thresholds_literal():
    x = np.array([[0.5, 0.5, 2, 2, 1, 1, np.nan, np.nan]], dtype=np.float32)
    thr = np.ones(8, dtype=np.float32)
    d = np.array([1, -1, 1, -1, 1, -1, 1, -1], dtype=np.int8)
    out = np.zeros((1, 1), dtype=np.uint32)
    for name in ISAS:
        bitpack.pack_float(x, out, thr, d, isa=isa_num(name))
        # 0.5<1 -> 1; 0.5>1 -> 0; 2<1 -> 0; 2>1 -> 1; equal and NaN -> 0
        assert out[0, 0] == 0b1001


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("c", CHANNELS + HALF_WORDS + [96, 257])
def test_pack_float_random(isa, c):
    rng = np.random.default_rng(c)
    x = rng.standard_normal((5, c)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = 0.0
    x[rng.random(x.shape) < 0.05] = -0.0
    x[rng.random(x.shape) < 0.05] = np.nan
    thr = rng.standard_normal(c).astype(np.float32)
    x[:, ::7] = thr[::7]  # some x exactly at the threshold
    d = rng.choice(np.array([-3, -1, 0, 1, 5], dtype=np.int8), c)
    out = np.full((5, (c + 31) // 32), 0xFFFFFFFF, dtype=np.uint32)

    assert bitpack.pack_float(x, out, isa=isa_num(isa)) == expected_isa("pack_float", isa)
    np.testing.assert_array_equal(out, ref_pack(x < 0))

    out[:] = 0xFFFFFFFF
    assert bitpack.pack_float(x, out, thr, d, isa=isa_num(isa)) == expected_isa("pack_float", isa)
    np.testing.assert_array_equal(out, ref_pack(np.where(d >= 0, x < thr, x > thr)))
    if c % 32:  # padding bits of the last word are zero
        assert not (out[:, -1] >> np.uint32(c % 32)).any()


# ------------------------------------------------------------------------------ pack_int8

def test_pack_int8_literal():
    q = np.array([[-128, 127, 0, 5, 5, 7, 7, -128, 127]], dtype=np.int8)
    i32 = np.iinfo(np.int32)
    thr = np.array([0, 0, 0, 5, 5, i32.max, i32.min, i32.min, i32.max], dtype=np.int32)
    d = np.array([1, 1, 1, 1, -1, 1, -1, -1, 1], dtype=np.int8)
    out = np.zeros((1, 1), dtype=np.uint32)
    for name in ISAS:
        bitpack.pack_int8(q, out, thr, d, isa=isa_num(name))
        # bits: 0:-128<0  5:7<max  6:7>min  8:127<max  (7: -128>min -> also 1)
        assert out[0, 0] == 0b111100001


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("c", CHANNELS + HALF_WORDS)
def test_pack_int8_random(isa, c):
    rng = np.random.default_rng(100 + c)
    q = rng.integers(-128, 128, (4, c)).astype(np.int8)
    thr = rng.integers(-140, 140, c).astype(np.int32)
    q[:, ::5] = np.clip(thr[::5], -128, 127)
    d = rng.choice(np.array([-1, 0, 1], dtype=np.int8), c)
    out = np.full((4, (c + 31) // 32), 0xFFFFFFFF, dtype=np.uint32)
    assert bitpack.pack_int8(q, out, thr, d, isa=isa_num(isa)) == expected_isa("pack_int8", isa)
    qi = q.astype(np.int64)
    np.testing.assert_array_equal(out, ref_pack(np.where(d >= 0, qi < thr, qi > thr)))


# ------------------------------------------------------------------------------ unpack

@pytest.mark.parametrize("isa", ISAS)
def test_unpack(isa):
    out = np.zeros((1, 6), dtype=np.float32)
    assert bitpack.unpack(np.array([[34]], dtype=np.uint32), 6, out, isa=isa_num(isa)) \
        == expected_isa("unpack", isa)
    np.testing.assert_array_equal(out, [[1, -1, 1, 1, 1, -1]])
    rng = np.random.default_rng(7)
    for c in CHANNELS + HALF_WORDS:
        bits = ref_pack(rng.random((3, c)) < 0.5)
        out = np.zeros((3, c), dtype=np.float32)
        bitpack.unpack(bits, c, out, isa=isa_num(isa))
        np.testing.assert_array_equal(out, ref_unpack(bits, c))


def test_bitpack_validation():
    x = np.zeros((2, 33), dtype=np.float32)
    with pytest.raises(ValueError):
        bitpack.pack_float(x, np.zeros((2, 1), dtype=np.uint32))
    with pytest.raises(ValueError):
        bitpack.pack_float(x, np.zeros((3, 2), dtype=np.uint32))
    with pytest.raises(ValueError):
        bitpack.pack_float(x, np.zeros((2, 2), dtype=np.uint32), thr=np.zeros(33, np.float32))
    with pytest.raises(ValueError):
        bitpack.pack_float(x, np.zeros((2, 2), dtype=np.uint32), np.zeros(32, np.float32),
                           np.zeros(32, np.int8))
    with pytest.raises(ValueError):
        bitpack.pack_float(x, np.zeros((2, 2), dtype=np.uint32), isa=99)
    with pytest.raises(ValueError):
        bitpack.pack_int8(np.zeros((2, 33), np.int8), np.zeros((2, 2), np.uint32),
                          np.zeros(33, np.int32), np.zeros(34, np.int8))
    with pytest.raises(ValueError):
        bitpack.unpack(np.zeros((2, 2), np.uint32), 65, np.zeros((2, 65), np.float32))
    with pytest.raises(ValueError):
        bitpack.unpack(np.zeros((2, 2), np.uint32), 64, np.zeros((2, 63), np.float32))


# ------------------------------------------------------------------------------ bconv2d

# (N, H, W, KH, KW, SH, SW, DH, DW, padding) with padding "same", "valid" or explicit
# (top, bottom, left, right).
GEOMETRIES = [
    (1, 5, 5, 3, 3, 1, 1, 1, 1, "same"),
    (3, 7, 7, 3, 3, 2, 2, 1, 1, "same"),
    (1, 7, 5, 5, 5, 1, 1, 1, 1, "same"),
    (3, 5, 7, 1, 3, 1, 2, 1, 1, "same"),        # non-square kernel and strides
    (1, 7, 7, 3, 3, 1, 1, 2, 2, "same"),        # dilation 2
    (1, 5, 7, 3, 5, 2, 1, 1, 1, (2, 1, 0, 2)),  # explicit asymmetric pads
    (2, 7, 5, 3, 2, 1, 1, 1, 1, "valid"),
    (2, 7, 7, 2, 2, 2, 2, 1, 1, "valid"),       # stride leaving the last row unused
    (3, 1, 1, 1, 1, 1, 1, 1, 1, "valid"),       # dense layer: 1x1 input (no im2col)
    (2, 5, 5, 1, 1, 1, 1, 1, 1, "valid"),       # 1x1 convolution (no im2col)
    (1, 5, 7, 1, 1, 2, 2, 1, 1, "valid"),       # strided 1x1 (im2col)
    (3, 5, 5, 5, 5, 1, 1, 1, 1, "valid"),       # kernel = whole image (dense-like, no im2col)
    (1, 1, 1, 3, 3, 1, 1, 1, 1, "same"),        # only the centre tap is inside
    (3, 1, 5, 1, 3, 1, 1, 1, 1, "same"),
]


def geometry_args(h, w, kh, kw, sh, sw, dh, dw, padding):
    if padding == "same":
        hout, pt = same_pads(h, kh, sh, dh)
        wout, pl = same_pads(w, kw, sw, dw)
    else:
        pt, pb, pl, pr = (0, 0, 0, 0) if padding == "valid" else padding
        hout = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
        wout = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    return pt, pl, hout, wout


def run_bconv(xf, wf, sh, sw, dh, dw, pt, pl, hout, wout, pad_value, isa):
    n, h, w, c = xf.shape
    cout, kh, kw, _ = wf.shape
    x = ref_pack(xf < 0)
    out = np.full((n, hout, wout, cout), -12345, dtype=np.int32)
    used = bconv.bconv2d(x, bconv.pack_weights(wf.astype(np.float32)), c, cout, kh, kw,
                         sh, sw, dh, dw, pt, pl, hout, wout, pad_value, bconv.tap_sums(wf),
                         out, isa=isa)
    return out, used


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("c", CHANNELS)
def test_bconv2d(isa, c):
    rng = np.random.default_rng(c)
    for gi, (n, h, w, kh, kw, sh, sw, dh, dw, padding) in enumerate(GEOMETRIES):
        pt, pl, hout, wout = geometry_args(h, w, kh, kw, sh, sw, dh, dw, padding)
        cout = [1, 8, 9, 13, 33, 40][gi % 6]  # edges of 8-channel blocks and 32-channel tiles
        xf = ref_sign(rng.standard_normal((n, h, w, c)))
        wraw = rng.standard_normal((cout, kh, kw, c)).astype(np.float32)
        wraw[rng.random(wraw.shape) < 0.1] = 0.0  # zero weights binarize to +1
        wf = ref_sign(wraw)
        for pad_value in (-1, 0, 1):
            out, used = run_bconv(xf, wraw, sh, sw, dh, dw, pt, pl, hout, wout, pad_value,
                                  isa_num(isa))
            assert used == expected_isa("bconv2d", isa)
            expect = ref_conv(xf, wf, sh, sw, dh, dw, pt, pl, hout, wout, pad_value)
            np.testing.assert_array_equal(out, expect, err_msg=f"geometry {gi} pad {pad_value}")


def test_bconv2d_precomputed_pad_corrections():
    """pad_corrections once + corr= in every call gives what each call computes itself."""
    rng = np.random.default_rng(3)
    for gi, (n, h, w, kh, kw, sh, sw, dh, dw, padding) in enumerate(GEOMETRIES):
        pt, pl, hout, wout = geometry_args(h, w, kh, kw, sh, sw, dh, dw, padding)
        c, cout = 40, 9
        x = ref_pack(rng.standard_normal((n, h, w, c)) < 0)
        wf = ref_sign(rng.standard_normal((cout, kh, kw, c))).astype(np.float32)
        wp, ts = bconv.pack_weights(wf), bconv.tap_sums(wf)
        for pad_value in (-1, 0, 1):
            geom = (c, cout, kh, kw, sh, sw, dh, dw, pt, pl, hout, wout, pad_value)
            corr = bconv.pad_corrections(h, w, *geom, ts)
            assert corr.dtype == np.int32 and corr.shape[1] == cout
            if pad_value == 1 or padding == "valid":
                assert corr.shape[0] == 0  # nothing to correct
            out, want = (np.zeros((n, hout, wout, cout), np.int32) for _ in range(2))
            bconv.bconv2d(x, wp, *geom, ts, want)
            bconv.bconv2d(x, wp, *geom, ts, out, corr=corr)
            np.testing.assert_array_equal(out, want, err_msg=f"geometry {gi} pad {pad_value}")
            with pytest.raises(ValueError):
                bconv.bconv2d(x, wp, *geom, ts, out, corr=np.zeros((corr.shape[0] + 1, cout), np.int32))


@pytest.mark.parametrize("isa", ISAS)
def test_bconv2d_long_rows_and_many_chunks(isa):
    """K spanning several 31-step byte-accumulator flushes, many output chunks, odd words."""
    rng = np.random.default_rng(1)
    xf = ref_sign(rng.standard_normal((2, 9, 9, 161)))
    wf = ref_sign(rng.standard_normal((9, 5, 5, 161)))
    pt, pl, hout, wout = geometry_args(9, 9, 5, 5, 1, 1, 1, 1, "same")
    with pybnn.cpu.use_isa(isa):
        out, _ = run_bconv(xf, wf, 1, 1, 1, 1, pt, pl, hout, wout, 0, pybnn.cpu.active())
    np.testing.assert_array_equal(out, ref_conv(xf, wf, 1, 1, 1, 1, pt, pl, hout, wout, 0))
    # dense rows of 625 and 626 words: more than 31 Harley-Seal groups of 8 k-steps (AVX2)
    for c in (20000, 20001):
        xf = ref_sign(rng.standard_normal((3, 1, 1, c)))
        wf = ref_sign(rng.standard_normal((9, 1, 1, c)))
        with pybnn.cpu.use_isa(isa):
            out, _ = run_bconv(xf, wf, 1, 1, 1, 1, 0, 0, 1, 1, 0, pybnn.cpu.active())
        np.testing.assert_array_equal(out, ref_conv(xf, wf, 1, 1, 1, 1, 0, 0, 1, 1, 0))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("c", [33, 64])
def test_bconv2d_tile_edges(isa, c):
    """Every row count around the 6-row GEMM tiles (and its 1- and 3-row remainders) times
    every channel count around the 8-channel blocks and 32-channel tiles, direct (1x1) and
    through im2col (1x3 "same")."""
    rng = np.random.default_rng(c + 5)
    for m in range(1, 15):
        xf = ref_sign(rng.standard_normal((1, 1, m, c)))
        for cout in (1, 7, 8, 9, 16, 24, 31, 32, 33, 40, 63, 64, 65, 100):
            for kw in (1, 3):
                wf = ref_sign(rng.standard_normal((cout, 1, kw, c)))
                pl = kw // 2
                out, used = run_bconv(xf, wf, 1, 1, 1, 1, 0, pl, 1, m, 0, isa_num(isa))
                assert used == expected_isa("bconv2d", isa)
                np.testing.assert_array_equal(out, ref_conv(xf, wf, 1, 1, 1, 1, 0, pl, 1, m, 0),
                                              err_msg=f"m={m} cout={cout} kw={kw}")


# ------------------------------------------------------------------------------ fused output transforms

# (N, H, W, C, Cout, K, stride, padding): the first four are large enough to be split
# between 2 threads: by pixels (480, and 49 = 25 + 24 with a 1-row tile in one part) or by
# output channels in units of 32 (the 1x1-output ones, whose 600 and 1100 channels end in a
# partial unit); the others are awkward small ones.
FUSED_GEOMETRIES = [
    (2, 16, 15, 70, 72, 3, 1, "same"),
    (3, 5, 5, 200, 600, 5, 1, "valid"),
    (2, 1, 1, 4000, 1100, 1, 1, "valid"),
    (1, 7, 7, 100, 160, 3, 1, "same"),
    (1, 9, 7, 33, 40, 3, 2, "same"),
    (2, 5, 5, 31, 9, 5, 1, "same"),
    (3, 1, 1, 65, 33, 1, 1, "valid"),
]


def fused_params(kind, cout, acc, rng):
    """Transform parameters of one output kind and what NumPy makes of acc with them."""
    if kind in ("float", "float_ibias", "relu"):
        mult = rng.uniform(-0.1, 0.1, cout).astype(np.float32)
        mult[::7] = 0.0
        bias = rng.uniform(-2, 2, cout).astype(np.float32)
        lo, hi = {"float": (-np.inf, np.inf), "float_ibias": (-1.5, 0.75), "relu": (0.0, np.inf)}[kind]
        params = dict(mult=mult, bias=bias, lo=lo, hi=hi)
        total = acc
        if kind == "float_ibias":
            params["ibias"] = rng.integers(-50, 50, cout).astype(np.int32)
            total = acc + params["ibias"]
        return np.float32, params, ref.to_float(total, mult, bias, lo, hi)
    if kind == "int8":
        mult = rng.uniform(0.001, 0.2, cout).astype(np.float32)
        ibias = rng.integers(-300, 300, cout).astype(np.int32)
        params = dict(mult=mult, ibias=ibias, zp=-3, qmin=-3, qmax=127)
        return np.int8, params, ref.requantize(acc, ibias, mult, -3, -3, 127)
    thr = rng.integers(-40, 40, cout).astype(np.int32)
    thr[::5] = np.iinfo(np.int32).min
    thr[1::5] = np.iinfo(np.int32).max
    direction = rng.choice(np.array([-1, 0, 1], np.int8), cout)
    return np.uint32, dict(thr=thr, dir=direction), ref.pack_bits(ref.threshold_negative(acc, thr, direction))


_FUSED_CASES = {}


def fused_case(gi):
    """Inputs, packed weights and exact accumulators (per pad value) of FUSED_GEOMETRIES[gi],
    made once for all kinds and paths."""
    if gi not in _FUSED_CASES:
        n, h, w, c, cout, k, s, padding = FUSED_GEOMETRIES[gi]
        rng = np.random.default_rng(gi)
        pt, pl, hout, wout = geometry_args(h, w, k, k, s, s, 1, 1, padding)
        xf = ref_sign(rng.standard_normal((n, h, w, c)))
        wf = ref_sign(rng.standard_normal((cout, k, k, c)))
        accs = {pv: ref_conv(xf, wf, s, s, 1, 1, pt, pl, hout, wout, pv).astype(np.int32) for pv in (-1, 0, 1)}
        _FUSED_CASES[gi] = (ref_pack(xf < 0), bconv.pack_weights(wf.astype(np.float32)), bconv.tap_sums(wf),
                            (pt, pl, hout, wout), accs)
    return _FUSED_CASES[gi]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", ["float", "float_ibias", "relu", "int8", "bits"])
def test_bconv2d_fused_transform(isa, kind):
    """Each output kind written by the conv itself equals NumPy's transform of the exact
    accumulators, bit for bit, for every pad value, on 1 and 2 threads."""
    rng = np.random.default_rng(len(kind))
    for gi, (n, h, w, c, cout, k, s, padding) in enumerate(FUSED_GEOMETRIES):
        x, wp, ts, (pt, pl, hout, wout), accs = fused_case(gi)
        for pad_value in (-1, 0, 1):
            dtype, params, want = fused_params(kind, cout, accs[pad_value], rng)
            for threads in (1, 2):
                out = np.full(want.shape, 0x5A, dtype)
                used = bconv.bconv2d(x, wp, c, cout, k, k, s, s, 1, 1, pt, pl, hout, wout, pad_value, ts,
                                     out, isa_num(isa), threads, **params)
                assert used == expected_isa("bconv2d", isa)
                np.testing.assert_array_equal(out, want, err_msg=f"geometry {gi} pad {pad_value} threads {threads}")


def test_bconv2d_transform_validation():
    c, cout = 40, 5
    x = np.zeros((1, 4, 4, 2), np.uint32)
    wf = np.ones((cout, 3, 3, c), np.float32)
    wp, ts = bconv.pack_weights(wf), bconv.tap_sums(wf)
    f32, i32, i8 = np.ones(cout, np.float32), np.zeros(cout, np.int32), np.ones(cout, np.int8)
    args = (x, wp, c, cout, 3, 3, 1, 1, 1, 1, 1, 1, 4, 4, 0, ts)
    good = [(np.zeros((1, 4, 4, cout), np.int32), {}),
            (np.zeros((1, 4, 4, cout), np.float32), dict(mult=f32, bias=f32)),
            (np.zeros((1, 4, 4, cout), np.int8), dict(mult=f32, ibias=i32)),
            (np.zeros((1, 4, 4, 1), np.uint32), dict(thr=i32, dir=i8))]
    for out, params in good:
        bconv.bconv2d(*args, out, **params)
    bad = [(np.zeros((1, 4, 4, cout), np.int32), dict(mult=f32)),           # int32 takes no transform
           (np.zeros((1, 4, 4, cout), np.float32), dict(mult=f32)),         # bias missing
           (np.zeros((1, 4, 4, cout), np.float32), dict(mult=f32[:4], bias=f32)),
           (np.zeros((1, 4, 4, cout), np.float32), dict(mult=f32, bias=f32, thr=i32)),
           (np.zeros((1, 4, 4, cout), np.int8), dict(mult=f32)),            # ibias missing
           (np.zeros((1, 4, 4, cout), np.int8), dict(mult=f32, ibias=i32, zp=200)),
           (np.zeros((1, 4, 4, cout), np.int8), dict(mult=f32, ibias=i32, qmin=5, qmax=4)),
           (np.zeros((1, 4, 4, cout), np.uint32), dict(thr=i32, dir=i8)),   # bits need ceil(cout/32) words
           (np.zeros((1, 4, 4, 1), np.uint32), dict(thr=i32)),
           (np.zeros((1, 4, 4, cout), np.float64), dict(mult=f32, bias=f32)),
           (np.zeros((1, 4, 4, cout), np.float32)[:, ::-1], dict(mult=f32, bias=f32)),
           (np.zeros((1, 4, 4, cout), np.int32).tolist(), {})]
    for out, params in bad:
        with pytest.raises(ValueError):
            bconv.bconv2d(*args, out, **params)
    with pytest.raises(ValueError):  # wrong dtype of a per-channel array
        bconv.bconv2d(*args, np.zeros((1, 4, 4, cout), np.float32), mult=f32.astype(np.float64), bias=f32)


def test_bconv2d_validation():
    c, cout, kh, kw = 33, 5, 3, 3
    x = np.zeros((1, 5, 5, 2), dtype=np.uint32)
    wf = np.ones((cout, kh, kw, c), dtype=np.float32)
    wp, ts = bconv.pack_weights(wf), bconv.tap_sums(wf)
    assert wp.shape == bconv.packed_weights_shape(c, cout, kh, kw) == (1, 9, 16)
    out = np.zeros((1, 5, 5, cout), dtype=np.int32)
    good = dict(x=x, wpacked=wp, channels=c, cout=cout, kh=kh, kw=kw, sh=1, sw=1, dh=1, dw=1,
                pad_top=1, pad_left=1, hout=5, wout=5, pad_value=0, tapsum=ts, out=out)
    assert bconv.bconv2d(**good) == 0
    bad = [
        dict(channels=65),                                   # words mismatch
        dict(channels=0),
        dict(hout=7), dict(wout=2), dict(hout=0),            # inconsistent output size
        dict(pad_top=3), dict(pad_left=-1),                  # pad beyond the kernel
        dict(pad_value=2),
        dict(sh=0), dict(dw=0), dict(kh=0),
        dict(wpacked=wp.reshape(-1)), dict(wpacked=wp.astype(np.int32)),
        dict(wpacked=bconv.pack_weights(np.ones((cout, kh, kw, 65), np.float32))),
        dict(wpacked=wp[:, ::2]),
        dict(tapsum=ts[:, :4].copy()), dict(tapsum=np.zeros((8, cout), np.int32)),
        dict(out=np.zeros((1, 5, 4, cout), np.int32)), dict(out=np.zeros((1, 5, 5, 6), np.int32)),
        dict(cout=4), dict(kh=1, pad_top=0),                 # kernel vs packed weights
        dict(isa=99),
    ]
    for change in bad:
        with pytest.raises(ValueError):
            bconv.bconv2d(**{**good, **change})
    with pytest.raises(ValueError):  # wrong dtype of a typed argument
        bconv.bconv2d(**{**good, "x": x.astype(np.int32)})


# ------------------------------------------------------------------------------ bmaxpool2d

POOLS = [  # (N, H, W, KH, KW, SH, SW, pad_top, pad_left, hout, wout)
    (1, 5, 5, 2, 2, 2, 2, 0, 0, 2, 2),
    (3, 7, 7, 3, 3, 2, 2, 1, 1, 4, 4),
    (1, 5, 7, 3, 2, 1, 2, 1, 0, 5, 4),
    (2, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1),
    (1, 7, 5, 5, 5, 1, 1, 2, 2, 7, 5),
    (1, 1, 5, 3, 3, 1, 1, 1, 1, 1, 5),
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("c", CHANNELS + [300, 512, 513])  # 300, 512, 513: 10, 16, 17 words
def test_bmaxpool2d(isa, c):
    rng = np.random.default_rng(c)
    for (n, h, w, kh, kw, sh, sw, pt, pl, hout, wout) in POOLS:
        xf = ref_sign(rng.standard_normal((n, h, w, c)) + 0.8)  # mostly -1: ANDs matter
        x = ref_pack(xf < 0)
        out = np.full((n, hout, wout, x.shape[-1]), 0xFFFFFFFF, dtype=np.uint32)
        used = bconv.bmaxpool2d(x, kh, kw, sh, sw, pt, pl, hout, wout, out, isa=isa_num(isa))
        assert used == expected_isa("bmaxpool2d", isa)
        expect = ref_pack(ref_maxpool(xf, kh, kw, sh, sw, pt, pl, hout, wout) < 0)
        np.testing.assert_array_equal(out, expect)


def test_bmaxpool2d_validation():
    x = np.zeros((1, 5, 5, 1), dtype=np.uint32)
    good = dict(x=x, kh=2, kw=2, sh=2, sw=2, pad_top=0, pad_left=0, hout=2, wout=2,
                out=np.zeros((1, 2, 2, 1), np.uint32))
    bconv.bmaxpool2d(**good)
    for change in [dict(pad_top=2), dict(hout=4, out=np.zeros((1, 4, 2, 1), np.uint32)),
                   dict(out=np.zeros((1, 2, 2, 2), np.uint32)), dict(sh=0), dict(kw=0),
                   dict(pad_left=-1), dict(isa=99)]:
        with pytest.raises(ValueError):
            bconv.bmaxpool2d(**{**good, **change})


@pytest.mark.parametrize("c, cout, kh, kw", [(1, 1, 1, 1), (9, 40, 3, 3), (33, 7, 1, 3), (64, 16, 2, 2)])
def test_pack_weights_from_bits_and_tap_sums_of_packed_weights(c, cout, kh, kw):
    """An HWIO kernel's plain bits (a model file's `bits` tensor) pack to the bytes pack_weights
    makes from floats, 64-byte aligned; the tap sums read from the packed bits ignore padding
    bits, so garbage there cannot push them outside [-c, c]."""
    rng = np.random.default_rng(c * 100 + cout)
    hwio = rng.standard_normal((kh, kw, c, cout)).astype(np.float32)
    wf = np.ascontiguousarray(hwio.transpose(3, 0, 1, 2))
    bits = np.packbits(hwio < 0, axis=None, bitorder="little")
    wp = bconv.pack_weights_bits(bits, c, cout, kh, kw, 1, cout)
    np.testing.assert_array_equal(wp, bconv.pack_weights(wf))
    assert wp.ctypes.data % 64 == 0
    np.testing.assert_array_equal(bconv.tap_sums_packed(wp, c, cout, kh, kw), bconv.tap_sums(wf))
    garbage = wp | np.uint32(0xFFFFFFFF) ^ bconv.pack_weights(np.ones_like(wf) * -1)  # every padding bit set
    np.testing.assert_array_equal(bconv.tap_sums_packed(garbage, c, cout, kh, kw), bconv.tap_sums(wf))
    with pytest.raises(ValueError, match="do not hold"):
        bconv.pack_weights_bits(bits[:-1], c, cout, kh, kw, 1, cout + 8)
    with pytest.raises(ValueError):
        bconv.tap_sums_packed(wp[:, :-1] if wp.shape[1] > 1 else wp[:0], c, cout, kh, kw)
