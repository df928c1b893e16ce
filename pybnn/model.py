"""Models: functional graphs (Model) and chains (Sequential).  Build-time validation and
conversions, folding, a planned activation arena, prediction, profiling and summaries."""
import copy
import threading
import time

import numpy as np

from . import cpu, layouts
from . import reference as ref
from .errors import ConfigError, PyBNNError, ShapeError
from .folding import float_threshold, integer_threshold
from .layers import Add, BatchNormalization, ChannelAffine, Dequantize, Input, Layer, Node, ReLU, Sign
from .layers.base import to_user
from .layers.conv import _Conv

ALIGN = 64  # arena offsets: cache-line aligned, as the kernels' SIMD loads like


class Step:
    """One operation of a built graph: a layer (or an implicit conversion) and the steps
    whose outputs it takes."""

    __slots__ = ("op", "inputs")

    def __init__(self, op, inputs):
        self.op, self.inputs = op, list(inputs)


class Model:
    """A graph of layers, built with the functional API:

        inputs = L.Input((32, 32, 3))
        x = L.Conv2D(64, 3, padding="same")(inputs)
        y = L.BinaryConv2D(64, 3, padding="same")(x)          # Sign inserted implicitly
        outputs = L.Add()([y, x])
        model = pybnn.Model(inputs, outputs)

    When a layer is fed a kind of tensor it does not take, the model converts where the
    meaning is unambiguous and says so in summary(): int8 or binary into a float layer goes
    through Dequantize (int8 -> real values, binary -> ±1); float or int8 into a binary layer
    goes through Sign (sign(x), or q < zero_point).  Nothing converts to int8 implicitly:
    that needs a scale, so put a Quantize layer there.

    fold=True (the default) folds BatchNormalization (and ChannelAffine) into the preceding
    layer's multiplier and bias, BatchNormalization + Sign into per-channel thresholds, and an integer
    convolution followed by Sign into a convolution that writes packed bits directly, where
    the first layer's output goes nowhere else; a ReLU after a float-output convolution
    becomes its activation.  Folding into thresholds is exact (see folding.py); folding into
    float multipliers changes float rounding only, a ReLU at most the sign of a zero.

    Activations live in an arena planned once per batch size: every tensor gets an offset in
    one buffer, reused by tensors whose lifetimes do not overlap (activation_bytes()).

    num_threads: threads the kernels use (None: pybnn.cpu.num_threads()); results are
    identical for every thread count."""

    def __init__(self, inputs, outputs, name="model", fold=True, num_threads=None):
        ins = _as_list(inputs, "inputs", name)
        outs = _as_list(outputs, "outputs", name)
        in_layers = []
        for x in ins:
            layer = x.layer if isinstance(x, Node) else x
            if not isinstance(layer, Input):
                raise ConfigError(f"{name}: inputs must be pybnn.layers.Input layers, got {x!r}")
            in_layers.append(layer)
        out_layers = []
        for x in outs:
            if not isinstance(x, (Node, Layer)):
                raise ConfigError(f"{name}: outputs must be outputs of layers (what calling a layer "
                                  f"returns), got {x!r}")
            out_layers.append(x.layer if isinstance(x, Node) else x)
        # every layer the outputs depend on, in call order (a topological order)
        found, todo = {}, list(out_layers)
        while todo:
            layer = todo.pop()
            if id(layer) not in found:
                found[id(layer)] = layer
                todo.extend(layer.inbound or [])
        layers = sorted(found.values(), key=lambda l: l._order)
        for layer in layers:
            if isinstance(layer, Input) and layer not in in_layers:
                raise ConfigError(f"{name}: the outputs depend on an Input that is not among the model's "
                                  f"inputs ({layer.name or layer.shape})")
            if not isinstance(layer, Input) and layer.inbound is None:
                raise ConfigError(f"{name}: layer {layer.name or type(layer).__name__} was never called on "
                                  f"an input")
        for layer in in_layers:
            if id(layer) not in found:
                raise ConfigError(f"{name}: input {layer.name or layer.shape} is not used by the outputs")
        index = {id(l): i for i, l in enumerate(layers)}
        inbound = [[index[id(p)] for p in (l.inbound or [])] for l in layers]
        self._init(layers, inbound, [index[id(l)] for l in in_layers], [index[id(l)] for l in out_layers],
                   name, fold, num_threads)

    def _init(self, layers, inbound, inputs, outputs, name, fold, num_threads):
        """layers: in a topological order; inbound[i]: indices of layer i's inputs;
        inputs/outputs: indices of the model's Input layers and output layers."""
        self.name, self.fold = name, bool(fold)
        self.num_threads = num_threads  # None: pybnn.cpu.num_threads() (PYBNN_NUM_THREADS / physical cores)
        self.layers = list(layers)
        self._inbound, self._inputs, self._outputs = inbound, list(inputs), list(outputs)
        seen = set()
        for i, layer in enumerate(self.layers):
            layer.name = layer.name or layer.default_name(i)
            if layer.name in seen:
                raise ConfigError(f"{name}: two layers are named {layer.name!r}; names must be unique")
            seen.add(layer.name)
        self._build()
        self._plan, self._plan_key, self.fold_notes = None, None, []
        self._local = threading.local()  # per calling thread: its activation arenas

    # ------------------------------------------------------------ building
    def _build(self):
        """Make the steps: every layer built on its inputs' specs, with the documented
        conversions inserted on the edges that need them."""
        steps, step_of = [], {}
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Input):
                layer.output_spec = layer.spec()
                step_of[i] = len(steps)
                steps.append(Step(layer, []))
                continue
            srcs = [step_of[j] for j in self._inbound[i]]
            specs = [steps[s].op.output_spec for s in srcs]
            for k, (want, spec) in enumerate(zip(layer.input_kinds_for(specs), specs)):
                if want == spec.kind:
                    continue
                conv = self._conversion(steps[srcs[k]].op, layer, spec, want, k if len(srcs) > 1 else None)
                specs[k] = conv.build(spec)
                steps.append(Step(conv, [srcs[k]]))
                srcs[k] = len(steps) - 1
            try:
                layer.build(specs[0] if layer.n_inputs == 1 else specs)
            except PyBNNError as e:
                names = ", ".join(f"'{steps[s].op.name}'" for s in srcs)
                raise type(e)(f"{e} (its input comes from {names})") from None
            step_of[i] = len(steps)
            steps.append(Step(layer, srcs))
        self._steps = steps
        self._step_outputs = [step_of[i] for i in self._outputs]

    @staticmethod
    def _conversion(prev, layer, spec, want, k):
        suffix = "" if k is None else f"_{k}"
        if want == "float32":
            return Dequantize(name=f"{layer.name}/dequantize{suffix}")
        if want == "binary" and spec.kind in ("float32", "int8"):
            return Sign(name=f"{layer.name}/sign{suffix}")
        takes = " or ".join(layer.input_kinds) if want is None else want
        raise ShapeError(f"layer '{layer.name}' ({type(layer).__name__}) takes {takes} input, but layer "
                         f"'{prev.name}' produces {spec.describe()}; insert a Quantize(scale, zero_point) "
                         f"layer between them")

    @property
    def inputs(self):
        return [self.layers[i] for i in self._inputs]

    @property
    def input_spec(self):
        return self.layers[self._inputs[0]].output_spec

    @property
    def output_spec(self):
        return self._steps[self._step_outputs[0]].op.output_spec

    @property
    def _graph(self):
        """Every layer and implicit conversion, in execution order."""
        return [step.op for step in self._steps]

    def get_layer(self, name):
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ConfigError(f"{self.name}: no layer named {name!r}; layers: {[l.name for l in self.layers]}")

    def inbound_names(self, layer):
        """Names of the layers whose outputs `layer` takes (its place in the graph)."""
        i = self.layers.index(layer)
        return [self.layers[j].name for j in self._inbound[i]]

    # ------------------------------------------------------------ folding
    def plan(self):
        """The operations predict() runs, in order: the graph with folding applied (rebuilt
        after set_weights)."""
        return [step.op for step in self._planned()]

    def _planned(self):
        # Weights are set, never removed, and every set bumps a version: a plan built for
        # the current versions had all its weights (checked here on every call, the fast
        # path of predict(), it costs ~0.1 us per layer).
        key = [s.op.version for s in self._steps]
        if self._plan is None or self._plan_key != key:
            missing = [s.op.name for s in self._steps if not s.op.has_weights]
            if missing:
                raise ShapeError(f"{self.name}: layers {missing} have no weights; call set_weights() or load()")
            if self.fold:
                self._plan, self._plan_outputs, self.fold_notes = _fold(self._steps, self._step_outputs)
            else:
                self._plan, self._plan_outputs, self.fold_notes = list(self._steps), self._step_outputs, []
            self._plan_key = key
            self._local = threading.local()  # arenas of the old plan are stale
        return self._plan

    # ------------------------------------------------------------ running
    def predict(self, x, batch_size=None):
        """Run the model on a batch (N, ...) of float32 / uint8 / int8 inputs as the Input says
        (a list of batches for a model with several inputs).

        Returns float32 (a list for several outputs): float outputs as they are, int8 outputs
        dequantized, binary outputs as ±1."""
        with cpu.use_threads(self.num_threads):
            return self._run(x, batch_size, self._planned(), self._plan_outputs, "call")

    def predict_reference(self, x, folded=False):
        """The same prediction computed by the NumPy reference of every layer (slow), either
        of the layers as written (folded=False) or of the folded plan."""
        steps, outputs = ((self._planned(), self._plan_outputs) if folded
                          else (self._steps, self._step_outputs))
        return self._run(x, None, steps, outputs, "reference")

    def _convert_inputs(self, x):
        many = len(self._inputs) > 1
        if many and (not isinstance(x, (list, tuple)) or len(x) != len(self._inputs)):
            raise ShapeError(f"{self.name}: takes a list of {len(self._inputs)} input batches "
                             f"({', '.join(l.name for l in self.inputs)}), got {type(x).__name__}")
        xs = {layer.name: layer.convert(v) for layer, v in zip(self.inputs, x if many else [x])}
        if len({v.shape[0] for v in xs.values()}) > 1:
            raise ShapeError(f"{self.name}: input batches differ in size: {[v.shape[0] for v in xs.values()]}")
        return xs

    def _run(self, x, batch_size, steps, outputs, method):
        xs = self._convert_inputs(x)
        if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
            raise ConfigError(f"{self.name}: batch_size must be a positive int or None, got {batch_size!r}")
        n = next(iter(xs.values())).shape[0]
        step = batch_size or max(n, 1)
        chunks = []
        for start in range(0, max(n, 1), step):
            values = self._execute(steps, outputs, {k: v[start:start + step] for k, v in xs.items()}, method)
            chunks.append([np.array(to_user(steps[s].op.output_spec, values[s])) for s in outputs])
        results = [np.concatenate(parts) if n else parts[0][:0] for parts in zip(*chunks)]
        return results if len(results) > 1 else results[0]

    def _execute(self, steps, outputs, xs, method, timer=None):
        """Run the steps on one batch (xs: Input name -> array); returns every step's output.
        method "call" runs the kernels into the arena, "reference" the NumPy reference."""
        n = next(iter(xs.values())).shape[0]
        buffers = self._arena(steps, outputs, n) if method == "call" else None
        values = [None] * len(steps)
        for i, step in enumerate(steps):
            op = step.op
            if not step.inputs:
                values[i] = xs[op.name]
                continue
            args = [values[j] for j in step.inputs]
            arg = args[0] if op.n_inputs == 1 else args
            if method == "reference":
                values[i] = op.reference(arg)
            else:
                t0 = time.perf_counter() if timer is not None else 0
                values[i] = op.call(arg, out=buffers[i])
                if timer is not None:
                    timer(i, time.perf_counter() - t0)
        return values

    # ------------------------------------------------------------ activation memory
    def _arena(self, steps, outputs, n):
        """Output buffers of every step for a batch of n: views into one arena planned for
        that batch size (cached per calling thread, for the last two batch sizes)."""
        cache = getattr(self._local, "arenas", None)
        if cache is None:
            cache = self._local.arenas = {}
        if n not in cache:
            offsets, size = _plan_arena(steps, outputs, n)
            arena = layouts.empty_aligned(size)  # offsets are multiples of ALIGN from here
            buffers = []
            for step, off in zip(steps, offsets):
                spec = step.op.output_spec
                if off is None:
                    buffers.append(None)
                    continue
                shape = spec.array_shape(n)
                nbytes = int(np.prod(shape)) * np.dtype(spec.dtype).itemsize
                buffers.append(arena[off:off + nbytes].view(spec.dtype).reshape(shape))
            while len(cache) >= 2:
                cache.pop(next(iter(cache)))
            cache[n] = (arena, buffers)
        return cache[n][1]

    def activation_bytes(self, batch=1):
        """(arena bytes, sum of every activation's bytes, the two largest activations' bytes)
        for a batch: how much the arena saves, and how close it is to the ideal of a chain."""
        steps = self._planned()
        offsets, size = _plan_arena(steps, self._plan_outputs, batch)
        sizes = sorted((_nbytes(s.op.output_spec, batch) for s, off in zip(steps, offsets) if off is not None),
                       reverse=True)
        return size, sum(sizes), sum(sizes[:2])

    # ------------------------------------------------------------ profiling
    def profile(self, x, repeats=5):
        """Per operation of the plan (one batch, `repeats` runs, first run as warm-up):
        list of dicts name, kind, ms (median), share of the total, Gops, kernel path."""
        with cpu.use_threads(self.num_threads):
            steps = self._planned()
            xs = self._convert_inputs(x)
            n = next(iter(xs.values())).shape[0]
            times = [[] for _ in steps]

            def record(i, seconds):
                times[i].append(seconds)

            for _ in range(repeats + 1):
                self._execute(steps, self._plan_outputs, xs, "call", record)
            ms = [float(np.median(t[1:])) * 1e3 if t else 0.0 for t in times]
        total = sum(ms) or 1.0
        rows = []
        for step, t in zip(steps, ms):
            if not step.inputs:
                continue
            op = step.op
            mops = op.mops() * n
            rows.append({"name": op.name, "kind": type(op).__name__, "ms": t, "share": t / total,
                         "gops": mops / 1e3 / (t / 1e3) if t and mops else 0.0, "isa": _isa_name(op.last_isa),
                         "mops": mops})
        return rows

    # ------------------------------------------------------------ description
    def summary(self, print_fn=print):
        """Print (and return) a table: layer, kind of output, output shape, parameters,
        weight bytes, million operations per sample (and the inputs of each layer of a
        graph that is not a chain)."""
        chain = all(step.inputs == ([i - 1] if i else []) for i, step in enumerate(self._steps))
        head = f"{'Layer (type)':<36}{'Output':<10}{'Shape':<18}{'Params':>10}{'Bytes':>11}{'MOps':>9}"
        if not chain:
            head += "  Inputs"
        lines = [f'Model: "{self.name}"', head, "-" * len(head)]
        params = nbytes = mops = 0
        for step in self._steps:
            layer = step.op
            spec = layer.output_spec
            implicit = "" if layer in self.layers else "  (implicit)"
            p, b, m = layer.count_params(), layer.weight_bytes(), layer.mops()
            params, nbytes, mops = params + p, nbytes + b, mops + m
            label = f"{layer.name} ({type(layer).__name__})"
            line = f"{label[:35]:<36}{spec.kind:<10}{str(spec.shape):<18}{p:>10,}{b:>11,}{m:>9.2f}"
            if not chain:
                line += "  " + ", ".join(self._steps[j].op.name for j in step.inputs)
            lines.append(line + implicit)
        lines.append("-" * len(head))
        float_bytes = 4 * params
        ratio = f" ({float_bytes / nbytes:.1f}x smaller than float32)" if nbytes else ""
        lines.append(f"Total params: {params:,}   weight bytes: {nbytes:,}{ratio}   MOps/sample: {mops:.2f}")
        if all(s.op.has_weights for s in self._steps):
            if self.fold:
                self._planned()
                lines += [f"Folded: {note}" for note in self.fold_notes]
            arena, total, two = self.activation_bytes(1)
            lines.append(f"Activations (batch 1): arena {arena:,} bytes for {total:,} bytes of tensors "
                         f"(two largest: {two:,})")
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


