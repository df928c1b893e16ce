"""Shared helpers of the pybnn benchmarks (layers.py, gemm.py).

Timing with warm-up and medians, thread limits, optional baselines (onnxruntime, PyTorch),
table printing, machine information and JSON output.  Nothing here is needed by pybnn
itself; onnxruntime and PyTorch are imported lazily and only if installed.
"""
import contextlib
import datetime
import json
import math
import os
import platform
import struct
import sys
import time

import numpy as np

try:
    import pybnn  # noqa: F401  (installed, or on PYTHONPATH)
except ImportError:  # running from a source checkout without PYTHONPATH: use the tree above
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import pybnn  # noqa: F401
from pybnn import cpu

# ----------------------------------------------------------------------------- timing


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_busy_seconds():
    """CPU seconds all processes spent busy so far (from /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    guest = sum(fields[8:10])  # guest time is already counted in user
    return (sum(fields) - idle - guest) / _TICK


class OtherLoad:
    """Cores used by *other* processes while a block runs: busy CPU time of the machine
    (/proc/stat) minus this process's own CPU time, over the wall time.  On a shared
    2-core machine a value near 1 means a multi-threaded measurement shared its second core
    (jiffy resolution: None for blocks shorter than 0.2 s)."""

    def __enter__(self):
        self.busy, self.own, self.wall = _cpu_busy_seconds(), _own_cpu(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.wall
        busy = _cpu_busy_seconds()
        if self.busy is None or busy is None or wall < 0.2:  # jiffies: too coarse below that
            self.value = None
        else:
            other = (busy - self.busy - (_own_cpu() - self.own)) / wall
            self.value = min(max(0.0, other), float(os.cpu_count() or 1))


def _own_cpu():
    t = os.times()
    return t.user + t.system


def other_load(seconds=0.5):
    """Cores busy with other processes, sampled while this one sleeps `seconds`."""
    with OtherLoad() as load:
        time.sleep(seconds)
    return None if load.value is None else round(load.value, 2)


def wait_idle(max_seconds, threshold=0.2, sample=0.3):
    """Wait (at most max_seconds) until other processes use less than `threshold` of a core;
    returns the last sampled load.  For shared machines: run the next case in a quiet spell."""
    deadline = time.perf_counter() + max_seconds
    while True:
        load = other_load(sample)
        if load is None or load < threshold or time.perf_counter() >= deadline:
            return load


def measure(fn, repeats=15, max_seconds=1.0, min_sample_ms=0.5, warmup=2):
    """Time fn() and return per-call milliseconds: median, min, max over samples.

    fn is called `warmup` times first (at least 20 ms of calls for short ones: allocations,
    caches, thread pools).  Each sample is the mean of `inner` back-to-back calls, with
    `inner` chosen so a sample lasts at least `min_sample_ms` (tiny shapes would otherwise
    measure the timer).  Up to `repeats` samples are taken; sampling stops early once
    `max_seconds` have passed and at least 3 samples exist.  `other_cpu`: cores other
    processes used meanwhile (OtherLoad).
    """
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    done, start = 1, time.perf_counter()
    while done < warmup or (time.perf_counter() - start < 0.02 and done < 200):
        fn()
        done += 1
    per_call = min(first, (time.perf_counter() - start) / max(done - 1, 1))
    inner = max(1, int(math.ceil(min_sample_ms / 1e3 / max(per_call, 1e-7))))
    samples, begin = [], time.perf_counter()
    with OtherLoad() as load:
        while len(samples) < repeats:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples.append((time.perf_counter() - t0) / inner * 1e3)
            if len(samples) >= 3 and time.perf_counter() - begin > max_seconds:
                break
    return {"median_ms": float(np.median(samples)), "min_ms": float(np.min(samples)),
            "max_ms": float(np.max(samples)), "samples": len(samples), "calls_per_sample": inner,
            "other_cpu": None if load.value is None else round(load.value, 2)}


def settle(threads, seconds):
    """Pause after a multi-threaded measurement: idle worker threads of OpenBLAS, pybnn,
    PyTorch (OpenMP) and onnxruntime spin for a while after their last job, and on a 2-core
    machine they would slow whatever is timed next."""
    if threads > 1 and seconds > 0:
        time.sleep(seconds)


def measure_quiet(fn, max_wait=0.0, threshold=0.3, **timing):
    """measure(fn), repeated after a quiet spell (wait_idle, at most `max_wait` seconds in
    all, at most 5 times) while other processes used more than `threshold` of a core during
    it.  The result carries `retries`; with max_wait=0 this is measure()."""
    deadline = time.perf_counter() + max_wait
    result, retries = measure(fn, **timing), 0
    while (max_wait > 0 and (result.get("other_cpu") or 0) > threshold
           and time.perf_counter() < deadline and retries < 5):
        wait_idle(max(deadline - time.perf_counter(), 0.0))
        result, retries = measure(fn, **timing), retries + 1
    result["retries"] = retries
    return result


def interleaved_ratios(variants, rounds, calls=5, warmup_s=0.003, torch_module=None):
    """How many times faster each of `variants` ((fn, threads) pairs) runs than the first,
    from `rounds` rounds that each time every variant in turn: a shared machine's slow drifts
    (other processes, its clock) then hit every variant alike, which separate blocks of
    samples taken seconds apart do not ensure (this machine's speed moves by 10-20% between
    them).  Median over rounds of t(first) / t(variant); a round's time per variant is the
    median of `calls` calls after `warmup_s` seconds of calls (at least one), as measure()
    warms up: a worker thread that slept through the other variants' calls takes the first
    call after them 50-60 us longer (its wake-up) and the following ~1 ms of calls ~10%
    longer (an idle virtual CPU's core coming back to speed; docs/performance.md "Threads")."""
    ratios = [[] for _ in variants]
    for _ in range(rounds):
        per = []
        for fn, n in variants:
            with limit_threads(n, torch_module):
                start = time.perf_counter()
                fn()
                while time.perf_counter() - start < warmup_s:
                    fn()
                times = []
                for _ in range(calls):
                    t0 = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t0)
            per.append(float(np.median(times)))
        for i, t in enumerate(per):
            ratios[i].append(per[0] / t)
    return [float(np.median(r)) for r in ratios]


