"""Multi-threaded kernels: every thread count gives bit-identical results (floats included),
more threads than cores work, and kernels release the GIL so Python threads can predict
concurrently.  No timing is asserted anywhere."""
import multiprocessing
import os
import signal
import threading
import time

import numpy as np
import pytest

import pybnn
from pybnn import layers as L
from conftest import python_command, subprocess_env
from pybnn._kernels import _cpu, bconv, bitpack, gemm, transform

THREADS = [1, 2, 3, 5]  # 5: more threads than this machine's cores must work too


def make_input(kind, shape, rng):
    if kind == "int8":
        return rng.integers(-128, 128, shape).astype(np.int8)
    x = rng.standard_normal(shape).astype(np.float32)
    x.flat[::7] = 0.0
    return x


def first_layer(kind, shape):
    if kind == "int8":
        return L.Input(shape, dtype="int8", scale=0.05, zero_point=-3)
    return L.Input(shape)


def same_for_every_thread_count(layers, x, seed=0):
    """Predicts x with each thread count; asserts the outputs are bit-identical."""
    model = pybnn.Sequential(layers).randomize(seed)
    results = []
    for t in THREADS:
        with pybnn.cpu.use_threads(t):
            results.append(model.predict(x))
    for t, y in zip(THREADS[1:], results[1:]):
        np.testing.assert_array_equal(y, results[0], err_msg=f"{t} threads differ from 1 thread")
    return model, results[0]


CONV_KINDS = {
    "Conv2D": (lambda f, k, s, p: L.Conv2D(f, k, strides=s, padding=p), "float32"),
    "FloatBinaryConv2D": (lambda f, k, s, p: L.FloatBinaryConv2D(f, k, strides=s, padding=p), "float32"),
    "BinaryConv2D-pad0": (lambda f, k, s, p: L.BinaryConv2D(f, k, strides=s, padding=p, pad_value=0,
                                                             use_scale=True, use_bias=True), "float32"),
    "BinaryConv2D-pad-1": (lambda f, k, s, p: L.BinaryConv2D(f, k, strides=s, padding=p, pad_value=-1), "float32"),
    "BinaryConv2D-pad+1": (lambda f, k, s, p: L.BinaryConv2D(f, k, strides=s, padding=p, pad_value=1), "float32"),
    "Int8Conv2D": (lambda f, k, s, p: L.Int8Conv2D(f, k, strides=s, padding=p), "int8"),
    "Int8Conv2D-int8": (lambda f, k, s, p: L.Int8Conv2D(f, k, strides=s, padding=p, output="int8",
                                                        output_scale=0.5, output_zero_point=3), "int8"),
    "Int8BinaryConv2D": (lambda f, k, s, p: L.Int8BinaryConv2D(f, k, strides=s, padding=p), "int8"),
}

# (batch, h, w, c, filters, kernel, stride, padding): the first ones carry enough work to be
# split (thousands of output pixels or large K x filters); the others are awkward: a 1x1
# output (kernel = image, so fewer rows than threads), batch 3, odd channel counts.
CONV_SHAPES = [
    (1, 20, 20, 64, 64, 3, 1, "same"),
    (3, 9, 11, 35, 70, 3, 2, "same"),
    (1, 13, 13, 250, 200, 3, 2, "same"),  # 49 pixels: 8 tiles of 6 rows + 1 row (its channels split)
    (2, 7, 7, 128, 96, 3, 1, "same"),     # 98 pixels over the batch: 16 tiles + 2 rows
    (3, 7, 7, 96, 130, 7, 1, "valid"),   # 1x1 output: M = batch = 3
    (1, 5, 5, 200, 257, 5, 1, "valid"),  # 1x1 output, batch 1: channel split
    (1, 3, 3, 1, 1, 3, 1, "same"),       # tiny: stays on one thread
]


