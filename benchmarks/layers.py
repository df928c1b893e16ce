"""Single-layer benchmark: every convolution kind of pybnn on the daBNN convolution shapes and
the batch-1 dense shapes (shared/DESIGN.md, listed in docs/performance.md), at 1 thread and
at all cores.

    python benchmarks/layers.py [--json FILE] [--threads N ...] [--repeats R] [--quick]
                                [--shapes NAME ...] [--kinds KIND ...] [--breakdown] [--rounds N]
                                [--no-baselines] [--ort-s8s8] [--wait-idle S] [--markdown]

Each case is a pybnn.Sequential([Input, layer]) (plus Sign for the bit-packed output kind)
with random weights.  What is timed is the last op of the folded plan, `op.call(x, out=y)`,
on an input of that op's own kind prepared once by the earlier ops of the plan (for a binary
layer: the packed bits), into an output buffer allocated once (as a model's activation arena
provides it).  So a time covers what the layer costs inside a model: im2col, the GEMM or
binary kernel and the output transform, plus the Python around them.

The speed-up of N threads over one comes from alternating rounds (a few calls at each thread
count in turn, median of the per-round ratios), not from the separate timings above: on a
shared machine those blocks meet different moments of the other processes' load.

Ops = 2 * Hout * Wout * Cout * KH * KW * Cin (dense: 2 * in * out), Gops = ops / time;
for dense layers "weight GB/s" = weight bytes (at the kind's bits per weight) / time.
"other CPU": cores other processes used meanwhile (on a shared machine, > 0.3 means the
multi-threaded numbers are disturbed; --wait-idle S re-runs those).
If onnxruntime or PyTorch is installed, their float32 convolution (and onnxruntime's int8
QLinearConv with per-channel weights) run on the same shapes in the same run as baselines.
"""
import argparse
import sys
import time

import numpy as np

import _common as C
import pybnn
from pybnn import layers as L

# name, (H, W, Cin), kernel, filters, stride  (DESIGN.md; NHWC, "same" padding, batch 1)
CONV_SHAPES = [("5x5_256", (14, 14, 256), 5, 256, 1), ("3x3_64", (56, 56, 64), 3, 64, 1),
               ("3x3_128", (28, 28, 128), 3, 128, 1), ("3x3_256", (14, 14, 256), 3, 256, 1),
               ("3x3_256_s2", (14, 14, 256), 3, 256, 2), ("3x3_512", (7, 7, 512), 3, 512, 1)]
DENSE_SHAPES = [("fc_9216_4096", 9216, 4096), ("fc_4096_4096", 4096, 4096),
                ("fc_8192_1024", 8192, 1024), ("fc_1024_1024", 1024, 1024)]
SUMMARY_SHAPE = "fc_4096_4096"
OVERHEAD_SHAPE = ("fc_64_64", 64, 64)  # too small to cost anything: its time is the fixed cost of a call

# kind: (label, weight bits, input dtype)
KINDS = {"float": ("float32", 32, "float32"), "int8": ("int8", 8, "int8"),
         "fxb": ("float x binary", 1, "float32"), "i8xb": ("int8 x binary", 1, "int8"),
         "bin": ("binary -> float", 1, "float32"), "bits": ("binary -> bits", 1, "float32")}
BASELINES = {"torch_f32": ("PyTorch float32", 32), "ort_f32": ("onnxruntime float32", 32),
             "ort_i8": ("onnxruntime int8 (u8s8 QLinearConv)", 8),
             "ort_i8_s8s8": ("onnxruntime int8 (s8s8 QLinearConv)", 8)}

IN_SCALE, IN_ZP, OUT_SCALE, OUT_ZP = 0.05, 3, 0.5, 0  # int8 quantization used by every int8 case


