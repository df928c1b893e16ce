"""Command line: `pybnn info FILE` (or `python -m pybnn info FILE`), `pybnn cpu`."""
import argparse
import json
import sys

from . import cpu
from .errors import PyBNNError
from .io import load_model


def main(argv=None):
    parser = argparse.ArgumentParser(prog="pybnn", description="pybnn binary-network inference engine")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="describe a model file: layers, shapes, parameters, bytes")
    info.add_argument("file")
    sub.add_parser("cpu", help="instruction-set paths detected and used, thread count")
    args = parser.parse_args(argv)
    if args.command == "cpu":
        print(json.dumps(cpu.info(), indent=2))
        return 0
    try:
        load_model(args.file).summary()
    except PyBNNError as e:
        print(f"pybnn: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
