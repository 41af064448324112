"""RankE post-training (arXiv 2605.21195): the alternating policy / decoder co-evolution loop and its baselines.

    python train.py                                   # toy world on CPU (builds/loads .cache/toy first)
    python train.py --backbone llamagen_xl --data train_subset_15k.tar \
        --gpt_ckpt t2i_XL_stage1_256.pt --vq_ckpt vq_ds16_t2i.pt --t5_path flan-t5-xl --clip_path clip-L14.pt
    torchrun --nproc_per_node=8 train.py --backbone llamagen_xl ...   # 8 GPUs (gloo on CPU, nccl on GPU)
    python train.py --backbone llamagen_xl --dry_run                  # parameter counts + memory estimate
    python train.py --backbone janus_pro_1b --data train_subset_15k.tar --janus_ckpt Janus-Pro-1B/pytorch_model.bin \
        --janus_tokenizer Janus-Pro-1B --clip_path clip-L14.pt         # Janus-Pro-1B (32 prompts/update on 8 GPUs)

The algorithm (docs/method.md §3). Each numbered step is one function below, in this order; main()'s loop calls
them in this order. Per rank and iteration, with B (image, caption) pairs per micro-batch (--grad_accum of them):
  1. ROLLOUT   rollout()         B x G token grids from the online policy with CFG; their per-token log-probs under
                                 the frozen reference policy (and the online "old" one if --ppo_epochs > 1), §4.2, §4.6.
  2. REWARD    score_rollouts()  decode with the EMA decoder, score, group-normalised advantages (§4.1, §7).
  3. POLICY    policy_step()     clipped surrogate + beta * KL, one AdamW step (§4.3); policy EMA every 10 of them.
  4. DISC      disc_step()       hinge step, real images vs reconstructions of real images, from disc_start (§6).
  5. DECODER   decoder_step()    on the same rollouts: top-K by reward, rank weights; GT reconstruction, Rank-GAN,
                                 EMA consistency, reward backprop; AdamW on decoder + post_quant_conv (§5);
                                 decoder EMA every step.
  --method ranke (default): 1-5 | grpo (standard RL): 1-3, the decoder never changes | decoder: 1-2, 4-5 (with
  --init_policy CKPT: the two-stage control, decoder steps on the rollouts of a finished standard-RL policy)
  --method vapi (VA-pi, §12): vapi_step() replaces 1-5: teacher-forced, noisy context, reconstruction reward.
What a backbone provides (models, tokenizer, reward, data) is in backbones.py; plumbing (the run / system flags,
the flag-check tables RULES / SCOPES, processes, checkpoints, --init_policy, resume, logging) in runtime.py; the
memory estimator (--dry_run) in perf/synthetic.py.

Symbols: B prompts per rank, G samples per prompt, N image tokens, K top-K kept per prompt, S image side,
T caption slots, D caption feature width, V codebook size.
"""
import copy
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from tqdm import tqdm

import ranke
import vapi
import vq as vqlib
import backbones
from backbones import WORLD_SCOPES, Backbone, check_paths
from data import save_grid
from perf import synthetic
from runtime import (SCOPES, Logger, RunConfig, allreduce_grads, average_buffers, check_scopes, check_values,
                     load_init_policy, parse_dataclass_flags, peak_memory_gb, resume, save_checkpoint,
                     setup_distributed, teardown)
from runtime import DECODER_METHODS, POLICY_METHODS  # the methods with steps 3 / 4-5 (tests use both)


def seam(cfg):
    """Whose builders (build_backbone, build_policy, image_side) make this run's backbone: backbones.py, or under
    --synthetic their random-weight twins in perf/synthetic.py (both read backbones.MODELS)."""
    return synthetic if cfg.synthetic else backbones


