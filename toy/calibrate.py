"""Calibrating the toy world's RL on Standard RL alone, as pre-registered in docs/preregistration.md: stage A screens
policy learning rates over seeds at step --steps; stage B follows the chosen recipe along training to test the
paper's premise (policy-only RL raises the reward but image quality falls: docs/method.md §1, §10) and applies the
pre-registered rule that fixes the comparison's length L.

    python -m toy.calibrate                   # as pre-registered; writes runs/calib/{results.md, .json, curves.png}
    python -m toy.calibrate --lrs 1e-4 --seeds 0 1 --steps 4 --curve_seeds 0 --curve_steps 8 --every 4 --n 32 \
        --toy_preset tiny --out runs/calib_smoke          # a smoke run, under a minute (tests)

Every run is `python train.py --method grpo --lr_gpt LR --seed S ...` (checkpoints every --every steps) and every
evaluation `python -m toy.eval --ckpt ... --n N --seed 1234 --json ...` (subprocesses, --jobs at a time, one queue:
toy_reproduce.run_queue). Runs and evaluations on disk are reused, so a cut-off calibration continues where it
stopped; stage B resumes stage A's runs of the chosen recipe (train.py --resume is bit-exact since the reward's
text cache travels in the checkpoints; docs/experiments.md §6) instead of restarting them.
Criteria (docs/preregistration.md, stage A), over the seeds: held-out checker - base > 0 and eval CLIP - base > 0,
each with a 95 % t-interval that excludes 0, and the policy KL per token (train.py's policy/kl, mean of the last 20
steps) <= --kl_max. Choice: the passing recipe with the largest learning rate.
Premise (stage B): shown at step t if KID(t) - KID(base) > 2 SE (both standard errors in quadrature) in every curve
seed at t and at the next evaluated step; L = the first such t, else --curve_steps.

Tests: pytest tests/test_toy_reproduce.py (the smoke run above, on a cold toy cache). Part of the toy wing (toy/):
no concept file imports it. Symbols: seeds S, evaluated steps t, SE standard error.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

from toy.reproduce import EVAL_SEED, ROOT, eval_path, mean_sd, metrics_by_step, paired_ci, run_queue

METRICS = {"reward": "reward", "clip": "eval CLIP", "check_train": "checker train", "check_heldout": "checker held-out",
           "fid": "toy FID", "kid": "toy KID", "lcs_kl": "LCS KL", "reencode_agree": "re-encode agree.",
           "policy_kl": "policy KL/token"}


def run_dir(out, lr, seed):
    return os.path.join(out, f"lr{lr}", f"s{seed}")


def policy_kl(d, step, window=20):
    """train.py's policy/kl (1/2 (log pi - log pi_ref)^2 per token) averaged over steps (step - window, step]."""
    v = [r["policy/kl"] for t, r in metrics_by_step(d).items() if step - window < t <= step]
    if len(v) != min(window, step):
        raise SystemExit(f"{d}/metrics.jsonl has {len(v)} of the {min(window, step)} steps up to {step}: was the run "
                         f"cut? (delete the run's folder to retrain it)")
    return float(np.mean(v))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lrs", nargs="+", default=["1e-5", "3e-5"], help="policy learning rates (stage A recipes)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--steps", type=int, default=300, help="stage A: the step the recipes are judged at")
    ap.add_argument("--curve_seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--curve_steps", type=int, default=600, help="stage B: how far the chosen recipe is followed")
    ap.add_argument("--every", type=int, default=50, help="checkpoint / evaluation interval of stage B")
    ap.add_argument("--recipe", default="auto", help="stage B's learning rate: auto = the pre-registered choice")
    ap.add_argument("--kl_max", type=float, default=0.2, help="criterion 3: policy KL per token at most this")
    ap.add_argument("--n", type=int, default=1024, help="captions per split in each evaluation")
    ap.add_argument("--jobs", type=int, default=2, help="processes at once (each gets cpu_count // jobs threads)")
    ap.add_argument("--out", default="runs/calib")
    ap.add_argument("--toy_cache", default=".cache/toy")
    ap.add_argument("--toy_preset", default="default", choices=("default", "tiny"))
    args = ap.parse_args(argv)
    if args.steps % args.every or args.curve_steps % args.every or args.curve_steps < args.steps:
        ap.error("--steps and --curve_steps must be multiples of --every, with --curve_steps >= --steps")
    if len(set(args.seeds)) < 2:   # one seed has no interval: every criterion would fail without a word
        ap.error(f"--seeds {' '.join(map(str, args.seeds))}: stage A's criteria are 95 % intervals over seeds; pass "
                 "at least 2 distinct seeds")
    t_start = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // args.jobs))}
    base_json = eval_path(os.path.join(args.out, "base"), args.n)
    evaluate = [sys.executable, "-m", "toy.eval", "--n", str(args.n), "--seed", str(EVAL_SEED)]

    def evals(d, steps):
        """Evaluation jobs of the given checkpoints of run d that are not scored yet."""
        cks = [os.path.join(d, f"ckpt_{t:07d}.pt") for t in steps]
        return [("eval", [*evaluate, "--ckpt", ck, "--json", eval_path(ck, args.n)], ck + ".eval.log", None)
                for ck in cks if not os.path.exists(eval_path(ck, args.n))]

    def train(lr, seed, steps, eval_steps):
        """The training job (resumed if the run exists) followed by its evaluations, or only the evaluations."""
        d = run_dir(args.out, lr, seed)
        if os.path.exists(os.path.join(d, f"ckpt_{steps:07d}.pt")):
            return evals(d, eval_steps)
        cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--method", "grpo", "--report_n", "0", "--seed",
               str(seed), "--lr_gpt", lr, "--steps", str(steps), "--ckpt_every",
               str(args.every), "--keep_ckpts", str(args.curve_steps // args.every + 1), "--sample_every", "0",
               "--out_dir", d, "--toy_cache", args.toy_cache, "--toy_preset", args.toy_preset, "--resume"]
        return [("train", cmd, os.path.join(d, "train.log"), (d, eval_steps))]

    # stage A: every recipe x seed to --steps, scored there (seed-major: a cut-short screen stays balanced)
    queue = [] if os.path.exists(base_json) else [("eval", [*evaluate, "--toy_cache", args.toy_cache, "--toy_preset",
                                                            args.toy_preset, "--json", base_json],
                                                   os.path.join(args.out, "base.eval.log"), None)]
    queue += [j for s in args.seeds for lr in args.lrs for j in train(lr, s, args.steps, [args.steps])]
    run_queue(queue, args.jobs, env, lambda run: evals(*run))
    base = json.load(open(base_json))["online"]
    row = lambda lr, s, t: {**json.load(open(eval_path(os.path.join(run_dir(args.out, lr, s), f"ckpt_{t:07d}.pt"),  # noqa: E731
                                                       args.n)))["online"],
                            "policy_kl": policy_kl(run_dir(args.out, lr, s), t)}
    screen = {}
    for lr in args.lrs:
        rows = [row(lr, s, args.steps) for s in args.seeds]
        diff = {k: paired_ci([r[k] - base.get(k, 0.0) for r in rows]) for k in METRICS}
        kl = float(np.mean([r["policy_kl"] for r in rows]))
        crit = {"check_heldout": diff["check_heldout"]["lo"] > 0, "clip": diff["clip"]["lo"] > 0,
                "policy_kl": kl <= args.kl_max}
        screen[lr] = {"rows": rows, "diff": diff, "criteria": crit, "passes": all(crit.values())}
    passing = [lr for lr in args.lrs if screen[lr]["passes"]]
    chosen = (max(passing, key=float) if passing else None) if args.recipe == "auto" else args.recipe

    # stage B: the chosen recipe's curve seeds continued to --curve_steps, scored every --every steps
    curve, L = {}, None                     # L: the first step the premise is shown at (None: never)
    if chosen is not None:
        steps = list(range(args.every, args.curve_steps + 1, args.every))
        run_queue([j for s in args.curve_seeds for j in train(chosen, s, args.curve_steps, steps)], args.jobs, env,
                  lambda run: evals(*run))
        curve = {s: {t: row(chosen, s, t) for t in steps} for s in args.curve_seeds}
        z = {t: [(curve[s][t]["kid"] - base["kid"]) / np.hypot(curve[s][t]["kid_se"], base["kid_se"])
                 for s in args.curve_seeds] for t in steps}                                      # KID rise in SEs
        shown = [t for t, t2 in zip(steps, steps[1:]) if min(z[t]) > 2 and min(z[t2]) > 2]
        L = shown[0] if shown else None
    write_report(args, base, screen, chosen, curve, L, time.time() - t_start)