def interleaved_speedup(runner, threads, rounds, torch_module=None, calls=5):
    """Speed-up of each thread count over the first (interleaved_ratios of runner(n) at n
    threads, for n in threads): {n: speed-up} for every count after the first."""
    ratios = interleaved_ratios([(runner(n), n) for n in threads], rounds, calls, torch_module=torch_module)
    return dict(zip(threads[1:], ratios[1:]))


def gops(ops, ms):
    return ops / (ms * 1e6) if ms and ms > 0 else float("nan")


# ----------------------------------------------------------------------------- threads

try:
    import threadpoolctl
except ImportError:  # optional: without it NumPy's BLAS keeps its own thread count
    threadpoolctl = None


def all_threads():
    """What "all" means: the thread count pybnn uses by default (physical cores)."""
    return cpu.physical_cores()


@contextlib.contextmanager
def limit_threads(n, torch_module=None, blas=None):
    """Run the enclosed code with n threads everywhere we can set it: pybnn kernels
    (pybnn.cpu.use_threads), NumPy's BLAS (threadpoolctl, if installed; NumPy baselines use
    it, pybnn's kernels do not; `blas` overrides its count) and PyTorch's intra-op pool."""
    stack = contextlib.ExitStack()
    with stack:
        stack.enter_context(cpu.use_threads(n))
        if threadpoolctl is not None:
            stack.enter_context(threadpoolctl.threadpool_limits(blas or n, user_api="blas"))
        if torch_module is not None:
            previous = torch_module.get_num_threads()
            torch_module.set_num_threads(n)
            stack.callback(torch_module.set_num_threads, previous)
        yield


def blas_note(blas_threads):
    if threadpoolctl is None:
        return "NOT controlled (no threadpoolctl)"
    return f"= {blas_threads}" if blas_threads else "= the thread count (threadpoolctl)"


def kernel_accepts_threads(fn):
    """True if a compiled kernel takes a `threads` keyword (added after `isa`), else False."""
    import inspect
    try:
        return "threads" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None  # unknown: decide at the first call (see KernelCaller)


class KernelCaller:
    """Calls a pybnn kernel with `isa` and, if the kernel has one, `threads=` by keyword.

    The keyword is detected from the signature; if that cannot be read, the first call tries
    it and falls back on a TypeError that names `threads`."""

    def __init__(self, fn):
        self.fn, self.threads_kw = fn, kernel_accepts_threads(fn)

    def __call__(self, *args, isa, threads):
        if self.threads_kw is None:
            try:
                result = self.fn(*args, isa, threads=threads)
                self.threads_kw = True
                return result
            except TypeError as e:
                if "threads" not in str(e):
                    raise
                self.threads_kw = False
        if self.threads_kw:
            return self.fn(*args, isa, threads=threads)
        return self.fn(*args, isa)


# ----------------------------------------------------------------------------- optional baselines


def import_torch():
    try:
        import torch
        return torch
    except Exception:  # not installed, or broken: the baseline is simply left out
        return None


def import_onnxruntime():
    try:
        import onnxruntime
        return onnxruntime
    except Exception:
        return None