# ----------------------------------------------------------------------------------------------------------------
# Configuration: the algorithm's flags here, the run / system flags (paths, devices, logging, checkpoints) in
# runtime.RunConfig; Config is both, one flat dataclass, every field a flag (help = its comment, allowed values = its
# Literal). Presets hold the released hyperparameters.
@dataclass
class AlgoConfig:
    preset: str = "tiny"           # named preset applied before the flags (a key of PRESETS)
    backbone: Literal["tiny", "llamagen_xl", "janus_pro_1b"] = "tiny"   # tiny = the toy world, on CPU;
    #                                llamagen_xl = GPT-XL t2i + VQ-16 (LlamaGen); janus_pro_1b = Janus-Pro-1B
    method: Literal["ranke", "grpo", "decoder", "vapi"] = "ranke"   # the loop's steps per method: module docstring
    seed: int = 42                 # model init is identical on all ranks; data and rollouts get seed + rank
    steps: int = 300               # optimizer iterations to run
    total_steps: int = 300         # nominal length: sets the tau anneal (docs/method.md §8: (15000 // 32) x epochs)
    toy_preset: Literal["default", "tiny"] = "default"   # tiny: seconds-fast, low-quality toy world (tests)
    janus_config: Literal["janus_pro_1b", "tiny"] = "janus_pro_1b"   # tiny: a 32-px test configuration
    reward: Literal["clip", "hpsv2"] = "clip"   # the reward model of llamagen_xl / janus_pro_1b runs
    image_size: int = 32           # S: set from the backbone (tiny 32, llamagen_xl 256, janus_pro_1b 384), no other
    batch_prompts: int = 8         # B per rank and micro-batch (released LlamaGen: 4, Janus: 2)
    # DEVIATION (D9): a real accumulation; the released Janus trainer's zero_grad kept only every 2nd micro-batch
    grad_accum: int = 1            # micro-batches per optimizer update (Janus preset: 2)
    group_size: int = 8            # G (released: 8)
    # rollout sampling (docs/method.md §4.6)
    cfg_scale: float = 4.0         # LlamaGen 6.0
    temperature: float = 1.0
    top_k: int = 0                 # LlamaGen 1000 (0 = off)
    top_p: float = 1.0
    # policy step (docs/method.md §4)
    lr_gpt: float = 1e-4           # LlamaGen preset: 1e-6, the LR the released code actually ran with (D15)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    beta_kl: float = 0.05          # KL weight beta
    clip_eps: float = 0.2
    kl_estimator: Literal["k2", "k3"] = "k2"   # k2 = 1/2 (logp - logp_ref)^2 (released); k3 (D7)
    kl_ref: Literal["frozen", "ema"] = "frozen"   # frozen initial policy (released, D1); ema (the page's wording)
    ppo_epochs: int = 1            # 1 = released (ratio == 1, clip never binds, D7)
    logp_cfg: Literal["cond", "guided"] = "cond"   # cond = conditional-only log-probs (released); guided = CFG logits
    logp_chunk: int = 0            # rows per teacher-forced forward in the policy step (0 = all at once)
    ema_gpt_decay: float = 0.999
    ema_gpt_every: int = 10
    # decoder step (docs/method.md §5-6)
    lr_decoder: float = 1e-4       # LlamaGen preset: 1e-5 (D15)
    lr_disc: float = 2e-5
    rank_k: int = 1                # top-K per prompt; 1 = best-of-G (released, D2); G = the page's soft weights
    rank_mode: Literal["reward", "uniform"] = "reward"   # reward = Rank-GAN; uniform = K random samples, w = 1
    tau_start: float = 4.0
    tau_end: float = 1.0
    tau_frac: float = 0.2
    lambda_gan: float = 1.0        # lambda_g (times --disc_weight inside ranke.rank_gan_loss)
    lambda_reward: float = 0.01    # lambda_d
    lambda_recon: float = 1.0      # lambda_r
    lambda_consist: float = 10.0   # lambda_c
    disc_start: int = 100
    disc_weight: float = 0.5       # scales the D hinge, the Rank-GAN term and the adaptive GAN weight (released 0.5)
    ema_vq_decay: float = 0.99
    # VA-pi (docs/method.md §12.3; the released T2I run is PRESETS["llamagen_xl_vapi"])
    vapi_xi: float = 0.5           # context-noise probability
    vapi_ce: float = 0.1           # beta of the next-token CE prior
    vapi_kl: float = 0.0           # optional k3 KL to the base policy


@dataclass
class Config(RunConfig, AlgoConfig):
    """The flat config train.py, sample.py and the checkpoints use: AlgoConfig's fields, then RunConfig's."""