def write_report(args, base, screen, chosen, curve, L, wall):
    fmt = lambda c: f"{c['mean']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}]"  # noqa: E731
    lines = [f"# Toy RL calibration (docs/preregistration.md)", "",
             f"Standard RL (GRPO), toy preset {args.toy_preset!r} base models, train.py defaults otherwise (4 prompts x G 8, "
             f"CFG 4, beta 0.05); every checkpoint scored on "
             f"{args.n} captions per split, sampling seed {EVAL_SEED}.", "",
             f"## Stage A: recipes at step {args.steps}, seeds {args.seeds} (n = {len(args.seeds)})", "",
             "Change against the base models, per seed: mean [95 % t-interval]. Base: " +
             ", ".join(f"{METRICS[k]} {base[k]:.4f}" for k in METRICS if k in base) + ".", "",
             "| recipe | " + " | ".join(METRICS.values()) + " | criteria 1 / 2 / 3 | passes |",
             "|---" * (len(METRICS) + 3) + "|"]
    for lr, s in screen.items():
        c = s["criteria"]
        lines.append(f"| lr {lr} | " + " | ".join(fmt(s["diff"][k]) for k in METRICS) + " | " +
                     " / ".join("yes" if c[k] else "no" for k in ("check_heldout", "clip", "policy_kl")) +
                     f" | **{'yes' if s['passes'] else 'no'}** |")
    lines += ["", f"Criteria: 1 held-out checker up, 2 eval CLIP up (both: interval excludes 0), 3 policy KL per token "
              f"<= {args.kl_max} (its column is the value, not a change). Chosen recipe: "
              f"{'lr ' + chosen if chosen else 'none passes (see the fallbacks in docs/preregistration.md)'}"
              f"{'' if args.recipe == 'auto' else ' (set by --recipe)'}."]
    if curve:
        steps = sorted(next(iter(curve.values())))
        lines += ["", f"## Stage B: lr {chosen} along training, seeds {args.curve_seeds} (n = {len(args.curve_seeds)})",
                  "", "Mean +- std over seeds; last column: KID - base KID in standard errors, per seed.", "",
                  "| step | " + " | ".join(METRICS.values()) + " | KID rise (SE) |", "|---" * (len(METRICS) + 2) + "|",
                  "| 0 (base) | " + " | ".join(f"{base[k]:.4f}" if k in base else "0" for k in METRICS) + " | |"]
        for t in steps:
            z = [(curve[s][t]["kid"] - base["kid"]) / np.hypot(curve[s][t]["kid_se"], base["kid_se"]) for s in curve]
            lines.append(f"| {t} | " + " | ".join("{:.4f} +- {:.4f}".format(*mean_sd([curve[s][t][k] for s in curve]))
                                                  for k in METRICS) + " | " + ", ".join(f"{v:+.1f}" for v in z) + " |")
        lines += ["", f"Pre-registered rule: the comparison runs L = **{L or args.curve_steps}** steps (" +
                  (f"the premise is shown from step {L} on" if L else "the premise is not shown within the budget, "
                   f"so L = the budget's end") + ")."]
    lines += ["", f"{wall / 60:.1f} min wall time for this invocation ({args.jobs} processes at a time; runs and "
              f"evaluations found on disk are reused)."]
    os.makedirs(args.out, exist_ok=True)
    open(os.path.join(args.out, "results.md"), "w").write("\n".join(lines) + "\n")
    json.dump({"base": base, "screen": screen, "chosen": chosen, "L": L or args.curve_steps, "premise_shown_at": L,
               "curve": {s: {t: r for t, r in c.items()} for s, c in curve.items()}},
              open(os.path.join(args.out, "results.json"), "w"), indent=1)
    print("\n".join(lines))
    if curve:
        import matplotlib
        matplotlib.use("Agg")                                   # files only, no display
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(2, 5, figsize=(20, 7))
        steps = sorted(next(iter(curve.values())))
        for ax, (k, label) in zip(axes.flat, METRICS.items()):
            v = np.array([[curve[s][t][k] for t in steps] for s in curve])                      # (seeds, steps)
            for i, s in enumerate(curve):
                ax.plot([0] + steps, np.r_[base.get(k, 0.0), v[i]], alpha=0.35, lw=1)
            ax.plot([0] + steps, np.r_[base.get(k, 0.0), v.mean(0)], "k-o", ms=3, label="mean over seeds")
            ax.axvline(L or args.curve_steps, ls="--", c="gray")
            ax.set_title(label)
            ax.set_xlabel("step")
        axes.flat[-1].axis("off")
        axes.flat[0].legend(fontsize=8)
        fig.suptitle(f"Standard RL, lr {chosen}, seeds {args.curve_seeds}; dashed: comparison length L = {L or args.curve_steps}")
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "curves.png"), dpi=90)


if __name__ == "__main__":
    main(sys.argv[1:])