def shape_cases(names=None, dense_shapes=DENSE_SHAPES):
    cases = []
    for name, (h, w, c), k, f, s in CONV_SHAPES:
        ho, wo = -(-h // s), -(-w // s)
        pad_h = max((ho - 1) * s + k - h, 0)
        pad_w = max((wo - 1) * s + k - w, 0)
        cases.append({"name": name, "dense": False, "input": (h, w, c), "kernel": k, "filters": f,
                      "stride": s, "output": (ho, wo, f), "pads": (pad_h // 2, pad_w // 2, pad_h - pad_h // 2,
                                                                   pad_w - pad_w // 2),
                      "ops": 2 * ho * wo * f * k * k * c, "label": name})
    for name, n_in, n_out in dense_shapes:
        cases.append({"name": name, "dense": True, "input": (n_in,), "filters": n_out, "output": (n_out,),
                      "ops": 2 * n_in * n_out, "label": f"{n_in}->{n_out}"})
    return [c for c in cases if names is None or c["name"] in names]


# ----------------------------------------------------------------------------- pybnn cases


def weight_gbps(case, bits, ms):
    """Dense layers only: GB/s of weights the layer reads (each weight is used once per call
    at batch 1, so this is the rate weights stream from the caches/memory).  None for convs."""
    if not case["dense"]:
        return None
    return case["input"][0] * case["filters"] * bits / 8 / (ms * 1e6)


def build_layer(case, kind, pad_value):
    f = case["filters"]
    int8_out = dict(output="int8", output_scale=OUT_SCALE, output_zero_point=OUT_ZP)
    if case["dense"]:
        make = {"float": lambda: [L.Dense(f)], "int8": lambda: [L.Int8Dense(f, **int8_out)],
                "fxb": lambda: [L.FloatBinaryDense(f)], "i8xb": lambda: [L.Int8BinaryDense(f, **int8_out)],
                "bin": lambda: [L.BinaryDense(f)], "bits": lambda: [L.BinaryDense(f), L.Sign()]}
    else:
        conv = dict(kernel_size=case["kernel"], strides=case["stride"], padding="same")
        make = {"float": lambda: [L.Conv2D(f, **conv)], "int8": lambda: [L.Int8Conv2D(f, **conv, **int8_out)],
                "fxb": lambda: [L.FloatBinaryConv2D(f, **conv)],
                "i8xb": lambda: [L.Int8BinaryConv2D(f, **conv, **int8_out)],
                "bin": lambda: [L.BinaryConv2D(f, **conv, pad_value=pad_value)],
                "bits": lambda: [L.BinaryConv2D(f, **conv, pad_value=pad_value), L.Sign()]}
    dtype = KINDS[kind][2]
    inp = (L.Input(case["input"]) if dtype == "float32"
           else L.Input(case["input"], dtype="int8", scale=IN_SCALE, zero_point=IN_ZP))
    return pybnn.Sequential([inp] + make[kind](), name=f"{case['name']}_{kind}")


def prepared(model, seed):
    """(op, x): the plan's last op and its input, made by running the earlier ops once."""
    model.randomize(seed)
    plan = model.plan()
    rng = np.random.default_rng(seed + 1)
    shape = (1,) + model.input_spec.shape
    if model.input_spec.kind == "float32":
        x = rng.standard_normal(shape).astype(np.float32)
    else:
        x = rng.integers(-128, 128, shape).astype(np.int8)
    h = plan[0].convert(x)
    for op in plan[1:-1]:
        h = op.call(h)
    return plan[-1], h


def breakdown(op, x, timing):
    """Best effort split of a layer's time: im2col, accumulate (im2col + GEMM) and the rest
    (output transform + Python).  Uses private methods of the layer; any failure gives None."""
    from pybnn._kernels import gemm as kgemm
    result = {"im2col_ms": None, "accumulate_ms": None}
    try:
        result["accumulate_ms"] = C.measure(lambda: op._accumulate(x), **timing)["median_ms"]
    except Exception:
        return result
    try:
        if isinstance(op, L.Int8Conv2D):  # Int8BinaryConv2D included
            zp = op.input_spec.zero_point
            fn = lambda: op._columns(x, kgemm.im2col_i8, pad=zp)  # noqa: E731
        elif isinstance(op, (L.Conv2D, L.FloatBinaryConv2D)):
            fn = lambda: op._columns(x, kgemm.im2col_f32)  # noqa: E731
        else:
            fn = None
        if fn is not None:
            result["im2col_ms"] = C.measure(fn, **timing)["median_ms"]
    except Exception:
        pass
    return result


# ----------------------------------------------------------------------------- baselines


def baseline_runners(case, threads_list, torch, ort, seed, s8s8=False):
    """{threads: {baseline: callable}} for the installed baselines.  onnxruntime fixes its
    thread count per session (one session per count); PyTorch's is set by C.limit_threads.

    The onnxruntime int8 baseline is QLinearConv with uint8 activations and int8 per-channel
    weights (u8s8): the same real values as pybnn's int8 input (zero point + 128), and the
    format onnxruntime's x86 kernels are optimized for (int8 activations, s8s8, take a much
    slower path there; see docs/performance.md)."""
    rng = np.random.default_rng(seed)
    f = case["filters"]
    per_thread = {n: {} for n in threads_list}
    if case["dense"]:
        n_in = case["input"][0]
        x = rng.standard_normal((1, n_in), dtype=np.float32)
        w = rng.standard_normal((n_in, f), dtype=np.float32)
        if torch is not None:
            tx, tw = torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(w.T))

            def run_torch():
                with torch.inference_mode():
                    return torch.nn.functional.linear(tx, tw)
            for n in threads_list:
                per_thread[n]["torch_f32"] = run_torch
        if ort is not None:
            model = C.Onnx.model([C.Onnx.node("MatMul", ["x", "w"], ["y"])], [("x", C.Onnx.FLOAT, x.shape)],
                                 [("y", C.Onnx.FLOAT, (1, f))], {"w": w})
            del w
            # int8: a 1x1 QLinearConv on a 1x1 image (per-channel weight scales, like Int8Dense)
            xq = rng.integers(0, 256, (1, n_in, 1, 1)).astype(np.uint8)
            wq = rng.integers(-127, 128, (f, n_in, 1, 1)).astype(np.int8)
            qmodel = _qlinearconv_model(xq, wq, (1, f, 1, 1), {}, rng)
            smodel = _qlinearconv_model(xq, wq, (1, f, 1, 1), {}, rng, signed=True) if s8s8 else None
            del wq
            for n in threads_list:
                per_thread[n]["ort_f32"] = C.ort_runner(ort, model, {"x": x}, n)
                per_thread[n]["ort_i8"] = C.ort_runner(ort, qmodel, {"x": xq}, n)
                if s8s8:
                    per_thread[n]["ort_i8_s8s8"] = C.ort_runner(ort, smodel, {"x": _signed(xq)}, n)
        return per_thread
    h, w_, c = case["input"]
    k, s = case["kernel"], case["stride"]
    pt, pl, pb, pr = case["pads"]
    ho, wo, _ = case["output"]
    x = rng.standard_normal((1, c, h, w_), dtype=np.float32)
    w = rng.standard_normal((f, c, k, k), dtype=np.float32)
    if torch is not None:
        F = torch.nn.functional
        tx = torch.from_numpy(x)
        if (pt, pl) != (pb, pr):  # asymmetric "same" padding: PyTorch pads symmetrically only
            tx, pad = F.pad(tx, (pl, pr, pt, pb)), 0
        else:
            pad = (pt, pl)
        tx = tx.contiguous(memory_format=torch.channels_last)  # NHWC in memory, as pybnn
        tw = torch.from_numpy(w).contiguous(memory_format=torch.channels_last)

        def run_torch():
            with torch.inference_mode():
                return F.conv2d(tx, tw, stride=s, padding=pad)
        for n in threads_list:
            per_thread[n]["torch_f32"] = run_torch
    if ort is not None:
        attrs = dict(kernel_shape=[k, k], strides=[s, s], pads=[pt, pl, pb, pr])
        model = C.Onnx.model([C.Onnx.node("Conv", ["x", "w"], ["y"], **attrs)], [("x", C.Onnx.FLOAT, x.shape)],
                             [("y", C.Onnx.FLOAT, (1, f, ho, wo))], {"w": w})
        xq = rng.integers(0, 256, (1, c, h, w_)).astype(np.uint8)
        wq = rng.integers(-127, 128, (f, c, k, k)).astype(np.int8)
        qmodel = _qlinearconv_model(xq, wq, (1, f, ho, wo), attrs, rng)
        smodel = _qlinearconv_model(xq, wq, (1, f, ho, wo), attrs, rng, signed=True) if s8s8 else None
        for n in threads_list:
            per_thread[n]["ort_f32"] = C.ort_runner(ort, model, {"x": x}, n)
            per_thread[n]["ort_i8"] = C.ort_runner(ort, qmodel, {"x": xq}, n)
            if s8s8:
                per_thread[n]["ort_i8_s8s8"] = C.ort_runner(ort, smodel, {"x": _signed(xq)}, n)
    return per_thread


def _signed(xq):
    return (xq.astype(np.int16) - 128).astype(np.int8)


def _qlinearconv_model(xq, wq, out_shape, attrs, rng, signed=False):
    """QLinearConv, uint8 activations (zero points IN_ZP + 128, OUT_ZP + 128: pybnn's int8
    values shifted), int8 symmetric per-output-channel weights, int32 bias, uint8 output.
    signed=True: int8 activations and output with pybnn's own zero points (s8s8)."""
    f = wq.shape[0]
    act, elem, shift = (np.int8, C.Onnx.INT8, 0) if signed else (np.uint8, C.Onnx.UINT8, 128)
    init = {"xs": np.array(IN_SCALE, np.float32), "xz": np.array(IN_ZP + shift, act), "w": wq,
            "ws": rng.uniform(0.002, 0.02, f).astype(np.float32), "wz": np.zeros(f, np.int8),
            "ys": np.array(OUT_SCALE, np.float32), "yz": np.array(OUT_ZP + shift, act),
            "b": rng.integers(-2000, 2001, f).astype(np.int32)}
    node = C.Onnx.node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"], **attrs)
    return C.Onnx.model([node], [("x", elem, xq.shape)], [("y", elem, out_shape)], init)


# ----------------------------------------------------------------------------- main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(parser, default_repeats=15)
    parser.add_argument("--shapes", nargs="+", metavar="NAME", help="only these shapes (e.g. 3x3_256 fc_4096_4096)")
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), help="only these pybnn kinds")
    parser.add_argument("--pad-value", type=int, default=0, choices=(-1, 0, 1),
                        help="pad_value of the binary convolutions (default 0, pybnn's default)")
    parser.add_argument("--ort-s8s8", action="store_true",
                        help="also time onnxruntime QLinearConv with int8 (not uint8) activations")
    parser.add_argument("--rounds", type=int, default=None, metavar="N",
                        help="alternating rounds of the thread counts for the speed-up table "
                             "(default 20, 4 with --quick; 0: none)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also split each layer's time into im2col / accumulate / transform")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 15)
    if args.rounds is None:
        args.rounds = 4 if args.quick else 20
    timing = dict(repeats=repeats, max_seconds=0.08 if args.quick else 0.6, warmup=1 if args.quick else 2,
                  min_sample_ms=2 if args.quick else 20)
    threads_list = C.thread_counts(args)
    kinds = args.kinds or list(KINDS)
    settle = 0.05 if args.quick else 0.15
    # --quick leaves out the two largest dense layers (building them is most of its time)
    cases = shape_cases(args.shapes or ([c["name"] for c in shape_cases()
                                         if c["name"] not in ("fc_9216_4096", "fc_8192_1024")]
                                        if args.quick else None))
    if not cases:
        raise SystemExit(f"--shapes: none of {args.shapes} is known; known: {[c['name'] for c in shape_cases()]}")
    torch = ort = None
    if not args.no_baselines:
        torch, ort = C.import_torch(), C.import_onnxruntime()
    info = C.machine_info(torch, ort)
    print(C.describe_machine(info))
    print(f"threads: {threads_list}; repeats {repeats}; binary pad_value {args.pad_value}; "
          f"BLAS threads {C.blas_note(args.blas_threads)}")
    started = time.perf_counter()
    rows = []
    ratios = []
    for case in cases:
        runs = {}  # kind -> its timed call at the first thread count, for the pair ratios
        for i, kind in enumerate(kinds):
            op, x = prepared(build_layer(case, kind, args.pad_value), seed=1000 + i)
            if tuple(op.output_spec.shape) != case["output"]:  # the ops count assumes this shape
                raise SystemExit(f"{case['name']}/{kind}: pybnn output {op.output_spec.shape}, "
                                 f"expected {case['output']}")
            y = op._output(None, x.shape[0])  # a model's arena hands every op its output buffer

            def run(op=op, x=x, y=y):  # bound now: runs[kind] is called after the loop moved on
                return op.call(x, out=y)
            for n in threads_list:
                with C.limit_threads(n, torch, args.blas_threads):
                    t = C.measure_quiet(run, args.wait_idle, **timing)
                    extra = breakdown(op, x, timing) if args.breakdown else {}
                C.settle(n, settle)
                rows.append({"shape": case["name"], "label": case["label"], "impl": "pybnn", "kind": kind,
                             "layer": type(op).__name__, "output_kind": op.output_spec.kind, "threads": n,
                             "ops": case["ops"], **t, "gops": C.gops(case["ops"], t["median_ms"]),
                             "isa": C.isa_name(op.last_isa), "input_dtype": str(x.dtype),
                             "input_shape": list(x.shape), "loadavg1": C.loadavg1(),
                             "weight_gbps": weight_gbps(case, KINDS[kind][1], t["median_ms"]), **extra})
            add_speedup(rows, case["name"], kind, lambda n: run, threads_list, args, torch)
            runs[kind] = run
        if torch is not None or ort is not None:
            try:
                runners = baseline_runners(case, threads_list, torch, ort, seed=7, s8s8=args.ort_s8s8)
            except Exception as e:  # a baseline that cannot run here is reported, not fatal
                print(f"  baselines for {case['name']} failed: {type(e).__name__}: {e}", file=sys.stderr)
                runners = {}
            for n, fns in runners.items():
                for name, fn in fns.items():
                    with C.limit_threads(n, torch, args.blas_threads):
                        try:
                            t = C.measure_quiet(fn, args.wait_idle, **timing)
                        except Exception as e:
                            print(f"  {name} on {case['name']} failed: {e}", file=sys.stderr)
                            continue
                    C.settle(n, settle)
                    impl = "torch" if name.startswith("torch") else "onnxruntime"
                    rows.append({"shape": case["name"], "label": case["label"], "impl": impl, "kind": name,
                                 "threads": n, "ops": case["ops"], **t,
                                 "gops": C.gops(case["ops"], t["median_ms"]), "isa": None,
                                 "loadavg1": C.loadavg1(),
                                 "weight_gbps": weight_gbps(case, BASELINES[name][1], t["median_ms"])})
            for name in (runners[threads_list[0]] if runners else {}):
                if all(name in runners[n] for n in threads_list):
                    add_speedup(rows, case["name"], name, lambda n: runners[n][name], threads_list, args, torch)
                runs[name] = runners[threads_list[0]][name]
            del runners
        ratios += pair_ratios(rows, case["name"], runs, threads_list[0], args, torch)
        del runs
        print(f"  {case['name']} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    overhead = []
    if not args.shapes:
        case = shape_cases([OVERHEAD_SHAPE[0]], [OVERHEAD_SHAPE])[0]
        for i, kind in enumerate(kinds):
            op, x = prepared(build_layer(case, kind, args.pad_value), seed=2000 + i)
            with C.limit_threads(1, torch):
                t = C.measure(lambda: op.call(x), **timing)
            overhead.append({"shape": case["name"], "impl": "pybnn", "kind": kind, "layer": type(op).__name__,
                             "threads": 1, **t, "isa": C.isa_name(op.last_isa), "loadavg1": C.loadavg1()})
    elapsed = time.perf_counter() - started
    report(rows, cases, kinds, threads_list, args, ratios)
    C.warn_contention(rows)
    if overhead:
        C.table(["kind", "layer", "median us", "min us", "max us"],
                [[KINDS[r["kind"]][0], r["layer"], r["median_ms"] * 1e3, r["min_ms"] * 1e3, r["max_ms"] * 1e3]
                 for r in overhead],
                title="Fixed cost of one layer call (dense 64 -> 64, 1 thread: Python, checks, allocation)",
                markdown=args.markdown)
    print(f"\n{len(rows)} measurements in {elapsed:.0f} s")
    if args.json:
        info["loadavg_end"], info["other_cpu_end"] = C.loadavg(), C.other_load()
        C.write_json(args.json, {"benchmark": "layers", "machine": info, "elapsed_s": elapsed,
                                 "settings": {"threads": threads_list, "repeats": repeats, "quick": args.quick,
                                              "pad_value": args.pad_value, "kinds": kinds, "wait_idle": args.wait_idle,
                                              "blas_threads": args.blas_threads,
                                              "int8": {"input_scale": IN_SCALE, "input_zero_point": IN_ZP,
                                                       "output_scale": OUT_SCALE, "output_zero_point": OUT_ZP}},
                                 "summary": summary_rows(rows, threads_list), "rows": rows, "ratios": ratios,
                                 "overhead_rows": overhead})


def round_calls(row):
    """Timed calls per variant and round of the alternating rounds: ~2 ms of the row's layer
    (5-50 calls)."""
    return int(min(50, max(5, 2.0 / max(row["median_ms"], 1e-3))))


def add_speedup(rows, shape, kind, runner, threads_list, args, torch):
    """Adds "speedup" (each thread count over the first, from alternating rounds:
    _common.interleaved_speedup) to the rows of (shape, kind); rounds of ~2 ms per count."""
    if len(threads_list) < 2 or args.rounds < 1:
        return
    first = find(rows, shape, kind, threads_list[0])
    if first is None:
        return
    speedup = C.interleaved_speedup(runner, threads_list, args.rounds, torch, calls=round_calls(first))
    for n in threads_list:
        r = find(rows, shape, kind, n)
        if r is not None:
            r["speedup"] = speedup.get(n, 1.0)


# The ratios the fast-kernel targets are stated in (kind over vs, at one thread), measured in
# interleaved rounds: two kinds' separate medians, taken seconds apart, also differ by how this
# shared machine's speed drifted in between (10-20%).
PAIRS = (("i8xb", "int8"), ("fxb", "float"), ("int8", "ort_i8"), ("float", "ort_f32"), ("bits", "ort_f32"))


def pair_ratios(rows, shape, runs, n, args, torch):
    """[{shape, kind, vs, threads, ratio}]: how many times faster `kind` runs than `vs` on
    `shape` at n threads, from args.rounds alternating rounds (_common.interleaved_ratios)."""
    out = []
    for kind, vs in PAIRS:
        slower = find(rows, shape, vs, n)
        if kind not in runs or vs not in runs or slower is None or args.rounds < 1:
            continue
        ratio = C.interleaved_ratios([(runs[vs], n), (runs[kind], n)], args.rounds, round_calls(slower),
                                     torch_module=torch)[1]
        out.append({"shape": shape, "kind": kind, "vs": vs, "threads": n, "ratio": ratio})
    return out


def find(rows, shape, kind, n):
    for r in rows:
        if r["shape"] == shape and r["kind"] == kind and r["threads"] == n:
            return r
    return None


def report(rows, cases, kinds, threads_list, args, ratios=()):
    md = args.markdown
    present = [b for b in BASELINES if any(r["kind"] == b for r in rows)]
    for n in threads_list:
        detail = []
        for case in cases:
            for kind in kinds + present:
                r = find(rows, case["name"], kind, n)
                if r is None:
                    continue
                label = KINDS[kind][0] if kind in KINDS else BASELINES[kind][0]
                line = [case["label"], label, r["median_ms"], r["min_ms"], r["max_ms"], r["gops"],
                        r.get("weight_gbps"), r["isa"] or "-", r["other_cpu"]]
                if args.breakdown:
                    im2col, acc = r.get("im2col_ms"), r.get("accumulate_ms")
                    line += [im2col, None if acc is None else acc - (im2col or 0.0),
                             None if acc is None else r["median_ms"] - acc]
                detail.append(line)
        headers = ["shape", "kind", "median ms", "min ms", "max ms", "Gops", "weight GB/s", "ISA", "other CPU"]
        if args.breakdown:
            headers += ["im2col ms", "kernel ms", "transform ms"]
        C.table(headers, detail, title=f"Per-layer times, {n} thread{'s' if n > 1 else ''}", markdown=md)
        wide = []
        for case in cases:
            line = [case["label"]]
            for kind in kinds + present:
                r = find(rows, case["name"], kind, n)
                line.append(r["gops"] if r else None)
            if "ort_f32" in present:
                b, o = find(rows, case["name"], "bits", n), find(rows, case["name"], "ort_f32", n)
                line.append(o["median_ms"] / b["median_ms"] if b and o else None)
            wide.append(line)
        headers = ["shape"] + [KINDS[k][0] for k in kinds] + [BASELINES[b][0].replace(" QLinearConv)", ")")
                                                              for b in present]
        if "ort_f32" in present:
            headers.append("bits vs ORT f32")
        note = (" (last column: speed-up of pybnn binary -> bits over onnxruntime float32)"
                if "ort_f32" in present else "")
        C.table(headers, wide, title=f"Gops, {n} thread{'s' if n > 1 else ''}{note}", markdown=md)
    if len(threads_list) > 1 and any("speedup" in r for r in rows):
        n = threads_list[-1]
        table = []
        for case in cases:
            line = [case["label"]]
            for kind in kinds + present:
                r = find(rows, case["name"], kind, n)
                line.append(r.get("speedup") if r else None)
            table.append(line)
        C.table(["shape"] + [KINDS[k][0] if k in KINDS else BASELINES[k][0].replace(" QLinearConv)", ")")
                             for k in kinds + present], table, markdown=md,
                title=f"Speed-up of {n} threads over {threads_list[0]} (median over {args.rounds} alternating "
                      f"rounds of the thread counts)")
    pairs = [p for p in PAIRS if any(r["kind"] == p[0] and r["vs"] == p[1] for r in ratios)]
    if pairs:
        label = lambda k: KINDS[k][0] if k in KINDS else BASELINES[k][0].replace(" QLinearConv)", ")")
        table = [[case["label"]] + [next((r["ratio"] for r in ratios if r["shape"] == case["name"]
                                          and (r["kind"], r["vs"]) == p), None) for p in pairs]
                 for case in cases]
        C.table(["shape"] + [f"{label(a)} / {label(b)}" for a, b in pairs], table, markdown=md,
                title=f"How many times faster one kind runs than another, {threads_list[0]} thread "
                      f"(median over {args.rounds} alternating rounds of the two)")
    summary = summary_rows(rows, threads_list)
    if summary:
        C.table(["Convolution type", "Weight bits"] + [f"Gops ({n} thr)" for n in threads_list],
                [[s["type"], s["weight_bits"]] + [s["gops"].get(n) for n in threads_list] for s in summary],
                title="Summary: dense 4096 -> 4096, batch 1 (as in the binarynet-tensorflow README)", markdown=md)


def summary_rows(rows, threads_list):
    out = []
    for kind in list(KINDS) + list(BASELINES):
        label, bits = KINDS[kind][:2] if kind in KINDS else BASELINES[kind]
        g = {n: find(rows, SUMMARY_SHAPE, kind, n) for n in threads_list}
        if any(g.values()):
            out.append({"type": label, "weight_bits": bits, "kind": kind,
                        "gops": {n: (r["gops"] if r else None) for n, r in g.items()}})
    return out


if __name__ == "__main__":
    main()
