"""The backbones without their weights: every model at its real size with seeded random weights (`--synthetic`),
or on the meta device for a peak-memory estimate (`--dry_run`); nothing downloaded or read.

Why (docs/method.md §3, §8): the speed and memory of a RankE iteration depend on the SHAPES of its models (policy,
tokenizer, text encoder, reward CLIP, LPIPS), not on their weights. `train.py --synthetic` builds them all from
their configurations with seeded random weights, feeds the loop a synthetic caption/image stream and hashing
tokenizers, and so runs the real loop end to end on any machine. Its rewards, images and metrics mean nothing: a
banner says so, the config (saved in every checkpoint and in metrics.jsonl) holds `synthetic`, and a resume that
mixes synthetic and real checkpoints stops (runtime.resume).

    python train.py --backbone llamagen_xl --synthetic --steps 3        # real sizes (--synthetic = --synthetic full)
    python train.py --backbone llamagen_xl --synthetic 2 --steps 3      # real widths, every stack 2 layers deep
    python train.py --backbone janus_pro_1b --synthetic tiny --steps 2 --device cpu   # CPU-test scale (SCALES)

Scales (one value of --synthetic):
  full   every model exactly as released (parameter counts in FULL_COUNTS; the self-check verifies them on meta)
  L      an integer: real widths, images and vocabularies; the transformer stacks (policy trunk, T5 encoder, both
         CLIP towers) L layers deep. The VQ, LPIPS and discriminator stay real.
  tiny   CPU tests: policy 2 layers x width 256 (real vocabularies and 120 caption slots); FLAN-T5-XL at its real
         width, 2 layers; VQ-16 at its real depth and codebook, base width 32 (real: 128); CLIP towers 2 layers x
         width 256 (real input 224, patch 14, BPE tokenizer, context 77); LPIPS-VGG16 and PatchGAN real; 64-px
         images (4x4 tokens).
Seeds: model m is drawn from Generator(cfg.seed + SEED_OFFSETS[m]); the stream from Generator(data seed).

`python train.py --dry_run [flags]` (dry_run below) builds the configured models on the meta device, prints parameter
counts and a per-component memory estimate of one RankE iteration for the chosen batch. Activations are MEASURED as
the bytes autograd saves during a forward on meta tensors, in fp32, and kept at that under bf16 autocast: the policy
then saves about as much (its residual stream and logits stay fp32), the VQ decoder about 0.6x (measured on CPU
autocast forwards at full width, docs/experiments.md §10). The total is a sum, an upper bound: the stages of an
iteration run one after another.

Self-check (CPU, seconds): python -m perf.synthetic   (full sizes on the meta device against FULL_COUNTS; one tiny
text-encode, reward and LPIPS call; the dry-run estimate of the released LlamaGen-XL batch).
Tests: pytest -q tests/test_synthetic.py.  Speed per stage: bench/stages.py.
Symbols: B captions / images, S image side, T caption slots (T5: 120) or prompt tokens (Janus), D T5 width (2048),
V vocabulary, L layers per transformer stack, N image tokens; in dry_run B prompts per GPU and micro-batch, G samples
per prompt (BG = B*G rollouts).
"""
import copy
import hashlib
import math
import re
from dataclasses import replace
from types import SimpleNamespace

import torch
import torch.nn as nn

import backbones
import policy
import rewards
import text_encoders
import vq as vqlib
from backbones import MODELS
from data import WorldStream
from perf import fast_sample

BANNER = """
################################################################################################
##  SYNTHETIC RUN  (--synthetic {scale})  backbone {backbone}
##  Every model has RANDOM weights; captions, images and tokenizers are synthetic. Nothing was
##  downloaded or read. Rewards, samples and metrics are MEANINGLESS: use this run only for
##  speed, memory and plumbing. Its checkpoints say synthetic={scale!r}; a run with another
##  --synthetic value (a real run included) refuses to resume them.
################################################################################################"""
SEED_OFFSETS = {"gpt": 0, "vq": 1, "t5": 2, "clip": 3, "lpips": 4, "head": 5}
# Real parameter counts (meta-device builds; tests/test_synthetic.py): GPT-XL t2i, VQ-16, FLAN-T5-XL encoder,
# CLIP ViT-L/14 (OpenAI), HPSv2's ViT-H-14, LPIPS-VGG16 (features[0:30] + 5 heads), Janus-Pro-1B generation path.
FULL_COUNTS = {"gpt": 777_678_080, "vq": 71_883_403, "t5": 1_223_527_424, "clip": 427_616_513,
               "hpsv2": 986_109_441, "lpips": 14_716_160, "janus": 1_485_053_952}
