"""End-to-end speed and memory of the model zoo (pybnn.zoo) at batch 1, with a float32
ResNet-18 in onnxruntime and PyTorch measured in the same run.

    python benchmarks/models.py [--models NAME ...] [--threads N ...] [--repeats R] [--json OUT]

Every model is written to a model file (random weights: speed does not depend on them) and
then measured in a fresh Python process of its own: the load time, peak RSS (VmHWM) after
the imports, after loading the file and after the timed runs (and the RSS at the end);
milliseconds per image (median, min, max of the samples) for each thread count; the
speed-up over one thread from alternating rounds of the thread counts; the model's
activation arena.  Inputs: 224x224x3
images (AlexNet, Bi-Real Net, QuickNet), 32x32x3 (BinaryNet).  The baselines are ResNet-18
in float32: an ONNX graph written by benchmarks/_common.py (BN folded into the convolutions,
as onnxruntime would fold it) and the same network in plain torch.nn (channels-last,
inference mode); each is skipped if its library is missing.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

import _common as C
import pybnn
from pybnn import zoo
from pybnn.__main__ import random_input

BASELINES = ("resnet18_ort", "resnet18_torch")
RESNET18_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (channels, stride of the first block)


def rss_mb(field="VmHWM"):
    """Resident set size of this process in MiB from /proc/self/status (Linux): its peak so
    far (VmHWM) or its current size (VmRSS).  Elsewhere the peak from ru_maxrss (on Linux
    ru_maxrss survives exec, so a child would start at the size of the process that forked
    it, here one that imported PyTorch)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 2**10
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


# ----------------------------------------------------------------------------- ResNet-18


def resnet18_onnx(seed=0):
    """ResNet-18 (He et al. 2016, torchvision's layout) as an ONNX model, NCHW float32, BN
    folded into the convolutions (weights and biases), random He-initialized weights."""
    rng = np.random.default_rng(seed)
    O = C.Onnx
    nodes, weights = [], {}

    def conv(x, cin, cout, k, stride, name, relu=True):
        weights[f"{name}_w"] = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2 / (cin * k * k))).astype(np.float32)
        weights[f"{name}_b"] = (rng.standard_normal(cout) * 0.1).astype(np.float32)
        nodes.append(O.node("Conv", [x, f"{name}_w", f"{name}_b"], [name], node_name=name, kernel_shape=[k, k],
                            strides=[stride, stride], pads=[k // 2] * 4))
        if relu:
            nodes.append(O.node("Relu", [name], [f"{name}_relu"], node_name=f"{name}_relu"))
            return f"{name}_relu"
        return name

    x = conv("image", 3, 64, 7, 2, "conv1")
    nodes.append(O.node("MaxPool", [x], ["pool1"], node_name="pool1", kernel_shape=[3, 3], strides=[2, 2],
                        pads=[1, 1, 1, 1]))
    x, cin = "pool1", 64
    for s, (cout, stride) in enumerate(RESNET18_STAGES, 1):
        for b in range(2):
            name, st = f"s{s}b{b}", stride if b == 0 else 1
            y = conv(x, cin, cout, 3, st, f"{name}_conv1")
            y = conv(y, cout, cout, 3, 1, f"{name}_conv2", relu=False)
            short = conv(x, cin, cout, 1, st, f"{name}_down", relu=False) if (st, cin) != (1, cout) else x
            nodes.append(O.node("Add", [y, short], [f"{name}_add"], node_name=f"{name}_add"))
            nodes.append(O.node("Relu", [f"{name}_add"], [f"{name}_out"], node_name=f"{name}_out"))
            x, cin = f"{name}_out", cout
    nodes.append(O.node("GlobalAveragePool", [x], ["gap"], node_name="gap"))
    nodes.append(O.node("Flatten", ["gap"], ["flat"], node_name="flat", axis=1))
    weights["fc_w"] = (rng.standard_normal((1000, 512)) / np.sqrt(512)).astype(np.float32)
    weights["fc_b"] = np.zeros(1000, np.float32)
    nodes.append(O.node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], node_name="fc", transB=1))
    return O.model(nodes, [("image", O.FLOAT, (1, 3, 224, 224))], [("logits", O.FLOAT, (1, 1000))], weights)


def resnet18_torch(torch):
    """ResNet-18 in plain torch.nn (the torchvision layout; torchvision is not needed)."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return torch.relu(y + (x if self.down is None else self.down(x)))

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in RESNET18_STAGES:
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000)]
    return nn.Sequential(*layers).eval()


# ----------------------------------------------------------------------------- one model, one process


def worker(kind, path, args):
    """Runs in its own process: load, time, report one JSON line on stdout."""
    timing = dict(repeats=args.repeats, max_seconds=3.0, min_sample_ms=1)
    torch = C.import_torch() if kind == "resnet18_torch" else None
    result = {"rss_start_mb": rss_mb(), "times": {}}
    if kind == "resnet18_ort":
        ort = C.import_onnxruntime()
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)

        def runner(n):  # onnxruntime fixes its thread count per session
            return C.ort_runner(ort, path, {"image": x}, n)
    elif kind == "resnet18_torch":
        torch.manual_seed(0)
        model = resnet18_torch(torch).to(memory_format=torch.channels_last)
        x = torch.randn(1, 3, 224, 224).contiguous(memory_format=torch.channels_last)

        def runner(n):
            def run():
                with torch.inference_mode():
                    return model(x)
            return run
    else:
        started = time.perf_counter()
        model = pybnn.load_model(path)
        result["load_ms"] = (time.perf_counter() - started) * 1e3
        x = random_input(model.inputs[0], 1, np.random.default_rng(0))
        result["arena_bytes"], result["activation_bytes"], _ = model.activation_bytes(1)
        result["isa"] = pybnn.cpu.get_isa()

        def runner(n):
            return lambda: model.predict(x)
    for i, n in enumerate(args.threads):
        fn = runner(n)
        if i == 0:
            result["rss_loaded_mb"], result["rss_loaded_now_mb"] = rss_mb(), rss_mb("VmRSS")
        with C.limit_threads(n, torch):
            t = C.measure_quiet(fn, args.wait_idle, **timing)
            t["cpu_ms"] = cpu_ms(fn, args.cpu_seconds)
        result["times"][n] = t
        del fn
        C.settle(n, 0.3)
    if len(args.threads) > 1:
        result["speedup"] = C.interleaved_speedup(runner, args.threads, args.rounds, torch)
    if kind not in BASELINES:  # where the time goes: per-op medians, robust to preemptions of a whole run
        with C.limit_threads(1):
            ops = model.profile(x, repeats=args.repeats)
        result["profile_1t"] = {"total_ms": sum(r["ms"] for r in ops), "by_kind": by_kind(ops)}
    result["rss_peak_mb"], result["rss_end_now_mb"] = rss_mb(), rss_mb("VmRSS")
    print(json.dumps(result))


def cpu_ms(fn, seconds):
    """CPU time of this process (all its threads) per call, in ms, over calls for `seconds`
    of wall time (at least 3).  On one thread it is the time the call takes when it has a
    core to itself: on a shared machine, wall time also counts other processes' time slices."""
    calls, cpu, wall = 0, time.process_time(), time.perf_counter()
    while calls < 3 or time.perf_counter() - wall < seconds:
        fn()
        calls += 1
    return (time.process_time() - cpu) / calls * 1e3


def by_kind(ops):
    """model.profile rows summed per layer kind: {kind: [ops, ms]}, NumPy-computed ops
    (Add, BatchNormalization, ReLU, ...) under "<kind> (numpy)", largest first."""
    kinds = {}
    for r in ops:
        key = r["kind"] + (" (numpy)" if r["isa"] == "numpy" else "")
        count, ms = kinds.get(key, (0, 0.0))
        kinds[key] = (count + 1, ms + r["ms"])
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1][1]))


