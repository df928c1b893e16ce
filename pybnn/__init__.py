"""pybnn: fast binary-neural-network inference on CPUs (x86 and ARM / Raspberry Pi).

    import pybnn
    from pybnn import layers as L
    model = pybnn.Sequential([L.Input((32, 32, 3)), L.Conv2D(64, 3), ...]).load("w.bin")
    probabilities = model.predict(images)

Graphs (shortcuts, concatenations) use the functional API: layers called on the outputs of
other layers, collected by pybnn.Model(inputs, outputs).
"""
from . import cpu, layers, reference
from .errors import ConfigError, ConvertError, FormatError, PyBNNError, ShapeError, WeightsError
from .io import load_model
from .model import Model, Sequential

__version__ = "0.1.0"
__all__ = ["Model", "Sequential", "load_model", "layers", "cpu", "reference", "PyBNNError", "ConfigError",
           "ConvertError", "FormatError", "ShapeError", "WeightsError"]
