"""im2col, GEMM (int8 / binary weights) and output-transform kernels against NumPy oracles
written here, on every instruction-set path this machine has.

Integer results must match exactly.  fbgemm sums every output in k order, so every path must
give the scalar path's bits, within the error bound of recursive summation of the float64
oracle; sgemm (float weights) must be within the bound of a recursive dot product, give the
same bits for every thread count, and the same bits as the other paths that round alike (FMA:
AVX2 = AVX-512; multiply then add: SSE4 = scalar); the output transforms must match NumPy bit
for bit.
"""
import itertools
import platform
import sys

import numpy as np
import pytest

import pybnn.cpu
from pybnn import reference as ref
from pybnn._kernels import gemm, transform

ISAS = pybnn.cpu.available()
KS = [1, 3, 27, 31, 32, 33, 63, 64, 65, 130, 576, 1000]
COUTS = [1, 3, 7, 8, 9, 33, 64]
MS = [1, 5, 49]
# Block boundaries of the int8 kernels (igemm.h): K in quads of 4, int16 flushes every 64
# quads (K 256), K unsplit up to 640 then in blocks of at most 512 (AVX-512), blocks of 1024
# (SSE4/AVX2); rows in blocks of 4-6 and super-blocks of 96 (more: ibgemm expands all the
# weights once); channels in panels of 16 and groups of 64.
BLOCK_KS = [4, 5, 255, 256, 257, 511, 512, 513, 640, 641, 643, 1023, 1024, 1025, 2051]
BLOCK_MS = [1, 2, 4, 5, 6, 7, 11, 12, 13, 95, 96, 97, 193]
BLOCK_COUTS = [15, 16, 17, 31, 48, 63, 64, 65, 80, 129]
ZPS = [0, -128, 127, 5]
HEADER = 64  # packed weights: uint32 magic, K, cout, then zeros (common.h, pybnn_pack_header)
CHANNELS = [1, 3, 7, 8, 9, 31, 32, 33, 64, 65, 130]

# Variants each kernel implements; asking for another path falls back to the best lower one.
IMPLEMENTED = {
    "igemm": {"scalar", "sse4", "avx2", "avx512", "neon", "neon_dotprod"},
    "ibgemm": {"scalar", "sse4", "avx2", "avx512", "neon", "neon_dotprod"},
    "fbgemm": {"scalar", "sse4", "avx2", "avx512", "neon"},
    "sgemm": {"scalar", "sse4", "avx2", "avx512", "neon"},
    "transform": {"scalar", "avx2", "neon"},
    # armv7's NEON flushes denormals to zero: its float transforms stay scalar
    "transform_float": {"scalar", "avx2"} | ({"neon"} if platform.machine() in ("aarch64", "arm64") else set()),
}


def isa_num(name):
    return pybnn.cpu.ISAS.index(name)


def expected_isa(kernel, name):
    """The variant a kernel should report when asked for `name` on this machine."""
    return max(i for i, n in enumerate(pybnn.cpu.ISAS)
               if n in IMPLEMENTED[kernel] and n in ISAS and i <= isa_num(name))


def cases(k):
    """(M, cout, a_zp) combinations for one K: every cout, cycling M and the zero point."""
    return [(MS[(i + k) % len(MS)], cout, ZPS[(i + 2 * k) % len(ZPS)]) for i, cout in enumerate(COUTS)]


def block_cases(k):
    """(M, cout, a_zp) around the row and channel block sizes, a few per K."""
    i = BLOCK_KS.index(k)
    return [(BLOCK_MS[(i + j) % len(BLOCK_MS)], BLOCK_COUTS[(3 * i + j) % len(BLOCK_COUTS)],
             ZPS[(i + j) % len(ZPS)]) for j in range(4)]


# ------------------------------------------------------------------------------ oracles

def ref_im2col(x, kh, kw, sh, sw, dh, dw, pt, pl, hout, wout, pad):
    n, h, w, c = x.shape
    out = np.full((n, hout, wout, kh, kw, c), pad, dtype=x.dtype)
    for i, j in itertools.product(range(kh), range(kw)):
        iy = np.arange(hout) * sh - pt + i * dh
        ix = np.arange(wout) * sw - pl + j * dw
        vy, vx = (iy >= 0) & (iy < h), (ix >= 0) & (ix < w)
        block = x[:, iy[vy]][:, :, ix[vx]]
        out[:, np.flatnonzero(vy)[:, None], np.flatnonzero(vx)[None, :], i, j] = block
    return out.reshape(n * hout * wout, kh * kw * c)


def ref_igemm(a, w, zp):
    return ((a.astype(np.int64) - zp) @ w.astype(np.int64).T).astype(np.int32)


def signs(w):
    """The sign rule of the binary-weight packers: +1 where w >= 0 (0 and -0.0 too), else -1."""
    return np.where(w >= 0, 1, -1)


def ref_pack_bits(bits):
    """bool (rows, C) with True = -1 -> uint32 (rows, ceil(C/32)), value c = bit c%32."""
    rows, c = bits.shape
    words = (c + 31) // 32
    padded = np.zeros((rows, words * 32), dtype=np.uint64)
    padded[:, :c] = bits
    weights = np.uint64(1) << np.arange(32, dtype=np.uint64)
    return (padded.reshape(rows, words, 32) * weights).sum(-1).astype(np.uint32)


def random_float_weights(rng, cout, k):
    w = rng.standard_normal((cout, k)).astype(np.float32)
    w.flat[::7] = 0.0    # zero binarizes to +1 ...
    w.flat[3::11] = -0.0  # ... and so does negative zero
    return w


def bitwise_equal(x, y):
    """Same float32 bits (so -0.0 != 0.0 and NaNs must match too)."""
    return x.shape == y.shape and np.array_equal(x.view(np.uint32), y.view(np.uint32))


# ------------------------------------------------------------------------------ im2col

IM2COL_GEOMETRY = [  # (kh, kw, sh, sw, dh, dw, pad_top, pad_bottom, pad_left, pad_right)
    (1, 1, 1, 1, 1, 1, 0, 0, 0, 0),
    (1, 1, 2, 2, 1, 1, 0, 0, 0, 0),
    (3, 3, 1, 1, 1, 1, 1, 1, 1, 1),
    (3, 3, 2, 2, 1, 1, 1, 0, 0, 1),
    (3, 3, 1, 2, 2, 2, 2, 2, 1, 3),
    (5, 5, 1, 1, 1, 1, 2, 2, 2, 2),
    (5, 5, 2, 1, 1, 2, 0, 3, 4, 1),
    (5, 3, 2, 2, 2, 1, 6, 1, 0, 2),   # more padding than image: whole rows of padding
    (3, 5, 1, 1, 1, 1, 0, 0, 0, 0),   # no padding ("valid")
]


