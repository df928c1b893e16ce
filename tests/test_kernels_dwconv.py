"""The depthwise kernel (dwconv.h) against NumPy: float32 bit for bit (each tap's product and
running sum rounded in float32, taps in row-major order, out-of-image taps skipped), int8
exactly (x - zero point, int32 sums), on every ISA path.  Channel counts exercise every block
width of the vector paths (4, 2 and 1 registers of 4/8/16 lanes, then the per-value tail);
kernels with more than 64 taps take the chunked border path on every pixel."""
import numpy as np
import pytest

import pybnn
from pybnn._kernels import dwconv as kdw

# (h, w, kh, kw, stride, dilation, pads ((top, bottom), (left, right)))
GEOMETRY = [(7, 6, 3, 3, 1, 1, ((1, 1), (1, 1))), (9, 8, 3, 3, 2, 1, ((0, 1), (0, 1))),
            (5, 5, 1, 1, 1, 1, ((0, 0), (0, 0))), (8, 9, 5, 3, 2, 2, ((4, 4), (2, 2))),
            (11, 10, 9, 9, 1, 1, ((4, 4), (4, 4))), (3, 3, 3, 3, 1, 1, ((3, 3), (3, 3)))]
CHANNELS = [1, 5, 16, 37, 64, 83, 200]


def numpy_depthwise(x, w, kh, kw, s, d, pads, m, zero_point=None):
    """acc (N*HOUT*WOUT, C*M) in the kernel's order of operations."""
    n, h, wd, c = x.shape
    (pt, pb), (pl, pr) = pads
    hout, wout = (h + pt + pb - (kh - 1) * d - 1) // s + 1, (wd + pl + pr - (kw - 1) * d - 1) // s + 1
    xv = np.repeat(x.astype(np.int32) - zero_point if zero_point is not None else x, m, axis=3)
    acc = np.zeros((n, hout, wout, c * m), w.dtype)
    seen = np.zeros((hout, wout), bool)
    for i in range(kh):
        for k in range(kw):
            for oh in range(hout):
                for ow in range(wout):
                    ih, iw = oh * s - pt + i * d, ow * s - pl + k * d
                    if 0 <= ih < h and 0 <= iw < wd:
                        prod = xv[:, ih, iw] * w[i * kw + k]
                        acc[:, oh, ow] = acc[:, oh, ow] + prod if seen[oh, ow] else prod
                        seen[oh, ow] = True
    return acc.reshape(-1, c * m), hout, wout


@pytest.mark.parametrize("geometry", GEOMETRY, ids=lambda g: "h{}w{}k{}x{}s{}d{}".format(*g[:6]))
@pytest.mark.parametrize("int8", [False, True], ids=["float32", "int8"])
def test_depthwise_matches_numpy(isa, geometry, int8):
    h, wd, kh, kw, s, d, pads = geometry
    rng = np.random.default_rng(h * kh + int8)
    for c in CHANNELS:
        for m in ((1, 2) if c < 40 else (1,)):
            n = 2 if c % 2 else 1
            if int8:
                x = rng.integers(-128, 128, (n, h, wd, c), dtype=np.int8)
                w = rng.integers(-128, 128, (kh * kw, c * m)).astype(np.int32)
                zp = int(rng.integers(-128, 128))
            else:
                x = rng.standard_normal((n, h, wd, c)).astype(np.float32)
                w = rng.standard_normal((kh * kw, c * m)).astype(np.float32)
                zp = None
            want, hout, wout = numpy_depthwise(x, w, kh, kw, s, d, pads, m, zp)
            acc = np.full_like(want, 7)
            used = kdw.depthwise(x, w, kh, kw, s, s, d, d, pads[0][0], pads[1][0], hout, wout, zp or 0, acc,
                                 pybnn.cpu.active(), 1 + c % 2)
            np.testing.assert_array_equal(acc.view(np.uint32), want.view(np.uint32), err_msg=f"c={c} m={m}")
            assert pybnn.cpu.ISAS[used] in pybnn.cpu.available()


