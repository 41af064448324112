"""The autoregressive policy pi_theta(z | c) of RankE: LlamaGen's GPT t2i, its sampler and log-probs.

Concept (arXiv 2605.21195; docs/method.md §4.2 per-token log-probs, §4.6 rollouts, D10/D11 in §14; §13.6-13.11,
§13.14): a decoder-only transformer reads T caption slots (one T5 feature each, through an MLP), then the image
tokens of a VQ grid in raster order, and predicts z_t at every step: log pi(z | c) = sum_t log pi(z_t | z_<t, c).
Sampling: classifier-free guidance (CFG) against a learnt null caption, top-k / top-p (the step rule: sampling.py), a
static KV cache; `sample_naive` is the slow oracle it is tested against; perf/fast_sample.py draws the same tokens
faster (what train.py uses). Text convention everywhere (docs/method.md D11): caption features left-aligned (pads
first, zeroed); attention causal over [T text slots; N-1 image tokens], text-pad key columns masked, diagonal forced
on.

Run the self-check (CPU, seconds): python policy.py   Tests: pytest -q tests/test_policy.py   Speed: bench/sampler.py
Copy together with ckpt.py (`load_gpt` uses its read_state_dict / load_strict) and sampling.py (the step rule).
Symbols: B prompts (rows), N image tokens (block_size, a g*g grid), T caption slots (cls_token_num), D caption width
(caption_dim), V vocabulary (VQ codebook), H heads, hd head dim, S sequence length, R rows (B, or 2B with CFG).
Follows: FoundationVision/LlamaGen@ce98ec4 autoregressive/models/gpt.py, autoregressive/models/generate.py,
autoregressive/sample/sample_t2i.py. Written from the spec, not copied. Caption features come from
text_encoders.py (FLAN-T5, the toy's word encoder) or janus.py.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ckpt import load_strict, read_state_dict  # checkpoint plumbing (a leaf file, see ckpt.py)
from sampling import check_finite, check_settings, draw, guide, step_logits  # one sampling step (a leaf file)


@dataclass
class GPTConfig:
    vocab_size: int = 16384          # V = VQ codebook size
    dim: int = 1280
    n_layer: int = 36
    n_head: int = 20                 # H; head_dim = dim / n_head = 64
    cls_token_num: int = 120         # T caption slots
    caption_dim: int = 2048          # D (FLAN-T5-XL d_model)
    block_size: int = 256            # N image tokens, a square g*g (256 px -> 16x16); sets no weight shape
    multiple_of: int = 256           # SwiGLU hidden = find_multiple(int(2*4*dim/3), multiple_of)
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    class_dropout_prob: float = 0.1  # caption -> null probability in training (the caller draws drop_caption)
    token_dropout_p: float = 0.1     # dropouts act in train mode only; RankE runs the policy in eval mode
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    grad_ckpt: bool = False          # activation checkpointing whenever grad is enabled (docs/method.md D10)

    def __post_init__(self):
        if math.isqrt(self.block_size) ** 2 != self.block_size or self.dim % self.n_head or self.head_dim % 4:
            raise ValueError(f"need a square block_size (got {self.block_size}) and dim/n_head divisible by 4")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def ffn_hidden(self) -> int:  # find_multiple(int(2*4*dim/3), multiple_of) (gpt.py:151-163): 3584 for XL
        return -(-int(2 * 4 * self.dim / 3) // self.multiple_of) * self.multiple_of


GPT_CONFIGS = {
    "GPT-XL-t2i": GPTConfig(),  # 777,678,080 params; block_size=1024 for the 512 px stage-2 checkpoint
    "tiny": GPTConfig(vocab_size=64, dim=64, n_layer=2, n_head=4, cls_token_num=8, caption_dim=32, block_size=16,
                      multiple_of=32),  # tests
    # toy world (VQ "toy": 256 codes, 8x8 grid): 1.92M params, no dropout; ~0.5 s per B=32 train step on 1 CPU core
    "toy": GPTConfig(vocab_size=256, dim=192, n_layer=4, n_head=6, cls_token_num=16, caption_dim=64, block_size=64,
                     multiple_of=64, token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0),
}


# ---- Building blocks (gpt.py). Attribute names = LlamaGen's state-dict keys (docs/method.md §13.8); keep them. -----
def rope_table(cfg: GPTConfig, device=None) -> torch.Tensor:
    """2-D RoPE (cos, sin) table (T+N, hd/2, 2), fp32, never in the state_dict (docs/method.md §13.7, gpt.py:404-417).
    Pair j < hd/4 of image token n rotates by row(n) * f_j, pair hd/4 + j by col(n) * f_j, f_j = base^(-j/(hd/4)).
    The T text rows are all ZERO (cos = sin = 0, not the identity): q and k of text slots vanish, as upstream."""
    half, g = cfg.head_dim // 2, math.isqrt(cfg.block_size)
    freqs = 1.0 / (cfg.rope_base ** (torch.arange(0, half, 2, device=device)[: half // 2].float() / half))  # (hd/4,)
    ang = torch.arange(g, device=device).float()[:, None] * freqs[None]                  # (g, hd/4): k * f_j
    ang = torch.cat([ang[:, None].expand(g, g, -1), ang[None, :].expand(g, g, -1)], -1)  # (g, g, hd/2): row | col
    img = torch.stack([ang.cos(), ang.sin()], -1).flatten(0, 1)                          # (N, hd/2, 2), raster
    return torch.cat([img.new_zeros(cfg.cls_token_num, half, 2), img])                   # (T+N, hd/2, 2)


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """x (R,S,H,hd), rope (S,hd/2,2): rotate adjacent pairs (2k, 2k+1) (gpt-fast layout, not rotate_half), in fp32."""
    xp = x.float().unflatten(-1, (-1, 2))                                  # (R,S,H,hd/2,2)
    cos, sin = rope[None, :, None, :, 0], rope[None, :, None, :, 1]        # (1,S,1,hd/2)
    out = torch.stack([xp[..., 0] * cos - xp[..., 1] * sin, xp[..., 1] * cos + xp[..., 0] * sin], -1)
    return out.flatten(-2).type_as(x)


def attention_mask(cond_mask: torch.Tensor, S: int) -> torch.Tensor:
    """(R,T) bool -> (R,1,S,S) bool, True = attend (docs/method.md D11; dataset/t2i.py:123-128): causal, key columns of
    text pads masked, diagonal forced on (a pad row attends to itself; no row is fully masked)."""
    R, T = cond_mask.shape
    m = torch.ones(S, S, dtype=torch.bool, device=cond_mask.device).tril().repeat(R, 1, 1)   # (R,S,S)
    m[:, :, :T] &= cond_mask[:, None, :]
    m |= torch.eye(S, dtype=torch.bool, device=cond_mask.device)
    return m[:, None]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x):  # computed in fp32, cast back, then times weight (gpt.py:137-148)
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)  # output rows q | k | v, each head-major
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.resid_dropout = nn.Dropout(cfg.resid_dropout_p)

    def forward(self, x, rope, mask, cache=None, start=0):
        R, S, _ = x.shape
        q, k, v = self.wqkv(x).view(R, S, 3, self.n_head, self.head_dim).unbind(2)   # 3 x (R,S,H,hd)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)           # (R,H,S,hd)
        if cache is not None:  # static KV cache (R,H,L,hd): write positions start..start+S-1, read 0..start+S-1
            cache[0][:, :, start:start + S], cache[1][:, :, start:start + S] = k, v
            k, v = cache[0][:, :, :start + S], cache[1][:, :, :start + S]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)                  # (R,H,S,hd), scale 1/sqrt(hd)
        return self.resid_dropout(self.wo(y.transpose(1, 2).reshape(R, S, -1)))


class FeedForward(nn.Module):  # SwiGLU: w2(silu(w1 x) * w3 x), then dropout (gpt.py:151-167)
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.dim, bias=False)
        self.ffn_dropout = nn.Dropout(cfg.ffn_dropout_p)

    def forward(self, x):
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Block(nn.Module):  # pre-norm (gpt.py:244-257)
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attention, self.feed_forward = Attention(cfg), FeedForward(cfg)
        self.attention_norm, self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps), RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x, rope, mask, cache=None, start=0):
        h = x + self.attention(self.attention_norm(x), rope, mask, cache, start)
        return h + self.feed_forward(self.ffn_norm(h))


class GPT(nn.Module):
    """LlamaGen GPT t2i. Dropouts (train mode only) use torch's global RNG: nn.Dropout takes no generator."""

    def __init__(self, cfg: GPTConfig, *, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.cls_embedding = nn.Module()  # LlamaGen's CaptionEmbedder (gpt.py:107-131), holding only these two:
        self.cls_embedding.cap_proj = nn.Sequential(OrderedDict(  # fc1 -> GELU(tanh) -> fc2, no biases (gpt.py:89)
            fc1=nn.Linear(cfg.caption_dim, cfg.dim, bias=False), act=nn.GELU(approximate="tanh"),
            fc2=nn.Linear(cfg.dim, cfg.dim, bias=False)))
        # the CFG null caption: a persistent, NOT trained buffer (docs/method.md §13.14.2); filled by _init_weights
        self.cls_embedding.register_buffer("uncond_embedding", torch.empty(cfg.cls_token_num, cfg.caption_dim))
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.tok_dropout = nn.Dropout(cfg.token_dropout_p)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)  # not tied to tok_embeddings
        self._init_weights(seed)

    @torch.no_grad()
    def _init_weights(self, seed: int) -> None:
        """Seeded from-scratch init (gpt.py:300-314): Linear/Embedding N(0,.02), output 0, null randn/sqrt(D)."""
        dev = self.output.weight.device
        if dev.type == "meta":  # load_gpt: every entry comes from the checkpoint
            return
        g = torch.Generator(dev).manual_seed(seed)
        self.cls_embedding.uncond_embedding.normal_(0.0, self.cfg.caption_dim ** -0.5, generator=g)  # randn/sqrt(D)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.normal_(0.0, 0.02, generator=g)
        self.output.weight.zero_()

    def embed_text(self, cond, drop_caption=None):  # (R,T,D) -> (R,T,dim)
        u = self.cls_embedding.uncond_embedding                      # (T,D), cast with the model like the weights
        cond = cond.to(u.dtype)
        if drop_caption is not None:  # caption dropout: whole caption -> null, mask kept (docs/method.md §13.7)
            cond = torch.where(drop_caption.to(cond.device)[:, None, None], u, cond)
        return self.cls_embedding.cap_proj(cond)

    def trunk(self, h, rope, mask, caches=None, start=0):  # (R,S,dim) -> (R,S,dim) after the final norm
        for i, layer in enumerate(self.layers):
            if caches is None and self.cfg.grad_ckpt and torch.is_grad_enabled():
                # DEVIATION: checkpoint whenever grad is on, also in eval mode; upstream only in train mode, which
                # the eval-mode RL log-prob pass never reached (docs/method.md D10). No numerical effect.
                h = checkpoint(layer, h, rope, mask, use_reentrant=False)
            else:
                h = layer(h, rope, mask, None if caches is None else caches[i], start)
        return self.norm(h)

    def forward(self, tokens, cond, cond_mask, *, drop_caption=None):
        """Teacher forcing: tokens (R,n) int64 (n <= N), cond (R,T,D), cond_mask (R,T) bool -> logits (R,n,V) fp32;
        logits[:, t] predicts tokens[:, t] from tokens[:, :t] (tokens[:, -1] unused). drop_caption (R,) bool: rows
        whose caption becomes the null one. DEVIATION: drawn by the caller (its generator), not in forward."""
        _check_inputs(self.cfg, cond, cond_mask, tokens)
        T = self.cfg.cls_token_num
        h = self.tok_dropout(torch.cat([self.embed_text(cond, drop_caption), self.tok_embeddings(tokens[:, :-1])], 1))
        S = h.shape[1]                                                                   # T + n - 1
        h = self.trunk(h, rope_table(self.cfg, h.device)[:S], attention_mask(cond_mask.to(h.device), S))
        return self.output(h[:, T - 1:]).float()        # (R,n,V): slot T-1 predicts z_0 (gpt.py:367-371)