CLIP_ARCH = {"clip": ("ViT-L-14", True), "hpsv2": ("ViT-H-14", False)}     # reward -> (open_clip arch, quick_gelu)
COLORS = {"red": (1, -.8, -.8), "green": (-.8, .8, -.8), "blue": (-.8, -.6, 1), "yellow": (1, 1, -.8),
          "white": (1, 1, 1), "black": (-1, -1, -1), "purple": (.4, -.8, .8), "orange": (1, .2, -.9)}
SHAPES, PLACES = ("circle", "square", "cat", "car", "tree", "cup"), ("on a table", "in a field", "at night", "")


def _layers(scale: str, real: int, tiny: int = 2) -> int:
    return tiny if scale == "tiny" else int(scale) if scale.isdigit() else real


# ---- the backbone's models (backbones.MODELS) at a scale: the released configurations for "full" ---------------
def gpt_config(scale: str, backbone: str = "llamagen_xl") -> policy.GPTConfig:   # GPT-XL t2i: 36 layers x 1280
    base = policy.GPT_CONFIGS[MODELS[backbone].gpt]
    g = replace(base, n_layer=_layers(scale, base.n_layer))                      # own copy: .grad_ckpt is set on it
    return replace(g, dim=256, n_head=4, block_size=16) if scale == "tiny" else g


def janus_config(scale: str, backbone: str = "janus_pro_1b"):   # Janus-Pro-1B: 24 layers x 2048, 16 heads, 576 tokens
    import janus
    base = janus.JANUS_CONFIGS[MODELS[backbone].gpt]
    j = replace(base, n_layer=_layers(scale, base.n_layer))
    return replace(j, dim=256, n_head=4, ffn_hidden=704, image_tokens=16) if scale == "tiny" else j


def vq_config(scale: str, backbone: str = "llamagen_xl") -> vqlib.VQConfig:   # VQ-16; tiny: a quarter of the width
    m = MODELS[backbone]
    if m.vq:
        base = vqlib.VQ_CONFIGS[m.vq]
    else:                                                       # Janus: its config names its VQ
        import janus
        base = janus.janus_vq_config(janus.JANUS_CONFIGS[m.gpt])
    return replace(base, ch=32) if scale == "tiny" else base


def t5_config(scale: str, backbone: str = "llamagen_xl"):
    """The backbone's T5 encoder (text_encoders.T5_CONFIGS: FLAN-T5-XL's config.json) with _layers(scale) layers."""
    import transformers
    c = text_encoders.T5_CONFIGS[MODELS[backbone].text]
    return transformers.T5Config(**{**c, "num_layers": _layers(scale, c["num_layers"])}, is_encoder_decoder=False,
                                 use_cache=False)


def clip_config(reward: str, scale: str) -> dict:
    """open_clip's own config of the reward architecture (shipped with the package), at a scale."""
    import open_clip
    c = open_clip.get_model_config(CLIP_ARCH[reward][0])
    v, t = dict(c["vision_cfg"]), dict(c["text_cfg"])
    v["layers"], t["layers"] = _layers(scale, v["layers"]), _layers(scale, t["layers"])
    if scale == "tiny":
        v.update(width=256, head_width=64)
        t.update(width=256, heads=4)
    return dict(embed_dim=256 if scale == "tiny" else c["embed_dim"], vision_cfg=v, text_cfg=t)


def image_side(cfg) -> int:
    """Pixels per side decoded by the synthetic tokenizer: sqrt(N) x 16 (VQ-16 downsamples by 2^4)."""
    s, bk = cfg.synthetic, cfg.backbone
    n = janus_config(s, bk).image_tokens if bk == "janus_pro_1b" else gpt_config(s, bk).block_size
    return math.isqrt(n) * 2 ** (len(vq_config(s, bk).ch_mult) - 1)


