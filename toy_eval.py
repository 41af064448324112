"""Evaluation on the toy world: one table row (reward, eval CLIP, checker accuracy, toy FID, LCS KL) for a
train.py checkpoint or for the toy base models (docs/method.md §11 for the real protocol this stands in for).

Concept: the paper scores a post-trained policy by FID, CLIP score and GenEval, and measures the Latent Covariate
Shift of its tokens (docs/method.md §10-§11). The toy world has a stand-in for each (toy_world.py's table):
    FID (Inception features)      -> eval_fid.frechet_distance on the toy attribute-CNN features (bundle.feature_fn)
    CLIP score (ViT-B/32)         -> the independent toy eval CLIP (bundle.eval_clip_fn), 100 x cosine
    GenEval                       -> ToyWorld.check, the exact attribute checker, on train and held-out captions
    LCS (shift.py)                -> shift.report on the sampled tokens vs the VQ tokens of real toy scenes
Every method is sampled with the run's rollout settings (CFG, temperature, top-k/p) on the same captions with the
same random stream (fixed seed), so with one checkpoint the tokens do not depend on the decoder: online-vs-base
decoder rows isolate what the co-evolved decoder does to the same tokens.

Run:    python toy_eval.py --ckpt runs/x/ckpt_0000150.pt [--decoder online|ema|base] [--n 256] [--seed 0]
        python toy_eval.py --toy_preset tiny --toy_cache .cache/toy   (no --ckpt: the base models)
        prints one line "reward ... | clip ... | check_train ... | check_heldout ... | fid ... | lcs_kl ...".
        A missing / folder / empty / corrupt --ckpt is a one-line error naming --ckpt (exit code 2), no traceback.
        `python toy_eval.py --help` lists the flags. (Formerly `python eval_fid.py toy ...`.)
Tests:  pytest tests/test_toy_eval.py
Depends on: torch, numpy; concept files ckpt.py (checkpoint reading), eval_fid.py (Frechet distance), shift.py (LCS),
policy.py (sampler); toy wing toy_world.py (the world and its base models). Part of the toy wing (toy_*.py): no
concept file imports it.
Symbols: M captions (= n per split), N image tokens (64), K codebook size (256), S image side (32), F feature width.
"""
import argparse
import sys

import numpy as np
import torch

import ckpt
import policy
import shift
import toy_world
from eval_fid import feature_stats, frechet_distance

TOY_COLUMNS = ("reward", "clip", "check_train", "check_heldout", "fid", "lcs_kl")   # the printed table row
LABELS = {"reward": "reward (toy CLIP x100)", "clip": "eval CLIP x100", "check_train": "checker acc. train",
          "check_heldout": "checker acc. held-out", "fid": "toy FID", "lcs_kl": "LCS KL (nats)"}
DECODERS = ("online", "ema", "base")
CKPT_WHAT = ("a train.py checkpoint (OUT_DIR/ckpt_NNNNNNN.pt, written by `python train.py --out_dir OUT_DIR`), "
             "or omit --ckpt to score the toy base models")


