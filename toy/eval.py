"""Evaluation on the toy world: one table row (reward, eval CLIP, checker accuracy, toy FID, LCS KL) for a
train.py checkpoint or for the toy base models (docs/method.md §11 for the real protocol this stands in for).

Concept: the paper scores a post-trained policy by FID, CLIP score and GenEval, and measures the Latent Covariate
Shift of its tokens (docs/method.md §10-§11). The toy world has a stand-in for each (toy/world.py's table):
    FID (Inception features)      -> eval_fid.frechet_distance on the toy attribute-CNN features (bundle.feature_fn)
    CLIP score (ViT-B/32)         -> the independent toy eval CLIP (bundle.eval_clip_fn), 100 x cosine
    GenEval                       -> ToyWorld.check, the exact attribute checker, on train and held-out captions
    LCS (shift.py)                -> shift.report on the sampled tokens vs the VQ tokens of real toy scenes
Every method is sampled with the run's rollout settings (CFG, temperature, top-k/p) on the same captions with the
same random stream (fixed seed), so with one checkpoint the tokens do not depend on the decoder: online-vs-base
decoder rows isolate what the co-evolved decoder does to the same tokens.

Run:    python -m toy.eval --ckpt runs/x/ckpt_0000150.pt [--decoder online|ema|base ...] [--n 256] [--seed 0]
                [--json rows.json]
        python -m toy.eval --toy_preset tiny --toy_cache .cache/toy   (no --ckpt: the base models)
        prints one line "reward ... | clip ... | check_train ... | check_heldout ... | fid ... | lcs_kl ...".
        A missing / folder / empty / corrupt --ckpt is a one-line error naming --ckpt (exit code 2), no traceback.
        `python -m toy.eval --help` lists the flags. (Formerly `python eval_fid.py toy ...`.)
Tests:  pytest tests/test_toy_eval.py
Depends on: torch, numpy; concept files ckpt.py (checkpoint reading), eval_fid.py (Frechet distance), shift.py (LCS);
perf/fast_sample.py (the sampler train.py uses); toy wing toy/world.py (the world and its base models). Part of the toy
wing (toy/): no concept file imports it.
Symbols: M captions (= n per split), N image tokens (64), K codebook size (256), S image side (32), F feature width.
"""
import argparse
import copy
import json
import os
import sys

import numpy as np
import torch

import ckpt
from perf import fast_sample
import shift
from toy import world as toy_world
from eval_fid import feature_stats, frechet_distance, kernel_inception_distance

TOY_COLUMNS = ("reward", "clip", "check_train", "check_heldout", "fid", "kid", "lcs_kl",
               "reencode_agree")   # the printed table row
LABELS = {"reward": "reward (toy CLIP x100)", "clip": "eval CLIP x100", "check_train": "checker acc. train",
          "check_heldout": "checker acc. held-out", "fid": "toy FID", "kid": "toy KID", "lcs_kl": "LCS KL (nats)",
          "reencode_agree": "re-encode agreement"}
DECODERS = ("online", "ema", "base")
CKPT_WHAT = ("a train.py checkpoint (OUT_DIR/ckpt_NNNNNNN.pt, written by `python train.py --out_dir OUT_DIR`), "
             "or omit --ckpt to score the toy base models")


@torch.no_grad()
def evaluate_toy(sample_tokens, captions, real_images, *, decode, eval_clip_fn, feature_fn, check, encode_indices,
                 K, real_images_b, reward_fn=None, batch_size=64, device="cpu"):
    """Toy-world metrics for one policy (fields of the toy ToyBundle):
    sample_tokens: list[str] -> (B, N) int64 (the policy sampler with fixed eval settings and generator);
    captions (M) and real_images (M,3,S,S) in [-1,1]: a batch of ToyWorld.sample;
    decode: (B, N) -> (B,3,S,S) in [-1,1] (vq.decode_indices); eval_clip_fn(images01, captions) -> (B,);
    feature_fn(images01) -> (B, F); check(images [-1,1], captions) -> (B,) in [0,1] (ToyWorld.check);
    encode_indices: (B,3,S,S) -> (B, N) (vq.encode_indices); real_images_b: a second, independent real set of the
    same size for the LCS floor (the paper's protocol, shift.report); reward_fn: the training reward (reported as
    "reward" if given);
    device: where real-image batches go (the models' device).
    Returns a dict of floats: fid (toy feature space), clip, check, lcs_kl_nats, entropies (bits), real floor, n."""
    return evaluate_toy_decoders(sample_tokens, captions, real_images, decoders={"": (decode, encode_indices)},
                                 eval_clip_fn=eval_clip_fn, feature_fn=feature_fn, check=check, K=K,
                                 real_images_b=real_images_b, reward_fn=reward_fn, batch_size=batch_size,
                                 device=device)[""]


