"""Command line (or `python -m pybnn ...`):

    pybnn info FILE [--verify]       layers, shapes, bytes, compression, checksums
    pybnn bench FILE [--batch N] [--threads N] [--repeats R] [--json OUT]
                                     per-layer time, share, Gops and kernel path
    pybnn cpu                        instruction-set paths detected and used, threads
    pybnn convert SRC -o OUT [--check]
                                     import an ONNX (.onnx) or Keras / Larq (.h5, .keras)
                                     model into a pybnn model file (docs/convert.md)
"""
import argparse
import json
import sys

import numpy as np

from . import cpu
from .errors import ConfigError, ConvertError, PyBNNError
from .io import load_model, read_file


def _ideal_bytes(dtype, params):
    """Bytes of `params` values at the dtype's own width: a bit, a byte or 4 bytes each."""
    if dtype.startswith("bits"):
        return (params + 7) // 8
    return params * (1 if dtype.startswith("int8") else 4)


def describe_tensors(mf, model):
    """Lines of `pybnn info`: every tensor with its dtype, shape, parameter and byte counts, the
    bytes beyond its values' own width (layout headers, padding, weight sums) and its ratio to
    float32; then the totals, of every layer and of the binary-weight layers."""
    head = f"  {'tensor':<34}{'dtype':<15}{'shape':<20}{'params':>11}{'bytes':>12}{'overhead':>10}{'vs f32':>8}"
    lines = [f"Tensors (format {mf.major}.{mf.minor}, as stored):", head]
    total, binary = {"params": 0, "bytes": 0}, {"params": 0, "bytes": 0}
    for layer in model.layers:
        is_binary = any(kind == "bits" for _, _, kind in layer.weight_specs())
        for (name, _, _), (_, shape, _) in zip(layer.stored_specs(), layer.weight_specs()):
            t = mf.tensors[(layer.name, name)]
            params = 1
            for s in shape:
                params *= s
            extra = t.nbytes - _ideal_bytes(t.dtype, params)
            lines.append(f"  {f'{t.layer}/{t.name}'[:33]:<34}{t.dtype:<15}{str(list(t.shape)):<20}{params:>11,}"
                         f"{t.nbytes:>12,}{extra:>10,}{4 * params / max(t.nbytes, 1):>7.1f}x")
            for acc in (total, binary) if is_binary else (total,):
                acc["params"] += params
                acc["bytes"] += t.nbytes
    for label, acc in (("All weights", total), ("Binary-weight layers", binary)):
        if acc["params"]:
            lines.append(f"{label}: {acc['params']:,} parameters in {acc['bytes']:,} bytes, "
                         f"{4 * acc['params'] / acc['bytes']:.1f}x smaller than float32")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(prog="pybnn", description="pybnn binary-network inference engine")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="describe a model file: layers, shapes, dtypes, parameters, bytes")
    info.add_argument("file")
    info.add_argument("--verify", action="store_true", help="check every tensor's checksum (reads all weights)")
    bench = sub.add_parser("bench", help="time every layer of a model file on random input")
    bench.add_argument("file")
    bench.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    bench.add_argument("--threads", type=int, default=None, help="kernel threads (default: pybnn's)")
    bench.add_argument("--repeats", type=int, default=20, help="timed runs; medians are shown (default 20)")
    bench.add_argument("--json", help="also write the rows to this JSON file")
    sub.add_parser("cpu", help="instruction-set paths detected and used, thread count")
    conv = sub.add_parser("convert", help="import an ONNX (.onnx) or Keras / Larq (.h5, .keras) model")
    conv.add_argument("source")
    conv.add_argument("-o", "--output", required=True, help="the pybnn model file to write")
    conv.add_argument("--check", action="store_true",
                      help="run the source model (onnxruntime) and pybnn on the same random input and report "
                           "the largest difference per output")
    conv.add_argument("--batch", type=int, default=2, help="batch of the --check input (default 2)")
    args = parser.parse_args(argv)
    if args.command == "cpu":
        print(json.dumps(cpu.info(), indent=2))
        return 0
    if args.command in ("bench", "convert"):
        try:
            return _bench(args) if args.command == "bench" else _convert(args)
        except PyBNNError as e:
            print(f"pybnn: {e}", file=sys.stderr)
            return 1
    try:
        mf = read_file(args.file, verify=args.verify)
        model = load_model(mf)
        model.summary()
        print(f"File: format {mf.major}.{mf.minor}, {mf.size:,} bytes, {len(mf.tensors)} tensors")
        print("\n".join(describe_tensors(mf, model)))
        if mf.minor < 2 and any(t.dtype == "bits" for t in mf.tensors.values()):
            print("Kernels: stored plain (format < 1.2), packed into their layouts at load")
        print("Checksums: " + ("all tensors verified" if mf.verified else
                               "header verified; tensors not checked (use --verify)" if mf.minor >= 1 else
                               "format 1.0 has no header checksum; tensors not checked (use --verify)"))
    except PyBNNError as e:
        print(f"pybnn: {e}", file=sys.stderr)
        return 1
    return 0


