"""Throughput of fast_sample.sample_gpt (the sampler train.py uses) and of the readable policy.sample (both static KV
cache) against policy.sample_naive (full recompute per step), or of sample_gpt against upstream LlamaGen's
generate() on the same weights.

Not a test: prints numbers (medians of --repeats interleaved calls, after a warm-up at the timed batch). Random
weights (speed does not depend on them).
  CPU:   python -m bench.sampler                       # "toy" GPT, B=8 prompts, CFG 4.0 (so 16 model rows)
  CUDA:  python -m bench.sampler                       # also GPT-XL t2i: 64 prompts, 256 px (N=256), CFG 6, bf16
  Upstream: python -m bench.sampler --upstream DIR --threads 2      # CPU, one process
         DIR = a LlamaGen checkout OUTSIDE this repository (never add its files here): `git clone
         https://github.com/FoundationVision/LlamaGen DIR && git -C DIR checkout ce98ec4` (ce98ec41803a74a90ce68c40ab
         aba9eaeffeb4ec), or a scratch folder holding just the three files imported, unpatched:
         autoregressive/models/gpt.py, autoregressive/models/generate.py, utils/drop_path.py. Fixed config: GPT dim
         256, 4 layers, 4 heads (head_dim 64, as every upstream GPT), V 16384, T=120 caption slots (upstream's
         CaptionEmbedder fixes 120) of width D=2048 (FLAN-T5-XL), N=256 (16x16: VQ-16 at 256 px), --batch prompts
         (pads first, zeroed: sample_t2i.py's left padding), --cfg, top-k 1000, temperature 1, fp32. Checks greedy
         (top-k 1) tokens identical, then times both interleaved (--repeats) and prints the medians and their ratio.
Options: --config toy --batch 8 --cfg 4.0 --threads 1 --xl_batch 64 --no_xl --upstream DIR --repeats 5
Symbols: B prompts, N image tokens, V vocabulary.
"""
import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from perf.fast_sample import sample_gpt
from policy import GPT, GPT_CONFIGS, GPTConfig, sample, sample_naive


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
    for fn in (sample_gpt, sample, sample_naive):   # warm-up, at the timed batch
        fn(model, cond, mask, generator=torch.Generator(device).manual_seed(0), **kw)
    out, times = {}, {fn: [] for fn in (sample_gpt, sample, sample_naive)}
    for _ in range(args.repeats):    # interleaved, so load on a shared machine hits all three alike
        for fn in times:
            out[fn], dt = timed(fn, model, cond, mask, generator=torch.Generator(device).manual_seed(1),
                                device=device, **kw)
            times[fn].append(dt)
    t = {fn: statistics.median(v) for fn, v in times.items()}
    n = args.batch * cfg.block_size
    print(f"[{device.type}] GPT '{args.config}' ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params), "
          f"B={args.batch}, N={cfg.block_size}, CFG {args.cfg}, fp32, {torch.get_num_threads()} threads, median of "
          f"{args.repeats} interleaved repeats")
    for fn, name in ((sample_gpt, "fast_sample.sample_gpt"), (sample, "policy.sample (readable)"),
                     (sample_naive, "policy.sample_naive")):
        print(f"  {name:26s} {n / t[fn]:9.0f} tokens/s  ({t[fn]:.2f} s)")
    print(f"  speedup over naive: sample_gpt {t[sample_naive] / t[sample_gpt]:.1f}x, sample "
          f"{t[sample_naive] / t[sample]:.1f}x; identical tokens: "
          f"{all(torch.equal(o, out[sample_naive]) for o in out.values())}")