@torch.no_grad()
def evaluate_toy_decoders(sample_tokens, captions, real_images, *, decoders, eval_clip_fn, feature_fn, check, K,
                          real_images_b, reward_fn=None, batch_size=64, device="cpu", detail=True):
    """evaluate_toy for several decoders of the SAME tokens: decoders = {name: (decode, encode_indices)}; the tokens
    are sampled once (one pass of the sampler, so each row equals a separate evaluate_toy call with the same sampler
    state), the real features are computed once and the real tokens once per distinct encode_indices callable.
    detail=False skips the decode -> re-encode round trips and the LCS floor (a third of the time at n = 512); every
    other number is unchanged (neither touches a random stream). Returns {name: row}."""
    if len(captions) != real_images.shape[0]:
        raise ValueError(f"{len(captions)} captions but {real_images.shape[0]} real images")
    tok = []
    out = {name: {"feats": [], "clip": [], "acc": [], "rew": []} for name in decoders}
    for s in range(0, len(captions), batch_size):
        caps = list(captions[s:s + batch_size])
        z = sample_tokens(caps)  # (B, N)
        tok.append(z.cpu())
        for name, (decode, _) in decoders.items():
            x = decode(z).clamp(-1, 1)  # (B,3,S,S)
            x01, o = (x + 1) / 2, out[name]
            o["feats"].append(np.asarray(feature_fn(x01).cpu(), np.float64))
            o["clip"].append(eval_clip_fn(x01, caps).double().cpu())
            o["acc"].append(torch.as_tensor(check(x, caps)).double().cpu())
            if reward_fn is not None:
                o["rew"].append(reward_fn(x01, caps)[0].double().cpu())
    real_feats = np.concatenate([np.asarray(feature_fn((real_images[s:s + batch_size].to(device) + 1) / 2).cpu(),
                                            np.float64) for s in range(0, real_images.shape[0], batch_size)])
    mu_r, s_r = feature_stats(real_feats)
    lcs_by_encoder, real_tok, rows, tok = {}, {}, {}, torch.cat(tok)        # tok: (M, N)
    for name, (decode, encode_indices) in decoders.items():
        if encode_indices not in lcs_by_encoder:     # same encoder -> same real tokens -> same LCS: computed once
            enc = lambda imgs: torch.cat([encode_indices(imgs[s:s + batch_size].to(device)).cpu()  # noqa: E731
                                          for s in range(0, imgs.shape[0], batch_size)])
            real_tok[encode_indices] = enc(real_images)                                          # (M, N)
            # LCS (docs/method.md §10): p_GT = the VQ tokens of real scenes, pi = the sampled tokens, floor = real
            # vs real
            if detail:
                lcs_by_encoder[encode_indices] = shift.report(tok, real_tok[encode_indices], K, enc(real_images_b))
            else:                          # the KL alone: a floor from two halves would not be the paper's floor
                lcs = shift.report(tok, real_tok[encode_indices], K, split_floor=True)
                lcs_by_encoder[encode_indices] = {k: v for k, v in lcs.items() if k != "real_floor_nats"}
        o = out[name]
        feats = np.concatenate(o["feats"])                                                       # (M, F)
        mu_f, s_f = feature_stats(feats)
        kid, kid_se = kernel_inception_distance(feats, real_feats)
        # the shift beyond histograms: the decode -> re-encode round trip on the policy's tokens and on real tokens
        rt = {f"{who}_{k}": v for who, z in (("reencode", tok), ("real_reencode", real_tok[encode_indices]))
              for k, v in shift.reencode_agreement(z, lambda t: decode(t.to(device)), encode_indices,
                                                   batch_size=batch_size).items()} if detail else {}
        rows[name] = {"fid": frechet_distance(mu_f, s_f, mu_r, s_r), "kid": kid, "kid_se": kid_se,
                      "clip": float(torch.cat(o["clip"]).mean()), "check": float(torch.cat(o["acc"]).mean()),
                      **lcs_by_encoder[encode_indices], **rt, "n": len(captions),
                      **({"reward": float(torch.cat(o["rew"]).mean())} if o["rew"] else {})}
    return rows


