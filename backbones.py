"""The backbone seam of train.py: everything model-specific the RankE loop needs, as one record per backbone.

RankE (arXiv 2605.21195) is backbone-agnostic: the loop (train.py, docs/method.md §3) only samples, scores
log-probs, decodes and rewards. A backbone provides a `Backbone` record; adding one (as Janus-Pro-1B was added
beside LlamaGen-XL) means one row of MODELS and one more branch of `build_policy` and of `check_paths`, nothing in
the loop. MODELS is the one place that says which models a backbone has and at what size: the builders here and their
random-weight twins in perf/synthetic.py (--synthetic, --dry_run) read it.

  policy side    tiny (the toy world's GPT + VQ)  |  llamagen_xl (GPT-XL t2i + VQ-16 + FLAN-T5-XL, policy.py)
                 |  janus_pro_1b (Janus-Pro-1B generation path + its VQ-16 + its own tokenizer, janus.py)
  world side     --data given: (image, caption) pairs (data.py), CLIP / HPSv2 reward (rewards.py), LPIPS (vq.py)
                 no --data:    the toy world supplies 32-px scenes, its reward CLIP and its perceptual distance
                               (toy/world.py; any policy whose tokenizer decodes 32-px images, e.g. --janus_config tiny)
                 --backbone tiny --data: the pairs of --data, with the toy world's reward CLIP and perceptual distance
  --synthetic    both sides at real size (or a reduced scale) with seeded random weights, a synthetic caption/image
                 stream and hashing tokenizers; nothing is read or downloaded (perf/synthetic.py builds the same
                 Backbone record from the same MODELS rows; train.py picks it under --synthetic)

Self-check: none of its own (it only wires other files together); tests/test_train.py runs every backbone.
Symbols: B prompts per rank, T prompt length (caption slots / token ids), D caption feature width, N image tokens,
V image-token vocabulary, S image side.
"""
import math
import os
from dataclasses import dataclass

import torch

import ckpt
import policy
import rewards
import text_encoders
import vq as vqlib
from data import PairDataset, PairStream, WorldStream, check_source
from perf import fast_sample  # the samplers the loop uses: the same tokens as policy.sample / janus.sample, faster
from runtime import check_synthetic


# ---- which models each backbone has, and their sizes: the one table (the sizes are the registries it names) -----
@dataclass(frozen=True)
class Models:
    gpt: str     # the policy's config: a policy.GPT_CONFIGS key; for Janus a janus.JANUS_CONFIGS key (the default of
    #              --janus_config, which a real run may change)
    vq: str      # the tokenizer's config: a vq.VQ_CONFIGS key; "" = the one the Janus config names (janus_vq_config)
    text: str    # the caption encoder: a text_encoders.T5_CONFIGS key; "words" = the toy's word encoder; "" = none
    #              (Janus embeds its own prompt)


MODELS = {"tiny": Models("toy", "toy", "words"),                 # trained by toy/world.py (python -m toy.world)
          "llamagen_xl": Models("GPT-XL-t2i", "vq16", "flan-t5-xl"),
          "janus_pro_1b": Models("janus_pro_1b", "", "")}


@dataclass
class Backbone:
    text_encoder: object   # captions -> (cond, mask): T5 features (B,T,D) + mask (B,T), or Janus token ids (B,T)
    gpt: torch.nn.Module    # policy, used only through the three calls below; .cfg.grad_ckpt is set from the flag
    vq: torch.nn.Module     # tokenizer: decoder_parameters(), last_layer, encode_indices, codebook_lookup, decode,
    #                         decode_indices, cfg.codebook_size
    sample: object          # (gpt, cond, mask, cfg_scale=, temperature=, top_k=, top_p=, generator=) -> (B,N)
    logprobs: object        # (gpt, cond, mask, tokens, cfg_scale=) -> (B,N)
    logits: object          # (gpt, tokens, cond, mask) -> (B,N,V) teacher-forced (VA-pi)
    reward_fn: object       # (images01, prompts) -> (scores (B,), info); on --data None for --method vapi
    perceptual: object      # (x, y) -> (B,) in [-1, 1]; on --data None for --method grpo (never used)
    stream: object          # .next() -> (images (B,3,S,S) in [-1,1], captions); stats, state_dict, load_state_dict


