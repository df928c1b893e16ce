"""pybnn: fast binary-neural-network inference on CPUs."""
from . import cpu
from .errors import PyBNNError, ConfigError, ShapeError, WeightsError, FormatError

__version__ = "0.1.0"