class Sequential(Model):
    """A chain of layers starting with an Input: each layer takes the previous one's output.
    Everything else is as Model."""

    def __init__(self, layers, name="sequential", fold=True, num_threads=None):
        if not isinstance(layers, (list, tuple)) or not layers:
            raise ConfigError(f"{name}: Sequential takes a non-empty list of layers, got {layers!r}")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise ConfigError(f"{name}: item {i} is not a pybnn layer: {layer!r}")
            if layer.n_inputs != 1:
                raise ConfigError(f"{name}: {type(layer).__name__} takes several tensors; build graphs "
                                  f"with pybnn.Model (the functional API)")
        if not isinstance(layers[0], Input):
            raise ConfigError(f"{name}: the first layer must be pybnn.layers.Input(shape, dtype), "
                              f"got {type(layers[0]).__name__}")
        for i, layer in enumerate(layers[1:], 1):
            if isinstance(layer, Input):
                raise ConfigError(f"{name}: Input may only be the first layer (found at position {i})")
        n = len(layers)
        self._init(layers, [[i - 1] if i else [] for i in range(n)], [0], [n - 1], name, fold, num_threads)


def _isa_name(isa):
    """The path a kernel reported (a number of pybnn.cpu.ISAS, or a name)."""
    if isa is None:
        return "numpy"  # layers computed with NumPy operations
    return cpu.ISAS[isa] if isinstance(isa, (int, np.integer)) and 0 <= isa < len(cpu.ISAS) else isa