PRESETS = {
    # the toy world on a 2-core CPU: ~3 min for 250 steps, then the answer table (toy/report.py). 4 prompts x G 8
    # per step halves the step time of 8 x 8 at the same number of updates.
    # DEVIATION: the discriminator starts at step 30 (released 100), so the GAN terms act for 88 % of the 250-step
    # toy run, as for ~98 % of the released 6,000 steps (docs/method.md §14, own deviations).
    # The recipe is the comparison's RankE arm (docs/preregistration.md, amendment 2) cut at step 250: policy lr 1e-5
    # (the calibrated one, docs/calibration), decoder / discriminator 10x / 20x it (the released 1 : 10 : 20, D15),
    # total_steps 300 as in the comparison (tau reaches 1 at step 60), so these 250 steps are that run's first 250.
    # The answer table scores 512 captions per split and prints the seed spread of this recipe beside each change.
    "tiny": dict(batch_prompts=4, disc_start=30, lr_gpt=1e-5, lr_decoder=1e-4, lr_disc=2e-4, steps=250, report_n=512),
    # docs/method.md §8, column "LlamaGen CLIP"; learning rates as actually run by the released code (D15)
    "llamagen_xl_clip": dict(backbone="llamagen_xl", out_dir="runs/llamagen_xl_clip", steps=6000, total_steps=4680,
                             ckpt_every=500, sample_every=500, batch_prompts=4, group_size=8, cfg_scale=6.0,
                             top_k=1000, lr_gpt=1e-6, lr_decoder=1e-5, lr_disc=2e-5, beta_kl=0.05,
                             lambda_reward=0.01, lambda_consist=10.0, reward="clip", grad_ckpt=True),
    # VA-pi's released LlamaGen T2I run (docs/method.md §12.3, column "T2I"). One optimizer step per B images.
    # DEVIATION: the policy forward runs in eval mode (no dropout): it both draws the samples and is trained, so the
    # released train-mode forward would make logp_old != logp at step 0 (docs/method.md §12.7 defect 5).
    "llamagen_xl_vapi": dict(backbone="llamagen_xl", method="vapi", out_dir="runs/llamagen_xl_vapi", steps=200,
                             total_steps=200, ckpt_every=50, sample_every=0, batch_prompts=16,
                             group_size=8, lr_gpt=1e-6, weight_decay=1e-4, vapi_xi=0.5, vapi_ce=0.1, vapi_kl=0.0,
                             grad_ckpt=True),
}
# docs/method.md §8, column "LlamaGen HPS": the CLIP run with HPS v2.1, lambda_d 0.1 and its own length
PRESETS["llamagen_xl_hps"] = {**PRESETS["llamagen_xl_clip"], "out_dir": "runs/llamagen_xl_hps", "steps": 2000,
                              "total_steps": 2340, "lambda_reward": 0.1, "reward": "hpsv2"}
# docs/method.md §8, columns "Janus CLIP" / "Janus HPS", in optimizer updates: 2 prompts x grad_accum 2 x 8 GPUs =
# 32 prompts per update, as the scripts intended (the released accumulation kept only every second micro-batch and
# counted micro-steps, D9: its disc_start 100, total 4680, checkpoint 500 and 6k evaluated steps become 50, 2340,
# 250 and 3000 updates here). Learning rates as actually run (D15).
# The released trainer also ran the 0.99 decoder EMA on every micro-step, so 0.99^2 per update here, and accelerate
# divided each loss by the accumulation count 2 before the 1.0 clip: AdamW ignores the scale, the clip does not, so
# clipping our (undivided) mean gradient at 2.0 is the released clip (docs/method.md D9, §17.5).
# DEVIATION (D9): the released first EMA pull of an update went to the pre-update decoder, and its second micro-batch
# was scored by that once-pulled EMA; here both micro-batches see one EMA and the two pulls go to the updated decoder.
# DEVIATION (docs/method.md §17.4): fp32 master weights, AdamW states and EMAs under bf16 autocast; the released
# Janus runs trained bf16 weights with bf16 states and EMAs, so most weights and the 0.999 EMA could not move.
PRESETS["janus_pro_1b_clip"] = dict(backbone="janus_pro_1b", out_dir="runs/janus_pro_1b_clip", steps=3000,
                                    total_steps=2340, ckpt_every=250, sample_every=250, batch_prompts=2, grad_accum=2,
                                    group_size=8, cfg_scale=5.0, top_k=1000, lr_gpt=1e-6, lr_decoder=1e-5,
                                    lr_disc=2e-5, beta_kl=0.05, lambda_reward=0.05, lambda_consist=5.0, disc_start=50,
                                    reward="clip", grad_ckpt=True, ema_vq_decay=0.99 ** 2, grad_clip=2.0)
PRESETS["janus_pro_1b_hps"] = {**PRESETS["janus_pro_1b_clip"], "out_dir": "runs/janus_pro_1b_hps", "beta_kl": 0.01,
                               "reward": "hpsv2"}


def default_preset(backbone=None, reward=None, method=None) -> str:
    """The released run a backbone / reward / method starts from (docs/method.md §8); None = the Config default."""
    backbone, reward, method = backbone or Config.backbone, reward or Config.reward, method or Config.method
    if backbone == "llamagen_xl":
        return "llamagen_xl_vapi" if method == "vapi" else f"llamagen_xl_{'hps' if reward == 'hpsv2' else 'clip'}"
    if backbone == "janus_pro_1b":
        return f"janus_pro_1b_{'hps' if reward == 'hpsv2' else 'clip'}"
    return "tiny"