# ---- models with seeded random weights (meta tensors, under `with torch.device("meta")`, are left empty) ---------
@torch.no_grad()
def t5_encoder(scale: str, seed: int, backbone: str = "llamagen_xl"):
    """T5EncoderModel at `scale`, bf16 (T5TextEncoder's dtype), eval mode, drawn from Generator(seed) with the law of
    transformers' T5 init (models/t5/modeling_t5.py T5PreTrainedModel._init_weights, factor 1): embeddings N(0,1),
    q N(0,(D*d_kv)^-1/2), other linears and the relative bias N(0, fan_in^-1/2), norms 1. Built on meta, then
    materialised: no weight is drawn twice (transformers' own init takes seconds more and no generator)."""
    import transformers
    c = t5_config(scale, backbone)
    with torch.device("meta"):
        model = transformers.T5EncoderModel(c)
    if torch.get_default_device().type == "meta":
        return model.eval()
    model, g = model.to_empty(device="cpu"), torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "layer_norm" in name:
            p.fill_(1.0)
        else:
            std = 1.0 if name.endswith(("shared.weight", "embed_tokens.weight")) else \
                (c.d_model * c.d_kv) ** -0.5 if name.endswith(".q.weight") else \
                c.d_model ** -0.5 if "relative_attention_bias" in name else p.shape[1] ** -0.5
            p.normal_(0.0, std, generator=g)
    return model.to(torch.bfloat16).eval()


def clip_model(reward: str, scale: str, seed: int):
    """open_clip CLIP of the reward's architecture, pretrained=None: open_clip's own init, drawn under a seeded,
    forked global RNG (open_clip takes no generator), so the caller's RNG is untouched."""
    import open_clip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return open_clip.CLIP(**clip_config(reward, scale), quick_gelu=CLIP_ARCH[reward][1]).eval()


def lpips(seed: int) -> vqlib.LPIPS:
    """vq.LPIPS with seeded random weights: VGG16 convs U(+-1/sqrt(fan_in)), heads |U| (LPIPS heads are >= 0).
    vq.LPIPS.__init__ always reads its two weight files, so its modules are assembled here (duplicated from vq.py,
    which stays unchanged); forward, eval-only train() and the cuts are vq.LPIPS's own."""
    lp = vqlib.LPIPS.__new__(vqlib.LPIPS)
    nn.Module.__init__(lp)
    lp.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
    lp.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
    feats, c = [], 3
    for v in vqlib._VGG16_CFG:
        feats += [nn.MaxPool2d(2, 2)] if v == "M" else [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
        c = v if v != "M" else c
    lp.features = nn.Sequential(*feats)
    for k, ch in enumerate(vqlib._LPIPS_CH):
        lp.add_module(f"lin{k}", nn.Module())
        getattr(lp, f"lin{k}").model = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(ch, 1, 1, bias=False))
    with torch.no_grad():
        vqlib._init_(lp, torch.Generator().manual_seed(seed))
        for k in range(5):
            getattr(lp, f"lin{k}").model[1].weight.abs_()
    return lp.requires_grad_(False).eval()


# ---- tokenizers: words hashed to ids (no tokenizer file exists offline) -------------------------------------------
def hash_ids(text: str, lo: int, hi: int) -> list:
    """Words and punctuation of text -> ids in [lo, hi), by blake2b: deterministic across processes and machines."""
    return [lo + int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little") % (hi - lo)
            for w in re.findall(r"\w+|[^\w\s]", text)]


class HashT5Tokenizer:
    """The call T5TextEncoder makes on a transformers tokenizer: pad 0, </s> 1 appended, ids in [3, V), right
    padding to max_length, truncation keeping </s>."""

    def __init__(self, vocab_size: int = 32128):
        self.vocab_size = vocab_size

    def __call__(self, texts, max_length, padding="max_length", truncation=True, add_special_tokens=True,
                 return_tensors="pt"):
        ids = torch.zeros(len(texts), max_length, dtype=torch.long)
        for i, t in enumerate(texts):
            row = hash_ids(t, 3, self.vocab_size)[:max_length - 1] + [1]
            ids[i, :len(row)] = torch.tensor(row)
        return SimpleNamespace(input_ids=ids, attention_mask=(ids != 0).long())


