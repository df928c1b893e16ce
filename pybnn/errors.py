"""The exceptions pybnn raises.  Every error names the layer or tensor and what was expected."""


class PyBNNError(Exception):
    """Base class of every pybnn error."""


class ConfigError(PyBNNError, ValueError):
    """A layer or model was configured with invalid arguments."""


class ShapeError(PyBNNError, ValueError):
    """A tensor has the wrong rank, shape, dtype or kind for the layer it is given to."""


class WeightsError(PyBNNError, ValueError):
    """Weights given to set_weights do not fit the layer."""


class FormatError(PyBNNError, ValueError):
    """A model file is malformed, truncated, or does not match the architecture."""


class ConvertError(PyBNNError, ValueError):
    """A source model (ONNX, Keras) holds something pybnn cannot import exactly; the message
    names the node or layer, its operation and why."""
