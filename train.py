"""RankE post-training: the alternating policy / decoder co-evolution loop (docs/method.md §3), its baselines, one or
many processes, exact resume.

    python train.py                                   # toy world on CPU (builds/loads .cache/toy first)
    python train.py --backbone llamagen_xl --data train_subset_15k.tar \
        --gpt_ckpt t2i_XL_stage1_256.pt --vq_ckpt vq_ds16_t2i.pt --t5_path flan-t5-xl --clip_path clip-L14.pt
    torchrun --nproc_per_node=8 train.py --backbone llamagen_xl ...   # 8 GPUs (gloo on CPU, nccl on GPU)
    python train.py --backbone llamagen_xl --dry_run                  # parameter counts + memory estimate

One iteration, per rank (docs/method.md §3; step names are repeated at the code below):
  1. ROLLOUT   B prompts x G samples from the online policy with CFG; log-probs under the online ("old") and the
               frozen reference policy.
  2. REWARD    decode with the EMA decoder, score, group-normalised advantages (§4.1).
  3. POLICY    one clipped-surrogate + KL step (§4.3), grad clip 1.0; policy EMA every 10 steps (§4.7).
  4. DISC      hinge step on real images vs reconstructions of real images, from disc_start (§6).
  5. DECODER   on the same rollouts: top-K by reward, rank weights, GT reconstruction + Rank-GAN + EMA
               consistency + reward backprop (§5.2); AdamW on decoder + post_quant_conv; decoder EMA update.
--method ranke (default) | grpo (standard RL: steps 4-5 skipped, decoder never changes) | decoder (steps 1-2, 4-5)
| vapi (VA-pi, docs/method.md §12: teacher-forced, noisy context, reconstruction reward; decoder frozen).
Symbols: B prompts per rank, G samples per prompt, N image tokens, K top-K kept per prompt, S image side.
"""
import argparse
import copy
import hashlib
import inspect
import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from tqdm import tqdm

import policy
import ranke
import rewards
import toy
import vapi
import vq as vqlib
from data import PairDataset, PairStream, WorldStream


# ----------------------------------------------------------------------------------------------------------------
# Configuration: one flat dataclass; every field is a flag. Presets hold the released hyperparameters.
@dataclass
class Config:
    preset: str = "tiny"           # named preset applied before the flags (tiny | llamagen_xl_clip | llamagen_xl_hps)
    backbone: str = "tiny"         # tiny (toy world, CPU) | llamagen_xl (LlamaGen GPT-XL t2i + VQ-16)
    method: str = "ranke"          # ranke | grpo | decoder | vapi
    out_dir: str = "runs/tiny"     # checkpoints, metrics.jsonl, sample grids
    seed: int = 42                 # model init is identical on all ranks; data and rollouts get seed + rank
    steps: int = 300               # optimizer iterations to run
    total_steps: int = 300         # nominal length: sets the tau anneal (docs/method.md §8: (15000 // 32) x epochs)
    resume: bool = False           # continue from the newest readable checkpoint in out_dir
    ckpt_every: int = 100          # checkpoint interval (steps); written atomically
    keep_ckpts: int = 3            # how many checkpoints to keep
    sample_every: int = 100        # PNG grid of current samples every N steps (0 = never)
    logger: str = "none"           # none | tensorboard | wandb (only if installed)
    # data
    data: str = ""                 # folder / .jsonl / .tar[,...]; "" = the toy world's own generator
    toy_cache: str = ".cache/toy"  # where the toy world's base models are cached
    toy_preset: str = "default"    # default | tiny (seconds-fast, low quality: tests)
    image_size: int = 32           # S
    batch_prompts: int = 8         # B per rank (released LlamaGen: 4)
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
    kl_estimator: str = "k2"       # k2 = 1/2 (logp - logp_ref)^2 (released) | k3 (D7)
    kl_ref: str = "frozen"         # frozen initial policy (released, D1) | ema (the page's wording)
    ppo_epochs: int = 1            # 1 = released (ratio == 1, clip never binds, D7)
    logp_cfg: str = "cond"         # cond = conditional-only log-probs (released) | guided = CFG-combined logits
    logp_chunk: int = 0            # rows per teacher-forced forward in the policy step (0 = all at once)
    ema_gpt_decay: float = 0.999
    ema_gpt_every: int = 10
    # decoder step (docs/method.md §5-6)
    lr_decoder: float = 1e-4       # LlamaGen preset: 1e-5 (D15)
    lr_disc: float = 2e-5
    rank_k: int = 1                # top-K per prompt; 1 = best-of-G (released, D2); G = the page's soft weights
    rank_mode: str = "reward"      # reward = Rank-GAN | uniform = K random samples, w = 1 (the paper's ablation)
    tau_start: float = 4.0
    tau_end: float = 1.0
    tau_frac: float = 0.2
    lambda_gan: float = 1.0        # lambda_g (x disc_weight 0.5 inside ranke.rank_gan_loss)
    lambda_reward: float = 0.01    # lambda_d
    lambda_recon: float = 1.0      # lambda_r
    lambda_consist: float = 10.0   # lambda_c
    disc_start: int = 100
    disc_weight: float = 0.5
    ema_vq_decay: float = 0.99
    # VA-pi (docs/method.md §12.3; see vapi.VAPI_PRESET)
    vapi_xi: float = 0.5           # context-noise probability
    vapi_ce: float = 0.1           # beta of the next-token CE prior
    vapi_kl: float = 0.0           # optional k3 KL to the base policy
    # LlamaGen paths (local files, or hf://owner/repo/file)
    gpt_ckpt: str = "hf://peizesun/llamagen_t2i/t2i_XL_stage1_256.pt"
    vq_ckpt: str = "hf://peizesun/llamagen_t2i/vq_ds16_t2i.pt"
    t5_path: str = "google/flan-t5-xl"
    reward: str = "clip"           # clip | hpsv2 (llamagen_xl)
    clip_path: str = ""            # ViT-L-14 OpenAI weights ("" = open_clip download)
    hps_path: str = "hf://xswu/HPSv2/HPS_v2.1_compressed.pt"
    lpips_vgg: str = ""            # torchvision vgg16 weights file ("" = torchvision download)
    lpips_lin: str = ""            # LlamaGen's lpips vgg.pth ("" = download)
    # systems
    device: str = "auto"           # auto | cpu | cuda
    bf16: bool = True              # bf16 autocast on GPU (fp32 master weights); ignored on CPU
    grad_ckpt: bool = False        # activation checkpointing in the policy's training forward (D10)
    dry_run: bool = False          # build without weights, print parameter counts and a memory estimate


