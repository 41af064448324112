"""The seed spread of the first run: `python train.py` (the toy default) run with several seeds, and how much each
row of its answer table moves between them. One run's change against the base models is one draw; the answer table
(toy/report.py) prints, beside each change, the spread measured here for the same recipe, so a reader sees which
changes are beyond seed noise, and whether the headline signs (reward up, held-out checker up, KID down) hold in
every seed (docs/preregistration.md, amendment 2).

    python -m toy.first_run                # seeds 0-7 of the toy default, one 1-thread process at a time; writes
                                           # runs/first_run/results.md and toy/assets/first_run_spread.json
    python -m toy.first_run --jobs 2       # two at a time on a 2-core machine (one thread each)
    python -m toy.first_run --rescore 101 202   # also re-score base and finals at other eval seeds: how much of
                                           # the spread is evaluation noise, how much is the training seed
    python -m toy.first_run --threads 2 --out runs/here --spread_out runs/here/spread.json --compare OTHER
                                           # the same seeds' runs from another machine (OTHER/sS/answer.json): what
                                           # a change of CPU moves; --spread_out keeps the shipped spread as it is

Every run is the plain `python train.py --seed S --out_dir OUT/sS` (a subprocess: exactly what a user runs); its
answer.json holds the base and final rows on the same captions with the same sampling seed. Runs whose answer.json is
on disk are reused, so a cut-off study continues where it stopped. The spread file records the recipe (the runs'
config without the fields in toy/report.py's NOT_RECIPE), the seeds, n, threads, the machine and the commit; the
answer table shows it only for a run of the same recipe at the same n.

Tests: pytest tests/test_toy_first_run.py (tiny preset, 2 steps, 2 seeds). Part of the toy wing (toy/).
Symbols: S seeds; E eval seeds (sampling seed + captions of the answer table; train.py's is 0); change = final row -
base row of one run; mean, sd (ddof 1) and 95 % t-interval over seeds.
"""
import argparse
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
import torch

from toy import eval as toy_eval
from toy import report as toy_report
from toy.reproduce import ROOT, paired_ci, run_queue


