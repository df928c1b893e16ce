"""Float32 and int8 max/average pooling kernels against the NumPy reference, on every
instruction-set path this machine has."""
import itertools

import numpy as np
import pytest

import pybnn.cpu
from pybnn import reference as ref
from pybnn._kernels import pool

ISAS = pybnn.cpu.available()
IMPLEMENTED = {"scalar", "avx2", "avx512", "neon"}

# (h, w, c, kh, kw, sh, sw, pt, pb, pl, pr): odd sizes, channel counts around vector widths,
# windows cut by padding on every side, windows larger than the stride and 1x1.
CASES = [(h, w, c, k, k2, s, s2, pt, pb, pl, pr)
         for (h, w), c, (k, k2), (s, s2), (pt, pb, pl, pr) in itertools.product(
             [(1, 1), (5, 7), (8, 3)], [1, 3, 17, 32, 65, 130], [(1, 1), (2, 2), (3, 2)], [(1, 1), (2, 1), (2, 3)],
             [(0, 0, 0, 0), (1, 1, 1, 0), (0, 1, 1, 1)])
         if pt < k and pb < k and pl < k2 and pr < k2 and h + pt + pb >= k and w + pl + pr >= k2]


def out_size(size, k, s, p0, p1):
    return (size + p0 + p1 - k) // s + 1


def run(op, x, k, s, pads, isa, threads=1):
    (pt, pb), (pl, pr) = pads
    hout, wout = out_size(x.shape[1], k[0], s[0], pt, pb), out_size(x.shape[2], k[1], s[1], pl, pr)
    out = np.empty((x.shape[0], hout, wout, x.shape[3]), x.dtype)
    used = pool.pool2d(op, x, *k, *s, pt, pl, hout, wout, out, pybnn.cpu.ISAS.index(isa), threads)
    expected = max(i for i, n in enumerate(pybnn.cpu.ISAS)
                   if n in IMPLEMENTED and n in ISAS and i <= pybnn.cpu.ISAS.index(isa))
    assert used == expected
    return out


def sample(dtype, shape, rng):
    if dtype == np.int8:
        x = rng.integers(-128, 128, shape).astype(np.int8)
        x.flat[:: 7] = -128   # extremes: -128 * window must not overflow or mis-round
        x.flat[3:: 11] = 127
        return x
    return (rng.standard_normal(shape) * 10).astype(np.float32)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [np.float32, np.int8])
@pytest.mark.parametrize("op", ["max", "avg"])
def test_pool_matches_reference(isa, dtype, op):
    rng = np.random.default_rng(11)
    for h, w, c, kh, kw, sh, sw, pt, pb, pl, pr in CASES:
        x = sample(dtype, (2, h, w, c), rng)
        pads = ((pt, pb), (pl, pr))
        got = run(op, x, (kh, kw), (sh, sw), pads, isa)
        fn = ref.max_pool if op == "max" else ref.avg_pool
        want = fn(x, (kh, kw), (sh, sw), pads)
        if dtype == np.float32 and op == "avg":
            # float64 sums in window order vs NumPy's order: equal unless a float64 sum rounds
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
        else:
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("isa", ISAS)
def test_float_max_propagates_nan_and_avg_rounds_half_away(isa):
    x = np.zeros((1, 2, 2, 70), np.float32)  # a full 64-channel block and a tail
    x[0, 1, 1, :] = np.nan
    x[0, 0, 0, 3] = 5.0
    got = run("max", x, (2, 2), (1, 1), ((0, 0), (0, 0)), isa)
    assert np.isnan(got).all()  # NaN anywhere in the window wins, whichever position
    x = np.array([1, 2, -1, -2, 3, 4, -128, -127, 126, 127], np.int8).reshape(1, 5, 2, 1)
    got = run("avg", x, (1, 2), (1, 2), ((0, 0), (0, 0)), isa)
    np.testing.assert_array_equal(got.ravel(), [2, -2, 4, -128, 127])


@pytest.mark.parametrize("op", ["max", "avg"])
def test_threads_give_identical_results(op):
    rng = np.random.default_rng(3)
    x = sample(np.float32, (3, 30, 30, 70), rng)
    one = run(op, x, (3, 3), (2, 2), ((1, 1), (1, 1)), ISAS[0], 1)
    for threads in (2, 3, 7):
        np.testing.assert_array_equal(run(op, x, (3, 3), (2, 2), ((1, 1), (1, 1)), ISAS[0], threads), one)


def test_bad_arguments_raise():
    x = np.zeros((1, 4, 4, 3), np.float32)
    out = np.empty((1, 2, 2, 3), np.float32)
    with pytest.raises(ValueError, match="op must be"):
        pool.pool2d("sum", x, 2, 2, 2, 2, 0, 0, 2, 2, out)
    with pytest.raises(ValueError, match="both be float32 or both int8"):
        pool.pool2d("max", x, 2, 2, 2, 2, 0, 0, 2, 2, out.astype(np.int8))
    with pytest.raises(ValueError, match="out has shape"):
        pool.pool2d("max", x, 2, 2, 2, 2, 0, 0, 2, 2, np.empty((1, 2, 2, 4), np.float32))
    with pytest.raises(ValueError, match="entirely outside"):
        pool.pool2d("max", x, 2, 2, 2, 2, 2, 0, 2, 2, out)
    with pytest.raises(ValueError, match="C-contiguous"):
        pool.pool2d("max", np.zeros((1, 4, 8, 3), np.float32)[:, :, ::2], 2, 2, 2, 2, 0, 0, 2, 2, out)
