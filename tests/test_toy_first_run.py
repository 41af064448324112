"""toy/first_run.py (the seed spread of `python train.py`) and how toy/report.py's answer table uses it: the spread is
the per-seed change final - base of each run's own answer, and the table shows it only for a run of the same recipe.

Run: pytest -q tests/test_toy_first_run.py   (the end-to-end test is slow: two 2-step tiny runs in subprocesses)
"""
import json
import os

import pytest

from toy import eval as toy_eval
from toy import first_run
from toy import report as toy_report

ROW = {k: 1.0 for k in toy_report.ROWS}


def fake_answer(seed, delta, **config):
    """An answer.json as train.py writes it, plus the run's config: final = base + delta on every row."""
    conf = {"method": "ranke", "steps": 250, "lr_gpt": 1e-5, "report_n": 512, "seed": seed, "out_dir": f"r/s{seed}",
            **config}
    return {"base": dict(ROW), "final": {k: v + delta for k, v in ROW.items()}, "n": 512, "config": conf}


def test_summarize_signs_and_interval():
    recipe, n, changes, summary = first_run.summarize({0: fake_answer(0, 0.5), 1: fake_answer(1, -0.1),
                                                       2: fake_answer(2, 0.3)})
    assert n == 512 and "seed" not in recipe and "out_dir" not in recipe and recipe["steps"] == 250
    assert changes["kid"] == pytest.approx([0.5, -0.1, 0.3])
    s = summary["kid"]
    assert s["pos"] == 2 and s["mean"] == pytest.approx(0.7 / 3) and s["lo"] < s["mean"] < s["hi"]


def test_summarize_refuses_mixed_recipes():
    with pytest.raises(SystemExit, match="lr_gpt"):
        first_run.summarize({0: fake_answer(0, 0.5), 1: fake_answer(1, 0.5, lr_gpt=1e-4)})


def test_spread_shown_only_for_the_same_recipe(tmp_path):
    _, n, changes, summary = first_run.summarize({0: fake_answer(0, 0.5), 1: fake_answer(1, -0.25)})
    path = str(tmp_path / "spread.json")
    conf = fake_answer(7, 0)["config"]                   # another seed and out_dir: the same recipe
    json.dump({"recipe": toy_report.recipe(conf), "seeds": [0, 1], "n": n, "where": "here", "changes": changes,
               "summary": summary}, open(path, "w"))
    spread, line = toy_report.load_spread(conf, path)
    assert spread is not None and "seeds [0, 1]" in line
    table = "\n".join(toy_report.answer_table(ROW, ROW, n, spread))
    assert "1/2 (+-)" in table and "**toy KID**" in table             # per-seed signs; the headline in bold
    zero = {**spread, "changes": {k: [0.0, 0.5] for k in spread["changes"]}}
    assert "(0+)" in "\n".join(toy_report.answer_table(ROW, ROW, n, zero))    # no change is neither sign
    spread, line = toy_report.load_spread({**conf, "steps": 300, "beta_kl": 0.1}, path)
    assert spread is None and "beta_kl, steps" in line
    spread, line = toy_report.load_spread(conf, path, n=1024)              # measured at n = 512
    assert spread is None and "n = 512" in line
    spread, line = toy_report.load_spread(conf, path, n=512, step=200)     # a cut-off run's newest checkpoint
    assert spread is None and "step 200 of the run's 250" in line
    assert toy_report.load_spread(conf, path, n=512, step=250)[0] is not None
    spread, line = toy_report.load_spread(conf, path, n=512, step=250, world_size=2)   # torchrun: 2x the prompts
    assert spread is None and "2 processes" in line and line.endswith("the spread was measured on 1.")
    spread, line = toy_report.load_spread(conf, str(tmp_path / "missing.json"))
    assert spread is None and "missing" in line
    assert "change over seeds" not in "\n".join(toy_report.answer_table(ROW, ROW, n, None))