def measure_in_subprocess(kind, path, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, path, "--repeats", str(args.repeats),
           "--wait-idle", str(args.wait_idle), "--cpu-seconds", str(args.cpu_seconds), "--rounds", str(args.rounds),
           "--threads", *map(str, args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind}: worker failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["times"] = {int(n): t for n, t in result["times"].items()}
    if "speedup" in result:
        result["speedup"] = {int(n): r for n, r in result["speedup"].items()}
    return result


# ----------------------------------------------------------------------------- main


def describe(model):
    graph = model._graph
    return {"params": sum(layer.count_params() for layer in graph),
            "weight_bytes": sum(layer.weight_bytes() for layer in graph),
            "mops": sum(layer.mops() for layer in graph),
            "binary_mops": sum(layer.mops() for layer in graph if type(layer).__name__.startswith("Binary")),
            "input": list(model.input_spec.shape)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_args(parser, default_repeats=20)
    parser.add_argument("--models", nargs="+", metavar="NAME", choices=list(zoo.MODELS) + list(BASELINES),
                        help=f"models to run (default: all of {', '.join(list(zoo.MODELS) + list(BASELINES))})")
    parser.add_argument("--rounds", type=int, default=30, metavar="N",
                        help="alternating rounds of the thread counts for the speed-up column (default 30)")
    parser.add_argument("--cpu-seconds", type=float, default=2.0, metavar="S",
                        help="wall seconds to run each case for its CPU time per image (default 2)")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (5 if args.quick else 20)
    args.threads = C.thread_counts(args)
    if args.worker:
        return worker(*args.worker, args)

    names = args.models or list(zoo.MODELS) + ([] if args.no_baselines else list(BASELINES))
    torch, ort = C.import_torch(), C.import_onnxruntime()
    info = C.machine_info(torch, ort)
    print(C.describe_machine(info))
    print(f"threads {args.threads}; up to {args.repeats} samples per case; batch 1; each model in a fresh process")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            started = time.perf_counter()
            if name == "resnet18_ort" and ort is None or name == "resnet18_torch" and torch is None:
                print(f"  {name}: library not installed, skipped", file=sys.stderr)
                continue
            row = {"model": name}
            if name in zoo.MODELS:
                path = os.path.join(tmp, f"{name}.bin")
                model = zoo.build(name).randomize(0)
                model.save(path)
                row.update(describe(model), impl="pybnn", file_bytes=os.path.getsize(path))
                del model
            elif name == "resnet18_ort":
                path = os.path.join(tmp, "resnet18.onnx")
                with open(path, "wb") as f:
                    f.write(resnet18_onnx())
                row.update(impl="onnxruntime", file_bytes=os.path.getsize(path), input=[3, 224, 224],
                           params=11_689_512)
            else:
                path = ""
                row.update(impl="torch", input=[3, 224, 224], params=11_689_512)
            try:
                row.update(measure_in_subprocess(name, path, args))
            except RuntimeError as e:
                print(f"  {e}", file=sys.stderr)
                continue
            row["loadavg1"] = C.loadavg1()
            rows.append(row)
            print(f"  {name} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    report(rows, args)
    if args.json:
        C.write_json(args.json, {"benchmark": "models", "machine": info, "threads": args.threads,
                                 "repeats": args.repeats, "rows": rows})


def report(rows, args):
    threads = args.threads
    headers = ["model", "impl", "input", "params M", "GOps", "file MB", "load ms", "arena MB",
               "RSS MB: start/loaded/peak (now)"]
    for n in threads:
        headers += [f"ms {n}t median", f"min-max {n}t", f"CPU ms {n}t"]
    if len(threads) > 1:
        headers.append(f"speedup {threads[-1]}t vs {threads[0]}t (interleaved)")
    table = []
    for r in rows:
        times = r["times"]
        line = [r["model"], r["impl"], "x".join(map(str, r["input"])), r["params"] / 1e6,
                r["mops"] / 1e3 if "mops" in r else None,
                r["file_bytes"] / 2**20 if "file_bytes" in r else None, r.get("load_ms"),
                r["arena_bytes"] / 2**20 if "arena_bytes" in r else None,
                f"{r['rss_start_mb']:.0f}/{r['rss_loaded_mb']:.0f}/{r['rss_peak_mb']:.0f} ({r['rss_end_now_mb']:.0f})"]
        for n in threads:
            t = times[n]
            line += [t["median_ms"], f"{C.fmt(t['min_ms'])}-{C.fmt(t['max_ms'])}", t["cpu_ms"]]
        if len(threads) > 1:
            line.append(r["speedup"][threads[-1]])
        table.append(line)
    C.table(headers, table, markdown=args.markdown,
            title="Batch 1, ms per image: wall time (median of the samples; min-max) and CPU time of the "
                  "process (all its threads)")
    by_name = {r["model"]: r for r in rows}
    if "bireal18" in by_name:
        for base in BASELINES:
            if base in by_name:
                a, b = by_name[base]["times"], by_name["bireal18"]["times"]
                ratios = ", ".join(f"{n} thread(s) {a[n]['median_ms'] / b[n]['median_ms']:.1f}x" for n in threads)
                cpu = f"; CPU time on one thread {a[1]['cpu_ms'] / b[1]['cpu_ms']:.1f}x" if 1 in threads else ""
                print(f"Bi-Real Net-18 (pybnn) vs float32 ResNet-18 ({by_name[base]['impl']}): wall time "
                      f"{ratios} faster{cpu}")
    profiled = [r for r in rows if "profile_1t" in r]
    if profiled:
        print("\nWhere the time goes on one thread (model.profile: sum of per-op medians; "
              "ops, ms and share per layer kind, NumPy-computed ops marked)")
        for r in profiled:
            p = r["profile_1t"]
            numpy_ms = sum(ms for k, (n, ms) in p["by_kind"].items() if k.endswith("(numpy)"))
            parts = ", ".join(f"{k} x{n} {ms:.2f} ({100 * ms / p['total_ms']:.0f}%)"
                              for k, (n, ms) in list(p["by_kind"].items())[:5])
            print(f"  {r['model']}: {p['total_ms']:.2f} ms, NumPy ops {numpy_ms:.2f} ms "
                  f"({100 * numpy_ms / p['total_ms']:.0f}%): {parts}")
    targets = {"bireal18": 15.0, "quicknet": 14.0}  # ms at batch 1 on one thread (the zoo issue's targets)
    for name, limit in targets.items():
        if name in by_name and 1 in threads:
            t1 = by_name[name]["times"][1]
            more = [n for n in threads if n > 1]  # speed-ups are over threads[0], which is 1 here only if first
            scale = (f"; {more[-1]} threads {by_name[name]['speedup'][more[-1]]:.2f}x one, interleaved rounds "
                     f"(target >= 1.7x)" if more and threads[0] == 1 else "")
            print(f"{name}: {t1['median_ms']:.2f} ms on one thread, CPU {t1['cpu_ms']:.2f} ms "
                  f"(target <= {limit:g} ms){scale}")
    C.warn_contention([dict(threads=n, other_cpu=r["times"][n].get("other_cpu")) for r in rows for n in threads])


if __name__ == "__main__":
    sys.exit(main())