PRESETS = {
    "tiny": {},
    # docs/method.md §8, column "LlamaGen CLIP"; learning rates as actually run by the released code (D15)
    "llamagen_xl_clip": dict(backbone="llamagen_xl", out_dir="runs/llamagen_xl_clip", steps=6000, total_steps=4680,
                             ckpt_every=500, sample_every=500, image_size=256, batch_prompts=4, group_size=8,
                             cfg_scale=6.0, top_k=1000, lr_gpt=1e-6, lr_decoder=1e-5, lr_disc=2e-5, beta_kl=0.05,
                             lambda_reward=0.01, lambda_consist=10.0, reward="clip", grad_ckpt=True),
    "llamagen_xl_hps": dict(backbone="llamagen_xl", out_dir="runs/llamagen_xl_hps", steps=2000, total_steps=2340,
                            ckpt_every=500, sample_every=500, image_size=256, batch_prompts=4, group_size=8,
                            cfg_scale=6.0, top_k=1000, lr_gpt=1e-6, lr_decoder=1e-5, lr_disc=2e-5, beta_kl=0.05,
                            lambda_reward=0.1, lambda_consist=10.0, reward="hpsv2", grad_ckpt=True),
    # VA-pi's released LlamaGen T2I run (docs/method.md §12.3; vapi.VAPI_PRESET). One optimizer step per B images.
    # DEVIATION: the policy forward runs in eval mode (no dropout): it both draws the samples and is trained, so the
    # released train-mode forward would make logp_old != logp at step 0 (docs/method.md §12.7 defect 5).
    "llamagen_xl_vapi": dict(backbone="llamagen_xl", method="vapi", out_dir="runs/llamagen_xl_vapi", steps=200,
                             total_steps=200, ckpt_every=50, sample_every=0, image_size=256, batch_prompts=16,
                             group_size=8, lr_gpt=1e-6, weight_decay=1e-4, vapi_xi=0.5, vapi_ce=0.1, vapi_kl=0.0,
                             grad_ckpt=True),
}
CHOICES = dict(backbone=("tiny", "llamagen_xl"), method=("ranke", "grpo", "decoder", "vapi"),
               kl_estimator=("k2", "k3"), kl_ref=("frozen", "ema"), logp_cfg=("cond", "guided"),
               rank_mode=("reward", "uniform"), logger=("none", "tensorboard", "wandb"), reward=("clip", "hpsv2"),
               device=("auto", "cpu", "cuda"), preset=tuple(PRESETS), toy_preset=("default", "tiny"))


