"""train.py end to end on the toy world (tiny preset): parameters that must train do, frozen ones never move,
resume is bit-exact, two gloo processes stay bit-identical, bad data is skipped and counted.

Run: pytest -q tests/test_train.py
"""
import dataclasses
import io
import inspect
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import backbones
import ckpt
import runtime
from perf import synthetic
import train
from data import write_tar

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(toy_cache, out_dir, *extra):
    method = extra[extra.index("--method") + 1] if "--method" in extra else "ranke"
    gan_now = ["--disc_start", "0"] if method in train.DECODER_METHODS else []   # a flag only methods with D take
    args = ["--toy_preset", "tiny", "--toy_cache", toy_cache, "--out_dir", str(out_dir), "--batch_prompts", "2",
            "--group_size", "4", *gan_now, "--sample_every", "0", "--device", "cpu", "--report_n", "0", *extra]
    cfg = train.parse_config(args)
    train.main(cfg)
    return cfg


def last_ckpt(out_dir):
    return torch.load(ckpt.list_ckpts(str(out_dir))[-1], map_location="cpu", weights_only=True)


def initial_models(toy_cache):
    from toy import world as toy_world
    b = toy_world.load_toy(toy_world.ToyConfig.tiny(), cache_dir=toy_cache, progress=False)
    return b.gpt.state_dict(), b.vq.state_dict()


DECODER_KEYS = ("decoder.", "post_quant_conv.")
FROZEN_VQ_KEYS = ("encoder.", "quant_conv.", "quantize.embedding")


@pytest.mark.slow
def test_short_ranke_run_trains_what_it_should(toy_cache, tmp_path):
    run(toy_cache, tmp_path, "--steps", "4", "--ckpt_every", "3", "--sample_every", "3")
    # checkpoints at every 3rd step and at the last; a grid of the step's first min(B, 4) = 2 prompts x G = 4
    # rollouts at every 3rd step, with their 2 captions beside it
    assert [os.path.basename(p) for p in ckpt.list_ckpts(str(tmp_path))] == ["ckpt_0000003.pt", "ckpt_0000004.pt"]
    ck = last_ckpt(tmp_path)
    from PIL import Image
    assert sorted(p.name for p in tmp_path.glob("samples_*")) == ["samples_0000003.png", "samples_0000003.txt"]
    S = ck["config"]["image_size"]
    grid = np.asarray(Image.open(tmp_path / "samples_0000003.png"))
    assert grid.shape == (2 * S, 4 * S, 3) and grid.std() > 0
    assert len([c for c in (tmp_path / "samples_0000003.txt").read_text().splitlines() if c.strip()]) == 2
    gpt0, vq0 = initial_models(toy_cache)
    for k, v in gpt0.items():
        if k.endswith("uncond_embedding"):     # a buffer: the CFG null caption never trains
            assert torch.equal(ck["gpt"][k], v)
        else:
            assert not torch.equal(ck["gpt"][k], v), f"policy parameter {k} did not change"
        assert torch.equal(ck["ref_gpt"][k].float(), v.float()), f"reference {k} moved"
    for k, v in vq0.items():
        if k.startswith(DECODER_KEYS) and v.is_floating_point():
            assert not torch.equal(ck["vq"][k], v), f"decoder parameter {k} did not change"
        if k.startswith(FROZEN_VQ_KEYS):
            assert torch.equal(ck["vq"][k], v), f"frozen tokenizer part {k} changed"
    lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    assert len(lines) == 4
    # the toy evaluation reads the run's checkpoint and config back (toy/eval.py --ckpt)
    import math
    from toy import eval as toy_eval
    row = toy_eval.evaluate_toy_checkpoint(ckpt.list_ckpts(str(tmp_path))[-1], n=8)
    assert row["step"] == 4 and all(math.isfinite(row[k]) for k in toy_eval.TOY_COLUMNS)
    assert 0.0 <= row["check_train"] <= 1.0 and row["fid"] >= 0.0
    # same policy, same seed, base decoder: identical tokens (same LCS KL), different pixels (the decoder trained)
    row_base = toy_eval.evaluate_toy_checkpoint(ckpt.list_ckpts(str(tmp_path))[-1], n=8, decoder="base")
    assert row_base["lcs_kl"] == row["lcs_kl"] and row_base["fid"] != row["fid"]
    with pytest.raises(ValueError, match="decoder="):
        toy_eval.evaluate_toy_checkpoint(ckpt.list_ckpts(str(tmp_path))[-1], n=8, decoder="frozen")
    for key in ("reward/mean", "policy/kl", "policy/clip_frac", "decoder/total", "grad_norm/decoder",
                "disc/loss", "rank/tau", "step_time_s", "rollout_img_per_s", "peak_mem_gb"):
        assert any(key in l for l in lines), f"{key} missing from metrics.jsonl"


@pytest.mark.slow
@pytest.mark.parametrize("method,frozen,trained", [
    ("grpo", "vq", "gpt"),        # standard RL: the tokenizer (decoder included) never changes
    ("vapi", "vq", "gpt"),        # VA-pi: decoder frozen, policy trained
    ("decoder", "gpt", "vq"),     # decoder-only: the policy never changes
])
def test_method_switch_trains_only_its_part(toy_cache, tmp_path, method, frozen, trained):
    run(toy_cache, tmp_path, "--steps", "2", "--ckpt_every", "2", "--method", method)
    ck = last_ckpt(tmp_path)
    start = dict(zip(("gpt", "vq"), initial_models(toy_cache)))
    for k, v in start[frozen].items():
        assert torch.equal(ck[frozen][k], v), f"--method {method} changed {frozen} entry {k}"
    moved = [k for k, v in start[trained].items() if v.is_floating_point() and not torch.equal(ck[trained][k], v)]
    expect = [k for k in start[trained] if start[trained][k].is_floating_point() and
              (trained == "gpt" and not k.endswith("uncond_embedding") or k.startswith(DECODER_KEYS))]
    assert sorted(moved) == sorted(expect), f"--method {method}: {trained} entries moved {set(moved) ^ set(expect)}"