def cpu_name():
    """The CPU model (Linux /proc/cpuinfo), else platform.processor(): where the spread was measured."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def summarize(answers):
    """{seed: answer.json} -> (recipe, n, {row: [change per seed]}, {row: mean / sd / lo / hi / pos}). All runs must
    share one recipe and n: a mixed set has no single spread."""
    seeds = sorted(answers)
    recipes = {s: toy_report.recipe(answers[s]["config"]) for s in seeds}
    for s in seeds:
        differ = sorted(k for k in recipes[s] if recipes[s][k] != recipes[seeds[0]].get(k))
        if differ or answers[s]["n"] != answers[seeds[0]]["n"]:
            raise SystemExit(f"seed {s}'s run differs from seed {seeds[0]}'s in {differ or ['report n']}: a spread "
                             f"needs one recipe; remove the stale run folder or pass the same --extra flags")
    threads = {answers[s].get("train_threads") for s in seeds}    # floats depend on it: one spread, one count
    if len(threads) != 1:
        raise SystemExit(f"the runs used different torch thread counts {sorted(map(str, threads))}: a spread needs "
                         f"one; remove the runs of the other count (or pass --out to a fresh folder)")
    changes = {k: [answers[s]["final"][k] - answers[s]["base"][k] for s in seeds] for k in toy_report.ROWS}
    summary = {k: {**paired_ci(d), "pos": sum(x > 0 for x in d)} for k, d in changes.items()}
    return recipes[seeds[0]], answers[seeds[0]]["n"], changes, summary


def better_count(changes):
    """{row: [change per seed]} -> {headline row: seeds whose change is in the better direction} (0 is not)."""
    return {k: sum(d > 0 if toy_report.HIGHER_IS_BETTER[k] else d < 0 for d in changes[k]) for k in toy_report.HEADLINE}


def compare_machines(here, other):
    """{seed: answer.json} of the same seeds and recipe on two machines -> {row: per-seed changes here and there,
    their difference (there - here) with mean / sd / 95 % interval, seeds > 0 on each}, and how many base / final
    numbers are exactly equal on both (bit-identical runs would give all of them). Also per row: the seed sd on each
    machine and the correlation of the per-seed changes across the machines (nan if one side does not vary)."""
    seeds = sorted(here)
    if sorted(other) != seeds:
        raise SystemExit(f"--compare: the other machine has seeds {sorted(other)}, this one {seeds}; name the same")
    a = summarize(here)[2]            # (the recipe check needs the checkpoints, which stay on the other machine)
    if any((other[s]["n"], other[s]["final"]["step"]) != (here[s]["n"], here[s]["final"]["step"]) for s in seeds):
        raise SystemExit("--compare: the two machines' runs differ in n or steps; compare the same command's runs")
    b = {k: [other[s]["final"][k] - other[s]["base"][k] for s in seeds] for k in toy_report.ROWS}
    rows = {k: {"here": a[k], "other": b[k], "diff": paired_ci(np.subtract(b[k], a[k])),
                "sd": [float(np.std(a[k], ddof=1)), float(np.std(b[k], ddof=1))],
                "corr": float(np.corrcoef(a[k], b[k])[0, 1]) if np.std(a[k]) * np.std(b[k]) > 0 else float("nan"),
                "pos": [sum(x > 0 for x in a[k]), sum(x > 0 for x in b[k])]} for k in toy_report.ROWS}
    same = sum(here[s][part][k] == other[s][part][k] for s in seeds for part in ("base", "final")
               for k in toy_report.ROWS)
    return rows, same, 2 * len(seeds) * len(toy_report.ROWS)


def noise_split(d):
    """{seed: [change at eval seed 1..E]} (E >= 2, the same eval seeds for every seed) -> where a change's spread over
    seeds comes from. The eval seeds are crossed with the training seeds (at one eval seed every run is scored on the
    same captions and sampling stream, against the same base row), so the model is two-way, without replication:
    change[s, e] = mean + seed_s + shared_e + run_se (docs/first_run, "Where the spread comes from"). Returned:
    seed_sd (between training seeds), shared_sd (the eval draw every seed shares at one eval seed), run_sd (one
    checkpoint's own eval noise, the residual); variance components from the mean squares, negative ones set to 0;
    mean over everything; pos[e] = seeds whose change is > 0 at eval seed e."""
    v = np.asarray([d[s] for s in sorted(d)], dtype=np.float64)                          # (S, E)
    if v.ndim != 2 or v.shape[0] < 2 or v.shape[1] < 2:
        raise ValueError(f"noise_split needs >= 2 seeds x >= 2 eval seeds, got shape {v.shape}")
    S, E = v.shape
    rows, cols, grand = v.mean(axis=1), v.mean(axis=0), v.mean()
    ms_res = float(((v - rows[:, None] - cols[None, :] + grand) ** 2).sum()) / ((S - 1) * (E - 1))
    seed_var = (E * float(rows.var(ddof=1)) - ms_res) / E       # E[MS_seeds] = E * seed_var + run_var
    shared_var = (S * float(cols.var(ddof=1)) - ms_res) / S     # E[MS_eval] = S * shared_var + run_var
    return {"mean": float(grand), "seed_sd": max(seed_var, 0.0) ** 0.5, "shared_sd": max(shared_var, 0.0) ** 0.5,
            "run_sd": ms_res ** 0.5, "pos": [int(x) for x in (v > 0).sum(axis=0)]}


def p_all_better(c, seeds, higher=True, eval_scale=1.0):
    """P(all `seeds` runs' changes lie in the better direction) under the normal model of noise_split's components
    c, with the evaluation variances (shared and per run) times eval_scale (n0 / n for n captions instead of n0; 0 =
    a perfect instrument). The shared draw moves every seed together, so it is integrated out (on a grid of 16,001
    points over +-8 sd): P = E_b[Phi(+-(mean + b) / sqrt(seed_var + run_var))^seeds], b ~ N(0, shared_var)."""
    from scipy.stats import norm
    sign = 1.0 if higher else -1.0
    sd_one = (c["seed_sd"] ** 2 + eval_scale * c["run_sd"] ** 2) ** 0.5       # one run's own spread given b
    sd_b = eval_scale ** 0.5 * c["shared_sd"]
    if sd_one == 0:                                                          # every seed moves with b alone
        return float(norm.cdf(sign * c["mean"] / sd_b)) if sd_b > 0 else float(sign * c["mean"] > 0)
    z = np.linspace(-8.0, 8.0, 16001)                                        # b = z * sd_b
    w = norm.pdf(z)
    p_one = norm.cdf(sign * (c["mean"] + z * sd_b) / sd_one)
    return float((w * p_one ** seeds).sum() / w.sum())


def rescore(out, seeds, answers, eval_seeds, threads):
    """Base and final rows of every run at each eval seed in eval_seeds (n, sampling and detail as the answer table;
    train.py's own eval seed 0 comes from answer.json). Rows are cached beside the runs, so a cut-off call continues;
    a cached row is reused only if it was scored from the same checkpoint file (sha256), recipe, n and eval seed.
    Returns {headline row: {seed: [change per eval seed]}}, eval seed 0 first."""
    torch.set_num_threads(threads)
    conf, n = answers[seeds[0]]["config"], answers[seeds[0]]["n"]
    rows = {}                                                               # (who, eval seed) -> row
    os.makedirs(os.path.join(out, "rescore"), exist_ok=True)
    ckpts = {s: os.path.join(out, f"s{s}", f"ckpt_{answers[s]['final']['step']:07d}.pt") for s in seeds}
    sha = {s: file_sha256(ckpts[s]) for s in seeds}
    for e in eval_seeds:
        for who in ["base", *seeds]:
            path = os.path.join(out, "rescore", f"{who if who == 'base' else f's{who}'}-e{e}-n{n}.json")
            key = {"ckpt_sha256": None if who == "base" else sha[who], "recipe": toy_report.recipe(conf), "n": n,
                   "eval_seed": e}
            cached = None
            if os.path.exists(path):
                with open(path) as f:
                    cached = json.load(f)
            if not cached or cached.get("key") != json.loads(json.dumps(key)):      # missing or stale: score again
                row = toy_eval.evaluate_toy_checkpoint(None if who == "base" else ckpts[who],
                                                       toy_cache=conf["toy_cache"], toy_preset=conf["toy_preset"],
                                                       n=n, seed=e, sampling=conf, detail=False)
                cached = {"key": key, "row": row}
                toy_report.write_text(path, json.dumps(cached, indent=1) + "\n")
            rows[who, e] = cached["row"]
    return {k: {s: [answers[s]["final"][k] - answers[s]["base"][k]] +
                   [rows[s, e][k] - rows["base", e][k] for e in eval_seeds] for s in seeds}
            for k in toy_report.HEADLINE}


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_other(folder, seeds):
    """--compare's input: {seed: answer.json} of the same seeds' runs from another machine."""
    other = {}
    for s in seeds:
        path = os.path.join(folder, f"s{s}", "answer.json")
        if not os.path.exists(path):
            raise SystemExit(f"--compare: {path} is missing; copy the other machine's run folders (sS/answer.json "
                             f"for every seed in --seeds) into {folder}")
        with open(path) as f:
            other[s] = json.load(f)
    return other


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    ap.add_argument("--out", default="runs/first_run")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (floats depend on it)")
    ap.add_argument("--extra", default="", help="extra train.py flags for every run (tests: a tiny, short recipe)")
    ap.add_argument("--spread_out", default=toy_report.SPREAD_FILE, help="where the spread file goes")
    ap.add_argument("--rescore", type=int, nargs="*", default=[], metavar="E",
                    help="also score base and finals at these eval seeds (train.py's is 0) and split each headline's "
                         "spread into evaluation noise and training-seed spread")
    ap.add_argument("--compare", default=None, metavar="OTHER",
                    help="a folder of the same seeds' runs from another machine (OTHER/sS/answer.json): add a table of "
                         "what the change of machine moves")
    args = ap.parse_args(argv)
    if 0 in args.rescore or len(set(args.rescore)) != len(args.rescore):
        ap.error("--rescore: name each eval seed once, and not 0 (the answer table's own)")
    if {"--seed", "--out_dir"} & {f.split("=")[0] for f in args.extra.split()}:
        ap.error("--extra: --seed and --out_dir are set per run from --seeds and --out; drop them from --extra")
    if len(set(args.seeds)) < 2 or len(set(args.seeds)) != len(args.seeds):
        ap.error("--seeds: a spread needs at least 2 seeds, each named once")
    args.seeds = sorted(args.seeds)   # the order of summarize()'s columns, so that every label names its own run
    t0, env = time.time(), {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    answer = {s: os.path.join(args.out, f"s{s}", "answer.json") for s in args.seeds}
    queue = [("train", [sys.executable, os.path.join(ROOT, "train.py"), "--seed", str(s), "--out_dir",
                        os.path.join(args.out, f"s{s}"), *args.extra.split()], os.path.join(args.out, f"s{s}.log"),
              None) for s in args.seeds if not os.path.exists(answer[s])]
    ran = run_queue(queue, args.jobs, env, follow_up=lambda run: [])
    answers = {}
    for s in args.seeds:
        with open(answer[s]) as f:
            answers[s] = json.load(f)
        ck = toy_eval.read_train_ckpt(os.path.join(args.out, f"s{s}", f"ckpt_{answers[s]['final']['step']:07d}.pt"))
        if ck["config"]["seed"] != s:
            raise SystemExit(f"{args.out}/s{s} holds a run of --seed {ck['config']['seed']}; remove that folder")
        answers[s]["config"], answers[s]["train_threads"] = ck["config"], ck.get("threads")
    recipe, n, changes, summary = summarize(answers)
    threads = answers[args.seeds[0]]["train_threads"] or args.threads   # the runs' training threads (checkpoint)
    other = load_other(args.compare, args.seeds) if args.compare else None   # a bad --compare fails before any write
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown commit"
    where = f"{threads} thread(s) per run, {cpu_name()}, summarized at commit {commit}, {datetime.date.today()}"
    spread = {"recipe": recipe, "seeds": args.seeds, "n": n, "threads": threads, "where": where,
              "changes": changes, "summary": summary,
              "command": " ".join(["python -m toy.first_run", *(sys.argv[1:] if argv is None else argv)])}
    step_s = [json.loads(line).get("step_time_s", 0) for s in args.seeds
              for line in open(os.path.join(args.out, f"s{s}", "metrics.jsonl"))]
    lines = [f"# The first run's seed spread: `python train.py --seed S`, seeds {args.seeds} (n = {len(args.seeds)})",
             "", f"{recipe['method']}, {recipe['steps']} steps, lr {recipe['lr_gpt']:g} (policy), answer table on "
             f"n = {n} captions per split; {where}.", "",
             "Change against the base models per seed; mean [95 % t-interval]; seeds with change > 0.", "",
             "| metric | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean [95 % CI] | > 0 |",
             "|---" * (len(args.seeds) + 3) + "|"]
    for k in toy_report.ROWS:
        c = summary[k]
        lines.append(f"| {toy_eval.LABELS[k]} | " + " | ".join(f"{d:+.4f}" for d in changes[k]) +
                     f" | {c['mean']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}] | {c['pos']}/{len(args.seeds)} |")
    held = better_count(changes)
    lines += ["", "Headline signs (criterion: the better direction in every seed): " + "; ".join(
        f"{toy_eval.LABELS[k]} {'up' if toy_report.HIGHER_IS_BETTER[k] else 'down'} in {held[k]}/{len(args.seeds)}"
        f"{'' if held[k] == len(args.seeds) else ' (MISSES the criterion)'}" for k in toy_report.HEADLINE) + ".",
              "", f"Median training step: {sorted(step_s)[len(step_s) // 2]:.2f} s ({threads} thread(s)); this "
              f"invocation ran {ran} of the {len(args.seeds)} runs (the others were on disk) in "
              f"{(time.time() - t0) / 60:.1f} min, {args.jobs} at a time. Spread file: "
              f"{os.path.relpath(args.spread_out, ROOT)}."]
    if args.rescore:
        t1, es = time.time(), [0, *args.rescore]
        split = {k: noise_split(d) for k, d in rescore(args.out, args.seeds, answers, args.rescore,
                                                       threads).items()}
        S, scales = len(args.seeds), (1, 0.5, 0.25, 0)
        lines += ["", f"## Where the spread comes from: every run re-scored at eval seeds {es} (n = {n} each)", "",
                  "Two-way random-effects ANOVA over (training seed, eval seed), no replication: change = mean + "
                  "seed + shared + run. seed sd: between training seeds; shared eval sd: the evaluation draw every "
                  "seed shares at one eval seed (the captions, the sampling stream, the base row); per-run eval sd: "
                  "one checkpoint's own evaluation noise. Seeds > 0 at each eval seed. P(all better): the chance "
                  f"that all {S} seeds' changes lie in the better direction under this normal model, the shared draw "
                  "integrated out, with the evaluation variances at n, 2n, 4n captions and without evaluation noise. "
                  f"Re-scoring took {(time.time() - t1) / 60:.1f} min (rows on disk are reused).", "",
                  "| metric | mean change | seed sd | shared eval sd | per-run eval sd | seeds > 0 at eval seeds "
                  f"{es} | P(all better) at n = {n}, {2 * n}, {4 * n}, no eval noise |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {toy_eval.LABELS[k]} | {c['mean']:+.4f} | {c['seed_sd']:.4f} | {c['shared_sd']:.4f} | "
                  f"{c['run_sd']:.4f} | {', '.join(f'{p}/{S}' for p in c['pos'])} | " +
                  ", ".join(f"{p_all_better(c, S, toy_report.HIGHER_IS_BETTER[k], x):.2f}" for x in scales) + " |"
                  for k, c in split.items()]
    if args.compare:
        rows, same, total = compare_machines(answers, other)
        lines += ["", f"## Another machine: the same seeds' runs in {args.compare}", "",
                  f"Per seed: the change (final - base) here / there; their difference (there - here) over the seeds, "
                  f"mean [95 % CI] and sd, beside the seed sd here / there and the correlation of the per-seed "
                  f"changes across the machines. Numbers equal on both: {same} of {total}.", "",
                  "| metric | " + " | ".join(f"seed {s}" for s in args.seeds) +
                  " | difference mean [95 % CI] | difference sd | seed sd here / there | correlation | > 0 here / there |",
                  "|---" * (len(args.seeds) + 6) + "|"]
        lines += [f"| {toy_eval.LABELS[k]} | " + " | ".join(f"{x:+.4f} / {y:+.4f}" for x, y in zip(c["here"], c["other"]))
                  + f" | {c['diff']['mean']:+.4f} [{c['diff']['lo']:+.4f}, {c['diff']['hi']:+.4f}] | "
                  f"{c['diff']['sd']:.4f} | {c['sd'][0]:.4f} / {c['sd'][1]:.4f} | {c['corr']:+.2f} | "
                  f"{c['pos'][0]}/{len(args.seeds)} / "
                  f"{c['pos'][1]}/{len(args.seeds)} |" for k, c in rows.items()]
    toy_report.write_text(args.spread_out, json.dumps(spread, indent=1) + "\n")
    toy_report.write_text(os.path.join(args.out, "results.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return spread


if __name__ == "__main__":
    main()
