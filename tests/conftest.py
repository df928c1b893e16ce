import os

import pytest

import pybnn


def subprocess_env():
    """Environment for a child Python that must import the pybnn these tests import (the
    installed package, or a source tree built in place), wherever it runs from."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(pybnn.__file__)))
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))


@pytest.fixture(params=pybnn.cpu.available())
def isa(request):
    """Run the test once per instruction-set path this machine has (scalar always)."""
    with pybnn.cpu.use_isa(request.param):
        yield request.param