class HashJanusTokenizer:
    """The call JanusTextEncoder makes: encode(prompt) -> [BOS] + word ids in [0, bos_id) + [<begin_of_image>]."""

    def __init__(self, jcfg):
        self.c = jcfg

    def encode(self, text: str) -> list:
        body = text[:-len(text_encoders.BOI)] if text.endswith(text_encoders.BOI) else text
        return [self.c.bos_id] + hash_ids(body, 0, self.c.bos_id) + ([self.c.boi_id] if body != text else [])


# ---- data: seeded captions from a word list, simple procedural images of them ------------------------------------
class SyntheticWorld:
    """(images (n,3,S,S) in [-1,1], n captions): "a {colour} {shape} {place}" over a two-colour gradient with a disc
    of the caption's colour at a random place, every draw from the given generator. Served by data.WorldStream (as
    the toy world is), which makes the stream resumable through its generator state."""

    def __init__(self, side: int):
        self.side = side

    def sample(self, B: int, g: torch.Generator, split: str = "train"):   # one split: `split` is accepted, unused
        S = self.side
        pick = lambda n: torch.randint(n, (B,), generator=g).tolist()  # noqa: E731
        names, shapes, places, bgs = pick(len(COLORS)), pick(len(SHAPES)), pick(len(PLACES)), pick(len(COLORS))
        cols = torch.tensor(list(COLORS.values()))                                                 # (8,3)
        caps = [f"{'an' if list(COLORS)[c][0] in 'aeiou' else 'a'} {list(COLORS)[c]} {SHAPES[s]} {PLACES[p]}".strip()
                for c, s, p in zip(names, shapes, places)]
        yy, xx = torch.meshgrid(torch.linspace(0, 1, S), torch.linspace(0, 1, S), indexing="ij")  # (S,S)
        cx, cy, r = torch.rand(3, B, generator=g) * torch.tensor([[.6], [.6], [.2]]) + torch.tensor([[.2], [.2], [.1]])
        disc = ((xx - cx[:, None, None]) ** 2 + (yy - cy[:, None, None]) ** 2 < r[:, None, None] ** 2).float()
        bg = cols[bgs][:, :, None, None] * 0.5 * (0.5 + yy)                                        # (B,3,S,S)
        x = bg * (1 - disc[:, None]) + cols[names][:, :, None, None] * disc[:, None]
        return (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(-1, 1), caps


# ---- what train.py (--synthetic) and sample.py (a synthetic run's checkpoint) call: backbones.py's builders' twins --
def build_backbone(cfg, device, rank: int):
    """backbones.Backbone of cfg.backbone at scale cfg.synthetic, as backbones.build_backbone."""
    if rank == 0:
        print(banner(cfg), flush=True)
    return backbones.assemble(cfg, device, build_policy(cfg, device),
                              build_world(cfg, device, cfg.seed + 1000 * rank))


def build_policy(cfg, device, weights=True):
    """(text_encoder, gpt, vq, sample, logprobs) of cfg.backbone at scale cfg.synthetic, as backbones.build_policy.
    weights=False: a checkpoint of a synthetic run is about to be loaded into them (sample.py), which is said."""
    if not weights:
        print(banner(cfg).replace("SYNTHETIC RUN", "CHECKPOINT OF A SYNTHETIC RUN"), flush=True)
    s, seed, bk = cfg.synthetic, cfg.seed, cfg.backbone
    vq = vqlib.VQModel(vq_config(s, bk), generator=torch.Generator().manual_seed(seed + SEED_OFFSETS["vq"]))
    if bk == "janus_pro_1b":
        import janus
        jc = janus_config(s, bk)
        enc = text_encoders.JanusTextEncoder("synthetic", jc, device=device)
        enc.tokenizer = HashJanusTokenizer(jc)
        return (enc, janus.JanusGen(jc, seed=seed + SEED_OFFSETS["gpt"]), vq, fast_sample.sample_janus,
                janus.token_logprobs)
    gc = gpt_config(s, bk)
    enc = text_encoders.T5TextEncoder("synthetic", max_len=gc.cls_token_num, device=device)
    enc.tokenizer, enc.model = HashT5Tokenizer(), t5_encoder(s, seed + SEED_OFFSETS["t5"], bk).to(device)
    gpt = policy.GPT(gc, seed=seed + SEED_OFFSETS["gpt"])
    if not gpt.output.weight.is_meta:   # LlamaGen's from-scratch init zeroes the head: uniform logits and, at the
        with torch.no_grad():           # first step, no gradient below it. A trained policy's head is not zero.
            gpt.output.weight.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(seed + SEED_OFFSETS["head"]))
    return enc, gpt, vq, fast_sample.sample_gpt, policy.token_logprobs


