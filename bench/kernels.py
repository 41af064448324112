"""CPU math-kernel pinning: what it costs and whether it changes a toy run's numbers on this machine.

A toy run is bit-identical on one machine at one thread count, but not across CPUs: MKL (matmuls), oneDNN
(convolutions) and PyTorch's own vectorised kernels each pick a code path for the CPU they run on (AVX-512 here,
AVX2 or other elsewhere), and the paths round differently. Each library has a switch that pins its path:
    MKL_CBWR=COMPATIBLE          MKL's conditional numerical reproducibility: one code path on every x86 CPU
    ONEDNN_MAX_CPU_ISA=AVX2      oneDNN uses at most AVX2 instructions
    ATEN_CPU_CAPABILITY=avx2     PyTorch's vectorised kernels use the AVX2 build
This script runs the same short toy RankE run under each switch and under all three, and reports per setting the
median step time and whether its final checkpoint equals the unpinned run's bit for bit (a switch that changes
nothing here chose the same path as this CPU's default).
It also emulates a CPU without AVX-512 on this one: MKL_ENABLE_INSTRUCTIONS=AVX2 (MKL dispatches as on an AVX2 CPU)
plus the oneDNN and ATen caps. Unpinned, that run shows whether an AVX2 machine's numbers differ; pinned (all three
switches on top), the script says whether its checkpoint equals the pinned run here. This is a weak test: for oneDNN
and ATen the pin is the cap itself, and the MKL row says whether MKL's dispatch on this CPU reacts to the cap at all.
An emulated ISA is not another CPU (other cache sizes, another vendor's MKL dispatch, another libm): whether pinned
runs are identical on ANOTHER CPU can only be checked there: run this script on both and compare the printed hashes.
Measured (docs/experiments.md §2): an AMD EPYC and an Intel Xeon, same torch build, differ pinned and unpinned.

    python -m bench.kernels                      # 20 RankE steps per setting, 2 threads; about 4 minutes
    python -m bench.kernels --steps 5 --threads 1
    python -m bench.kernels --settings unpinned "all three" --json kernels.json   # the two rows to compare across CPUs

Run it alone (other processes on the cores change the times, not the hashes).
Symbols: none beyond train.py's.
"""
import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = {"unpinned": {}, "MKL_CBWR=COMPATIBLE": {"MKL_CBWR": "COMPATIBLE"},
            "ONEDNN_MAX_CPU_ISA=AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
            "ATEN_CPU_CAPABILITY=avx2": {"ATEN_CPU_CAPABILITY": "avx2"}}
SETTINGS["all three"] = {k: v for s in list(SETTINGS.values()) for k, v in s.items()}
SETTINGS["MKL_ENABLE_INSTRUCTIONS=AVX2"] = {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}   # MKL as on a CPU without AVX-512
AVX2_CPU = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
SETTINGS["AVX2 CPU (emulated), unpinned"] = AVX2_CPU
SETTINGS["AVX2 CPU (emulated), all three"] = {**AVX2_CPU, **SETTINGS["all three"]}


def checkpoint_hash(path):
    """sha256 over every tensor of the models in a train.py checkpoint, in key order (not over the pickle, whose
    bytes also hold the config)."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    h = hashlib.sha256()
    for part in ("gpt", "vq", "ema_vq", "disc"):
        for k, v in sorted(ck[part].items()):
            h.update(k.encode())
            h.update(v.detach().contiguous().view(torch.uint8).numpy().tobytes() if v.dim() else v.numpy().tobytes())
    return h.hexdigest()[:16]


def machine():
    """What decides the kernels' paths: the CPU model, its capability as PyTorch sees it, the library versions."""
    from toy.first_run import cpu_name   # the one CPU-model reader (Linux's /proc/cpuinfo, else platform)
    cpu = cpu_name()
    libs = [line.strip(" -") for line in torch.__config__.show().splitlines()
            if "Math Kernel" in line or "MKL-DNN" in line]                 # MKL and oneDNN versions
    return {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "libraries": libs}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS), metavar="NAME",
                    help=f"which rows to run (default: all): {', '.join(SETTINGS)}")
    ap.add_argument("--json", default="", help="also write the rows and the machine description to this file")
    args = ap.parse_args()
    if "unpinned" not in args.settings:
        ap.error("--settings must include unpinned (every row is compared with it)")
    if args.steps < 2 or args.threads < 1:   # the first step is left out of the median
        ap.error(f"--steps {args.steps} / --threads {args.threads}: need --steps >= 2 and --threads >= 1")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, env in ((k, SETTINGS[k]) for k in SETTINGS if k in args.settings):
            out = os.path.join(tmp, name.replace("=", "_").replace(" ", "_"))
            cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--steps", str(args.steps), "--report_n", "0",
                   "--sample_every", "0", "--out_dir", out]
            res = subprocess.run(cmd, capture_output=True, text=True,
                                 env={**os.environ, **env, "OMP_NUM_THREADS": str(args.threads)})
            if res.returncode:                     # train.py's own message, not a bare CalledProcessError
                raise SystemExit(f"setting {name!r}: train.py failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
            times = [json.loads(line)["step_time_s"] for line in open(os.path.join(out, "metrics.jsonl"))]
            rows[name] = (statistics.median(times[1:]), checkpoint_hash(os.path.join(out, f"ckpt_{args.steps:07d}.pt")))
    base_t, base_h = rows["unpinned"]
    info = machine()
    print(f"{args.steps} toy RankE steps, {args.threads} threads, torch {info['torch']}, {info['cpu']}, "
          f"{info['cpu_capability']} CPU capability; {'; '.join(info['libraries'])}")
    print("| setting | median step (s) | vs unpinned | checkpoint hash | equals unpinned |\n|---|---:|---:|---|---|")
    for name, (t, h) in rows.items():
        print(f"| {name} | {t:.3f} | {t / base_t - 1:+.1%} | {h} | {'yes' if h == base_h else 'no'} |")
    if "AVX2 CPU (emulated), all three" in rows and "all three" in rows:
        same = rows["AVX2 CPU (emulated), all three"][1] == rows["all three"][1]
        print(f"Pinned (all three) on this CPU and on the emulated AVX2 CPU: {'identical' if same else 'DIFFERENT'} "
              "checkpoints; unpinned: "
              f"{'identical' if rows.get('AVX2 CPU (emulated), unpinned', (0, ''))[1] == base_h else 'different'}.")
    if args.json:     # compare two machines' files: equal hashes of a setting <=> bit-identical runs
        with open(args.json, "w") as f:
            json.dump({**info, "steps": args.steps, "threads": args.threads,
                       "rows": {k: {"median_step_s": t, "hash": h} for k, (t, h) in rows.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