@torch.no_grad()
def evaluate_toy(sample_tokens, captions, real_images, *, decode, eval_clip_fn, feature_fn, check, encode_indices,
                 K, real_images_b=None, reward_fn=None, batch_size=64, device="cpu"):
    """Toy-world metrics for one policy (fields of the toy ToyBundle):
    sample_tokens: list[str] -> (B, N) int64 (the policy sampler with fixed eval settings and generator);
    captions (M) and real_images (M,3,S,S) in [-1,1]: a batch of ToyWorld.sample;
    decode: (B, N) -> (B,3,S,S) in [-1,1] (vq.decode_indices); eval_clip_fn(images01, captions) -> (B,);
    feature_fn(images01) -> (B, F); check(images [-1,1], captions) -> (B,) in [0,1] (ToyWorld.check);
    encode_indices: (B,3,S,S) -> (B, N) (vq.encode_indices); real_images_b: optional disjoint real set for the
    LCS floor (else two halves of real_images); reward_fn: the training reward (reported as "reward" if given);
    device: where real-image batches go (the models' device).
    Returns a dict of floats: fid (toy feature space), clip, check, lcs_kl_nats, entropies (bits), real floor, n."""
    if len(captions) != real_images.shape[0]:
        raise ValueError(f"{len(captions)} captions but {real_images.shape[0]} real images")
    tok, feats, clip, acc, rew = [], [], [], [], []
    for s in range(0, len(captions), batch_size):
        caps = list(captions[s:s + batch_size])
        z = sample_tokens(caps)  # (B, N)
        x = decode(z).clamp(-1, 1)  # (B,3,S,S)
        x01 = (x + 1) / 2
        tok.append(z.cpu())
        feats.append(np.asarray(feature_fn(x01).cpu(), np.float64))
        clip.append(eval_clip_fn(x01, caps).double().cpu())
        acc.append(torch.as_tensor(check(x, caps)).double().cpu())
        if reward_fn is not None:
            rew.append(reward_fn(x01, caps)[0].double().cpu())
    real_feats = [np.asarray(feature_fn((real_images[s:s + batch_size].to(device) + 1) / 2).cpu(), np.float64)
                  for s in range(0, real_images.shape[0], batch_size)]
    enc = lambda imgs: torch.cat([encode_indices(imgs[s:s + batch_size].to(device)).cpu()  # noqa: E731
                                  for s in range(0, imgs.shape[0], batch_size)])
    mu_f, s_f = feature_stats(np.concatenate(feats))
    mu_r, s_r = feature_stats(np.concatenate(real_feats))
    # LCS (docs/method.md §10): p_GT = the VQ tokens of real scenes, pi = the sampled tokens, floor = real vs real
    lcs = shift.report(torch.cat(tok), enc(real_images), K, None if real_images_b is None else enc(real_images_b))
    return {"fid": frechet_distance(mu_f, s_f, mu_r, s_r), "clip": float(torch.cat(clip).mean()),
            "check": float(torch.cat(acc).mean()), **lcs, "n": len(captions),
            **({"reward": float(torch.cat(rew).mean())} if rew else {})}


@torch.no_grad()
def evaluate_toy_bundle(bundle, sample_tokens, *, n, generator, split="train", batch_size=64, device="cpu",
                        with_reward=True):
    """evaluate_toy on a toy_world.ToyBundle: n captioned real scenes of `split` (plus n more, disjoint, for the LCS
    floor) drawn with `generator`; sample_tokens: list[str] -> (B, N) (e.g. policy.sample + bundle.text_encoder)."""
    real, captions = bundle.world.sample(n, generator, split)
    real_b, _ = bundle.world.sample(n, generator, split)
    return evaluate_toy(sample_tokens, captions, real, decode=bundle.vq.decode_indices,
                        eval_clip_fn=bundle.eval_clip_fn, feature_fn=bundle.feature_fn, check=bundle.world.check,
                        encode_indices=bundle.vq.encode_indices, K=bundle.vq.cfg.codebook_size, real_images_b=real_b,
                        reward_fn=bundle.reward_fn if with_reward else None, batch_size=batch_size, device=device)


def read_train_ckpt(path, flag="--ckpt"):
    """A train.py checkpoint -> its dict (config, gpt, vq, ema_vq, step, ...). Missing file, folder, empty or
    corrupt file, or a file that is not a train.py checkpoint: ckpt.CkptError with a one-line message naming `flag`."""
    ck = ckpt.load_ckpt(path, flag=flag, need=("config", "gpt", "vq", "step"), what=CKPT_WHAT)
    conf = ck["config"]
    if not isinstance(conf, dict) or "toy_preset" not in conf or "toy_cache" not in conf:
        raise ckpt.CkptError(f"{flag} {path!r}: its config has no toy_preset / toy_cache, so it is not a toy-world "
                             f"run (train.py --backbone tiny); toy_eval.py scores toy runs only")
    return ck


