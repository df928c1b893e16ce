"""Model-file load time against weight size: a format 1.2 file is memory-mapped and every
tensor, convolution kernels included, is used in place in the layout its kernel reads, so
opening a model costs the same for 1 MB and 200 MB of weights; verifying every tensor's
checksum is the part that grows with size (optional: load(path, verify=True)).

    python benchmarks/load.py [--sizes-mb 1 10 100 200] [--kinds ...] [--layers 8] [--threads 1]
                              [--json FILE] [--dir DIR]

For each kind and size it writes a model of about that many weight bytes - the same number
of square dense layers of one kind (conv: 1x1 Conv2D on a 1x1 image), wider for larger sizes,
each kind's kernels stored in their own layout - then times pybnn.load_model (median of
--repeats fresh loads, each in a new mapping) with and without verification, the first
predict() of a batch of one after a load (which touches every weight page) and a second one,
and the bytes Python and NumPy allocate while loading (tracemalloc peak).  Predictions run on
--threads threads (1 by default: on a shared machine, worker threads waiting for a busy core
would dominate these millisecond calls)."""
import argparse
import os
import tempfile
import time
import tracemalloc

import numpy as np

import _common  # noqa: F401  (puts the source tree on sys.path when run from a checkout)
import pybnn
from pybnn import layers as L

# kind: (bytes per weight in the file, layers after the input, the layer of a width)
KINDS = {
    "float32": (4, lambda: [], lambda w: L.Dense(w, use_bias=False)),                               # float32 (sgemm)
    "conv": (4, lambda: [], lambda w: L.Conv2D(w, 1, use_bias=False)),                              # float32_sgemm
    "binary": (1 / 8, lambda: [L.Sign()], lambda w: L.BinaryDense(w)),                              # bits_xgemm
    "float-binary": (1 / 8, lambda: [], lambda w: L.FloatBinaryDense(w, use_bias=False)),           # bits_fbgemm
    "int8": (1, lambda: [L.Quantize(0.05)],
             lambda w: L.Int8Dense(w, use_bias=False, output="int8", output_scale=1.0)),            # int8_igemm
    "int8-binary": (1 / 8, lambda: [L.Quantize(0.05)],
                    lambda w: L.Int8BinaryDense(w, use_bias=False, output="int8", output_scale=1.0)),  # bits_ibgemm
}


def chain(kind, mbytes, layers):
    """Input -> `layers` square layers of `kind` holding about mbytes of weights (widths are
    multiples of 32, so the layouts add no padding)."""
    per_weight, head, make = KINDS[kind]
    width = max(32, round((mbytes * 2**20 / (layers * per_weight)) ** 0.5 / 32) * 32)
    shape = (1, 1, width) if kind == "conv" else (width,)
    return pybnn.Sequential([L.Input(shape)] + head() + [make(width) for _ in range(layers)])


def fill(model, seed=0):
    """Random weights, generated layer by layer (large models stay within memory)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        specs = layer.weight_specs()
        if specs:
            layer.set_weights([rng.integers(-127, 128, shape, dtype=np.int8) if kind == "int8" else
                               rng.uniform(0.5, 1.5, shape).astype(np.float32) if name != "kernel" else
                               rng.standard_normal(shape, dtype=np.float32) for name, shape, kind in specs])
    return model


def median_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def load_peak(path):
    tracemalloc.start()
    pybnn.load_model(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[1, 10, 100, 200])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", help="where to write the model files (default: a temporary directory)")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    rows = []
    print(f"{'kind':13s} {'file MB':>8s} {'load ms':>8s} {'alloc KB':>9s} {'+verify ms':>11s} "
          f"{'load+1st predict ms':>20s} {'2nd predict ms':>15s}")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for kind in args.kinds:
            for mb in args.sizes_mb:
                path = os.path.join(tmp, f"{kind}-{mb:g}.bin")
                model = fill(chain(kind, mb, args.layers))
                model.save(path)
                del model
                size = os.path.getsize(path)
                shape = (1,) + pybnn.load_model(path).layers[0].shape
                x = np.ones(shape, np.float32)
                load = median_ms(lambda: pybnn.load_model(path), args.repeats)
                verify = median_ms(lambda: pybnn.load_model(path, verify=True), args.repeats)
                with pybnn.cpu.use_threads(args.threads):
                    first = median_ms(lambda: pybnn.load_model(path).predict(x), max(1, args.repeats // 2))
                loaded = pybnn.load_model(path)
                loaded.num_threads = args.threads
                loaded.predict(x)
                second = median_ms(lambda: loaded.predict(x), max(1, args.repeats // 2))
                peak = load_peak(path)
                rows.append({"kind": kind, "file_mb": size / 2**20, "load_ms": load, "load_alloc_bytes": peak,
                             "load_verify_ms": verify, "load_and_first_predict_ms": first,
                             "second_predict_ms": second})
                print(f"{kind:13s} {size / 2**20:8.1f} {load:8.2f} {peak / 1024:9.1f} {verify:11.2f} "
                      f"{first:20.2f} {second:15.2f}", flush=True)
                del loaded
                os.remove(path)
    if args.json:
        _common.write_json(args.json, {"benchmark": "load", "machine": _common.machine_info(tried=()),
                                       "layers": args.layers, "threads": args.threads, "rows": rows})


if __name__ == "__main__":
    main()
