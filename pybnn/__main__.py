"""Command line: `pybnn info FILE [--verify]` (or `python -m pybnn info FILE`), `pybnn cpu`."""
import argparse
import json
import sys

from . import cpu
from .errors import PyBNNError
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
    sub.add_parser("cpu", help="instruction-set paths detected and used, thread count")
    args = parser.parse_args(argv)
    if args.command == "cpu":
        print(json.dumps(cpu.info(), indent=2))
        return 0
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


if __name__ == "__main__":
    sys.exit(main())
