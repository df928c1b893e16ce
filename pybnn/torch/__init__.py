"""Train in PyTorch, run in pybnn: training modules whose eval forward computes what pybnn
computes, post-training int8 calibration, and export() to a pybnn model file.

    import torch.nn as nn
    from pybnn import torch as bt    # needs PyTorch; `import pybnn` never imports it

    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding="same", bias=False), bt.BatchNorm2d(32),
                          bt.BinaryActivation(), bt.BinaryConv2d(32, 64, 3, padding="same"), ...)
    ...train...
    pybnn_model = bt.export(model, "model.bin", example_input=x[:1])
    pybnn_model.predict(bt.nhwc(x))

docs/torch.md describes the modules, the layout conversion and the tolerances.
"""
try:
    import torch  # noqa: F401  (the real PyTorch: imports are absolute)
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError("pybnn.torch needs PyTorch (pip install 'pybnn[torch]'); pybnn itself runs without it") from e

from .export import CONVERTERS, export, nhwc
from .modules import (BatchNorm1d, BatchNorm2d, BinaryActivation, BinaryConv2d, BinaryLinear, FloatBinaryConv2d,
                      FloatBinaryLinear, Int8BinaryConv2d, Int8BinaryLinear, Int8Conv2d, Int8Linear, Quantize,
                      calibrate, clip_latent_weights, recompute_batch_norm, sign, sign_ste)

__all__ = ["BatchNorm1d", "BatchNorm2d", "BinaryActivation", "BinaryConv2d", "BinaryLinear", "CONVERTERS",
           "FloatBinaryConv2d", "FloatBinaryLinear", "Int8BinaryConv2d", "Int8BinaryLinear", "Int8Conv2d",
           "Int8Linear", "Quantize", "calibrate", "clip_latent_weights", "export", "nhwc", "recompute_batch_norm",
           "sign", "sign_ste"]
