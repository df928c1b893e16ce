"""Expected speed of pybnn's NEON kernels on the Raspberry Pi, from instruction counts.

There is no Pi to time here, so this compiles the kernel headers with Debian's cross
compilers (the flags of setup.py), disassembles them, takes the innermost loop of each GEMM
variant (the back-edge loop holding the most of its multiply instructions), counts its
instructions by the execution resources they need, and turns the count into cycles per
loop iteration with each core's published issue limits:

    Cortex-A53 (Pi 3, Zero 2 W; in order, dual issue): one 128-bit SIMD instruction per
        cycle; 128-bit vector loads do not issue beside one, other loads and scalar
        instructions pair with them.
    Cortex-A72 (Pi 4): two SIMD pipes F0/F1; UADALP/SADALP only on F1, integer multiplies
        (SMULL) only on F0; a 128-bit float multiply-add is two micro-ops; one load pipe;
        3 instructions decoded per cycle.
    Cortex-A76 (Pi 5): two SIMD pipes V0/V1; UADALP/SADALP only on V1, SMULL only on V0;
        FMLA and SDOT on either; two load pipes; 4 instructions decoded per cycle.

    Gops = 2 * multiply-adds per iteration / cycles per iteration * GHz    (one core)

These are upper bounds of the loop's issue rate: they ignore cache misses, the code around
the loop (packing, im2col, output transforms) and, on the in-order A53, stalls on latency
the compiler did not schedule around.  Expect 50-80% of them on large layers.

    python benchmarks/pi_throughput.py [--sysroot-arm64 DIR] [--sysroot-armhf DIR]    (prints Markdown)

Needs gcc-aarch64-linux-gnu / gcc-arm-linux-gnueabihf (what .ci/arm installs) and a C
library for each target: the sysroots .ci/arm caches are found by themselves.
"""
import argparse
import collections
import glob
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (label, function, multiply instruction regex, multiply-adds per such instruction)
KERNELS = {
    "aarch64": [
        ("binary (bgemm/bconv)", "pybnn_xgemm_neon", r"^cnt$", 128),
        ("float x binary (fbgemm)", "pybnn_fb_neon_bits", r"^fmla$", 4),
        ("float (sgemm)", "pybnn_fb_neon_f32", r"^fmla$", 4),
        ("int8 (igemm), neon", "pybnn_igemm_neon", r"^smull2?$", 8),
        ("int8 (igemm), neon_dotprod", "pybnn_igemm_neon_dotprod", r"^sdot$", 16),
        ("int8 x binary (ibgemm), neon", "pybnn_ibgemm_neon", r"^sadalp$", 16),
        ("int8 x binary (ibgemm), neon_dotprod", "pybnn_ibgemm_neon_dotprod", r"^sdot$", 16),
    ],
    "armv7": [
        ("binary (bgemm/bconv)", "pybnn_xgemm_neon", r"^vcnt\.8$", None),  # q or d: see macs_arm
        ("float x binary (fbgemm)", "pybnn_fb_neon_bits", r"^vfma\.f32$", None),
        ("float (sgemm)", "pybnn_fb_neon_f32", r"^vfma\.f32$", None),
        ("int8 (igemm), neon", "pybnn_igemm_neon", r"^vmull\.s8$", 8),
        ("int8 x binary (ibgemm), neon", "pybnn_ibgemm_neon", r"^vpadal\.s8$", None),
    ],
}
MACS_PER_Q = {r"^vcnt\.8$": 128, r"^vfma\.f32$": 4, r"^vpadal\.s8$": 16}  # halved for d registers

TARGETS = {
    "aarch64": ("aarch64-linux-gnu", [], "arm64"),
    "armv7": ("arm-linux-gnueabihf", ["-mfpu=neon-vfpv4", "-mfloat-abi=hard"], "armhf"),
}
# Cores: (name, Pi, GHz list, targets)
CORES = [("Cortex-A53", "Pi 3 B / 3 B+", [1.2, 1.4], ("aarch64", "armv7")),
         ("Cortex-A72", "Pi 4", [1.5, 1.8], ("aarch64", "armv7")),
         ("Cortex-A76", "Pi 5", [2.4], ("aarch64", "armv7"))]

SOURCE = r"""
#include "pybnn/bgemm.h"
#include "pybnn/fbgemm.h"
#include "pybnn/igemm.h"
/* Taking the addresses keeps every variant as a function of its own name. */
void *pybnn_pi_kernels[] = {
    (void *)pybnn_xgemm_neon, (void *)pybnn_fb_neon_bits, (void *)pybnn_fb_neon_f32,
    (void *)pybnn_igemm_neon, (void *)pybnn_ibgemm_neon,
#if PYBNN_DOTPROD
    (void *)pybnn_igemm_neon_dotprod, (void *)pybnn_ibgemm_neon_dotprod,
#endif
};
"""


def disassemble(target, sysroot):
    triplet, flags, _ = TARGETS[target]
    with tempfile.TemporaryDirectory() as tmp:
        src, obj = os.path.join(tmp, "k.c"), os.path.join(tmp, "k.o")
        with open(src, "w") as f:
            f.write(SOURCE)
        cmd = [f"{triplet}-gcc", "-O3", "-std=gnu11", "-ffp-contract=off", "-fno-strict-aliasing", "-fPIC",
               *flags, "-I", os.path.join(ROOT, "include"), "-c", src, "-o", obj]
        if sysroot:
            cmd.insert(1, f"--sysroot={sysroot}")
        subprocess.run(cmd, check=True)
        return subprocess.run([f"{triplet}-objdump", "-d", "--no-show-raw-insn", obj], check=True,
                              capture_output=True, text=True).stdout


