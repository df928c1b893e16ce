"""Import trained networks from the frameworks people train them with: ONNX files (what
PyTorch exports) and Keras / Larq model files (.h5, .keras).

    from pybnn.convert import convert
    model = convert("bnn.onnx")        # a pybnn.Model taking NHWC input
    model.save("bnn.bin")

or `pybnn convert bnn.onnx -o bnn.bin --check`.  ONNX needs the `onnx` package (`pip install
pybnn[onnx]`), Keras files `h5py` (`pybnn[keras]`); `import pybnn` needs neither.
docs/convert.md says what is recognised and how results compare with the source.
"""
import os
import zipfile

from ..errors import ConvertError


def convert(path, **kwargs):
    """A pybnn.Model from an ONNX (.onnx) or Keras (.h5 / .keras) file; the keyword arguments
    go to from_onnx or from_keras.  model.convert_notes lists what the importer chose where
    the source left a choice (a float layer where weights are not binary, ...)."""
    kind = source_kind(path)
    if kind == "onnx":
        return from_onnx(path, **kwargs)
    return from_keras(path, **kwargs)


def source_kind(path):
    """"onnx" or "keras", from the file's first bytes (HDF5 and zip are Keras files)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise ConvertError(f"{path}: cannot read: {e.strerror}") from None
    if head.startswith(b"\x89HDF\r\n\x1a\n") or zipfile.is_zipfile(path):
        return "keras"
    if os.path.splitext(str(path))[1].lower() in (".h5", ".hdf5", ".keras"):
        raise ConvertError(f"{path}: neither an HDF5 file nor a zip archive, as Keras files are")
    return "onnx"


def from_onnx(source, outputs=None, name=None):
    """See pybnn.convert.onnx.from_onnx (imported here so that onnx loads only when used)."""
    try:
        from .onnx import from_onnx as load
    except ImportError as e:
        raise ConvertError(f"importing ONNX models needs the onnx package (pip install pybnn[onnx]): {e}") from None
    return load(source, outputs=outputs, name=name)


def from_keras(path, outputs=None, name=None):
    """See pybnn.convert.keras.from_keras (imported here so that h5py loads only when used)."""
    try:
        from .keras import from_keras as load
    except ImportError as e:
        raise ConvertError(f"importing Keras files needs h5py (pip install pybnn[keras]): {e}") from None
    return load(path, outputs=outputs, name=name)