def test_fused_transform_matches_accumulators_then_reference_transform(isa):
    """DWConv (what layers run: the transform applied per block of pixels inside the kernel)
    equals the accumulators of `depthwise` transformed by the NumPy reference, for every
    output kind, channel counts around the bit-word size, several blocks per part and 1-3
    threads."""
    from pybnn import reference as ref
    rng = np.random.default_rng(7)
    h, wd, kh, kw, s, d, pads = 23, 19, 3, 3, 2, 1, ((1, 1), (1, 1))
    for c, m in ((5, 1), (33, 1), (200, 1), (16, 3)):
        cm = c * m
        for int8 in (False, True):
            if int8:
                x = rng.integers(-128, 128, (2, h, wd, c), dtype=np.int8)
                w = rng.integers(-128, 128, (kh * kw, cm)).astype(np.int32)
                zp = -7
            else:
                x = rng.standard_normal((2, h, wd, c)).astype(np.float32)
                w = rng.standard_normal((kh * kw, cm)).astype(np.float32)
                zp = 0
            acc, hout, wout = numpy_depthwise(x, w, kh, kw, s, d, pads, m, zp if int8 else None)
            mult = rng.uniform(0.5, 2, cm).astype(np.float32) * (1e-3 if int8 else 1)
            bias = rng.standard_normal(cm).astype(np.float32)
            ibias = rng.integers(-500, 500, cm).astype(np.int32)
            cases = [(np.float32, dict(mult=mult, bias=bias, lo=-0.5, hi=np.float32(np.inf)),
                      ref.to_float(acc + (ibias if int8 else 0), mult, bias, -0.5, np.inf))]
            if int8:
                thr = rng.integers(-3000, 3000, cm).astype(np.int32)
                dirs = rng.choice(np.array([-1, 1], np.int8), cm)
                cases[0][1]["ibias"] = ibias
                cases += [(np.int8, dict(mult=mult, ibias=ibias, zp=3, qmin=-100, qmax=127),
                           ref.requantize(acc, ibias, mult, 3, -100, 127)),
                          (np.uint32, dict(thr=thr, dir=dirs), ref.pack_bits(ref.threshold_negative(acc, thr, dirs)))]
            for dtype, params, want in cases:
                conv = kdw.DWConv(w, h, wd, c, kh, kw, s, s, d, d, pads[0][0], pads[1][0], hout, wout, dtype,
                                  a_zp=zp, **params)
                for threads in (1, 2, 3):
                    y, used = conv(x, pybnn.cpu.active(), threads)
                    assert pybnn.cpu.ISAS[used] in pybnn.cpu.available()
                    np.testing.assert_array_equal(y.reshape(want.shape).view(want.dtype), want,
                                                  err_msg=f"c={c} m={m} {np.dtype(dtype)} threads={threads}")


def test_fused_call_checks_its_arguments():
    w = np.ones((9, 8), np.float32)
    ones = dict(mult=np.ones(8, np.float32), bias=np.zeros(8, np.float32))
    conv = kdw.DWConv(w, 5, 5, 8, 3, 3, 1, 1, 1, 1, 1, 1, 5, 5, np.float32, **ones)
    with pytest.raises(ValueError, match=r"x must be a C-contiguous float32 array of shape \(N, 5, 5, 8\)"):
        conv(np.ones((1, 5, 5, 7), np.float32), pybnn.cpu.active(), 1)
    with pytest.raises(ValueError, match="out must be"):
        conv(np.ones((1, 5, 5, 8), np.float32), pybnn.cpu.active(), 1, np.empty((1, 5, 5, 8), np.int8))
    with pytest.raises(ValueError, match="out must be float32"):
        kdw.DWConv(w, 5, 5, 8, 3, 3, 1, 1, 1, 1, 1, 1, 5, 5, np.int8, mult=ones["mult"])
    with pytest.raises(ValueError, match="multiple of C"):
        kdw.DWConv(w, 5, 5, 3, 3, 3, 1, 1, 1, 1, 1, 1, 5, 5, np.float32, **ones)
    with pytest.raises(ValueError, match="kernel"):
        kdw.DWConv(np.ones((4, 8), np.float32), 5, 5, 8, 3, 3, 1, 1, 1, 1, 1, 1, 5, 5, np.float32, **ones)
