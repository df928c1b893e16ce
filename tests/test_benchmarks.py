"""The benchmark scripts run end to end and write the JSON that docs/performance.md and
docs/zoo.md read (smoke runs: --quick, one small shape or model, no baselines, one round).
Speeds are never asserted: that is the benchmarks' job, not the tests'."""
import json
import os
import subprocess

from conftest import python_command, subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = {"float", "int8", "fxb", "i8xb", "bin", "bits"}


def run_benchmark(script, tmp_path, *args):
    out = tmp_path / "result.json"
    proc = subprocess.run(python_command() + [os.path.join(ROOT, "benchmarks", script), "--quick",
                                              "--no-baselines", "--threads", "1", "2", "--json", str(out), *args],
                          capture_output=True, text=True, timeout=1800, env=subprocess_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_layers_benchmark_writes_every_kind_thread_count_and_ratio(tmp_path):
    result, stdout = run_benchmark("layers.py", tmp_path, "--shapes", "3x3_256_s2", "--rounds", "1")
    rows = [r for r in result["rows"] if r["impl"] == "pybnn"]
    assert {(r["kind"], r["threads"]) for r in rows} == {(k, n) for k in KINDS for n in (1, 2)}
    for r in rows:
        assert r["shape"] == "3x3_256_s2" and r["median_ms"] > 0 and r["gops"] > 0 and r["isa"]
        assert r["speedup"] > 0 if r["threads"] == 2 else r["speedup"] == 1.0
    # the pybnn-only pairs of the targets (the onnxruntime ones need the baselines)
    assert {(r["kind"], r["vs"]) for r in result["ratios"]} == {("i8xb", "int8"), ("fxb", "float")}
    assert all(r["ratio"] > 0 and r["threads"] == 1 for r in result["ratios"])
    assert "Speed-up of 2 threads over 1" in stdout and "int8 x binary / int8" in stdout


def test_models_benchmark_writes_times_speedup_and_memory(tmp_path):
    result, stdout = run_benchmark("models.py", tmp_path, "--models", "binarynet", "--rounds", "1")
    (row,) = result["rows"]
    assert row["model"] == "binarynet" and row["impl"] == "pybnn"
    assert set(row["times"]) == {"1", "2"} and all(t["median_ms"] > 0 for t in row["times"].values())
    assert row["speedup"]["2"] > 0 and row["arena_bytes"] > 0 and row["file_bytes"] > 0
    assert "binarynet" in stdout
