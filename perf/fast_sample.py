"""Fast decode paths for both policies: the samplers train.py and the evaluation scripts use. Opt-in for a reader:
`policy.sample` and `janus.sample` are the readable KV-cache CFG samplers through the models' own modules; the two
functions here draw the same tokens for the same generator state (tests/test_policy.py, tests/test_janus.py hold
them to it token for token), faster where Python overhead and small matmuls dominate (the toy world, CPU).

  sample_gpt(gpt, cond, cond_mask, ...)   = policy.sample, 1.2-1.4x its speed on the toy GPT (docs/experiments.md)
  sample_janus(model, ids, mask, ...)     = janus.sample, 1.2x on the tiny Janus; compile=True: the decode step under
                                            torch.compile (opt-in, never the default)

What makes them faster (no change of maths; the per-step rule is sampling.py's, shared with the readable samplers):
- the one-token decode step is written without module calls: the weights are looked up once per call and the
  step re-implements embedding, the transformer blocks and the head with F calls (policy.py's Block / Attention /
  FeedForward, janus.py's DecoderLayer / SelfAttention / MLP for S = 1); RoPE rotates q, k, v in one product;
- policy, CPU: the weight matrices are copied transposed-contiguous (MKL runs x @ W ~1.4x faster than x @ W.t());
- policy, fp32: the text keys are summarised as one key (see sample_gpt);
- one finiteness check of the logits at the end instead of one per step (each a host sync on a GPU).

Run the self-check (CPU, seconds): python -m perf.fast_sample   Speed: bench/sampler.py, bench/janus.py
Copy together with policy.py and janus.py (both imported) and their sampling.py, ckpt.py, vq.py.
Symbols: B prompts, R rows (B, or 2B with CFG: [cond; null]), T caption slots / prompt length, N image tokens, V
vocabulary, H heads, hd head dim, L cache length T + N - 1, p sequence index of the token fed at a step.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

import janus
import policy
from sampling import check_finite, draw, step_logits


# ---- LlamaGen GPT (policy.py) ---------------------------------------------------------------------------------------
def _gpt_weights(model: policy.GPT):
    """Weights `_gpt_step` reads, looked up once per call (module look-ups cost as much as a small model's matmuls):
    per layer [wqkv, wo, w1, w3, w2, attention_norm, ffn_norm], tok_embeddings, norm, output. On CPU the matrices are
    copied transposed-contiguous (same (out,in) view and results; MKL runs x @ W ~1.4x faster than x @ W.t() here)."""
    mat = (lambda w: w.t().contiguous().t()) if model.output.weight.device.type == "cpu" else (lambda w: w)
    layers = [[mat(b.attention.wqkv.weight), mat(b.attention.wo.weight), mat(b.feed_forward.w1.weight),
               mat(b.feed_forward.w3.weight), mat(b.feed_forward.w2.weight), b.attention_norm.weight,
               b.ffn_norm.weight] for b in model.layers]
    return layers, model.tok_embeddings.weight, model.norm.weight, mat(model.output.weight)


def _gpt_step(model: policy.GPT, weights, tok, rot, mask, kv_caches, p: int, k0: int):
    """= embedding + trunk + head for one token, the modules' operations in their order without module calls: z_{n-1}
    (B,) fed at sequence index p -> raw logits (R,V) fp32 predicting z_n. Writes k, v at p of each cache (2,R,H,L,hd),
    attends to its keys k0..p under mask (R,1,1,p+1-k0). RoPE on [q, k, v] (R,3,H,hd) at once, rot = (cos, sin)
    (3,1,hd): v's rows cos 1, sin 0; the sign of the pair swap folded into sin."""
    (layers, emb, w_norm, w_out), cfg, (cos, sin) = weights, model.cfg, rot
    R, H, hd, eps = kv_caches[0].shape[1], cfg.n_head, cfg.head_dim, cfg.norm_eps       # rms = RMSNorm.forward:
    rms = lambda x, w: (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * w
    h = F.embedding(tok, emb).repeat(R // tok.shape[0], 1)                  # (R,dim): cond rows, then null rows
    for (wqkv, wo, w1, w3, w2, n1, n2), kv in zip(layers, kv_caches):
        y = F.linear(rms(h, n1), wqkv).view(R, 3, H, hd)                    # (R,3,H,hd): q | k | v
        yf = y.float()                                                       # roll: pairs (2i, 2i+1) -> (2i+1, 2i)
        y = (yf * cos + yf.unflatten(-1, (-1, 2)).roll(1, -1).flatten(-2) * sin).type_as(y)   # = apply_rope
        kv[:, :, :, p] = y[:, 1:].transpose(0, 1)                            # (2,R,H,hd): k, v -> cache index p
        a = F.scaled_dot_product_attention(y[:, :1].transpose(1, 2), kv[0, :, :, k0:p + 1], kv[1, :, :, k0:p + 1],
                                           attn_mask=mask)                   # (R,H,1,hd)
        h = h + F.linear(a.reshape(R, -1), wo)
        x = rms(h, n2)
        h = h + F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)
    return F.linear(rms(h, w_norm), w_out).float()


@torch.no_grad()
def sample_gpt(model: policy.GPT, cond, cond_mask, *, cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """= policy.sample (same arguments, same tokens for the same generator state), faster: the text slots are
    prefilled through the modules, then each token goes through `_gpt_step`."""
    cfg, B, T, N = model.cfg, cond.shape[0], model.cfg.cls_token_num, model.cfg.block_size
    x, m = policy._prepare(model, cond, cond_mask, cfg_scale, temperature, top_k, top_p)  # (R,T,D), (R,T)
    R, L, dev = x.shape[0], T + N - 1, x.device                                       # z_{N-1} is never fed back
    h, rope = model.embed_text(x), policy.rope_table(cfg, dev)        # (R,T,dim): its dtype = k/v's, also in autocast
    kv_caches = [h.new_zeros(2, R, cfg.n_head, L, cfg.head_dim) for _ in model.layers]     # static (K, V) caches
    h = model.trunk(h, rope[:T], policy.attention_mask(m, T), [kv.unbind(0) for kv in kv_caches])  # prefill (R,T,dim)
    logits = model.output(h[:, -1]).float()                                           # (R,V): predicts z_0
    c, s = rope.repeat_interleave(2, -2).unbind(-1)                                   # (T+N,hd): c_i, s_i at 2i, 2i+1
    s = s * torch.tensor([-1.0, 1.0], device=dev).repeat(cfg.head_dim // 2)          # out_2i = x_2i c - x_2i+1 s
    rot = list(zip(torch.stack([c, c, torch.ones_like(c)], 1)[:, :, None], torch.stack([s, s, 0 * s], 1)[:, :, None]))
    # query p attends keys k0..p (causality = that slice); mask (R,1,1,L-k0) masks the text pads (bool) ...
    mask, k0 = torch.cat([m, m.new_ones(R, N - 1)], 1)[:, None, None], 0
    # ... or, with fp32 caches only, a text summary: text keys are 0 (RoPE rows 0), so a query scores 0 on each of its
    # nv text keys: ONE key (slot T-1, k = 0) with their mean v and additive score log nv does the same. DEVIATION:
    # exact algebra, other rounding; halves attention reads. The test is on the caches, not on h: the prefill ends in
    # an fp32 RMSNorm, so h is fp32 under autocast too, where the bf16 caches would round log nv by up to 1.5 %.
    if kv_caches[0].dtype == torch.float32:
        nv = m.sum(1)                                                                 # (R,) valid text slots
        for kv in kv_caches:
            kv[1, :, :, T - 1] = (kv[1, :, :, :T] * m[:, None, :, None]).sum(2) / nv[:, None, None]   # (R,H,hd)
        mask, k0 = F.pad(nv.log()[:, None, None, None], (0, N - 1)), T - 1           # (R,1,1,N): log nv, 0, ...
    weights, tokens, peaks = _gpt_weights(model), torch.empty(B, N, dtype=torch.long, device=dev), []
    for n in range(N):
        if n > 0:  # feed z_{n-1} (duplicated for the null half) at position p = T+n-1
            p = T + n - 1
            logits = _gpt_step(model, weights, tokens[:, n - 1], rot[p], mask[..., :p + 1 - k0], kv_caches, p, k0)
        logits = step_logits(logits, B, cfg_scale, temperature, top_k, top_p)         # (B,V)
        peaks.append(logits.amax(-1))
        tokens[:, n] = draw(logits.softmax(-1), generator)
    check_finite(torch.stack(peaks), "fast_sample.sample_gpt")     # one host sync, at the end
    return tokens


# ---- Janus-Pro (janus.py) -------------------------------------------------------------------------------------------
def _janus_weights(model: janus.JanusGen):
    """The parameters `_janus_step` reads, looked up once per call (nn.Module attribute look-ups cost as much as a
    small model's matmuls): per layer (W_q, W_k, W_v, W_o, W_gate, W_up, W_down, the two norms), then gen_embed +
    gen_aligner, gen_head, the final norm. Not fused: cat'ed [W_q; W_k; W_v], [W_gate; W_up] copies measured 2%
    faster on the tiny config, 4% slower on bench/janus.py's medium one (MKL), and cost memory."""
    layers = []
    for layer in model.language_model.model.layers:
        a, m = layer.self_attn, layer.mlp
        layers.append(tuple(x.weight for x in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj,
                                               m.down_proj, layer.input_layernorm, layer.post_attention_layernorm)))
    (a0, _, a2), (p, v) = model.gen_aligner.layers, (model.gen_head.output_mlp_projector, model.gen_head.vision_head)
    return (layers, (model.gen_embed.weight, a0.weight, a0.bias, a2.weight, a2.bias),
            (p.weight, p.bias, v.weight, v.bias), model.language_model.model.norm.weight)


def _janus_step(model: janus.JanusGen, weights, tok, cos, sin, mask, caches, p, n_keys: int, filt):
    """One sampling step: z_{n-1} (B,) fed at sequence index p ((1,) int64) -> the filtered logits (B,V) that z_n is
    drawn from (sampling.step_logits, filt = (cfg_scale, temperature, top_k, top_p)). Writes k, v at p of each cache
    (2,R,H,L,hd) and attends to keys 0..n_keys-1 (p + 1; all L with compile: static shapes, mask (R,1,1,n_keys)).
    DUPLICATES embed_image, DecoderLayer (SelfAttention, MLP) for S = 1 and logits, leaner (Python overhead bounds
    small models): F calls on `_janus_weights`, RoPE on [q, k, v] at once with cos, sin (R,3,1,hd) (v: cos 1,
    sin 0; rotate_half's sign folded into sin)."""
    (layers, (emb, w1, b1, w2, b2), head, final_norm), cfg, B = weights, model.cfg, tok.shape[0]
    e = F.linear(F.gelu(F.linear(F.embedding(tok, emb), w1, b1)), w2, b2)                     # (B,dim) embed_image
    e = e.to(final_norm.dtype)               # the residual stream's dtype, as janus.sample (bf16 out of autocast)
    h = torch.cat([e] * (caches[0].shape[1] // B))                                   # (R,dim): cond, null rows
    R, H, hd = h.shape[0], cfg.n_head, cfg.head_dim
    for (wq, wk, wv, wo, wg, wu, wd, n1, n2), kv in zip(layers, caches):
        x = janus.rms_norm(h, n1, cfg.norm_eps)
        y = torch.stack([F.linear(x, wq), F.linear(x, wk), F.linear(x, wv)], 1).view(R, 3, H, hd)   # (R,3,H,hd)
        yf = y.float()
        y = (yf * cos + yf.roll(hd // 2, -1) * sin).type_as(y)          # = apply_rope: roll gives [x2, x1]
        kv.index_copy_(3, p, y[:, 1:, :, None].transpose(0, 1))                               # k, v -> index p
        k, v = kv[:, :, :, :n_keys].unbind(0)                                                   # (R,H,n_keys,hd)
        a = F.scaled_dot_product_attention(y[:, :1].transpose(1, 2), k, v, attn_mask=mask)      # (R,H,1,hd)
        h = h + F.linear(a.reshape(R, -1), wo)
        x = janus.rms_norm(h, n2, cfg.norm_eps)
        h = h + F.linear(F.silu(F.linear(x, wg)) * F.linear(x, wu), wd)
    h = janus.rms_norm(h, final_norm, cfg.norm_eps)
    if torch.is_autocast_enabled(h.device.type):      # the head in fp32 outside autocast
        logits = model.logits(h)
    else:                                             # = model.logits(h), no module calls
        logits = F.linear(F.gelu(F.linear(h, head[0], head[1])), head[2], head[3]).float()
    return step_logits(logits, B, *filt)


@functools.cache
def _compiled_janus_step():  # sample_janus(compile=True): one graph per (B, T, N, dtype, filt); the first call compiles
    return torch.compile(_janus_step, dynamic=False, fullgraph=True)


@torch.no_grad()
def sample_janus(model: janus.JanusGen, ids, mask, *, cfg_scale=5.0, temperature=1.0, top_k=0, top_p=1.0,
                 generator: torch.Generator | None = None, compile: bool = False) -> torch.Tensor:
    """= janus.sample (same arguments, same tokens for the same generator state), faster: the prompt is prefilled
    through the modules, then each token goes through `_janus_step`. compile: torch.compile the step (static shapes:
    attends to the whole cache; a new prompt length T or batch recompiles, seconds to a minute)."""
    cfg, B, N = model.cfg, ids.shape[0], model.cfg.image_tokens
    x, m = janus._prepare(model, ids, mask, cfg_scale, temperature, top_k, top_p)              # (R,T)
    (R, T), dev, hd = x.shape, x.device, cfg.head_dim
    L = T + N - 1                                                     # z_{N-1} is never fed back
    pos, am = janus.layout(m, N - 1)
    cos, sin = janus.rope_cos_sin(cfg, pos)
    h = model.language_model.model.embed_tokens(x)                                              # (R,T,dim)
    kv = torch.get_autocast_dtype(dev.type) if torch.is_autocast_enabled(dev.type) else h.dtype   # = k/v's dtype
    caches = [torch.zeros(2, R, cfg.n_head, L, hd, dtype=kv, device=dev) for _ in range(cfg.n_layer)]  # (K, V)
    h = model.trunk(h, (cos[:, :T], sin[:, :T]), am[:, :, :T, :T], [c.unbind(0) for c in caches])[:, -1]  # prefill
    # per step n = 1..N-1, z_{n-1} at sequence index p = T+n-1: RoPE for [q, k, v] (R,3,1,hd), index (1,), keys
    # 0..n_keys-1 (p + 1; all L with compile) and their mask (R,1,1,n_keys)
    c, s = (t[:, T:, None, None].transpose(0, 1) for t in (cos, sin))                          # (N-1,R,1,1,hd)
    s = torch.cat([-s[..., :hd // 2], s[..., hd // 2:]], -1)                    # rotate_half(x) = roll(x) * sign
    c, s = torch.cat([c, c, torch.ones_like(c)], 2).unbind(0), torch.cat([s, s, torch.zeros_like(s)], 2).unbind(0)
    idx, keys = torch.arange(T, L, device=dev)[:, None].unbind(0), [L if compile else p + 1 for p in range(T, L)]
    masks = [am[:, :, p, None, :k] for p, k in zip(range(T, L), keys)]
    step = _compiled_janus_step() if compile else _janus_step
    weights, filt = _janus_weights(model), (cfg_scale, temperature, top_k, top_p)
    logits = step_logits(model.logits(h), B, *filt)                                            # (B,V)
    tokens, peaks = torch.empty(B, N, dtype=torch.long, device=dev), []
    for n in range(N):
        if n > 0:
            logits = step(model, weights, tokens[:, n - 1], c[n - 1], s[n - 1], masks[n - 1], caches, idx[n - 1],
                          keys[n - 1], filt)
        peaks.append(logits.amax(-1))
        tokens[:, n] = draw(logits.softmax(-1), generator)
    check_finite(torch.stack(peaks), "fast_sample.sample_janus")   # one host sync, at the end
    return tokens


if __name__ == "__main__":
    import time
    torch.set_num_threads(1)  # fastest for these tiny matmuls, above all on a busy machine
    gcfg, g = policy.GPT_CONFIGS["tiny"], torch.Generator().manual_seed(0)
    gpt = policy.GPT(gcfg).eval()
    jm = janus.JanusGen(janus.JANUS_CONFIGS["tiny"]).eval()
    with torch.no_grad():  # random weights far from the init (incl. the zero GPT head): distributions not uniform
        [p.normal_(0.0, 0.3, generator=g) for p in gpt.parameters()]
        [p.normal_(1.0 if n.endswith("norm.weight") else 0.0, 0.15, generator=g) for n, p in jm.named_parameters()]
    L = torch.tensor([3, 6] * 4)                                      # B = 8 captions of 3 and 6 valid slots
    cmask = torch.arange(gcfg.cls_token_num)[None] >= (gcfg.cls_token_num - L)[:, None]   # left-aligned: pads first
    cond = torch.randn(8, gcfg.cls_token_num, gcfg.caption_dim, generator=g) * cmask[..., None]
    jc = jm.cfg
    ids = torch.tensor([[jc.pad_id, jc.pad_id, jc.bos_id, 7, 8, jc.boi_id], [jc.bos_id, 3, 4, 5, 6, jc.boi_id]] * 4)
    kw = dict(cfg_scale=4.0, temperature=0.9, top_k=32, top_p=0.95)
    for name, fast, readable, args in (("GPT", sample_gpt, policy.sample, (gpt, cond, cmask)),
                                       ("Janus", sample_janus, janus.sample, (jm, ids, ids != jc.pad_id))):
        out, speed = {}, {}
        for fn in (fast, fast, readable, readable):  # the first call of each warms up
            t0 = time.perf_counter()
            out[fn] = fn(*args, generator=torch.Generator().manual_seed(1), **kw)
            speed[fn] = out[fn].numel() / (time.perf_counter() - t0)
        same = torch.equal(out[fast], out[readable])
        print(f"tiny {name}: {fast.__name__} {speed[fast]:.0f} tokens/s, {readable.__module__}.sample "
              f"{speed[readable]:.0f} tokens/s; the same tokens: {same}")
        assert same