def test_answer_table_rows_by_value():
    """Each row of the answer a user reads: label (headline rows bold), base, final, change = final - base, which way
    is better, then the recipe's mean change [95 % interval] and the seeds whose change is > 0, all formatted."""
    base = {k: 1.0 + i for i, k in enumerate(toy_report.ROWS)}
    final = {k: v + (0.25 if toy_report.HIGHER_IS_BETTER[k] else -0.5) for k, v in base.items()}
    spread = {"summary": {k: {"mean": -0.125, "lo": -0.5, "hi": 0.25, "pos": 1} for k in toy_report.ROWS},
              "changes": {k: [0.5, -0.25, -0.125] for k in toy_report.ROWS}}
    lines = toy_report.answer_table(base, final, 64, spread)
    assert lines[0].startswith("| metric (n = 64 captions per split) | base | final | change | better |")
    assert len(lines) == 2 + len(toy_report.ROWS)
    assert lines[2 + toy_report.ROWS.index("reward")] == (f"| **{toy_eval.LABELS['reward']}** | 1.0000 | 1.2500 | "
                                                         "+0.2500 | higher | -0.1250 [-0.5000, +0.2500] | 1/3 (+--) |")
    assert lines[2 + toy_report.ROWS.index("fid")] == (f"| {toy_eval.LABELS['fid']} | 5.0000 | 4.5000 | -0.5000 | "
                                                      "lower | -0.1250 [-0.5000, +0.2500] | 1/3 (+--) |")


def test_compare_machines_known_answers():
    def answers(deltas, step=250):
        out = {s: fake_answer(s, d) for s, d in deltas.items()}
        for a in out.values():
            a["final"]["step"] = step
        return out
    here, there = answers({0: 0.5, 1: -0.25}), answers({0: 0.75, 1: -0.25})   # seed 1 identical, seed 0 moved
    rows, same, total = first_run.compare_machines(here, there)
    assert rows["kid"]["here"] == [0.5, -0.25] and rows["kid"]["other"] == [0.75, -0.25]
    assert rows["kid"]["diff"]["mean"] == pytest.approx(0.125) and rows["kid"]["pos"] == [1, 1]
    assert rows["kid"]["corr"] == pytest.approx(1.0)                      # two points always lie on a line
    assert rows["kid"]["sd"] == pytest.approx([0.75 / 2 ** 0.5, 1.0 / 2 ** 0.5])
    assert (same, total) == (2 * 7 + 7, 28)            # every base number, and seed 1's final numbers
    with pytest.raises(SystemExit, match="seeds"):
        first_run.compare_machines(here, answers({0: 0.5, 2: 0.5}))
    with pytest.raises(SystemExit, match="steps"):
        first_run.compare_machines(here, answers({0: 0.5, 1: 0.5}, step=300))


def test_noise_split_known_answers():
    # every eval seed gives a run the same change: no evaluation noise, the spread is all training seed
    c = first_run.noise_split({0: [1.0, 1.0, 1.0], 1: [3.0, 3.0, 3.0]})
    assert (c["shared_sd"], c["run_sd"]) == (0, 0) and c["seed_sd"] == pytest.approx(2 ** 0.5)
    assert c["mean"] == 2 and c["pos"] == [2, 2, 2]
    # every run gives the same values at the eval seeds: all of it is the shared eval draw, none the seed's
    c = first_run.noise_split({0: [1.0, -1.0], 1: [1.0, -1.0], 2: [1.0, -1.0]})
    assert c["shared_sd"] == pytest.approx(2 ** 0.5) and (c["seed_sd"], c["run_sd"]) == (0, 0) and c["pos"] == [3, 0]
    # both: seed effects (0, 2) plus the same eval offsets (+1, -1) for every run. The seeds' sd is sqrt(2) at every
    # eval seed, and so is the estimate (a one-way ANOVA, blind to the crossing, would give 1)
    c = first_run.noise_split({0: [1.0, -1.0], 1: [3.0, 1.0]})
    assert c["seed_sd"] == pytest.approx(2 ** 0.5) and c["shared_sd"] == pytest.approx(2 ** 0.5) and c["run_sd"] == 0
    # pure interaction: each run's own eval noise, nothing shared, no seed effect (rows and columns all mean 0.5)
    c = first_run.noise_split({0: [1.0, 0.0], 1: [0.0, 1.0]})
    assert c["run_sd"] == pytest.approx(1.0) and (c["seed_sd"], c["shared_sd"]) == (0, 0)
    with pytest.raises(ValueError, match="eval seeds"):
        first_run.noise_split({0: [1.0], 1: [2.0]})


