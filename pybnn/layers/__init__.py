"""Keras-like layers.  See docs/semantics.md for what each computes."""
from .base import Input, Layer, Node, TensorSpec
from .conv import (BinaryConv2D, BinaryDense, Conv2D, Dense, FloatBinaryConv2D, FloatBinaryDense,
                   Int8BinaryConv2D, Int8BinaryDense, Int8Conv2D, Int8Dense)
from .core import BatchNormalization, ChannelAffine, Dequantize, Flatten, PReLU, Quantize, ReLU, Sign, Softmax
from .merge import Add, Concatenate
from .pooling import AveragePool2D, GlobalAveragePooling2D, MaxPool2D

LAYERS = {cls.__name__: cls for cls in (
    Input, Conv2D, Dense, BinaryConv2D, BinaryDense, Int8Conv2D, Int8Dense, FloatBinaryConv2D,
    FloatBinaryDense, Int8BinaryConv2D, Int8BinaryDense, Sign, Quantize, Dequantize,
    BatchNormalization, ChannelAffine, ReLU, PReLU, Softmax, MaxPool2D, AveragePool2D, GlobalAveragePooling2D, Flatten,
    Add, Concatenate)}

__all__ = sorted(LAYERS) + ["Layer", "Node", "TensorSpec"]
