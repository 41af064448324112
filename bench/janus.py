"""Throughput of fast_sample.sample_janus (the sampler train.py uses) and of the readable janus.sample (both static KV
cache) against transformers' JanusForConditionalGeneration.generate().

Not a test: prints numbers. Same random weights (ours renamed into the HF model with janus.hf_to_original), same
left-padded batch of B prompts of different lengths, CFG 5, greedy (HF do_sample=False; ours top-k 1, the same
argmax), checked to give identical tokens. One process, fp32: a warm-up call each, then --repeats rounds of one
timed call each, ours and HF alternating (so a neighbour's load hits both alike); tokens/s of the median call.
  python -m bench.janus                      # --size tiny: janus.JANUS_CONFIGS["tiny"] (N=16; Python-overhead bound)
  python -m bench.janus --size medium        # dim 512, 8 layers, N=64, image vocabulary 1024 (weight-bandwidth bound)
  python -m bench.janus --compile            # also sample_janus(compile=True); its compile time reported apart
Options: --batch 8 --cfg 5.0 --repeats 7 --threads 1 (OMP_NUM_THREADS=1 python -m bench.janus is the reference)
Symbols: B prompts, N image tokens, V image vocabulary.
"""
import argparse
import statistics
import time

import torch

import janus
from perf.fast_sample import sample_janus

SIZES = {
    "tiny": janus.JANUS_CONFIGS["tiny"],
    "medium": janus.JanusGenConfig(vocab_size=1024, dim=512, n_layer=8, n_head=8, ffn_hidden=1408, image_vocab=1024,
                                   image_tokens=64, max_positions=256, bos_id=1000, pad_id=1002, boi_id=1003,
                                   vq="janus_tiny"),
}


def hf_model(model: janus.JanusGen):
    """transformers' Janus with cfg's text / generation sizes (a minimal vision side) and model's weights."""
    import transformers as tf
    c = model.cfg
    g = int(c.image_tokens ** 0.5)
    text = dict(model_type="llama", vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.ffn_hidden,
                num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.n_head,
                rms_norm_eps=c.norm_eps, rope_theta=c.rope_base, max_position_embeddings=c.max_positions,
                bos_token_id=c.bos_id, pad_token_id=c.pad_id, eos_token_id=c.bos_id + 1)
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=16 * g,
                  patch_size=16, num_image_tokens=c.image_tokens, projection_dim=c.dim)
    vq = dict(embed_dim=c.gen_embed_dim, num_embeddings=c.image_vocab, base_channels=32, channel_multiplier=[1, 2],
              num_res_blocks=1, latent_channels=32, projection_dim=c.dim, image_token_embed_dim=c.dim)
    hf = tf.JanusForConditionalGeneration(tf.JanusConfig(text_config=text, vision_config=vision, vq_config=vq))
    ours = model.state_dict()
    gen = {k: ours[janus.hf_to_original(k)] for k in hf.state_dict() if janus.hf_to_original(k) in ours}
    missing = hf.load_state_dict(gen, strict=False).missing_keys
    assert all(k.startswith(("model.vision_model.", "model.aligner.", "model.vqmodel.", "lm_head.")) for k in missing)
    return hf.eval()


def prompts(cfg, B, seed=0):
    """Left-padded BOS + caption ids + <begin_of_image>, caption lengths 2..12."""
    g = torch.Generator().manual_seed(seed)
    L = torch.randint(2, 13, (B,), generator=g)
    T = int(L.max()) + 2
    ids, mask = torch.full((B, T), cfg.pad_id), torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(L.tolist()):
        ids[b, T - n - 2:] = torch.tensor([cfg.bos_id, *torch.randint(0, cfg.bos_id, (n,), generator=g).tolist(),
                                           cfg.boi_id])
        mask[b, T - n - 2:] = True
    return ids, mask


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main(args):
    from transformers import GenerationConfig
    cfg, device = SIZES[args.size], torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = janus.JanusGen(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # larger than the N(0, .02) init, so the greedy tokens vary (an identity check with teeth)
        for name, p in model.named_parameters():
            p.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.1 if cfg.dim <= 64 else 0.05, generator=g)
    hf = hf_model(model).to(device)
    model = model.to(device)
    ids, mask = (t.to(device) for t in prompts(cfg, args.batch))
    gc = GenerationConfig(do_sample=False, guidance_scale=args.cfg, bos_token_id=cfg.bos_id, pad_token_id=cfg.pad_id,
                          generation_kwargs={"boi_token_id": cfg.boi_id}, num_return_sequences=1)
    ours, readable, theirs = "fast_sample.sample_janus", "janus.sample (readable)", "HF generate() (static cache)"
    compiled = "sample_janus(compile=True)"
    runs = {ours: lambda: sample_janus(model, ids, mask, cfg_scale=args.cfg, top_k=1),
            readable: lambda: janus.sample(model, ids, mask, cfg_scale=args.cfg, top_k=1),
            theirs: lambda: hf.generate(ids, attention_mask=mask.long(), generation_mode="image", generation_config=gc)}
    if args.compile:  # the first call compiles (inductor's on-disk cache can shorten it): timed apart
        runs[compiled] = lambda: sample_janus(model, ids, mask, cfg_scale=args.cfg, top_k=1, compile=True)
        t_compile = timed(runs[compiled], device)[1]
    out = {k: fn() for k, fn in runs.items()}                               # warm-up; tokens checked below
    times = {k: [] for k in runs}
    for _ in range(args.repeats):                                  # alternating: ours, readable, HF[, compiled]
        for k, fn in runs.items():
            times[k].append(timed(fn, device)[1])
    med, n = {k: statistics.median(t) for k, t in times.items()}, args.batch * cfg.image_tokens
    print(f"[{device.type}] Janus '{args.size}' ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params), "
          f"B={args.batch}, prompt T={ids.shape[1]}, N={cfg.image_tokens}, CFG {args.cfg} ({2 * args.batch} rows), "
          f"greedy, fp32, {torch.get_num_threads()} threads; median of {args.repeats} calls after a warm-up")
    for k, t in med.items():
        print(f"  {k:32s} {n / t:9.0f} tokens/s  ({t:.4f} s; calls {min(times[k]):.4f}-{max(times[k]):.4f} s)")
    for k in (k for k in runs if k != theirs):
        print(f"  ratio {k} / HF {med[theirs] / med[k]:.2f}x; identical tokens: {torch.equal(out[k], out[theirs])} "
              f"({len(out[k].unique())} distinct tokens)")
    if args.compile:
        print(f"  compile: first call {t_compile:.1f} s")
    assert all(torch.equal(t, out[theirs]) for t in out.values()), "our samplers and HF generate() disagree"


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="tiny", choices=sorted(SIZES))
    p.add_argument("--batch", type=int, default=8, help="prompts B (model rows = 2B with CFG)")
    p.add_argument("--cfg", type=float, default=5.0, help="CFG scale")
    p.add_argument("--repeats", type=int, default=7, help="timed calls each (median), after a warm-up call")
    p.add_argument("--compile", action="store_true", help="also time fast_sample.sample_janus(compile=True)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1 is fastest on a loaded box)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    main(args)