class Onnx:
    """A minimal ONNX model writer (protobuf wire format by hand), so the onnxruntime
    baselines need onnxruntime only, not the `onnx` package.  Covers what the benchmarks
    use: one graph of nodes with int / ints / float attributes, tensor initializers
    (raw data) and fixed-shape inputs/outputs."""

    FLOAT, UINT8, INT8, INT32, INT64 = 1, 2, 3, 6, 7
    _DTYPES = {np.dtype(np.float32): 1, np.dtype(np.uint8): 2, np.dtype(np.int8): 3,
               np.dtype(np.int32): 6, np.dtype(np.int64): 7}

    @staticmethod
    def _varint(v):
        v &= (1 << 64) - 1  # negative int64 as two's complement, as protobuf does
        out = bytearray()
        while True:
            byte, v = v & 0x7F, v >> 7
            out.append(byte | (0x80 if v else 0))
            if not v:
                return bytes(out)

    @classmethod
    def _key(cls, field, wire):
        return cls._varint(field << 3 | wire)

    @classmethod
    def _int(cls, field, v):
        return cls._key(field, 0) + cls._varint(int(v))

    @classmethod
    def _bytes(cls, field, data):
        data = data.encode() if isinstance(data, str) else bytes(data)
        return cls._key(field, 2) + cls._varint(len(data)) + data

    @classmethod
    def _float(cls, field, v):
        return cls._key(field, 5) + struct.pack("<f", v)

    @classmethod
    def tensor(cls, name, array):
        a = np.ascontiguousarray(array)
        body = b"".join(cls._int(1, d) for d in a.shape)
        body += cls._int(2, cls._DTYPES[a.dtype]) + cls._bytes(8, name)
        return body + cls._bytes(9, a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())

    @classmethod
    def value_info(cls, name, elem_type, shape):
        dims = b"".join(cls._bytes(1, cls._int(1, d)) for d in shape)
        tensor_type = cls._int(1, elem_type) + cls._bytes(2, dims)
        return cls._bytes(1, name) + cls._bytes(2, cls._bytes(1, tensor_type))

    @classmethod
    def node(cls, op_type, inputs, outputs, node_name=None, **attrs):
        """A NodeProto; node_name: unique in its graph (default "<op_type>_0": one-node graphs)."""
        body = b"".join(cls._bytes(1, i) for i in inputs) + b"".join(cls._bytes(2, o) for o in outputs)
        body += cls._bytes(3, node_name or f"{op_type}_0") + cls._bytes(4, op_type)
        for name, v in attrs.items():
            if isinstance(v, (list, tuple)):
                a = cls._bytes(1, name) + cls._int(20, 7) + b"".join(cls._int(8, i) for i in v)
            elif isinstance(v, float):
                a = cls._bytes(1, name) + cls._int(20, 1) + cls._float(2, v)
            else:
                a = cls._bytes(1, name) + cls._int(20, 2) + cls._int(3, v)
            body += cls._bytes(5, a)
        return body

    @classmethod
    def model(cls, nodes, inputs, outputs, initializers, opset=17):
        """nodes: node(...) results; inputs/outputs: (name, elem_type, shape);
        initializers: {name: array}.  Returns the serialized ModelProto."""
        graph = b"".join(cls._bytes(1, n) for n in nodes) + cls._bytes(2, "bench")
        graph += b"".join(cls._bytes(5, cls.tensor(k, v)) for k, v in initializers.items())
        graph += b"".join(cls._bytes(11, cls.value_info(*i)) for i in inputs)
        graph += b"".join(cls._bytes(12, cls.value_info(*o)) for o in outputs)
        opset_id = cls._bytes(1, "") + cls._int(2, opset)
        return cls._int(1, 8) + cls._bytes(2, "pybnn-benchmarks") + cls._bytes(7, graph) + cls._bytes(8, opset_id)


