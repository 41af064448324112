"""toy/reproduce.py end to end on the tiny toy world: runs, evaluations, table, curves, base-decoder rows."""
import json
import os
import subprocess
import sys
import time

import pytest

from toy import reproduce

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow          # toy/reproduce.py in a subprocess, end to end


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
