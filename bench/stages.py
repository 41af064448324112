"""Speed and memory of each stage of one RankE iteration at real size, on synthetic (random) weights.

The stages are train.py's own step functions (docs/method.md §3), run on a backbone built by `--synthetic` (every
model at its real size, or a smaller --scale; perf/synthetic.py), so the numbers are those of the real loop without any
download. Per stage: median wall time over --repeats (after --warmup), samples/s, and on CUDA the peak memory of the
stage (reset before it, read after a synchronize); then the sampler alone at --sample_batch prompts (tokens/s,
images/s), and on CUDA the largest stage peak against synthetic.dry_run's estimate for the same batch.

    python -m bench.stages --device cpu --scale tiny --batch_prompts 2 --group_size 2 --sample_batch 4 \
        --repeats 1 --warmup 0                                        # CPU, a couple of minutes
    python -m bench.stages --device cuda --scale full --batch_prompts 4 --group_size 8 --cfg 6 --sample_batch 64 \
        --repeats 3 --warmup 1                                        # GPU: the released LlamaGen batch, 256 px
Flags after the ones below go to train.parse_config (e.g. --logp_chunk 8, --grad_ckpt false, --reward hpsv2).

  stage      what runs                                                              samples
  encode     bb.text_encoder(captions): FLAN-T5-XL / Janus prompt ids                B
  rollout    train.rollout = sample + logp                                          B*G
   sample      bb.sample with CFG (docs/method.md §4.6)                             B*G
   logp        bb.logprobs under the reference policy (+ online, --ppo_epochs > 1)  B*G
  reward     train.score_rollouts: EMA-decoder decode, reward, advantages (§7)      B*G
  policy     train.policy_step (§4.3)                                               B*G
  gt_enc     the frozen VQ encoder on the B real images (main() before steps 4-5)  B
  disc       train.disc_step (§6), real vs reconstructed                            B
  decoder    train.decoder_step (§5.2), GAN on                                      B*G rollouts ranked, B*K decoded
  iteration  rollout + reward + policy + gt_enc + disc + decoder (--method ranke)   B*G
Symbols: B prompts, G samples per prompt, K kept per prompt (--rank_k), N image tokens.
"""
import argparse
import statistics
import tempfile
import time

import torch

import train
from runtime import setup_distributed