def _not_synthetic(cfg):
    if getattr(cfg, "synthetic", ""):
        raise ValueError(f"--synthetic {cfg.synthetic}: random-weight backbones are built by perf/synthetic.py's "
                         "builders of the same names; pick them with train.seam(cfg)")


def image_side(cfg) -> int:
    """Side in pixels of the images the configured policy's tokenizer decodes (train.py sets --image_size to it)."""
    _not_synthetic(cfg)
    if cfg.backbone == "janus_pro_1b":
        import janus
        jc = janus.JANUS_CONFIGS[cfg.janus_config]
        return int(round(jc.image_tokens ** 0.5)) * 2 ** (len(janus.janus_vq_config(jc).ch_mult) - 1)
    m = MODELS[cfg.backbone]     # sqrt(N) tokens per side, 2 x per VQ level above the first
    return math.isqrt(policy.GPT_CONFIGS[m.gpt].block_size) * 2 ** (len(vqlib.VQ_CONFIGS[m.vq].ch_mult) - 1)


def uses_toy_world(cfg) -> bool:
    return cfg.backbone == "tiny" or not cfg.data


def real_data(cfg) -> bool:
    """(image, caption) pairs from --data, scored by CLIP / HPSv2, with LPIPS: not the toy world, not --synthetic."""
    return not getattr(cfg, "synthetic", "") and not uses_toy_world(cfg)


def needs_reward(cfg) -> bool:
    return cfg.method != "vapi"      # VA-pi scores by reconstruction (vapi.recon_reward), never by the reward model


def needs_lpips(cfg) -> bool:
    return cfg.method != "grpo"      # standard RL has no decoder step and no reconstruction reward


# The world / backbone flags and the runs they act in (train.parse_config refuses them, given, in any other run).
WORLD_SCOPES = [  # (flags, applies(cfg), what they act on)
    (("toy_cache", "toy_preset"), lambda c: not c.synthetic and uses_toy_world(c),
     "the toy world (--backbone tiny, or no --data; not --synthetic)"),
    (("report_n",), lambda c: c.backbone == "tiny" and not c.data, "the end-of-run report of --backbone tiny without "
     "--data"),
    (("reward",), lambda c: (c.synthetic or not uses_toy_world(c)) and needs_reward(c), "the reward of runs on --data "
     "or --synthetic (the toy world scores with its toy CLIP, --method vapi with its reconstruction reward)"),
    (("clip_path",), lambda c: real_data(c) and needs_reward(c) and c.reward == "clip",
     "the CLIP reward (--reward clip) of a run on --data"),
    (("hps_path",), lambda c: real_data(c) and needs_reward(c) and c.reward == "hpsv2",
     "the HPSv2 reward (--reward hpsv2) of a run on --data"),
    (("lpips_vgg", "lpips_lin"), lambda c: real_data(c) and needs_lpips(c),
     "LPIPS of a run on --data: the decoder step and VA-pi's reward (--method grpo has neither)"),
    (("gpt_ckpt", "vq_ckpt", "t5_path"), lambda c: c.backbone == "llamagen_xl" and not c.synthetic,
     "--backbone llamagen_xl with real weights"),
    (("janus_ckpt", "janus_tokenizer", "janus_config"), lambda c: c.backbone == "janus_pro_1b" and not c.synthetic,
     "--backbone janus_pro_1b with real weights")]


# Released evaluation samplers per backbone (docs/method.md §11, §17.6; D12: Janus evaluates with top-k 50).
EVAL_SETTINGS = {"llamagen_xl": dict(cfg_scale=6.0, temperature=1.0, top_k=1000, top_p=1.0),
                 "janus_pro_1b": dict(cfg_scale=5.0, temperature=1.0, top_k=50, top_p=1.0),
                 "tiny": dict(cfg_scale=3.0, temperature=1.0, top_k=0, top_p=1.0)}   # the toy table's CFG


def load_toy_world(cfg, rank=0):
    from toy import world as toy_world   # the toy wing is imported only when the toy is asked for
    tcfg = toy_world.ToyConfig.tiny() if cfg.toy_preset == "tiny" else toy_world.ToyConfig()
    return toy_world.load_toy(tcfg, cache_dir=cfg.toy_cache, progress=rank == 0)