def parse_config(argv=None) -> Config:
    """Flags from the Config fields (help = each field's comment). The preset (--preset, else the one of --backbone,
    --reward and --method) sets the defaults, flags override them. Out-of-range values, a preset of another run and
    flags that would do nothing in this run exit at once, every bad flag named."""
    cfg, given = parse_dataclass_flags(Config, PRESETS, argv, default_preset,
                                       preset_keys=("backbone", "reward", "method"))
    bad = check_values(cfg)                                         # runtime.RULES: allowed ranges
    own = default_preset(cfg.backbone, cfg.reward, cfg.method)
    if own != cfg.preset:     # only with --preset: a preset's values belong to its backbone, reward and method
        bad.append(f"--preset {cfg.preset}: the values of another backbone / reward / method than this run's "
                   f"(--backbone {cfg.backbone} --reward {cfg.reward} --method {cfg.method}); use --preset {own}, or "
                   f"drop --preset")
    side = seam(cfg).image_side(cfg)    # derived: the side the tokenizer decodes
    if "image_size" in given and cfg.image_size != side:
        bad.append(f"--image_size {cfg.image_size}: the image side follows from the backbone ({side} px here); drop "
                   f"--image_size")
    cfg.image_size = side
    # flags that do nothing in this run (runtime.SCOPES: the method's; backbones.WORLD_SCOPES: the world's)
    bad += check_scopes(cfg, given, {**asdict(Config()), **PRESETS[cfg.preset]}, [*SCOPES, *WORLD_SCOPES])
    if bad:
        raise SystemExit("bad flag values:\n  " + "\n  ".join(bad))
    return cfg


@dataclass
class Models:
    """What the loop trains or anchors to, with its optimizers; all of it is saved in every checkpoint."""
    gpt: torch.nn.Module        # online policy pi_theta
    ref_gpt: torch.nn.Module    # frozen copy of the initial policy: the KL anchor (D1)
    ema_gpt: torch.nn.Module    # policy EMA (0.999 every 10 steps, §4.7); the KL anchor with --kl_ref ema
    vq: torch.nn.Module         # tokenizer; only decoder + post_quant_conv train (§2)
    ema_vq: torch.nn.Module     # decoder EMA (0.99 every decoder step): decodes the rollouts for the reward
    disc: torch.nn.Module       # PatchGAN, from N(0, 0.02) (§6)
    opt_gpt: torch.optim.Optimizer
    opt_dec: torch.optim.Optimizer
    opt_disc: torch.optim.Optimizer


def build_models(cfg: Config, bb: Backbone, device) -> Models:
    gpt, vq = bb.gpt.eval(), bb.vq.eval()           # policy runs without dropout: logp_old == logp at step 0
    vq.requires_grad_(False)
    for p in vq.decoder_parameters():               # decoder + post_quant_conv (docs/method.md §2)
        p.requires_grad_(cfg.method in ("ranke", "decoder"))
    ref_gpt = frozen_copy(gpt)                      # KL anchor: frozen initial policy (D1); fp32 weights under
    #                                                 autocast as upstream, so logp_ref == logp_old at step 0 (§4.4)
    # DEVIATION: EMA copies stay fp32 even under bf16: a 0.999 / 0.99 EMA step is below bf16 resolution.
    ema_gpt, ema_vq = frozen_copy(gpt), frozen_copy(vq)
    disc = vqlib.PatchGAN(generator=torch.Generator().manual_seed(cfg.seed)).to(device).train()   # per-seed init
    adamw = lambda ps, lr: torch.optim.AdamW(ps, lr=lr, weight_decay=cfg.weight_decay)  # noqa: E731
    return Models(gpt, ref_gpt, ema_gpt, vq, ema_vq, disc, adamw([p for p in gpt.parameters() if p.requires_grad],
                  cfg.lr_gpt), adamw(vq.decoder_parameters(), cfg.lr_decoder), adamw(disc.parameters(), cfg.lr_disc))


def frozen_copy(model):
    return copy.deepcopy(model).requires_grad_(False).eval()


def optimizer_step(opt, world, clip):
    """Average gradients over ranks, clip the norm (clip > 0), step, zero. Every optimizer goes through here, so
    policy, decoder and discriminator stay identical on all ranks.
    # DEVIATION: the released LlamaGen trainer never synchronised decoder gradients (docs/method.md D8)."""
    params = [p for g in opt.param_groups for p in g["params"]]
    allreduce_grads(params, world)
    norm = torch.nn.utils.clip_grad_norm_(params, clip) if clip > 0 else torch.zeros(())
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(norm)