def test_noise_split_recovers_simulated_components():
    """Average estimates over many simulated (seed x eval seed) tables approach the true sds' squares."""
    import numpy as np
    rng, S, E, est = np.random.default_rng(0), 8, 4, []
    for _ in range(2000):
        v = 0.3 + 1.0 * rng.standard_normal((S, 1)) + 0.7 * rng.standard_normal((1, E)) + 0.5 * rng.standard_normal((S, E))
        c = first_run.noise_split({s: list(v[s]) for s in range(S)})
        est.append([c["seed_sd"] ** 2, c["shared_sd"] ** 2, c["run_sd"] ** 2])
    assert np.mean(est, axis=0) == pytest.approx([1.0, 0.49, 0.25], rel=0.08)


def test_p_all_better_closed_forms_and_simulation():
    from scipy.stats import norm
    c = {"mean": 1.0, "seed_sd": 1.0, "shared_sd": 0.0, "run_sd": 0.0}          # independent seeds: Phi(1)^8
    assert first_run.p_all_better(c, 8) == pytest.approx(norm.cdf(1.0) ** 8, rel=1e-9)
    c = {"mean": 1.0, "seed_sd": 0.0, "shared_sd": 2.0, "run_sd": 0.0}          # only the shared draw: Phi(1/2)
    assert first_run.p_all_better(c, 8) == pytest.approx(norm.cdf(0.5), rel=1e-9)
    assert first_run.p_all_better(c, 8, eval_scale=0) == 1.0                    # a perfect instrument
    c = {"mean": -1.0, "seed_sd": 0.5, "shared_sd": 0.5, "run_sd": 0.5}         # lower is better, all three parts
    import numpy as np
    rng = np.random.default_rng(0)
    x = -1.0 + 0.5 * (rng.standard_normal((200_000, 8)) + rng.standard_normal((200_000, 1)) +
                      rng.standard_normal((200_000, 8)))
    assert first_run.p_all_better(c, 8, higher=False) == pytest.approx((x < 0).all(1).mean(), abs=0.005)


def test_p_all_better_eval_scale_scales_variances():
    """eval_scale multiplies the evaluation VARIANCES (n0 / n captions): at 1/4 the shared and per-run sds halve, so
    sd 2 acts as sd 1 (closed forms Phi(1) for the shared draw alone, Phi(1)^8 for the per-run noise alone)."""
    from scipy.stats import norm
    shared = {"mean": 1.0, "seed_sd": 0.0, "shared_sd": 2.0, "run_sd": 0.0}
    assert first_run.p_all_better(shared, 8, eval_scale=0.25) == pytest.approx(norm.cdf(1.0), rel=1e-9)
    run = {"mean": 1.0, "seed_sd": 0.0, "shared_sd": 0.0, "run_sd": 2.0}
    assert first_run.p_all_better(run, 8, eval_scale=0.25) == pytest.approx(norm.cdf(1.0) ** 8, rel=1e-9)
    assert first_run.p_all_better(run, 8, higher=False, eval_scale=0.25) == pytest.approx(norm.cdf(-1.0) ** 8,
                                                                                          rel=1e-9)
    half = {"mean": 0.5, "seed_sd": 0.0, "shared_sd": 1.0, "run_sd": 0.0}        # mean / sd, not sd / mean
    assert first_run.p_all_better(half, 8) == pytest.approx(norm.cdf(0.5), rel=1e-9)
    assert first_run.p_all_better(half, 8, higher=False) == pytest.approx(norm.cdf(-0.5), rel=1e-9)
    assert first_run.p_all_better(half, 8, higher=False, eval_scale=0) == 0.0   # a perfect instrument, worse
    assert first_run.p_all_better({**half, "mean": 0.0}, 8, eval_scale=0) == 0.0  # no change is not better


