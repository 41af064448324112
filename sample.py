"""Sample the evaluation benchmarks from a train.py checkpoint, with each backbone's released evaluation sampler.

The paper's tables (docs/method.md §11, §12 of the paper's comparison; Janus: §17.6) score COCO-30K (FID, CLIP),
GenEval and HPSv2 images. This file turns a checkpoint into those image folders; eval_fid.py scores them.

    python sample.py --ckpt runs/llamagen_xl_clip/ckpt_0006000.pt --bench coco --prompts coco_captions.csv \
        --out_dir out/coco                                      # 30,000 images, one per caption (cycled)
    python sample.py --ckpt CKPT --bench geneval --prompts evaluation_metadata.jsonl --out_dir out/geneval  # 4/prompt
    python sample.py --ckpt CKPT --bench hps --prompts hpsv2_benchmark_prompts --out_dir out/hps   # 1/prompt/style
    python eval_fid.py coco --fake_dir out/coco --ref_dir coco2014/val2014 --inception inception-2015-12-05.pt

Sampler settings come from backbones.EVAL_SETTINGS (LlamaGen: CFG 6, T 1, top-k 1000; Janus: CFG 5, T 1, top-k 50,
D12), images per prompt from the released samplers (COCO 1, GenEval 4, HPSv2 1). `--policy` / `--decoder` pick the
online or EMA weights of the checkpoint (released combos: LlamaGen CLIP and Janus online + online, LlamaGen HPS
online policy + EMA decoder). Every run is resumable (existing images are kept) and seeded (--seed).
Self-check: tests/test_sample.py samples every benchmark from a 2-step toy and a 2-step tiny-Janus checkpoint.
Symbols: B prompts per sampling batch, N image tokens, S image side.
"""
import argparse
import os
import sys

import torch

import backbones
import ckpt
import eval_fid
from data import to_uint8

BENCHES = ("coco", "geneval", "hps")


def load_sampler(ckpt_path, *, policy="online", decoder="online", device="cpu", overrides=None):
    """train.py checkpoint -> (cfg, text_encoder, gpt, vq, sample_fn) with the chosen weights loaded strictly.
    overrides: {config field: value} for paths that differ on this machine (t5_path, janus_tokenizer, toy_cache)."""
    import train
    ck = ckpt.load_ckpt(ckpt_path, flag="--ckpt", need=("config", "gpt", "ema_gpt", "vq", "ema_vq"),
                        what="a train.py checkpoint (runs/<name>/ckpt_*.pt)")
    known = {f for f in train.Config.__dataclass_fields__}
    cfg = train.Config(**{**{k: v for k, v in ck["config"].items() if k in known}, **(overrides or {})})
    text_encoder, gpt, vq, sample_fn, _ = backbones.build_policy(cfg, device, weights=False)
    gpt.load_state_dict(ck["gpt" if policy == "online" else "ema_gpt"])
    vq.load_state_dict(ck["vq" if decoder == "online" else "ema_vq"])
    return cfg, text_encoder, gpt.to(device).eval(), vq.to(device).eval(), sample_fn


def make_generate(cfg, text_encoder, gpt, vq, sample_fn, *, seed, device="cpu", settings=None):
    """captions -> uint8 (B,3,S,S), sampled with the backbone's released evaluation settings and one generator."""
    settings = settings or backbones.EVAL_SETTINGS[cfg.backbone]
    gen = torch.Generator(device).manual_seed(seed)

    @torch.no_grad()
    def generate(captions):
        cond, mask = (t.to(device) for t in text_encoder(list(captions)))
        tokens = sample_fn(gpt, cond, mask, generator=gen, **settings)                 # (B, N)
        return to_uint8(vq.decode_indices(tokens).float())                              # (B,3,S,S)
    return generate


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ckpt", required=True, help="train.py checkpoint (runs/<name>/ckpt_*.pt)")
    p.add_argument("--bench", required=True, choices=BENCHES)
    p.add_argument("--prompts", required=True, help="coco: captions .csv (column Prompt); geneval: metadata .jsonl; "
                                                    "hps: folder with anime.json, concept-art.json, paintings.json, photo.json")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--n", type=int, default=30000, help="coco: number of images (captions cycled)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--policy", default="online", choices=("online", "ema"))
    p.add_argument("--decoder", default="online", choices=("online", "ema"))
    p.add_argument("--seed", type=int, default=42, help="released: 42 (COCO, HPS), 0 (GenEval)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    for f in ("t5_path", "janus_tokenizer", "toy_cache"):
        p.add_argument(f"--{f}", default=None, help=f"override the checkpoint's {f} (files moved to another place)")
    a = p.parse_args(argv)
    kind = {"coco": "file", "geneval": "file", "hps": "dir"}[a.bench]
    bad = [m for m in (ckpt.check_path("--ckpt", a.ckpt), ckpt.check_path("--prompts", a.prompts, kind)) if m]
    if a.n < 1 or a.batch_size < 1:
        bad.append(f"--n {a.n} / --batch_size {a.batch_size}: both must be >= 1")
    if bad:
        raise SystemExit("\n".join(bad))
    overrides = {f: getattr(a, f) for f in ("t5_path", "janus_tokenizer", "toy_cache") if getattr(a, f)}
    try:
        cfg, te, gpt, vq, fn = load_sampler(a.ckpt, policy=a.policy, decoder=a.decoder, device=a.device,
                                            overrides=overrides)
    except ckpt.CkptError as e:
        raise SystemExit(str(e))
    generate = make_generate(cfg, te, gpt, vq, fn, seed=a.seed, device=a.device)
    if a.bench == "coco":
        made = eval_fid.sample_to_folder(generate, eval_fid.read_captions(a.prompts, a.n), a.out_dir,
                                         batch_size=a.batch_size)
    elif a.bench == "geneval":
        made = eval_fid.sample_geneval(generate, a.prompts, a.out_dir, n_per_prompt=4, batch_size=a.batch_size)
    else:
        made = eval_fid.sample_hps_benchmark(generate, a.prompts, a.out_dir, batch_size=a.batch_size)
    print(f"[sample] {a.bench}: {made} new images in {a.out_dir} ({cfg.backbone}, "
          f"{backbones.EVAL_SETTINGS[cfg.backbone]}, policy {a.policy}, decoder {a.decoder}, seed {a.seed})")
    return made


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