def _as_list(x, what, name):
    items = list(x) if isinstance(x, (list, tuple)) else [x]
    if not items:
        raise ConfigError(f"{name}: {what} must not be empty")
    return items


def _nbytes(spec, n):
    return int(np.prod(spec.array_shape(n))) * np.dtype(spec.dtype).itemsize


def _plan_arena(steps, outputs, n):
    """Offsets of every step's output in one arena, and the arena's size.

    A tensor lives from the step that makes it to its last reader (model outputs to the
    end); a step whose output is a view of its input (Flatten) takes no space and keeps its
    input alive instead; inputs of the model are the caller's arrays.  Tensors are placed
    largest first at the lowest offset free during their whole lifetime (the greedy-by-size
    planner of TensorFlow Lite's arena).  Offset None: no buffer of its own."""
    count = len(steps)
    root = list(range(count))
    for i, step in enumerate(steps):
        if step.inputs and step.op.aliases_input():
            root[i] = root[step.inputs[0]]
    last = list(range(count))
    for i, step in enumerate(steps):
        for j in step.inputs:
            last[root[j]] = max(last[root[j]], i)
    for s in outputs:
        last[root[s]] = count
    owners = [i for i, step in enumerate(steps) if step.inputs and root[i] == i]
    offsets, placed, size = [None] * count, [], 0
    for i in sorted(owners, key=lambda i: (-_nbytes(steps[i].op.output_spec, n), i)):
        need = -(-_nbytes(steps[i].op.output_spec, n) // ALIGN) * ALIGN
        offset = 0
        for start, end in sorted((o, e) for o, e, a, b in placed if a <= last[i] and i <= b):
            if start - offset >= need:
                break
            offset = max(offset, end)
        placed.append((offset, offset + need, i, last[i]))
        offsets[i] = offset
        size = max(size, offset + need)
    return offsets, size


def _fold(steps, outputs):
    """Return (steps, outputs, notes): copies of the steps with BN / Sign folded (see Model).
    A pair folds only where the first op's output goes to the second alone."""
    steps = [Step(copy.copy(s.op), s.inputs) for s in steps]
    outputs, notes = list(outputs), []

    def fold_pairs(match, merge):
        i = 0
        while i < len(steps):
            readers = [j for j, s in enumerate(steps) if i in s.inputs]
            if (len(readers) == 1 and i not in outputs and steps[i].inputs
                    and steps[readers[0]].inputs == [i] and match(steps[i].op, steps[readers[0]].op)):
                j = readers[0]
                steps[i] = Step(merge(steps[i].op, steps[j].op), steps[i].inputs)
                del steps[j]
                remap = lambda k: i if k == j else k - (k > j)  # noqa: E731
                for s in steps:
                    s.inputs = [remap(k) for k in s.inputs]
                outputs[:] = [remap(k) for k in outputs]
                # the merged op may fold into its own producer now (BN -> ChannelAffine -> Sign)
                p = steps[i].inputs[0]
                if steps[p].inputs and match(steps[p].op, steps[i].op):
                    i = p
            else:
                i += 1

    def channel_into_sign(bn, sign):
        new = copy.copy(sign)
        new.input_spec, chain = bn.input_spec, bn.reference
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

    def channel_into_conv(conv, bn):
        new = copy.copy(conv)
        out = dict(conv._out)
        sub, mul, add = bn.channel_steps()  # ((y - sub) * mul + add), in float32 per step
        if sub is not None:
            out["bias"] = (out["bias"] - sub).astype(np.float32)
        if mul is not None:
            out["mult"] = (out["mult"] * mul).astype(np.float32)
            out["bias"] = (out["bias"] * mul).astype(np.float32)
        if add is not None:
            out["bias"] = (out["bias"] + add).astype(np.float32)
        new._out = out
        new.output_spec = bn.output_spec
        notes.append(f"{bn.name} -> multiplier and bias of {conv.name}")
        return new

    def relu_into_conv(conv, relu):
        new = copy.copy(conv)
        new._out = dict(conv._out, lo=0.0)
        new.output_spec = relu.output_spec
        notes.append(f"{relu.name} -> activation of {conv.name}")
        return new

    def float_conv(op):
        return isinstance(op, _Conv) and op._out["kind"] == "float"

    channelwise = (BatchNormalization, ChannelAffine)
    fold_pairs(lambda a, b: isinstance(a, channelwise) and isinstance(b, Sign)
               and b.input_spec.kind == "float32", channel_into_sign)
    fold_pairs(lambda a, b: float_conv(a) and a.acc == "int" and isinstance(b, Sign)
               and b.input_spec.kind == "float32", sign_into_conv)
    fold_pairs(lambda a, b: float_conv(a) and np.isinf(a._out["lo"]) and np.isinf(a._out["hi"])
               and isinstance(b, channelwise), channel_into_conv)
    fold_pairs(lambda a, b: float_conv(a) and np.isinf(a._out["lo"]) and np.isinf(a._out["hi"])
               and isinstance(b, ReLU) and b.negative_slope == 0 and b.max_value is None, relu_into_conv)

    # A BN / ChannelAffine left before a float Add (QuickNet's conv -> ReLU -> BN -> Add) runs
    # inside the Add's pass.  The Add keeps its place (its other input may come later).
    i = 0
    while i < len(steps):
        readers = [j for j, s in enumerate(steps) if i in s.inputs]
        op = steps[i].op
        if len(readers) == 1 and i not in outputs and steps[i].inputs and isinstance(op, channelwise):
            j = readers[0]
            add, inputs = steps[j].op, list(steps[j].inputs)
            if (isinstance(add, Add) and add.output_spec.kind == "float32" and add.folded is None
                    and inputs.count(i) == 1 and inputs.index(i) < 2):
                k = inputs.index(i)
                new = copy.copy(add)
                new.folded, new._folded_reference = (k, op.channel_steps()), op.reference
                inputs[k] = steps[i].inputs[0]
                steps[j] = Step(new, inputs)
                del steps[i]
                for s in steps:
                    s.inputs = [m - (m > i) for m in s.inputs]
                outputs[:] = [m - (m > i) for m in outputs]
                notes.append(f"{op.name} -> computed inside {add.name}")
                continue
        i += 1
    return steps, outputs, notes


def _sign_positive(sign):
    """Where a Sign layer outputs +1, as a function of its float input."""
    if sign.thresholds is None:
        return lambda y: ~(y < 0)
    thr, direction = sign.thresholds
    return lambda y: ~ref.threshold_negative(y, thr, direction)