# ----------------------------------------------------------------------------------------------------------------
# The algorithm: one function per step of the box in the docstring. Steps 1-2 run once per micro-batch of B
# prompts; steps 3-5 take the update's micro-batches (--grad_accum of them), accumulate gradients over them, make
# one optimizer step and return a dict of float stats.
@dataclass
class Batch:
    """One micro-batch: B (image, caption) pairs, then what steps 1, 2 and 4 add to it."""
    x_gt: torch.Tensor                  # (B,3,S,S) ground-truth images in [-1,1]
    cond: torch.Tensor                  # (B,T,D) caption features, or (B,T) prompt token ids (Janus)
    mask: torch.Tensor                  # (B,T) bool
    cond_g: torch.Tensor                # (B*G,...) cond repeated per sample, prompt-major
    mask_g: torch.Tensor                # (B*G,T)
    prompts_g: list                     # B*G captions, prompt-major
    tokens: torch.Tensor = None         # (B*G,N) rollouts (step 1)
    logp_old: torch.Tensor = None       # (B*G,N) under the online policy at sampling time (--ppo_epochs > 1)
    logp_ref: torch.Tensor = None       # (B*G,N) under the KL reference
    r: torch.Tensor = None              # (B*G,) rewards on EMA-decoder images (step 2)
    adv: torch.Tensor = None            # (B*G,) group-normalised advantages
    z_gt: torch.Tensor = None           # (B,C,h,w) frozen-encoder codebook vectors of x_gt


def add_stats(stats, new, weight, prefix=""):
    """stats[prefix + k] += weight * v: means over micro-batches (weight = their share of the update)."""
    for k, v in new.items():
        stats[prefix + k] = stats.get(prefix + k, 0.0) + v * weight


def rollout(cfg, bb, m, b, gen, autocast):
    """1. ROLLOUT (docs/method.md §4.6, §4.2): tokens (B*G,N) from the online policy with CFG, and, for the policy
    step, their per-token log-probs (B*G,N) under the reference policy (and, for --ppo_epochs > 1, the online "old"
    one). No gradient."""
    t0 = time.time()
    logp_scale = cfg.cfg_scale if cfg.logp_cfg == "guided" else 1.0
    kl_model = m.ema_gpt if cfg.kl_ref == "ema" else m.ref_gpt
    with torch.no_grad(), autocast():
        b.tokens = bb.sample(m.gpt, b.cond_g, b.mask_g, cfg_scale=cfg.cfg_scale, temperature=cfg.temperature,
                             top_k=cfg.top_k, top_p=cfg.top_p, generator=gen)                   # (B*G, N)
        # DEVIATION (D7): with one PPO epoch the released "old" log-probs are the same network's teacher-forced
        # log-probs, i.e. the policy step's own forward, detached (rho == 1). That forward is reused there instead
        # of running it twice; with --ppo_epochs > 1 the old log-probs are computed here, before any update.
        if cfg.method in POLICY_METHODS:                        # --method decoder trains no policy: no log-probs
            b.logp_old = bb.logprobs(m.gpt, b.cond_g, b.mask_g, b.tokens, cfg_scale=logp_scale).float() \
                if cfg.ppo_epochs > 1 else None
            b.logp_ref = bb.logprobs(kl_model, b.cond_g, b.mask_g, b.tokens, cfg_scale=logp_scale).float()
    return {"rollout_img_per_s": b.tokens.shape[0] / (time.time() - t0)}


def score_rollouts(cfg, bb, m, b):
    """2. REWARD (docs/method.md §3 step 2, §7, §4.1): decode with the EMA decoder in fp32, score, and normalise
    within each prompt's group: rewards r (B*G,) and advantages (B*G,)."""
    with torch.no_grad():
        x = m.ema_vq.decode_indices(b.tokens).float().clamp(-1, 1)                              # (B*G,3,S,S)
        b.r, info = bb.reward_fn((x + 1) / 2, b.prompts_g)                                       # (B*G,)
    b.adv, s = ranke.group_advantages(b.r.float(), cfg.group_size)                               # §4.1
    return {"reward/mean": float(b.r.mean()), "reward/std": float(b.r.float().std()),
            **{f"reward/{k}": v for k, v in info.items()}, **{f"adv/{k}": v for k, v in s.items()}}


