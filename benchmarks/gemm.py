"""Int8 GEMM benchmark on the ten (rows, cols, depth) shapes of the seed GEMMi8 library, or
(--conv) on the GEMMs of the int8 convolutions of benchmarks/layers.py.

    python benchmarks/gemm.py [--conv] [--json FILE] [--threads N ...] [--repeats R] [--quick]
                              [--no-baselines] [--wait-idle S] [--markdown]

rows = output channels (cout), cols = pixels (M), depth = K: out (M, cout) int32 =
(a (M, K) int8 - zero point) x w (cout, K) int8, through pybnn._kernels.gemm.pack_int8_weights
(once) and igemm (timed), and the same with +-1 weights through pack_int8_binary_weights and
ibgemm, next to NumPy float32 matmul (BLAS) of the same sizes and, if installed, onnxruntime
MatMulInteger (uint8 activations with a zero point, int8 weights: its fast x86 path), all in
the same run.  Gops = 2 * rows * cols * depth / time.  PYBNN_ISA=name picks pybnn's path.
"""
import argparse
import sys
import time

import numpy as np

import _common as C
from pybnn import cpu
from pybnn._kernels import gemm as kgemm

SHAPES = [(500, 500, 500), (2000, 2000, 2000), (64, 3136, 64), (128, 784, 64), (256, 196, 2304),
          (512, 49, 2304), (512, 49, 4608), (32, 12544, 27), (1024, 49, 1024), (128, 3136, 128)]
# (cout, Hout * Wout, KH * KW * Cin) of layers.py's convolutions: 3x3_64, 3x3_128, 3x3_256,
# 3x3_256_s2, 3x3_512, 5x5_256
CONV_SHAPES = [(64, 3136, 576), (128, 784, 1152), (256, 196, 2304), (256, 49, 2304), (512, 49, 4608),
               (256, 196, 6400)]
ZP = 3  # activation zero point (real 0), as an asymmetric int8 input would have

IMPLS = {"pybnn_igemm": "pybnn igemm (int8)", "pybnn_ibgemm": "pybnn ibgemm (int8 x binary)",
         "numpy_f32": "NumPy float32 (BLAS)", "ort_matmulinteger": "onnxruntime MatMulInteger (u8s8)"}