def build_world(cfg, device, data_seed: int):
    """(reward_fn, perceptual, stream): the --reward CLIP at scale with the settings of rewards.py's loader
    (duplicated here: rewards._load_* read a checkpoint), random LPIPS, the synthetic stream."""
    import open_clip
    arch = CLIP_ARCH[cfg.reward][0]
    mean, std, resize = ((rewards.RELEASED_CLIP_MEAN, rewards.RELEASED_CLIP_STD, "bilinear") if cfg.reward == "clip"
                         else (rewards.OPENAI_MEAN, rewards.OPENAI_STD, "bicubic_crop"))
    clip = rewards.ClipReward(clip_model(cfg.reward, cfg.synthetic, cfg.seed + SEED_OFFSETS["clip"]).to(device),
                              open_clip.get_tokenizer(arch), image_size=224, mean=mean, std=std, scale=100.0,
                              name=cfg.reward, resize=resize)
    reward_fn = rewards.WeightedReward({cfg.reward: (clip, 1.0)})
    return reward_fn, lpips(cfg.seed + SEED_OFFSETS["lpips"]).to(device), \
        WorldStream(SyntheticWorld(image_side(cfg)), cfg.batch_prompts, data_seed)


def banner(cfg) -> str:
    return BANNER.format(scale=cfg.synthetic, backbone=cfg.backbone) + \
        f"\n##  images {image_side(cfg)} px (the synthetic tokenizer's side, which --image_size follows)\n"


def full_counts(backbone: str = "llamagen_xl") -> dict:
    """Parameter counts of the full-size synthetic models, built on the meta device (no memory, no init)."""
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    with torch.device("meta"):
        out = {"vq": n(vqlib.VQModel(vq_config("full", backbone))), "clip": n(clip_model("clip", "full", 0)),
               "hpsv2": n(clip_model("hpsv2", "full", 0)), "lpips": n(lpips(0))}
        if backbone == "janus_pro_1b":   # Janus encodes its own prompts: no T5
            import janus
            out["janus"] = n(janus.JanusGen(janus_config("full", backbone)))
        else:
            out.update(gpt=n(policy.GPT(gpt_config("full", backbone))), t5=n(t5_encoder("full", 0, backbone)))
    return out