def random_input(layer, batch, rng):
    """A batch of random data of an Input layer's shape and dtype."""
    shape = (batch,) + layer.shape
    if layer.dtype == "float32":
        return rng.standard_normal(shape).astype(np.float32)
    info = np.iinfo(layer.dtype)
    return rng.integers(info.min, info.max + 1, shape).astype(layer.dtype)


def _bench(args):
    if args.batch < 1 or args.repeats < 1 or (args.threads is not None and args.threads < 1):
        raise ConfigError("--batch, --repeats and --threads must be positive")
    model = load_model(args.file)
    model.num_threads = args.threads
    rng = np.random.default_rng(0)
    xs = [random_input(layer, args.batch, rng) for layer in model.inputs]
    x = xs if len(xs) > 1 else xs[0]
    rows = model.profile(x, repeats=args.repeats)
    total = sum(r["ms"] for r in rows)
    threads = args.threads or cpu.num_threads()
    print(f"{args.file}: batch {args.batch}, {threads} thread(s), {cpu.get_isa()} kernels, "
          f"median of {args.repeats} runs")
    head = f"{'layer':<34}{'kind':<24}{'ms':>9}{'share':>8}{'Gops':>9}  path"
    print(head)
    print("-" * len(head))
    for r in rows:
        gops = f"{r['gops']:9.1f}" if r["gops"] else f"{'':9}"
        print(f"{r['name'][:33]:<34}{r['kind'][:23]:<24}{r['ms']:9.3f}{100 * r['share']:7.1f}%{gops}  "
              f"{r['isa'] or ''}")
    print("-" * len(head))
    mops = sum(r["mops"] for r in rows)
    print(f"{'total':<58}{total:9.3f}{'':8}{mops / 1e3 / (total / 1e3) if total else 0:9.1f}"
          f"  ({total / args.batch:.3f} ms per image)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"file": args.file, "batch": args.batch, "threads": threads, "isa": cpu.get_isa(),
                       "total_ms": total, "layers": rows}, f, indent=1)
    return 0


def _convert(args):
    from .convert import convert, source_kind
    if args.batch < 1:
        raise ConfigError("--batch must be positive")
    kind = source_kind(args.source)
    if args.check and kind != "onnx":
        raise ConvertError(f"{args.source}: --check runs the source model with onnxruntime, so it takes ONNX "
                           f"files; running a Keras file needs TensorFlow, which pybnn does not use")
    model = convert(args.source)
    model.save(args.output)
    counts = {}
    for layer in model.layers:
        counts[type(layer).__name__] = counts.get(type(layer).__name__, 0) + 1
    print(f"{args.source}: {len(model.layers)} layers ({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))})")
    for layer in model.inputs:
        layout = "NHWC" if len(layer.shape) == 3 else "(batch, features)"
        print(f"input '{layer.name}': {layer.dtype} {list(layer.shape)} per sample, {layout}")
    for note in model.convert_notes:
        print(f"note: {note}")
    print(f"wrote {args.output}")
    if args.check:
        import onnx
        from .convert.check import compare_onnx
        for name, worst, scale, differ in compare_onnx(onnx.load(args.source), model, batch=args.batch):
            print(f"check '{name}': largest |pybnn - onnxruntime| = {worst:.3g} (values up to {scale:.3g}), "
                  f"{differ} elements differ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
