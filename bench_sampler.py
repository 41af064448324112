"""Throughput of policy.sample (static KV cache) against policy.sample_naive (full recompute per step).

Not a test: prints numbers. Random weights (speed does not depend on them).
  CPU:   python bench_sampler.py                       # "toy" GPT, B=8 prompts, CFG 4.0 (so 16 model rows)
  CUDA:  python bench_sampler.py                       # also GPT-XL t2i: 64 prompts, 256 px (N=256), CFG 6, bf16
Options: --config toy --batch 8 --cfg 4.0 --threads 1 --xl_batch 64 --no_xl
Symbols: B prompts, N image tokens, V vocabulary.
"""
import argparse
import time

import torch

from policy import GPT, GPT_CONFIGS, sample, sample_naive


def timed(fn, *args, device, **kw):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def random_policy(cfg, device, dtype=torch.float32, seed=0):
    """Random GPT incl. a non-zero head (the from-scratch init zeroes it, which would make every step uniform)."""
    with torch.device(device):  # build and initialise in place (GPT-XL: no 3 GB detour through host memory)
        model = GPT(cfg, seed=seed).eval()
    with torch.no_grad():
        model.output.weight.normal_(0.0, 0.02, generator=torch.Generator(device).manual_seed(seed))
    return model.to(dtype)


def random_cond(cfg, B, device, seed=0):
    """Left-aligned random caption features (B,T,D) with 1..T valid slots (pads first, zeroed)."""
    g = torch.Generator(device).manual_seed(seed)
    T = cfg.cls_token_num
    L = torch.randint(1, T + 1, (B,), generator=g, device=device)                              # valid slots
    mask = torch.arange(T, device=device)[None] >= (T - L)[:, None]                           # (B,T) pads first
    cond = torch.randn(B, T, cfg.caption_dim, generator=g, device=device) * mask[..., None]   # (B,T,D)
    return cond, mask


def bench_small(args, device):
    cfg = GPT_CONFIGS[args.config]
    model = random_policy(cfg, device)
    cond, mask = random_cond(cfg, args.batch, device)
    kw = dict(cfg_scale=args.cfg, top_k=min(1000, cfg.vocab_size), top_p=1.0, temperature=1.0)
    sample(model, cond[:2], mask[:2], generator=torch.Generator(device).manual_seed(0), **kw)   # warm-up
    fast, t_fast = timed(sample, model, cond, mask, generator=torch.Generator(device).manual_seed(1), device=device,
                         **kw)
    slow, t_slow = timed(sample_naive, model, cond, mask, generator=torch.Generator(device).manual_seed(1),
                         device=device, **kw)
    n = args.batch * cfg.block_size
    print(f"[{device.type}] GPT '{args.config}' ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params), "
          f"B={args.batch}, N={cfg.block_size}, CFG {args.cfg}, fp32, {torch.get_num_threads()} threads")
    print(f"  sample (KV cache)   {n / t_fast:9.0f} tokens/s  ({t_fast:.2f} s)")
    print(f"  sample_naive        {n / t_slow:9.0f} tokens/s  ({t_slow:.2f} s)")
    print(f"  speedup {t_slow / t_fast:.1f}x; identical tokens: {torch.equal(fast, slow)}")


def bench_xl(args, device):
    cfg = GPT_CONFIGS["GPT-XL-t2i"]  # block_size 256 = 16x16 tokens = 256 px
    model = random_policy(cfg, device, torch.bfloat16)
    cond, mask = random_cond(cfg, args.xl_batch, device)
    kw = dict(cfg_scale=6.0, top_k=1000, top_p=1.0, temperature=1.0)
    sample(model, cond[:4], mask[:4], generator=torch.Generator(device).manual_seed(0), **kw)   # warm-up
    _, t = timed(sample, model, cond, mask, generator=torch.Generator(device).manual_seed(1), device=device, **kw)
    print(f"[cuda] GPT-XL t2i bf16, {args.xl_batch} prompts x 256 tokens, CFG 6 ({2 * args.xl_batch} rows), "
          f"top-k 1000: {args.xl_batch / t:.1f} img/s, {args.xl_batch * cfg.block_size / t:.0f} tokens/s "
          f"({t:.2f} s); "
          f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="toy", choices=sorted(GPT_CONFIGS), help="GPT config for the comparison")
    p.add_argument("--batch", type=int, default=8, help="prompts B (model rows = 2B with CFG)")
    p.add_argument("--cfg", type=float, default=4.0, help="CFG scale")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1 is fastest on a loaded box)")
    p.add_argument("--xl_batch", type=int, default=64, help="prompts for the GPT-XL run (CUDA only)")
    p.add_argument("--no_xl", action="store_true", help="skip the GPT-XL run on CUDA")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bench_small(args, dev)
    if dev.type == "cuda" and not args.no_xl:
        bench_xl(args, dev)