@pytest.mark.parametrize("kind", list(CONV_KINDS))
def test_conv_kinds_identical_for_every_thread_count(isa, kind):
    make, in_kind = CONV_KINDS[kind]
    rng = np.random.default_rng(0)
    for i, (n, h, w, c, f, k, s, pad) in enumerate(CONV_SHAPES):
        x = make_input(in_kind, (n, h, w, c), rng)
        same_for_every_thread_count([first_layer(in_kind, (h, w, c)), make(f, k, s, pad)], x, seed=i)


def test_binary_conv_folded_to_bits_identical(isa):
    """Conv + BN + Sign folds into a conv writing packed bits (to_bits transform)."""
    rng = np.random.default_rng(1)
    for n, h, w, c, f, k, s, pad in CONV_SHAPES:
        layers = [L.Input((h, w, c)), L.BinaryConv2D(f, k, strides=s, padding=pad), L.BatchNormalization(),
                  L.Sign(), L.BinaryConv2D(33, 1)]
        same_for_every_thread_count(layers, make_input("float32", (n, h, w, c), rng))


DENSE_KINDS = {
    "Dense": (lambda u: L.Dense(u), "float32"),
    "FloatBinaryDense": (lambda u: L.FloatBinaryDense(u), "float32"),
    "BinaryDense": (lambda u: L.BinaryDense(u, use_scale=True, use_bias=True), "float32"),
    "Int8Dense": (lambda u: L.Int8Dense(u), "int8"),
    "Int8Dense-int8": (lambda u: L.Int8Dense(u, output="int8", output_scale=0.7, output_zero_point=-5), "int8"),
    "Int8BinaryDense": (lambda u: L.Int8BinaryDense(u), "int8"),
}

# (batch, in, units): batch 1 and 3 (fewer rows than threads: output channels are split,
# including a last partial group), a larger batch (rows are split), and a tiny one.
DENSE_SHAPES = [(1, 2048, 1003), (3, 1500, 517), (40, 700, 300), (1, 4096, 4096), (2, 10, 3)]


@pytest.mark.parametrize("kind", list(DENSE_KINDS))
def test_dense_kinds_identical_for_every_thread_count(isa, kind):
    make, in_kind = DENSE_KINDS[kind]
    rng = np.random.default_rng(2)
    for i, (n, c, units) in enumerate(DENSE_SHAPES):
        x = make_input(in_kind, (n, c), rng)
        same_for_every_thread_count([first_layer(in_kind, (c,)), make(units)], x, seed=i)


def test_binary_dense_after_flatten_identical(isa):
    rng = np.random.default_rng(3)
    for n in (1, 3):
        layers = [L.Input((12, 12, 96)), L.Sign(), L.Flatten(), L.BinaryDense(515)]
        same_for_every_thread_count(layers, make_input("float32", (n, 12, 12, 96), rng))


@pytest.mark.parametrize("in_kind", ["float32", "int8"])
def test_sign_and_binary_max_pool_identical(isa, in_kind):
    rng = np.random.default_rng(4)
    for n, h, w, c, p, s, pad in [(2, 64, 64, 96, 2, 2, "valid"), (3, 33, 31, 65, 3, 2, "same"),
                                  (1, 1, 1, 5, 1, 1, "valid"), (3, 2, 2, 40, 2, 1, "same")]:
        x = make_input(in_kind, (n, h, w, c), rng)
        layers = [first_layer(in_kind, (h, w, c)), L.Sign(), L.MaxPool2D(p, s, pad)]
        model, y = same_for_every_thread_count(layers, x)
        np.testing.assert_array_equal(y, model.predict_reference(x, folded=True))


# ---------------------------------------------------------------- kernels called directly


def isa_number():
    return pybnn.cpu.active()


def each_thread_count(run):
    """run(threads) -> output array; asserts identical outputs for every thread count."""
    first = run(1).copy()
    for t in THREADS[1:]:
        np.testing.assert_array_equal(run(t), first, err_msg=f"{t} threads differ from 1 thread")
    return first


