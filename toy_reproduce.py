"""The paper's comparison (docs/method.md §1: the paper's tables and its uniform-GAN ablation) reproduced on the
toy world: Base, Standard RL (GRPO, frozen decoder), RankE, RankE with a uniform (not reward-ranked) GAN, and VA-pi,
several seeds each, from the same base models.

    python toy_reproduce.py                       # 5 seeds, writes runs/repro/{results.md, results.json, curves.png}
    python toy_reproduce.py --seeds 0 --steps 40  # a quick look

Every run is `python train.py --seed S ...` (a subprocess, so each is exactly what a user would run); runs and
evaluations already on disk are reused, so an interrupted reproduction continues where it stopped. Each
checkpoint is scored by toy_eval.evaluate_toy_checkpoint on the same captions with the same sampling seed:
training reward, eval-CLIP (an independent CLIP), attribute-checker accuracy on train and held-out combinations,
toy FID and the LCS KL. The table reports mean +- std over seeds at the final step; curves.png shows the same over
training steps. For the RankE runs the final policy is also scored through the frozen BASE decoder (same seed, so
the same tokens): the difference between the two rows is what the co-evolved decoder contributes.

Tests: pytest tests/test_toy_reproduce.py (tiny preset, 2 steps, 2 seeds). Part of the toy wing (toy_*.py): it imports
toy_eval.py and runs train.py as a subprocess; no concept file imports it.
Symbols: mean +- std = mean and sample standard deviation (ddof 1) over seeds.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

import toy_eval

ROOT = os.path.dirname(os.path.abspath(__file__))
METHODS = {                                   # name -> train.py flags
    "Standard RL (GRPO)": ["--method", "grpo"],
    "RankE": ["--method", "ranke"],
    "RankE, uniform GAN": ["--method", "ranke", "--rank_mode", "uniform"],
    # DEVIATION: context noise xi = 0.1, not VA-pi's released 0.5, which collapses the 64-token toy policy (FID 785
    # vs 422 at 0.1 and 326 at 0; docs/experiments.md): 0.1 is the strongest noise at which VA-pi still works here.
    "VA-pi": ["--method", "vapi", "--vapi_xi", "0.1"],
}
PAIRS = [("RankE", "Standard RL (GRPO)"), ("RankE", "RankE, uniform GAN"), ("RankE, uniform GAN", "Standard RL (GRPO)")]
# flags every run shares: the toy preset of train.py (4 prompts x G 8, disc_start 30) otherwise; the runs are scored
# here, on more captions, so train.py's own end-of-run report is off.
COMMON = ["--report_n", "0"]
BASE_DEC = "(its policy, base decoder)"     # table row: a RankE run's final policy decoded by the frozen base VQ
LABELS = toy_eval.LABELS


def run_dir(out, method, seed):
    return os.path.join(out, method.replace(" ", "_").replace(",", "").replace("(", "").replace(")", ""), f"s{seed}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--evals", type=int, default=3, help="evaluated checkpoints per run (evenly spaced)")
    ap.add_argument("--n", type=int, default=512, help="captions per split in each evaluation")
    ap.add_argument("--out", default="runs/repro")
    ap.add_argument("--toy_cache", default=".cache/toy")
    ap.add_argument("--toy_preset", default="default", choices=("default", "tiny"), help="tiny: a seconds-fast smoke run")
    ap.add_argument("--jobs", type=int, default=2, help="training runs at once (each gets cpu_count // jobs threads)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="NAME",
                    help=f"a subset of {list(METHODS)}")
    ap.add_argument("--extra", default="", help="extra train.py flags for every run, e.g. '--lr_gpt 3e-4'")
    args = ap.parse_args()
    t_start, every = time.time(), max(1, args.steps // args.evals)
    results = {}                                             # method -> seed -> step -> row
    cache_path = os.path.join(args.out, "evals.json")
    cache = json.load(open(cache_path)) if os.path.exists(cache_path) else {}

    def evaluate(ckpt, key, decoder="online"):
        if key not in cache:
            cache[key] = toy_eval.evaluate_toy_checkpoint(ckpt, toy_cache=args.toy_cache, toy_preset=args.toy_preset,
                                                          n=args.n, seed=1234, decoder=decoder)
            os.makedirs(args.out, exist_ok=True)
            with open(cache_path + ".tmp", "w") as f:
                json.dump(cache, f, indent=1)
            os.replace(cache_path + ".tmp", cache_path)
        return cache[key]

    base = evaluate(None, "base")
    # train every (method, seed) run that is not finished yet, --jobs at a time (one thread each)
    todo = [(m, s) for s in args.seeds for m in args.methods          # seed-major: a cut-short run stays balanced
            if not os.path.exists(os.path.join(run_dir(args.out, m, s), f"ckpt_{args.steps:07d}.pt"))]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // args.jobs))}
    running = []
    while todo or running:
        while todo and len(running) < args.jobs:
            method, seed = todo.pop(0)
            d = run_dir(args.out, method, seed)
            cmd = [sys.executable, os.path.join(ROOT, "train.py"), *METHODS[method], *COMMON, "--seed", str(seed), "--steps",
                   str(args.steps), "--total_steps", str(args.steps), "--ckpt_every", str(every), "--keep_ckpts",
                   str(args.evals + 1), "--sample_every", str(args.steps), "--out_dir", d, "--toy_cache",
                   args.toy_cache, "--toy_preset", args.toy_preset, "--resume", *args.extra.split()]
            print("+", " ".join(cmd), flush=True)
            os.makedirs(d, exist_ok=True)
            running.append((subprocess.Popen(cmd, env=env, stdout=open(os.path.join(d, "train.log"), "a"),
                                             stderr=subprocess.STDOUT), d))
        time.sleep(2)
        for p, d in list(running):
            if p.poll() is not None:
                running.remove((p, d))
                if p.returncode != 0:
                    raise SystemExit(f"training run failed (exit {p.returncode}); see {d}/train.log")
    for method in args.methods:
        for seed in args.seeds:
            d = run_dir(args.out, method, seed)
            for step in range(every, args.steps + 1, every):
                ck = os.path.join(d, f"ckpt_{step:07d}.pt")
                if os.path.exists(ck):
                    results.setdefault(method, {}).setdefault(seed, {})[step] = evaluate(ck, f"{d}@{step}")
            print(method, seed, results[method][seed][args.steps], flush=True)
            if METHODS[method][1] == "ranke":   # the same final tokens through the BASE decoder: what the decoder adds
                ck = os.path.join(d, f"ckpt_{args.steps:07d}.pt")
                row = evaluate(ck, f"{d}@{args.steps}@base_decoder", decoder="base")
                results.setdefault(f"{method} {BASE_DEC}", {}).setdefault(seed, {})[args.steps] = row
    args.wall = (f"{(time.time() - t_start) / 60:.1f} min wall time for this invocation ({args.jobs} runs at a time, "
                 f"{env['OMP_NUM_THREADS']} threads each; runs and evaluations found on disk are reused)")
    write_report(args, base, results)


def mean_sd(values):
    """[mean, sample std (ddof 1; 0 for one value)] over seeds."""
    v = np.asarray(values, dtype=np.float64)
    return [float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0]


def paired_ci(d):
    """Per-seed differences -> mean, sample std, and the 95 % Student-t interval of the mean."""
    from scipy.stats import t
    v = np.asarray(d, dtype=np.float64)
    half = t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)), "lo": float(v.mean() - half),
            "hi": float(v.mean() + half)}


def write_report(args, base, results):
    lines = [f"Toy world, {args.steps} steps, seeds {args.seeds}, {args.n} captions per split; mean +- std over "
             f"seeds at the final step. Base = the toy base models (no post-training).", "",
             "| method | " + " | ".join(LABELS.values()) + " |", "|---" * (len(LABELS) + 1) + "|",
             "| Base | " + " | ".join(f"{base[k]:.3f}" for k in LABELS) + " |"]
    summary = {"base": base}
    for method, by_seed in results.items():
        finals = [by_seed[s][args.steps] for s in by_seed]
        cells = []
        for k in LABELS:
            summary.setdefault(method, {})[k] = mean_sd([f[k] for f in finals])
            cells.append("{:.3f} +- {:.3f}".format(*summary[method][k]))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    pairs = [(a, b) for a, b in PAIRS if a in results and b in results and len(results[a]) > 1]
    if pairs:    # same seed = same base models, data order and rollout seed: the difference removes shared noise
        lines += ["", "Paired differences at the final step, per seed (same seed, same data order): mean, std and "
                  "95 % t-interval over seeds.", "", "| difference | " + " | ".join(LABELS.values()) + " |",
                  "|---" * (len(LABELS) + 1) + "|"]
        for a, b in pairs:
            seeds = [s for s in results[a] if s in results[b]]
            cells = []
            for k in LABELS:
                d = [results[a][s][args.steps][k] - results[b][s][args.steps][k] for s in seeds]
                summary.setdefault(f"{a} - {b}", {})[k] = {"per_seed": d, **paired_ci(d)}
                c = summary[f"{a} - {b}"][k]
                cells.append(f"{c['mean']:+.3f} +- {c['sd']:.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}]")
            lines.append(f"| {a} - {b} (n = {len(seeds)}) | " + " | ".join(cells) + " |")
    paired = [m for m in results if f"{m} {BASE_DEC}" in results]
    if paired:   # same tokens, two decoders: a paired difference per seed removes the policy's seed noise
        lines += ["", f"What the co-evolved decoder adds: (online decoder) - (base decoder) on the same final tokens, "
                  f"mean +- std over seeds of the paired difference.", "",
                  "| method | " + " | ".join(LABELS[k] for k in LABELS if k != "lcs_kl") + " |",
                  "|---" * len(LABELS) + "|"]
        for m in paired:
            on, off = results[m], results[f"{m} {BASE_DEC}"]
            cells = []
            for k in (k for k in LABELS if k != "lcs_kl"):
                gain = summary.setdefault(f"{m}: decoder gain", {})
                gain[k] = mean_sd([on[s][args.steps][k] - off[s][args.steps][k] for s in off])
                cells.append("{:+.3f} +- {:.3f}".format(*gain[k]))
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", args.wall]
    open(os.path.join(args.out, "results.md"), "w").write("\n".join(lines) + "\n")
    json.dump({"summary": summary, "runs": results}, open(os.path.join(args.out, "results.json"), "w"), indent=1)
    print("\n".join(lines))
    import matplotlib
    matplotlib.use("Agg")                                   # files only, no display
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (k, label) in zip(axes.flat, LABELS.items()):
        for method, by_seed in results.items():
            if method.endswith(BASE_DEC):                   # final step only: no curve
                continue
            steps = sorted(next(iter(by_seed.values())))
            v = np.array([[by_seed[s][t][k] for t in steps] for s in by_seed])      # (seeds, steps)
            xs, m, sd = [0] + steps, np.r_[base[k], v.mean(0)], np.r_[0, v.std(0)]
            ax.plot(xs, m, marker="o", label=method)
            ax.fill_between(xs, m - sd, m + sd, alpha=0.2)
        ax.set_title(label)
        ax.set_xlabel("step")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "curves.png"), dpi=100)


if __name__ == "__main__":
    main()
