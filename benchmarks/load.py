"""Model-file load time against weight size: the file is memory-mapped, so opening a model
costs the same for 1 MB and 200 MB of weights; verifying every tensor's checksum is the
part that grows with size (optional: load(path, verify=True)).

    python benchmarks/load.py [--sizes-mb 1 10 100 200] [--json FILE] [--dir DIR]

For each size it writes a float32 model (a chain of Dense layers) and a binary one (BinaryDense
layers, 1 bit per weight) of about that many weight bytes, then times pybnn.load_model
(median of --repeats fresh loads, each in a new mapping) with and without verification, and
the first predict() after a load (which touches the weights)."""
import argparse
import os
import tempfile
import time

import numpy as np

import _common  # noqa: F401  (puts the source tree on sys.path when run from a checkout)
import pybnn
from pybnn import layers as L


def dense_chain(kind, mbytes, width):
    """Input (width,) -> Dense layers of width x width until the weights reach mbytes."""
    per_layer = width * width * (4 if kind == "float32" else 1 / 8)
    count = max(1, round(mbytes * 2**20 / per_layer))
    if kind == "float32":
        body = [L.Dense(width, use_bias=False) for _ in range(count)]
        return pybnn.Sequential([L.Input((width,))] + body)
    body = [L.Sign()] + [L.BinaryDense(width) for _ in range(count)]
    return pybnn.Sequential([L.Input((width,))] + body)


def fill(model, seed=0):
    """Random weights, generated layer by layer (large models stay within memory)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        specs = layer.weight_specs()
        if specs:
            layer.set_weights([rng.standard_normal(shape, dtype=np.float32) for _, shape, _ in specs])
    return model


def median_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[1, 10, 100, 200])
    parser.add_argument("--kinds", nargs="+", default=["float32", "binary"], choices=["float32", "binary"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", help="where to write the model files (default: a temporary directory)")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for kind in args.kinds:
            for mb in args.sizes_mb:
                width = 1024 if kind == "float32" else 4096
                path = os.path.join(tmp, f"{kind}-{mb:g}.bin")
                fill(dense_chain(kind, mb, width)).save(path)
                size = os.path.getsize(path)
                x = np.ones((1, width), np.float32)
                load = median_ms(lambda: pybnn.load_model(path), args.repeats)
                verify = median_ms(lambda: pybnn.load_model(path, verify=True), args.repeats)
                first = median_ms(lambda: pybnn.load_model(path).predict(x), max(1, args.repeats // 2))
                rows.append({"kind": kind, "file_mb": size / 2**20, "load_ms": load, "load_verify_ms": verify,
                             "load_and_first_predict_ms": first})
                print(f"{kind:8s} {size / 2**20:8.1f} MB  load {load:8.2f} ms  load+verify {verify:9.2f} ms  "
                      f"load+first predict {first:9.2f} ms", flush=True)
                os.remove(path)
    if args.json:
        _common.write_json(args.json, {"benchmark": "load", "machine": _common.machine_info(tried=()),
                                       "rows": rows})


if __name__ == "__main__":
    main()
