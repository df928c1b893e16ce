"""Build pybnn's Cython kernels.

Every `pybnn/_kernels/*.pyx` becomes one extension module that includes the C headers
in `include/`.  No -march flag is used: SIMD variants carry per-function target
attributes (x86) or use the architecture's baseline (aarch64 NEON), and the best one is
chosen at run time, so a built package runs on any CPU of its architecture.

Kernels run on several threads through pybnn's own pool of POSIX threads
(include/pybnn/threads.h, built into the _cpu module).
"""
import glob
import os
import platform

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup


def target_machine():
    # Cross builds name the target in _PYTHON_HOST_PLATFORM (e.g. "linux-aarch64").
    host = os.environ.get("_PYTHON_HOST_PLATFORM", "")
    return (host.rsplit("-", 1)[-1] if host else platform.machine()).lower()


def compile_args():
    args = ["-O3", "-std=gnu11",
            # Float kernels must round like NumPy's separate multiply and add: no FMA contraction.
            "-ffp-contract=off",
            "-fno-strict-aliasing", "-Wno-unused-function", "-Wno-unreachable-code"]
    machine = target_machine()
    if machine.startswith("armv7") or machine in ("arm", "armhf", "armv8l"):
        # 32-bit Raspberry Pi OS (Pi 2 and later): NEON is present but not in the default ABI.
        args += ["-mfpu=neon-vfpv4", "-mfloat-abi=hard"]
    if os.environ.get("PYBNN_EXTRA_CFLAGS"):
        args += os.environ["PYBNN_EXTRA_CFLAGS"].split()
    return args


def extensions():
    here = os.path.dirname(os.path.abspath(__file__))
    exts = []
    # PYBNN_MODULES=bitpack,bconv builds only those modules (handy while developing one kernel).
    only = set(filter(None, os.environ.get("PYBNN_MODULES", "").split(",")))
    for pyx in sorted(glob.glob(os.path.join("pybnn", "_kernels", "*.pyx"))):
        name = os.path.splitext(pyx)[0].replace(os.sep, ".")
        if only and name.rsplit(".", 1)[-1] not in only:
            continue
        exts.append(Extension(
            name, [pyx],
            include_dirs=[os.path.join(here, "include"), numpy.get_include()],
            depends=sorted(glob.glob(os.path.join("include", "pybnn", "*.h"))),
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=compile_args() + ["-pthread"],
            extra_link_args=["-pthread"],
        ))
    return cythonize(exts, language_level=3,
                     compiler_directives={"boundscheck": False, "wraparound": False,
                                          "cdivision": True, "initializedcheck": False})


setup(ext_modules=extensions())
