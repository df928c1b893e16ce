"""Run-time choice of the instruction-set path used by every kernel.

At import pybnn picks the best path the CPU supports (x86: scalar < sse4 < avx2 < avx512;
ARM: scalar < neon < neon_dotprod, the last on aarch64 CPUs with the ARMv8.2 dot product
such as the Raspberry Pi 5's Cortex-A76).
`PYBNN_ISA=<name>` in the environment, or `set_isa(name)`, forces a lower path, so the
tests can run every path on one machine.  Kernels receive the ISA number with each call
and report back the variant they ran (a kernel without a variant for the requested path
falls back to the next lower one).
"""
import contextlib
import os
import threading

from ._kernels import _cpu
from .errors import ConfigError

ISAS = ("scalar", "sse4", "avx2", "neon", "avx512", "neon_dotprod")  # index = the number the C kernels use
SCALAR, SSE4, AVX2, NEON, AVX512, NEON_DOTPROD = range(6)


def available():
    """Names of the paths this build has and this CPU supports, best first."""
    return [name for i, name in reversed(list(enumerate(ISAS))) if _cpu.isa_supported(i)]


def _parse(name):
    name = str(name).strip().lower()
    if name not in ISAS:
        raise ConfigError(f"unknown ISA {name!r}; expected one of {', '.join(ISAS)}")
    if not _cpu.isa_supported(ISAS.index(name)):
        raise ConfigError(f"ISA {name!r} is not available on this CPU/build; "
                          f"available: {', '.join(available())}")
    return ISAS.index(name)


_active = _parse(os.environ["PYBNN_ISA"]) if os.environ.get("PYBNN_ISA") else ISAS.index(available()[0])


def active():
    """Number of the path kernels are asked to use."""
    return _active


def get_isa():
    """Name of the path kernels are asked to use."""
    return ISAS[_active]


def set_isa(name):
    """Force the path used by every following kernel call (e.g. "scalar")."""
    global _active
    _active = _parse(name)


@contextlib.contextmanager
def use_isa(name):
    """Context manager: run the enclosed calls on the named path, then restore."""
    global _active
    previous, _active = _active, _parse(name)
    try:
        yield
    finally:
        _active = previous


def physical_cores():
    """Physical cores this process may run on (hyper-threads share a core's SIMD units, so
    binary kernels gain little from them); falls back to the logical count."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:
        allowed = set(range(os.cpu_count() or 1))
    cores = set()
    for cpu_id in allowed:
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu_id}/topology/core_id") as f:
                core = f.read().strip()
            with open(f"/sys/devices/system/cpu/cpu{cpu_id}/topology/physical_package_id") as f:
                cores.add((f.read().strip(), core))
        except OSError:
            return max(len(allowed), 1)
    return max(len(cores), 1)


def _parse_threads(n):
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"number of threads must be a positive int, got {n!r}")
    return n


_threads = (_parse_threads(int(os.environ["PYBNN_NUM_THREADS"])) if os.environ.get("PYBNN_NUM_THREADS")
            else physical_cores())


class _Local(threading.local):
    threads = None  # use_threads override of the calling thread (a class default: no
    #                 AttributeError to raise and catch on every kernel call)


_local = _Local()
_forked_serial = False       # forked after worker threads started: kernels stay on one thread


def num_threads():
    """Threads kernels may use (use_threads in this thread, else set_num_threads /
    PYBNN_NUM_THREADS; default: physical cores).

    In a child process forked (os.fork, multiprocessing's "fork" start method) after the
    parent's kernels started worker threads this is always 1: the child has none of them,
    and pybnn does not start new ones there (the C side runs such a child's parts one after
    the other as well).  Called before every kernel: one expression."""
    return 1 if _forked_serial else _local.threads or _threads


def set_num_threads(n):
    """Set the process-wide thread count (a use_threads block overrides it in its thread)."""
    global _threads
    _threads = _parse_threads(n)


@contextlib.contextmanager
def use_threads(n):
    """Context manager: kernels called by this Python thread inside the block use n threads
    (None keeps the current count).  Other Python threads are not affected, so concurrent
    blocks (e.g. two models with different num_threads predicting in parallel) do not
    interfere."""
    previous = _local.threads
    if n is not None:
        _local.threads = _parse_threads(n)
    try:
        yield
    finally:
        _local.threads = previous


def _after_fork_in_child():
    global _forked_serial
    if _cpu.pool_workers() > 0:
        _forked_serial = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def info():
    """What was detected and what is used: a dict for logs and bug reports."""
    return {"arch": _cpu.arch_family(), "available": available(), "active": get_isa(),
            "forced_by_env": os.environ.get("PYBNN_ISA") or None, "threads": num_threads(),
            "worker_threads": _cpu.pool_workers(), "physical_cores": physical_cores()}
