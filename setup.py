"""Build pybnn's Cython kernels.

Every `pybnn/_kernels/*.pyx` becomes one extension module that includes the C headers
in `include/`.  No -march flag is used: SIMD variants carry per-function target
attributes (x86) or use the architecture's baseline (aarch64 NEON), and the best one is
chosen at run time, so a built package runs on any CPU of its architecture.

Kernels run on several threads through OpenMP when the configured compiler supports
-fopenmp (probed by compiling and linking a small program with it); otherwise, or with
PYBNN_NO_OPENMP=1, the same sources build serial kernels (results are the same).
"""
import glob
import os
import platform
import shutil
import sys
import tempfile

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


OPENMP_TEST = r"""
#include <omp.h>
int main(void) {
    int n = 0;
#pragma omp parallel for reduction(+:n) num_threads(2)
    for (int i = 0; i < 4; i++)
        n += omp_get_num_threads() > 0;
    return n == 4 ? 0 : 1;
}
"""


def openmp_flags():
    """(compile args, link args) enabling OpenMP, or ([], []) when the compiler lacks it."""
    if os.environ.get("PYBNN_NO_OPENMP", "").strip() not in ("", "0"):
        return [], []
    try:  # setuptools provides distutils (Python 3.12 dropped the standard library's)
        from distutils.ccompiler import new_compiler
        from distutils.sysconfig import customize_compiler
    except ImportError:
        from setuptools._distutils.ccompiler import new_compiler
        from setuptools._distutils.sysconfig import customize_compiler
    flag = "-fopenmp"  # GCC and clang (the headers need a GCC-compatible compiler anyway)
    tmp = tempfile.mkdtemp(prefix="pybnn-omp-")
    try:
        cc = new_compiler()
        customize_compiler(cc)
        src = os.path.join(tmp, "omp_test.c")
        with open(src, "w") as f:
            f.write(OPENMP_TEST)
        objs = cc.compile([src], output_dir=tmp, extra_postargs=[flag])
        cc.link_executable(objs, os.path.join(tmp, "omp_test"), extra_postargs=[flag])
    except Exception as e:  # CompileError, LinkError, missing compiler...
        print(f"pybnn: OpenMP not available ({type(e).__name__}); building serial kernels",
              file=sys.stderr)
        return [], []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [flag], [flag]


def extensions():
    here = os.path.dirname(os.path.abspath(__file__))
    exts = []
    # PYBNN_MODULES=bitpack,bconv builds only those modules (handy while developing one kernel).
    only = set(filter(None, os.environ.get("PYBNN_MODULES", "").split(",")))
    omp_compile, omp_link = openmp_flags()
    for pyx in sorted(glob.glob(os.path.join("pybnn", "_kernels", "*.pyx"))):
        name = os.path.splitext(pyx)[0].replace(os.sep, ".")
        if only and name.rsplit(".", 1)[-1] not in only:
            continue
        exts.append(Extension(
            name, [pyx],
            include_dirs=[os.path.join(here, "include"), numpy.get_include()],
            depends=sorted(glob.glob(os.path.join("include", "pybnn", "*.h"))),
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=compile_args() + omp_compile,
            extra_link_args=omp_link,
        ))
    return cythonize(exts, language_level=3,
                     compiler_directives={"boundscheck": False, "wraparound": False,
                                          "cdivision": True, "initializedcheck": False})


setup(ext_modules=extensions())
