"""toy/reproduce.py: the table's statistics by hand (paired 95 % t-interval, mean +- std, running mean, the report's
numbers from fake runs), then end to end on the tiny toy world (slow): runs, evaluations, table, curves,
base-decoder rows."""
import json
import math
import os
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from toy import reproduce

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------- statistics by hand
def test_paired_ci_by_hand():
    """mean, sample std (ddof 1) and mean +- t_{0.975, n-1} sd / sqrt(n): the published interval of a paired
    difference; t quantiles from tables (3 and 1 degrees of freedom), so a wrong level, df or ddof moves the ends."""
    c = reproduce.paired_ci([1.0, 2.0, 3.0, 6.0])
    sd = math.sqrt(14 / 3)                                     # squares of (-2, -1, 0, 3) over n - 1 = 3
    half = 3.182446305284263 * sd / 2                          # t_{0.975, 3} sd / sqrt(4)
    assert c == pytest.approx({"mean": 3.0, "sd": sd, "lo": 3.0 - half, "hi": 3.0 + half}, rel=1e-12)
    c = reproduce.paired_ci([0.5, -0.25])                      # two seeds: t_{0.975, 1} = 12.706
    half = 12.706204736174698 * (0.75 / math.sqrt(2)) / math.sqrt(2)
    assert c == pytest.approx({"mean": 0.125, "sd": 0.75 / math.sqrt(2), "lo": 0.125 - half, "hi": 0.125 + half},
                              rel=1e-12)


def test_mean_sd_by_hand():
    """[mean, sample std with ddof 1] over seeds; a single seed has no spread, reported as 0 (not NaN)."""
    assert reproduce.mean_sd([1.0, 2.0, 3.0, 6.0]) == pytest.approx([3.0, math.sqrt(14 / 3)], rel=1e-12)
    assert reproduce.mean_sd([0.25]) == [0.25, 0.0]
    assert reproduce.mean_sd([0.25, 0.75]) == pytest.approx([0.5, math.sqrt(0.125)], rel=1e-12)   # two seeds