def read_train_ckpt(path, flag="--ckpt"):
    """A train.py checkpoint -> its dict (config, gpt, vq, ema_vq, step, ...). Missing file, folder, empty or
    corrupt file, or a file that is not a train.py checkpoint: ckpt.CkptError with a one-line message naming `flag`."""
    ck = ckpt.load_ckpt(path, flag=flag, need=("config", "gpt", "vq", "step"), what=CKPT_WHAT)
    conf = ck["config"]
    if not isinstance(conf, dict) or "toy_preset" not in conf or "toy_cache" not in conf:
        raise ckpt.CkptError(f"{flag} {path!r}: its config has no toy_preset / toy_cache, so it is not a toy-world "
                             f"run (train.py --backbone tiny); toy/eval.py scores toy runs only")
    return ck


@torch.no_grad()
def evaluate_toy_checkpoint(ckpt_path=None, *, toy_cache=".cache/toy", toy_preset="default", n=256, seed=0,
                            cfg_scale=None, decoder="online", sampling=None, detail=True):
    """One table row for a train.py checkpoint or, with ckpt_path=None, for the base models. The eval sampler uses
    the run's rollout settings (CFG, temperature, top-k/p) and a fixed seed, so every method is sampled on the same
    captions with the same random stream.
    decoder: "online" = the checkpoint's decoder (online policy + online VQ, the released "COMBO 1"), "ema" = its
    EMA decoder ("COMBO 2", docs/method.md §8), "base" = the base decoder. With a fixed seed the tokens do not depend
    on the decoder, so online-vs-base isolates what the co-evolved decoder does to the same tokens.
    reward / clip / fid / lcs_kl on n train-split captions; check on n train and n held-out captions.
    A checkpoint's own toy_cache / toy_preset (its config) override the arguments; a bad checkpoint is a
    ckpt.CkptError naming --ckpt. sampling: a run's config (dict) whose cfg_scale / temperature / top_k / top_p the
    base models are sampled with (so a base row compares with that run's rows); ignored with a checkpoint.
    detail=False: no re-encode agreement and no LCS floor in the row (the end-of-run answer table shows neither)."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder={decoder!r}: use 'online' (the checkpoint's VQ), 'ema' or 'base'")
    return evaluate_toy_checkpoint_decoders(ckpt_path, (decoder,), toy_cache=toy_cache, toy_preset=toy_preset, n=n,
                                            seed=seed, cfg_scale=cfg_scale, sampling=sampling, detail=detail)[decoder]


def _encoder_state(vq):
    """The tensors that decide encode_indices: encoder, quant_conv and the codebook (vq.py's module names)."""
    return [(k, v) for k, v in vq.state_dict().items() if k.split(".")[0] in ("encoder", "quant_conv", "quantize")]


@torch.no_grad()
def evaluate_toy_checkpoint_decoders(ckpt_path, decoders, *, toy_cache=".cache/toy", toy_preset="default", n=256,
                                     seed=0, cfg_scale=None, sampling=None, detail=True):
    """evaluate_toy_checkpoint for several decoders of one checkpoint in one pass: the tokens are sampled once (the
    same fixed-seed stream, so each row equals evaluate_toy_checkpoint(..., decoder=d) exactly; a test checks it)
    and decoded by each decoder. Returns {decoder: row}."""
    bad = [d for d in decoders if d not in DECODERS]
    if bad or not decoders:
        raise ValueError(f"decoders={decoders!r}: use one or more of 'online' (the checkpoint's VQ), 'ema', 'base'")
    ck = read_train_ckpt(ckpt_path) if ckpt_path else None
    if ck and "ema" in decoders and "ema_vq" not in ck:
        raise ckpt.CkptError(f"--ckpt {ckpt_path!r} holds no EMA decoder (ema_vq); use --decoder online or base")
    keys = ("cfg_scale", "temperature", "top_k", "top_p")
    conf = ck["config"] if ck else {"toy_cache": toy_cache, "toy_preset": toy_preset,
                                    **{k: v for k, v in (sampling or {}).items() if k in keys}}
    tcfg = toy_world.ToyConfig.tiny() if conf["toy_preset"] == "tiny" else toy_world.ToyConfig()
    b = toy_world.load_toy(tcfg, cache_dir=conf["toy_cache"], progress=False)
    vqs = {}                                                   # decoder name -> its VQ (eval mode)
    for d in dict.fromkeys(decoders):
        vqs[d] = b.vq if d == "base" or not ck else copy.deepcopy(b.vq)
        if ck and d != "base":
            vqs[d].load_state_dict(ck["vq" if d == "online" else "ema_vq"])
        vqs[d].eval()
    if ck:
        b.gpt.load_state_dict(ck["gpt"])
    encoders = []                                              # one encode_indices per distinct encoder state
    for d, vq in vqs.items():
        same = [e for e in encoders if all(ka == kb and torch.equal(va, vb) for (ka, va), (kb, vb)
                                           in zip(_encoder_state(e.__self__), _encoder_state(vq)))]
        encoders.append(same[0] if same else vq.encode_indices)
    dec = {d: (vq.decode_indices, e) for (d, vq), e in zip(vqs.items(), encoders)}   # name -> (decode, encode)
    scale = cfg_scale if cfg_scale is not None else conf.get("cfg_scale", 4.0)   # 4.0 = train.py's tiny preset
    b.gpt.eval()
    sample_gen = torch.Generator().manual_seed(seed)

    def sample_tokens(caps):
        cond, mask = b.text_encoder(caps)
        return fast_sample.sample_gpt(b.gpt, cond, mask, cfg_scale=scale, temperature=conf.get("temperature", 1.0),
                                      top_k=conf.get("top_k", 0), top_p=conf.get("top_p", 1.0), generator=sample_gen)

    g_tr = torch.Generator().manual_seed(seed + 1)             # train split: the full row
    real, captions = b.world.sample(n, g_tr, "train")
    real_b, _ = b.world.sample(n, g_tr, "train")               # disjoint real set: the LCS floor
    tr = evaluate_toy_decoders(sample_tokens, captions, real, decoders=dec, eval_clip_fn=b.eval_clip_fn,
                               feature_fn=b.feature_fn, check=b.world.check, K=b.vq.cfg.codebook_size,
                               real_images_b=real_b, reward_fn=b.reward_fn, detail=detail)
    _, captions_ho = b.world.sample(n, torch.Generator().manual_seed(seed + 2), "heldout")
    ho = {d: [] for d in dec}                                  # held-out split: only the checker is reported
    for s in range(0, n, 64):
        caps = list(captions_ho[s:s + 64])
        z = sample_tokens(caps)                                                                  # (B, N)
        for d, (decode, _) in dec.items():
            ho[d].append(torch.as_tensor(b.world.check(decode(z).clamp(-1, 1), caps)).double())
    return {d: {"reward": tr[d]["reward"], "clip": tr[d]["clip"], "check_train": tr[d]["check"],
                "check_heldout": float(torch.cat(ho[d]).mean()), "fid": tr[d]["fid"], "kid": tr[d]["kid"],
                "kid_se": tr[d]["kid_se"], "lcs_kl": tr[d]["lcs_kl_nats"],
                **({"lcs_floor": tr[d]["real_floor_nats"]} if "real_floor_nats" in tr[d] else {}),
                **{k: tr[d][k] for k in ("reencode_agree", "reencode_cycle_l1", "real_reencode_agree",
                                         "real_reencode_cycle_l1") if k in tr[d]}, "step": ck["step"] if ck else 0}
            for d in decoders}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m toy.eval", description="Toy-world metrics of a train.py checkpoint (or of the toy base models) "
                                             "as one table row: " + " | ".join(TOY_COLUMNS))
    ap.add_argument("--ckpt", default=None, help="train.py checkpoint OUT_DIR/ckpt_NNNNNNN.pt (default: the toy base "
                                                 "models; a checkpoint's own toy_cache / toy_preset are used)")
    ap.add_argument("--toy_cache", default=".cache/toy", help="toy artifact cache (base models only)")
    ap.add_argument("--toy_preset", default="default", choices=("default", "tiny"), help="(base models only)")
    ap.add_argument("--n", type=int, default=256, help="captions per split")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (the captions use seed+1, seed+2)")
    ap.add_argument("--decoder", default=["online"], nargs="+", choices=DECODERS,
                    help="the checkpoint's decoder, its EMA decoder, or the base decoder (same tokens either way); "
                         "several: one sampling pass, one row each")
    ap.add_argument("--json", default=None, help="also write {decoder: row} to this file (atomically)")
    args = ap.parse_args(argv)
    if args.n < 3:
        ap.error(f"--n {args.n}: need at least 3 captions per split (KID's unbiased estimate, feature covariance)")
    try:                                    # the checkpoint is read first: a bad one fails before the world loads
        rows = evaluate_toy_checkpoint_decoders(args.ckpt, tuple(args.decoder), toy_cache=args.toy_cache,
                                                toy_preset=args.toy_preset, n=args.n, seed=args.seed)
    except ckpt.CkptError as e:
        ap.error(str(e))
    for d, row in rows.items():
        print((f"{d}: " if len(rows) > 1 else "") + " | ".join(f"{k} {row[k]:.4f}" for k in TOY_COLUMNS))
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    return rows[args.decoder[0]] if len(rows) == 1 else rows


if __name__ == "__main__":
    main(sys.argv[1:])
