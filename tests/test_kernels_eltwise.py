"""The per-channel float32 kernel (eltwise.h) against NumPy's float32 operations in the same
order: bit for bit on every ISA path, every combination of steps, awkward channel counts,
special values, threads and in-place use."""
import itertools

import numpy as np
import pytest

import pybnn
from pybnn._kernels import eltwise as kew

SPECIAL = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45, -1e-45, 1e-40, 3.4e38, -2.5], np.float32)


def numpy_steps(x, sub, mul, add, res, relu):
    t = x.copy()
    with np.errstate(all="ignore"):
        if sub is not None:
            t = (t - sub).astype(np.float32)
        if mul is not None:
            t = (t * mul).astype(np.float32)
        if add is not None:
            t = (t + add).astype(np.float32)
        if res is not None:
            t = (t + res).astype(np.float32)
        if relu:
            t = (t * (t >= 0)).astype(np.float32)
    return t


def data(rows, c, rng):
    x = rng.standard_normal((rows, c)).astype(np.float32) * 3
    x.flat[::5] = np.resize(SPECIAL, x.flat[::5].shape)
    return x


@pytest.mark.parametrize("c", [1, 3, 15, 16, 17, 63, 64, 65, 130])
def test_every_step_combination_is_numpy_bit_for_bit(isa, c):
    rng = np.random.default_rng(c)
    x, res = data(7, c, rng), data(7, c, rng)
    vec = [data(1, c, rng)[0] for _ in range(3)]
    for flags in itertools.product([False, True], repeat=5):
        sub, mul, add = (v if f else None for v, f in zip(vec, flags[:3]))
        r = res if flags[3] else None
        y = np.empty_like(x)
        with pybnn.cpu.use_isa(isa):
            used = kew.channelwise(x, y, sub, mul, add, r, flags[4], pybnn.cpu.active(), 1)
        want = numpy_steps(x, sub, mul, add, r, flags[4])
        np.testing.assert_array_equal(y.view(np.uint32), want.view(np.uint32), err_msg=str(flags))
        assert pybnn.cpu.ISAS[used] in pybnn.cpu.available()


def test_threads_in_place_and_empty():
    rng = np.random.default_rng(0)
    x, res = data(3000, 67, rng), data(3000, 67, rng)
    mul, add = data(1, 67, rng)[0], data(1, 67, rng)[0]
    want = numpy_steps(x, None, mul, add, res, True)
    for threads in (1, 2, 3):
        y = np.empty_like(x)
        kew.channelwise(x, y, None, mul, add, res, True, pybnn.cpu.active(), threads)
        np.testing.assert_array_equal(y.view(np.uint32), want.view(np.uint32))
    y = x.copy()
    kew.channelwise(y, y, None, mul, add, res, True, pybnn.cpu.active(), 2)  # y is x
    np.testing.assert_array_equal(y.view(np.uint32), want.view(np.uint32))
    r = res.copy()
    kew.channelwise(x, r, None, mul, add, r, True, pybnn.cpu.active(), 2)    # y is res
    np.testing.assert_array_equal(r.view(np.uint32), want.view(np.uint32))
    empty = np.empty((0, 5), np.float32)
    kew.channelwise(empty, empty.copy(), None, None, None, None, False, 0, 1)


def test_bad_arguments_raise():
    x = np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match="y has shape"):
        kew.channelwise(x, np.zeros((4, 6), np.float32))
    with pytest.raises(ValueError, match="res has shape"):
        kew.channelwise(x, x.copy(), res=np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="mul has 4 values"):
        kew.channelwise(x, x.copy(), mul=np.zeros(4, np.float32))
    with pytest.raises(ValueError):
        kew.channelwise(x, x.copy(), add=np.zeros(5, np.float64))
    with pytest.raises(ValueError, match="threads"):
        kew.channelwise(x, x.copy(), threads=0)