def runners(rows, cols, depth, threads_list, ort, seed):
    """{threads: {impl: (callable, isa_getter)}}; the operands are made once per shape."""
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, (cols, depth)).astype(np.int8)
    w = rng.integers(-127, 128, (rows, depth)).astype(np.int8)
    packed = kgemm.pack_int8_weights(w)
    signs = np.where(rng.integers(0, 2, (rows, depth)) == 1, np.float32(1), np.float32(-1))
    bpacked = kgemm.pack_int8_binary_weights(signs)
    out = np.empty((cols, rows), np.int32)
    igemm, ibgemm = C.KernelCaller(kgemm.igemm), C.KernelCaller(kgemm.ibgemm)
    last = {}

    def run_igemm(n):
        def run():
            last["isa"] = igemm(a, packed, depth, rows, ZP, out, isa=cpu.active(), threads=n)
        return run

    def run_ibgemm(n):
        def run():
            last["bisa"] = ibgemm(a, bpacked, depth, rows, ZP, out, isa=cpu.active(), threads=n)
        return run

    af = rng.standard_normal((cols, depth), dtype=np.float32)
    wf = rng.standard_normal((depth, rows), dtype=np.float32)
    of = np.empty((cols, rows), np.float32)
    result = {}
    for n in threads_list:
        result[n] = {"pybnn_igemm": (run_igemm(n), lambda: C.isa_name(last.get("isa"))),
                     "pybnn_ibgemm": (run_ibgemm(n), lambda: C.isa_name(last.get("bisa"))),
                     "numpy_f32": (lambda: np.matmul(af, wf, out=of), lambda: "blas")}
    if ort is not None:
        au = (a.astype(np.int16) + 128).astype(np.uint8)  # same values as a - ZP with zero point ZP + 128
        model = C.Onnx.model([C.Onnx.node("MatMulInteger", ["a", "b", "az"], ["y"])],
                             [("a", C.Onnx.UINT8, au.shape)], [("y", C.Onnx.INT32, (cols, rows))],
                             {"b": np.ascontiguousarray(w.T), "az": np.array(ZP + 128, np.uint8)})
        for n in threads_list:
            result[n]["ort_matmulinteger"] = (C.ort_runner(ort, model, {"a": au}, n), lambda: None)
    # correctness of the comparison: igemm and MatMulInteger compute the same integers
    run_igemm(1)()
    want = (a.astype(np.int64) - ZP) @ w.astype(np.int64).T
    if not np.array_equal(out, want):
        raise SystemExit(f"igemm result differs from NumPy int64 on {(rows, cols, depth)}")
    run_ibgemm(1)()
    if not np.array_equal(out, (a.astype(np.int64) - ZP) @ signs.astype(np.int64).T):
        raise SystemExit(f"ibgemm result differs from NumPy int64 on {(rows, cols, depth)}")
    if ort is not None:
        got = result[threads_list[0]]["ort_matmulinteger"][0]()[0]
        if not np.array_equal(got, want):
            print(f"warning: onnxruntime MatMulInteger differs on {(rows, cols, depth)}", file=sys.stderr)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(parser, default_repeats=11)
    parser.add_argument("--conv", action="store_true", help="the GEMM shapes of the int8 convolutions of layers.py")
    args = parser.parse_args(argv)
    shapes = CONV_SHAPES if args.conv else SHAPES
    repeats = args.repeats or (3 if args.quick else 11)
    timing = dict(repeats=repeats, max_seconds=0.1 if args.quick else 1.0, warmup=1 if args.quick else 2,
                  min_sample_ms=2 if args.quick else 20)
    settle = 0.05 if args.quick else 0.15
    threads_list = C.thread_counts(args)
    ort = None if args.no_baselines else C.import_onnxruntime()
    info = C.machine_info(None, ort, tried=("onnxruntime",))
    print(C.describe_machine(info))
    print(f"threads: {threads_list}; repeats {repeats}; igemm takes threads=: "
          f"{C.kernel_accepts_threads(kgemm.igemm)}; BLAS threads {C.blas_note(args.blas_threads)}")
    started = time.perf_counter()
    rows_out = []
    for rows, cols, depth in shapes:
        ops = 2 * rows * cols * depth
        per_thread = runners(rows, cols, depth, threads_list, ort, seed=rows + cols + depth)
        for n, impls in per_thread.items():
            for impl, (fn, isa) in impls.items():
                with C.limit_threads(n, blas=args.blas_threads):
                    t = C.measure_quiet(fn, args.wait_idle, **timing)
                C.settle(n, settle)
                rows_out.append({"rows": rows, "cols": cols, "depth": depth, "impl": impl, "threads": n,
                                 "ops": ops, **t, "gops": C.gops(ops, t["median_ms"]), "isa": isa(),
                                 "loadavg1": C.loadavg1()})
        del per_thread
        print(f"  {rows},{cols},{depth} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    elapsed = time.perf_counter() - started
    impls = [i for i in IMPLS if any(r["impl"] == i for r in rows_out)]
    for n in threads_list:
        detail, wide = [], []
        for rows, cols, depth in shapes:
            got = {r["impl"]: r for r in rows_out
                   if (r["rows"], r["cols"], r["depth"], r["threads"]) == (rows, cols, depth, n)}
            shape = f"{rows},{cols},{depth}"
            for impl in impls:
                r = got.get(impl)
                if r:
                    detail.append([shape, IMPLS[impl], r["median_ms"], r["min_ms"], r["max_ms"], r["gops"],
                                   r["isa"] or "-", r["other_cpu"]])
            mine = got.get("pybnn_igemm")
            line = [shape] + [got[i]["gops"] if i in got else None for i in impls]
            for other in impls[1:]:
                line.append(got[other]["median_ms"] / mine["median_ms"] if mine and other in got else None)
            wide.append(line)
        plural = "s" if n > 1 else ""
        C.table(["rows,cols,depth", "implementation", "median ms", "min ms", "max ms", "Gops", "ISA", "other CPU"], detail,
                title=f"GEMM times, {n} thread{plural}", markdown=args.markdown)
        short = {"pybnn_igemm": "pybnn igemm", "pybnn_ibgemm": "pybnn ibgemm", "numpy_f32": "NumPy f32",
                 "ort_matmulinteger": "ORT MatMulInteger"}
        C.table(["rows,cols,depth"] + [f"{short[i]} Gops" for i in impls] + [f"igemm vs {short[i]}" for i in impls[1:]],
                wide, title=f"Gops, {n} thread{plural} (ratios: speed-up of pybnn igemm; < 1 is slower)",
                markdown=args.markdown)
    C.warn_contention(rows_out)
    print(f"\n{len(rows_out)} measurements in {elapsed:.0f} s")
    if args.json:
        info["loadavg_end"], info["other_cpu_end"] = C.loadavg(), C.other_load()
        C.write_json(args.json, {"benchmark": "gemm", "machine": info, "elapsed_s": elapsed,
                                 "settings": {"threads": threads_list, "repeats": repeats, "quick": args.quick,
                                              "shapes": "conv" if args.conv else "gemmi8",
                                              "activation_zero_point": ZP, "wait_idle": args.wait_idle,
                                              "blas_threads": args.blas_threads,
                                              "igemm_threads_keyword": C.kernel_accepts_threads(kgemm.igemm)},
                                 "rows": rows_out})


if __name__ == "__main__":
    main()