def parse_config(argv=None) -> Config:
    """Flags from the dataclass fields; a preset (or --backbone llamagen_xl) sets defaults that flags override."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=None)
    pre.add_argument("--backbone", default=None)
    known, _ = pre.parse_known_args(argv)
    preset = known.preset or ("llamagen_xl_clip" if known.backbone == "llamagen_xl" else "tiny")
    if preset not in PRESETS:
        raise SystemExit(f"--preset {preset!r}: choose one of {sorted(PRESETS)}")
    defaults = {**asdict(Config()), **PRESETS[preset], "preset": preset}
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    src = inspect.getsource(Config).splitlines()
    for f in fields(Config):
        # help text = the comment after the field in the dataclass above (one place to document each flag)
        line = next((l for l in src if l.strip().startswith(f"{f.name}: ")), "")
        help_ = line.split("#", 1)[1].strip() if "#" in line else f.name
        if f.type in (bool, "bool"):
            p.add_argument(f"--{f.name}", type=lambda s: s.lower() in ("1", "true", "yes"), nargs="?", const=True,
                           default=defaults[f.name], help=help_)
        else:
            typ = {"int": int, "float": float, "str": str}.get(f.type, f.type) if isinstance(f.type, str) else f.type
            p.add_argument(f"--{f.name}", type=typ, default=defaults[f.name], choices=CHOICES.get(f.name), help=help_)
    cfg = Config(**vars(p.parse_args(argv)))
    if cfg.rank_k < 1 or cfg.rank_k > cfg.group_size:
        raise SystemExit(f"--rank_k {cfg.rank_k}: must be in [1, group_size={cfg.group_size}]")
    if cfg.group_size < 2:
        raise SystemExit("--group_size must be >= 2: advantages are normalised within each prompt's group")
    return cfg


# ----------------------------------------------------------------------------------------------------------------
# The backbone boundary: everything model-specific the loop needs. Janus-Pro-1B is one more builder of this.
@dataclass
class Backbone:
    text_encoder: object   # captions -> (cond (B,T,D), cond_mask (B,T))
    gpt: torch.nn.Module    # policy; the loop only calls the three functions below on it
    vq: torch.nn.Module     # tokenizer; decoder_parameters(), codebook_lookup, decode, decode_indices, encode
    sample: object          # (gpt, cond, mask, cfg_scale=, temperature=, top_k=, top_p=, generator=) -> (B,N)
    logprobs: object        # (gpt, cond, mask, tokens, cfg_scale=) -> (B,N)
    logits: object          # (gpt, tokens, cond, mask) -> (B,N,V) teacher-forced (VA-pi)
    reward_fn: object       # (images01, prompts) -> (scores (B,), info)
    perceptual: object      # (x, y) -> (B,) in [-1, 1]
    stream: object          # .next() -> (images (B,3,S,S) in [-1,1], captions); state_dict / load_state_dict


def build_backbone(cfg: Config, device, rank: int) -> Backbone:
    data_seed = cfg.seed + 1000 * rank
    if cfg.backbone == "tiny":
        tcfg = toy.ToyConfig.tiny() if cfg.toy_preset == "tiny" else toy.ToyConfig()
        b = toy.load_toy(tcfg, cache_dir=cfg.toy_cache, progress=rank == 0)
        if cfg.data:
            stream = PairStream(PairDataset(cfg.data, cfg.image_size), cfg.batch_prompts, data_seed, rank)
        else:
            stream = WorldStream(b.world, cfg.batch_prompts, data_seed)
        text_encoder, gpt, vq, reward_fn, perceptual = b.text_encoder, b.gpt, b.vq, b.reward_fn, b.perceptual
    else:
        if not cfg.data:
            raise SystemExit("--backbone llamagen_xl needs --data (folder, .jsonl or .tar of image+caption pairs)")
        text_encoder = policy.T5TextEncoder(cfg.t5_path, device=device)
        gpt = policy.load_gpt(cfg.gpt_ckpt, policy.GPT_CONFIGS["GPT-XL-t2i"])
        vq = vqlib.load_vq(cfg.vq_ckpt, vqlib.VQ_CONFIGS["vq16"])
        parts = {"clip": (rewards.make_reward("clip", path=cfg.clip_path or None), 1.0 if cfg.reward == "clip" else 0.0),
                 "hpsv2": (rewards.make_reward("hpsv2", path=cfg.hps_path), 1.0 if cfg.reward == "hpsv2" else 0.0)}
        reward_fn = rewards.WeightedReward(parts)
        perceptual = vqlib.LPIPS(vgg_path=cfg.lpips_vgg or None, lin_path=cfg.lpips_lin or None).to(device)
        stream = PairStream(PairDataset(cfg.data, cfg.image_size), cfg.batch_prompts, data_seed, rank)
    gpt.cfg.grad_ckpt = cfg.grad_ckpt
    return Backbone(text_encoder, gpt.to(device), vq.to(device), policy.sample, policy.token_logprobs,
                    lambda m, t, c, mk: m(t, c, mk), reward_fn, perceptual, stream)


# ----------------------------------------------------------------------------------------------------------------
# Small helpers
def frozen_copy(model, dtype=None):
    m = copy.deepcopy(model).requires_grad_(False).eval()
    return m.to(dtype) if dtype is not None else m


def allreduce_grads(params, world):
    """Average gradients over ranks with one flat all_reduce (nanoGPT/cleanrl style). Every optimizer uses this,
    so policy, decoder and discriminator stay identical on all ranks.
    # DEVIATION: the released LlamaGen trainer never synchronised decoder gradients (docs/method.md D8)."""
    if world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    i = 0
    for p in params:
        p.grad = flat[i: i + p.numel()].view_as(p).clone()
        i += p.numel()