# ---- --dry_run: the configured models on the meta device, a peak-memory estimate ------------------------------
def saved_activation_bytes(fn, modules=()) -> int:
    """Bytes of the distinct storages autograd saves for backward while fn() runs, the parameters of `modules` left
    out (they are counted once as weights; a ViT saves each weight again per matmul): on meta tensors this measures
    without computing."""
    params = {p.untyped_storage()._cdata for m in modules for p in m.parameters()}
    seen, total = set(), [0]

    def pack(t):
        sid = t.untyped_storage()._cdata
        if sid not in params and sid not in seen:
            seen.add(sid)
            total[0] += t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def dry_run(cfg):
    """Build the configured full-size models on the meta device (no weights), print parameter counts, and estimate
    peak memory per component of one RankE iteration for the chosen batch. Activations are MEASURED as the bytes
    autograd saves on meta tensors (fp32; not reduced under bf16 autocast, see the module docstring). Other methods
    and --synthetic scales are refused: they hold other things (VA-pi: no rollout cache, a decode of B*G images)."""
    method, synthetic = getattr(cfg, "method", "ranke"), getattr(cfg, "synthetic", "")
    other = [f for f, bad in ((f"--method {method}", method != "ranke"), (f"--synthetic {synthetic!r}", synthetic))
             if bad]
    if other:
        raise SystemExit(f"--dry_run estimates one RankE iteration of the full-size models, not {' / '.join(other)}: "
                         "drop that flag (or --dry_run)")
    xl, jan, models = cfg.backbone == "llamagen_xl", cfg.backbone == "janus_pro_1b", MODELS[cfg.backbone]
    GB, kv_bytes = 1024 ** 3, (2 if cfg.bf16 else 4)         # the rollout KV cache is bf16 under autocast
    B, BG = cfg.batch_prompts, cfg.batch_prompts * cfg.group_size
    rows = cfg.logp_chunk or BG
    guided = getattr(cfg, "logp_cfg", "cond") == "guided"    # guided log-probs run the cond and null rows together
    logp_scale = max(getattr(cfg, "cfg_scale", 4.0), 1.0 + 1e-6) if guided else 1.0
    if jan:   # Janus-Pro-1B generation path (janus.py); T = a typical templated prompt length, left-padded
        import janus
        gcfg = copy.deepcopy(janus.JANUS_CONFIGS[getattr(cfg, "janus_config", models.gpt)])
        vcfg, N, T, n_layer, width = janus.janus_vq_config(gcfg), gcfg.image_tokens, 64, gcfg.n_layer, gcfg.dim
        with torch.device("meta"):
            gpt = janus.JanusGen(gcfg)
            cond, mask = torch.zeros(rows, T, dtype=torch.long), torch.ones(rows, T, dtype=torch.bool)
        logprobs = janus.token_logprobs
    else:
        gcfg = copy.deepcopy(policy.GPT_CONFIGS[models.gpt])
        vcfg, N, T, n_layer, width = vqlib.VQ_CONFIGS[models.vq], gcfg.block_size, gcfg.cls_token_num, \
            gcfg.n_layer, gcfg.dim
        with torch.device("meta"):
            gpt = policy.GPT(gcfg)
            cond, mask = torch.empty(rows, T, gcfg.caption_dim), torch.ones(rows, T, dtype=torch.bool)
        logprobs = policy.token_logprobs
    gpt.cfg.grad_ckpt = cfg.grad_ckpt
    with torch.device("meta"):
        vq, disc = vqlib.VQModel(vcfg), vqlib.PatchGAN()
        tok = torch.zeros(rows, N, dtype=torch.long)
        z = torch.empty(max(B, B * cfg.rank_k), vcfg.codebook_embed_dim, int(N ** 0.5), int(N ** 0.5))
        n_disc_img = max(2 * B, B * cfg.rank_k)   # disc_step: B real + B reconstructed in one backward
    n = lambda ps: sum(p.numel() for p in ps)  # noqa: E731
    n_gpt, n_dec, n_vq, n_disc = n(gpt.parameters()), n(vq.decoder_parameters()), n(vq.parameters()), n(disc.parameters())
    vq.requires_grad_(True)
    gpt_act = saved_activation_bytes(lambda: logprobs(gpt, cond, mask, tok, cfg_scale=logp_scale), [gpt])
    dec_act = saved_activation_bytes(lambda: vq.decode(z), [vq])
    # the decoder step also backpropagates through the networks its losses call (train.decoder_step): PatchGAN under
    # autocast, LPIPS and the reward model in fp32 (outside autocast) on the selected images
    reward_act = lpips_act = disc_act = 0
    if xl or jan:
        S, n_sel = int(N ** 0.5) * 2 ** (len(vcfg.ch_mult) - 1), max(B, B * cfg.rank_k)     # image side, images
        with torch.device("meta"):
            x = torch.empty(n_sel, 3, S, S, requires_grad=True)
            x_disc = torch.empty(n_disc_img, 3, S, S, requires_grad=True)
            x224 = torch.empty(B * cfg.rank_k, 3, 224, 224, requires_grad=True)
            lp, reward_net = lpips(0).requires_grad_(False), clip_model(cfg.reward, "full", 0).requires_grad_(False)
        lpips_act = saved_activation_bytes(lambda: lp(x, x), [lp])
        reward_act = saved_activation_bytes(lambda: reward_net.encode_image(x224), [reward_net]) if cfg.lambda_reward \
            else 0
        disc_act = saved_activation_bytes(lambda: disc(x_disc), [disc])
    est = {
        "policy weights+grads+AdamW (fp32, 16 B/param)": 16 * n_gpt,
        "reference policy (fp32, frozen)": 4 * n_gpt,
        "EMA policy (fp32)": 4 * n_gpt,
        f"KV cache for rollouts ([cond; null] = {2 * BG} rows, T={T})": 2 * (2 * BG) * n_layer * (T + N) * width
        * kv_bytes,
        f"policy activations, log-prob forward with grad ({rows}{' x 2 guided' if guided else ''} rows, "
        f"grad_ckpt={cfg.grad_ckpt})": gpt_act,
        "VQ (fp32) + EMA VQ + decoder grads/AdamW": 8 * n_vq + 12 * n_dec,
        f"decoder activations ({z.shape[0]} images per backward pass)": dec_act,
        "discriminator + AdamW": 16 * n_disc,
    }
    if xl or jan:
        est[f"decoder/disc steps: LPIPS + reward (fp32) on {z.shape[0]} images, PatchGAN on {n_disc_img}"] = \
            lpips_act + disc_act + reward_act
    if xl:
        est[f"FLAN-T5-XL encoder (bf16, {FULL_COUNTS['t5'] / 1e9:.2f}B params)"] = 2 * FULL_COUNTS["t5"]
    if xl or jan:   # Janus encodes its own prompts; its understanding tower is not loaded (docs/method.md §17.1)
        arch, n_reward = CLIP_ARCH[cfg.reward][0], FULL_COUNTS[cfg.reward]
        est[f"reward {cfg.reward} {arch} (fp32, {n_reward / 1e6:.1f}M) + LPIPS VGG16 features "
            f"({FULL_COUNTS['lpips'] / 1e6:.1f}M)"] = 4 * (n_reward + FULL_COUNTS["lpips"])
    print(f"[dry_run] backbone={cfg.backbone}  policy {n_gpt:,} params  VQ {n_vq:,} (decoder+post_quant_conv "
          f"trainable {n_dec:,})  discriminator {n_disc:,}  batch {B} prompts x G={cfg.group_size} per micro-batch "
          f"(x grad_accum {getattr(cfg, 'grad_accum', 1)} per update)")
    for k, v in est.items():
        print(f"  {k:<78s} {v / GB:8.2f} GiB")
    print(f"  {'TOTAL (sum: an upper bound, the stages run one after another)':<78s} {sum(est.values()) / GB:8.2f} GiB")
    return est


