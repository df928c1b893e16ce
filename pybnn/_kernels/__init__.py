"""Compiled kernels (Cython over the C headers in include/pybnn)."""
