"""Sequential models: build-time validation, folding, prediction and summaries."""
import copy
import time

import numpy as np

from . import cpu
from . import reference as ref
from .errors import ConfigError, PyBNNError, ShapeError
from .folding import float_threshold, integer_threshold
from .layers import BatchNormalization, Dequantize, Input, Layer, Sign
from .layers.base import to_user
from .layers.conv import _Conv


class Sequential:
    """A chain of layers starting with an Input.

    When a layer is fed a kind of tensor it does not take, the model converts where the
    meaning is unambiguous and says so in summary(): int8 or binary into a float layer goes
    through Dequantize (int8 -> real values, binary -> ±1); float or int8 into a binary layer
    goes through Sign (sign(x), or q < zero_point).  Nothing converts to int8 implicitly:
    that needs a scale, so put a Quantize layer there.

    fold=True (the default) folds BatchNormalization into the preceding layer's multiplier
    and bias, BatchNormalization + Sign into per-channel thresholds, and an integer
    convolution followed by Sign into a convolution that writes packed bits directly.
    Folding into thresholds is exact (see folding.py); folding into float multipliers
    changes float rounding only.

    num_threads: threads the kernels use (None: pybnn.cpu.num_threads()); results are
    identical for every thread count."""

    def __init__(self, layers, name="sequential", fold=True, num_threads=None):
        if not isinstance(layers, (list, tuple)) or not layers:
            raise ConfigError(f"{name}: Sequential takes a non-empty list of layers, got {layers!r}")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise ConfigError(f"{name}: item {i} is not a pybnn layer: {layer!r}")
        if not isinstance(layers[0], Input):
            raise ConfigError(f"{name}: the first layer must be pybnn.layers.Input(shape, dtype), "
                              f"got {type(layers[0]).__name__}")
        self.name, self.fold = name, bool(fold)
        self.num_threads = num_threads  # None: pybnn.cpu.num_threads() (PYBNN_NUM_THREADS / physical cores)
        self.layers = list(layers)
        seen = set()
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Input) and i:
                raise ConfigError(f"{name}: Input may only be the first layer (found at position {i})")
            layer.name = layer.name or layer.default_name(i)
            if layer.name in seen:
                raise ConfigError(f"{name}: two layers are named {layer.name!r}; names must be unique")
            seen.add(layer.name)
        self._build()
        self._plan, self._plan_key, self.fold_notes = None, None, []

    # ------------------------------------------------------------ building
    def _build(self):
        """Chain the tensor specs, inserting the documented conversions."""
        graph, prev = [], self.layers[0]
        spec = prev.spec()
        prev.output_spec = spec
        graph.append(prev)
        for layer in self.layers[1:]:
            if spec.kind not in layer.input_kinds:
                conv = self._conversion(prev, layer, spec)
                spec = conv.build(spec)
                graph.append(conv)
            try:
                spec = layer.build(spec)
            except PyBNNError as e:
                raise type(e)(f"{e} (its input comes from layer '{prev.name}')") from None
            graph.append(layer)
            prev = layer
        self._graph = graph

    @staticmethod
    def _conversion(prev, layer, spec):
        if "float32" in layer.input_kinds:
            return Dequantize(name=f"{layer.name}/dequantize")
        if "binary" in layer.input_kinds and spec.kind in ("float32", "int8"):
            return Sign(name=f"{layer.name}/sign")
        raise ShapeError(f"layer '{layer.name}' ({type(layer).__name__}) takes {' or '.join(layer.input_kinds)} "
                         f"input, but layer '{prev.name}' produces {spec.describe()}; "
                         f"insert a Quantize(scale, zero_point) layer between them")

    @property
    def input_spec(self):
        return self._graph[0].output_spec

    @property
    def output_spec(self):
        return self._graph[-1].output_spec

    def get_layer(self, name):
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ConfigError(f"{self.name}: no layer named {name!r}; layers: {[l.name for l in self.layers]}")

    # ------------------------------------------------------------ folding
    def plan(self):
        """The layers predict() runs: the graph with folding applied (rebuilt after set_weights)."""
        missing = [l.name for l in self._graph if not l.has_weights]
        if missing:
            raise ShapeError(f"{self.name}: layers {missing} have no weights; call set_weights() or load()")
        key = tuple(l.version for l in self._graph)
        if self._plan is None or self._plan_key != key:
            self._plan, self.fold_notes = _fold(self._graph) if self.fold else (list(self._graph), [])
            self._plan_key = key
        return self._plan

    # ------------------------------------------------------------ running
    def predict(self, x, batch_size=None):
        """Run the model on a batch (N, ...) of float32 / uint8 / int8 inputs as the Input says.

        Returns float32: float outputs as they are, int8 outputs dequantized, binary outputs
        as ±1."""
        with cpu.use_threads(self.num_threads):
            return self._run(x, batch_size, self.plan(), "call")

    def predict_reference(self, x, folded=False):
        """The same prediction computed by the NumPy reference of every layer (slow), either
        of the layers as written (folded=False) or of the folded plan."""
        ops = self.plan() if folded else self._graph
        return self._run(x, None, ops, "reference")

    def _run(self, x, batch_size, ops, method):
        x = self._graph[0].convert(x)
        if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
            raise ConfigError(f"{self.name}: batch_size must be a positive int or None, got {batch_size!r}")
        n = x.shape[0]
        step = batch_size or max(n, 1)
        outputs = []
        for start in range(0, max(n, 1), step):
            h = x[start:start + step]
            for op in ops[1:]:
                h = getattr(op, method)(h)
            outputs.append(to_user(ops[-1].output_spec, h))
        return np.concatenate(outputs) if n else outputs[0][:0]

    def profile(self, x, repeats=5):
        """Per-layer median milliseconds, share of total and kernel path for one batch."""
        plan = self.plan()
        h = self._graph[0].convert(x)
        rows = []
        for op in plan[1:]:
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                out = op.call(h)
                times.append(time.perf_counter() - t0)
            h = out
            rows.append((op.name, type(op).__name__, float(np.median(times)) * 1e3, op.last_isa))
        return rows

    # ------------------------------------------------------------ description
    def summary(self, print_fn=print):
        """Print (and return) a table: layer, kind of output, output shape, parameters,
        weight bytes, million operations per sample."""
        head = f"{'Layer (type)':<36}{'Output':<10}{'Shape':<18}{'Params':>10}{'Bytes':>11}{'MOps':>9}"
        lines = [f'Model: "{self.name}"', head, "-" * len(head)]
        params = nbytes = mops = 0
        for layer in self._graph:
            spec = layer.output_spec
            implicit = "" if layer in self.layers else "  (implicit)"
            p, b, m = layer.count_params(), layer.weight_bytes(), layer.mops()
            params, nbytes, mops = params + p, nbytes + b, mops + m
            label = f"{layer.name} ({type(layer).__name__})"
            lines.append(f"{label[:35]:<36}{spec.kind:<10}{str(spec.shape):<18}{p:>10,}{b:>11,}{m:>9.2f}{implicit}")
        lines.append("-" * len(head))
        float_bytes = 4 * params
        ratio = f" ({float_bytes / nbytes:.1f}x smaller than float32)" if nbytes else ""
        lines.append(f"Total params: {params:,}   weight bytes: {nbytes:,}{ratio}   MOps/sample: {mops:.2f}")
        if self.fold and all(l.has_weights for l in self._graph):
            self.plan()
            lines += [f"Folded: {note}" for note in self.fold_notes]
        lines.append(f"Kernels: {cpu.get_isa()} (available: {', '.join(cpu.available())})")
        text = "\n".join(lines)
        if print_fn:
            print_fn(text)
        return text

    def randomize(self, seed=0):
        """Give every layer random weights of the right shapes (benchmarks and tests; speed does
        not depend on the weights).  Returns self."""
        rng = np.random.default_rng(seed)
        for layer in self._graph:
            arrays = []
            for name, shape, kind in layer.weight_specs():
                if kind == "int8":
                    arrays.append(rng.integers(-127, 128, shape).astype(np.int8))
                elif kind == "int32":
                    arrays.append(rng.integers(-2000, 2001, shape).astype(np.int32))
                elif name == "kernel_scale":
                    arrays.append(rng.uniform(0.002, 0.02, shape).astype(np.float32))
                elif name in ("scale", "gamma", "moving_variance"):
                    arrays.append(rng.uniform(0.5, 1.5, shape).astype(np.float32))
                else:
                    arrays.append(rng.standard_normal(shape).astype(np.float32))
            if arrays:
                layer.set_weights(arrays)
        return self

    # ------------------------------------------------------------ files
    def save(self, path):
        """Write architecture and weights to a pybnn model file (docs/format.md)."""
        from .io import save_model
        save_model(self, path)

    def load(self, path, verify=False):
        """Load weights from a pybnn model file written for this architecture; returns self.
        The file is memory-mapped and its weights used in place; verify=True also checks
        every tensor's checksum (reads all weight bytes)."""
        from .io import load_weights
        load_weights(self, path, verify)
        return self


