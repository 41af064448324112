"""Tests for toy/report.py, the answer at the end of a toy `python train.py`: the table holds the base models' and the
final checkpoint's toy_eval rows on the same captions, the before/after grid's left half is the base models' samples
and its right half the checkpoint's, and the files land in the run folder.

Run: pytest -q tests/test_toy_report.py   (CPU, ~15 s; uses the session's tiny toy cache)
"""
import json
import os

import pytest
import torch
from PIL import Image

import policy
from toy import eval as toy_eval
from toy import report as toy_report
from toy import world as toy_world
import train


@pytest.fixture(scope="module")
def toy_run(toy_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("report_run")
    cfg = train.parse_config(["--toy_preset", "tiny", "--toy_cache", toy_cache, "--out_dir", str(out),
                              "--batch_prompts", "2", "--group_size", "4", "--steps", "2", "--disc_start", "0",
                              "--sample_every", "0", "--device", "cpu", "--report_n", "8", "--lr_gpt", "1e-2"])
    train.main(cfg)
    return out, cfg


@pytest.mark.slow
def test_report_files_and_rows(toy_run, toy_cache):
    out, cfg = toy_run
    for name in ("answer.md", "answer.json", "before_after.png", "curves.png"):
        assert os.path.getsize(out / name) > 0, name
    ans = json.loads((out / "answer.json").read_text())
    assert ans["n"] == 8 and ans["threads"] == torch.get_num_threads()
    # the rows are exactly toy_eval's, base sampled with the run's own settings (CFG 4 of the tiny preset)
    ckpt_path = str(out / "ckpt_0000002.pt")
    full = toy_eval.evaluate_toy_checkpoint(ckpt_path, n=8)
    assert ans["final"] == toy_eval.evaluate_toy_checkpoint(ckpt_path, n=8, detail=False)
    # detail=False leaves out the re-encode round trips and the LCS floor, and changes no number it keeps
    assert {k: v for k, v in full.items() if k in ans["final"]} == ans["final"]
    assert "reencode_agree" in full and "reencode_agree" not in ans["final"] and full["lcs_floor"] > 0
    base = toy_eval.evaluate_toy_checkpoint(None, toy_cache=toy_cache, toy_preset="tiny", n=8, sampling=vars(cfg),
                                            detail=False)
    assert ans["base"] == base
    assert base != toy_eval.evaluate_toy_checkpoint(None, toy_cache=toy_cache, toy_preset="tiny", n=8,
                                                    sampling={"cfg_scale": 1.5})   # the settings reach the sampler
    md = (out / "answer.md").read_text()
    for k in toy_report.ROWS:
        assert toy_eval.LABELS[k] in md


@pytest.mark.slow
def test_before_after_halves(toy_run, toy_cache):
    out, cfg = toy_run
    ck = toy_eval.read_train_ckpt(str(out / "ckpt_0000002.pt"))
    images, caps = toy_report.before_after(ck["config"], ck, rows=4, G=2, seed=5)      # (2, R*G, 3, S, S)
    assert images.shape == (2, 8, 3, 32, 32) and len(caps) == 4
    b = toy_world.load_toy(toy_world.ToyConfig.tiny(), cache_dir=toy_cache, progress=False)
    world_caps = set(b.world.caption(b.world.scenes(1, torch.Generator().manual_seed(0))))
    assert all(b.world.parse(c) for c in caps) and world_caps            # real toy captions
    cond, mask = b.text_encoder(caps)
    expect = []
    for state in (None, ck):                                             # independent re-computation of each half
        if state is not None:
            b.gpt.load_state_dict(state["gpt"])
            b.vq.load_state_dict(state["vq"])
        z = policy.sample(b.gpt.eval(), cond.repeat_interleave(2, 0), mask.repeat_interleave(2, 0), cfg_scale=4.0,
                          generator=torch.Generator().manual_seed(5))
        expect.append(b.vq.eval().decode_indices(z).clamp(-1, 1))
    assert torch.equal(images[0], expect[0]) and torch.equal(images[1], expect[1])
    assert not torch.equal(images[0], images[1])                         # lr 1e-2 for 2 steps moved the policy
    toy_report.save_before_after(str(out / "ba.png"), images, caps, G=2)
    w, h = Image.open(out / "ba.png").size
    assert h >= 4 * 32 * toy_report.UPSCALE * 0.9 and w >= 2 * 2 * 32 * toy_report.UPSCALE   # upscaled, not 32 px


def test_report_n_one_is_rejected():
    with pytest.raises(SystemExit, match="report_n"):
        train.parse_config(["--report_n", "1"])