def build_policy(cfg, device, toy=None, weights=True):
    """Policy side: (text_encoder, gpt, vq, sample, logprobs). weights=False builds the architectures without
    reading the base checkpoints (sample.py then loads a train.py checkpoint into them)."""
    _not_synthetic(cfg)
    m = MODELS[cfg.backbone]
    if cfg.backbone == "tiny":
        toy = toy or load_toy_world(cfg)
        return toy.text_encoder, toy.gpt, toy.vq, fast_sample.sample_gpt, policy.token_logprobs
    if cfg.backbone == "llamagen_xl":
        gcfg, vcfg = policy.GPT_CONFIGS[m.gpt], vqlib.VQ_CONFIGS[m.vq]
        gpt = policy.load_gpt(cfg.gpt_ckpt, gcfg) if weights else policy.GPT(gcfg)
        vq = vqlib.load_vq(cfg.vq_ckpt, vcfg) if weights else vqlib.VQModel(vcfg)
        return (text_encoders.T5TextEncoder(cfg.t5_path, max_len=gcfg.cls_token_num, device=device), gpt, vq,
                fast_sample.sample_gpt, policy.token_logprobs)
    import janus           # imported only for this backbone
    jc = janus.JANUS_CONFIGS[cfg.janus_config]
    gpt, vq = janus.load_janus(cfg.janus_ckpt, jc) if weights else (janus.JanusGen(jc),
                                                                     vqlib.VQModel(janus.janus_vq_config(jc)))
    return (text_encoders.JanusTextEncoder(cfg.janus_tokenizer, jc, device=device), gpt, vq,
            fast_sample.sample_janus, janus.token_logprobs)


def build_backbone(cfg, device, rank: int) -> Backbone:
    data_seed = cfg.seed + 1000 * rank
    toy = load_toy_world(cfg, rank) if uses_toy_world(cfg) else None
    policy_side = build_policy(cfg, device, toy)
    # ---- world side: data stream, reward, perceptual distance ----
    if toy is not None:
        reward_fn, perceptual = toy.reward_fn, toy.perceptual
        stream = (PairStream(PairDataset(cfg.data, cfg.image_size), cfg.batch_prompts, data_seed, rank) if cfg.data
                  else WorldStream(toy.world, cfg.batch_prompts, data_seed))
    else:
        reward_fn = rewards.WeightedReward({cfg.reward: (rewards.make_reward(cfg.reward, reward_path(cfg)[1]), 1.0)}) \
            if needs_reward(cfg) else None
        perceptual = vqlib.LPIPS(vgg_path=cfg.lpips_vgg or None, lin_path=cfg.lpips_lin or None).to(device) \
            if needs_lpips(cfg) else None
        stream = PairStream(PairDataset(cfg.data, cfg.image_size), cfg.batch_prompts, data_seed, rank)
    return assemble(cfg, device, policy_side, (reward_fn, perceptual, stream))


def assemble(cfg, device, policy_side, world_side) -> Backbone:
    """The record from the two sides (this file's builders, or perf/synthetic.py's)."""
    (text_encoder, gpt, vq, sample, logprobs), (reward_fn, perceptual, stream) = policy_side, world_side
    gpt.cfg.grad_ckpt = cfg.grad_ckpt
    return Backbone(text_encoder, gpt.to(device), vq.to(device), sample, logprobs,
                    lambda m, t, c, mk: m(t, c, mk), reward_fn, perceptual, stream)


def reward_path(cfg):
    return ("--clip_path", cfg.clip_path or None) if cfg.reward == "clip" else ("--hps_path", cfg.hps_path)


def is_hub_id(value: str) -> bool:
    """'owner/name' read as a Hugging Face Hub id (where a local folder is also accepted), not a relative path."""
    return value.count("/") == 1 and not value.startswith((".", "/", "~"))


def hub_values(cfg) -> list:
    """The path flags of this real-data run that name the Hugging Face Hub rather than local files: hf://..., a hub id
    where a folder is expected (is_hub_id), --clip_path "" (open_clip's hub copy). [] when the run
    reads local files only: then nothing probes the network."""
    files = {"llamagen_xl": ("gpt_ckpt", "vq_ckpt"), "janus_pro_1b": ("janus_ckpt",)}.get(cfg.backbone, ())
    folders = {"llamagen_xl": ("t5_path",), "janus_pro_1b": ("janus_tokenizer",)}.get(cfg.backbone, ())
    hub = [f"--{k}" for k in files if getattr(cfg, k).startswith("hf://")]
    hub += [f"--{k}" for k in folders if not os.path.isdir(v := getattr(cfg, k)) and is_hub_id(v)]
    flag, path = reward_path(cfg)
    return hub + ([flag] if needs_reward(cfg) and (path is None or path.startswith("hf://")) else [])