def average_buffers(module, world):
    """BatchNorm running statistics differ per rank (local batches): average them so every rank holds the same D."""
    if world == 1:
        return
    for b in module.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b /= world


def optimizer_step(opt, params, world, clip):
    allreduce_grads(params, world)
    norm = torch.nn.utils.clip_grad_norm_(params, clip) if clip > 0 else torch.zeros(())
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(norm)


def fingerprint(modules) -> str:
    """sha1 over every parameter and buffer: equal strings <=> bit-identical weights (checked across ranks)."""
    h = hashlib.sha1()
    for m in modules:
        for k, v in m.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def atomic_save(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)   # a kill mid-write leaves the previous checkpoint intact


def list_ckpts(out_dir):
    names = sorted(n for n in os.listdir(out_dir) if n.startswith("ckpt_") and n.endswith(".pt")) \
        if os.path.isdir(out_dir) else []
    return [os.path.join(out_dir, n) for n in names]


def load_latest_ckpt(out_dir):
    """Newest readable checkpoint; an unreadable one is reported and the previous one is used."""
    for path in reversed(list_ckpts(out_dir)):
        try:
            return torch.load(path, map_location="cpu", weights_only=True), path
        except Exception as e:  # noqa: BLE001 -- any failure to read means: corrupt, fall back to the previous one
            print(f"[resume] {path} is unreadable ({type(e).__name__}: {str(e)[:200]}); "
                  f"it is probably truncated by a kill mid-write. Trying the previous checkpoint.", file=sys.stderr)
    raise FileNotFoundError(f"--resume: no readable checkpoint ckpt_*.pt in {out_dir!r}")


def save_grid(path, images, captions, G):
    """images (R*G,3,S,S) in [-1,1] -> PNG with one row per prompt; prompts in a .txt beside it."""
    R = images.shape[0] // G
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu()           # (R*G,3,S,S)
    S = x.shape[-1]
    grid = x.view(R, G, 3, S, S).permute(0, 3, 1, 4, 2).reshape(R * S, G * S, 3)   # (R*S, G*S, 3)
    Image.fromarray(np.ascontiguousarray(grid.numpy())).save(path)
    with open(path[:-4] + ".txt", "w") as f:
        f.write("\n".join(captions[::G][:R]) + "\n")