def ort_runner(ort, model_bytes, feeds, threads):
    """A zero-argument callable running an onnxruntime session (intra-op threads = threads,
    full graph optimization, sequential execution) on fixed feeds."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda: session.run(names, feeds)


# ----------------------------------------------------------------------------- machine


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "processor\t: arm")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(wanted=("sse4_2", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_vpopcntdq",
                      "amx_int8", "neon", "asimd")):
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("flags", "features")):
                    have = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in have]
    except OSError:
        pass
    return []


def machine_info(torch=None, ort=None, tried=("torch", "onnxruntime")):
    """Machine and library facts for the JSON; `tried`: the baselines the script looked for."""
    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "pybnn_cpu": cpu.info(), "cpu_model": cpu_model(), "cpu_flags": cpu_flags(),
            "logical_cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__,
            "pybnn": getattr(pybnn, "__version__", None),
            "torch": getattr(torch, "__version__", None), "onnxruntime": getattr(ort, "__version__", None),
            "blas_threads_controlled": threadpoolctl is not None, "baselines_tried": list(tried)}
    info["loadavg_start"] = loadavg()
    info["other_cpu_start"] = other_load()
    if threadpoolctl is not None:
        info["blas"] = [{k: p.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
                        for p in threadpoolctl.threadpool_info() if p.get("user_api") == "blas"]
    return info


def describe_machine(info):
    c = info["pybnn_cpu"]
    libs = "".join(f"; {name} {info[name] or 'not installed/skipped'}" for name in info["baselines_tried"])
    return (f"{info['date']}  {info['cpu_model']}, {info['logical_cpus']} logical CPUs, "
            f"{c.get('physical_cores')} physical cores; pybnn ISA {c.get('active')} "
            f"(available: {', '.join(c.get('available', []))}); NumPy {info['numpy']}{libs}\n"
            f"load average {info.get('loadavg_start')}; cores busy with other processes now: "
            f"{info.get('other_cpu_start')}")


def loadavg():
    try:
        return list(os.getloadavg())
    except (OSError, AttributeError):
        return None


def loadavg1():
    """1-minute load average, stored with every row: on a shared machine a load near or
    above the core count means other processes competed with the measurement."""
    la = loadavg()
    return None if la is None else la[0]


def isa_name(isa):
    """A kernel's returned ISA number as its name ("avx2"); strings ("blas") pass through."""
    if isinstance(isa, (int, np.integer)) and 0 <= isa < len(cpu.ISAS):
        return cpu.ISAS[isa]
    return None if isa is None else str(isa)


# ----------------------------------------------------------------------------- output


def fmt(v, digits=3):
    """Numbers for tables: None -> '-', floats to `digits` significant-ish places."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        if v == 0:
            return "0"
        mag = math.floor(math.log10(abs(v)))
        return f"{v:.{max(digits - 1 - mag, 0)}f}"
    return str(v)


def table(headers, rows, title=None, markdown=False, out=print):
    """Print rows (lists of values, formatted with fmt) under headers; numbers right-aligned.
    markdown=True prints a GitHub table (for docs/performance.md)."""
    cells = [[fmt(v) for v in row] for row in rows]
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) if rows else False
               for i in range(len(headers))]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values):
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return ("| " + " | ".join(parts) + " |") if markdown else "  ".join(parts).rstrip()

    lines = []
    if title:
        lines += ["", f"**{title}**" if markdown else title, ""] if markdown else ["", title]
    lines.append(line(headers))
    if markdown:
        lines.append("| " + " | ".join(("-" * (w - 1) + ":") if num else "-" * w
                                       for w, num in zip(widths, numeric)) + " |")
    else:
        lines.append("  ".join("-" * w for w in widths))
    lines += [line(r) for r in cells]
    out("\n".join(lines))


def warn_contention(rows, threshold=0.3, out=print):
    """Say how many multi-threaded measurements shared the machine with other processes."""
    shared = [r for r in rows if r.get("threads", 1) > 1 and (r.get("other_cpu") or 0) > threshold]
    multi = [r for r in rows if r.get("threads", 1) > 1]
    if shared:
        out(f"\nWARNING: during {len(shared)} of {len(multi)} multi-threaded measurements other processes "
            f"used more than {threshold} of a core (column other_cpu in the JSON); on a machine with "
            f"{os.cpu_count()} CPUs those numbers understate what the threads give on an idle machine.")


def write_json(path, payload):
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, default=_json_default)
        f.write("\n")
    print(f"\nwrote {path}")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    return str(o)


def add_common_args(parser, default_repeats):
    parser.add_argument("--json", metavar="FILE", help="also write machine info and every row as JSON")
    parser.add_argument("--threads", type=int, nargs="+", metavar="N",
                        help="thread counts to run (default: 1 and all physical cores)")
    parser.add_argument("--repeats", type=int, default=None, metavar="R",
                        help=f"timed samples per case (default {default_repeats}; --quick: 3)")
    parser.add_argument("--quick", action="store_true",
                        help="few samples, short time budget (a smoke run; layers.py also skips the two largest dense shapes)")
    parser.add_argument("--no-baselines", action="store_true", help="skip onnxruntime / PyTorch even if installed")
    parser.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    parser.add_argument("--blas-threads", type=int, default=None, metavar="N",
                        help="NumPy BLAS threads (default: the same as --threads; needs threadpoolctl)")
    parser.add_argument("--wait-idle", type=float, default=0, metavar="S",
                        help="shared machines: re-run a measurement during which other processes used "
                             "> 0.3 of a core, after waiting for a quiet spell (at most S seconds per "
                             "measurement; default 0: never)")


def thread_counts(args):
    counts = args.threads or [1, all_threads()]
    if any(n < 1 for n in counts):
        raise SystemExit("--threads: thread counts must be >= 1")
    return list(dict.fromkeys(counts))  # unique, in order