def bench_xl(args, device):
    cfg = GPT_CONFIGS["GPT-XL-t2i"]  # block_size 256 = 16x16 tokens = 256 px
    model = random_policy(cfg, device, torch.bfloat16)
    cond, mask = random_cond(cfg, args.xl_batch, device)
    kw = dict(cfg_scale=6.0, top_k=1000, top_p=1.0, temperature=1.0)
    sample_gpt(model, cond, mask, generator=torch.Generator(device).manual_seed(0), **kw)   # warm-up, timed batch
    torch.cuda.reset_peak_memory_stats()                     # the sampler's peak, not the model build's
    t = statistics.median(timed(sample_gpt, model, cond, mask, generator=torch.Generator(device).manual_seed(1),
                                device=device, **kw)[1] for _ in range(args.repeats))
    print(f"[cuda] GPT-XL t2i bf16, {args.xl_batch} prompts x 256 tokens, CFG 6 ({2 * args.xl_batch} rows), "
          f"top-k 1000: {args.xl_batch / t:.1f} img/s, {args.xl_batch * cfg.block_size / t:.0f} tokens/s "
          f"({t:.2f} s); "
          f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def bench_upstream(args, device):
    """fast_sample.sample_gpt vs LlamaGen's generate() (generate.py:126-176) on the same weights, called as
    sample_t2i.py calls it: cond_idx = left-padded caption features (pads zeroed), emb_masks, cfg_scale, sampling
    kwargs, sample_logits."""
    root = Path(args.upstream).resolve()
    if root.is_relative_to(Path(__file__).resolve().parent.parent):   # the repository
        raise SystemExit("--upstream: keep the LlamaGen checkout outside this repository")
    sys.path.insert(0, str(root))  # its autoregressive/ and utils/ packages
    from autoregressive.models.generate import generate
    from autoregressive.models.gpt import ModelArgs, Transformer
    warnings.filterwarnings("ignore", category=FutureWarning)  # generate.py's torch.backends.cuda.sdp_kernel context
    cfg = GPTConfig(vocab_size=16384, dim=256, n_layer=4, n_head=4, cls_token_num=120, caption_dim=2048, block_size=256)
    ours = random_policy(cfg, device)
    up = Transformer(ModelArgs(dim=cfg.dim, n_layer=cfg.n_layer, n_head=cfg.n_head, vocab_size=cfg.vocab_size,
                               cls_token_num=cfg.cls_token_num, caption_dim=cfg.caption_dim, block_size=cfg.block_size,
                               model_type="t2i")).to(device).eval()
    up.load_state_dict(ours.state_dict(), strict=True)   # same key names; upstream's freqs_cis is no buffer
    B, N = args.batch, cfg.block_size
    cond, mask = random_cond(cfg, B, device)
    gen = lambda s: torch.Generator(device).manual_seed(s)

    def run_up(seed, **kw):  # its draws use torch's global RNG
        torch.manual_seed(seed)
        return generate(up, cond, N, mask.long(), cfg_scale=args.cfg, sample_logits=True, **kw)

    greedy = dict(temperature=1.0, top_k=1, top_p=1.0)   # a one-token support: multinomial is deterministic
    same = torch.equal(sample_gpt(ours, cond, mask, cfg_scale=args.cfg, generator=gen(0), **greedy),
                       run_up(0, **greedy).long())
    kw = dict(temperature=1.0, top_k=1000, top_p=1.0)
    t_ours, t_up = [], []
    for r in range(args.repeats):   # interleaved, so load on a shared machine hits both alike
        t_ours.append(timed(sample_gpt, ours, cond, mask, cfg_scale=args.cfg, generator=gen(r), device=device,
                            **kw)[1])
        t_up.append(timed(run_up, r, device=device, **kw)[1])
    med = lambda ts: B * N / statistics.median(ts)
    ratios = [u / o for o, u in zip(t_ours, t_up)]
    print(f"[{device.type}] GPT dim {cfg.dim}, {cfg.n_layer} layers, {cfg.n_head} heads, V {cfg.vocab_size}, "
          f"T {cfg.cls_token_num} x D {cfg.caption_dim}, N {N}; B={B} prompts, CFG {args.cfg}, top-k 1000, "
          f"temperature 1, fp32, {torch.get_num_threads()} threads, {args.repeats} interleaved repeats")
    runs = lambda ts: ", ".join(f"{B * N / t:.0f}" for t in ts)
    print(f"  sample_gpt           {med(t_ours):7.0f} tokens/s (median; runs {runs(t_ours)})")
    print(f"  LlamaGen generate()  {med(t_up):7.0f} tokens/s (median; runs {runs(t_up)})")
    print(f"  ratio {statistics.median(ratios):.2f}x (median of {args.repeats} paired ratios; "
          f"min {min(ratios):.2f}x, max {max(ratios):.2f}x); greedy (top-k 1) tokens identical: {same}")
    if not same:
        raise SystemExit("greedy tokens differ from upstream's")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="toy", choices=sorted(GPT_CONFIGS), help="GPT config for the comparison")
    p.add_argument("--batch", type=int, default=8, help="prompts B (model rows = 2B with CFG)")
    p.add_argument("--cfg", type=float, default=4.0, help="CFG scale")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1 is fastest on a loaded box)")
    p.add_argument("--xl_batch", type=int, default=64, help="prompts for the GPT-XL run (CUDA only)")
    p.add_argument("--no_xl", action="store_true", help="skip the GPT-XL run on CUDA")
    p.add_argument("--upstream", metavar="DIR", help="LlamaGen checkout (outside this repo): compare with generate()")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed runs per sampler (--upstream)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.upstream:
        bench_upstream(args, torch.device("cpu"))
        sys.exit()
    bench_small(args, dev)
    if dev.type == "cuda" and not args.no_xl:
        bench_xl(args, dev)
