"""Compare an imported model with its source: the same random input through onnxruntime and
through pybnn (NCHW inputs transposed to NHWC, 4-D outputs back), the largest difference
per output."""
import numpy as np

from ..errors import ConvertError
from ..reference import dequantize


def run_onnxruntime(proto, feeds, outputs=None):
    """Outputs (a dict name -> array) of an onnx.ModelProto run by onnxruntime; `outputs`
    names tensors to return, intermediate ones included."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ConvertError(f"--check runs the ONNX model with onnxruntime, which is not installed: {e}") from None
    import onnx
    from onnx import helper
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    have = [o.name for o in proto.graph.output]
    for name in outputs or []:
        if name not in have:
            proto.graph.output.append(helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = list(outputs) if outputs else have
    return dict(zip(names, session.run(names, feeds)))


def random_feeds(proto, batch=None, seed=0):
    """Random data for each graph input: N(0, 1) floats, uniform integers; the batch is the
    input's own when fixed, else `batch` (2 by default)."""
    from onnx import helper
    rng = np.random.default_rng(seed)
    consts = {t.name for t in proto.graph.initializer}
    feeds = {}
    for inp in proto.graph.input:
        if inp.name in consts:
            continue
        t = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if dims and dims[0] is None:
            dims[0] = batch or 2
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type))
        if dtype.kind == "f":
            feeds[inp.name] = rng.standard_normal(dims).astype(dtype)
        else:
            info = np.iinfo(dtype)
            feeds[inp.name] = rng.integers(info.min, int(info.max) + 1, dims).astype(dtype)
    return feeds


def nhwc(x):
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x.ndim == 4 else x


def compare_onnx(proto, model, feeds=None, outputs=None, batch=None, seed=0):
    """[(output name, largest |pybnn - onnxruntime|, largest |onnxruntime|, elements that differ)]
    for each output of the pybnn model (the graph's outputs, or `outputs` when the model was
    imported with them).  Integer ONNX outputs are dequantized with the pybnn output's scale and
    zero point (pybnn returns real values)."""
    feeds = random_feeds(proto, batch, seed) if feeds is None else feeds
    names = list(outputs) if outputs else [o.name for o in proto.graph.output]
    ref = run_onnxruntime(proto, feeds, names)
    xs = [nhwc(feeds[layer.name]) for layer in model.inputs]
    ours = model.predict(xs if len(xs) > 1 else xs[0])
    ours = ours if isinstance(ours, list) else [ours]
    rows = []
    for name, y, layer_index in zip(names, ours, model._outputs):
        r = ref[name]
        if r.dtype.kind in "iu":
            spec = model.layers[layer_index].output_spec
            zp = spec.zero_point + (128 if r.dtype == np.uint8 else 0)
            r = dequantize(r, spec.scale, zp)
        r = nhwc(np.asarray(r, np.float32))
        if r.shape != y.shape:
            raise ConvertError(f"output '{name}': onnxruntime gives shape {list(r.shape)} (NHWC), pybnn "
                               f"{list(y.shape)}")
        diff = np.abs(y - r)
        rows.append((name, float(diff.max()) if diff.size else 0.0, float(np.abs(r).max()) if r.size else 0.0,
                     int(np.count_nonzero(diff))))
    return rows
