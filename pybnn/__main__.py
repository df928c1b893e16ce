"""Command line: `pybnn info FILE [--verify]` (or `python -m pybnn info FILE`), `pybnn cpu`."""
import argparse
import json
import sys

from . import cpu
from .errors import PyBNNError
from .io import load_model, read_file


def main(argv=None):
    parser = argparse.ArgumentParser(prog="pybnn", description="pybnn binary-network inference engine")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="describe a model file: layers, shapes, parameters, bytes")
    info.add_argument("file")
    info.add_argument("--verify", action="store_true", help="check every tensor's checksum (reads all weights)")
    sub.add_parser("cpu", help="instruction-set paths detected and used, thread count")
    args = parser.parse_args(argv)
    if args.command == "cpu":
        print(json.dumps(cpu.info(), indent=2))
        return 0
    try:
        mf = read_file(args.file, verify=args.verify)
        model = load_model(args.file)
        model.summary()
        stored = sum(t.nbytes for t in mf.tensors.values())
        as_float = 4 * sum(layer.count_params() for layer in model.layers)
        print(f"File: format {mf.major}.{mf.minor}, {mf.size:,} bytes, {len(mf.tensors)} tensors, "
              f"{stored:,} weight bytes ({as_float / max(stored, 1):.1f}x smaller than float32)")
        print("Checksums: " + ("all tensors verified" if mf.verified else
                               "header verified; tensors not checked (use --verify)" if mf.minor >= 1 else
                               "format 1.0 has no header checksum; tensors not checked (use --verify)"))
    except PyBNNError as e:
        print(f"pybnn: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