@pytest.mark.slow
def test_resume_is_bit_identical(toy_cache, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run(toy_cache, a, "--steps", "4", "--ckpt_every", "2")
    run(toy_cache, b, "--steps", "3", "--ckpt_every", "2")
    os.remove(b / "ckpt_0000003.pt")             # cut after step 3 was logged, before its checkpoint was written
    run(toy_cache, b, "--steps", "4", "--ckpt_every", "2", "--resume")
    # every step logged once, in order, with the numbers of the uninterrupted run (step 3 again from step 2)
    la, lb = ([json.loads(l) for l in open(d / "metrics.jsonl")] for d in (a, b))
    assert [l["step"] for l in lb] == [1, 2, 3, 4]
    assert [l["reward/mean"] for l in la] == [l["reward/mean"] for l in lb]
    # a resume with flags of another run is refused, nothing loaded (here: a new learning rate)
    with pytest.raises(SystemExit, match="lr_gpt"):
        run(toy_cache, b, "--steps", "6", "--ckpt_every", "2", "--resume", "--lr_gpt", "0.5")
    ca, cb = last_ckpt(a), last_ckpt(b)
    assert ca["step"] == cb["step"] == 4
    for part in ("gpt", "vq", "disc", "ema_gpt", "ema_vq"):
        for k in ca[part]:
            assert torch.equal(ca[part][k], cb[part][k]), f"resume diverged at {part}.{k}"
    # the reward's text cache travels too (rewards.ClipReward.cache_state: without it a prompt seen before the
    # cut is re-encoded in another batch after it, and the rewards differ in the last bits from then on)
    qa, qb = ca["rank_state"][0]["reward_cache"], cb["rank_state"][0]["reward_cache"]
    assert qa["prompts"] == qb["prompts"] and len(qa["prompts"]) > 0
    assert torch.equal(qa["features"], qb["features"])


@pytest.mark.slow
def test_truncated_checkpoint_falls_back_to_previous(toy_cache, tmp_path, capsys):
    run(toy_cache, tmp_path, "--steps", "2", "--ckpt_every", "1", "--keep_ckpts", "2")
    newest = ckpt.list_ckpts(str(tmp_path))[-1]
    data = open(newest, "rb").read()
    open(newest, "wb").write(data[: len(data) // 2])            # a kill mid-copy, say
    ck, path = ckpt.load_latest_ckpt(str(tmp_path))
    assert ck["step"] == 1 and path != newest
    assert "unreadable" in capsys.readouterr().err


@pytest.mark.slow
def test_bad_data_is_skipped_and_counted(toy_cache, tmp_path):
    from toy import world as toy_world
    from PIL import Image
    world = toy_world.ToyWorld(toy_world.ToyConfig.tiny())
    imgs, caps = world.sample(4, torch.Generator().manual_seed(0))
    samples = []
    for i, (x, c) in enumerate(zip(imgs, caps)):
        buf = io.BytesIO()
        Image.fromarray(((x.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()).save(buf, format="PNG")
        samples.append((f"s{i}", buf.getvalue(), c))
    samples.append(("corrupt", b"\x89PNG broken", "a red circle"))
    samples.append(("nocap", samples[0][1], "  "))
    tar = str(tmp_path / "pairs.tar")
    write_tar(tar, samples)
    out = tmp_path / "run"
    run(toy_cache, out, "--steps", "2", "--ckpt_every", "2", "--data", tar, "--image_size", "32")
    last = [json.loads(l) for l in open(out / "metrics.jsonl")][-1]
    assert last["data/skipped_bad_image"] == 1 and last["data/skipped_empty_caption"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["tiny", "janus_pro_1b"])
def test_two_process_gloo_ranks_stay_identical(toy_cache, tiny_janus, tmp_path, backbone):
    # runtime.save_checkpoint() all-gathers a sha1 of every rank's policy, tokenizer and discriminator and raises on
    # mismatch; checkpointing every step makes that check run after each step. Janus: with --grad_accum 2 as well.
    extra = ["--backbone", "janus_pro_1b", "--janus_config", "tiny", "--janus_ckpt", tiny_janus[0], "--janus_tokenizer",
             tiny_janus[1], "--image_size", "32", "--grad_accum", "2", "--batch_prompts", "1"] \
        if backbone == "janus_pro_1b" else []
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={29517 if backbone == 'tiny' else 29527}",
           os.path.join(ROOT, "train.py"), "--toy_preset", "tiny", "--toy_cache", toy_cache, "--out_dir",
           str(tmp_path), "--batch_prompts", "2", "--group_size", "4", "--disc_start", "0", "--sample_every", "0",
           "--steps", "2", "--ckpt_every", "1", "--device", "cpu", "--report_n", "0", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ck = last_ckpt(tmp_path)
    assert ck["world_size"] == 2 and ck["step"] == 2
    fps = [s["fingerprint"] for s in ck["rank_state"]]
    assert fps[0] == fps[1]
    # the two ranks drew different data and rollouts (seed + rank)
    assert not torch.equal(ck["rank_state"][0]["gen"], ck["rank_state"][1]["gen"])


def test_dry_run_llamagen_xl_counts(capsys):
    cfg = train.parse_config(["--backbone", "llamagen_xl", "--dry_run"])
    assert cfg.preset == "llamagen_xl_clip" and cfg.lr_gpt == 1e-6 and cfg.cfg_scale == 6.0
    est = synthetic.dry_run(cfg)
    out = capsys.readouterr().out
    assert "777,678,080" in out and "42,452,099" in out      # policy; decoder + post_quant_conv (docs/method.md §6)
    assert sum(est.values()) > 20 * 1024 ** 3
    hps = synthetic.dry_run(train.parse_config(["--backbone", "llamagen_xl", "--reward", "hpsv2", "--dry_run"]))
    row = lambda e, name: next(v for k, v in e.items() if k.startswith(name))   # noqa: E731
    assert row(hps, "reward ") - row(est, "reward ") == 4 * (986_109_441 - 427_616_513)   # ViT-H-14, not ViT-L-14
    assert row(hps, "decoder/disc steps:") > row(est, "decoder/disc steps:") > 0   # the loss networks count


@pytest.mark.slow
def test_policy_ema_counts_adamw_steps_and_decoder_runs_skip_log_probs(toy_cache, tmp_path, monkeypatch):
    # §4.7: the policy EMA follows every --ema_gpt_every-th policy AdamW step, and --ppo_epochs 2 makes two per
    # iteration (the released trainer counts them inside its epoch loop): 3 iterations x 2 epochs / 2 = 3 pulls
    import policy
    import ranke
    pulls, ema = [], ranke.ema_update
    monkeypatch.setattr(ranke, "ema_update", lambda target, *a: pulls.append(type(target).__name__) or
                        ema(target, *a))
    graphs, rollout = [], train.rollout      # the rollout's log-probs (old and reference) carry no autograd graph
    monkeypatch.setattr(train, "rollout", lambda cfg, bb, m, b, *a: [rollout(cfg, bb, m, b, *a), graphs.append(
        (b.logp_old.requires_grad, b.logp_ref.requires_grad))][0])
    run(toy_cache, tmp_path / "g", "--method", "grpo", "--steps", "3", "--ppo_epochs", "2", "--clip_eps", "0.2",
        "--ema_gpt_every", "2")
    assert pulls == ["GPT"] * 3 and graphs == [(False, False)] * 3
    monkeypatch.setattr(train, "rollout", rollout)
    # --method decoder trains no policy: its rollouts need no reference (or old) log-probs
    calls, logprobs = [], policy.token_logprobs
    monkeypatch.setattr(policy, "token_logprobs", lambda *a, **k: calls.append(1) or logprobs(*a, **k))
    run(toy_cache, tmp_path / "d", "--method", "decoder", "--steps", "1")
    assert calls == []
    seeds, rollout = [], train.rollout                        # and the rollout stream of rank 0 is seeded --seed + 1
    monkeypatch.setattr(train, "rollout", lambda cfg, bb, m, b, gen, ac: seeds.append(gen.initial_seed()) or
                        rollout(cfg, bb, m, b, gen, ac))
    run(toy_cache, tmp_path / "r", "--method", "ranke", "--steps", "1", "--seed", "5")
    assert len(calls) == 2 and seeds == [6]                   # the reference forward and the policy step's own


def test_out_of_range_schedule_and_clip_values_exit_at_parse_time():
    for flags, name in ((["--rank_k", "8", "--tau_frac", "0"], "--tau_frac"),
                        (["--ppo_epochs", "2", "--clip_eps", "0"], "--clip_eps"),
                        (["--cfg_scale", "0.5"], "--cfg_scale"),              # released samplers guide only above 1
                        (["--backbone", "janus_pro_1b", "--method", "vapi"], "AlexNet LPIPS"),    # not built
                        (["--logp_cfg", "guided", "--temperature", "0.7"], "temperature-1 guided logits")):
        with pytest.raises(SystemExit, match=name):
            train.parse_config(flags)
    assert train.parse_config(["--logp_cfg", "guided"]).logp_cfg == "guided"          # at temperature 1: allowed


def test_config_flags_and_presets():
    cfg = train.parse_config(["--method", "decoder", "--rank_k", "8", "--bf16", "false"])
    assert cfg.method == "decoder" and cfg.rank_k == 8 and cfg.bf16 is False
    for flag in ("--method", "--logger", "--device"):      # allowed values: the Literal of the field
        with pytest.raises(SystemExit):
            train.parse_config([flag, "nonsense"])
    with pytest.raises(SystemExit):
        train.parse_config(["--rank_k", "9"])
    with pytest.raises(SystemExit, match="--preset 'nonsense': choose one of .*'tiny'"):
        train.parse_config(["--preset", "nonsense"])
    assert train.parse_config(["--grad_ckpt"]).grad_ckpt is True                # a bare boolean flag: true
    for flags, name in ((["--rank_k", "0"], "--rank_k 0"), (["--report_n", "-1"], "--report_n -1"),
                        (["--report_n", "1"], "--report_n 1"), (["--report_n", "2"], "--report_n 2")):
        with pytest.raises(SystemExit, match=name):
            train.parse_config(flags)
    assert [train.parse_config(["--report_n", n]).report_n for n in ("0", "3")] == [0, 3]   # off, or KID's minimum


@pytest.mark.parametrize("backbone,preset,lambda_reward,beta,total_steps,steps", [
    ("llamagen_xl", "llamagen_xl_hps", 0.1, 0.05, 2340, 2000), ("janus_pro_1b", "janus_pro_1b_hps", 0.05, 0.01, 2340, 3000)])
def test_reward_picks_the_backbones_hps_preset(backbone, preset, lambda_reward, beta, total_steps, steps):
    # --reward hpsv2 is the HPS run of that backbone (docs/method.md §8), not the CLIP preset with another reward
    cfg = train.parse_config(["--backbone", backbone, "--reward", "hpsv2"])
    assert (cfg.preset, cfg.reward, cfg.lambda_reward, cfg.beta_kl, cfg.total_steps, cfg.steps) == \
        (preset, "hpsv2", lambda_reward, beta, total_steps, steps)
    assert {k: getattr(cfg, k) for k in train.PRESETS[preset]} == train.PRESETS[preset]
    assert train.parse_config(["--backbone", backbone]).preset == preset.replace("_hps", "_clip")
    assert train.parse_config(["--backbone", "llamagen_xl", "--method", "vapi"]).preset == "llamagen_xl_vapi"
    # a preset given with the reward / backbone / method of another run is refused, naming the matching preset
    for argv, right in ((["--preset", preset.replace("_hps", "_clip"), "--reward", "hpsv2"], preset),
                        (["--preset", preset, "--reward", "clip"], preset.replace("_hps", "_clip")),
                        (["--preset", "tiny", "--backbone", backbone], preset.replace("_hps", "_clip")),
                        (["--preset", "llamagen_xl_vapi", "--method", "ranke"], "llamagen_xl_clip")):
        with pytest.raises(SystemExit, match=f"use --preset {right}"):
            train.parse_config(argv)
    # the baselines of a released run keep its preset
    assert train.parse_config(["--preset", preset, "--method", "grpo"]).beta_kl == beta


def test_flags_that_would_do_nothing_are_refused():
    def refused(*argv):
        with pytest.raises(SystemExit) as e:
            train.parse_config(list(argv))
        return str(e.value)
    # the image side follows from the backbone: only that value is accepted, and the config carries it
    assert "--image_size 31" in refused("--image_size", "31") and "32 px" in refused("--image_size", "31")
    assert train.parse_config(["--image_size", "32"]).image_size == 32
    assert train.parse_config(["--backbone", "janus_pro_1b"]).image_size == 384
    assert train.parse_config(["--backbone", "llamagen_xl", "--synthetic", "tiny"]).image_size == 64
    assert "follows from the backbone" in refused("--backbone", "janus_pro_1b", "--janus_config", "tiny",
                                                  "--image_size", "384")
    # method-specific flags with another method, each named with what it acts on; every one in one message
    msg = refused("--method", "grpo", "--rank_k", "2", "--lambda_reward", "0.5", "--vapi_xi", "0.1")
    assert all(f in msg for f in ("--rank_k 2", "--lambda_reward 0.5", "--vapi_xi 0.1", "--method grpo"))
    assert "decoder and discriminator steps" in msg and "Drop --rank_k" in msg
    assert "--cfg_scale 2.0" in refused("--method", "vapi", "--cfg_scale", "2")
    assert "--lr_gpt" in refused("--method", "decoder", "--lr_gpt", "1e-3")
    assert "--kl_estimator k3" in refused("--method", "vapi", "--kl_estimator", "k3")       # VA-pi's KL is k3 always
    assert "--clip_eps 0.3" in refused("--clip_eps", "0.3")                                # one epoch: rho == 1
    assert "--tau_start 2.0" in refused("--tau_start", "2") and "--total_steps 50" in refused("--total_steps", "50")
    assert "--kl_ref ema" in refused("--beta_kl", "0", "--kl_ref", "ema")
    # backbone / world flags outside their backbone or world
    assert "--reward hpsv2" in refused("--reward", "hpsv2")                              # the toy world's own reward
    assert "--gpt_ckpt" in refused("--backbone", "janus_pro_1b", "--gpt_ckpt", "g.pt")
    assert "--janus_config tiny" in refused("--janus_config", "tiny")
    assert "--toy_preset tiny" in refused("--backbone", "llamagen_xl", "--synthetic", "tiny", "--toy_preset", "tiny")
    assert "--report_n 8" in refused("--backbone", "janus_pro_1b", "--janus_config", "tiny", "--report_n", "8")
    assert "--hps_path" in refused("--backbone", "llamagen_xl", "--data", "x.tar", "--hps_path", "h.pt")
    assert "--lpips_vgg" in refused("--backbone", "llamagen_xl", "--data", "x.tar", "--method", "grpo",
                                    "--lpips_vgg", "v.pth")
    # accepted: the flag acts, restates the run's own value, or switches off what the run does not do
    for argv in (["--ppo_epochs", "2", "--clip_eps", "0.3"], ["--rank_k", "8", "--tau_start", "2", "--total_steps", "9"],
                 ["--method", "grpo", "--disc_start", "30", "--total_steps", "300"], ["--method", "vapi",
                 "--sample_every", "0", "--vapi_xi", "0.1"], ["--backbone", "janus_pro_1b", "--report_n", "0"],
                 ["--backbone", "llamagen_xl", "--data", "x.tar", "--reward", "hpsv2", "--hps_path", "h.pt"],
                 ["--preset", "llamagen_xl_clip", "--method", "grpo", "--lr_decoder", "1e-5"]):
        train.parse_config(argv)


@pytest.mark.slow
def test_disc_weight_reaches_all_three_terms(toy_cache, tmp_path, monkeypatch):
    # --disc_weight scales the D hinge, the Rank-GAN term and the adaptive GAN weight (docs/method.md §5.2, §6)
    import ranke
    seen = {}
    for name in ("disc_hinge_loss", "rank_gan_loss", "adaptive_gan_weight"):
        fn = getattr(ranke, name)

        def spy(*a, _fn=fn, _name=name, **k):
            out = _fn(*a, **k)
            bound = inspect.signature(_fn).bind(*a, **k)
            bound.apply_defaults()
            seen.setdefault(_name, set()).add(bound.arguments.get("disc_weight", bound.arguments.get("disc_factor")))
            return out
        monkeypatch.setattr(ranke, name, spy)
    run(toy_cache, tmp_path, "--steps", "1", "--ckpt_every", "1", "--disc_weight", "0.3")
    assert seen == {"disc_hinge_loss": {0.3}, "rank_gan_loss": {0.3}, "adaptive_gan_weight": {0.3}}
    # and it changes the adaptive weight itself: same gradients, weight proportional to disc_weight
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    layer = torch.nn.Conv2d(3, 3, 1)
    x_rec = layer(x)
    d = x_rec.mean(1, keepdim=True)
    dist = lambda a, b: (a - b).pow(2).flatten(1).mean(1)  # noqa: E731
    w = [ranke.gt_recon_loss(x, x_rec, d, layer.weight, dist, use_gan=True, disc_weight=dw)[1]["adaptive_weight"]
         for dw in (0.5, 0.3)]
    assert w[1] == pytest.approx(w[0] * 0.3 / 0.5, rel=1e-6) and w[0] > 0


@pytest.mark.slow
def test_bad_flags_exit_nonzero_naming_each_flag(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    res = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--batch_prompts", "0", "--steps", "-3"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "--batch_prompts 0" in res.stderr and "--steps -3" in res.stderr
    with pytest.raises(SystemExit, match="--out_dir .*is a file"):
        train.main(train.parse_config(["--toy_preset", "tiny", "--out_dir", str(a_file)]))
    assert a_file.read_text() == "x"                                 # nothing was lost


def test_bad_paths_are_all_reported_before_anything_loads(tmp_path):
    t0 = time.time()
    argv = ["--backbone", "llamagen_xl", "--data", str(tmp_path / "missing.tar"), "--gpt_ckpt", str(tmp_path / "g.pt"),
            "--vq_ckpt", "hf://nobody/nothing/vq.pt", "--t5_path", str(tmp_path / "no_t5"),
            "--clip_path", str(tmp_path / "clip.pt"), "--lpips_vgg", str(tmp_path / "vgg.pth")]
    with pytest.raises(SystemExit) as e:
        train.main(train.parse_config(argv))
    msg = str(e.value)
    for flag in ("--data", "--gpt_ckpt", "--vq_ckpt", "--t5_path", "--clip_path", "--lpips_vgg"):
        assert flag in msg, f"{flag} not named in:\n{msg}"
    assert time.time() - t0 < 30


def test_main_logs_the_whole_config_and_builds_the_models_under_the_run_seed(tmp_path, monkeypatch, capsys):
    """Before any model is built, main prints the whole config (the JSON of asdict(cfg)) and the torch thread count,
    and seeds the global generator with --seed, so a random-init backbone (--synthetic, the tiny Janus) starts from
    the same weights on every rank and differs between seeds. Checked at the moment build_backbone is called."""
    class Built(Exception):
        pass
    seen = {}

    def build_backbone(cfg, device, rank):
        seen.update(seed=torch.initial_seed(), draw=torch.rand(3), rank=rank)
        raise Built
    monkeypatch.setattr(backbones, "build_backbone", build_backbone)
    draws = []
    for seed in (123, 123, 7):
        cfg = train.parse_config(["--toy_preset", "tiny", "--seed", str(seed), "--out_dir", str(tmp_path / "r")])
        with torch.random.fork_rng(), pytest.raises(Built):
            train.main(cfg)
        out = capsys.readouterr().out
        printed, end = json.JSONDecoder().raw_decode(out)
        assert printed == json.loads(json.dumps(dataclasses.asdict(cfg)))
        assert out[end:].strip().startswith(f"{torch.get_num_threads()} torch threads")
        assert seen["seed"] == seed and seen["rank"] == 0
        draws.append(seen["draw"])
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


def test_a_transformers_layout_clip_file_is_a_bad_path_at_start_up(tmp_path):
    """--clip_path holding the released reward's transformers CLIPModel file is listed by check_paths with the fix
    (it used to pass the check and fail at the first reward call, after the policy had loaded)."""
    hf = tmp_path / "pytorch_model.bin"
    torch.save({"vision_model.post_layernorm.weight": torch.zeros(2)}, hf)
    cfg = train.parse_config(["--backbone", "llamagen_xl", "--clip_path", str(hf), "--data", str(tmp_path / "d.tar"),
                              "--out_dir", str(tmp_path / "r")])
    assert any(b.startswith("--clip_path: ") and "transformers CLIPModel file" in b for b in backbones.check_paths(cfg))


def test_the_hub_is_probed_only_when_a_path_names_it(tmp_path, monkeypatch):
    """check_paths probes the network (ckpt.offline_if_unreachable) only when a path of the run names the hub:
    the defaults (hf:// files, hub ids, --clip_path "") do; a run on local files only does not (no '[hub] cannot
    reach' line and no 3 s probe on an offline cluster)."""
    probes = []
    monkeypatch.setattr(backbones.ckpt, "offline_if_unreachable", lambda: probes.append(1) or True)
    base = ["--backbone", "llamagen_xl", "--data", str(tmp_path / "d.tar"), "--out_dir", str(tmp_path / "r")]
    cfg = train.parse_config(base)
    assert backbones.hub_values(cfg) == ["--gpt_ckpt", "--vq_ckpt", "--t5_path", "--clip_path"]
    backbones.check_paths(cfg)
    assert probes                                          # (ckpt.resolve asks again per hf:// file: one probe)
    probes.clear()
    for name in ("g.pt", "v.pt", "clip.pt", "vgg.pth", "lin.pth"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "t5").mkdir()
    local = train.parse_config(base + ["--gpt_ckpt", str(tmp_path / "g.pt"), "--vq_ckpt", str(tmp_path / "v.pt"),
                                       "--t5_path", str(tmp_path / "t5"), "--clip_path", str(tmp_path / "clip.pt"),
                                       "--lpips_vgg", str(tmp_path / "vgg.pth"),
                                       "--lpips_lin", str(tmp_path / "lin.pth")])
    assert backbones.hub_values(local) == []
    backbones.check_paths(local)
    assert probes == []
    hps = train.parse_config(base + ["--reward", "hpsv2"])
    assert backbones.hub_values(hps)[-1] == "--hps_path"


def test_check_paths_names_exactly_the_paths_each_run_reads(tmp_path, monkeypatch):
    """backbones.check_paths by kind of run (quick; only the slow end-to-end runs reached most branches): the toy reads
    no path flag (its defaults name uncached hub files, so a check would fail); --synthetic reads none and says what
    it cannot combine with; a 384 / 256-px backbone without --data is told it needs pairs; Janus's files, not
    LlamaGen's; VA-pi (reconstruction reward) no reward file; standard RL (no decoder step) no LPIPS."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))             # no LPIPS weights cached here
    (tmp_path / "d").mkdir()
    (tmp_path / "run").mkdir()                                              # an existing --out_dir is fine
    (tmp_path / "f").write_text("x")
    t, out = str(tmp_path), ["--out_dir", str(tmp_path / "run")]

    def flags(argv, **edit):
        cfg = train.parse_config(argv + out)
        return [b.split(" ")[0].rstrip(":") for b in backbones.check_paths(dataclasses.replace(cfg, **edit))]
    janus_files = ["--janus_ckpt", f"{t}/j.bin", "--janus_tokenizer", f"{t}/tok"]
    llamagen_files = ["--data", f"{t}/d", "--gpt_ckpt", f"{t}/g.pt", "--vq_ckpt", f"{t}/v.pt", "--t5_path", f"{t}/t5"]
    assert flags(["--toy_preset", "tiny"]) == []
    assert flags(["--toy_preset", "tiny", "--toy_cache", f"{t}/f"]) == ["--toy_cache"]
    assert flags(["--backbone", "llamagen_xl", "--synthetic", "tiny"]) == []
    assert flags(["--backbone", "llamagen_xl", "--synthetic", "tiny"], backbone="tiny", data=t) == ["--synthetic",
                                                                                                    "--data"]
    assert flags(["--backbone", "janus_pro_1b", *janus_files]) == ["--data", "--janus_ckpt", "--janus_tokenizer"]
    assert flags(["--backbone", "janus_pro_1b", "--janus_config", "tiny", *janus_files]) == ["--janus_ckpt",
                                                                                            "--janus_tokenizer"]
    assert flags(["--backbone", "llamagen_xl"])[0] == "--data"                    # 256 px, no pairs given
    assert flags(["--backbone", "llamagen_xl", "--method", "vapi", *llamagen_files]) == [
        "--data", "--lpips_vgg", "--lpips_lin", "--gpt_ckpt", "--vq_ckpt", "--t5_path"]
    assert flags(["--backbone", "llamagen_xl", "--method", "grpo", *llamagen_files, "--clip_path", f"{t}/c.pt"]) == [
        "--data", "--clip_path", "--gpt_ckpt", "--vq_ckpt", "--t5_path"]
    # which runs read real (image, caption) pairs; a VA-pi run on local files names no hub path (it has no reward)
    kinds = {"toy": ["--toy_preset", "tiny"], "synthetic": ["--backbone", "llamagen_xl", "--synthetic", "tiny"],
             "data": ["--backbone", "llamagen_xl", *llamagen_files]}
    assert {k: backbones.real_data(train.parse_config(v + out)) for k, v in kinds.items()} == {
        "toy": False, "synthetic": False, "data": True}
    vapi_local = train.parse_config(["--backbone", "llamagen_xl", "--method", "vapi", *llamagen_files] + out)
    assert backbones.hub_values(vapi_local) == []


def test_hub_folder_flags_take_a_local_folder_or_a_cached_hub_id(tmp_path, monkeypatch):
    """--t5_path / --janus_tokenizer (backbones.check_hub_folder): a local folder; an owner/name id whose probe file is
    in the Hugging Face cache; offline and not cached, the `hf download` line; anything else, "no such folder"."""
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "hub" / "models--google--flan-t5-xl"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "config.json").write_text("{}")
    check = lambda value: backbones.check_hub_folder("--t5_path", value, "config.json", "google/flan-t5-xl")  # noqa
    assert check(str(tmp_path)) is None and check("google/flan-t5-xl") is None
    assert "hf download google/flan-t5-large --local-dir DIR" in check("google/flan-t5-large")
    assert check(f"{tmp_path}/t5").endswith("no such folder; pass the folder with the Hugging Face files of "
                                            "google/flan-t5-xl")
    assert "no such folder" in check("./flan-t5-xl")                 # a relative path is not a hub id


def test_data_value_is_checked_before_anything_loads(tmp_path):
    """A --data value PairDataset would refuse (not a tar, an empty comma part) is named by check_paths, before any
    model loads (it accepted any existing path and skipped empty parts: the error came after T5 / GPT-XL loaded)."""
    (tmp_path / "junk.tar").write_bytes(b"not a tar file" * 50)
    for value, why in ((str(tmp_path / "junk.tar"), "not a tar archive"), (f"{tmp_path}/junk.tar,", "empty comma")):
        cfg = train.parse_config(["--data", value, "--image_size", "32", "--out_dir", str(tmp_path / "run")])
        assert any(b.startswith("--data ") and why in b for b in backbones.check_paths(cfg))


@pytest.fixture(scope="module")
def tiny_janus(tmp_path_factory):
    from janus_fixtures import write_tiny_janus
    return write_tiny_janus(tmp_path_factory.mktemp("janus"))


def _steps_1_2(cfg, bb, m, G, autocast):
    """The next micro-batch of bb's stream as train.main prepares it: Batch, rollout (generator seed 0), rewards and
    advantages, and the frozen encoder's z_gt."""
    x_gt, captions = bb.stream.next()
    cond, mask = bb.text_encoder(captions)
    b = train.Batch(x_gt, cond, mask, cond.repeat_interleave(G, 0), mask.repeat_interleave(G, 0),
                    [c for c in captions for _ in range(G)])
    train.rollout(cfg, bb, m, b, torch.Generator().manual_seed(0), autocast)
    train.score_rollouts(cfg, bb, m, b)
    with torch.no_grad():
        b.z_gt = m.vq.codebook_lookup(m.vq.encode_indices(b.x_gt))
    return b


def split_batch(b, parts, G):
    """A micro-batch of B prompts -> `parts` micro-batches of B / parts prompts (the same rollouts)."""
    B = b.x_gt.shape[0]
    out = []
    for i in range(parts):
        p, g = slice(i * B // parts, (i + 1) * B // parts), slice(i * B * G // parts, (i + 1) * B * G // parts)
        out.append(train.Batch(b.x_gt[p], b.cond[p], b.mask[p], b.cond_g[g], b.mask_g[g], b.prompts_g[g],
                               b.tokens[g], None if b.logp_old is None else b.logp_old[g], b.logp_ref[g], b.r[g],
                               b.adv[g], b.z_gt[p]))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["tiny", "janus_pro_1b"])
def test_grad_accum_gives_the_full_batch_update(toy_cache, tiny_janus, monkeypatch, backbone):
    # --grad_accum 2 with half the prompts per micro-batch == one micro-batch of all prompts: same rollouts in, the
    # same policy and decoder gradients at the optimizer step (float tolerance; after AdamW's first step, whose
    # update is ~lr * sign(g), rounding-level differences of near-zero gradients would show as +-lr flips).
    # GAN off (before disc_start): D's BatchNorm statistics and the adaptive GAN weight are per micro-batch by
    # nature, as in any gradient accumulation.
    G = 4
    janus_flags = ["--backbone", "janus_pro_1b", "--janus_config", "tiny", "--janus_ckpt", tiny_janus[0],
                   "--janus_tokenizer", tiny_janus[1], "--image_size", "32"] if backbone == "janus_pro_1b" else []
    cfg = train.parse_config(["--toy_preset", "tiny", "--toy_cache", toy_cache, "--batch_prompts", "4", "--group_size",
                              str(G), "--rank_k", "2", "--disc_start", "100", "--device", "cpu", *janus_flags])
    autocast = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731
    step_fn, grads = train.optimizer_step, []

    def recording_step(opt, world, clip):
        grads.append([p.grad.clone() for g in opt.param_groups for p in g["params"] if p.grad is not None])
        return step_fn(opt, world, clip)
    monkeypatch.setattr(train, "optimizer_step", recording_step)
    tokens = []
    for parts in (1, 2):
        torch.manual_seed(cfg.seed)
        bb = train.seam(cfg).build_backbone(cfg, torch.device("cpu"), 0)
        m = train.build_models(cfg, bb, torch.device("cpu"))
        b = _steps_1_2(cfg, bb, m, G, autocast)
        batches = split_batch(b, parts, G) if parts > 1 else [b]
        train.policy_step(cfg, bb, m, batches, 0, 1, autocast)
        train.decoder_step(cfg, bb, m, batches, 0, 1, autocast)
        tokens.append(b.tokens)
    assert torch.equal(tokens[0], tokens[1])                                # the same rollouts went in
    (gpt1, dec1, gpt2, dec2) = grads
    assert len(gpt1) == len(gpt2) > 0 and len(dec1) == len(dec2) > 0
    for a, b in zip(gpt1 + dec1, gpt2 + dec2):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)
    assert sum(float(g.norm()) for g in gpt1) > 0 and sum(float(g.norm()) for g in dec1) > 0


@pytest.mark.slow
def test_grad_accum_runs_end_to_end(toy_cache, tmp_path, monkeypatch):
    per_call = []                                   # the stats steps 1-2 return, one dict per micro-batch
    for name in ("rollout", "score_rollouts"):
        monkeypatch.setattr(train, name, lambda *a, f=getattr(train, name): per_call.append(f(*a)) or per_call[-1])
    run(toy_cache, tmp_path, "--steps", "2", "--ckpt_every", "2", "--grad_accum", "2", "--batch_prompts", "1")
    lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    assert len(lines) == 2 and all("decoder/total" in l and "disc/loss" in l for l in lines)
    # a logged rollout / reward stat is the mean over the update's micro-batches (the reward curve of curves.png)
    assert len(per_call) == 2 * 2 * 2                                   # steps x micro-batches x (rollout, reward)
    for step, line in enumerate(lines):
        r1, s1, r2, s2 = per_call[4 * step: 4 * step + 4]               # rollout, reward; rollout, reward
        for k, (a, b) in {"rollout_img_per_s": (r1, r2), "reward/mean": (s1, s2), "reward/std": (s1, s2),
                          "adv/std": (s1, s2)}.items():
            assert line[k] == pytest.approx((a[k] + b[k]) / 2, rel=1e-12, abs=1e-12), k


def _rolled_out(toy_cache, moved_apart, G=4):
    """Steps 1-2 (rollout, reward) on one micro-batch of the tiny toy (B 2, G 4, rank_k 2, GAN on from step 0), fp32,
    the models built as train.main builds them. moved_apart: the online policy, the policy EMA, the online decoder
    and the decoder EMA first get each their own seeded perturbation, so that a step reading the wrong copy of a
    network shows (at step 0 all copies are equal)."""
    cfg = train.parse_config(["--toy_preset", "tiny", "--toy_cache", toy_cache, "--batch_prompts", "2", "--group_size",
                              str(G), "--rank_k", "2", "--disc_start", "0", "--device", "cpu"])
    autocast = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731
    torch.manual_seed(cfg.seed)
    bb = train.seam(cfg).build_backbone(cfg, torch.device("cpu"), 0)
    m = train.build_models(cfg, bb, torch.device("cpu"))
    if moved_apart:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for params in (m.gpt.parameters(), m.ema_gpt.parameters(), m.vq.decoder_parameters(),
                           m.ema_vq.decoder_parameters()):
                for p in params:
                    p.add_(0.1 * (p.abs().mean() + 1e-3) * torch.randn(p.shape, generator=g))
    return cfg, bb, m, _steps_1_2(cfg, bb, m, G, autocast), autocast


@pytest.mark.slow
def test_each_step_reads_the_copy_of_a_network_it_should(toy_cache, monkeypatch):
    """With the online and EMA copies apart (as after the first updates): rollouts come from the online policy, the
    KL anchor is the frozen reference (or the policy EMA with --kl_ref ema), the "old" log-probs of --ppo_epochs > 1
    the online policy's, the rollout reward is computed on the EMA decoder's images, and the decoder's consistency
    term pulls towards the EMA decoder's images (docs/method.md §4.2, §4.6, §5.2, D1, D3)."""
    import ranke
    cfg, bb, m, b, autocast = _rolled_out(toy_cache, moved_apart=True)
    G = cfg.group_size
    with torch.no_grad():
        draw = {k: bb.sample(getattr(m, k), b.cond_g, b.mask_g, cfg_scale=cfg.cfg_scale, temperature=cfg.temperature,
                             top_k=cfg.top_k, top_p=cfg.top_p, generator=torch.Generator().manual_seed(0))
                for k in ("gpt", "ref_gpt")}
        lp = {k: bb.logprobs(getattr(m, k), b.cond_g, b.mask_g, b.tokens, cfg_scale=1.0).float()
              for k in ("gpt", "ref_gpt", "ema_gpt")}
        r = {k: bb.reward_fn((getattr(m, k).decode_indices(b.tokens).float().clamp(-1, 1) + 1) / 2, b.prompts_g)[0]
             for k in ("vq", "ema_vq")}
    assert torch.equal(b.tokens, draw["gpt"]) and not torch.equal(draw["gpt"], draw["ref_gpt"])
    assert not torch.equal(lp["ref_gpt"], lp["gpt"]) and not torch.equal(lp["ref_gpt"], lp["ema_gpt"])
    assert torch.equal(b.logp_ref, lp["ref_gpt"]) and b.logp_old is None
    assert torch.equal(b.r, r["ema_vq"]) and not torch.equal(r["vq"], r["ema_vq"])
    cfg.kl_ref, cfg.ppo_epochs = "ema", 2
    train.rollout(cfg, bb, m, b, torch.Generator().manual_seed(0), autocast)
    assert torch.equal(b.logp_ref, lp["ema_gpt"]) and torch.equal(b.logp_old, lp["gpt"])
    # the consistency anchor of the decoder step: the EMA decoder's images of the selected rollouts
    tau, _ = ranke.tau_schedule(0, cfg.total_steps, cfg.tau_start, cfg.tau_end, cfg.tau_frac)
    idx = ranke.rank_weights(b.r.float(), G, cfg.rank_k, tau)[0]
    with torch.no_grad():
        x_ema, x_online = (v.decode_indices(b.tokens[idx]).float() for v in (m.ema_vq, m.vq))
    seen, consistency = [], ranke.consistency_loss
    monkeypatch.setattr(ranke, "consistency_loss",
                        lambda x, xe, dist: seen.append(xe.detach()) or consistency(x, xe, dist))
    train.decoder_step(cfg, bb, m, [b], 0, 1, autocast)
    assert len(seen) == 1 and torch.equal(seen[0], x_ema) and not torch.allclose(x_ema, x_online)


@pytest.mark.slow
def test_each_step_moves_only_its_own_network_and_leaves_no_gradients(toy_cache):
    """Policy, discriminator and decoder steps (in train.main's order, GAN on): each changes the parameters of its own
    network only, and leaves no .grad on any of the three (a gradient left over, e.g. the decoder's from the
    discriminator's fakes or D's from the decoder's GAN term, would be added into the next step); D trains again
    after the decoder step froze it."""
    cfg, bb, m, b, autocast = _rolled_out(toy_cache, moved_apart=False)
    nets = {"gpt": m.gpt, "vq": m.vq, "disc": m.disc}

    def moved(before):
        return {k for k, n in nets.items() if any(not torch.equal(p, q) for p, q in zip(n.parameters(), before[k]))}
    for own, step_fn in (("gpt", lambda: train.policy_step(cfg, bb, m, [b], 0, 1, autocast)),
                         ("disc", lambda: train.disc_step(cfg, m, [b], 1, autocast)),
                         ("vq", lambda: train.decoder_step(cfg, bb, m, [b], 0, 1, autocast))):
        before = {k: [p.detach().clone() for p in n.parameters()] for k, n in nets.items()}
        step_fn()
        assert moved(before) == {own}, f"the {own} step moved {moved(before)}"
        left = [k for k, n in nets.items() if any(p.grad is not None for p in n.parameters())]
        assert not left, f"the {own} step left gradients on {left}"
    assert all(p.requires_grad for p in m.disc.parameters())


@pytest.mark.slow
def test_first_policy_step_is_the_plain_policy_gradient_and_the_ema_follows_every_kth(toy_cache, monkeypatch):
    """At step 0 the online policy is the reference and the old policy: the step's own log-probs (same CFG scale as
    the rollout's reference ones) give KL 0 and ratio 1, so the gradient handed to the optimizer is that of
    -mean(A * logp) alone (docs/method.md §4.3-4.4). The policy EMA pulls itself towards the online policy after
    AdamW steps k, 2k, ... of --ema_gpt_every k, counted over PPO epochs too (§4.7)."""
    import ranke
    cfg, bb, m, b, autocast = _rolled_out(toy_cache, moved_apart=False)
    logp = bb.logprobs(m.gpt, b.cond_g, b.mask_g, b.tokens, cfg_scale=1.0).float()
    params = [p for p in m.gpt.parameters() if p.requires_grad]
    want = torch.autograd.grad(-(b.adv[:, None] * logp).mean(), params)
    step_fn, grads, pulls, ema = train.optimizer_step, [], [], ranke.ema_update

    def recording_step(opt, world, clip):
        grads.append([p.grad.clone() for p in params])
        return step_fn(opt, world, clip)
    monkeypatch.setattr(train, "optimizer_step", recording_step)
    monkeypatch.setattr(ranke, "ema_update", lambda target, src, decay: pulls.append(
        (len(grads), target is m.ema_gpt, src is m.gpt, decay)) or ema(target, src, decay))
    stats = train.policy_step(cfg, bb, m, [b], 0, 1, autocast)
    assert stats["policy/kl"] == 0.0 and stats["policy/ratio_mean"] == 1.0
    assert sum(float(g.norm()) for g in want) > 0
    for got, w in zip(grads[0], want):
        torch.testing.assert_close(got, w, rtol=1e-4, atol=1e-8)
    # steps 1-3 with 2 PPO epochs each: AdamW steps 3-8 of the run; every 3rd pulls the EMA: steps 3 and 6
    cfg.ppo_epochs, cfg.ema_gpt_every = 2, 3
    for step in range(1, 4):
        train.policy_step(cfg, bb, m, [b], step, 1, autocast)
    assert len(grads) == 7 and pulls == [(2, True, True, cfg.ema_gpt_decay), (5, True, True, cfg.ema_gpt_decay)]


@pytest.mark.slow
def test_vapi_step_gradient_is_the_hand_composed_loss(toy_cache, monkeypatch):
    """VA-pi's update (docs/method.md §12.2) composed by hand on the same generator state: the frozen encoder's GT
    tokens, the noisy context, position-wise samples from the detached logits, the reconstruction reward of the
    frozen decoder's unclamped fp32 images against the GT image repeated G times, group advantages, and
    -mean(A log p) + beta_KL mean k3(policy vs reference on the same noisy context) + beta_CE CE(logits, z_gt),
    averaged over the micro-batches: the gradient of one optimizer step; the decoder gets none."""
    import ranke
    import vapi
    G = 4
    cfg = train.parse_config(["--toy_preset", "tiny", "--toy_cache", toy_cache, "--method", "vapi", "--batch_prompts",
                              "2", "--group_size", str(G), "--vapi_kl", "0.3", "--device", "cpu"])
    autocast = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731
    torch.manual_seed(cfg.seed)
    bb = train.seam(cfg).build_backbone(cfg, torch.device("cpu"), 0)
    m = train.build_models(cfg, bb, torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():                     # the reference apart from the policy: the KL term has a gradient
        for p in m.ref_gpt.parameters():
            p.add_(0.1 * (p.abs().mean() + 1e-3) * torch.randn(p.shape, generator=g))
    batches = []
    for _ in range(2):
        x_gt, captions = bb.stream.next()
        batches.append(train.Batch(x_gt, *bb.text_encoder(captions), None, None, None))
    params = [p for p in m.gpt.parameters() if p.requires_grad]
    gen, gen_ref = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    loss, rewards = 0.0, []
    for b in batches:
        with torch.no_grad():
            z_gt = m.vq.encode_indices(b.x_gt)                                             # (B,N)
        z_in = vapi.noisy_context(z_gt, cfg.vapi_xi, m.vq.cfg.codebook_size, gen_ref)[0]
        logits = bb.logits(m.gpt, z_in, b.cond, b.mask).float()                            # (B,N,V)
        samples = vapi.positionwise_sample(logits.detach(), G, gen_ref)[0]                 # (B*G,N)
        with torch.no_grad():
            x_hat, x_rep = m.vq.decode_indices(samples).float(), b.x_gt.repeat_interleave(G, 0)
            r = -((x_hat - x_rep).pow(2).flatten(1).mean(1) + bb.perceptual(x_hat, x_rep).float())
            lp_ref = vapi.positionwise_logprobs(bb.logits(m.ref_gpt, z_in, b.cond, b.mask).float(), samples)
        logp = vapi.positionwise_logprobs(logits, samples)
        d = logp - lp_ref
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), z_gt.flatten())
        adv, _ = ranke.group_advantages(r, G)
        rewards.append(float(r.mean()))
        loss = loss + (-(adv[:, None] * logp).mean() + cfg.vapi_kl * (torch.exp(-d) + d - 1).mean()
                       + cfg.vapi_ce * ce) / len(batches)
    want = torch.autograd.grad(loss, params)
    step_fn, grads = train.optimizer_step, []

    def recording_step(opt, world, clip):
        grads.append([p.grad.clone() for p in params])
        return step_fn(opt, world, clip)
    monkeypatch.setattr(train, "optimizer_step", recording_step)
    stats = train.vapi_step(cfg, bb, m, batches, gen, 1, autocast)
    assert len(grads) == 1 and torch.equal(gen.get_state(), gen_ref.get_state())     # the same draws, one step
    assert sum(float(w.norm()) for w in want) > 0 and stats["vapi/kl"] > 0
    assert stats["reward/mean"] == pytest.approx(sum(rewards) / len(rewards), rel=1e-6)   # logged: micro-batch mean
    for got, w in zip(grads[0], want):
        torch.testing.assert_close(got, w, rtol=1e-4, atol=1e-8)
    assert all(p.grad is None for p in m.vq.parameters())


def test_optimizer_step_clips_only_with_a_positive_clip_and_clears_gradients():
    """optimizer_step: with clip > 0 the update uses the gradient scaled to norm <= clip and returns the norm before
    clipping; with clip 0 (the discriminator) the gradient is used as is; afterwards every .grad is None."""
    for clip in (1.0, 100.0, 0.0):
        lin = torch.nn.Linear(3, 2)
        opt = torch.optim.SGD(lin.parameters(), lr=1.0)
        g = torch.Generator().manual_seed(0)
        grads = [torch.randn(p.shape, generator=g) for p in lin.parameters()]
        for p, gr in zip(lin.parameters(), grads):
            p.grad = gr.clone()
        before = [p.detach().clone() for p in lin.parameters()]
        norm = torch.cat([gr.flatten() for gr in grads]).norm()
        out = train.optimizer_step(opt, 1, clip)
        scale = min(1.0, clip / float(norm)) if clip > 0 else 1.0
        assert out == pytest.approx(float(norm) if clip > 0 else 0.0, rel=1e-6)
        for p, q, gr in zip(lin.parameters(), before, grads):
            torch.testing.assert_close(q - p.detach(), gr * scale, rtol=1e-5, atol=1e-6)
            assert p.grad is None
    assert 1.0 / float(norm) < 1.0                               # the clip of 1.0 did bind


@pytest.mark.slow
def test_decoder_gradient_is_the_weighted_sum_of_its_four_terms(toy_cache, monkeypatch):
    """The decoder step's gradient (GAN on, D a fixed critic) is lambda_r * grad L_gt + lambda_g * grad L_rank-gan
    + lambda_c * grad L_consist + lambda_d * grad L_reward (docs/method.md §5.2), each term on its own images: L_gt on
    the online decoder's reconstruction of the frozen encoder's z_gt; the other three on the online decoder's clamped
    images of the top-K rollouts (selected by the rollout rewards) with their rank weights, the consistency against
    the EMA decoder's images, the reward on the images mapped to [0, 1] with their own prompts."""
    import ranke
    cfg, bb, m, b, autocast = _rolled_out(toy_cache, moved_apart=True)
    cfg.lambda_recon, cfg.lambda_gan, cfg.lambda_consist, cfg.lambda_reward = 1.5, 0.7, 2.0, 0.3   # tell them apart
    params = m.vq.decoder_parameters()
    tau, _ = ranke.tau_schedule(0, cfg.total_steps, cfg.tau_start, cfg.tau_end, cfg.tau_frac)
    idx, w, _ = ranke.rank_weights(b.r.float(), cfg.group_size, cfg.rank_k, tau)
    assert len(set(w.tolist())) > 1                                  # rank weights that differ: a dropped w shows
    m.disc.requires_grad_(False)
    x_rec = m.vq.decode(b.z_gt).float()
    x_sel = m.vq.decode_indices(b.tokens[idx]).float().clamp(-1, 1)
    with torch.no_grad():
        x_ema = m.ema_vq.decode_indices(b.tokens[idx]).float()
    scores = bb.reward_fn((x_sel + 1) / 2, [b.prompts_g[j] for j in idx.tolist()])[0].float()
    terms = [cfg.lambda_recon * ranke.gt_recon_loss(b.x_gt, x_rec, m.disc(x_rec).float(), m.vq.last_layer,
                                                    bb.perceptual, use_gan=True, disc_weight=cfg.disc_weight)[0],
             cfg.lambda_gan * ranke.rank_gan_loss(m.disc(x_sel).float(), w, cfg.disc_weight)[0],
             cfg.lambda_consist * ranke.consistency_loss(x_sel, x_ema, bb.perceptual)[0],
             cfg.lambda_reward * ranke.reward_loss(scores, w)[0]]
    per_term = [torch.autograd.grad(t, params, retain_graph=True) for t in terms]
    m.disc.requires_grad_(True)
    assert all(sum(float(g.norm()) for g in gs) > 0 for gs in per_term)
    got, step_fn = [], train.optimizer_step
    monkeypatch.setattr(train, "optimizer_step", lambda opt, world, clip: got.extend(p.grad.clone() for p in params)
                        or step_fn(opt, world, clip))
    train.decoder_step(cfg, bb, m, [b], 0, 1, autocast)
    want = [sum(gs[k] for gs in per_term) for k in range(len(params))]
    scale = max(float(g.abs().max()) for g in want)              # float tolerance: of the largest gradient entry
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5 * scale)



@pytest.mark.slow
def test_uniform_gan_picks_k_rollouts_per_prompt_without_looking_at_rewards(toy_cache, monkeypatch):
    """--rank_mode uniform (the uniform-GAN ablation, docs/method.md §5.1): the decoder step never ranks; each prompt
    gets rank_k distinct rollouts of its own group, all with weight 1, drawn from the seed and step alone (other
    rewards, same picks; another step, other picks), and the step still trains the decoder."""
    import ranke
    cfg, bb, m, b, autocast = _rolled_out(toy_cache, moved_apart=False)
    cfg.rank_mode, G, K = "uniform", cfg.group_size, cfg.rank_k

    def no_ranking(*a, **k):
        raise AssertionError("--rank_mode uniform ranked the rollouts by reward")
    picks, weights, select, rank_gan = [], [], ranke.uniform_selection, ranke.rank_gan_loss
    monkeypatch.setattr(ranke, "rank_weights", no_ranking)
    monkeypatch.setattr(ranke, "uniform_selection", lambda *a, **k: picks.append(select(*a, **k)[0]) or select(*a, **k))
    monkeypatch.setattr(ranke, "rank_gan_loss", lambda d, w, dw: weights.append(w) or rank_gan(d, w, dw))
    before = [p.detach().clone() for p in m.vq.decoder_parameters()]
    train.decoder_step(cfg, bb, m, [b], 0, 1, autocast)
    assert any(not torch.equal(p, q) for p, q in zip(m.vq.decoder_parameters(), before))
    b.r = -b.r                                                              # the reverse order of every group
    train.decoder_step(cfg, bb, m, [b], 0, 1, autocast)
    train.decoder_step(cfg, bb, m, [b], 1, 1, autocast)
    B = b.tokens.shape[0] // G
    assert len(picks) == 3 and torch.equal(picks[0], picks[1]) and not torch.equal(picks[0], picks[2])
    for idx in picks:
        groups = idx.view(B, K) // G                                        # (B,K) the group of each pick
        assert torch.equal(groups, torch.arange(B)[:, None].expand(B, K))
        assert all(len(set(row.tolist())) == K for row in idx.view(B, K))
    assert all(torch.equal(w, torch.ones(B * K)) for w in weights) and len(weights) == 3


@pytest.mark.slow
def test_disc_step_over_micro_batches_is_the_mean_of_their_steps(toy_cache, monkeypatch):
    """The discriminator step over two micro-batches hands the optimizer the mean of the two micro-batches' own
    hinge gradients (D's BatchNorm sees one micro-batch at a time), its stats are the means of theirs, the fakes are
    the current (online, not EMA) decoder's reconstructions of z_gt, no gradient reaches the decoder, and there is
    no clipping."""
    cfg, bb, m, b, autocast = _rolled_out(toy_cache, moved_apart=True)
    halves = split_batch(b, 2, cfg.group_size)
    params = list(m.disc.parameters())
    seen = []

    def recording_step(opt, world, clip):            # record the gradient, no update, so each call sees the same D
        seen.append(([p.grad.clone() for p in params], clip))
        opt.zero_grad(set_to_none=True)
        return 0.0
    monkeypatch.setattr(train, "optimizer_step", recording_step)
    stats = [train.disc_step(cfg, m, bs, 1, autocast) for bs in ([halves[0]], [halves[1]], halves)]
    (g0, c0), (g1, _), (g01, _) = seen
    assert c0 == 0.0 and stats[0].keys() == stats[2].keys()
    for a, c, both in zip(g0, g1, g01):
        torch.testing.assert_close(both, (a + c) / 2, rtol=1e-5, atol=1e-8)
    for k in stats[2]:
        assert stats[2][k] == pytest.approx((stats[0][k] + stats[1][k]) / 2, rel=1e-5, abs=1e-7), k
    assert not torch.equal(g0[0], g1[0])
    import ranke
    with torch.no_grad():
        x_rec = m.vq.decode(halves[0].z_gt).float()
    want = torch.autograd.grad(ranke.disc_hinge_loss(m.disc(halves[0].x_gt).float(), m.disc(x_rec).float(),
                                                     cfg.disc_weight)[0], params)
    for a, w in zip(g0, want):
        torch.testing.assert_close(a, w, rtol=1e-5, atol=1e-8)
    assert all(p.grad is None for p in m.vq.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("method,policy_moves,decoder_moves", [
    ("ranke", True, True), ("grpo", True, False), ("decoder", False, True), ("vapi", True, False)])
def test_janus_backbone_two_steps_of_each_method(toy_cache, tiny_janus, tmp_path, method, policy_moves, decoder_moves):
    # --backbone janus_pro_1b on a tiny random Janus in the ORIGINAL key layout (understanding-side keys included),
    # in the toy world (32-px images, toy reward): which parameters move is decided by --method alone
    import janus
    ckpt_path, tok_dir = tiny_janus
    run(toy_cache, tmp_path, "--backbone", "janus_pro_1b", "--janus_config", "tiny", "--janus_ckpt", ckpt_path,
        "--janus_tokenizer", tok_dir, "--method", method, "--steps", "2", "--ckpt_every", "2")
    ck = last_ckpt(tmp_path)
    assert ck["config"]["backbone"] == "janus_pro_1b" and ck["step"] == 2
    gen0, vq0 = janus.load_janus(ckpt_path, janus.JANUS_CONFIGS["tiny"])
    moved = {k for k, v in gen0.state_dict().items() if not torch.equal(ck["gpt"][k], v)}
    assert (moved == set(gen0.state_dict())) if policy_moves else not moved, f"{method}: policy moved {sorted(moved)[:5]}"
    for k, v in vq0.state_dict().items():
        trains = decoder_moves and k.startswith(DECODER_KEYS) and v.is_floating_point()
        assert torch.equal(ck["vq"][k], v) != trains, f"{method}: tokenizer entry {k} {'did not move' if trains else 'moved'}"
    assert all(torch.equal(ck["ref_gpt"][k], v) for k, v in gen0.state_dict().items())   # the KL anchor stays put


@pytest.mark.slow
def test_first_run_equals_later_runs(tmp_path):
    # the run that builds the toy cache must give the same weights as the same command once the cache exists
    # (a fresh build used to leave the last training step's .grad on the models, which the first updates added)
    cache = str(tmp_path / "fresh_cache")
    cks = []
    for r in ("first", "second"):
        run(cache, tmp_path / r, "--steps", "2", "--ckpt_every", "2")
        cks.append(last_ckpt(tmp_path / r))
    for part in ("gpt", "vq", "disc", "ema_gpt", "ema_vq"):
        for k in cks[0][part]:
            assert torch.equal(cks[0][part][k], cks[1][part][k]), f"first run differs at {part}.{k}"


def test_janus_presets_restate_the_released_micro_step_cadence_per_update():
    # docs/method.md §17.5: the released trainer pulled the 0.99 decoder EMA on both micro-steps of an update and
    # clipped at 1.0 a loss divided by grad_accum 2. One update here with the preset's values is the same step.
    import ranke
    for name in ("janus_pro_1b_clip", "janus_pro_1b_hps"):
        p = train.PRESETS[name]
        assert p["grad_accum"] == 2
        online, ema_twice, ema_once = (torch.nn.Linear(4, 3) for _ in range(3))
        ema_once.load_state_dict(ema_twice.state_dict())
        for _ in range(2):                                          # released: 0.99 per micro-step
            ranke.ema_update(ema_twice, online, 0.99)
        ranke.ema_update(ema_once, online, p["ema_vq_decay"])      # here: once per update
        for a, b in zip(ema_twice.parameters(), ema_once.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        # AdamW on (loss / 2) clipped at 1.0 == AdamW on the undivided loss clipped at the preset's grad_clip, over
        # steps whose gradient norms straddle the thresholds (Adam ignores one constant scale, the clip does not)
        gen = torch.Generator().manual_seed(0)
        grads = [torch.randn(50, generator=gen) * s for s in (3.0, 0.05, 1.0, 0.2)]   # norms ~21, 0.35, 7, 1.4
        runs = []
        for scale, clip in ((0.5, 1.0), (1.0, p["grad_clip"]), (1.0, 1.0)):
            w = torch.zeros(50, requires_grad=True)
            opt = torch.optim.AdamW([w], lr=1e-3, weight_decay=0.01, eps=1e-12)
            for g in grads:
                opt.zero_grad()
                (w * g * scale).sum().backward()
                torch.nn.utils.clip_grad_norm_([w], clip)
                opt.step()
            runs.append(w.detach().clone())
        torch.testing.assert_close(runs[0], runs[1], rtol=1e-5, atol=1e-9)
        assert (runs[2] - runs[0]).abs().max() > 1e-5         # the unhalved clip at 1.0 would be another run


def test_logger_cuts_the_log_back_to_the_starting_step(tmp_path, capsys):
    """Lines of steps after the starting one (logged after the last checkpoint) and a line cut mid-write go; the
    kept lines stay as they were, and new steps follow them."""
    from types import SimpleNamespace
    from runtime import Logger
    lines = [json.dumps({"step": t, "reward/mean": float(t)}) + "\n" for t in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(lines) + '{"step": 4, "rew')
    cfg = SimpleNamespace(out_dir=str(tmp_path), synthetic="", logger="none")
    log = Logger(cfg, True, start_step=2)
    assert "dropped 1 unreadable line" in capsys.readouterr().out
    log.write({"step": 3, "reward/mean": 30.0}, 3, SimpleNamespace(set_postfix=lambda d: None))
    log.close()
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(lines[:2]) + json.dumps(
        {"step": 3, "reward/mean": 30.0}) + "\n"


def test_help_shows_whole_comments_and_defaults(capsys):
    """--help: each flag's whole comment (its continuation lines too) and its default, not the first line alone."""
    with pytest.raises(SystemExit):
        train.parse_config(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "per split (toy/report.py); 0 = off (default: 512)" in out               # --report_n's second line
    assert "--top_p TOP_P (default: 1.0)" in out                                     # not the next section's title


def test_rollouts_are_scored_on_the_ema_decoders_clamped_images_in_0_1():
    """score_rollouts hands the reward (clamp(D_ema(z), -1, 1) + 1) / 2, by value: a decoder overshooting on both
    sides (the tiny toy's decoded images are all below -0.38, so no end-to-end test saw the upper clamp), and the
    advantages normalised within each group of G (docs/method.md §3 step 2, §4.1)."""
    from types import SimpleNamespace
    import ranke
    raw = torch.tensor([-3.0, -1.0, -0.25, 0.0, 0.5, 1.0, 1.5, 4.0]).view(8, 1, 1, 1).expand(8, 3, 2, 2)
    seen = {}

    def reward_fn(images01, prompts):
        seen["x"], seen["p"] = images01.clone(), list(prompts)
        return images01.mean((1, 2, 3)) * 100, {"clip": 1.0}
    b = train.Batch(None, None, None, None, None, ["a"] * 4 + ["b"] * 4, tokens=torch.arange(8).view(8, 1))
    m = SimpleNamespace(ema_vq=SimpleNamespace(decode_indices=lambda z: raw[z.view(-1)].double()))
    stats = train.score_rollouts(SimpleNamespace(group_size=4), SimpleNamespace(reward_fn=reward_fn), m, b)
    want = torch.tensor([0.0, 0.0, 0.375, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert seen["x"].dtype == torch.float32 and torch.equal(seen["x"][:, 0, 0, 0], want)
    assert seen["p"] == ["a"] * 4 + ["b"] * 4 and torch.equal(b.r, want * 100)
    assert torch.equal(b.adv, ranke.group_advantages(want * 100, 4)[0])
    assert stats["reward/mean"] == pytest.approx(float(want.mean() * 100)) and stats["reward/clip"] == 1.0


def test_flags_parse_when_the_config_source_is_unreadable(monkeypatch, capsys):
    """`python -m cProfile train.py` runs train.py with cProfile as __main__, where inspect finds no class Config:
    the flags parse the same (help texts shrink to the defaults) instead of an OSError before the run starts."""
    ref = train.parse_config(["--steps", "7", "--top_p", "0.9"])

    def no_source(obj):
        raise OSError("could not find class definition")
    monkeypatch.setattr(runtime.inspect, "getsource", no_source)
    assert train.parse_config(["--steps", "7", "--top_p", "0.9"]) == ref
    with pytest.raises(SystemExit):
        train.parse_config(["--help"])
    assert "--top_p TOP_P (default: 1.0)" in " ".join(capsys.readouterr().out.split())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_device_cuda_without_cuda_is_a_message():
    with pytest.raises(SystemExit, match="--device cuda: this machine has no usable CUDA device"):
        runtime.setup_distributed(train.parse_config(["--device", "cuda"]))


# ------------------------------------------------------------------------------------------- checkpoints (quick)
class _Stream:
    """The data stream's resumable state, as train.py's streams provide it."""
    def __init__(self, i=0):
        self.i = i

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, d):
        self.i = d["i"]


class _Reward:
    """The reward's text-feature cache, as rewards.ClipReward provides it."""
    def __init__(self, cache=None):
        self.cache = cache

    def cache_state(self):
        return self.cache

    def load_cache_state(self, state):
        self.cache = state


def _small_models(seed):
    from types import SimpleNamespace
    torch.manual_seed(seed)
    nets = {k: torch.nn.Linear(3, 2) for k in ("gpt", "ref_gpt", "ema_gpt", "vq", "ema_vq", "disc")}
    nets["disc"].register_buffer("running_mean", torch.randn(2))          # a buffer (BatchNorm's, say) travels too
    opts = {}
    for name, net in (("opt_gpt", "gpt"), ("opt_dec", "vq"), ("opt_disc", "disc")):
        opts[name] = torch.optim.AdamW(nets[net].parameters(), lr=0.1)
        nets[net](torch.randn(4, 3)).sum().backward()
        opts[name].step()                                               # optimizer moments to save
    return SimpleNamespace(**nets, **opts)


def _state(m):
    return {k: getattr(m, k).state_dict() for k in runtime.STATE}


def test_save_checkpoint_and_resume_restore_everything_bit_exactly(tmp_path, capsys):
    """save_checkpoint writes ckpt_{step:07d}.pt atomically, keeps the newest --keep_ckpts; resume loads the newest
    into every model and optimizer, the generator, the data stream and the reward cache, and returns its step."""
    cfg = runtime.RunConfig(out_dir=str(tmp_path), keep_ckpts=2)
    assert runtime.resume(cfg, None, None, None, None, 1, 0) == 0                     # nothing to resume
    m, gen = _small_models(0), torch.Generator().manual_seed(1)
    for step in (1, 2, 3):
        torch.randn(3, generator=gen)
        runtime.save_checkpoint(cfg, m, step, gen, _Stream(10 * step), _Reward({"prompts": [f"p{step}"]}), 1, 0)
    assert [os.path.basename(p) for p in ckpt.list_ckpts(str(tmp_path))] == ["ckpt_0000002.pt", "ckpt_0000003.pt"]
    assert sorted(os.listdir(tmp_path)) == ["ckpt_0000002.pt", "ckpt_0000003.pt"]      # no temp file left
    want, want_draw = _state(m), torch.randn(3, generator=gen)
    m2, gen2, stream, reward = _small_models(1), torch.Generator().manual_seed(99), _Stream(), _Reward()
    assert runtime.resume(cfg, m2, gen2, stream, reward, 1, 0) == 3
    out = capsys.readouterr().out
    assert "[resume]" in out and "torch threads" not in out and stream.i == 30 and reward.cache == {"prompts": ["p3"]}
    assert torch.equal(torch.randn(3, generator=gen2), want_draw)                      # the generator continues
    got = _state(m2)
    for k in runtime.STATE:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)
    assert runtime.fingerprint([m2.gpt, m2.vq, m2.disc]) == runtime.fingerprint([m.gpt, m.vq, m.disc])
    ck = torch.load(ckpt.list_ckpts(str(tmp_path))[-1], weights_only=True)
    assert (ck["step"], ck["world_size"], ck["config"]) == (3, 1, vars(cfg))
    assert ck["threads"] == torch.get_num_threads()


def test_resume_refuses_another_run_and_notes_other_threads(tmp_path, capsys):
    """resume refuses a checkpoint of another process count, --synthetic scale or flag outside RESUME_MAY_CHANGE,
    before anything is loaded; the length / paths may change; a checkpoint written before the reward cache was saved
    resumes with the reward as it is; another thread count is only noted."""
    import dataclasses
    cfg = train.Config(out_dir=str(tmp_path), init_policy=str(tmp_path / "p.pt"))
    m = _small_models(0)
    runtime.save_checkpoint(cfg, m, 5, torch.Generator(), _Stream(5), object(), 1, 0)    # a reward without a cache
    untouched = _small_models(1)
    before = runtime.fingerprint([untouched.gpt])
    for kw, world, words in (({}, 2, "written by 1 processes"), ({"synthetic": "tiny"}, 1, "--synthetic"),
                             ({"ckpt_every": 7, "sample_every": 3, "bf16": False}, 1, "--bf16 True -> False"),
                             ({"init_policy": str(tmp_path / "q.pt")}, 1, "--init_policy")):
        with pytest.raises(SystemExit, match=words) as e:
            runtime.resume(dataclasses.replace(cfg, **kw), untouched, torch.Generator(), _Stream(), _Reward(), world, 0)
        assert "--ckpt_every" not in str(e.value)                                        # may change
    assert runtime.fingerprint([untouched.gpt]) == before
    same = dataclasses.replace(cfg, steps=9, keep_ckpts=1, init_policy=str(tmp_path / "." / "p.pt"))
    reward = _Reward("as built")
    ck = torch.load(ckpt.list_ckpts(str(tmp_path))[-1], weights_only=True)
    ck["threads"] = torch.get_num_threads() + 1
    del ck["config"]["synthetic"]                              # a checkpoint written before --synthetic existed
    torch.save(ck, ckpt.list_ckpts(str(tmp_path))[-1])
    with pytest.raises(SystemExit, match="never share checkpoints"):      # real weights, never random ones
        runtime.resume(dataclasses.replace(same, synthetic="tiny"), untouched, torch.Generator(), _Stream(),
                       reward, 1, 0)
    capsys.readouterr()
    assert runtime.resume(same, untouched, torch.Generator(), _Stream(), reward, 1, 0) == 5
    assert reward.cache == "as built" and "torch threads" in capsys.readouterr().out


def test_save_checkpoint_gathers_every_rank_and_refuses_diverged_weights(tmp_path, monkeypatch, capsys):
    """With several processes every rank's RNG / data state is gathered into the checkpoint that rank 0 alone
    writes, and ranks whose weight fingerprints differ stop the run instead of saving one rank's weights."""
    cfg = runtime.RunConfig(out_dir=str(tmp_path))
    m, gathered = _small_models(0), []

    def all_gather_object(out, state):          # rank 1 holds the same weights, its own stream position
        assert len(out) == 2                    # torch.distributed fills a list of world_size entries
        gathered.append(state)
        out[:] = [state, {**state, "data": {"i": 11}}]
    monkeypatch.setattr(runtime.dist, "all_gather_object", all_gather_object)
    runtime.save_checkpoint(cfg, m, 1, torch.Generator(), _Stream(10), _Reward(), 2, 1)
    assert gathered and ckpt.list_ckpts(str(tmp_path)) == []                            # rank 1 writes nothing
    runtime.save_checkpoint(cfg, m, 1, torch.Generator(), _Stream(10), _Reward(), 2, 0)
    ck = torch.load(ckpt.list_ckpts(str(tmp_path))[-1], weights_only=True)
    assert ck["world_size"] == 2 and [s["data"]["i"] for s in ck["rank_state"]] == [10, 11]
    stream = _Stream()
    capsys.readouterr()
    assert runtime.resume(cfg, _small_models(1), torch.Generator(), stream, _Reward(), 2, 1) == 1
    assert stream.i == 11 and capsys.readouterr().out == ""               # each rank its own state; rank 0 speaks

    def diverged(out, state):
        assert len(out) == 2
        out[:] = [state, {**state, "fingerprint": "0" * 40}]
    monkeypatch.setattr(runtime.dist, "all_gather_object", diverged)
    with pytest.raises(RuntimeError, match="ranks diverged at step 2"):
        runtime.save_checkpoint(cfg, m, 2, torch.Generator(), _Stream(), _Reward(), 2, 0)
    assert len(ckpt.list_ckpts(str(tmp_path))) == 1


def test_allreduce_grads_and_average_buffers_average_over_ranks(monkeypatch):
    """One process: grads and buffers stay as they are (no collective is called). Several: each gradient becomes
    the mean over ranks (a missing grad counts as zeros) and each float buffer the mean; integer buffers
    (BatchNorm's num_batches_tracked) are left alone."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2), torch.nn.Linear(2, 1))
    net(torch.randn(4, 3)).sum().backward()
    net[2].bias.grad = None
    params = list(net.parameters())
    grads = [p.grad for p in params]
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    monkeypatch.setattr(runtime.dist, "all_reduce", lambda t: pytest.fail("a collective in a one-process run"))
    runtime.allreduce_grads(params, 1)
    runtime.average_buffers(net, 1)
    assert all(p.grad is g for p, g in zip(params, grads))
    other = [torch.full_like(p, 3.0) for p in params]                 # the other rank's gradients: all 3
    flat_other = torch.cat([o.reshape(-1) for o in other])

    def all_reduce(t):                                                 # the sum over 2 ranks
        t += flat_other if t.dim() == 1 and t.numel() == flat_other.numel() else torch.ones_like(t)
    monkeypatch.setattr(runtime.dist, "all_reduce", all_reduce)
    runtime.allreduce_grads(params, 2)
    for p, g in zip(params, grads):
        want = ((g if g is not None else torch.zeros_like(p)) + 3.0) / 2
        torch.testing.assert_close(p.grad, want, rtol=0, atol=1e-7)
        assert p.grad.shape == p.shape
    runtime.average_buffers(net, 2)
    for k, v in net.named_buffers():
        want = (buffers[k] + 1) / 2 if v.is_floating_point() else buffers[k]
        torch.testing.assert_close(v, want, rtol=0, atol=1e-7, msg=k)


def test_fingerprint_tells_any_differing_bit_apart():
    """The cross-rank check's fingerprint is equal for bit-identical weights and buffers (non-contiguous ones too)
    and differs when one value moves by one ulp or one buffer changes."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    net.register_buffer("table", torch.randn(3, 2).t())                   # a transposed (non-contiguous) buffer
    copy = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    copy.register_buffer("table", torch.zeros(2, 3))
    copy.load_state_dict(net.state_dict())
    assert runtime.fingerprint([net]) == runtime.fingerprint([copy])
    with torch.no_grad():
        copy[0].weight[1, 2] = torch.nextafter(copy[0].weight[1, 2], torch.tensor(1.0))
    assert runtime.fingerprint([net]) != runtime.fingerprint([copy])
    copy.load_state_dict(net.state_dict())
    copy[1].running_var += 1e-3
    assert runtime.fingerprint([net]) != runtime.fingerprint([copy])


def test_logger_starts_a_clean_log_on_rank_0_only_and_feeds_the_chosen_backend(tmp_path, monkeypatch):
    """A new run (start_step 0) in a used --out_dir starts an empty metrics.jsonl (creating the folder); other ranks
    write nothing; --logger tensorboard / wandb receive every stat at its step; nothing is written outside out_dir."""
    import sys
    from types import SimpleNamespace
    from runtime import Logger
    out, bar, sent = tmp_path / "run" / "a", SimpleNamespace(set_postfix=lambda d: None), []
    monkeypatch.chdir(tmp_path)
    cfg = SimpleNamespace(out_dir=str(out), synthetic="", logger="none")
    other_rank = Logger(cfg, False)                                             # rank 1: nothing
    other_rank.write({"step": 1}, 1, bar)
    other_rank.close()
    assert out.is_dir() and os.listdir(out) == []
    (out / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward/mean": 1.0}) + "\n")
    log = Logger(cfg, True)
    log.close()
    assert (out / "metrics.jsonl").read_text() == "" and sorted(os.listdir(tmp_path)) == ["run"]

    class Writer:                                                               # torch.utils.tensorboard's
        def __init__(self, log_dir):
            sent.append(("tb", log_dir))

        def add_scalar(self, k, v, step):
            sent.append((k, v, step))
    run = SimpleNamespace(log=lambda stats, step: sent.append(("wandb", stats, step)))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", SimpleNamespace(SummaryWriter=Writer))
    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(init=lambda **k: sent.append(k["project"]) or run))
    for backend in ("tensorboard", "wandb"):
        log = Logger(SimpleNamespace(out_dir=str(out), synthetic="", logger=backend), True)
        log.write({"step": 2, "reward/mean": 0.5}, 2, bar)
        assert (out / "metrics.jsonl").read_text().endswith('"reward/mean": 0.5}\n')    # on disk at once
        log.close()
    assert sent == [("tb", str(out)), ("step", 2, 2), ("reward/mean", 0.5, 2), "ranke",
                    ("wandb", {"step": 2, "reward/mean": 0.5}, 2)]


def test_synthetic_values_are_full_tiny_or_a_layer_count():
    """--synthetic takes '' (off), full, tiny or a layer count >= 1; anything else is a message naming the choices."""
    assert [runtime.check_synthetic(v) for v in ("", "full", "tiny", "1", "2", "24")] == [None] * 6
    for v in ("0", "-1", "L", "2.5", "Full"):
        assert "use full (real sizes), tiny (CPU tests) or a layer count >= 1" in runtime.check_synthetic(v)