def _check_inputs(cfg: GPTConfig, cond, cond_mask, tokens=None):
    T, D, N = cfg.cls_token_num, cfg.caption_dim, cfg.block_size
    if cond.dim() != 3 or tuple(cond.shape[1:]) != (T, D):
        raise ValueError(f"cond must be (B, cls_token_num={T}, caption_dim={D}), got {tuple(cond.shape)}: use a "
                         f"text encoder with max_len={T} and width {D}, or the matching GPTConfig")
    if cond_mask.dtype != torch.bool or cond_mask.shape != cond.shape[:2]:
        raise ValueError(f"cond_mask must be bool {tuple(cond.shape[:2])}, got {cond_mask.dtype} {cond_mask.shape}")
    # docs/method.md D11: text left-aligned, so the last slot is always a real token
    if not cond_mask.is_meta and not bool(cond_mask[:, -1].all()):
        raise ValueError("cond_mask[:, -1] must be True: caption features must be left-aligned (pads first) and "
                         "non-empty; use text_encoders.left_align() / the encoders in text_encoders.py")
    if tokens is not None and (tokens.dtype != torch.long or tokens.shape[:-1] != cond.shape[:1]
                               or not 1 <= tokens.shape[-1] <= N):
        raise ValueError(f"tokens must be int64 (B={cond.shape[0]}, n) with 1 <= n <= N={N}, got {tokens.dtype} "
                         f"{tuple(tokens.shape)}")
    if tokens is not None and not tokens.is_meta and not bool(((tokens >= 0) & (tokens < cfg.vocab_size)).all()):
        raise ValueError(f"tokens must be codebook ids in [0, {cfg.vocab_size}), got [{int(tokens.min())}, "
                         f"{int(tokens.max())}]: tokens of another tokenizer, or not tokens")