@torch.no_grad()
def evaluate_toy_checkpoint(ckpt_path=None, *, toy_cache=".cache/toy", toy_preset="default", n=256, seed=0,
                            cfg_scale=None, decoder="online", sampling=None):
    """One table row for a train.py checkpoint or, with ckpt_path=None, for the base models. The eval sampler uses
    the run's rollout settings (CFG, temperature, top-k/p) and a fixed seed, so every method is sampled on the same
    captions with the same random stream.
    decoder: "online" = the checkpoint's decoder (online policy + online VQ, the released "COMBO 1"), "ema" = its
    EMA decoder ("COMBO 2", docs/method.md §8), "base" = the base decoder. With a fixed seed the tokens do not depend
    on the decoder, so online-vs-base isolates what the co-evolved decoder does to the same tokens.
    reward / clip / fid / lcs_kl on n train-split captions; check on n train and n held-out captions.
    A checkpoint's own toy_cache / toy_preset (its config) override the arguments; a bad checkpoint is a
    ckpt.CkptError naming --ckpt. sampling: a run's config (dict) whose cfg_scale / temperature / top_k / top_p the
    base models are sampled with (so a base row compares with that run's rows); ignored with a checkpoint."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder={decoder!r}: use 'online' (the checkpoint's VQ), 'ema' or 'base'")
    ck = read_train_ckpt(ckpt_path) if ckpt_path else None
    if ck and decoder == "ema" and "ema_vq" not in ck:
        raise ckpt.CkptError(f"--ckpt {ckpt_path!r} holds no EMA decoder (ema_vq); use --decoder online or base")
    keys = ("cfg_scale", "temperature", "top_k", "top_p")
    conf = ck["config"] if ck else {"toy_cache": toy_cache, "toy_preset": toy_preset,
                                    **{k: v for k, v in (sampling or {}).items() if k in keys}}
    tcfg = toy_world.ToyConfig.tiny() if conf["toy_preset"] == "tiny" else toy_world.ToyConfig()
    b = toy_world.load_toy(tcfg, cache_dir=conf["toy_cache"], progress=False)
    if ck:
        b.gpt.load_state_dict(ck["gpt"])
        if decoder != "base":
            b.vq.load_state_dict(ck["vq" if decoder == "online" else "ema_vq"])
    scale = cfg_scale if cfg_scale is not None else conf.get("cfg_scale", 4.0)   # 4.0 = train.py's tiny preset
    b.gpt.eval()
    b.vq.eval()
    sample_gen = torch.Generator().manual_seed(seed)

    def sample_tokens(caps):
        cond, mask = b.text_encoder(caps)
        return policy.sample(b.gpt, cond, mask, cfg_scale=scale, temperature=conf.get("temperature", 1.0),
                             top_k=conf.get("top_k", 0), top_p=conf.get("top_p", 1.0), generator=sample_gen)

    tr = evaluate_toy_bundle(b, sample_tokens, n=n, generator=torch.Generator().manual_seed(seed + 1), split="train")
    ho = evaluate_toy_bundle(b, sample_tokens, n=n, generator=torch.Generator().manual_seed(seed + 2),
                             split="heldout", with_reward=False)
    return {"reward": tr["reward"], "clip": tr["clip"], "check_train": tr["check"], "check_heldout": ho["check"],
            "fid": tr["fid"], "lcs_kl": tr["lcs_kl_nats"], "lcs_floor": tr.get("real_floor_nats", float("nan")),
            "step": ck["step"] if ck else 0}


def main(argv=None):
    ap = argparse.ArgumentParser(description="Toy-world metrics of a train.py checkpoint (or of the toy base models) "
                                             "as one table row: " + " | ".join(TOY_COLUMNS))
    ap.add_argument("--ckpt", default=None, help="train.py checkpoint OUT_DIR/ckpt_NNNNNNN.pt (default: the toy base "
                                                 "models; a checkpoint's own toy_cache / toy_preset are used)")
    ap.add_argument("--toy_cache", default=".cache/toy", help="toy artifact cache (base models only)")
    ap.add_argument("--toy_preset", default="default", choices=("default", "tiny"), help="(base models only)")
    ap.add_argument("--n", type=int, default=256, help="captions per split")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (the captions use seed+1, seed+2)")
    ap.add_argument("--decoder", default="online", choices=DECODERS,
                    help="the checkpoint's decoder, its EMA decoder, or the base decoder (same tokens either way)")
    args = ap.parse_args(argv)
    if args.n < 2:
        ap.error(f"--n {args.n}: need at least 2 captions per split (feature covariance, LCS floor)")
    try:                                    # the checkpoint is read first: a bad one fails before the world loads
        row = evaluate_toy_checkpoint(args.ckpt, toy_cache=args.toy_cache, toy_preset=args.toy_preset, n=args.n,
                                      seed=args.seed, decoder=args.decoder)
    except ckpt.CkptError as e:
        ap.error(str(e))
    print(" | ".join(f"{k} {row[k]:.4f}" for k in TOY_COLUMNS))
    return row


if __name__ == "__main__":
    main(sys.argv[1:])