def policy_step(cfg, bb, m, batches, step, world, autocast):
    """3. POLICY (docs/method.md §4.3): L_GPT = L_pg + beta * L_KL over all tokens of the update, gradients
    accumulated over micro-batches and row chunks of --logp_chunk rows, then one AdamW step per PPO epoch; the policy
    EMA after every --ema_gpt_every-th of those AdamW steps (§4.7)."""
    logp_scale = cfg.cfg_scale if cfg.logp_cfg == "guided" else 1.0
    rows = sum(b.tokens.shape[0] for b in batches)
    for epoch in range(cfg.ppo_epochs):                         # stats: those of the last epoch
        stats = {}
        for b in batches:
            for i in range(0, b.tokens.shape[0], cfg.logp_chunk or b.tokens.shape[0]):
                sl = slice(i, i + (cfg.logp_chunk or b.tokens.shape[0]))
                with autocast():
                    logp = bb.logprobs(m.gpt, b.cond_g[sl], b.mask_g[sl], b.tokens[sl], cfg_scale=logp_scale).float()
                old = logp.detach() if b.logp_old is None else b.logp_old[sl]                    # see rollout()
                loss, s = ranke.policy_loss(logp, old, b.logp_ref[sl], b.adv[sl], clip_eps=cfg.clip_eps,
                                            beta=cfg.beta_kl, kl_estimator=cfg.kl_estimator)       # §4.3, (b,N)
                frac = b.tokens[sl].shape[0] / rows                 # token means over chunks = mean over all
                (loss * frac).backward()
                add_stats(stats, s, frac, "policy/")
        stats["grad_norm/gpt"] = optimizer_step(m.opt_gpt, world, cfg.grad_clip)
        if (step * cfg.ppo_epochs + epoch + 1) % cfg.ema_gpt_every == 0:    # counts AdamW steps, as released
            ranke.ema_update(m.ema_gpt, m.gpt, cfg.ema_gpt_decay)                                 # §4.7
    return stats


def disc_step(cfg, m, batches, world, autocast):
    """4. DISC (docs/method.md §6): hinge loss, real images vs the current decoder's reconstructions of them. Runs
    from disc_start on; before it the released loss is a detached zero: no gradient, and AdamW skips None grads."""
    stats = {}
    for b in batches:
        with torch.no_grad(), autocast():
            x_rec = m.vq.decode(b.z_gt).float()                                                  # (B,3,S,S)
        with autocast():
            loss, s = ranke.disc_hinge_loss(m.disc(b.x_gt).float(), m.disc(x_rec).float(), cfg.disc_weight)  # §6
        (loss / len(batches)).backward()
        add_stats(stats, s, 1 / len(batches), "disc/")
    stats["grad_norm/disc"] = optimizer_step(m.opt_disc, world, 0.0)                          # no clipping
    return stats


