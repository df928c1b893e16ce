"""Import ONNX models (PyTorch exports) into pybnn.  docs/convert.md says what is recognised.

The importer works in three passes over the (topologically sorted) ONNX nodes:

1. Constants: every node whose inputs are all constant is evaluated with the ONNX reference
   evaluator (onnx.reference), so weight binarization written in the model (sign(W) *
   mean|W|, clamps, straight-through tricks) becomes plain arrays; Shape of a tensor whose
   size is known is a constant too.
2. Linear forms: Add, Sub, Neg, Identity and multiplication by constants are tracked as sums
   of earlier tensors with coefficients.  When terms cancel exactly -- a straight-through
   estimator such as x + (sign(x) - x).detach() or ReActNet's sign(x) - p(x) + p(x) -- the
   tensor *is* what remains (sign(x)), and the cancelled terms are never built.
3. Layers: the nodes the outputs depend on become pybnn layers, NCHW tensors becoming NHWC.

Anything else is a ConvertError naming the node, its operation and why.
"""
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference
from onnx.reference import ReferenceEvaluator

from .. import layers as L
from ..errors import ConvertError
from ..shapes import nchw_flatten_order
from .graph import Builder, add_conv

NOT_CONSTANT = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                "Bernoulli", "If", "Loop", "Scan"}
COMPARISONS = {"Greater", "GreaterOrEqual", "Less", "LessOrEqual"}


class Value:
    """A dynamic ONNX tensor as it exists in the pybnn graph.

    node: the pybnn node (None while `defer` is set); kind: "float32", "binary" or "int8";
    shape: the ONNX shape (batch 1); perm: for a 2-D tensor flattened from NCHW, the ONNX
    feature index of each pybnn feature ((h, w, c) order), None when the orders agree;
    zeros: may hold exact zeros (ReLU outputs, dequantized int8), where ONNX's Sign gives 0;
    scale, zp, dtype: int8 quantization (pybnn zero point) and the ONNX integer type;
    defer: ("pad", source, pads, value) or ("clip", source, lo, hi), an operation pybnn folds
    into the consumer; conv: the pybnn convolution that made it (ReLU fusion)."""

    __slots__ = ("node", "kind", "shape", "perm", "zeros", "scale", "zp", "dtype", "defer", "conv")

    def __init__(self, node, kind, shape, perm=None, zeros=False, scale=None, zp=None, dtype=None, defer=None,
                 conv=None):
        self.node, self.kind, self.shape, self.perm, self.zeros = node, kind, tuple(shape), perm, zeros
        self.scale, self.zp, self.dtype, self.defer, self.conv = scale, zp, dtype, defer, conv


class Lin:
    """sum(coef * tensor) + bias over earlier tensors (coefficients and bias broadcast like
    ONNX arrays); `collapsed`: some term cancelled exactly when this form was made."""

    __slots__ = ("terms", "bias", "collapsed")

    def __init__(self, terms, bias=0.0, collapsed=False):
        self.terms, self.bias, self.collapsed = terms, bias, collapsed

    def scaled(self, c):
        return Lin({k: v * c for k, v in self.terms.items()}, self.bias * c)

    def plus(self, other, sign=1.0):
        terms = dict(self.terms)
        collapsed = False
        for k, v in other.terms.items():
            total = terms.get(k, 0.0) + sign * v
            if k in terms and np.all(total == 0):
                del terms[k]
                collapsed = True
            else:
                terms[k] = total
        return Lin(terms, self.bias + sign * other.bias, collapsed)


def from_onnx(source, outputs=None, name=None):
    """A pybnn.Model from an ONNX model (a path or an onnx.ModelProto).

    The model takes NHWC input: an ONNX input (N, C, H, W) becomes pybnn input (H, W, C), and
    4-D outputs come out NHWC.  outputs: ONNX tensor names to make the model's outputs
    instead of the graph's (to compare intermediate tensors).  Raises ConvertError for
    anything that pybnn cannot represent exactly (docs/convert.md)."""
    if isinstance(source, onnx.ModelProto):
        proto, label = source, name or source.graph.name or "onnx model"
    else:
        label = str(source)
        try:
            proto = onnx.load(label)
        except Exception as e:  # the onnx package raises several kinds
            raise ConvertError(f"{label}: not a readable ONNX model: {e}") from None
        name = name or os.path.splitext(os.path.basename(label))[0]
    return _Importer(proto, label, outputs, name or proto.graph.name or "model").run()