def saved_activation_bytes(fn) -> int:
    """Bytes autograd saves for backward while fn() runs: on meta tensors this measures without computing."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def dry_run(cfg: Config):
    """Build the configured models on the meta device (no weights), print parameter counts, and estimate peak
    memory per component for the chosen batch. Activations are MEASURED as the bytes autograd saves on meta
    tensors (fp32), then halved under bf16 autocast (an approximation: norms and logits stay fp32)."""
    xl = cfg.backbone == "llamagen_xl"
    gcfg = copy.deepcopy(policy.GPT_CONFIGS["GPT-XL-t2i" if xl else "toy"])
    gcfg.grad_ckpt = cfg.grad_ckpt
    vcfg = vqlib.VQ_CONFIGS["vq16" if xl else "toy"]
    with torch.device("meta"):
        gpt, vq, disc = policy.GPT(gcfg), vqlib.VQModel(vcfg), vqlib.PatchGAN()
    n = lambda ps: sum(p.numel() for p in ps)  # noqa: E731
    n_gpt, n_dec, n_vq, n_disc = n(gpt.parameters()), n(vq.decoder_parameters()), n(vq.parameters()), n(disc.parameters())
    GB, act = 1024 ** 3, (0.5 if cfg.bf16 else 1.0)
    B, BG, N, T = cfg.batch_prompts, cfg.batch_prompts * cfg.group_size, gcfg.block_size, gcfg.cls_token_num
    rows = cfg.logp_chunk or BG
    with torch.device("meta"):
        cond, mask = torch.empty(rows, T, gcfg.caption_dim), torch.ones(rows, T, dtype=torch.bool)
        tok = torch.zeros(rows, N, dtype=torch.long)
        z = torch.empty(max(B, B * cfg.rank_k), vcfg.codebook_embed_dim, int(N ** 0.5), int(N ** 0.5))
    vq.requires_grad_(True)
    gpt_act = saved_activation_bytes(lambda: policy.token_logprobs(gpt, cond, mask, tok)) * act
    dec_act = saved_activation_bytes(lambda: vq.decode(z)) * act
    est = {
        "policy weights+grads+AdamW (fp32, 16 B/param)": 16 * n_gpt,
        "reference policy (compute dtype)": 4 * act * n_gpt,
        "EMA policy (fp32)": 4 * n_gpt,
        f"KV cache for rollouts ([cond; null] = {2 * BG} rows)": 2 * (2 * BG) * gcfg.n_layer * (T + N) * gcfg.dim * 4 * act,
        f"policy activations, log-prob forward with grad ({rows} rows, grad_ckpt={cfg.grad_ckpt})": gpt_act,
        "VQ (fp32) + EMA VQ + decoder grads/AdamW": 8 * n_vq + 12 * n_dec,
        f"decoder activations ({z.shape[0]} images per backward pass)": dec_act,
        "discriminator + AdamW": 16 * n_disc,
    }
    if xl:
        est["FLAN-T5-XL encoder (bf16, 1.22B params)"] = 2 * 1.22e9
        est["reward CLIP ViT-L-14 (fp32, 427.6M) + LPIPS VGG16 features (14.7M)"] = 4 * (427.6e6 + 14.7e6)
    print(f"[dry_run] backbone={cfg.backbone}  policy {n_gpt:,} params  VQ {n_vq:,} (decoder+post_quant_conv "
          f"trainable {n_dec:,})  discriminator {n_disc:,}  batch {B} prompts x G={cfg.group_size}")
    for k, v in est.items():
        print(f"  {k:<78s} {v / GB:8.2f} GiB")
    print(f"  {'TOTAL (sum: an upper bound, the stages run one after another)':<78s} {sum(est.values()) / GB:8.2f} GiB")
    return est


# ----------------------------------------------------------------------------------------------------------------
def main(cfg: Config):
    # ---- distributed setup: torchrun env vars; the same file runs without torchrun ----
    ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if ddp:
        dist.init_process_group("nccl" if use_cuda else "gloo")
        rank, world, local = dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    else:
        rank, world, local = 0, 1, 0
    device = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    master = rank == 0
    print0 = (lambda *a: print(*a, flush=True)) if master else (lambda *a: None)
    autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_cuda and cfg.bf16)
    compute_dtype = torch.bfloat16 if (use_cuda and cfg.bf16) else torch.float32
    print0(json.dumps(asdict(cfg), indent=1))
    torch.manual_seed(cfg.seed)                     # identical model init on every rank

    # ---- models: policy, frozen reference, EMAs, tokenizer, discriminator ----
    bb = build_backbone(cfg, device, rank)
    gpt, vq = bb.gpt.eval(), bb.vq.eval()           # policy runs without dropout: logp_old == logp at step 0
    vq.requires_grad_(False)
    dec_params = vq.decoder_parameters()            # decoder + post_quant_conv (docs/method.md §2)
    for p in dec_params:
        p.requires_grad_(cfg.method in ("ranke", "decoder"))
    ref_gpt = frozen_copy(gpt, compute_dtype)       # KL anchor: frozen initial policy (D1)
    # DEVIATION: EMA copies stay fp32 even under bf16: a 0.999 / 0.99 EMA step is below bf16 resolution.
    ema_gpt, ema_vq = frozen_copy(gpt), frozen_copy(vq)
    disc = vqlib.PatchGAN().to(device).train()            # PatchGAN from N(0, 0.02), trained from scratch (§6)
    gpt_params = [p for p in gpt.parameters() if p.requires_grad]
    opt_gpt = torch.optim.AdamW(gpt_params, lr=cfg.lr_gpt, weight_decay=cfg.weight_decay)
    opt_dec = torch.optim.AdamW(dec_params, lr=cfg.lr_decoder, weight_decay=cfg.weight_decay)
    opt_disc = torch.optim.AdamW(disc.parameters(), lr=cfg.lr_disc, weight_decay=cfg.weight_decay)
    gen = torch.Generator(device).manual_seed(cfg.seed + 1000 * rank + 1)   # rollouts / VA-pi noise, per rank

    # ---- resume ----
    step = 0
    os.makedirs(cfg.out_dir, exist_ok=True)
    if cfg.resume and list_ckpts(cfg.out_dir):
        ck, path = load_latest_ckpt(cfg.out_dir)
        if ck["world_size"] != world:
            raise SystemExit(f"{path} was written by {ck['world_size']} processes; resume with the same count")
        for m, k in ((gpt, "gpt"), (ref_gpt, "ref_gpt"), (ema_gpt, "ema_gpt"), (vq, "vq"), (ema_vq, "ema_vq"), (disc, "disc")):
            m.load_state_dict(ck[k])
        for o, k in ((opt_gpt, "opt_gpt"), (opt_dec, "opt_dec"), (opt_disc, "opt_disc")):
            o.load_state_dict(ck[k])
        gen.set_state(ck["rank_state"][rank]["gen"])
        bb.stream.load_state_dict(ck["rank_state"][rank]["data"])
        step = ck["step"]
        print0(f"[resume] {path} at step {step}")

    def save(step):
        state = {"gen": gen.get_state(), "data": bb.stream.state_dict(),
                 "fingerprint": fingerprint([gpt, vq, disc])}
        states = [None] * world
        dist.all_gather_object(states, state) if ddp else states.__setitem__(0, state)
        if len({s["fingerprint"] for s in states}) != 1:      # every rank must hold the same weights
            raise RuntimeError(f"ranks diverged at step {step}: weight fingerprints {[s['fingerprint'] for s in states]}")
        if master:
            ck = dict(config=asdict(cfg), step=step, world_size=world, rank_state=states,
                      gpt=gpt.state_dict(), ref_gpt=ref_gpt.state_dict(), ema_gpt=ema_gpt.state_dict(),
                      vq=vq.state_dict(), ema_vq=ema_vq.state_dict(), disc=disc.state_dict(),
                      opt_gpt=opt_gpt.state_dict(), opt_dec=opt_dec.state_dict(), opt_disc=opt_disc.state_dict())
            atomic_save(ck, os.path.join(cfg.out_dir, f"ckpt_{step:07d}.pt"))
            for old in list_ckpts(cfg.out_dir)[:-cfg.keep_ckpts]:
                os.remove(old)

    log_f = open(os.path.join(cfg.out_dir, "metrics.jsonl"), "a") if master else None
    tb = wb = None
    if master and cfg.logger == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter
        tb = SummaryWriter(cfg.out_dir)
    if master and cfg.logger == "wandb":
        import wandb
        wb = wandb.init(project="ranke", config=asdict(cfg), dir=cfg.out_dir)

    B, G = cfg.batch_prompts, cfg.group_size
    bar = tqdm(range(step, cfg.steps), initial=step, total=cfg.steps, disable=not master, desc=cfg.method)
    for step in bar:
        t0 = time.time()
        stats = {"step": step + 1}
        x_gt, captions = bb.stream.next()                              # (B,3,S,S) in [-1,1], B captions
        x_gt = x_gt.to(device)
        stats.update({f"data/{k}": v for k, v in bb.stream.stats().items()})   # skipped bad samples so far
        cond, mask = bb.text_encoder(captions)                          # (B,T,D), (B,T)
        cond, mask = cond.to(device), mask.to(device)
        cond_g, mask_g = cond.repeat_interleave(G, 0), mask.repeat_interleave(G, 0)   # (B*G,T,D): prompt-major
        prompts_g = [c for c in captions for _ in range(G)]
        logp_scale = cfg.cfg_scale if cfg.logp_cfg == "guided" else 1.0
        use_gan = step >= cfg.disc_start

        if cfg.method == "vapi":
            stats.update(vapi_iteration(cfg, bb, gpt, ref_gpt, vq, x_gt, cond, mask, gen, opt_gpt, gpt_params,
                                        world, autocast))
        else:
            # ---- 1. ROLLOUT: G samples per prompt from the online policy, with CFG (no grad) ----
            t_roll = time.time()
            with torch.no_grad(), autocast():
                tokens = bb.sample(gpt, cond_g, mask_g, cfg_scale=cfg.cfg_scale, temperature=cfg.temperature,
                                   top_k=cfg.top_k, top_p=cfg.top_p, generator=gen)         # (B*G, N)
                logp_old = bb.logprobs(gpt, cond_g, mask_g, tokens, cfg_scale=logp_scale).float()
                kl_model = ema_gpt if cfg.kl_ref == "ema" else ref_gpt
                logp_ref = bb.logprobs(kl_model, cond_g, mask_g, tokens, cfg_scale=logp_scale).float()
            stats["rollout_img_per_s"] = B * G / (time.time() - t_roll)
            # ---- 2. REWARD on EMA-decoder images (fp32), group advantages (docs/method.md §4.1) ----
            with torch.no_grad():
                x_roll = ema_vq.decode_indices(tokens).float().clamp(-1, 1)            # (B*G,3,S,S)
                r, rinfo = bb.reward_fn((x_roll + 1) / 2, prompts_g)                    # (B*G,)
            adv, s = ranke.group_advantages(r.float(), G)
            stats.update({"reward/mean": float(r.mean()), "reward/std": float(r.float().std())})
            stats.update({f"reward/{k}": v for k, v in rinfo.items()}, **{f"adv/{k}": v for k, v in s.items()})
            # ---- 3. POLICY step: clipped surrogate + beta * KL (docs/method.md §4.3) ----
            if cfg.method in ("ranke", "grpo"):
                for _ in range(cfg.ppo_epochs):
                    stats.update(policy_step(cfg, bb, gpt, cond_g, mask_g, tokens, logp_old, logp_ref, adv,
                                             logp_scale, autocast))
                    stats["grad_norm/gpt"] = optimizer_step(opt_gpt, gpt_params, world, cfg.grad_clip)
                if (step + 1) % cfg.ema_gpt_every == 0:                                # EMA-GPT every 10 steps
                    ranke.ema_update(ema_gpt, gpt, cfg.ema_gpt_decay)
            if cfg.method in ("ranke", "decoder"):
                with torch.no_grad():                                                  # frozen encoder, fp32
                    z_gt = vq.codebook_lookup(vq.encode_indices(x_gt.float()))        # (B,C,h,w)
                # ---- 4. DISC step: real vs reconstruction of real (docs/method.md §6), from disc_start ----
                if use_gan:
                    with torch.no_grad(), autocast():
                        x_rec = vq.decode(z_gt).float()
                    with autocast():
                        d_loss, s = ranke.disc_hinge_loss(disc(x_gt).float(), disc(x_rec).float(), cfg.disc_weight)
                    d_loss.backward()
                    stats.update({f"disc/{k}": v for k, v in s.items()})
                    stats["grad_norm/disc"] = optimizer_step(opt_disc, list(disc.parameters()), world, 0.0)
                # ---- 5. DECODER step on the same rollouts (docs/method.md §5) ----
                stats.update(decoder_step(cfg, bb, vq, ema_vq, disc, x_gt, z_gt, tokens, r, prompts_g, step,
                                          use_gan, autocast))
                stats["grad_norm/decoder"] = optimizer_step(opt_dec, dec_params, world, cfg.grad_clip)
                ranke.ema_update(ema_vq, vq, cfg.ema_vq_decay)                         # every decoder step
                average_buffers(disc, world)          # D's BatchNorm statistics saw this rank's batches only
        # ---- logging, samples, checkpoints ----
        stats["step_time_s"] = time.time() - t0
        stats["peak_mem_gb"] = (torch.cuda.max_memory_allocated(device) if use_cuda else peak_rss()) / 1024 ** 3
        if master:
            log_f.write(json.dumps(stats) + "\n")
            log_f.flush()
            bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in stats.items()
                             if k in ("reward/mean", "policy/kl", "decoder/total", "step_time_s")})
            if tb:
                for k, v in stats.items():
                    tb.add_scalar(k, v, step + 1)
            if wb:
                wb.log(stats, step=step + 1)
            if cfg.sample_every and (step + 1) % cfg.sample_every == 0 and cfg.method != "vapi":
                with torch.no_grad(), autocast():
                    rows = min(B, 4) * G
                    save_grid(os.path.join(cfg.out_dir, f"samples_{step + 1:07d}.png"),
                              vq.decode_indices(tokens[:rows]), prompts_g[:rows], G)
        if (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps:
            save(step + 1)
    if master:
        log_f.close()
    if ddp:
        dist.destroy_process_group()


def peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def policy_step(cfg, bb, gpt, cond_g, mask_g, tokens, logp_old, logp_ref, adv, logp_scale, autocast):
    """Gradient of L_GPT = L_pg + beta * L_KL (docs/method.md §4.3), accumulated over row chunks to bound memory."""
    BG = tokens.shape[0]
    chunk = cfg.logp_chunk or BG
    acc = {}
    for i in range(0, BG, chunk):
        sl = slice(i, i + chunk)
        with autocast():
            logp = bb.logprobs(gpt, cond_g[sl], mask_g[sl], tokens[sl], cfg_scale=logp_scale).float()   # (b, N)
        loss, s = ranke.policy_loss(logp, logp_old[sl], logp_ref[sl], adv[sl], clip_eps=cfg.clip_eps,
                                    beta=cfg.beta_kl, kl_estimator=cfg.kl_estimator)
        frac = tokens[sl].shape[0] / BG                       # token means over chunks = mean over all tokens
        (loss * frac).backward()
        for k, v in s.items():
            acc[f"policy/{k}"] = acc.get(f"policy/{k}", 0.0) + v * frac
    return acc


def decoder_step(cfg, bb, vq, ema_vq, disc, x_gt, z_gt, tokens, r, prompts_g, step, use_gan, autocast):
    """Gradients of the decoder objective (docs/method.md §5.2): two backward passes, the optimizer step is the caller's."""
    G, stats = cfg.group_size, {}
    disc.requires_grad_(False)                                # D is a fixed critic during the decoder step
    # (1) ground-truth reconstruction: L1 + perceptual + adaptive-weighted GAN (manifold anchor), own backward
    with autocast():
        x_rec = vq.decode(z_gt).float()                        # (B,3,S,S)
        d_rec = disc(x_rec).float() if use_gan else None
    l_gt, s = ranke.gt_recon_loss(x_gt, x_rec, d_rec, vq.last_layer, bb.perceptual, use_gan=use_gan)
    (cfg.lambda_recon * l_gt).backward()
    stats.update({f"decoder/gt_{k}": v for k, v in s.items()})
    # (2) selection: top-K per prompt by the rollout (EMA-decoder) rewards, rank weights (docs/method.md §5.1, D2, D3)
    tau, _ = ranke.tau_schedule(step, cfg.total_steps, cfg.tau_start, cfg.tau_end, cfg.tau_frac)
    if cfg.rank_mode == "reward":
        idx, w, s = ranke.rank_weights(r.float(), G, cfg.rank_k, tau)
    else:   # ablation: a uniform GAN on K random samples per prompt, w = 1 (docs/method.md §5.1)
        B = r.shape[0] // G
        pick = torch.stack([torch.randperm(G, generator=torch.Generator().manual_seed(cfg.seed + step * 7919 + b))[:cfg.rank_k]
                            for b in range(B)])                                                      # (B,K)
        idx = (pick + G * torch.arange(B)[:, None]).reshape(-1).to(r.device)
        w, s = torch.ones(idx.shape[0], device=r.device), {}
    stats.update({f"rank/{k}": v for k, v in s.items()}, **{"rank/tau": float(tau)})
    z_sel = tokens[idx]                                                                             # (B*K, N)
    with autocast():
        x_sel = vq.decode_indices(z_sel).float().clamp(-1, 1)                                      # x_hat*
        with torch.no_grad():
            x_ema = ema_vq.decode_indices(z_sel).float()
        d_sel = disc(x_sel).float() if use_gan else None
    # (3) Rank-GAN + EMA consistency + reward backprop, one backward
    total = torch.zeros((), device=x_sel.device)
    if use_gan:
        l_rg, s = ranke.rank_gan_loss(d_sel, w, cfg.disc_weight)
        total = total + cfg.lambda_gan * l_rg
        stats.update({f"decoder/rankgan_{k}": v for k, v in s.items()})
    l_c, s = ranke.consistency_loss(x_sel, x_ema, bb.perceptual)
    total = total + cfg.lambda_consist * l_c
    stats.update({f"decoder/consist_{k}": v for k, v in s.items()})
    if cfg.lambda_reward:
        scores, _ = bb.reward_fn((x_sel + 1) / 2, [prompts_g[i] for i in idx.tolist()])
        l_r, s = ranke.reward_loss(scores.float(), w)
        total = total + cfg.lambda_reward * l_r
        stats.update({f"decoder/reward_{k}": v for k, v in s.items()})
    total.backward()
    disc.requires_grad_(True)
    stats["decoder/total"] = float(total.detach()) + cfg.lambda_recon * float(l_gt.detach())
    return stats