def _im2col_out(h, w, geom):
    kh, kw, sh, sw, dh, dw, pt, pb, pl, pr = geom
    return (h + pt + pb - dh * (kh - 1) - 1) // sh + 1, (w + pl + pr - dw * (kw - 1) - 1) // sw + 1


# Only the (image, geometry) pairs whose kernel fits the padded image.
IM2COL_CASES = [(h, w, g) for (h, w) in [(1, 1), (1, 5), (5, 7), (7, 7), (7, 1)] for g in IM2COL_GEOMETRY
                if min(_im2col_out(h, w, g)) >= 1]


@pytest.mark.parametrize("h,w,geom", IM2COL_CASES)
def test_im2col(h, w, geom):
    kh, kw, sh, sw, dh, dw, pt, pb, pl, pr = geom
    hout, wout = _im2col_out(h, w, geom)
    rng = np.random.default_rng(h * 100 + w)
    for n, c in [(1, 1), (2, 3), (1, 8)]:
        xf = rng.standard_normal((n, h, w, c)).astype(np.float32)
        out = np.full((n * hout * wout, kh * kw * c), np.nan, np.float32)
        assert gemm.im2col_f32(xf, kh, kw, sh, sw, dh, dw, pt, pl, hout, wout, out) == 0
        assert bitwise_equal(out, ref_im2col(xf, kh, kw, sh, sw, dh, dw, pt, pl, hout, wout, 0.0))

        xi = rng.integers(-128, 128, (n, h, w, c), dtype=np.int8)
        for pad in (-128, 0, 127, 5):
            out = np.full((n * hout * wout, kh * kw * c), 99, np.int8)
            assert gemm.im2col_i8(xi, kh, kw, sh, sw, dh, dw, pt, pl, hout, wout, pad, out) == 0
            np.testing.assert_array_equal(out, ref_im2col(xi, kh, kw, sh, sw, dh, dw, pt, pl, hout, wout, pad))


def test_im2col_rejects_bad_shapes():
    x = np.zeros((1, 5, 5, 3), np.float32)
    with pytest.raises(ValueError):
        gemm.im2col_f32(x, 3, 3, 1, 1, 1, 1, 1, 1, 5, 5, np.zeros((25, 26), np.float32))
    with pytest.raises(ValueError):
        gemm.im2col_f32(x, 3, 3, 1, 1, 1, 1, 1, 1, 5, 5, np.zeros((24, 27), np.float32))
    with pytest.raises(ValueError):
        gemm.im2col_f32(x, 3, 3, 0, 1, 1, 1, 1, 1, 5, 5, np.zeros((25, 27), np.float32))
    with pytest.raises(ValueError):
        gemm.im2col_i8(x.astype(np.int8), 3, 3, 1, 1, 1, 0, 1, 1, 5, 5, 0, np.zeros((25, 27), np.int8))


# ------------------------------------------------------------------------------ igemm

@pytest.mark.parametrize("name", ISAS)
@pytest.mark.parametrize("k", KS)
def test_igemm(name, k):
    rng = np.random.default_rng(k)
    for m, cout, zp in cases(k):
        a = rng.integers(-128, 128, (m, k), dtype=np.int8)
        w = rng.integers(-127, 128, (cout, k), dtype=np.int8)
        out = np.full((m, cout), 12345, np.int32)
        used = gemm.igemm(a, gemm.pack_int8_weights(w), k, cout, zp, out, isa_num(name))
        assert used == expected_isa("igemm", name)
        np.testing.assert_array_equal(out, ref_igemm(a, w, zp), err_msg=f"M={m} cout={cout} zp={zp}")


@pytest.mark.parametrize("name", ISAS)
@pytest.mark.parametrize("k", BLOCK_KS)
def test_igemm_blocks(name, k):
    rng = np.random.default_rng(500 + k)
    for m, cout, zp in block_cases(k):
        a = rng.integers(-128, 128, (m, k), dtype=np.int8)
        w = rng.integers(-128, 128, (cout, k), dtype=np.int8)
        out = np.full((m, cout), 12345, np.int32)
        gemm.igemm(a, gemm.pack_int8_weights(w), k, cout, zp, out, isa_num(name))
        np.testing.assert_array_equal(out, ref_igemm(a, w, zp), err_msg=f"M={m} cout={cout} zp={zp}")


@pytest.mark.parametrize("name", ISAS)
@pytest.mark.parametrize("k", [1, 33, 1000, 4100, 65536])
def test_igemm_extremes(name, k):
    """Every input at -128 or 127 and weights at +-127 (and -128): no overflow, no saturation.
    K = 65536 is the largest allowed; |sum| reaches 255 * 127 * 65536 ~ 2.1e9."""
    m = 2 if k == 65536 else 4
    for cout, wval in [(9, 127), (9, -127), (3, -128)]:
        w = np.full((cout, k), wval, np.int8)
        w[1::2, ::3] = -wval if wval != -128 else 127
        wp = gemm.pack_int8_weights(w)
        for aval, zp in [(-128, 127), (127, -128), (-128, -128), (127, 127), (127, 0)]:
            a = np.full((m, k), aval, np.int8)
            a[1, ::2] = -1 - aval  # the other extreme
            out = np.empty((m, cout), np.int32)
            gemm.igemm(a, wp, k, cout, zp, out, isa_num(name))
            np.testing.assert_array_equal(out, ref_igemm(a, w, zp), err_msg=f"a={aval} zp={zp} w={wval}")


def test_pack_int8_weights_layout():
    """Header, 16-channel panels of 4-k quads (64 bytes: channel-major, k minor), then the
    weight sums per channel (see igemm.h)."""
    k, cout = 5, 19
    w = (np.arange(cout * k).reshape(cout, k) * 7 % 256 - 128).astype(np.int8)
    wp = gemm.pack_int8_weights(w)
    kq, npan = 2, 2
    header = wp[:HEADER].view(np.uint32)
    assert header[0] == 0x38514250 and header[1] == k and header[2] == cout
    panels = wp[HEADER:HEADER + npan * kq * 64].view(np.int8).reshape(npan, kq, 16, 4)
    full = np.zeros((npan * 16, kq * 4), np.int8)
    full[:cout, :k] = w
    np.testing.assert_array_equal(panels, full.reshape(npan, 16, kq, 4).transpose(0, 2, 1, 3))
    sums = wp[HEADER + npan * kq * 64:].view(np.int32)
    want = np.zeros(npan * 16, np.int32)
    want[:cout] = w.astype(np.int32).sum(1)
    np.testing.assert_array_equal(sums, want)


# ------------------------------------------------------------------------------ binary weights