def test_running_mean_matches_brute_force():
    """Each step's mean of the last w values (fewer at the start), against the obvious loop."""
    x = np.random.default_rng(0).standard_normal(30)
    for w in (1, 3, 20, 40):
        want = [x[max(0, i - w + 1):i + 1].mean() for i in range(len(x))]
        np.testing.assert_allclose(reproduce.running_mean(list(x), w), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(reproduce.running_mean([1.0, 2.0, 3.0, 4.0], 2), [1.0, 1.5, 2.5, 3.5])
    np.testing.assert_array_equal(reproduce.running_mean(list(x)), reproduce.running_mean(list(x), 20))  # default


def test_write_report_numbers_from_fake_runs(tmp_path, capsys):
    """write_report's published numbers from hand-made runs (no training): mean +- std over seeds, the paired
    difference per seed with its interval and its count of seeds > 0, the co-evolved decoder's gain (online - base
    decoder on the same seed) and the policy KL averaged over the last 20 logged steps; every row of results.md
    written out from hand-derived means and sds, and every table well-formed (one cell count per table)."""
    steps, seeds = 25, (0, 1, 2)
    keys = list(reproduce.LABELS) + ["kid_se", "real_reencode_agree", "reencode_cycle_l1", "real_reencode_cycle_l1"]

    def row(v):                          # column i holds v + i / 100, so a cell in the wrong column shows
        return {k: v + i / 100 for i, k in enumerate(keys)}
    base = row(0.0)

    ranke = {s: {steps: row(v)} for s, v in zip(seeds, (1.0, 2.0, 4.0))}
    grpo = {s: {steps: row(v)} for s, v in zip(seeds, (1.5, 1.0, 1.0))}         # RankE - GRPO: -0.5, +1, +3
    base_dec = {s: {steps: row(v)} for s, v in zip(seeds, (0.5, 0.5, 1.0))}     # decoder gain: 0.5, 1.5, 3
    results = {"RankE": ranke, f"RankE {reproduce.BASE_DEC}": base_dec, reproduce.RL: grpo}
    for method, kl0 in (("RankE", 100.0), (reproduce.RL, 200.0)):
        for s in seeds:                  # policy/kl = kl0 + 10 s + t at step t; the last 20 steps are 6..25
            d = reproduce.run_dir(str(tmp_path), method, s)
            os.makedirs(d)
            with open(os.path.join(d, "metrics.jsonl"), "w") as f:
                for t in range(1, steps + 1):
                    f.write(json.dumps({"step": t, "reward/mean": float(t), "policy/kl": kl0 + 10 * s + t}) + "\n")
    args = types.SimpleNamespace(steps=steps, seeds=list(seeds), few_seeds=[0], n=8, extra="", out=str(tmp_path),
                                 wall="wall")
    reproduce.write_report(args, base, results)
    summary = json.loads((tmp_path / "results.json").read_text())["summary"]
    assert summary["RankE"]["fid"] == pytest.approx(reproduce.mean_sd([1.04, 2.04, 4.04]))
    assert summary["RankE"]["policy_kl_last20"] == pytest.approx([100 + 10 + 15.5, 10.0])   # mean of 6..25 = 15.5
    assert summary[reproduce.RL]["policy_kl_last20"] == pytest.approx([200 + 10 + 15.5, 10.0])
    d = summary[f"RankE - {reproduce.RL}"]["fid"]
    assert d["per_seed"] == pytest.approx([-0.5, 1.0, 3.0])
    assert {k: d[k] for k in ("mean", "sd", "lo", "hi")} == pytest.approx(reproduce.paired_ci([-0.5, 1.0, 3.0]))
    assert summary["RankE: decoder gain"]["kid"] == pytest.approx(reproduce.mean_sd([0.5, 1.5, 3.0]))
    assert "lcs_kl" not in summary["RankE: decoder gain"]         # same tokens: the LCS gain is 0 by construction
    table = (tmp_path / "results.md").read_text()
    assert f"| RankE - {reproduce.RL} (n = 3) | " in table and "(2/3 > 0)" in table and "(3/3 > 0)" not in table
    lines = table.splitlines()
    assert lines[0].startswith("Toy world, 25 steps, seeds [0, 1, 2], 8 captions per split, train.py flags as "
                               "train.py;")                        # no few-seed arm among these methods
    assert lines[2] == "| method | " + " | ".join(reproduce.LABELS.values()) + " |"
    assert "Shift beyond token histograms" in table and lines[-1] == "wall"
    assert "| RankE | " in table.partition("Shift beyond")[2]     # the shift table's rows, with the policy KL
    assert capsys.readouterr().out.strip() == table.strip()        # the table is also printed
    # every row by hand: RankE 1, 2, 4 (mean 7/3, sd sqrt(7/3)); base decoder 1/2, 1/2, 1 and GRPO 3/2, 1, 1 (sd
    # sqrt(1/12)); RankE - GRPO -1/2, 1, 3 (mean 7/6, sd sqrt(37/12), t_{0.975, 2} = 4.3027); gain 1/2, 3/2, 3 (mean
    # 5/3, sd sqrt(19/12)); policy KL over seeds kl0 + 15.5 + (0, 10, 20)
    bd, shift = f"RankE {reproduce.BASE_DEC}", [7, 9, 10, 11, 5, 8]     # the shift table's columns (key index)
    main = lambda name, m, sd: f"| {name} (n = 3) | " + " | ".join(f"{m + i / 100:.3f} +- {sd:.3f}" for i in range(8))
    sd, half = math.sqrt(37 / 12), 4.302652729749464 * math.sqrt(37 / 12) / math.sqrt(3)
    cell = f"{7 / 6:+.3f} +- {sd:.3f} [{7 / 6 - half:+.3f}, {7 / 6 + half:+.3f}] (2/3 > 0)"
    sh = lambda name, m, sd, kl: (f"| {name} | " + " | ".join(f"{m + i / 100:.4f} +- {sd:.4f}" for i in shift) +
                                  f" | {kl} |")
    for want in ["| Base | " + " | ".join(f"{i / 100:.3f}" for i in range(8)) + " |",
                 main("RankE", 7 / 3, math.sqrt(7 / 3)) + " |", main(bd, 2 / 3, math.sqrt(1 / 12)) + " |",
                 main(reproduce.RL, 7 / 6, math.sqrt(1 / 12)) + " |",
                 f"| RankE - {reproduce.RL} (n = 3) | " + " | ".join([cell] * 8) + " |",
                 "| RankE | " + " | ".join([f"{5 / 3:+.3f} +- {math.sqrt(19 / 12):.3f}"] * 7) + " |",
                 "| Base | " + " | ".join(f"{i / 100:.4f}" for i in shift) + " | 0 |",
                 sh("RankE", 7 / 3, math.sqrt(7 / 3), "125.500 +- 10.000"), sh(bd, 2 / 3, math.sqrt(1 / 12), "-"),
                 sh(reproduce.RL, 7 / 6, math.sqrt(1 / 12), "225.500 +- 10.000")]:
        assert want in lines, want
    assert "Paired differences at the final step" in table and "What the co-evolved decoder adds" in table
    for block in table.split("\n\n"):                              # markdown tables: header, |---|, rows
        rows = [line for line in block.splitlines() if line.startswith("|")]
        if rows:
            assert all(line.startswith("| ") and line.endswith(" |") for line in rows[:1] + rows[2:]), block
            assert len({line.count(" | ") for line in rows[:1] + rows[2:]}) == 1, block
            assert rows[1] == "|---" * (rows[0].count(" | ") + 1) + "|", block
    assert table.endswith("wall\n") and table.count("| Base |") == 2
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_write_report_short_runs_and_single_seeds(tmp_path, monkeypatch):
    """A run shorter than 20 steps averages its policy KL over every step 1..L; a paired difference needs more than
    one seed that both arms ran (two are enough), else it has no sd or interval and is left out; the title names the
    few-seed arms' seeds. The figure is skipped here (the tables are written before it)."""
    import matplotlib.pyplot as plt

    class NoFigure(Exception):
        pass

    def no_figure(*a, **k):
        raise NoFigure
    monkeypatch.setattr(plt, "subplots", no_figure)
    keys = list(reproduce.LABELS) + ["kid_se", "real_reencode_agree", "reencode_cycle_l1", "real_reencode_cycle_l1"]
    base, steps = {k: 0.0 for k in keys}, 5

    def report(out, seeds_by_method):
        for method, seeds in seeds_by_method.items():
            for s in seeds:                                      # policy/kl = 10 s + t at step t
                d = reproduce.run_dir(str(out), method, s)
                os.makedirs(d)
                with open(os.path.join(d, "metrics.jsonl"), "w") as f:
                    for t in range(1, steps + 1):
                        f.write(json.dumps({"step": t, "reward/mean": 0.0, "policy/kl": 10.0 * s + t}) + "\n")
        args = types.SimpleNamespace(steps=steps, seeds=[0, 1], few_seeds=[0], n=8, extra="", out=str(out),
                                     wall="wall")
        results = {m: {s: {steps: {k: float(s) for k in keys}} for s in seeds} for m, seeds in seeds_by_method.items()}
        with pytest.raises(NoFigure):
            reproduce.write_report(args, base, results)
        return json.loads((out / "results.json").read_text())["summary"], (out / "results.md").read_text()

    summary, table = report(tmp_path / "two", {"RankE": [0, 1], reproduce.RL: [0, 1]})
    assert summary["RankE"]["policy_kl_last20"] == pytest.approx([3.0 + 5.0, math.sqrt(50.0)])   # steps 1..5
    assert summary[f"RankE - {reproduce.RL}"]["kid"]["per_seed"] == [0.0, 0.0] and "Paired differences" in table
    summary, table = report(tmp_path / "one", {"RankE": [0], reproduce.RL: [0, 1]})
    assert f"RankE - {reproduce.RL}" not in summary and "Paired differences" not in table
    # a few-seed arm on one seed (--few_seeds 0): RankE - VA-pi would pair ONE seed (sd and interval nan); not shown
    summary, table = report(tmp_path / "few", {"RankE": [0, 1], "VA-pi": [0]})
    assert "RankE - VA-pi" not in summary and "nan" not in table and "Paired differences" not in table
    assert table.splitlines()[0].startswith("Toy world, 5 steps, seeds [0, 1] (VA-pi: seeds [0]), 8 captions")


@pytest.mark.slow
def test_toy_reproduce_tiny(toy_cache, tmp_path):
    out = tmp_path / "repro"
    cmd = [sys.executable, "-m", "toy.reproduce", "--toy_preset", "tiny", "--toy_cache", toy_cache,
           "--seeds", "0", "1", "--few_seeds", "0", "--lr_gpt", "1e-4", "--steps", "2", "--evals", "1", "--n", "8", "--methods", "RankE", "Standard RL (GRPO)", "Two-stage (RL, then decoder)",
           "--out", str(out),
           "--extra", "--batch_prompts 2 --group_size 4 --device cpu"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    main_table, _, rest = (out / "results.md").read_text().partition("Paired differences")
    paired_table, _, rest = rest.partition("What the co-evolved decoder adds")
    decoder_table, _, shift_table = rest.partition("Shift beyond token histograms")
    name = lambda table: [l.split(" | ")[0].lstrip("| ") for l in table.splitlines() if l.startswith("| ") and "---" not in l]
    assert name(main_table)[1:] == ["Base", "RankE (n = 2)", "RankE (its policy, base decoder) (n = 2)",
                                    "Standard RL (GRPO) (n = 2)", "Two-stage (RL, then decoder) (n = 2)",
                                    "Two-stage (RL, then decoder) (its policy, base decoder) (n = 2)"], main_table
    assert name(paired_table)[1:] == ["RankE - Standard RL (GRPO) (n = 2)", "RankE - Two-stage (RL, then decoder) (n = 2)",
                                      "Two-stage (RL, then decoder) - Standard RL (GRPO) (n = 2)"], paired_table
    assert name(decoder_table)[1:] == ["RankE", "Two-stage (RL, then decoder)"], decoder_table
    assert name(shift_table)[1:] == ["Base", "RankE", "RankE (its policy, base decoder)", "Standard RL (GRPO)",
                                     "Two-stage (RL, then decoder)", "Two-stage (RL, then decoder) (its policy, base "
                                     "decoder)"], shift_table
    runs = json.loads((out / "results.json").read_text())["runs"]
    # the real images' tokens go through each row's decoder: the base-decoder rows see the base models' real agreement
    base_row = json.loads((out / "results.json").read_text())["summary"]["base"]
    assert all(runs[m][s]["2"]["real_reencode_agree"] == base_row["real_reencode_agree"] for s in "01"
               for m in ("Standard RL (GRPO)", "RankE (its policy, base decoder)"))
    for seed in ("0", "1"):
        online, base_dec = runs["RankE"][seed]["2"], runs["RankE (its policy, base decoder)"][seed]["2"]
        # same checkpoint, same sampling seed: identical tokens, so identical LCS KL; different decoders
        assert online["lcs_kl"] == base_dec["lcs_kl"] and online["fid"] != base_dec["fid"]
    assert (out / "curves.png").stat().st_size > 0
    # the two seeds are different runs
    assert runs["RankE"]["0"]["2"]["fid"] != runs["RankE"]["1"]["2"]["fid"]
    # paired differences: per seed RankE - GRPO at the final step; the interval is centred on the mean
    d = json.loads((out / "results.json").read_text())["summary"]["RankE - Standard RL (GRPO)"]["fid"]
    assert d["per_seed"] == [runs["RankE"][s]["2"]["fid"] - runs["Standard RL (GRPO)"][s]["2"]["fid"] for s in "01"]
    assert abs(d["mean"] - sum(d["per_seed"]) / 2) < 1e-9 and d["lo"] < d["mean"] < d["hi"]
    # the two-stage arm samples the Standard RL run's final policy: same tokens, so the same LCS KL, per seed
    for s in "01":
        assert runs["Two-stage (RL, then decoder)"][s]["2"]["lcs_kl"] == runs["Standard RL (GRPO)"][s]["2"]["lcs_kl"]
    # the same folder with a longer --steps: the two-stage runs were started from the step-2 policies, and would
    # have to continue from the step-4 ones; refused before any job starts (train.py would refuse it on resume)
    longer = [c if c != "2" or cmd[i - 1] != "--steps" else "4" for i, c in enumerate(cmd)]
    res = subprocess.run(longer, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode != 0 and "was started from" in res.stderr and "Move" in res.stderr, res.stderr[-2000:]
    assert "+ " not in res.stdout                                        # no job was started


@pytest.mark.slow
def test_run_queue_failure_stops_every_job(tmp_path):
    """A failing job ends the queue, and the jobs running beside it end too (a rerun must not meet a second writer)."""
    pid_file = tmp_path / "pid"
    sleeper = [sys.executable, "-c", f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
               "time.sleep(60)"]
    fail = [sys.executable, "-c", "import time; time.sleep(1.5); raise SystemExit(3)"]
    queue = [("x", sleeper, str(tmp_path / "a.log"), None), ("x", fail, str(tmp_path / "b.log"), None)]
    t0 = time.time()
    with pytest.raises(SystemExit, match="exit 3"):
        reproduce.run_queue(queue, 2, dict(os.environ), follow_up=lambda run: [])
    assert time.time() - t0 < 30
    with pytest.raises(ProcessLookupError):                 # terminated and reaped
        os.kill(int(pid_file.read_text()), 0)


@pytest.mark.slow
def test_calibrate_smoke_run_on_a_cold_cache(tmp_path):
    """toy/calibrate.py's own smoke command, on a toy cache nobody built: its base evaluation and first training run
    start together and both need the tiny world (they raced on its temporary files); the report is written. One seed
    is refused (no interval: every criterion would fail silently)."""
    flags = ["--lrs", "1e-4", "--steps", "4", "--curve_seeds", "0", "--curve_steps", "8", "--every", "4", "--n", "32",
             "--toy_preset", "tiny", "--toy_cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "toy.calibrate", "--seeds", "0", *flags], cwd=reproduce.ROOT, env=env,
                         capture_output=True, text=True)
    assert one.returncode != 0 and "at least 2 distinct seeds" in one.stderr
    res = subprocess.run([sys.executable, "-m", "toy.calibrate", "--seeds", "0", "1", *flags], cwd=reproduce.ROOT,
                         env=env,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    report = (tmp_path / "out" / "results.md").read_text()
    assert "| lr 1e-4 |" in report and "Chosen recipe" in report