def vapi_iteration(cfg, bb, gpt, ref_gpt, vq, x_gt, cond, mask, gen, opt_gpt, gpt_params, world, autocast):
    """VA-pi (docs/method.md §12.2): teacher-forced policy step with a reconstruction reward; decoder frozen."""
    G = cfg.group_size
    with torch.no_grad():
        z_gt = vq.encode_indices(x_gt.float())                                       # (B, N) ground-truth tokens
    z_in, s_noise = vapi.noisy_context(z_gt, cfg.vapi_xi, vq.cfg.codebook_size, gen)  # corrupted context
    with autocast():
        logits = bb.logits(gpt, z_in, cond, mask).float()                             # (B,N,V), one forward
    samples, _ = vapi.positionwise_sample(logits.detach(), G, gen)                   # (B*G, N) drawn per position
    with torch.no_grad(), autocast():
        x_hat = vq.decode_indices(samples).float().clamp(-1, 1)                       # frozen decoder
    r, s_r = vapi.recon_reward(x_hat, x_gt.repeat_interleave(G, 0).float(), bb.perceptual)
    adv, s_a = ranke.group_advantages(r, G)
    logp = vapi.positionwise_logprobs(logits, samples)                                 # (B*G,N), differentiable
    if cfg.vapi_kl:                                                                     # optional k3 KL to the base
        with torch.no_grad(), autocast():
            logp_ref = vapi.positionwise_logprobs(bb.logits(ref_gpt, z_in, cond, mask).float(), samples)
    else:
        logp_ref = logp.detach()
    pg, s_p = ranke.policy_loss(logp, logp.detach(), logp_ref, adv, clip_eps=cfg.clip_eps, beta=cfg.vapi_kl,
                                kl_estimator="k3")
    ce, s_c = vapi.ce_prior(logits, z_gt)                                             # prior regulariser
    (pg + cfg.vapi_ce * ce).backward()
    stats = {f"vapi/{k}": v for d in (s_noise, s_r, s_p, s_c) for k, v in d.items()}
    stats.update({f"adv/{k}": v for k, v in s_a.items()})
    stats["reward/mean"] = float(r.mean())
    stats["grad_norm/gpt"] = optimizer_step(opt_gpt, gpt_params, world, cfg.grad_clip)
    return stats


if __name__ == "__main__":
    cfg = parse_config()
    if cfg.dry_run:
        dry_run(cfg)
    else:
        main(cfg)