def functions(dis):
    """{name: [(address, mnemonic, operands)]} of an objdump listing."""
    funcs, cur = {}, None
    for line in dis.splitlines():
        m = re.match(r"^[0-9a-f]+ <([^>]+)>:$", line)
        if m:
            cur = funcs.setdefault(m.group(1), [])
            continue
        m = re.match(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$", line)
        if m and cur is not None:
            cur.append((int(m.group(1), 16), m.group(2), m.group(3)))
    return funcs


def innermost_loop(ins, mul_re):
    """The back-edge loop (target <= branch) without an inner back edge that holds the most
    multiply instructions (ties: the shortest)."""
    branches = []
    for addr, op, args in ins:
        if re.match(r"^(b(\.\w+)?|cbn?z|tbn?z|b(eq|ne|cc|cs|hi|ls|lt|gt|le|ge|mi|pl)(\.n|\.w)?)$", op):
            t = re.search(r"\b([0-9a-f]+) <", args)
            if t and int(t.group(1), 16) <= addr:
                branches.append((int(t.group(1), 16), addr))
    best = None
    for lo, hi in branches:
        if any(lo <= l2 and h2 <= hi and (l2, h2) != (lo, hi) for l2, h2 in branches):
            continue  # holds another loop
        body = [x for x in ins if lo <= x[0] <= hi]
        muls = sum(bool(re.match(mul_re, op)) for _, op, _ in body)
        key = (muls, -len(body))
        if muls and (best is None or key > best[0]):
            best = (key, body)
    return best[1] if best else None


def classify(target, body):
    """Counts of the loop's instructions by resource."""
    c = collections.Counter()
    for _, op, args in body:
        vec = "v" in args.split(",")[0] and target == "aarch64" and re.search(r"\bv\d+\.", args) or \
            target == "armv7" and re.search(r"\b[qd]\d+\b", args) and op.startswith("v")
        q = target == "aarch64" and re.search(r"\.(16b|8h|4s|2d)", args) or target == "armv7" and re.search(r"\bq\d+", args)
        if re.match(r"^(ld|vld)", op) or op.startswith("ldr") and re.match(r"^[qd]\d+", args):
            c["vload"] += 1
            if q or re.match(r"^q", args) or "ldp" == op and args.startswith("q"):
                c["vload128"] += 1
        elif op.startswith("ldr") or op.startswith("ldp"):
            c["load"] += 1
        elif vec:
            c["simd"] += 1
            if re.match(r"^[su]adalp$|^vpadal\.", op):
                c["simd_p1"] += 1  # the second pipe only
            if re.match(r"^[su]mull2?$|^vmull\.", op):
                c["simd_p0"] += 1  # the first pipe only
            if re.match(r"^(fmla|vfma\.f32)$", op) and q:
                c["fp128"] += 1
        else:
            c["scalar"] += 1
    c["total"] = len(body)
    return c


def cycles(core, c):
    simd_slots = c["simd"] + c["fp128"]  # an A72 128-bit float op takes both halves
    if core == "Cortex-A53":
        return max(c["simd"] + c["vload128"], c["total"] / 2)
    if core == "Cortex-A72":
        return max(simd_slots / 2, c["simd_p1"], c["simd_p0"], c["vload"] + c["load"], c["total"] / 3)
    return max(c["simd"] / 2, c["simd_p1"], c["simd_p0"], (c["vload"] + c["load"]) / 2, c["total"] / 4)


def analyse(target, sysroot):
    funcs = functions(disassemble(target, sysroot))
    rows = []
    for label, fn, mul_re, macs in KERNELS[target]:
        ins = funcs.get(fn)
        if ins is None:
            continue
        body = innermost_loop(ins, mul_re)
        if body is None:
            raise SystemExit(f"no loop with {mul_re} in {fn} ({target})")
        muls = [args for _, op, args in body if re.match(mul_re, op)]
        per = macs if macs else MACS_PER_Q[mul_re]
        if target == "armv7" and macs is None:  # d-register forms do half the work
            total_macs = sum(per if re.search(r"\bq\d+", a) else per // 2 for a in muls)
        else:
            total_macs = per * len(muls)
        rows.append((label, total_macs, classify(target, body)))
    return rows


def find_sysroot(arch):
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pybnn-ci")
    found = sorted(glob.glob(os.path.join(cache, f"{arch}-*")))
    return found[-1] if found else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sysroot-arm64", default=find_sysroot("arm64"))
    parser.add_argument("--sysroot-armhf", default=find_sysroot("armhf"))
    args = parser.parse_args(argv)
    sysroots = {"aarch64": args.sysroot_arm64, "armv7": args.sysroot_armhf}
    print("| kernel | target | loop: multiply-adds / SIMD instr / vector loads / all | "
          + " | ".join(f"{core} ({pi}) @ {' / '.join(f'{g:g}' for g in ghz)} GHz" for core, pi, ghz, _ in CORES) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in CORES) + " |")
    for target in ("aarch64", "armv7"):
        for label, macs, c in analyse(target, sysroots[target]):
            cells = []
            for core, _, ghz, _ in CORES:
                if "dotprod" in label and core != "Cortex-A76":
                    cells.append("-")
                    continue
                cyc = cycles(core, c)
                cells.append(" / ".join(f"{2 * macs / cyc * g:.0f}" for g in ghz))
            print(f"| {label} | {target} | {macs} / {c['simd']} / {c['vload']} / {c['total']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
