import os
import shlex
import sys

import pytest

import pybnn


def subprocess_env():
    """Environment for a child Python that must import the pybnn these tests import (the
    installed package, or a source tree built in place), wherever it runs from."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(pybnn.__file__)))
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))


def python_command():
    """How to start a child Python like this one: sys.executable, or PYBNN_TEST_PYTHON (the
    ARM CI sets it to the emulator's command line: under qemu-user this interpreter is an
    ARM binary the host kernel cannot exec)."""
    command = os.environ.get("PYBNN_TEST_PYTHON")
    return shlex.split(command) if command else [sys.executable]


@pytest.fixture(params=pybnn.cpu.available())
def isa(request):
    """Run the test once per instruction-set path this machine has (scalar always)."""
    with pybnn.cpu.use_isa(request.param):
        yield request.param