GiB = 1024 ** 3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="llamagen_xl", choices=("llamagen_xl", "janus_pro_1b"))
    p.add_argument("--scale", default="full", help="--synthetic value: full | L (layers per stack) | tiny")
    p.add_argument("--batch_prompts", type=int, default=4)
    p.add_argument("--group_size", type=int, default=8)
    p.add_argument("--cfg", type=float, default=None, help="CFG scale (default: the backbone preset's)")
    p.add_argument("--sample_batch", type=int, default=64, help="prompts per call in the sampler line (0: skip)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    a, rest = p.parse_known_args(argv)
    if any(f == "--method" or f.startswith("--method=") for f in rest):   # the stages below are RankE's, all of them
        raise SystemExit("bench.stages times the stages of one RankE iteration (rollout, reward, policy, disc, "
                         "decoder): drop --method")
    cfg = train.parse_config(["--backbone", a.backbone, "--synthetic", a.scale, "--batch_prompts", str(a.batch_prompts),
                              "--group_size", str(a.group_size), "--device", a.device, "--disc_start", "0",
                              "--out_dir", tempfile.mkdtemp(), *(["--cfg_scale", str(a.cfg)] if a.cfg else []), *rest])
    bad = train.check_paths(cfg)
    if bad or a.repeats < 1 or a.warmup < 0 or a.sample_batch < 0:
        raise SystemExit("bad flags:\n  " + "\n  ".join(bad or ["--repeats >= 1, --warmup >= 0, --sample_batch >= 0"]))
    _, _, device, autocast = setup_distributed(cfg)
    cuda = device.type == "cuda"
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    bb = train.seam(cfg).build_backbone(cfg, device, 0)
    m = train.build_models(cfg, bb, device)
    print(f"[bench_stages] built in {time.perf_counter() - t0:.1f} s on {device}; {torch.get_num_threads()} threads; "
          f"B={cfg.batch_prompts} G={cfg.group_size} K={cfg.rank_k} CFG={cfg.cfg_scale} top_k={cfg.top_k} "
          f"bf16={cfg.bf16 and cuda} grad_ckpt={cfg.grad_ckpt}", flush=True)
    gen = torch.Generator(device).manual_seed(cfg.seed + 1)
    B, G = cfg.batch_prompts, cfg.group_size
    x_gt, captions = bb.stream.next()
    cond, mask = (t.to(device) for t in bb.text_encoder(captions))
    b = train.Batch(x_gt.to(device), cond, mask, cond.repeat_interleave(G, 0), mask.repeat_interleave(G, 0),
                    [c for c in captions for _ in range(G)])
    logp_scale = cfg.cfg_scale if cfg.logp_cfg == "guided" else 1.0
    kw = dict(cfg_scale=cfg.cfg_scale, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, generator=gen)

    def sample():
        with torch.no_grad(), autocast():
            b.tokens = bb.sample(m.gpt, b.cond_g, b.mask_g, **kw)                               # (B*G, N)

    def logp():   # as train.rollout: the KL reference, and the online policy only when --ppo_epochs > 1
        with torch.no_grad(), autocast():
            for model in [m.ema_gpt if cfg.kl_ref == "ema" else m.ref_gpt] + [m.gpt] * (cfg.ppo_epochs > 1):
                bb.logprobs(model, b.cond_g, b.mask_g, b.tokens, cfg_scale=logp_scale).float()

    def gt_latents():   # the frozen encoder's codebook vectors of the GT images, as main() computes them
        with torch.no_grad():
            b.z_gt = m.vq.codebook_lookup(m.vq.encode_indices(b.x_gt.float()))

    stages = [("encode", lambda: bb.text_encoder(captions), B),
              ("rollout", lambda: train.rollout(cfg, bb, m, b, gen, autocast), B * G),
              (" sample", sample, B * G), (" logp", logp, B * G),
              ("reward", lambda: train.score_rollouts(cfg, bb, m, b), B * G),
              ("policy", lambda: train.policy_step(cfg, bb, m, [b], 0, 1, autocast), B * G),
              ("gt_enc", gt_latents, B),
              ("disc", lambda: train.disc_step(cfg, m, [b], 1, autocast), B),
              ("decoder", lambda: train.decoder_step(cfg, bb, m, [b], cfg.disc_start, 1, autocast), B * G)]
    rows = [measure(name, fn, n, a, device) for name, fn, n in stages]
    it = sum(r[1] for r in rows if r[0] in ("rollout", "reward", "policy", "gt_enc", "disc", "decoder"))
    rows.append(("iteration", it, B * G / it, max(r[3] for r in rows) if cuda else None))
    print(f"{'stage':<10} {'time_s':>9} {'samples/s':>10} {'peak_GiB':>9}")
    for name, t, rate, peak in rows:
        print(f"{name:<10} {t:9.3f} {rate:10.2f} {'-' if peak is None else f'{peak:.2f}':>9}")
    if a.sample_batch:   # the sampler alone, at an evaluation-size batch of distinct prompts
        caps = []
        while len(caps) < a.sample_batch:
            caps += bb.stream.next()[1]
        c, mk = (t.to(device) for t in bb.text_encoder(caps[:a.sample_batch]))
        n_tok = bb.gpt.cfg.image_tokens if hasattr(bb.gpt.cfg, "image_tokens") else bb.gpt.cfg.block_size
        with torch.no_grad(), autocast():
            _, t, _, peak = measure("sampler", lambda: bb.sample(m.gpt, c, mk, **kw), a.sample_batch, a, device)
        print(f"sampler: {a.sample_batch} prompts x {n_tok} tokens, CFG {cfg.cfg_scale}, top_k {cfg.top_k}: "
              f"{t:.3f} s, {a.sample_batch * n_tok / t:.0f} tokens/s, {a.sample_batch / t:.2f} images/s"
              + (f", peak {peak:.2f} GiB" if cuda else ""))
    if cuda:
        from perf.synthetic import dry_run
        est = sum(dry_run(cfg).values()) / GiB
        note = "" if cfg.synthetic == "full" else " (the estimate is for the FULL-size models: use --scale full)"
        print(f"peak memory: measured {max(r[3] for r in rows):.2f} GiB (largest stage) vs dry_run estimate "
              f"{est:.2f} GiB (a sum over components: an upper bound){note}")
    return rows


def measure(name, fn, n, a, device):
    """(name, median seconds, n / seconds, peak GiB of the stage on CUDA else None) over a.repeats after a.warmup."""
    cuda, times, peaks = device.type == "cuda", [], []
    for i in range(a.warmup + a.repeats):
        if cuda:
            torch.cuda.synchronize(device)           # nothing of the previous stage is still running
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)           # the stage's kernels have finished
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
            peaks.append(torch.cuda.max_memory_allocated(device) / GiB if cuda else None)
    t = statistics.median(times)
    return name, t, n / t, max(peaks) if cuda else None


if __name__ == "__main__":
    main()
