"""The paper's comparison (docs/method.md §1: the paper's tables and its uniform-GAN ablation) reproduced on the
toy world, as pre-registered in docs/preregistration.md: Base, Standard RL (GRPO, frozen decoder), RankE, RankE with a
uniform (not reward-ranked) GAN, VA-pi, and the two-stage control (Standard RL, then as many decoder-only steps on the
final policy's rollouts with RankE's decoder losses), several seeds each, from the same base models.

    python -m toy.reproduce                       # the pre-registered comparison: lr 1e-5, L = 600 steps (docs/
                                                  # calibration), 8 seeds (5 for uniform GAN, VA-pi), n 1,024 per split;
                                                  # writes runs/repro/{results.md, results.json, curves.png}
    python -m toy.reproduce --seeds 0 --few_seeds 0 --steps 40 --n 256   # a quick look

Every run is `python train.py --seed S ...` and every evaluation `python -m toy.eval --ckpt ... --json ...`
(subprocesses, so each is exactly what a user would run), --jobs of them at a time from one queue: a finished run's
evaluations start while the other runs train; a finished Standard RL run starts the two-stage arm's second stage
(`train.py --method decoder --init_policy <its final checkpoint>`). Runs and evaluations already on disk (the rows are
kept beside each checkpoint as ckpt_NNNNNNN.pt.eval-n<n>-s1234.json) are reused, so an interrupted reproduction
continues where it stopped. Each checkpoint is scored on the same captions with the same sampling seed: training
reward, eval-CLIP (an independent CLIP), attribute-checker accuracy on train and held-out combinations, toy FID and
KID, the LCS KL and the decode -> re-encode agreement. The table reports mean +- std over seeds at the final step and
paired differences (same seed) with 95 % intervals; curves.png shows the evaluated checkpoints and, for every training
step, the training reward and the policy KL. For the arms that train the decoder the final tokens are also decoded by
the frozen BASE decoder (one sampling pass, two decoders): the difference between the two rows is what the trained
decoder contributes.

Tests: pytest tests/test_toy_reproduce.py (tiny preset, 2 steps, 2 seeds). Part of the toy wing (toy/): it imports
toy/eval.py and runs train.py as a subprocess; no concept file imports it.
Symbols: mean +- std = mean and sample standard deviation (ddof 1) over seeds.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

import ckpt
from toy import eval as toy_eval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the repository root
METHODS = {                                   # name -> train.py flags
    "Standard RL (GRPO)": ["--method", "grpo"],
    "RankE": ["--method", "ranke"],
    "RankE, uniform GAN": ["--method", "ranke", "--rank_mode", "uniform"],
    # DEVIATION: context noise xi = 0.1, not VA-pi's released 0.5, which collapses the 64-token toy policy (FID 785
    # vs 422 at 0.1 and 326 at 0; docs/experiments.md): 0.1 is the strongest noise at which VA-pi still works here.
    "VA-pi": ["--method", "vapi", "--vapi_xi", "0.1"],
    # the reviewers' control: Standard RL, then as many decoder-only steps (RankE's decoder losses and settings) on
    # the final policy's rollouts. Stage 1 IS the Standard RL run of the same seed; stage 2 starts from its checkpoint.
    "Two-stage (RL, then decoder)": ["--method", "decoder"],
}
TWO_STAGE, RL = "Two-stage (RL, then decoder)", "Standard RL (GRPO)"
FEW_SEEDS = ("RankE, uniform GAN", "VA-pi")           # arms run on --few_seeds only (docs/preregistration.md)
PAIRS = [("RankE", RL), ("RankE", TWO_STAGE), ("RankE", "RankE, uniform GAN"), ("RankE, uniform GAN", RL),
         ("RankE", "VA-pi"), ("VA-pi", RL), (TWO_STAGE, RL)]
# flags every run shares: the toy preset of train.py (4 prompts x G 8, disc_start 30) otherwise; the runs are scored
# here, on more captions, so train.py's own end-of-run report is off.
COMMON = ["--report_n", "0", "--sample_every", "0"]
BASE_DEC = "(its policy, base decoder)"     # table row: a RankE run's final policy decoded by the frozen base VQ
LABELS = toy_eval.LABELS
TRAIN_CURVES = {"reward/mean": "reward (toy CLIP x100)", "policy/kl": "policy KL to the reference"}
EVAL_SEED = 1234                            # every checkpoint is sampled with this seed: same captions, same stream


def run_dir(out, method, seed):
    return os.path.join(out, method.replace(" ", "_").replace(",", "").replace("(", "").replace(")", ""), f"s{seed}")


def eval_path(ckpt, n, seed=EVAL_SEED):
    """Where a checkpoint's evaluation rows ({decoder: row}, toy/eval.py --json) are kept: beside it."""
    return f"{ckpt}.eval-n{n}-s{seed}.json"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(8)), help="seeds of every arm")
    ap.add_argument("--few_seeds", type=int, nargs="+", default=list(range(5)),
                    help=f"seeds of the arms {list(FEW_SEEDS)} (a subset of --seeds)")
    ap.add_argument("--lr_gpt", default="1e-5", help="the policy learning rate X of every arm (the calibrated one, "
                    "docs/calibration); the decoder and the "
                    "discriminator get 10 X and 20 X, the released ratios (docs/method.md D15)")
    ap.add_argument("--steps", type=int, default=600, help="L, fixed by the pre-registered rule on the calibration "
                                                            "curve (docs/calibration)")
    ap.add_argument("--evals", type=int, default=1, help="evaluated checkpoints per run (evenly spaced; the last is "
                                                         "the final step); the training curves come from every step")
    ap.add_argument("--n", type=int, default=1024, help="captions per split in each evaluation")
    ap.add_argument("--out", default="runs/repro")
    ap.add_argument("--toy_cache", default=".cache/toy")
    ap.add_argument("--toy_preset", default="default", choices=("default", "tiny"), help="tiny: a seconds-fast smoke run")
    ap.add_argument("--jobs", type=int, default=2, help="processes at once, training runs and evaluations alike "
                                                        "(each gets cpu_count // jobs threads unless --threads)")
    ap.add_argument("--threads", type=int, default=0, help="threads per process (0: cpu_count // jobs); the "
                                                           "pre-registered runs used 1, and floats depend on it")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="NAME",
                    help=f"a subset of {list(METHODS)}")
    ap.add_argument("--extra", default="", help="extra train.py flags for every run (each must act in every arm: "
                                                "train.py refuses a flag that does nothing), e.g. '--beta_kl 0.1'")
    args = ap.parse_args()
    if min(args.jobs, args.evals, args.steps) < 1 or args.threads < 0:
        ap.error("--jobs, --evals and --steps must be >= 1, --threads >= 0")
    if args.steps % args.evals:
        ap.error(f"--evals {args.evals} must divide --steps {args.steps}: the evaluated steps are evenly spaced and "
                 f"end at the last")
    sampling = {"--cfg_scale", "--temperature", "--top_k", "--top_p"} & {f.split("=")[0] for f in args.extra.split()}
    if sampling:     # the base row (toy.eval on the base models) samples with the default settings
        ap.error(f"--extra {' '.join(sorted(sampling))}: the runs would sample otherwise than the base row they are "
                 f"compared with; not supported here (score such runs with python -m toy.eval)")
    if set(FEW_SEEDS) & set(args.methods) and not set(args.few_seeds) <= set(args.seeds):
        ap.error(f"--few_seeds {args.few_seeds}: each must be one of --seeds {args.seeds}")
    t_start, every = time.time(), max(1, args.steps // args.evals)
    os.makedirs(args.out, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads or max(1, (os.cpu_count() or 2) // args.jobs))}
    evaluate = [sys.executable, "-m", "toy.eval", "--n", str(args.n), "--seed", str(EVAL_SEED)]
    base_json = eval_path(os.path.join(args.out, "base"), args.n)

    def eval_jobs(d, method):
        """The evaluations of one finished run: every kept checkpoint; the final one of a RankE run also through
        the frozen BASE decoder (same tokens, one sampling pass): what the co-evolved decoder adds."""
        jobs = []
        for step in range(every, args.steps + 1, every):
            ck = os.path.join(d, f"ckpt_{step:07d}.pt")
            decoders = ["online"] + (["base"] if METHODS[method][1] in ("ranke", "decoder") and step == args.steps
                                     else [])
            if not os.path.exists(eval_path(ck, args.n)):
                jobs.append(("eval", [*evaluate, "--ckpt", ck, "--decoder", *decoders, "--json", eval_path(ck, args.n)],
                             ck + ".eval.log", None))
        return jobs

    # one queue of jobs, --jobs processes at a time (one thread each on 2 cores): the base-model evaluation, then
    # every (method, seed) training run, seed-major (a cut-short reproduction stays balanced); a finished run's
    # evaluations go to the front of the queue, so evaluation overlaps training instead of following it
    queue = [] if os.path.exists(base_json) else [("eval", [*evaluate, "--toy_cache", args.toy_cache, "--toy_preset",
                                                            args.toy_preset, "--json", base_json],
                                                   os.path.join(args.out, "base.eval.log"), None)]
    def lr_flags(method):
        """--lr_gpt X as the policy's learning rate, 10 X / 20 X for decoder and discriminator (D15's ratios), each
        only where the run trains that part (train.py refuses a flag that does nothing in a run)."""
        if not args.lr_gpt:
            return []
        x, kind = float(args.lr_gpt), METHODS[method][1]
        return ([] if kind == "decoder" else ["--lr_gpt", f"{x:g}"]) + \
            (["--lr_decoder", f"{10 * x:g}", "--lr_disc", f"{20 * x:g}"] if kind in ("ranke", "decoder") else [])

    seeds_of = {m: [s for s in args.seeds if m not in FEW_SEEDS or s in args.few_seeds] for m in args.methods}
    # an unfinished two-stage run continues only from the Standard RL policy it started from (train.py refuses
    # another --init_policy on resume): find a changed one (e.g. a longer --steps) now, before any job starts
    for seed in seeds_of.get(TWO_STAGE, []):
        d = run_dir(args.out, TWO_STAGE, seed)
        have = ckpt.list_ckpts(d)
        if have and not os.path.exists(os.path.join(d, f"ckpt_{args.steps:07d}.pt")):
            was = toy_eval.read_train_ckpt(have[-1])["config"]["init_policy"]
            now = os.path.join(run_dir(args.out, RL, seed), f"ckpt_{args.steps:07d}.pt")
            if os.path.realpath(was) != os.path.realpath(now):
                raise SystemExit(f"{d} was started from {was}; with --steps {args.steps} its policy would be {now}. "
                                 f"Move {d} away to run the two-stage arm again from that policy")

    def train_job(method, seed):
        """A run's training job, or its missing evaluations if it is trained. The two-stage arm's second stage
        starts from the final checkpoint of the Standard RL run of the same seed (None: that run is not done)."""
        d = run_dir(args.out, method, seed)
        if os.path.exists(os.path.join(d, f"ckpt_{args.steps:07d}.pt")):
            return eval_jobs(d, method)                          # trained before: only what is not scored yet
        init = []
        if method == TWO_STAGE:
            rl = os.path.join(run_dir(args.out, RL, seed), f"ckpt_{args.steps:07d}.pt")
            if not os.path.exists(rl):
                return None
            init = ["--init_policy", rl]
        # a run cut off resumes from its newest checkpoint: with one evaluation per run a checkpoint every 50 steps
        # (the newest two kept), else one per evaluated step (all kept until scored)
        save, keep = (math.gcd(args.steps, 50), 2) if args.evals == 1 else (every, args.evals + 1)
        return [("train", [sys.executable, os.path.join(ROOT, "train.py"), *METHODS[method], *init, *COMMON,
                           *lr_flags(method), "--seed", str(seed), "--steps", str(args.steps), "--ckpt_every",
                           str(save), "--keep_ckpts", str(keep), "--out_dir", d, "--toy_cache",
                           args.toy_cache, "--toy_preset", args.toy_preset, "--resume", *args.extra.split()],
                 os.path.join(d, "train.log"), (d, method, seed))]

    def follow_up(run):
        """After a training run: its evaluations, and after a Standard RL run the two-stage arm's second stage."""
        d, method, seed = run
        after = train_job(TWO_STAGE, seed) if method == RL and TWO_STAGE in args.methods else []
        return eval_jobs(d, method) + after

    if TWO_STAGE in args.methods and RL not in args.methods:
        ap.error(f"{TWO_STAGE!r} needs {RL!r} in --methods: its first stage is that run")
    for seed in args.seeds:
        for method in (m for m in args.methods if seed in seeds_of[m]):
            queue += train_job(method, seed) or []               # None: a two-stage run waits for its RL run
    ran = run_queue(queue, args.jobs, env, follow_up)
    base = json.load(open(base_json))["online"]
    results = {}                                             # method -> seed -> step -> row
    for method in args.methods:
        for seed in seeds_of[method]:
            d = run_dir(args.out, method, seed)
            for step in range(every, args.steps + 1, every):
                rows = json.load(open(eval_path(os.path.join(d, f"ckpt_{step:07d}.pt"), args.n)))
                results.setdefault(method, {}).setdefault(seed, {})[step] = rows["online"]
                if "base" in rows:                           # the same final tokens through the BASE decoder
                    results.setdefault(f"{method} {BASE_DEC}", {}).setdefault(seed, {})[step] = rows["base"]
            print(method, seed, results[method][seed][args.steps], flush=True)
    args.wall = (f"This invocation ran {ran} jobs (training runs and evaluations; those found on disk are reused) in "
                 f"{(time.time() - t_start) / 60:.1f} min wall time, {args.jobs} processes at a time, "
                 f"{env['OMP_NUM_THREADS']} threads each.")
    write_report(args, base, results)


def run_queue(queue, jobs, env, follow_up):
    """Run a queue of (kind, argv, log file, run) jobs as subprocesses, `jobs` at a time, each writing to its log.
    When a job with a run (not None) finishes, follow_up(run) -> list of jobs goes to the FRONT of the queue (a
    finished training run's evaluations start next). A failing job stops everything, naming its log. -> jobs run."""
    running, started = [], 0
    try:
        while queue or running:
            while queue and len(running) < jobs:
                kind, cmd, log, run = queue.pop(0)
                print("+", " ".join(cmd), flush=True)
                os.makedirs(os.path.dirname(log), exist_ok=True)
                with open(log, "a") as f:                          # the child keeps its own copy of the handle
                    running.append((subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT), log, run))
                started += 1
            time.sleep(1)
            for job in list(running):
                p, log, run = job
                if p.poll() is None:
                    continue
                running.remove(job)
                if p.returncode != 0:
                    raise SystemExit(f"{' '.join(p.args[1:3])}... failed (exit {p.returncode}); see {log}")
                if run:
                    queue[:0] = follow_up(run)
    finally:   # on a failure (or Ctrl-C) no job outlives the queue: a rerun must not find a second writer in a folder
        for p, _, _ in running:
            p.terminate()
        for p, _, _ in running:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return started


def metrics_by_step(run_dir_path, steps=None):
    """A run's metrics.jsonl as {step: line}. A step logged twice (by a resume before runtime.Logger cut the log back
    to the resumed step) keeps its last line, the continuation's. With steps: every step 1..steps must be there."""
    path = os.path.join(run_dir_path, "metrics.jsonl")
    with open(path) as f:
        rows = {}
        for line in f:
            try:                                  # a line cut mid-write by a kill holds no record: skipped
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[r["step"]] = r
    missing = [t for t in range(1, (steps or 0) + 1) if t not in rows]
    if missing:
        raise SystemExit(f"{path} lacks steps {missing[:5]}{' ...' if len(missing) > 5 else ''} of 1..{steps}: the "
                         f"run's log is incomplete; retrain it (move its folder away) to get its curves")
    return rows


def running_mean(x, w=20):
    """Mean of the last w values at each step (fewer at the start): (steps,) -> (steps,)."""
    c = np.cumsum(np.r_[0.0, np.asarray(x, np.float64)])
    i = np.arange(1, len(x) + 1)
    return (c[i] - c[np.maximum(i - w, 0)]) / np.minimum(i, w)


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
    few = [m for m in results if m in FEW_SEEDS]
    lines = [f"Toy world, {args.steps} steps, seeds {args.seeds}" + (f" ({', '.join(few)}: seeds {args.few_seeds})"
                                                                      if few else "") +
             f", {args.n} captions per split, train.py flags {args.extra.split() or 'as train.py'}; mean +- std over "
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
        lines.append(f"| {method} (n = {len(finals)}) | " + " | ".join(cells) + " |")
    # a paired difference needs > 1 seed that BOTH arms ran (one seed has no sd / interval: --few_seeds 0)
    pairs = [(a, b) for a, b in PAIRS if a in results and b in results
             and sum(s in results[b] for s in results[a]) > 1]
    if pairs:    # same seed = same base models, data order and rollout seed: the difference removes shared noise
        lines += ["", "Paired differences at the final step, per seed (same seed, same data order): mean, std and "
                  "95 % t-interval over seeds, and in how many seeds the difference is > 0.", "",
                  "| difference | " + " | ".join(LABELS.values()) + " |",
                  "|---" * (len(LABELS) + 1) + "|"]
        for a, b in pairs:
            seeds = [s for s in results[a] if s in results[b]]
            cells = []
            for k in LABELS:
                d = [results[a][s][args.steps][k] - results[b][s][args.steps][k] for s in seeds]
                summary.setdefault(f"{a} - {b}", {})[k] = {"per_seed": d, **paired_ci(d)}
                c = summary[f"{a} - {b}"][k]
                cells.append(f"{c['mean']:+.3f} +- {c['sd']:.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}] "
                             f"({sum(x > 0 for x in d)}/{len(d)} > 0)")
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
    # the shift beyond token histograms (docs/method.md: shift.reencode_agreement): how faithfully the decoder that
    # renders a policy's tokens maps them to images whose re-encoding gives the same tokens, against real images'
    # tokens through the same decoder; KID with its own standard error (jackknife, per run, averaged); the policy's
    # KL to the reference at the end of training (metrics.jsonl, mean of the last 20 steps)
    shift_keys = ("reencode_agree", "real_reencode_agree", "reencode_cycle_l1", "real_reencode_cycle_l1", "kid",
                  "kid_se")
    lines += ["", "Shift beyond token histograms, final step: decode -> re-encode token agreement and cycle L1 of the "
              "policy's tokens, and of real images' tokens through the same decoder; KID with its standard error; the "
              "policy's KL to the reference per token (training, last 20 steps). Mean +- std over seeds.", "",
              "| method | agreement, policy | agreement, real | cycle L1, policy | cycle L1, real | KID | KID SE | "
              "policy KL |", "|---" * 8 + "|",
              "| Base | " + " | ".join(f"{base[k]:.4f}" for k in shift_keys) + " | 0 |"]
    for method, by_seed in results.items():
        cells = ["{:.4f} +- {:.4f}".format(*mean_sd([by_seed[s][args.steps][k] for s in by_seed])) for k in shift_keys]
        kl = "-"
        if not method.endswith(BASE_DEC) and METHODS[method][1] in ("ranke", "grpo"):
            logs = [metrics_by_step(run_dir(args.out, method, s), args.steps) for s in by_seed]
            last = [np.mean([m[t]["policy/kl"] for t in range(max(1, args.steps - 19), args.steps + 1)]) for m in logs]
            summary.setdefault(method, {})["policy_kl_last20"] = mean_sd(last)
            kl = "{:.3f} +- {:.3f}".format(*summary[method]["policy_kl_last20"])
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {kl} |")
    lines += ["", args.wall]
    open(os.path.join(args.out, "results.md"), "w").write("\n".join(lines) + "\n")
    json.dump({"summary": summary, "runs": results}, open(os.path.join(args.out, "results.json"), "w"), indent=1)
    print("\n".join(lines))
    import matplotlib
    matplotlib.use("Agg")                                   # files only, no display
    import matplotlib.pyplot as plt
    rows = -(-(len(LABELS) + len(TRAIN_CURVES)) // 4)                    # every panel below, 4 per row
    fig, axes = plt.subplots(rows, 4, figsize=(17, 3.5 * rows))
    for ax in axes.flat[len(LABELS) + len(TRAIN_CURVES):]:
        ax.axis("off")
    for ax, (k, label) in zip(axes.flat, LABELS.items()):     # evaluated checkpoints: mean +- std over seeds
        for method, by_seed in results.items():
            if method.endswith(BASE_DEC):                   # final step only: no curve
                continue
            steps = sorted(next(iter(by_seed.values())))
            v = np.array([[by_seed[s][t][k] for t in steps] for s in by_seed])      # (seeds, steps)
            sd = v.std(0, ddof=1) if len(v) > 1 else np.zeros(v.shape[1])          # as the tables' mean_sd
            xs, m, sd = [0] + steps, np.r_[base[k], v.mean(0)], np.r_[0, sd]
            ax.plot(xs, m, marker="o", label=method)
            ax.fill_between(xs, m - sd, m + sd, alpha=0.2)
        ax.set_title(label)
        ax.set_xlabel("step")
    # every training step (metrics.jsonl), running mean over 20 steps, mean +- std over seeds; VA-pi's reward is its
    # reconstruction reward (another scale) and it has no KL term, so it is left out of these two panels
    for ax, (k, label) in zip(axes.flat[len(LABELS):], TRAIN_CURVES.items()):
        for method in (m for m in results if not m.endswith(BASE_DEC) and METHODS[m][1] in ("ranke", "grpo")):
            logs = [metrics_by_step(run_dir(args.out, method, s), args.steps) for s in results[method]]
            v = np.array([running_mean([m[t][k] for t in range(1, args.steps + 1)]) for m in logs])   # (seeds, steps)
            sd = v.std(0, ddof=1) if len(v) > 1 else np.zeros(v.shape[1])          # as the tables' mean_sd
            m, xs = v.mean(0), np.arange(1, v.shape[1] + 1)
            ax.plot(xs, m, label=method)
            ax.fill_between(xs, m - sd, m + sd, alpha=0.2)
        ax.set_title(label + " (training)")
        ax.set_xlabel("step")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "curves.png"), dpi=100)


if __name__ == "__main__":
    main()
