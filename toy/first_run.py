"""The seed spread of the first run: `python train.py` (the toy default) run with several seeds, and how much each
row of its answer table moves between them. One run's change against the base models is one draw; the answer table
(toy/report.py) prints, beside each change, the spread measured here for the same recipe, so a reader sees which
changes are beyond seed noise, and whether the headline signs (reward up, held-out checker up, KID down) hold in
every seed (docs/preregistration.md, amendment 2).

    python -m toy.first_run                # seeds 0-7 of the toy default, one 1-thread process at a time; writes
                                           # runs/first_run/results.md and toy/assets/first_run_spread.json
    python -m toy.first_run --jobs 2       # two at a time on a 2-core machine (one thread each)

Every run is the plain `python train.py --seed S --out_dir OUT/sS` (a subprocess: exactly what a user runs); its
answer.json holds the base and final rows on the same captions with the same sampling seed. Runs whose answer.json is
on disk are reused, so a cut-off study continues where it stopped. The spread file records the recipe (the runs'
config without the fields in toy/report.py's NOT_RECIPE), the seeds, n, threads, the machine and the commit; the
answer table shows it only for a run of the same recipe at the same n.

Tests: pytest tests/test_toy_first_run.py (tiny preset, 2 steps, 2 seeds). Part of the toy wing (toy/).
Symbols: S seeds; change = final row - base row of one run; mean, sd (ddof 1) and 95 % t-interval over seeds.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

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
    changes = {k: [answers[s]["final"][k] - answers[s]["base"][k] for s in seeds] for k in toy_report.ROWS}
    summary = {k: {**paired_ci(d), "pos": sum(x > 0 for x in d)} for k, d in changes.items()}
    return recipes[seeds[0]], answers[seeds[0]]["n"], changes, summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    ap.add_argument("--out", default="runs/first_run")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (floats depend on it)")
    ap.add_argument("--extra", default="", help="extra train.py flags for every run (tests: a tiny, short recipe)")
    ap.add_argument("--spread_out", default=toy_report.SPREAD_FILE, help="where the spread file goes")
    args = ap.parse_args(argv)
    if len(args.seeds) < 2:
        ap.error("--seeds: a spread needs at least 2 seeds")
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
        answers[s]["config"] = ck["config"]
    recipe, n, changes, summary = summarize(answers)
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown commit"
    where = f"{args.threads} thread(s) per run, {cpu_name()}, summarized at commit {commit}, {datetime.date.today()}"
    spread = {"recipe": recipe, "seeds": args.seeds, "n": n, "threads": args.threads, "where": where,
              "changes": changes, "summary": summary,
              "command": " ".join(["python -m toy.first_run", *(sys.argv[1:] if argv is None else argv)])}
    toy_report.write_text(args.spread_out, json.dumps(spread, indent=1) + "\n")
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
    want = {k: 1 if toy_report.HIGHER_IS_BETTER[k] else -1 for k in toy_report.HEADLINE}
    held = {k: sum((d > 0) == (want[k] > 0) for d in changes[k]) for k in toy_report.HEADLINE}
    lines += ["", "Headline signs (criterion: the better direction in every seed): " + "; ".join(
        f"{toy_eval.LABELS[k]} {'up' if want[k] > 0 else 'down'} in {held[k]}/{len(args.seeds)}"
        f"{'' if held[k] == len(args.seeds) else ' (MISSES the criterion)'}" for k in toy_report.HEADLINE) + ".",
              "", f"Median training step: {sorted(step_s)[len(step_s) // 2]:.2f} s ({args.threads} thread(s)); this "
              f"invocation ran {ran} of the {len(args.seeds)} runs (the others were on disk) in {(time.time() - t0) / 60:.1f} "
              f"min, {args.jobs} at a time. Spread file: {os.path.relpath(args.spread_out, ROOT)}."]
    toy_report.write_text(os.path.join(args.out, "results.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return spread


if __name__ == "__main__":
    main()