def test_bitpack_and_transform_kernels_identical(isa):
    rng = np.random.default_rng(5)
    for m, c in [(50000, 64), (3, 70000), (7, 33), (1, 1)]:
        x = rng.standard_normal((m, c)).astype(np.float32)
        thr = rng.standard_normal(c).astype(np.float32)
        d = rng.choice(np.array([-1, 1], np.int8), c)
        out = np.empty((m, (c + 31) // 32), np.uint32)
        bits = each_thread_count(lambda t: (bitpack.pack_float(x, out, isa=isa_number(), threads=t), out)[1])
        each_thread_count(lambda t: (bitpack.pack_float(x, out, thr, d, isa_number(), t), out)[1])
        q = rng.integers(-128, 128, (m, c)).astype(np.int8)
        ithr = rng.integers(-130, 130, c).astype(np.int32)
        each_thread_count(lambda t: (bitpack.pack_int8(q, out, ithr, d, isa_number(), t), out)[1])
        f = np.empty((m, c), np.float32)
        each_thread_count(lambda t: (bitpack.unpack(bits, c, f, isa_number(), t), f)[1])

        acc = rng.integers(-5000, 5000, (m, c)).astype(np.int32)
        mult = rng.standard_normal(c).astype(np.float32)
        bias = rng.standard_normal(c).astype(np.float32)
        each_thread_count(lambda t: (transform.to_float_i32(acc, mult, bias, 0.0, np.inf, f, isa_number(), t), f)[1])
        facc = rng.standard_normal((m, c)).astype(np.float32)
        each_thread_count(lambda t: (transform.to_float_f32(facc, mult, bias, -np.inf, np.inf, f, isa_number(), t), f)[1])
        o8 = np.empty((m, c), np.int8)
        each_thread_count(lambda t: (transform.to_int8(acc, ithr, mult, 3, -128, 127, o8, isa_number(), t), o8)[1])
        each_thread_count(lambda t: (transform.to_bits(acc, ithr, d, out, isa_number(), t), out)[1])


def test_im2col_and_gemm_kernels_identical(isa):
    rng = np.random.default_rng(6)
    for n, h, w, c, k, s, cout in [(2, 30, 30, 48, 3, 1, 36), (3, 5, 5, 40, 5, 1, 1003), (1, 2, 3, 3, 1, 2, 5)]:
        hout, wout = (h - k) // s + 1, (w - k) // s + 1
        x = rng.standard_normal((n, h, w, c)).astype(np.float32)
        cols = np.empty((n * hout * wout, k * k * c), np.float32)
        cols = each_thread_count(lambda t: (gemm.im2col_f32(x, k, k, s, s, 1, 1, 0, 0, hout, wout, cols, t), cols)[1])
        xi = rng.integers(-128, 128, (n, h, w, c)).astype(np.int8)
        icols = np.empty(cols.shape, np.int8)
        icols = each_thread_count(lambda t: (gemm.im2col_i8(xi, k, k, s, s, 1, 1, 0, 0, hout, wout, 7, icols, t), icols)[1])
        kk = k * k * c
        wf = rng.standard_normal((cout, kk)).astype(np.float32)
        wfb = gemm.pack_float_binary_weights(wf)
        wi = gemm.pack_int8_weights(rng.integers(-127, 128, (cout, kk)).astype(np.int8))
        facc = np.empty((cols.shape[0], cout), np.float32)
        iacc = np.empty((cols.shape[0], cout), np.int32)
        each_thread_count(lambda t: (gemm.fbgemm(cols, wfb, kk, cout, facc, isa_number(), t), facc)[1])
        wib = gemm.pack_int8_binary_weights(rng.standard_normal((cout, kk)).astype(np.float32))
        each_thread_count(lambda t: (gemm.ibgemm(icols, wib, kk, cout, 7, iacc, isa_number(), t), iacc)[1])
        each_thread_count(lambda t: (gemm.igemm(icols, wi, kk, cout, 7, iacc, isa_number(), t), iacc)[1])


def test_kernels_reject_bad_thread_counts():
    x = np.zeros((1, 1, 1, 1), np.uint32)
    with pytest.raises(ValueError, match="threads"):
        bconv.bmaxpool2d(x, 1, 1, 1, 1, 0, 0, 1, 1, np.zeros_like(x), 0, 0)
    with pytest.raises(ValueError, match="threads"):
        bitpack.unpack(np.zeros((1, 1), np.uint32), 3, np.zeros((1, 3), np.float32), 0, -1)
    with pytest.raises(ValueError, match="threads"):
        transform.to_bits(np.zeros((1, 3), np.int32), np.zeros(3, np.int32), np.ones(3, np.int8),
                          np.zeros((1, 1), np.uint32), 0, 0)
    with pytest.raises(ValueError, match="threads"):
        gemm.im2col_f32(np.zeros((1, 2, 2, 1), np.float32), 1, 1, 1, 1, 1, 1, 0, 0, 2, 2,
                        np.zeros((4, 1), np.float32), 0)


def test_work_threshold_keeps_small_problems_on_one_thread():
    grain = _cpu.par_grain()
    assert _cpu.par_parts(8, 10**6, grain) == 1          # below the threshold
    assert _cpu.par_parts(8, 10**6, 2 * grain - 1) == 1
    assert _cpu.par_parts(8, 10**6, 2 * grain) == 2
    assert _cpu.par_parts(8, 10**6, 100 * grain) == 8    # capped by threads
    assert _cpu.par_parts(8, 3, 100 * grain) == 3        # ... and by indivisible units
    assert _cpu.par_parts(1, 10**6, 100 * grain) == 1


# ---------------------------------------------------------------- the worker pool


def run_at_once(body, n):
    """Runs body(0) .. body(n-1) on n Python threads started together; re-raises the first
    exception one of them raised."""
    errors, start = [], threading.Barrier(n)

    def run(i):
        try:
            start.wait()
            body(i)
        except Exception as e:  # reported from the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def _os_threads():
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("Threads:")))