class _Importer:
    def __init__(self, proto, source, outputs, name):
        self.source, self.name = source, name
        self.b = Builder(source)
        self.opsets = [helper.make_opsetid(o.domain, o.version) for o in proto.opset_import]
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.ir_version = proto.ir_version
        graph = proto.graph
        self.consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.inputs = [i for i in graph.input if i.name not in self.consts]
        self.output_names = list(outputs) if outputs is not None else [o.name for o in graph.output]
        self.fixed = self._fix_batch(proto)
        self.shapes = self._infer_shapes(self.fixed)
        self.nodes = list(graph.node)
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.lin, self.qconst, self.values, self.uses = {}, {}, {}, {}

    # ------------------------------------------------------------ helpers
    def label(self, node):
        return node.name or f"{node.op_type}_{self.nodes.index(node)}"

    def fail(self, node, why):
        raise ConvertError(f"{self.source}: node '{self.label(node)}' ({node.op_type}): {why}")

    def layer_name(self, node, suffix=""):
        return self.label(node).lstrip("/") + suffix

    def attrs(self, node):
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def const(self, node, k, what, optional=False):
        name = node.input[k] if k < len(node.input) else ""
        if not name:
            if optional:
                return None
            self.fail(node, f"needs its {what} (input {k})")
        if name not in self.consts:
            if optional == "dynamic-ok":
                return None
            self.fail(node, f"its {what} ('{name}') must be a constant (computed from weights only)")
        return self.consts[name]

    def shape(self, name, node):
        if name not in self.shapes:
            self.fail(node, f"the shape of '{name}' is not known (export with a fixed input size)")
        return self.shapes[name]

    def val(self, node, k=0):
        name = node.input[k]
        if name in self.consts:
            self.fail(node, f"input {k} ('{name}') is a constant; pybnn layers take computed tensors")
        return self.values[name]

    def real(self, v, node):
        """v as a pybnn node: deferred operations are an error here."""
        if v.defer is not None:
            what = {"pad": "a Pad (pybnn folds it only into a following Conv)",
                    "clip": "a Clip with a negative lower bound (pybnn keeps it only before a binarization, "
                            "where it changes nothing)"}[v.defer[0]]
            self.fail(node, f"its input comes from {what}")
        return v

    def channel_vector(self, x, c, node, what):
        """A constant broadcast against x that varies only along channels -> (C,) in pybnn order."""
        c = np.asarray(c, np.float32)
        try:
            fits = np.broadcast_shapes(c.shape, x.shape) == x.shape
        except ValueError:
            fits = False
        if not fits or len(x.shape) not in (2, 4):
            self.fail(node, f"{what} of shape {list(c.shape)} does not broadcast to the tensor's {list(x.shape)}")
        full = np.broadcast_to(c, x.shape)
        vec = full[0, :, 0, 0] if len(x.shape) == 4 else full[0]
        expect = vec[:, None, None] if len(x.shape) == 4 else vec
        if not np.array_equal(full[0], np.broadcast_to(expect, full.shape[1:]), equal_nan=True):
            self.fail(node, f"{what} varies along more than the channel axis; pybnn's per-channel layers "
                            f"cannot apply it")
        return np.ascontiguousarray(vec[x.perm] if x.perm is not None else vec, dtype=np.float32)

    # ------------------------------------------------------------ shapes
    def _fix_batch(self, proto):
        """A copy of the model whose inputs have batch 1 (pybnn models take any batch) and
        every other size fixed (an error otherwise)."""
        proto = onnx.ModelProto.FromString(proto.SerializeToString())
        for inp in proto.graph.input:
            if inp.name in self.consts:
                continue
            for axis, d in enumerate(inp.type.tensor_type.shape.dim):
                if not d.HasField("dim_value"):
                    if axis:
                        raise ConvertError(f"{self.source}: input '{inp.name}' has no fixed size at axis {axis} "
                                           f"({d.dim_param or '?'}); export with a fixed input size")
                    d.dim_value = 1
        self.input_dims = {i.name: tuple(d.dim_value for d in i.type.tensor_type.shape.dim)
                           for i in proto.graph.input}
        return proto

    def _infer_shapes(self, proto):
        try:
            inferred = shape_inference.infer_shapes(proto, data_prop=True)
        except Exception as e:
            raise ConvertError(f"{self.source}: ONNX shape inference failed: {e}") from None
        shapes = {}
        for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
            t = vi.type.tensor_type
            if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
                shapes[vi.name] = tuple(d.dim_value for d in t.shape.dim)
        for name, arr in self.consts.items():
            shapes[name] = arr.shape
        return shapes

    def _folded(self):
        """The model with every constant-valued node replaced by an initializer (so that shape
        inference sees folded Reshape targets and the like)."""
        proto = onnx.ModelProto.FromString(self.fixed.SerializeToString())
        graph = proto.graph
        keep = [n for n in graph.node if any(o and o not in self.consts for o in n.output)]
        used = {i for n in keep for i in n.input if i in self.consts}
        del graph.node[:]
        graph.node.extend(keep)
        del graph.initializer[:]
        graph.initializer.extend(numpy_helper.from_array(np.asarray(self.consts[n]), n) for n in sorted(used))
        inputs = [i for i in graph.input if i.name not in self.consts]
        del graph.input[:]
        graph.input.extend(inputs)
        return proto

    # ------------------------------------------------------------ pass 1 and 2: constants, linear forms
    def _evaluate(self, node):
        names = list(dict.fromkeys(i for i in node.input if i))
        feeds = {n: self.consts[n] for n in names}
        infos = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(feeds[n].dtype), feeds[n].shape)
                 for n in names]
        outs = [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in node.output if o]
        model = helper.make_model(helper.make_graph([node], "fold", infos, outs), opset_imports=self.opsets)
        model.ir_version = self.ir_version
        try:
            results = ReferenceEvaluator(model).run(None, feeds)
        except Exception as e:
            self.fail(node, f"could not evaluate it on constant inputs: {e}")
        return dict(zip([o for o in node.output if o], results))

    def _static(self, node):
        """Shape / Size of a tensor whose shape is known: constants."""
        if node.op_type not in ("Shape", "Size") or node.input[0] not in self.shapes:
            return None
        shape = self.shapes[node.input[0]]
        if node.op_type == "Size":
            return np.array(int(np.prod(shape)), np.int64)
        a = self.attrs(node)
        return np.array(shape[a.get("start", 0):a.get("end", len(shape))], np.int64)

    def _form(self, name, dynamic):
        if dynamic and name in self.consts:
            return Lin({}, self.consts[name].astype(np.float64))
        return self.lin.get(name) or Lin({name: 1.0})

    def _linear(self, node, dynamic):
        """The linear form of the node's output, or None when the node is not linear."""
        op, ins = node.op_type, list(node.input)
        if op in ("Identity", "Dropout") and ins:
            return self._form(ins[0], dynamic)
        if op == "Neg":
            return self._form(ins[0], dynamic).scaled(-1.0)
        if op in ("Add", "Sub") and len(ins) == 2:
            return self._form(ins[0], dynamic).plus(self._form(ins[1], dynamic), 1.0 if op == "Add" else -1.0)
        if op in ("Mul", "Div") and dynamic and len(ins) == 2:
            const = [i for i in ins if i in self.consts]
            if len(const) != 1 or (op == "Div" and ins[1] not in self.consts):
                return None
            c = self.consts[const[0]].astype(np.float64)
            if not np.all(np.isfinite(c)) or (op == "Div" and np.any(c == 0)):
                return None
            x = ins[1] if const[0] == ins[0] else ins[0]
            return self._form(x, True).scaled(c if op == "Mul" else 1.0 / c)
        return None

    def _fold(self):
        """Fold constants, then infer shapes again on the folded graph, until nothing changes."""
        for _ in range(8):
            known = len(self.consts), len(self.shapes)
            self._fold_constants()
            if len(self.consts) == known[0]:
                return
            self.shapes.update(self._infer_shapes(self._folded()))
            if len(self.shapes) == known[1]:
                return

    def _fold_constants(self):
        self.lin, self.qconst = {}, {}
        for node in self.nodes:
            ins = [i for i in node.input if i]
            dynamic = node.domain not in ("", "ai.onnx") or node.op_type in NOT_CONSTANT or \
                any(i not in self.consts for i in ins)
            static = self._static(node) if dynamic else None
            if static is not None:
                self.consts[node.output[0]] = static
                continue
            form = self._linear(node, dynamic) if node.output and node.output[0] else None
            if form is not None:
                self.lin[node.output[0]] = form
            if dynamic:
                continue
            if all(o in self.consts for o in node.output if o):
                pass  # folded in an earlier round
            elif form is not None and form.collapsed:
                # a straight-through form on weights: its value is what remains, exactly
                self.consts[node.output[0]] = self._form_value(form)
            elif node.op_type == "DequantizeLinear":
                self.consts[node.output[0]] = self._dequantize(node)
            else:
                self.consts.update(self._evaluate(node))
            if node.op_type == "DequantizeLinear" and self.consts[node.input[0]].dtype.kind in "iu":
                self.qconst[node.output[0]] = self._dq_params(node, constant=True)

    def _dequantize(self, node):
        """DequantizeLinear of constants, per tensor or per axis: float32(q - zp) * scale (the
        reference evaluator implements only its newest versions)."""
        q, scale, zp, axis = self._dq_params(node, constant=True)
        if self.attrs(node).get("block_size", 0):
            self.fail(node, "blocked quantization is not supported")
        shape = [1] * q.ndim
        if scale.size > 1:
            shape[axis % q.ndim] = scale.size
        zp = np.zeros(1, np.int64) if zp is None else zp.astype(np.int64)
        return ((q.astype(np.int64) - zp.reshape(shape if zp.size > 1 else [1] * q.ndim)).astype(np.float32)
                * scale.reshape(shape))

    def _form_value(self, form):
        if len(form.terms) == 1 and np.all(form.bias == 0):
            (name, coef), = form.terms.items()
            if np.all(coef == 1):
                return self.consts[name]
        total = np.asarray(form.bias, np.float64)
        for name, coef in form.terms.items():
            total = total + coef * self.consts[name].astype(np.float64)
        return total.astype(np.float32)

    # ------------------------------------------------------------ pass 3: layers
    def _needed(self):
        """The dynamic tensors the outputs depend on (cancelled terms excluded), counting uses."""
        need = set(self.output_names)
        uses = dict.fromkeys(self.output_names, 1)

        def use(name):
            if name and name not in self.consts:
                need.add(name)
                uses[name] = uses.get(name, 0) + 1

        for node in reversed(self.nodes):
            outs = [o for o in node.output if o in need and o not in self.consts]
            if not outs:
                continue
            form = self.lin.get(node.output[0])
            if form is not None and form.collapsed:
                for name in form.terms:
                    use(name)
            elif node.op_type == "Where" and node.input[0] in self.producer \
                    and self.producer[node.input[0]].op_type in COMPARISONS:
                for name in self.producer[node.input[0]].input:
                    use(name)
                for name in node.input[1:]:
                    use(name)
            else:
                for name in node.input:
                    use(name)
        self.uses = uses
        return need

    def run(self):
        self._fold()
        for name in self.output_names:
            if name in self.consts:
                raise ConvertError(f"{self.source}: output '{name}' is a constant (it does not depend on the input)")
            if name not in self.producer and name not in {i.name for i in self.inputs}:
                raise ConvertError(f"{self.source}: no tensor named '{name}' in the graph")
        need = self._needed()
        inputs = []
        for inp in self.inputs:
            if inp.name in need:
                inputs.append(self._input(inp))
        for node in self.nodes:
            outs = [o for o in node.output if o]
            if not any(o in need and o not in self.consts for o in outs):
                continue
            form = self.lin.get(outs[0])
            if form is not None and form.collapsed:
                self.values[outs[0]] = self._from_form(node, form)
                continue
            if node.domain not in ("", "ai.onnx"):
                self.fail(node, f"operator of domain '{node.domain}' is not supported")
            method = getattr(self, "op_" + node.op_type, None)
            if method is None:
                self.fail(node, "this operator is not supported by the pybnn importer")
            result = method(node)
            if isinstance(result, Value):
                result = [result]
            for o, v in zip(node.output, result):
                if o:
                    self.values[o] = v
        outputs = []
        for name in self.output_names:
            v = self.values[name]
            if v.defer is not None:
                raise ConvertError(f"{self.source}: output '{name}' comes from a Pad or Clip that pybnn cannot "
                                   f"compute on its own")
            if v.perm is not None:
                raise ConvertError(f"{self.source}: output '{name}' is a tensor flattened in NCHW order; pybnn "
                                   f"flattens in (h, w, c) order")
            if isinstance(v.node, L.Input):
                raise ConvertError(f"{self.source}: output '{name}' is a model input")
            outputs.append(v.node)
        model = self.b.model([v.node for v in inputs], outputs, self.name)
        self._check_shapes(model)
        return model

    def _check_shapes(self, model):
        """Every output's pybnn shape is its ONNX shape in NHWC: a cheap guard on the importer."""
        for name, layer_index in zip(self.output_names, model._outputs):
            spec = model.layers[layer_index].output_spec
            onnx_shape = self.shapes.get(name)
            if onnx_shape is None:
                continue
            want = onnx_shape[1:] if len(onnx_shape) != 4 else (onnx_shape[2], onnx_shape[3], onnx_shape[1])
            if tuple(spec.shape) != tuple(want):
                raise ConvertError(f"{self.source}: output '{name}' has shape {list(spec.shape)} in pybnn but "
                                   f"{list(onnx_shape)} in ONNX (expected {list(want)} in NHWC)")

    def _input(self, inp):
        shape = self.input_dims[inp.name]
        if len(shape) not in (2, 4):
            raise ConvertError(f"{self.source}: input '{inp.name}' has shape {list(shape)}; pybnn takes (N, C, H, W) "
                               f"or (N, features) inputs")
        pshape = (shape[2], shape[3], shape[1]) if len(shape) == 4 else shape[1:]
        elem = inp.type.tensor_type.elem_type
        if elem == TensorProto.FLOAT:
            layer = self.b.input(pshape, inp.name)
            v = Value(layer, "float32", shape)
        elif elem in (TensorProto.UINT8, TensorProto.INT8):
            scale, zp = self._input_quantization(inp)
            dtype = "uint8" if elem == TensorProto.UINT8 else "int8"
            layer = self.b.input(pshape, inp.name, dtype=dtype, scale=scale, zero_point=zp)
            v = Value(layer, "int8", shape, scale=scale, zp=zp - (128 if dtype == "uint8" else 0), dtype=dtype)
        else:
            raise ConvertError(f"{self.source}: input '{inp.name}' has element type "
                               f"{TensorProto.DataType.Name(elem)}; pybnn takes float32, uint8 or int8 inputs")
        self.values[inp.name] = v
        return v

    def _input_quantization(self, inp):
        found = set()
        for node in self.nodes:
            for k, name in enumerate(node.input):
                if name != inp.name:
                    continue
                if node.op_type == "DequantizeLinear" and k == 0:
                    scale, zp, _ = self._dq_params(node)
                elif node.op_type in ("QLinearConv", "QLinearMatMul") and k == 0:
                    scale, zp = float(self.consts[node.input[1]]), int(self.consts[node.input[2]])
                else:
                    raise ConvertError(f"{self.source}: integer input '{inp.name}' feeds node '{self.label(node)}' "
                                       f"({node.op_type}); pybnn reads integer inputs through DequantizeLinear or "
                                       f"QLinearConv / QLinearMatMul")
                found.add((scale, zp))
        if len(found) != 1:
            raise ConvertError(f"{self.source}: integer input '{inp.name}' must be read with one scale and zero "
                               f"point, found {sorted(found)}")
        return found.pop()

    def _from_form(self, node, form):
        """A tensor whose linear form collapsed (a straight-through estimator): build what remains."""
        if len(form.terms) == 1 and np.all(form.bias == 0):
            (name, coef), = form.terms.items()
            if np.all(coef == 1):
                return self.values[name]
        if not form.terms:
            self.fail(node, "its value does not depend on the input (the terms cancel)")
        parts = []
        shape = self.shape(node.output[0], node)
        for k, (name, coef) in enumerate(form.terms.items()):
            v = self.real(self.values[name], node)
            if not np.all(coef == 1):
                scale = self.channel_vector(Value(None, "float32", shape, v.perm), coef, node, "a coefficient")
                v = self._affine(node, v, scale, None, f"/term{k}")
            parts.append(v)
        out = parts[0] if len(parts) == 1 else self._add(node, parts)
        if not np.all(form.bias == 0):
            bias = self.channel_vector(out, form.bias, node, "a constant term")
            out = self._affine(node, out, None, bias, "/bias")
        return out

    # ------------------------------------------------------------ building blocks
    def _affine(self, node, x, scale, bias, suffix=""):
        weights = [w for w in (scale, bias) if w is not None]
        n = self.b.add(L.ChannelAffine, x.node, self.layer_name(node, suffix), weights,
                       use_scale=scale is not None, use_bias=bias is not None)
        return Value(n, "float32", x.shape, x.perm, zeros=x.zeros and bias is None)

    def _add(self, node, parts, suffix=""):
        if len({p.shape for p in parts}) != 1 or len({None if p.perm is None else tuple(p.perm) for p in parts}) != 1:
            self.fail(node, f"adds tensors of different shapes or layouts {[list(p.shape) for p in parts]}; pybnn's "
                            f"Add does not broadcast")
        n = self.b.add(L.Add, [p.node for p in parts], self.layer_name(node, suffix))
        return Value(n, "float32", parts[0].shape, parts[0].perm)

    def _sign(self, node, x, suffix=""):
        n = self.b.add(L.Sign, x.node, self.layer_name(node, suffix))
        return Value(n, "binary", x.shape, x.perm)

    def _binarize(self, node, x, op=">=", t=None):
        """+1 where `x op t` holds (op one of >=, >, <=, <; t per channel, None for 0), else -1,
        as pybnn layers: Sign, after a ChannelAffine shifting (and negating) x when needed.
        Exact in float32: x >= t <=> x + (-t) >= 0 (x - t rounds to 0 only when x == t);
        x > t <=> x >= nextafter(t, +inf); x <= t <=> -x + t >= 0; x < t <=> -x > -t."""
        if x.defer is not None and x.defer[0] == "clip" and op == ">=" and t is None:
            x = x.defer[1]  # clip(x, lo < 0, hi >= 0) >= 0 exactly where x >= 0
        x = self.real(x, node)
        if x.kind == "int8":
            self.fail(node, "binarizes a quantized tensor; dequantize it first (DequantizeLinear)")
        if x.kind == "binary":  # ±1 values: the comparison is the identity, or not a binarization
            compare = {">=": np.greater_equal, ">": np.greater, "<=": np.less_equal, "<": np.less}[op]
            t0 = 0.0 if t is None else t
            if np.all(compare(1.0, t0)) and not np.any(compare(-1.0, t0)):
                return x
            self.fail(node, "compares a binary (±1) tensor with a threshold that does not separate -1 from +1")
        if op == ">=" and t is None:
            return self._sign(node, x)
        t = np.zeros(x.shape[1], np.float32) if t is None else np.asarray(t, np.float32)
        negate = op in ("<", "<=")
        if negate:
            t = -t
        if op in (">", "<"):
            t = np.nextafter(t, np.float32(np.inf)).astype(np.float32)
        scale = np.full_like(t, -1) if negate else None
        bias = (-t).astype(np.float32) if np.any(t != 0) else None
        return self._sign(node, self._affine(node, x, scale, bias, "/shift") if scale is not None or bias is not None
                          else x)

    def _conv_geometry(self, node, in_shape, kernel_hw):
        a = self.attrs(node)
        strides = tuple(a.get("strides", (1, 1)))
        dilations = tuple(a.get("dilations", (1, 1)))
        pads = list(a.get("pads", (0, 0, 0, 0)))
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if len(strides) != 2 or len(dilations) != 2 or len(pads) != 4:
            self.fail(node, "only 2-D operations are supported")
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = []
            for axis in range(2):
                size, k, s, d = in_shape[2 + axis], kernel_hw[axis], strides[axis], dilations[axis]
                total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
                small = total // 2
                pads.append((small, total - small) if auto == "SAME_UPPER" else (total - small, small))
            explicit = (pads[0], pads[1])
        elif auto == "VALID":
            explicit = ((0, 0), (0, 0))
        else:
            explicit = ((pads[0], pads[2]), (pads[1], pads[3]))
        return strides, dilations, explicit

    def _unpad(self, node, x, pads):
        """Fold a deferred Pad into a convolution's padding: (source, pads, pad value)."""
        if x.defer is None or x.defer[0] != "pad":
            return x, pads, 0
        _, src, extra, value = x.defer
        if value != 0 and any(p for pair in pads for p in pair):
            self.fail(node, f"pads its input with {value} (a Pad node) and with 0 (its own pads)")
        pads = tuple((a + c, b + d) for (a, b), (c, d) in zip(pads, extra))
        if value != 0 and src.kind != "binary":
            self.fail(node, f"its input is padded with {value}; pybnn pads float and int8 convolutions with zero "
                            f"(binary ones with 0, +1 or -1)")
        if value not in (0, 1, -1):
            self.fail(node, f"pads a binary input with {value}; pybnn binary convolutions pad with 0, +1 or -1")
        return src, pads, int(value)

    # ------------------------------------------------------------ operators
    def op_Identity(self, node):
        return self.val(node)

    op_Dropout = op_Identity

    def op_Cast(self, node):
        x = self.val(node)
        if self.attrs(node).get("to") != TensorProto.FLOAT or x.kind == "int8":
            self.fail(node, "casts to a type other than float32 (pybnn tensors are float32, int8 or binary)")
        return x

    def op_Conv(self, node):
        x = self.val(node)
        w = self.const(node, 1, "weight")
        bias = self.const(node, 2, "bias", optional=True)
        if w.ndim != 4 or len(x.shape) != 4:
            self.fail(node, "only 2-D convolutions (NCHW) are supported")
        group = self.attrs(node).get("group", 1)
        strides, dilations, pads = self._conv_geometry(node, x.shape, w.shape[2:])
        qdq = self._qdq_conv(node, x)
        if qdq is not None:
            return qdq
        x, pads, pad_value = self._unpad(node, x, pads)
        x = self.real(x, node)
        if x.kind == "int8":
            self.fail(node, "a float convolution of an int8 tensor")
        kernel = np.ascontiguousarray(w.transpose(2, 3, 1, 0), np.float32)  # (M, C/g, kh, kw) -> (kh, kw, C/g, M)
        n = add_conv(self.b, x.node, x.kind, kernel, None if bias is None else bias.astype(np.float32),
                     self.layer_name(node), strides=strides, padding=pads, dilation=dilations, groups=group,
                     pad_value=pad_value, where=f"node '{self.label(node)}' (Conv)")
        return Value(n, "float32", self.shape(node.output[0], node), zeros=_integer_sums(n.layer), conv=n.layer)

    def _dense(self, node, x, kernel, bias):
        x = self.real(x, node)
        if len(x.shape) != 2:
            self.fail(node, f"takes a {len(x.shape)}-D tensor; pybnn dense layers take (N, features) (Flatten first)")
        if x.kind == "int8":
            self.fail(node, "a float matrix product of an int8 tensor")
        if x.perm is not None:
            kernel = kernel[x.perm]  # rows in pybnn's (h, w, c) feature order
        n = add_conv(self.b, x.node, x.kind, np.ascontiguousarray(kernel, np.float32),
                     None if bias is None else bias.astype(np.float32), self.layer_name(node), dense=True,
                     where=f"node '{self.label(node)}' ({node.op_type})")
        return Value(n, "float32", self.shape(node.output[0], node), zeros=_integer_sums(n.layer), conv=n.layer)

    def op_Gemm(self, node):
        a = self.attrs(node)
        x = self.val(node)
        w = self.const(node, 1, "weight B").astype(np.float32)
        c = self.const(node, 2, "bias C", optional=True)
        if a.get("transA", 0):
            self.fail(node, "transA=1 (the data transposed) is not supported")
        if w.ndim != 2:
            self.fail(node, "B must be a matrix")
        kernel = w.T if a.get("transB", 0) else w
        alpha, beta = np.float32(a.get("alpha", 1.0)), np.float32(a.get("beta", 1.0))
        if alpha != 1:
            kernel = kernel * alpha
        qdq = self._qdq_dense(node)
        if qdq is not None:
            return qdq
        bias = None
        if c is not None:
            if np.size(c) not in (1, kernel.shape[1]) or np.squeeze(c).ndim > 1:
                self.fail(node, f"bias C of shape {list(np.shape(c))} is not one value per output")
            full = np.broadcast_to(np.asarray(c, np.float32).ravel(), (kernel.shape[1],))
            bias = full * beta if beta != 1 else full.copy()
        return self._dense(node, x, kernel, bias)

    def op_MatMul(self, node):
        x = self.val(node)
        w = self.const(node, 1, "matrix B").astype(np.float32)
        if w.ndim != 2:
            self.fail(node, "B must be a matrix")
        qdq = self._qdq_dense(node)
        return qdq if qdq is not None else self._dense(node, x, w, None)

    def op_BatchNormalization(self, node):
        a = self.attrs(node)
        if a.get("training_mode", 0):
            self.fail(node, "training_mode=1; export the model in eval mode")
        x = self.real(self.val(node), node)
        # (C,) parameters apply along axis 1 (not broadcast from the right)
        vecs = [self.channel_vector(x, np.reshape(self.const(node, k, what), (-1,) + (1,) * (len(x.shape) - 2)),
                                    node, what)
                for k, what in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance"))]
        n = self.b.add(L.BatchNormalization, x.node, self.layer_name(node), vecs, epsilon=a.get("epsilon", 1e-5))
        return Value(n, "float32", x.shape, x.perm)

    def op_Relu(self, node):
        x = self.real(self.val(node), node)
        conv, producer = x.conv, self.producer.get(node.input[0])
        if conv is not None and conv.activation is None and self.uses.get(node.input[0], 0) == 1 \
                and producer is not None and producer.op_type in ("Conv", "Gemm", "MatMul"):
            conv.activation = "relu"  # the convolution's output goes to this ReLU alone: fuse it
            return Value(x.node, "float32", x.shape, x.perm, zeros=True)
        n = self.b.add(L.ReLU, x.node, self.layer_name(node))
        return Value(n, "float32", x.shape, x.perm, zeros=True)

    def op_LeakyRelu(self, node):
        x = self.real(self.val(node), node)
        n = self.b.add(L.ReLU, x.node, self.layer_name(node), negative_slope=self.attrs(node).get("alpha", 0.01))
        return Value(n, "float32", x.shape, x.perm, zeros=x.zeros)

    def op_PRelu(self, node):
        x = self.real(self.val(node), node)
        alpha = self.channel_vector(x, self.const(node, 1, "slope"), node, "the slope")
        n = self.b.add(L.PReLU, x.node, self.layer_name(node), [alpha])
        return Value(n, "float32", x.shape, x.perm, zeros=x.zeros)

    def op_Clip(self, node):
        x = self.val(node)
        a = self.attrs(node)
        if self.opset >= 11:
            lo, hi = self.const(node, 1, "min", optional=True), self.const(node, 2, "max", optional=True)
        else:
            lo, hi = a.get("min"), a.get("max")
        lo = -np.inf if lo is None else float(lo)
        hi = np.inf if hi is None else float(hi)
        if lo == 0 and hi > 0:
            x = self.real(x, node)
            n = self.b.add(L.ReLU, x.node, self.layer_name(node), max_value=None if np.isinf(hi) else hi)
            return Value(n, "float32", x.shape, x.perm, zeros=True)
        if lo < 0 <= hi:  # Hardtanh before a sign: kept only for a following binarization
            return Value(None, "float32", x.shape, x.perm, defer=("clip", x, lo, hi))
        self.fail(node, f"clips to [{lo}, {hi}]; pybnn has ReLU (min 0, optional max) and keeps clips with "
                        f"min < 0 <= max only before a binarization")

    def op_Sign(self, node):
        x = self.val(node)
        src = x.defer[1] if x.defer is not None and x.defer[0] == "clip" else x
        if src.zeros:
            self.fail(node, "the sign of a tensor with many exact zeros (a ReLU output, a dequantized int8 "
                            "tensor, integer sums of a binary or int8 layer without bias): ONNX's Sign gives 0 "
                            "there, pybnn's binarization +1; binarize with torch.where(x >= 0, 1., -1.)")
        return self._binarize(node, x)

    def op_Where(self, node):
        cond = node.input[0]
        producer = self.producer.get(cond)
        hi, lo = (self.const(node, k, "value", optional="dynamic-ok") for k in (1, 2))
        if producer is None or producer.op_type not in COMPARISONS or hi is None or lo is None:
            self.fail(node, "pybnn imports Where only as a binarization: Where(x <compare> constant, c1, c2) "
                            "with constant c1, c2 = ±1")
        hi_v, lo_v = np.unique(hi), np.unique(lo)
        if len(hi_v) != 1 or len(lo_v) != 1 or {float(hi_v[0]), float(lo_v[0])} != {1.0, -1.0}:
            self.fail(node, f"selects between {hi_v.tolist()} and {lo_v.tolist()}; a binarization selects +1 and -1")
        a, b = producer.input
        op = {"Greater": ">", "GreaterOrEqual": ">=", "Less": "<", "LessOrEqual": "<="}[producer.op_type]
        if a in self.consts and b not in self.consts:  # t < x  ->  x > t
            a, b, op = b, a, {">": "<", "<": ">", ">=": "<=", "<=": ">="}[op]
        if a in self.consts or b not in self.consts:
            self.fail(producer, "a binarization compares a computed tensor with a constant")
        if float(hi_v[0]) == -1.0:  # +1 where the comparison is false
            op = {">": "<=", "<=": ">", ">=": "<", "<": ">="}[op]
        x = self.values[a]
        src = x.defer[1] if x.defer is not None and x.defer[0] == "clip" else self.real(x, node)
        t = self.channel_vector(src, self.consts[b], producer, "the threshold")
        return self._binarize(node, x, op, t if np.any(t != 0) else None)

    def op_Add(self, node):
        return self._arith(node, "Add")

    def op_Sub(self, node):
        return self._arith(node, "Sub")

    def op_Mul(self, node):
        return self._arith(node, "Mul")

    def op_Div(self, node):
        return self._arith(node, "Div")

    def op_Neg(self, node):
        x = self.real(self.val(node), node)
        return self._affine(node, x, np.full(x.shape[1], -1, np.float32), None)

    def _arith(self, node, op):
        a, b = node.input
        if a not in self.consts and b not in self.consts:
            x, y = (self.real(self.values[n], node) for n in (a, b))
            if op == "Add":
                return self._add(node, [x, y])
            if op == "Sub":
                neg = self._affine(node, y, np.full(y.shape[1], -1, np.float32), None, "/neg")
                return self._add(node, [x, neg])
            self.fail(node, f"{op} of two computed tensors; pybnn multiplies only by per-channel constants")
        const_first = a in self.consts
        x = self.real(self.values[b if const_first else a], node)
        c = self.consts[a if const_first else b]
        if op == "Div" and const_first:
            self.fail(node, "divides a constant by a computed tensor")
        vec = self.channel_vector(x, c, node, "the constant")
        if op == "Add":
            return self._affine(node, x, None, vec)
        if op == "Sub":
            if const_first:   # c - x = (-x) + c, the same float32 result
                return self._affine(node, x, np.full_like(vec, -1), vec)
            return self._affine(node, x, None, -vec)  # x - c = x + (-c) exactly
        if op == "Div":
            self.b.notes.append(f"node '{self.label(node)}' (Div): division by a constant imported as "
                                f"multiplication by its reciprocal (float rounding may differ)")
            vec = (np.float32(1) / vec).astype(np.float32)
        return self._affine(node, x, vec, None)

    def op_MaxPool(self, node):
        return self._pool(node, "max")

    def op_AveragePool(self, node):
        return self._pool(node, "avg")

    def _pool(self, node, kind):
        a = self.attrs(node)
        x = self.real(self.val(node), node)
        if len(node.output) > 1 and node.output[1] in self.uses:
            self.fail(node, "its Indices output is used; pybnn pooling has none")
        k = tuple(a["kernel_shape"])
        if len(k) != 2 or len(x.shape) != 4:
            self.fail(node, "only 2-D pooling is supported")
        if any(d != 1 for d in a.get("dilations", (1, 1))):
            self.fail(node, "dilated pooling is not supported")
        strides, _, pads = self._conv_geometry(node, x.shape, k)
        out = self.shape(node.output[0], node)
        # ceil_mode: the extra windows at the end are windows over extra bottom/right padding
        extra = [max((out[2 + i] - 1) * strides[i] + k[i] - (x.shape[2 + i] + sum(pads[i])), 0) for i in range(2)]
        padded = any(p for pair in pads for p in pair) or any(extra)
        if kind == "avg" and padded and (a.get("count_include_pad", 0) or any(extra)):
            self.fail(node, "averages over padding (count_include_pad=1 or ceil_mode); pybnn's average pooling "
                            "excludes padded positions from the count")
        pads = tuple((p[0], p[1] + e) for p, e in zip(pads, extra))
        cls = L.MaxPool2D if kind == "max" else L.AveragePool2D
        n = self.b.add(cls, x.node, self.layer_name(node), pool_size=k, strides=strides, padding=pads)
        kind_out = x.kind if kind == "max" or x.kind == "int8" else "float32"
        return Value(n, kind_out, out, zeros=x.zeros, scale=x.scale, zp=x.zp, dtype=x.dtype)

    def _global_pool(self, node, cls, x, keep=True):
        x = self.real(x, node)
        if len(x.shape) != 4:
            self.fail(node, "pools a tensor that is not (N, C, H, W)")
        n = self.b.add(cls, x.node, self.layer_name(node), pool_size=x.shape[2:], strides=1)
        kind = x.kind if cls is L.MaxPool2D or x.kind == "int8" else "float32"
        v = Value(n, kind, (x.shape[0], x.shape[1], 1, 1), zeros=x.zeros, scale=x.scale,
                  zp=x.zp, dtype=x.dtype)
        return v if keep else self._flatten(node, v, "/flatten")

    def op_GlobalAveragePool(self, node):
        return self._global_pool(node, L.AveragePool2D, self.val(node))

    def op_GlobalMaxPool(self, node):
        return self._global_pool(node, L.MaxPool2D, self.val(node))

    def op_ReduceMean(self, node):
        a = self.attrs(node)
        x = self.val(node)
        axes = a.get("axes")
        if axes is None and len(node.input) > 1:
            axes = self.const(node, 1, "axes", optional=True)
        axes = sorted(int(i) % len(x.shape) for i in (axes if axes is not None else ()))
        if axes != [2, 3]:
            self.fail(node, f"averages over axes {axes}; pybnn averages over height and width (axes 2, 3)")
        return self._global_pool(node, L.AveragePool2D, x, keep=bool(a.get("keepdims", 1)))

    def _flatten(self, node, x, suffix=""):
        x = self.real(x, node)
        if len(x.shape) == 2:
            return x
        if len(x.shape) != 4:
            self.fail(node, f"flattens a {len(x.shape)}-D tensor")
        _, c, h, w = x.shape
        perm = nchw_flatten_order(c, h, w)
        n = self.b.add(L.Flatten, x.node, self.layer_name(node, suffix))
        return Value(n, x.kind, (x.shape[0], c * h * w), perm, x.zeros, x.scale, x.zp, x.dtype)

    def op_Flatten(self, node):
        x = self.val(node)
        if self.attrs(node).get("axis", 1) != 1:
            self.fail(node, "flattens from an axis other than 1")
        return self._flatten(node, x)

    def op_Reshape(self, node):
        x = self.val(node)
        out = self.shapes.get(node.output[0])
        if out is None and node.op_type == "Reshape":  # from the (constant-folded) target shape
            target = [int(t) for t in self.const(node, 1, "shape")]
            allowzero = self.attrs(node).get("allowzero", 0)
            target = [x.shape[i] if t == 0 and not allowzero else t for i, t in enumerate(target)]
            if target.count(-1) == 1:
                known = int(np.prod([t for t in target if t != -1]))
                target[target.index(-1)] = int(np.prod(x.shape)) // max(known, 1)
            out = tuple(target)
        out = out if out is not None else self.shape(node.output[0], node)
        if tuple(out) == tuple(x.shape):
            return x
        if len(x.shape) == 4 and len(out) == 2 and out[0] == x.shape[0]:
            return self._flatten(node, x)
        self.fail(node, f"reshapes {list(x.shape)} to {list(out)}; pybnn imports reshapes that flatten "
                        f"(N, C, H, W) to (N, C*H*W)")

    op_Squeeze = op_Reshape

    def op_Concat(self, node):
        xs = [self.real(self.val(node, k), node) for k in range(len(node.input))]
        rank = len(xs[0].shape)
        axis = self.attrs(node).get("axis") % rank
        if axis != 1 or any(x.perm is not None for x in xs):
            self.fail(node, f"concatenates along axis {axis}; pybnn concatenates channels (axis 1) of NCHW "
                            f"tensors or features of (N, F) tensors")
        if len(xs) == 1:
            return xs[0]
        n = self.b.add(L.Concatenate, [x.node for x in xs], self.layer_name(node))
        kinds = {x.kind for x in xs}
        kind = kinds.pop() if len(kinds) == 1 else "float32"
        same_q = len({(x.scale, x.zp) for x in xs}) == 1
        if kind == "int8" and not same_q:
            kind = "float32"
        q = (xs[0].scale, xs[0].zp, xs[0].dtype) if kind == "int8" else (None, None, None)
        return Value(n, kind, self.shape(node.output[0], node), None, any(x.zeros for x in xs), *q)

    def op_Pad(self, node):
        a = self.attrs(node)
        x = self.real(self.val(node), node)
        mode = a.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode != "constant":
            self.fail(node, f"mode '{mode}'; pybnn folds constant padding into convolutions only")
        if self.opset >= 11:
            pads = self.const(node, 1, "pads")
            value = self.const(node, 2, "constant_value", optional=True)
            axes = self.const(node, 3, "axes", optional=True) if len(node.input) > 3 else None
        else:
            pads, value, axes = a.get("pads"), a.get("value", 0.0), None
        rank = len(x.shape)
        pads = [int(p) for p in np.asarray(pads).ravel()]
        axes = list(range(rank)) if axes is None else [int(i) % rank for i in np.asarray(axes).ravel()]
        full = [0] * (2 * rank)
        for i, axis in enumerate(axes):
            full[axis], full[rank + axis] = pads[i], pads[len(axes) + i]
        if rank != 4 or full[0] or full[1] or full[4] or full[5] or min(full) < 0:
            self.fail(node, f"pads {full}; pybnn folds non-negative padding of height and width into a convolution")
        value = 0.0 if value is None else float(np.asarray(value).ravel()[0]) if np.size(value) else 0.0
        return Value(None, x.kind, self.shape(node.output[0], node), defer=("pad", x, ((full[2], full[6]),
                                                                                      (full[3], full[7])), value))

    def op_Softmax(self, node):
        x = self.real(self.val(node), node)
        axis = self.attrs(node).get("axis", -1 if self.opset >= 13 else 1) % len(x.shape)
        if len(x.shape) != 2 or axis != 1:
            self.fail(node, "softmax over an axis other than the features of an (N, F) tensor")
        n = self.b.add(L.Softmax, x.node, self.layer_name(node))
        return Value(n, "float32", x.shape, x.perm)

    # ------------------------------------------------------------ quantization
    def _dq_params(self, node, constant=False):
        """(scale, zero point, axis) of a DequantizeLinear / QuantizeLinear node; per-tensor
        unless constant (weights may be per-channel)."""
        scale = self.const(node, 1, "scale").astype(np.float32)
        zp = self.const(node, 2, "zero point", optional=True)
        axis = self.attrs(node).get("axis", 1)
        if constant:
            return self.consts[node.input[0]], scale, zp, axis
        if scale.size != 1 or (zp is not None and zp.size != 1):
            self.fail(node, "per-channel quantization of activations; pybnn quantizes activations per tensor")
        return float(scale.ravel()[0]), 0 if zp is None else int(zp.ravel()[0]), zp

    def op_QuantizeLinear(self, node):
        x = self.real(self.val(node), node)
        scale, zp, zp_arr = self._dq_params(node)
        to = self.attrs(node).get("output_dtype", 0)
        dtype = zp_arr.dtype if zp_arr is not None else (np.dtype(helper.tensor_dtype_to_np_dtype(to)) if to
                                                         else np.dtype(np.uint8))
        if dtype not in (np.uint8, np.int8):
            self.fail(node, f"quantizes to {dtype}; pybnn's int8 tensors hold int8 or uint8 values")
        shift = 128 if dtype == np.uint8 else 0
        n = self.b.add(L.Quantize, x.node, self.layer_name(node), scale=scale, zero_point=zp - shift)
        return Value(n, "int8", x.shape, x.perm, scale=scale, zp=zp - shift, dtype=str(dtype))

    def _check_q(self, node, x, scale, zp, what):
        if x.kind != "int8":
            self.fail(node, f"{what} a tensor that is not quantized (it comes from no QuantizeLinear)")
        shift = 128 if x.dtype == "uint8" else 0
        if np.float32(scale) != np.float32(x.scale) or zp - shift != x.zp:
            self.fail(node, f"{what} with scale {scale}, zero point {zp}; the tensor was quantized with scale "
                            f"{x.scale}, zero point {x.zp + shift}")

    def op_DequantizeLinear(self, node):
        x = self.real(self.val(node), node)
        scale, zp, _ = self._dq_params(node)
        self._check_q(node, x, scale, zp, "dequantizes")
        n = self.b.add(L.Dequantize, x.node, self.layer_name(node))
        return Value(n, "float32", x.shape, x.perm, zeros=True)

    def _int8_weights(self, node, q, zp, what):
        if q.dtype != np.int8 or (zp is not None and np.any(zp != 0)):
            self.fail(node, f"{what} must be int8 with zero point 0 (symmetric); got {q.dtype} with zero point "
                            f"{None if zp is None else np.unique(zp).tolist()}")
        if q.size and q.min() < -127:
            self.fail(node, f"{what} holds -128; pybnn's int8 weights lie in [-127, 127]")
        return q

    def _int8_layer(self, node, x, kernel, kscale, bias, dense, output, geometry=None):
        """Int8Conv2D / Int8Dense (Int8BinaryConv2D / ...Dense for ±1 weights) of the int8 tensor x
        (ONNX quantized operators and QDQ)."""
        units = kernel.shape[-1]
        kscale = np.broadcast_to(np.asarray(kscale, np.float32).ravel(), (units,)).copy() \
            if np.size(kscale) in (1, units) else None
        if kscale is None:
            self.fail(node, "weight scales must be per tensor or per output channel")
        # ±1 weights: the int8 x binary kind computes the same sums with 1-bit weights
        binary = kernel.size and np.all(np.abs(kernel.astype(np.int32)) == 1)
        cls = (L.Int8BinaryDense if dense else L.Int8BinaryConv2D) if binary else (L.Int8Dense if dense else
                                                                                   L.Int8Conv2D)
        config = dict(geometry or {})
        if output is not None:
            config.update(output="int8", output_scale=output[0], output_zero_point=output[1])
        weights = [kernel, kscale] + ([bias] if bias is not None else [])
        size = {"units": units} if dense else {"filters": units}
        n = self.b.add(cls, x.node, self.layer_name(node), weights, use_bias=bias is not None, **size, **config)
        return n

    def op_QLinearConv(self, node):
        x = self.real(self.val(node), node)
        xs, xz = float(self.const(node, 1, "x_scale")), int(self.const(node, 2, "x_zero_point"))
        self._check_q(node, x, xs, xz, "convolves")
        w = self._int8_weights(node, self.const(node, 3, "weight"), self.const(node, 5, "w_zero_point"), "the weight")
        ws = self.const(node, 4, "w_scale")
        ys, yz_arr = self.const(node, 6, "y_scale"), self.const(node, 7, "y_zero_point")
        bias = self.const(node, 8, "bias", optional=True)
        strides, dilations, pads = self._conv_geometry(node, x.shape, w.shape[2:])
        shift = 128 if yz_arr.dtype == np.uint8 else 0
        yz = int(yz_arr.ravel()[0]) - shift
        geometry = dict(kernel_size=w.shape[2:], strides=strides, padding=pads, dilation_rate=dilations,
                        groups=self.attrs(node).get("group", 1))
        kernel = np.ascontiguousarray(w.transpose(2, 3, 1, 0))
        n = self._int8_layer(node, x, kernel, ws, None if bias is None else bias.astype(np.int32), False,
                             (float(ys.ravel()[0]), yz), geometry)
        return Value(n, "int8", self.shape(node.output[0], node), scale=float(ys.ravel()[0]), zp=yz,
                     dtype=str(yz_arr.dtype))

    def op_QLinearMatMul(self, node):
        x = self.real(self.val(node), node)
        xs, xz = float(self.const(node, 1, "a_scale")), int(self.const(node, 2, "a_zero_point"))
        self._check_q(node, x, xs, xz, "multiplies")
        w = self._int8_weights(node, self.const(node, 3, "matrix B"), self.const(node, 5, "b_zero_point"), "B")
        if w.ndim != 2 or len(x.shape) != 2:
            self.fail(node, "only (N, K) x (K, M) products are supported")
        ys, yz_arr = self.const(node, 6, "y_scale"), self.const(node, 7, "y_zero_point")
        shift = 128 if yz_arr.dtype == np.uint8 else 0
        yz = int(yz_arr.ravel()[0]) - shift
        kernel = w[x.perm] if x.perm is not None else w
        n = self._int8_layer(node, x, np.ascontiguousarray(kernel), self.const(node, 4, "b_scale"), None, True,
                             (float(ys.ravel()[0]), yz))
        return Value(n, "int8", self.shape(node.output[0], node), scale=float(ys.ravel()[0]), zp=yz,
                     dtype=str(yz_arr.dtype))

    def _qdq_source(self, name):
        """The int8 Value a DequantizeLinear output comes from, if it does."""
        p = self.producer.get(name)
        if p is None or p.op_type != "DequantizeLinear" or p.input[0] in self.consts:
            return None
        q = self.values.get(p.input[0])
        return q if q is not None and q.kind == "int8" and q.defer is None else None

    def _qdq_weights(self, name, axis_out):
        """(int8 kernel, per-channel scale) of a weight given as DequantizeLinear(int8 constant)."""
        found = self.qconst.get(name)
        if found is None:
            return None
        q, scale, zp, axis = found
        if q.dtype != np.int8 or (zp is not None and np.any(zp != 0)) or (q.size and q.min() < -127):
            return None
        if scale.size != 1 and (scale.ndim != 1 or axis % q.ndim != axis_out):
            return None
        return q, scale

    def _qdq_bias(self, name, in_scale, kscale, units):
        """(int32 bias, None) when the bias is DequantizeLinear(int32) at scale in_scale * kscale,
        else (None, float bias) to add after the layer."""
        if not name:
            return None, None
        found = self.qconst.get(name)
        want = (np.float64(in_scale) * np.broadcast_to(kscale, (units,))).astype(np.float32)
        if found is not None:
            q, scale, zp, _ = found
            if q.dtype == np.int32 and (zp is None or np.all(zp == 0)) and \
                    np.allclose(np.broadcast_to(scale, (units,)), want, rtol=1e-6, atol=0):
                return q.astype(np.int32).ravel(), None
        return None, self.consts[name].astype(np.float32).ravel()

    def _qdq_conv(self, node, x):
        """Conv(DequantizeLinear(int8 tensor), DequantizeLinear(int8 weights)) -> Int8Conv2D."""
        q = self._qdq_source(node.input[0])
        weights = self._qdq_weights(node.input[1], 0)
        if q is None or weights is None:
            return None
        kq, kscale = weights
        units = kq.shape[0]
        strides, dilations, pads = self._conv_geometry(node, x.shape, kq.shape[2:])
        ibias, fbias = self._qdq_bias(node.input[2] if len(node.input) > 2 else "", q.scale, kscale, units)
        geometry = dict(kernel_size=kq.shape[2:], strides=strides, padding=pads, dilation_rate=dilations,
                        groups=self.attrs(node).get("group", 1))
        n = self._int8_layer(node, q, np.ascontiguousarray(kq.transpose(2, 3, 1, 0)), kscale, ibias, False, None,
                             geometry)
        v = Value(n, "float32", self.shape(node.output[0], node), zeros=_integer_sums(n.layer), conv=n.layer)
        return v if fbias is None else self._affine(node, v, None, fbias, "/bias")

    def _qdq_dense(self, node):
        q = self._qdq_source(node.input[0])
        weights = self._qdq_weights(node.input[1], 0 if node.op_type == "Gemm" and
                                    self.attrs(node).get("transB", 0) else 1)
        if q is None or weights is None or len(q.shape) != 2:
            return None
        kq, kscale = weights
        a = self.attrs(node)
        if node.op_type == "Gemm" and (a.get("alpha", 1.0) != 1 or a.get("beta", 1.0) != 1):
            return None
        if node.op_type == "Gemm" and a.get("transB", 0):
            kq = kq.T
        units = kq.shape[1]
        if q.perm is not None:
            kq = kq[q.perm]
        ibias, fbias = self._qdq_bias(node.input[2] if len(node.input) > 2 else "", q.scale, kscale, units)
        n = self._int8_layer(node, q, np.ascontiguousarray(kq), kscale, ibias, True, None)
        v = Value(n, "float32", self.shape(node.output[0], node), zeros=_integer_sums(n.layer), conv=n.layer)
        return v if fbias is None else self._affine(node, v, None, fbias, "/bias")


def _integer_sums(layer):
    """True for a layer whose outputs are integer sums (plus an integer bias) times a scale:
    exactly 0 wherever the sum is (an even number of ±1 products cancel, int8 products too)."""
    return layer.acc == "int" and (not layer.use_bias or isinstance(layer, L.Int8Conv2D))