def test_better_count_zero_is_not_better():
    zero = {k: [0.0, 0.0] for k in toy_report.ROWS}
    assert first_run.better_count(zero) == {k: 0 for k in toy_report.HEADLINE}
    moved = {**zero, "reward": [0.5, -0.1], "kid": [-3.0, 2.0], "check_heldout": [0.1, 0.2]}
    assert first_run.better_count(moved) == {"reward": 1, "check_heldout": 2, "kid": 1}


def test_summarize_zero_change_is_not_positive_and_mismatches_name_the_seed():
    """pos counts changes > 0 only (an unchanged row is neither sign); a run that differs from the first seed's in
    recipe or report n is named (seed 1 against seed 0, not a seed against itself)."""
    summary = first_run.summarize({0: fake_answer(0, 0.0), 1: fake_answer(1, 0.5), 2: fake_answer(2, -0.5)})[3]
    assert summary["kid"]["pos"] == 1 and summary["kid"]["mean"] == 0.0
    with pytest.raises(SystemExit, match="seed 1's run differs from seed 0's in \\['lr_gpt'\\]"):
        first_run.summarize({0: fake_answer(0, 0.5), 1: fake_answer(1, 0.5, lr_gpt=1e-4)})
    other_n = fake_answer(1, 0.5)
    other_n["n"] = 1024
    with pytest.raises(SystemExit, match="seed 1's run differs from seed 0's in \\['report n'\\]"):
        first_run.summarize({0: fake_answer(0, 0.5), 1: other_n})


def test_compare_machines_correlation_and_zero_changes():
    """With three seeds the correlation of the per-seed changes across machines is a real number (here -1: the other
    machine's changes mirror these), nan when one machine's changes do not vary; a zero change is not counted > 0."""
    def answers(deltas):
        out = {s: fake_answer(s, d) for s, d in enumerate(deltas)}
        for a in out.values():
            a["final"]["step"] = 250
        return out
    rows = first_run.compare_machines(answers([0.0, 0.5, 1.0]), answers([1.0, 0.5, 0.0]))[0]
    assert rows["kid"]["corr"] == pytest.approx(-1.0) and rows["kid"]["pos"] == [2, 2]
    rows = first_run.compare_machines(answers([0.0, 0.5, 1.0]), answers([0.25, 0.25, 0.25]))[0]
    assert rows["kid"]["corr"] != rows["kid"]["corr"] and rows["kid"]["sd"] == [0.5, 0.0]   # nan; no variation


def test_noise_split_residual_and_seed_effect_by_hand():
    """A table with both a seed effect and a residual: rows mean (0.5, 2.5), columns (1.5, 1.5), residuals +-0.5, so
    MS_res = 1, seed_var = (E var(rows) - MS_res) / E = (2 * 2 - 1) / 2 = 1.5, and the shared variance (0 - 1) / 2 < 0
    is reported as 0. pos counts changes > 0 only (the 0.0 at eval seed 2 is not). One seed cannot be split."""
    c = first_run.noise_split({0: [1.0, 0.0], 1: [2.0, 3.0]})
    assert c.pop("pos") == [2, 1]
    assert c == pytest.approx({"mean": 1.5, "seed_sd": 1.5 ** 0.5, "shared_sd": 0.0, "run_sd": 1.0}, rel=1e-12)
    with pytest.raises(ValueError, match="eval seeds"):
        first_run.noise_split({0: [1.0, 2.0]})


def test_summarize_refuses_mixed_thread_counts():
    a = {0: fake_answer(0, 0.5), 1: fake_answer(1, 0.5)}
    a[0]["train_threads"], a[1]["train_threads"] = 1, 2
    with pytest.raises(SystemExit, match="thread counts"):
        first_run.summarize(a)


@pytest.mark.parametrize("argv, msg", [(["--rescore", "101", "101"], "each eval seed once"),
                                       (["--rescore", "0"], "each eval seed once"),
                                       (["--extra", "--seed 3"], "--seed and --out_dir"),
                                       (["--seeds", "1", "1"], "each named once")])
def test_bad_arguments_refused_before_any_run(tmp_path, argv, msg, capsys):
    with pytest.raises(SystemExit):
        first_run.main(["--out", str(tmp_path / "none"), *argv])
    assert msg in capsys.readouterr().err and not (tmp_path / "none").exists()