def decoder_step(cfg, bb, m, batches, step, world, autocast):
    """5. DECODER (docs/method.md §5.2) on the rollouts of step 1: (a) top-K selection and rank weights over the
    whole update; per micro-batch (b) GT reconstruction with its own backward and (c) Rank-GAN + EMA consistency +
    reward backprop, one backward; then one AdamW step on decoder + post_quant_conv. D is a fixed critic here."""
    G, use_gan, n, stats = cfg.group_size, step >= cfg.disc_start, len(batches), {}
    m.disc.requires_grad_(False)
    # (a) selection by the rollout (EMA-decoder) rewards, rank weights (§5.1, D2, D3)
    r = torch.cat([b.r for b in batches]).float()                                                # (n*B*G,)
    tau, _ = ranke.tau_schedule(step, cfg.total_steps, cfg.tau_start, cfg.tau_end, cfg.tau_frac)
    if cfg.rank_mode == "reward":
        idx, w, s = ranke.rank_weights(r, G, cfg.rank_k, tau)                                   # (n*B*K,) each
    else:   # ablation: a uniform GAN on K random samples per prompt, w = 1 (docs/method.md §5.1)
        idx, w, s = ranke.uniform_selection(r.shape[0] // G, G, cfg.rank_k, cfg.seed + step * 7919, r.device)
    stats.update({f"rank/{k}": v for k, v in s.items()}, **{"rank/tau": float(tau)})
    total_sum, BG = 0.0, batches[0].tokens.shape[0]
    for i, b in enumerate(batches):
        # (b) ground-truth reconstruction: L1 + perceptual + adaptive-weighted GAN (the manifold anchor)
        with autocast():
            x_rec = m.vq.decode(b.z_gt).float()                                                  # (B,3,S,S)
            d_rec = m.disc(x_rec).float() if use_gan else None
        # DEVIATION: LPIPS here in fp32; released LlamaGen ran its loss module under bf16 autocast (docs/method.md §5.2)
        l_gt, s = ranke.gt_recon_loss(b.x_gt, x_rec, d_rec, m.vq.last_layer, bb.perceptual, use_gan=use_gan,
                                      disc_weight=cfg.disc_weight)                           # §5.2 item 1
        (cfg.lambda_recon * l_gt / n).backward()
        add_stats(stats, s, 1 / n, "decoder/gt_")
        # (c) this micro-batch's selected samples x_hat* = Dec(z*)
        mine = (idx >= i * BG) & (idx < (i + 1) * BG)
        z_sel, w_i, frac = b.tokens[idx[mine] - i * BG], w[mine], int(mine.sum()) / idx.shape[0]    # (B*K, N)
        with autocast():
            x_sel = m.vq.decode_indices(z_sel).float().clamp(-1, 1)                             # x_hat*
            with torch.no_grad():
                x_ema = m.ema_vq.decode_indices(z_sel).float()
            d_sel = m.disc(x_sel).float() if use_gan else None
        total = torch.zeros((), device=x_sel.device)
        if use_gan:                                                                              # §5.2 item 2
            l_rg, s = ranke.rank_gan_loss(d_sel, w_i, cfg.disc_weight)
            total = total + cfg.lambda_gan * l_rg
            add_stats(stats, s, frac, "decoder/rankgan_")
        l_c, s = ranke.consistency_loss(x_sel, x_ema, bb.perceptual)                              # §5.2 item 3
        total = total + cfg.lambda_consist * l_c
        add_stats(stats, s, frac, "decoder/consist_")
        if cfg.lambda_reward:                                                                    # §5.2 item 4
            scores, _ = bb.reward_fn((x_sel + 1) / 2, [b.prompts_g[j] for j in (idx[mine] - i * BG).tolist()])
            l_r, s = ranke.reward_loss(scores.float(), w_i)
            total = total + cfg.lambda_reward * l_r
            add_stats(stats, s, frac, "decoder/reward_")
        (total * frac).backward()
        total_sum += float(total.detach()) * frac + cfg.lambda_recon * float(l_gt.detach()) / n
    m.disc.requires_grad_(True)
    stats["decoder/total"] = total_sum
    stats["grad_norm/decoder"] = optimizer_step(m.opt_dec, world, cfg.grad_clip)
    return stats


def vapi_step(cfg, bb, m, batches, gen, world, autocast):
    """VA-pi (docs/method.md §12.2), replacing steps 1-5: teacher-forced policy step on ground-truth tokens with a
    noisy context and a reconstruction reward through the frozen decoder; one AdamW step per update."""
    G, n, stats = cfg.group_size, len(batches), {}
    for b in batches:
        with torch.no_grad():
            z_gt = m.vq.encode_indices(b.x_gt.float())                                          # (B,N) GT tokens
        z_in, s_noise = vapi.noisy_context(z_gt, cfg.vapi_xi, m.vq.cfg.codebook_size, gen)      # step 3
        with autocast():
            logits = bb.logits(m.gpt, z_in, b.cond, b.mask).float()                              # (B,N,V)
        samples, _ = vapi.positionwise_sample(logits.detach(), G, gen)                          # (B*G,N), step 5
        with torch.no_grad():   # frozen decoder, fp32 and unclamped, as the released VA-pi reward (§12.2 step 6)
            x_hat = m.vq.decode_indices(samples).float()                                         # (B*G,3,S,S)
        r, s_r = vapi.recon_reward(x_hat, b.x_gt.repeat_interleave(G, 0).float(), bb.perceptual)  # step 6
        adv, s_a = ranke.group_advantages(r, G)
        logp = vapi.positionwise_logprobs(logits, samples)                                       # (B*G,N), with grad
        if cfg.vapi_kl:                                                                          # optional k3 KL
            with torch.no_grad(), autocast():
                logp_ref = vapi.positionwise_logprobs(bb.logits(m.ref_gpt, z_in, b.cond, b.mask).float(), samples)
        else:
            logp_ref = logp.detach()
        pg, s_p = ranke.policy_loss(logp, logp.detach(), logp_ref, adv, clip_eps=cfg.clip_eps, beta=cfg.vapi_kl,
                                    kl_estimator="k3")
        ce, s_c = vapi.ce_prior(logits, z_gt)                                                    # step 9
        ((pg + cfg.vapi_ce * ce) / n).backward()
        for d in (s_noise, s_r, s_p, s_c):
            add_stats(stats, d, 1 / n, "vapi/")
        add_stats(stats, {**{f"adv/{k}": v for k, v in s_a.items()}, "reward/mean": float(r.mean())}, 1 / n)
    stats["grad_norm/gpt"] = optimizer_step(m.opt_gpt, world, cfg.grad_clip)
    return stats


# ----------------------------------------------------------------------------------------------------------------
def main(cfg: Config):
    bad = check_paths(cfg)
    if bad:
        raise SystemExit("bad paths (nothing was loaded):\n  " + "\n  ".join(bad))
    init_ckpt = load_init_policy(cfg)   # read first: a bad --init_policy fails before the models are built
    rank, world, device, autocast = setup_distributed(cfg)
    master = rank == 0
    if master:
        print(json.dumps(asdict(cfg), indent=1), f"\n{torch.get_num_threads()} torch threads (results depend on the "
              "count: float reduction order)", flush=True)
    torch.manual_seed(cfg.seed)                                     # identical model init on every rank
    bb = seam(cfg).build_backbone(cfg, device, rank)
    if cfg.init_policy:             # before build_models, so the reference and EMA copies are of this policy
        bb.gpt.load_state_dict(init_ckpt["gpt"])
    m = build_models(cfg, bb, device)
    gen = torch.Generator(device).manual_seed(cfg.seed + 1000 * rank + 1)   # rollouts / VA-pi noise, per rank
    step = resume(cfg, m, gen, bb.stream, bb.reward_fn, world, rank) if cfg.resume else 0
    log = Logger(cfg, master, start_step=step)
    B, G = cfg.batch_prompts, cfg.group_size
    bar = tqdm(range(step, cfg.steps), initial=step, total=cfg.steps, disable=not master, desc=cfg.method)
    for step in bar:
        t0, stats, batches = time.time(), {"step": step + 1}, []
        for _ in range(cfg.grad_accum):                             # micro-batches of B prompts, one update
            x_gt, captions = bb.stream.next()                       # (B,3,S,S) in [-1,1], B captions
            cond, mask = (t.to(device) for t in bb.text_encoder(captions))      # (B,T,D) or (B,T), (B,T)
            b = Batch(x_gt.to(device), cond, mask, cond.repeat_interleave(G, 0), mask.repeat_interleave(G, 0),
                      [c for c in captions for _ in range(G)])
            if cfg.method != "vapi":
                add_stats(stats, rollout(cfg, bb, m, b, gen, autocast), 1 / cfg.grad_accum)        # 1. ROLLOUT
                add_stats(stats, score_rollouts(cfg, bb, m, b), 1 / cfg.grad_accum)                # 2. REWARD
            batches.append(b)
        stats.update({f"data/{k}": v for k, v in bb.stream.stats().items()})   # skipped bad samples so far
        if cfg.method == "vapi":
            stats.update(vapi_step(cfg, bb, m, batches, gen, world, autocast))
        if cfg.method in ("ranke", "grpo"):
            stats.update(policy_step(cfg, bb, m, batches, step, world, autocast))                  # 3. POLICY
        if cfg.method in ("ranke", "decoder"):
            for b in batches:
                with torch.no_grad():                               # frozen encoder + codebook, fp32
                    b.z_gt = m.vq.codebook_lookup(m.vq.encode_indices(b.x_gt.float()))          # (B,C,h,w)
            if step >= cfg.disc_start:
                stats.update(disc_step(cfg, m, batches, world, autocast))                         # 4. DISC
            stats.update(decoder_step(cfg, bb, m, batches, step, world, autocast))                # 5. DECODER
            ranke.ema_update(m.ema_vq, m.vq, cfg.ema_vq_decay)                                    # §5.2
            average_buffers(m.disc, world)          # D's BatchNorm statistics saw this rank's batches only
        log.write({**stats, "step_time_s": time.time() - t0, "peak_mem_gb": peak_memory_gb(device)}, step + 1, bar)
        if master and cfg.sample_every and (step + 1) % cfg.sample_every == 0 and cfg.method != "vapi":
            rows = min(B, 4) * G
            with torch.no_grad(), autocast():
                x = m.vq.decode_indices(batches[0].tokens[:rows])
            save_grid(os.path.join(cfg.out_dir, f"samples_{step + 1:07d}.png"), x, batches[0].prompts_g[:rows], G)
        if (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps:
            save_checkpoint(cfg, m, step + 1, gen, bb.stream, bb.reward_fn, world, rank)
    log.close()
    if master and cfg.report_n and cfg.backbone == "tiny" and not cfg.data:
        from toy import report as toy_report   # the toy wing, only for a toy run: the answer (table + PNGs) in out_dir
        toy_report.report(cfg.out_dir, os.path.join(cfg.out_dir, f"ckpt_{cfg.steps:07d}.pt"), n=cfg.report_n)
    teardown(world)


if __name__ == "__main__":
    cfg = parse_config()
    if cfg.dry_run:
        synthetic.dry_run(cfg)   # memory estimator: the models on the meta device
    else:
        main(cfg)