def test_pack_int8_binary_weights_layout():
    """Header, 16-channel panels of one uint64 per 4-k quad, bit 32*(c%2) + 8*j + c//2 for
    channel c, k offset j (1 = -1), then the sums K - 2 * (number of -1) (see igemm.h)."""
    rng = np.random.default_rng(3)
    for k, cout in [(1, 1), (5, 19), (32, 16), (33, 40)]:
        w = random_float_weights(rng, cout, k)
        w[0, 0] = np.nan  # not >= 0: -1
        wp = gemm.pack_int8_binary_weights(w)
        kq, npan = (k + 3) // 4, (cout + 15) // 16
        header = wp[:HEADER].view(np.uint32)
        assert header[0] == 0x31514250 and header[1] == k and header[2] == cout
        words = wp[HEADER:HEADER + npan * kq * 8].view(np.uint64).reshape(npan, kq)
        neg = np.zeros((npan * 16, kq * 4), bool)
        neg[:cout, :k] = ~(w >= 0)
        c, j = np.meshgrid(np.arange(16), np.arange(4), indexing="ij")
        shifts = (32 * (c % 2) + 8 * j + c // 2).astype(np.uint64)
        blocks = neg.reshape(npan, 16, kq, 4).transpose(0, 2, 1, 3).astype(np.uint64)
        np.testing.assert_array_equal(words, (blocks << shifts).sum((2, 3)).astype(np.uint64))
        want = np.zeros(npan * 16, np.int32)
        want[:cout] = k - 2 * neg[:cout].sum(1)
        np.testing.assert_array_equal(wp[HEADER + npan * kq * 8:].view(np.int32), want)


@pytest.mark.parametrize("name", ISAS)
@pytest.mark.parametrize("k", KS)
def test_ibgemm(name, k):
    rng = np.random.default_rng(1000 + k)
    for m, cout, zp in cases(k):
        a = rng.integers(-128, 128, (m, k), dtype=np.int8)
        w = random_float_weights(rng, cout, k)
        out = np.full((m, cout), 12345, np.int32)
        used = gemm.ibgemm(a, gemm.pack_int8_binary_weights(w), k, cout, zp, out, isa_num(name))
        assert used == expected_isa("ibgemm", name)
        np.testing.assert_array_equal(out, ref_igemm(a, signs(w), zp), err_msg=f"M={m} cout={cout} zp={zp}")


@pytest.mark.parametrize("name", ISAS)
@pytest.mark.parametrize("k", BLOCK_KS)
def test_ibgemm_blocks(name, k):
    rng = np.random.default_rng(1500 + k)
    for m, cout, zp in block_cases(k):
        a = rng.integers(-128, 128, (m, k), dtype=np.int8)
        w = random_float_weights(rng, cout, k)
        out = np.full((m, cout), 12345, np.int32)
        gemm.ibgemm(a, gemm.pack_int8_binary_weights(w), k, cout, zp, out, isa_num(name))
        np.testing.assert_array_equal(out, ref_igemm(a, signs(w), zp), err_msg=f"M={m} cout={cout} zp={zp}")


@pytest.mark.parametrize("name", ISAS)
@pytest.mark.parametrize("k", [1, 32, 1000, 4100, 70000])
def test_ibgemm_extremes(name, k):
    """Inputs at -128 / 127, all weights -1 or +1 and mixed: long rows pass through several
    int16 -> int32 widenings; the sums reach +-255 * K."""
    cout, m = 5, 3
    w = np.ones((cout, k), np.float32)
    w[1] = -1.0
    w[2, ::2] = -1.0
    w[3, : k // 2] = -1.0
    wp = gemm.pack_int8_binary_weights(w)
    for aval, zp in [(-128, 127), (127, -128), (127, 127), (-128, -128), (127, 0)]:
        a = np.full((m, k), aval, np.int8)
        a[1, ::3] = -1 - aval
        out = np.empty((m, cout), np.int32)
        gemm.ibgemm(a, wp, k, cout, zp, out, isa_num(name))
        np.testing.assert_array_equal(out, ref_igemm(a, signs(w), zp), err_msg=f"a={aval} zp={zp}")


# fbgemm tiles (include/pybnn/fbgemm.h): rows in tiles of up to 4 (NEON), 6 (SSE4, AVX2) or
# 12 (AVX-512) rows, 1-3 rows across up to 64/128 channels; channels in panels of 32 and
# vectors of 4, 8 or 16.  The grid straddles all of these.
FB_MS = [1, 2, 3, 4, 5, 6, 7, 11, 12, 13, 25, 49]
FB_COUTS = [1, 3, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 96, 97, 127, 128, 129, 160, 257]


def fb_cases(k):
    """(M, cout) pairs for one K: every cout, cycling M (the whole grid for two K)."""
    if k in (33, 130):
        return list(itertools.product(FB_MS, FB_COUTS))
    return [(FB_MS[(i + k) % len(FB_MS)], cout) for i, cout in enumerate(FB_COUTS)]


def fb_bound(a):
    """Error bound of recursive summation of the K terms +-a[m, k] (exact products), per row:
    gamma_{K-1} * sum_k |a[m, k]|, gamma_n = n u / (1 - n u), u = 2^-24."""
    n = a.shape[1] - 1
    u = 2.0 ** -24
    return n * u / (1 - n * u) * np.abs(a.astype(np.float64)).sum(1, keepdims=True)


def run_fbgemm(a, wp, cout, name, threads=1):
    out = np.full((a.shape[0], cout), np.nan, np.float32)
    used = gemm.fbgemm(a, wp, a.shape[1], cout, out, isa_num(name), threads)
    assert used == expected_isa("fbgemm", name)
    return out


def test_pack_float_binary_weights_layout():
    """Header, then panels of 32 channels with one word per k (bit j = channel 32p + j)."""
    rng = np.random.default_rng(1)
    for k, cout in [(1, 1), (3, 31), (2, 32), (5, 33), (4, 70)]:
        w = random_float_weights(rng, cout, k)
        w[0, 0] = np.nan  # not >= 0: -1
        wp = gemm.pack_float_binary_weights(w)
        npanel = (cout + 31) // 32
        assert wp.shape == (HEADER + npanel * k * 4,)
        header = wp[:HEADER].view(np.uint32)
        assert header[1] == k and header[2] == cout
        bits = np.zeros((npanel * 32, k), bool)
        bits[:cout] = ~(w >= 0)
        want = ref_pack_bits(bits.reshape(npanel, 32, k).transpose(0, 2, 1).reshape(npanel * k, 32))
        np.testing.assert_array_equal(wp[HEADER:].view(np.uint32), want.ravel())


@pytest.mark.parametrize("name", ISAS)
@pytest.mark.parametrize("k", KS)
def test_fbgemm(name, k):
    rng = np.random.default_rng(2000 + k)
    for m, cout in fb_cases(k):
        a = (rng.standard_normal((m, k)) * 3).astype(np.float32)
        w = random_float_weights(rng, cout, k)
        wp = gemm.pack_float_binary_weights(w)
        out = run_fbgemm(a, wp, cout, name)
        want = a.astype(np.float64) @ signs(w).T.astype(np.float64)
        assert np.all(np.abs(out - want) <= fb_bound(a)), f"M={m} cout={cout}"
        if name != "scalar":
            assert bitwise_equal(out, run_fbgemm(a, wp, cout, "scalar")), f"M={m} cout={cout}"


@pytest.mark.parametrize("name", ISAS)
def test_fbgemm_exact_values(name):
    """Small integers sum exactly in float32 in any order: checks signs bit for bit."""
    rng = np.random.default_rng(7)
    for m, k, cout in [(6, 5, 9), (6, 37, 4), (6, 300, 33), (13, 70, 129), (2, 40, 257)]:
        a = rng.integers(-50, 51, (m, k)).astype(np.float32)
        w = random_float_weights(rng, cout, k)
        out = run_fbgemm(a, gemm.pack_float_binary_weights(w), cout, name)
        np.testing.assert_array_equal(out, (a @ signs(w).T.astype(np.float32)))


@pytest.mark.parametrize("name", ISAS)
def test_fbgemm_special_values(name):
    """Infinities, NaN and signed zeros: a sum in k order starting from +0.0 with exact
    products, so -0.0 inputs give +0.0, inf * -1 = -inf, inf - inf = NaN (the scalar bits)."""
    k, cout = 40, 70
    rng = np.random.default_rng(8)
    w = random_float_weights(rng, cout, k)
    s = signs(w)
    a = np.full((7, k), -0.0, np.float32)
    a[1, 3] = np.inf
    a[2, 5] = -np.inf
    a[3, [2, 9]] = np.inf                 # same or opposite signs per channel: inf or NaN
    a[4, 11] = np.nan
    a[5] = rng.standard_normal(k)
    a[5, ::4] = -0.0
    a[6] = 3e38                           # overflows to +-inf in some channels
    wp = gemm.pack_float_binary_weights(w)
    out = run_fbgemm(a, wp, cout, name)
    assert bitwise_equal(out[0], np.zeros(cout, np.float32))
    np.testing.assert_array_equal(out[1], np.inf * s[:, 3])
    np.testing.assert_array_equal(out[2], -np.inf * s[:, 5])
    both = s[:, 2] == s[:, 9]
    np.testing.assert_array_equal(out[3][both], np.inf * s[both, 2])
    assert np.isnan(out[3][~both]).all() and np.isnan(out[4]).all()
    if name != "scalar":
        assert bitwise_equal(out[[0, 1, 2, 5, 6]], run_fbgemm(a, wp, cout, "scalar")[[0, 1, 2, 5, 6]])


# sgemm: the tiles of fbgemm, plus K cut into near-equal blocks of at most 512 (fbgemm.h).
SG_KS = [1, 3, 31, 64, 65, 511, 512, 513, 1024, 1025, 1537]


def run_sgemm(a, w, name, threads=1):
    k, cout = w.shape
    out = np.full((a.shape[0], cout), np.nan, np.float32)
    used = gemm.sgemm(a, gemm.pack_float_weights(w), k, cout, out, isa_num(name), threads)
    assert used == expected_isa("sgemm", name)
    return out


def test_pack_float_weights_layout():
    """Header "PFS1", K, cout; then panels of 32 channels, K rows of 32 floats, zero-padded."""
    rng = np.random.default_rng(3)
    for k, cout in [(1, 1), (3, 31), (2, 32), (5, 33), (4, 70)]:
        w = rng.standard_normal((k, cout)).astype(np.float32)
        wp = gemm.pack_float_weights(w)
        npanel = (cout + 31) // 32
        assert wp.shape == (HEADER + npanel * k * 128,)
        assert wp[:HEADER].view(np.uint32).tolist() == [0x31534650, k, cout] + [0] * 13
        padded = np.zeros((k, npanel * 32), np.float32)
        padded[:, :cout] = w
        want = padded.reshape(k, npanel, 32).transpose(1, 0, 2)
        assert bitwise_equal(wp[HEADER:].view(np.float32).reshape(npanel, k, 32), want)


@pytest.mark.parametrize("name", ISAS)
@pytest.mark.parametrize("k", SG_KS)
def test_sgemm(name, k):
    rng = np.random.default_rng(3000 + k)
    # the whole tile grid at K = 513 (two K blocks), a cycle through it at the other K
    grid = itertools.product(FB_MS, FB_COUTS) if k == 513 else fb_cases(k)
    for m, cout in grid:
        a = (rng.standard_normal((m, k)) * 3).astype(np.float32)
        w = rng.standard_normal((k, cout)).astype(np.float32)
        out = run_sgemm(a, w, name)
        want = a.astype(np.float64) @ w.astype(np.float64)
        bound = k * 2.0 ** -24 / (1 - k * 2.0 ** -24) * (np.abs(a.astype(np.float64)) @ np.abs(w.astype(np.float64)))
        assert np.all(np.abs(out - want) <= bound), f"M={m} cout={cout}"
        twin = {"avx512": "avx2", "sse4": "scalar"}.get(name)
        if twin in ISAS:
            assert bitwise_equal(out, run_sgemm(a, w, twin)), f"{name} != {twin}: M={m} cout={cout}"


@pytest.mark.parametrize("name", ISAS)
def test_sgemm_exact_values_and_threads(name):
    """Small integers sum exactly in any order: checks every weight's place bit for bit; and
    every thread count gives the 1-thread bits (rows split, or channel panels when few rows)."""
    rng = np.random.default_rng(9)
    for m, k, cout in [(6, 5, 9), (6, 37, 4), (6, 700, 33), (13, 70, 129), (2, 1100, 257), (300, 600, 70)]:
        a = rng.integers(-20, 21, (m, k)).astype(np.float32)
        w = rng.integers(-20, 21, (k, cout)).astype(np.float32)
        out = run_sgemm(a, w, name)
        np.testing.assert_array_equal(out, a @ w)
        x = (rng.standard_normal((m, k))).astype(np.float32)
        one = run_sgemm(x, w, name)
        for t in (2, 3, 5):
            assert bitwise_equal(run_sgemm(x, w, name, t), one), f"{t} threads: M={m} K={k} cout={cout}"


def test_sgemm_rejects_bad_arguments():
    a = np.zeros((4, 10), np.float32)
    ws = gemm.pack_float_weights(np.ones((10, 3), np.float32))
    out = np.zeros((4, 3), np.float32)
    gemm.sgemm(a, ws, 10, 3, out)  # the good call
    bad = [
        lambda: gemm.sgemm(a, ws, 11, 3, out),                                     # K mismatch
        lambda: gemm.sgemm(a, ws, 10, 4, np.zeros((4, 4), np.float32)),            # packed for 3 channels
        lambda: gemm.sgemm(a, ws, 10, 3, np.zeros((4, 2), np.float32)),            # output shape
        lambda: gemm.sgemm(a, ws[:-1], 10, 3, out),                                # truncated buffer
        lambda: gemm.sgemm(a, gemm.pack_float_binary_weights(np.ones((3, 10), np.float32)), 10, 3, out),
        lambda: gemm.pack_float_weights(np.zeros((0, 3), np.float32)),
        lambda: gemm.pack_float_weights(np.zeros((3, 0), np.float32)),
    ]
    for i, call in enumerate(bad):
        with pytest.raises(ValueError):
            call()


@pytest.mark.parametrize("name", ISAS)
def test_gemm_empty_batch(name):
    a8, af = np.zeros((0, 10), np.int8), np.zeros((0, 10), np.float32)
    w = np.ones((3, 10), np.float32)
    assert gemm.igemm(a8, gemm.pack_int8_weights(w.astype(np.int8)), 10, 3, 0,
                      np.zeros((0, 3), np.int32), isa_num(name)) == expected_isa("igemm", name)
    assert gemm.ibgemm(a8, gemm.pack_int8_binary_weights(w), 10, 3, 0, np.zeros((0, 3), np.int32),
                       isa_num(name)) == expected_isa("ibgemm", name)
    assert gemm.fbgemm(af, gemm.pack_float_binary_weights(w), 10, 3, np.zeros((0, 3), np.float32),
                       isa_num(name)) == expected_isa("fbgemm", name)
    assert gemm.sgemm(af, gemm.pack_float_weights(w.T.copy()), 10, 3, np.zeros((0, 3), np.float32),
                      isa_num(name)) == expected_isa("sgemm", name)


def test_gemm_rejects_bad_arguments():
    a = np.zeros((4, 10), np.int8)
    wi = gemm.pack_int8_weights(np.ones((3, 10), np.int8))
    wf = gemm.pack_float_binary_weights(np.ones((3, 10), np.float32))
    wib = gemm.pack_int8_binary_weights(np.ones((3, 10), np.float32))
    out = np.zeros((4, 3), np.int32)
    gemm.igemm(a, wi, 10, 3, 0, out)  # the good calls
    gemm.ibgemm(a, wib, 10, 3, 0, out)
    bad = [
        lambda: gemm.igemm(a, wi, 11, 3, 0, out),                          # K mismatch
        lambda: gemm.igemm(a, wi, 10, 4, 0, np.zeros((4, 4), np.int32)),   # packed for 3 channels
        lambda: gemm.igemm(a, wi, 10, 3, 0, np.zeros((4, 2), np.int32)),   # output shape
        lambda: gemm.igemm(a, wi, 10, 3, 0, np.zeros((5, 3), np.int32)),
        lambda: gemm.igemm(a, wi, 10, 3, 200, out),                        # zero point
        lambda: gemm.igemm(a, wib, 10, 3, 0, out),                         # binary-packed weights
        lambda: gemm.igemm(a, wi[:-1], 10, 3, 0, out),                     # truncated buffer
        lambda: gemm.ibgemm(a, wi, 10, 3, 0, out),                         # int8-packed weights
        lambda: gemm.ibgemm(a, wf, 10, 3, 0, out),                         # fbgemm's binary packing
        lambda: gemm.ibgemm(a, wib, 10, 3, -129, out),
        lambda: gemm.ibgemm(a, wib, 11, 3, 0, out),
        lambda: gemm.fbgemm(a.astype(np.float32), wf, 10, 3, np.zeros((4, 3), np.float32)[:, :2]),
        lambda: gemm.fbgemm(np.zeros((4, 9), np.float32), wf, 10, 3, np.zeros((4, 3), np.float32)),
        lambda: gemm.fbgemm(a.astype(np.float32), wib, 10, 3, np.zeros((4, 3), np.float32)),  # ibgemm's layout
        lambda: gemm.fbgemm(a.astype(np.float32), wf[:-1], 10, 3, np.zeros((4, 3), np.float32)),
        lambda: gemm.fbgemm(a.astype(np.float32), gemm.pack_float_binary_weights(np.ones((33, 10), np.float32)),
                            10, 32, np.zeros((4, 32), np.float32)),         # packed for 33 channels
        lambda: gemm.pack_float_binary_weights(np.zeros((3, 0), np.float32)),
        lambda: gemm.pack_int8_weights(np.zeros((3, 0), np.int8)),
        lambda: gemm.pack_float_binary_weights(np.zeros((0, 5), np.float32)),
        lambda: gemm.pack_int8_binary_weights(np.zeros((2, 0), np.float32)),
    ]
    for i, call in enumerate(bad):
        with pytest.raises(ValueError):
            call()
            pytest.fail(f"bad call {i} was accepted")



def test_packers_from_bits_and_strides_match_the_float_packers():
    """What model files need: an HWIO kernel's plain bits (sn = 1, sk = cout) and its int8
    (K, cout) matrix transposed (any strides) pack to the same bytes as the (cout, K) forms."""
    rng = np.random.default_rng(7)
    for k, cout in [(1, 1), (5, 19), (27, 33), (64, 70)]:
        w = random_float_weights(rng, cout, k)
        hwio_bits = np.packbits(~(w.T >= 0), axis=None, bitorder="little")  # element (k, n) at k*cout + n
        assert np.array_equal(gemm.pack_binary_bits("fbgemm", hwio_bits, k, cout, 1, cout),
                              gemm.pack_float_binary_weights(w))
        assert np.array_equal(gemm.pack_binary_bits("ibgemm", hwio_bits, k, cout, 1, cout),
                              gemm.pack_int8_binary_weights(w))
        w8 = rng.integers(-127, 128, (cout, k)).astype(np.int8)
        assert np.array_equal(gemm.pack_int8_weights(np.ascontiguousarray(w8.T).T), gemm.pack_int8_weights(w8))
        for packed in (gemm.pack_int8_weights(w8), gemm.pack_int8_binary_weights(w),
                       gemm.pack_float_binary_weights(w), gemm.pack_float_weights(w.T.copy())):
            assert packed.ctypes.data % 64 == 0  # panels on cache lines, as in a model file
    with pytest.raises(ValueError, match="do not hold"):
        gemm.pack_binary_bits("fbgemm", np.zeros(2, np.uint8), 5, 4, 1, 4)  # 20 bits > 16
    with pytest.raises(ValueError, match="do not hold"):  # 3 strides of half the address space wrap a C sum
        gemm.pack_binary_bits("fbgemm", np.zeros(8, np.uint8), 1, 4, sys.maxsize // 2, 0)
    with pytest.raises(ValueError, match="fbgemm' or 'ibgemm"):
        gemm.pack_binary_bits("igemm", np.zeros(2, np.uint8), 2, 2, 1, 2)


@pytest.mark.parametrize("gemm_name", ["igemm", "ibgemm", "fbgemm", "sgemm"])
def test_packed_headers_are_checked_whole(gemm_name):
    """Every GEMM checks size, magic, K, cout and the zero reserved bytes of its weights."""
    k, cout = 10, 3
    w = np.ones((cout, k), np.float32)
    wp = {"igemm": lambda: gemm.pack_int8_weights(w.astype(np.int8)), "ibgemm": lambda: gemm.pack_int8_binary_weights(w),
          "fbgemm": lambda: gemm.pack_float_binary_weights(w), "sgemm": lambda: gemm.pack_float_weights(w.T.copy())}[gemm_name]()
    assert gemm.packed_ok(gemm_name, wp, k, cout) and len(wp) == gemm.packed_size(gemm_name, k, cout)
    assert not gemm.packed_ok(gemm_name, wp, k + 1, cout) and not gemm.packed_ok(gemm_name, wp, k, cout + 1)
    assert not gemm.packed_ok(gemm_name, wp[:-1], k, cout) and not gemm.packed_ok(gemm_name, wp[:10], k, cout)
    assert not gemm.packed_ok(gemm_name, wp, 2**40, cout)
    for pos in (0, 5, 9, 12, 63):
        bad = wp.copy()
        bad[pos] ^= 1
        assert not gemm.packed_ok(gemm_name, bad, k, cout), f"byte {pos} of the header"
    bad = wp.copy()
    bad[40] = 1
    x = np.zeros((1, 1, 1, k), np.int8 if gemm_name in ("igemm", "ibgemm") else np.float32)
    out = np.zeros((1, 1, 1, cout), np.float32)
    with pytest.raises(ValueError, match="not packed"):
        gemm.gemm_conv(gemm_name, x, bad, cout, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, out,
                       mult=np.ones(cout, np.float32), bias=np.zeros(cout, np.float32))

# ------------------------------------------------------------------------------ output transforms

LO_HI = [(-np.inf, np.inf), (0.0, np.inf), (0.0, 6.0), (-1.0, 1.0), (-np.inf, -0.0)]


def channel_params(rng, c):
    mult = rng.uniform(-0.1, 0.1, c).astype(np.float32)
    bias = rng.uniform(-3, 3, c).astype(np.float32)
    mult[::5] = -0.5       # with acc = 0 and bias -0.0: -0.0 results
    bias[::5] = -0.0
    return mult, bias


@pytest.mark.parametrize("name", ISAS)
@pytest.mark.parametrize("c", CHANNELS)
def test_to_float(name, c):
    rng = np.random.default_rng(c)
    acc = rng.integers(-2 ** 20, 2 ** 20, (13, c)).astype(np.int32)
    acc[::3] = 0
    acc[1, 0] = 2 ** 31 - 1  # rounds when converted to float32
    mult, bias = channel_params(rng, c)
    for lo, hi in LO_HI:
        out = np.full((13, c), np.nan, np.float32)
        used = transform.to_float_i32(acc, mult, bias, lo, hi, out, isa_num(name))
        assert used == expected_isa("transform_float", name)
        assert bitwise_equal(out, ref.clamp(acc.astype(np.float32) * mult + bias, lo, hi)), (lo, hi)

        facc = (acc * np.float32(0.001)).astype(np.float32)
        want = ref.clamp(facc * mult + bias, lo, hi)
        out = np.full((13, c), np.nan, np.float32)
        assert transform.to_float_f32(facc, mult, bias, lo, hi, out, isa_num(name)) == used
        assert bitwise_equal(out, want), (lo, hi)
        transform.to_float_f32(facc, mult, bias, lo, hi, facc, isa_num(name))  # in place
        assert bitwise_equal(facc, want), (lo, hi)


@pytest.mark.parametrize("name", ISAS)
def test_to_float_nan_and_inf(name):
    """NumPy's clip keeps NaN; inf * 0 is NaN; infinities clip to the bounds."""
    c = 19
    acc = np.zeros((3, c), np.int32)
    acc[1] = 7
    acc[2] = -7
    mult = np.full(c, np.inf, np.float32)
    mult[::2] = np.nan
    bias = np.zeros(c, np.float32)
    for lo, hi in LO_HI:
        out = np.empty((3, c), np.float32)
        transform.to_float_i32(acc, mult, bias, lo, hi, out, isa_num(name))
        with np.errstate(invalid="ignore"):
            want = ref.clamp(acc.astype(np.float32) * mult + bias, lo, hi)
        assert bitwise_equal(out, want), (lo, hi)


def ref_to_int8(acc, bias, mult, zp, qmin, qmax):
    return np.clip(np.rint((acc + bias).astype(np.float32) * mult) + zp, qmin, qmax).astype(np.int8)


@pytest.mark.parametrize("name", ISAS)
@pytest.mark.parametrize("c", CHANNELS)
def test_to_int8(name, c):
    rng = np.random.default_rng(100 + c)
    acc = rng.integers(-40000, 40000, (11, c)).astype(np.int32)
    acc[0] = np.arange(c) - c // 2                       # x.5 ties with mult 0.5: half to even
    acc[1] = rng.integers(-2 ** 30, 2 ** 30, c)          # far out of range: saturates
    acc[2, 0] = 2 ** 31 - 1                              # acc + bias wraps like NumPy's int32
    bias = rng.integers(-1000, 1000, c).astype(np.int32)
    bias[0] = 1
    mult = rng.uniform(0.0005, 0.01, c).astype(np.float32)
    mult[::3] = 0.5
    mult[1::4] = -0.003
    for zp, qmin, qmax in [(0, -128, 127), (-128, -128, 127), (127, -128, 127), (5, 5, 127),
                           (-3, -100, 100), (0, 0, 0)]:
        out = np.full((11, c), 99, np.int8)
        with np.errstate(over="ignore"):
            want = ref_to_int8(acc, bias, mult, zp, qmin, qmax)
        used = transform.to_int8(acc, bias, mult, zp, qmin, qmax, out, isa_num(name))
        assert used == expected_isa("transform", name)
        np.testing.assert_array_equal(out, want, err_msg=f"zp={zp} q=[{qmin}, {qmax}]")


@pytest.mark.parametrize("name", ISAS)
@pytest.mark.parametrize("c", CHANNELS)
def test_to_bits(name, c):
    rng = np.random.default_rng(200 + c)
    thr = rng.integers(-5, 5, c).astype(np.int32)
    thr[::7] = np.iinfo(np.int32).min
    thr[1::7] = np.iinfo(np.int32).max
    dir_ = rng.choice(np.array([-128, -1, 0, 1, 127], np.int8), c)
    acc = rng.integers(-6, 6, (9, c)).astype(np.int32)   # often equal to the threshold
    acc[0] = np.iinfo(np.int32).min
    acc[1] = np.iinfo(np.int32).max
    out = np.full((9, (c + 31) // 32), 0xDEADBEEF, np.uint32)
    used = transform.to_bits(acc, thr, dir_, out, isa_num(name))
    assert used == expected_isa("transform", name)
    bits = np.where(dir_ >= 0, acc < thr, acc > thr)
    np.testing.assert_array_equal(out, ref_pack_bits(bits))


def test_transform_rejects_bad_arguments():
    acc = np.zeros((4, 10), np.int32)
    f = np.zeros(10, np.float32)
    i = np.zeros(10, np.int32)
    bad = [
        lambda: transform.to_float_i32(acc, f[:9], f, 0, 1, np.zeros((4, 10), np.float32)),
        lambda: transform.to_float_i32(acc, f, f, 0, 1, np.zeros((4, 11), np.float32)),
        lambda: transform.to_float_f32(acc.astype(np.float32), f, f[:3], 0, 1, np.zeros((4, 10), np.float32)),
        lambda: transform.to_int8(acc, i, f, 0, -128, 127, np.zeros((3, 10), np.int8)),
        lambda: transform.to_int8(acc, i[:2], f, 0, -128, 127, np.zeros((4, 10), np.int8)),
        lambda: transform.to_int8(acc, i, f, 128, -128, 127, np.zeros((4, 10), np.int8)),
        lambda: transform.to_int8(acc, i, f, 0, 5, 4, np.zeros((4, 10), np.int8)),
        lambda: transform.to_int8(acc, i, f, 0, -129, 4, np.zeros((4, 10), np.int8)),
        lambda: transform.to_bits(acc, i, np.zeros(10, np.int8), np.zeros((4, 2), np.uint32)),
        lambda: transform.to_bits(acc, i, np.zeros(9, np.int8), np.zeros((4, 1), np.uint32)),
    ]
    for n, call in enumerate(bad):
        with pytest.raises(ValueError):
            call()
            pytest.fail(f"bad call {n} was accepted")


# ------------------------------------------------------------------------------ gemm_conv
# The fused driver (include/pybnn/gemmconv.h) must give exactly what im2col + GEMM + output
# transform give on whole matrices: blocks of rows (several per part on the 60x60 case),
# direct 1x1 layers, patch rows gathered by the GEMM itself (int8 on AVX-512) including K
# blocks that end inside a tap, and the few-rows cases where threads split output channels.

# (n, h, w, c, cout, kh, kw, sh, sw, dh, dw, pad_top, pad_left, hout, wout)
GC_SHAPES = [
    (1, 60, 60, 3, 16, 3, 3, 1, 1, 1, 1, 1, 1, 60, 60),   # K = 27: 2448-row blocks, 3600 rows
    (2, 9, 11, 35, 70, 3, 3, 2, 2, 1, 1, 1, 1, 5, 6),     # stride 2, batch 2, odd channels
    (1, 10, 10, 33, 33, 3, 3, 1, 1, 2, 2, 2, 2, 10, 10),  # dilation 2
    (3, 7, 7, 40, 129, 7, 7, 1, 1, 1, 1, 0, 0, 1, 1),     # kernel = image: 3 rows
    (2, 6, 5, 64, 65, 1, 1, 1, 1, 1, 1, 0, 0, 6, 5),      # 1x1: direct
    (1, 8, 8, 16, 32, 3, 1, 1, 2, 1, 1, 0, 0, 6, 4),      # 3x1 kernel, stride (1, 2), valid
    (1, 9, 9, 75, 40, 3, 3, 1, 1, 1, 1, 1, 1, 9, 9),      # K = 675: K blocks end inside taps; padded
    (1, 7, 7, 64, 160, 3, 3, 1, 1, 1, 1, 1, 1, 7, 7),     # 49 pixels: threads split channels
]
GC_GEMMS = {
    "sgemm": (lambda w: gemm.pack_float_weights(np.ascontiguousarray(w.T)), np.float32),
    "fbgemm": (gemm.pack_float_binary_weights, np.float32),
    "igemm": (lambda w: gemm.pack_int8_weights(np.clip(np.rint(w * 40), -127, 127).astype(np.int8)), np.int8),
    "ibgemm": (gemm.pack_int8_binary_weights, np.int8),
}


def unfused_conv(name, x, wp, shape, a_zp, isa, kind, params):
    n, h, w, c, cout, kh, kw, sh, sw, dh, dw, pt, pl, hout, wout = shape
    k = kh * kw * c
    cols = np.empty((n * hout * wout, k), x.dtype)
    if x.dtype == np.int8:
        gemm.im2col_i8(x, kh, kw, sh, sw, dh, dw, pt, pl, hout, wout, a_zp, cols)
        acc = np.empty((cols.shape[0], cout), np.int32)
        getattr(gemm, name)(cols, wp, k, cout, a_zp, acc, isa)
    else:
        gemm.im2col_f32(x, kh, kw, sh, sw, dh, dw, pt, pl, hout, wout, cols)
        acc = np.empty((cols.shape[0], cout), np.float32)
        getattr(gemm, name)(cols, wp, k, cout, acc, isa)
    if kind == "float":
        y = np.empty(acc.shape, np.float32)
        if acc.dtype == np.float32:
            transform.to_float_f32(acc, params["mult"], params["bias"], params["lo"], params["hi"], y, isa)
        else:
            transform.to_float_i32(acc + params["ibias"], params["mult"], params["bias"], params["lo"],
                                   params["hi"], y, isa)
    elif kind == "int8":
        y = np.empty(acc.shape, np.int8)
        transform.to_int8(acc, params["ibias"], params["mult"], params["zp"], params["qmin"], params["qmax"], y, isa)
    else:
        y = np.empty((acc.shape[0], (cout + 31) // 32), np.uint32)
        transform.to_bits(acc, params["thr"], params["dir"], y, isa)
    return y.reshape(n, hout, wout, -1)


@pytest.mark.parametrize("name", ISAS)
@pytest.mark.parametrize("gname", list(GC_GEMMS))
def test_gemm_conv_equals_unfused(name, gname):
    pack, dtype = GC_GEMMS[gname]
    rng = np.random.default_rng(11)
    isa = isa_num(name)
    for shape in GC_SHAPES:
        n, h, w, c, cout, kh, kw, sh, sw, dh, dw, pt, pl, hout, wout = shape
        wt = rng.standard_normal((cout, kh * kw * c)).astype(np.float32)
        wp = pack(wt)
        if dtype == np.int8:
            x = rng.integers(-128, 128, (n, h, w, c)).astype(np.int8)
            a_zp, kinds = 5, ["float", "int8", "bits"]
        else:
            x = rng.standard_normal((n, h, w, c)).astype(np.float32)
            a_zp, kinds = 0, ["float"]
        for kind in kinds:
            mult = rng.uniform(0.001, 0.01, cout).astype(np.float32)
            if kind == "float":
                params = dict(mult=mult, bias=rng.standard_normal(cout).astype(np.float32), lo=0.0, hi=np.inf)
                if dtype == np.int8:
                    params["ibias"] = rng.integers(-500, 500, cout).astype(np.int32)
                out = np.empty((n, hout, wout, cout), np.float32)
            elif kind == "int8":
                params = dict(mult=mult, ibias=rng.integers(-500, 500, cout).astype(np.int32), zp=-3, qmin=-100, qmax=127)
                out = np.empty((n, hout, wout, cout), np.int8)
            else:
                params = dict(thr=rng.integers(-300, 300, cout).astype(np.int32),
                              dir=rng.choice(np.array([-1, 1], np.int8), cout))
                out = np.empty((n, hout, wout, (cout + 31) // 32), np.uint32)
            want = unfused_conv(gname, x, wp, shape, a_zp, isa, kind, params)
            for threads in (1, 2, 3):
                out[...] = 0
                used = gemm.gemm_conv(gname, x, wp, cout, kh, kw, sh, sw, dh, dw, pt, pl, hout, wout, out,
                                      isa, threads, a_zp=a_zp, **params)
                assert used == expected_isa(gname, name)
                assert out.tobytes() == want.tobytes(), f"{shape} {kind} threads={threads}"


@pytest.mark.parametrize("name", ISAS)
@pytest.mark.parametrize("gname", ["igemm", "ibgemm"])
def test_gemm_conv_transform_extremes(name, gname):
    """The fused transforms (512-bit ones on AVX-512) on values that saturate, round to even
    at .5, overflow the float -> int conversion, or are NaN, against the standalone ones."""
    pack, _ = GC_GEMMS[gname]
    rng = np.random.default_rng(12)
    isa = isa_num(name)
    n, h, w, c, cout = 1, 6, 7, 20, 37
    shape = (n, h, w, c, cout, 3, 3, 1, 1, 1, 1, 1, 1, h, w)
    wp = pack(rng.standard_normal((cout, 9 * c)).astype(np.float32))
    x = rng.integers(-128, 128, (n, h, w, c)).astype(np.int8)
    special = np.array([np.inf, -np.inf, np.nan, 1e30, -1e30, 0.5, -0.5, 1.5, 0.0, -0.0, 1e-30, 3e4],
                       np.float32)
    mult = rng.uniform(-0.05, 0.05, cout).astype(np.float32)
    mult[:special.size] = special
    ibias = rng.integers(-2**31, 2**31, cout, dtype=np.int64).astype(np.int32)  # acc + ibias wraps
    for zp, qmin, qmax in [(-3, -100, 127), (127, -128, 127), (-128, -128, -128), (0, 5, 9)]:
        params = dict(mult=mult, ibias=ibias, zp=zp, qmin=qmin, qmax=qmax)
        want = unfused_conv(gname, x, wp, shape, 4, isa, "int8", params)
        out = np.empty((n, h, w, cout), np.int8)
        gemm.gemm_conv(gname, x, wp, cout, 3, 3, 1, 1, 1, 1, 1, 1, h, w, out, isa, 2, a_zp=4, **params)
        assert out.tobytes() == want.tobytes(), (zp, qmin, qmax)
    params = dict(mult=mult, bias=rng.standard_normal(cout).astype(np.float32), lo=-1.0, hi=2.0, ibias=ibias)
    want = unfused_conv(gname, x, wp, shape, 4, isa, "float", params)
    out = np.empty((n, h, w, cout), np.float32)
    gemm.gemm_conv(gname, x, wp, cout, 3, 3, 1, 1, 1, 1, 1, 1, h, w, out, isa, 2, a_zp=4, **params)
    assert out.tobytes() == want.tobytes()


def test_gemm_conv_rejects_bad_arguments():
    x = np.zeros((1, 5, 5, 3), np.float32)
    wp = gemm.pack_float_weights(np.ones((27, 4), np.float32))
    out = np.zeros((1, 5, 5, 4), np.float32)
    p = dict(mult=np.ones(4, np.float32), bias=np.zeros(4, np.float32))
    gemm.gemm_conv("sgemm", x, wp, 4, 3, 3, 1, 1, 1, 1, 1, 1, 5, 5, out, **p)  # the good call
    bad = [
        lambda: gemm.gemm_conv("xgemm", x, wp, 4, 3, 3, 1, 1, 1, 1, 1, 1, 5, 5, out, **p),
        lambda: gemm.gemm_conv("sgemm", x.astype(np.float64), wp, 4, 3, 3, 1, 1, 1, 1, 1, 1, 5, 5, out, **p),
        lambda: gemm.gemm_conv("igemm", x, wp, 4, 3, 3, 1, 1, 1, 1, 1, 1, 5, 5, out, **p),    # float x
        lambda: gemm.gemm_conv("sgemm", x, wp, 4, 1, 3, 1, 1, 1, 1, 1, 1, 5, 5, out, **p),    # K mismatch
        lambda: gemm.gemm_conv("fbgemm", x, wp, 4, 3, 3, 1, 1, 1, 1, 1, 1, 5, 5, out, **p),   # sgemm's packing
        lambda: gemm.gemm_conv("sgemm", x, wp[:-1], 4, 3, 3, 1, 1, 1, 1, 1, 1, 5, 5, out, **p),
        lambda: gemm.gemm_conv("sgemm", x, wp, 4, 3, 3, 1, 1, 1, 1, 1, 1, 5, 4, out, **p),    # out shape
        lambda: gemm.gemm_conv("sgemm", x, wp, 4, 3, 3, 0, 1, 1, 1, 1, 1, 5, 5, out, **p),    # stride 0
        lambda: gemm.gemm_conv("sgemm", x, wp, 4, 3, 3, 1, 1, 1, 1, 1, 1, 5, 5, out.astype(np.int8), **p),
        lambda: gemm.gemm_conv("sgemm", x, wp, 4, 3, 3, 1, 1, 1, 1, 1, 1, 5, 5, out, mult=p["mult"][:3],
                               bias=p["bias"]),
        lambda: gemm.gemm_conv("sgemm", x, wp, 4, 3, 3, 1, 1, 1, 1, 1, 1, 5, 5, out, **p,
                               ibias=np.zeros(4, np.int32)),                                # float acc
        lambda: gemm.gemm_conv("igemm", x.astype(np.int8), gemm.pack_int8_weights(np.ones((4, 27), np.int8)),
                               4, 3, 3, 1, 1, 1, 1, 1, 1, 5, 5, np.zeros((1, 5, 5, 4), np.int32)),
        lambda: gemm.gemm_conv("igemm", x.astype(np.int8), gemm.pack_int8_weights(np.ones((4, 27), np.int8)),
                               4, 3, 3, 1, 1, 1, 1, 1, 1, 5, 5, np.zeros((1, 5, 5, 4), np.int8), a_zp=300,
                               mult=p["mult"], ibias=np.zeros(4, np.int32)),
    ]
    for i, call in enumerate(bad):
        with pytest.raises(ValueError):
            call()