def _bconv_sum(threads):
    model = pybnn.Sequential([L.Input((12, 12, 70)), L.Sign(), L.BinaryConv2D(96, 3, padding="same")])
    x = np.linspace(-1, 1, 12 * 12 * 70, dtype=np.float32).reshape(1, 12, 12, 70)
    with pybnn.cpu.use_threads(threads):
        return float(model.randomize(2).predict(x).astype(np.float64).sum())


POOL_CHILD = """
import sys
sys.path.insert(0, {path!r})
import test_threads as t
start = t._os_threads()
for threads in (2, 5, 3):
    t._igemm_sum(threads), t._bconv_sum(threads)
print(t._os_threads() - start, t._cpu.pool_workers())
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc to count threads")
def test_one_pool_of_workers_for_every_kernel_module(tmp_path):
    """Kernels of every module share the process's one pool (threads.h, held by _cpu): in a
    fresh process, parallel GEMMs and binary convolutions (with their bit-packing and
    transforms) on up to 5 threads start exactly the pool's workers, 4, and no more."""
    import subprocess
    code = POOL_CHILD.format(path=os.path.dirname(os.path.abspath(__file__)))
    # cwd: a directory without a pybnn source tree, which would shadow the pybnn under test
    out = subprocess.run(python_command() + ["-c", code], capture_output=True, text=True, timeout=600,
                         env=subprocess_env(), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["4", "4"]


def test_pool_wakes_sleeping_workers():
    """Workers spin briefly after a job, then sleep: calls spaced further apart than the spin
    wake them (and a caller whose part ends long before a worker's sleeps too)."""
    want = _igemm_sum(1)
    for threads in (2, 3, 5):
        for _ in range(3):
            time.sleep(0.005)  # > the pool's 0.3 ms spin: every worker is asleep
            assert _igemm_sum(threads) == want


def test_idle_workers_sleep():
    """After a parallel kernel the workers spin for 0.3 ms, then sleep: a process waiting
    for its next input does not burn cores (measured as the process's CPU time over 0.3 s
    of sleep; spinning workers would use about 0.3 s each)."""
    _igemm_sum(3)
    time.sleep(0.01)
    cpu = time.process_time()
    time.sleep(0.3)
    assert time.process_time() - cpu < 0.05


def test_concurrent_callers_share_the_pool():
    """Python threads calling parallel kernels at once: one at a time gets the pool, the
    others run their parts themselves; every result is the one-thread result."""
    want_gemm, want_conv = _igemm_sum(1), _bconv_sum(1)

    def worker(i):
        for rep in range(6):
            n = 2 + (i + rep) % 3
            assert _igemm_sum(n) == want_gemm
            assert _bconv_sum(n) == want_conv

    run_at_once(worker, 4)


# ---------------------------------------------------------------- Python threads


def test_two_python_threads_predict_concurrently_on_one_model():
    rng = np.random.default_rng(7)
    model = pybnn.Sequential([L.Input((16, 16, 40)), L.Sign(), L.BinaryConv2D(64, 3, padding="same"),
                              L.BatchNormalization(), L.Sign(), L.MaxPool2D(2), L.Flatten(),
                              L.FloatBinaryDense(48), L.BatchNormalization(), L.Softmax()]).randomize(1)
    inputs = [make_input("float32", (int(rng.integers(1, 4)), 16, 16, 40), rng) for _ in range(16)]
    with pybnn.cpu.use_threads(1):
        want = [model.predict(x) for x in inputs]

    def worker(offset):
        for rep in range(4):
            for i in range(offset, len(inputs), 2):
                np.testing.assert_array_equal(model.predict(inputs[i]), want[i])

    run_at_once(worker, 2)


def test_use_threads_is_per_python_thread():
    """Two models with different num_threads predicting at once do not change each other's
    (or the process-wide) thread count."""
    before = pybnn.cpu.num_threads()
    seen, start = {}, threading.Barrier(2)

    def worker(n):
        start.wait()
        with pybnn.cpu.use_threads(n):
            start.wait()  # both blocks are open now
            seen[n] = pybnn.cpu.num_threads()
            start.wait()

    threads = [threading.Thread(target=worker, args=(n,)) for n in (1, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {1: 1, 3: 3}
    assert pybnn.cpu.num_threads() == before


def _predict_in_child(queue):
    model = pybnn.Sequential([L.Input((3000,)), L.Sign(), L.BinaryDense(4096)]).randomize(0)
    x = np.linspace(-1, 1, 6000, dtype=np.float32).reshape(2, 3000)
    queue.put(model.predict(x).sum())


def _igemm_sum(threads):
    rng = np.random.default_rng(3)
    a = rng.integers(-128, 128, (512, 512)).astype(np.int8)
    wp = gemm.pack_int8_weights(rng.integers(-127, 128, (256, 512)).astype(np.int8))
    out = np.empty((512, 256), np.int32)
    gemm.igemm(a, wp, 512, 256, 0, out, 0, threads)
    return int(out.astype(np.int64).sum())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_kernel_asked_for_threads_runs_serially():
    """The C side's own guard (threads.h): a kernel asked for 2 threads in a child forked
    after the parent started its worker threads runs its parts on one thread (the child has
    none of them).  A bare os.fork and a pipe: the child starts no thread of its own (which
    qemu-user cannot emulate after a fork)."""
    want = _igemm_sum(2)  # parallel kernels in this process
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the sum, exit without running pytest's teardown
        try:
            os.write(write_end, str(_igemm_sum(2)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + 120
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("child process hung after fork")
        time.sleep(0.05)
    with os.fdopen(read_end) as f:
        assert f.read() == str(want)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_after_parallel_kernels_does_not_hang():
    """A child forked after the parent ran parallel kernels has none of its worker threads;
    pybnn runs one thread there.  The child must finish (a hang fails the join)."""
    with pybnn.cpu.use_threads(2):
        _predict_in_child(multiprocessing.Queue())  # run parallel kernels in this process
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_predict_in_child, args=(queue,))
    child.start()
    child.join(120)
    if child.is_alive():
        child.kill()
        pytest.fail("child process hung after fork")
    assert child.exitcode == 0
    result = queue.get(timeout=10)
    q = multiprocessing.Queue()
    _predict_in_child(q)
    assert result == q.get()