if __name__ == "__main__":
    import time
    for bk in ("llamagen_xl", "janus_pro_1b"):
        counts = full_counts(bk)
        print(f"full-size {bk} (meta): " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
        assert all(FULL_COUNTS[k] == v for k, v in counts.items()), "a full-size model differs from the released one"
    t0 = time.time()
    cfg = SimpleNamespace(backbone="llamagen_xl", synthetic="tiny", seed=0, reward="clip", batch_prompts=2)
    enc, gpt, vq, _, _ = build_policy(cfg, "cpu")
    reward_fn, perceptual, stream = build_world(cfg, "cpu", 0)
    x, caps = stream.next()
    cond, mask = enc(caps)
    with torch.no_grad():
        r, _ = reward_fn((x + 1) / 2, caps)
        d = perceptual(x, x.flip(0))
    print(f"tiny build + one call each in {time.time() - t0:.1f} s: captions {caps}; T5 features {tuple(cond.shape)} "
          f"(pads first: {bool(mask[:, -1].all())}); rewards {[round(v, 2) for v in r.tolist()]}; LPIPS(x, x') "
          f"{[round(v, 4) for v in d.tolist()]}; images {tuple(x.shape)}")
    assert cond.shape == (2, 120, 2048) and torch.isfinite(r).all() and (d > 0).all()
    a, b = WorldStream(SyntheticWorld(64), 2, 5), WorldStream(SyntheticWorld(64), 2, 5)
    assert torch.equal(a.next()[0], b.next()[0]), "the stream is not a function of its seed"
    # the dry run of the released LlamaGen-XL batch (train.py --backbone llamagen_xl --dry_run prints the same)
    est = dry_run(SimpleNamespace(backbone="llamagen_xl", grad_ckpt=True, bf16=True, batch_prompts=4, group_size=8,
                                  logp_chunk=0, rank_k=1, reward="clip", lambda_reward=0.01))
    assert 20 * 1024 ** 3 < sum(est.values()) < 80 * 1024 ** 3, "implausible estimate for the released batch"