def _fold(graph):
    """Return (ops, notes): copies of the layers with BN / Sign folded (see Sequential)."""
    ops, notes = [copy.copy(layer) for layer in graph], []

    def fold_pairs(match, merge):
        i = 0
        while i + 1 < len(ops):
            if match(ops[i], ops[i + 1]):
                ops[i:i + 2] = [merge(ops[i], ops[i + 1])]
            else:
                i += 1

    def bn_into_sign(bn, sign):
        new = copy.copy(sign)
        new.input_spec, chain = bn.input_spec, bn.channel_function()
        keep = _sign_positive(sign)
        new.thresholds = float_threshold(lambda v: keep(chain(v)), bn.input_spec.channels)
        notes.append(f"{bn.name} + {sign.name} -> per-channel thresholds in {sign.name}")
        return new

    def sign_into_conv(conv, sign):
        new = copy.copy(conv)
        out, keep = conv._out, _sign_positive(sign)

        def positive(acc):
            acc = acc if out["ibias"] is None else acc + out["ibias"]
            return keep(ref.to_float(acc, out["mult"], out["bias"], out["lo"], out["hi"]))

        lo, hi = conv.acc_range()
        thr, direction = integer_threshold(positive, lo, hi, conv.filters)
        new._out = {"kind": "bits", "thr": np.clip(thr, -2**31, 2**31 - 1).astype(np.int32), "dir": direction}
        new.output_spec = sign.output_spec
        notes.append(f"{conv.name} + {sign.name} -> {conv.name} writes packed bits (integer thresholds)")
        return new

    def bn_into_conv(conv, bn):
        new = copy.copy(conv)
        gamma, beta, mean, var = bn._weights
        inv = (gamma / np.sqrt(var + np.float32(bn.epsilon))).astype(np.float32)
        out = dict(conv._out)
        out["mult"] = (out["mult"] * inv).astype(np.float32)
        out["bias"] = ((out["bias"] - mean) * inv + beta).astype(np.float32)
        new._out = out
        notes.append(f"{bn.name} -> multiplier and bias of {conv.name}")
        return new

    def float_conv(op):
        return isinstance(op, _Conv) and op._out["kind"] == "float"

    fold_pairs(lambda a, b: isinstance(a, BatchNormalization) and isinstance(b, Sign)
               and b.input_spec.kind == "float32", bn_into_sign)
    fold_pairs(lambda a, b: float_conv(a) and a.acc == "int" and isinstance(b, Sign)
               and b.input_spec.kind == "float32", sign_into_conv)
    fold_pairs(lambda a, b: float_conv(a) and np.isinf(a._out["lo"]) and np.isinf(a._out["hi"])
               and isinstance(b, BatchNormalization), bn_into_conv)
    return ops, notes


def _sign_positive(sign):
    """Where a Sign layer outputs +1, as a function of its float input."""
    if sign.thresholds is None:
        return lambda y: ~(y < 0)
    thr, direction = sign.thresholds
    return lambda y: ~ref.threshold_negative(y, thr, direction)