@pytest.mark.slow
def test_first_run_end_to_end(toy_cache, tmp_path):
    out, spread_out = tmp_path / "fr", str(tmp_path / "spread.json")
    extra = (f"--toy_preset tiny --toy_cache {toy_cache} --steps 2 --batch_prompts 2 --group_size 4 --report_n 8 "
             f"--device cpu --lr_gpt 1e-2")
    # seeds named out of order: every label (spread file, results.md columns) must still name its own run
    spread = first_run.main(["--seeds", "1", "0", "--out", str(out), "--extra", extra, "--spread_out", spread_out])
    assert json.load(open(spread_out)) == json.loads(json.dumps(spread)) and spread["seeds"] == [0, 1]
    assert "| seed 0 | seed 1 |" in (out / "results.md").read_text()
    answers = [json.load(open(out / f"s{s}" / "answer.json")) for s in (0, 1)]
    row = " | ".join(f"{a['final']['reward'] - a['base']['reward']:+.4f}" for a in answers)
    assert f"| {toy_eval.LABELS['reward']} | {row} |" in (out / "results.md").read_text()    # column = its seed
    for k in toy_report.ROWS:                            # the spread is each run's own final - base
        assert spread["changes"][k] == [a["final"][k] - a["base"][k] for a in answers]
    assert spread["recipe"]["steps"] == 2 and spread["n"] == 8 and spread["seeds"] == [0, 1]
    assert answers[0]["final"]["fid"] != answers[1]["final"]["fid"]          # two seeds, two runs
    # the runs' own tables had no spread for this recipe (the shipped one is the default's); with this one, they do
    assert "No seed spread" in (out / "s0" / "answer.md").read_text()
    toy_report.report(str(out / "s0"), str(out / "s0" / "ckpt_0000002.pt"), n=8, spread_path=spread_out)
    md = (out / "s0" / "answer.md").read_text()
    signs = "".join("+" if d > 0 else "-" for d in spread["changes"]["reward"])
    assert "change over seeds" in md and f"({signs})" in md
    assert "results.md" in os.listdir(out)
    # re-scoring at the answer table's own eval seed 0 reproduces each run's answer.json (the same scoring path)
    runs = {s: {**a, "config": toy_eval.read_train_ckpt(str(out / f"s{s}" / "ckpt_0000002.pt"))["config"]}
            for s, a in zip((0, 1), answers)}
    for k, per_seed in first_run.rescore(str(out), [0, 1], runs, [0], 1).items():
        for s in (0, 1):
            assert per_seed[s][1] == pytest.approx(per_seed[s][0], rel=1e-6, abs=1e-9), (k, s)
    # a cached row scored from another checkpoint (its key differs) is not reused: it is scored again
    cached = json.load(open(out / "rescore" / "s0-e0-n8.json"))
    cached["key"]["ckpt_sha256"], cached["row"]["reward"] = "another checkpoint", 1e9
    json.dump(cached, open(out / "rescore" / "s0-e0-n8.json", "w"))
    again = first_run.rescore(str(out), [0, 1], runs, [0], 1)["reward"][0]
    assert again[1] == pytest.approx(again[0], rel=1e-6, abs=1e-9)
    first_run.main(["--seeds", "0", "1", "--out", str(out), "--extra", extra, "--spread_out", spread_out,
                    "--rescore", "5"])
    md = (out / "results.md").read_text()
    assert "Where the spread comes from" in md and "eval seeds [0, 5]" in md
    assert (out / "rescore" / "s1-e5-n8.json").exists() and (out / "rescore" / "base-e5-n8.json").exists()
    # --compare against the same runs (as if copied from another machine): everything equal, differences zero
    first_run.main(["--seeds", "0", "1", "--out", str(out), "--extra", extra, "--spread_out", spread_out,
                    "--compare", str(out)])
    md = (out / "results.md").read_text()
    assert "Numbers equal on both: 28 of 28" in md and "| +0.0000 [+0.0000, +0.0000] | 0.0000 |" in md
    assert "| +1.00 |" in md                                            # the same runs: correlation 1