# ---- Sampling (generate.py; docs/method.md §13.11) and log-probs (docs/method.md §4.2) ---------------------------
def _prepare(model: GPT, cond, cond_mask, cfg_scale, temperature=1.0, top_k=0, top_p=1.0, sampling=True):
    """Checks + CFG batch [cond; null] (generate.py:135-158): null = uncond_embedding, same mask as its prompt."""
    _check_inputs(model.cfg, cond, cond_mask)
    if sampling and model.training:
        raise RuntimeError("sampling needs model.eval(): in train mode the dropouts would perturb the rollouts")
    check_settings(cfg_scale, temperature, top_k, top_p)
    cond, cond_mask = cond.to(model.output.weight.device), cond_mask.to(model.output.weight.device)
    if cfg_scale == 1.0:
        return cond, cond_mask
    null = model.cls_embedding.uncond_embedding.to(cond.dtype).expand_as(cond)               # (B,T,D)
    return torch.cat([cond, null]), torch.cat([cond_mask, cond_mask])                       # (2B,T,D), (2B,T)


@torch.no_grad()
def sample(model: GPT, cond, cond_mask, *, cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,N) int64 image tokens, raster order (docs/method.md §4.6, §13.11), through the model's own modules: the T
    text slots fill a static KV cache, then each step feeds the previous token at the next position. Per step
    (sampling.py): CFG, temperature, top-k, top-p, a multinomial draw on `generator` (None: torch's default one).
    Same tokens as `sample_naive` for the same generator state in fp32 (under bf16 autocast the cached caption
    stream stays bf16, as in LlamaGen, so near-ties can differ). fast_sample.sample_gpt draws the same tokens as this
    one faster (what train.py uses). Adapted from LlamaGen autoregressive/models/generate.py (:126-176; 77-102)."""
    cfg, B, T, N = model.cfg, cond.shape[0], model.cfg.cls_token_num, model.cfg.block_size
    x, m = _prepare(model, cond, cond_mask, cfg_scale, temperature, top_k, top_p)     # (R,T,D), (R,T): [cond; null]
    R, S = x.shape[0], T + N - 1                                                      # z_{N-1} is never fed back
    rope, mask = rope_table(cfg, x.device)[:S], attention_mask(m, S)                 # (S,hd/2,2), (R,1,S,S)
    h = model.embed_text(x)                                       # (R,T,dim), step 0's input; its dtype = k/v's
    caches = [(h.new_zeros(R, cfg.n_head, S, cfg.head_dim), h.new_zeros(R, cfg.n_head, S, cfg.head_dim))
              for _ in model.layers]                                                  # per layer: static K, V
    tokens, start = torch.empty(B, N, dtype=torch.long, device=x.device), 0
    for n in range(N):
        if n > 0:  # feed z_{n-1} at position T+n-1, the same token to its cond and null rows
            h = model.tok_embeddings(tokens[:, n - 1:n].repeat(R // B, 1))             # (R,1,dim)
        end = start + h.shape[1]                  # positions start..end-1 written to the caches, 0..end-1 attended
        h = model.trunk(h, rope[start:end], mask[:, :, start:end, :end], caches, start)
        logits = step_logits(model.output(h[:, -1]).float(), B, cfg_scale, temperature, top_k, top_p)  # (B,V) z_n
        check_finite(logits, "policy.sample")
        tokens[:, n], start = draw(logits.softmax(-1), generator), end
    return tokens


@torch.no_grad()
def sample_naive(model: GPT, cond, cond_mask, *, cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Oracle for `sample`: same math, same random draws, but the full forward recomputed every step (no cache)."""
    B, N = cond.shape[0], model.cfg.block_size
    x, m = _prepare(model, cond, cond_mask, cfg_scale, temperature, top_k, top_p)
    tokens = torch.zeros(B, N, dtype=torch.long, device=x.device)
    for n in range(N):  # tokens[:, n] is the unused last input of the forward
        logits = model(tokens[:, :n + 1].repeat(x.shape[0] // B, 1), x, m)[:, -1]     # (R,V): predicts z_n
        probs = step_logits(logits, B, cfg_scale, temperature, top_k, top_p).softmax(-1)
        tokens[:, n] = torch.multinomial(probs, 1, generator=generator)[:, 0]
    return tokens


def token_logprobs(model: GPT, cond, cond_mask, tokens, *, cfg_scale=1.0) -> torch.Tensor:
    """(B,N) differentiable log pi(z_t | z_<t, c), one teacher-forced forward (docs/method.md §4.2). Runs in the model's
    current mode (RankE: eval). cfg_scale == 1: conditional branch only, as released; otherwise log-softmax of the
    CFG-combined logits (docs/method.md §4.5, `--logp_cfg guided`), cond and null halves in one batched forward.
    Equals the sampler's per-step log-distribution at temperature 1 without top-k / top-p."""
    # DEVIATION(RankE@2798acc): same left-aligned text and causal text mask as the sampler (docs/method.md D11), not the
    # released right-padded, bidirectional-text log-prob pass.
    if tokens.dim() != 2 or tokens.shape[0] != cond.shape[0]:  # here, before the CFG batch doubles B (rest: forward)
        raise ValueError(f"tokens must be (B={cond.shape[0]}, n), one row per caption, got {tuple(tokens.shape)}")
    B, (x, m) = cond.shape[0], _prepare(model, cond, cond_mask, cfg_scale, sampling=False)
    tokens = tokens.to(x.device)                                                      # (B,N)
    logits = guide(model(tokens.repeat(x.shape[0] // B, 1), x, m), B, cfg_scale)      # (B,N,V) u + s (c - u)
    return logits.gather(-1, tokens[..., None])[..., 0] - logits.logsumexp(-1)        # log-softmax at z_t


def load_gpt(path_or_hub: str, cfg: GPTConfig, *, map_location="cpu") -> GPT:
    """Strictly load a LlamaGen GPT checkpoint (local path or hf://, e.g. hf://peizesun/llamagen_t2i/
    t2i_XL_stage1_256.pt with GPT_CONFIGS["GPT-XL-t2i"]) -> fp32 model in eval mode on map_location."""
    sd = read_state_dict(path_or_hub, map_location=map_location)
    with torch.device("meta"):
        model = GPT(cfg)
    model = model.to_empty(device=map_location)  # every entry is overwritten by the strict load below
    load_strict(model, sd, source=path_or_hub)
    return model.eval()


if __name__ == "__main__":
    import time
    torch.set_num_threads(1)  # fastest for these tiny matmuls, above all on a busy machine
    cfg = GPT_CONFIGS["tiny"]
    model, g = GPT(cfg).eval(), torch.Generator().manual_seed(0)
    with torch.no_grad():  # random weights incl. the (zero-initialised) head, so the distributions are not uniform
        [p.normal_(0.0, 0.3, generator=g) for p in model.parameters()]
    L = torch.tensor([3, 6] * 4)                                     # B = 8 captions of 3 and 6 valid slots
    mask = torch.arange(cfg.cls_token_num)[None] >= (cfg.cls_token_num - L)[:, None]   # (B,T) left-aligned: pads first
    cond = torch.randn(8, cfg.cls_token_num, cfg.caption_dim, generator=g) * mask[..., None]   # (B,T,D), pads zeroed
    out = {}                                   # the first call warms up
    for fn in (sample, sample, sample_naive):
        t0 = time.perf_counter()
        out[fn.__name__] = fn(model, cond, mask, cfg_scale=4.0, temperature=0.9, top_k=32, top_p=0.95,
                              generator=torch.Generator().manual_seed(1))
        print(f"{fn.__name__:13s} {cond.shape[0] * cfg.block_size / (time.perf_counter() - t0):8.0f} tokens/s")
    same = torch.equal(out["sample"], out["sample_naive"])
    lp = token_logprobs(model, cond, mask, out["sample"]).mean().item()
    print(f"tiny GPT ({sum(p.numel() for p in model.parameters()):,} params), tokens {tuple(out['sample'].shape)}: "
          f"sample == sample_naive: {same}; mean log pi(z_t|z_<t,c) = {lp:.4f} (uniform {-math.log(64):.4f})")
    assert same
