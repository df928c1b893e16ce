import pytest

import pybnn


@pytest.fixture(params=pybnn.cpu.available())
def isa(request):
    """Run the test once per instruction-set path this machine has (scalar always)."""
    with pybnn.cpu.use_isa(request.param):
        yield request.param