def check_paths(cfg) -> list:
    """Every path flag of the run, checked before anything heavy loads (a bad path fails in seconds, not after T5
    and a rollout); returns one message per bad flag, so a user learns all of them in one try. hf:// paths are
    looked up in the hub cache (downloaded only when online)."""
    bad = [f"--out_dir {cfg.out_dir!r} is a file; pass a directory (it is created if missing)"
           if os.path.exists(cfg.out_dir) and not os.path.isdir(cfg.out_dir) else None]
    if cfg.synthetic:                           # nothing is read: only the value and what it cannot combine with
        bad += [check_synthetic(cfg.synthetic),
                cfg.backbone == "tiny" and "--synthetic: the toy backbone is already local and small; use --backbone "
                                           "llamagen_xl or janus_pro_1b",
                cfg.data and f"--data {cfg.data!r} with --synthetic: a synthetic run draws its own captions and "
                             "images; drop --data (or --synthetic)"]
        return [b for b in bad if b]
    bad += check_source(cfg.data) if cfg.data else []    # layout, existence, tar format: nothing indexed
    if uses_toy_world(cfg):
        bad.append(f"--toy_cache {cfg.toy_cache!r} is a file; pass a directory" if os.path.isfile(cfg.toy_cache)
                   else None)
        if cfg.backbone != "tiny" and image_side(cfg) != 32:
            bad.append(f"--data: --backbone {cfg.backbone} decodes {image_side(cfg)}-px images and needs (image, "
                       "caption) pairs (folder, .jsonl, .tar); without --data only 32-px tokenizers fit the toy world")
    else:
        if hub_values(cfg):                     # no network: hub lookups answer from the cache at once
            ckpt.offline_if_unreachable()
        flag, path = reward_path(cfg)
        try:                                    # the active reward's weights: local file, hub cache or open_clip's
            if needs_reward(cfg):
                rewards.make_reward(cfg.reward, path).resolve()
        except (FileNotFoundError, ValueError) as e:    # missing, or a file in another layout
            bad.append(f"{flag}: {e}")
        lpips_files = ((("--lpips_vgg", vqlib.VGG16_URL), ("--lpips_lin", vqlib.LPIPS_LIN_URL)) if needs_lpips(cfg)
                       else ())
        for flag, url in lpips_files:
            path = getattr(cfg, flag[2:])
            try:                                # "" = the torch-hub cache copy, downloaded when online
                path or ckpt.cached_download(None, url, f"LPIPS needs {url}: download it and pass {flag} PATH.")
            except FileNotFoundError as e:
                bad.append(f"{flag}: {e}")
            bad.append(path and ckpt.check_path(flag, path))
    if cfg.backbone == "llamagen_xl":
        bad += [ckpt.check_path("--gpt_ckpt", cfg.gpt_ckpt), ckpt.check_path("--vq_ckpt", cfg.vq_ckpt),
                check_hub_folder("--t5_path", cfg.t5_path, "config.json", "google/flan-t5-xl")]
    if cfg.backbone == "janus_pro_1b":
        bad += [ckpt.check_path("--janus_ckpt", cfg.janus_ckpt),
                check_hub_folder("--janus_tokenizer", cfg.janus_tokenizer, "tokenizer_config.json",
                                 "deepseek-ai/Janus-Pro-1B")]
    return [b for b in bad if b]


def check_hub_folder(flag, value, probe, hub_name):
    """A local folder, or a hub id (owner/name) whose `probe` file is in the hub cache (or downloadable)."""
    if os.path.isdir(value):
        return None
    if is_hub_id(value):
        if ckpt.check_path(flag, f"hf://{value}/{probe}") is None:
            return None
        return (f"{flag} {value!r}: not a local folder, and the hub id's files are not in the local Hugging Face "
                f"cache (offline); run `hf download {value} --local-dir DIR` on a machine with network "
                f"access, copy DIR here and pass {flag} DIR")
    return f"{flag} {value!r}: no such folder; pass the folder with the Hugging Face files of {hub_name}"
