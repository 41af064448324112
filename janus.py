"""Janus-Pro-1B's image-generation path as the RankE policy pi_theta(z | c): Llama trunk, gen modules, sampler.

Concept (arXiv 2605.21195 post-trains Janus-Pro-1B beside LlamaGen; docs/method.md §17 this backbone, §4.2
log-probs, §4.5 CFG in the log-probs, §4.6 rollouts, D10, D12): a decoder-only Llama (Hugging Face naming) reads
the chat prompt BOS + "<|User|>: {caption}\\n\\n<|Assistant|>:" + <begin_of_image> (text_encoders.JanusTextEncoder)
as text tokens, then the N image tokens of a VQ grid in raster order. Each image token is fed back through its own
table `gen_embed` (not the VQ codebook) and the MLP `gen_aligner`; the MLP `gen_head` maps a hidden state to
image-token logits (the text lm_head is never used).
Classifier-free guidance (CFG) contrasts each prompt with its "null prompt": the same row with every caption token
replaced by pad, pads attended. The tokens decode with vq.py's VQModel (Janus's gen_vision_model has its keys).
Conventions (syjmelody/RankE@2798acc janus/post_train/trainer.py): prompts left-padded with a mask; position =
cumsum(mask) - 1 (pads: 1); logits, CFG and log-softmax in fp32 (there: bf16 head logits).
`forward`: teacher-forced logits (policy.py's convention); `sample` (static KV cache) equals `sample_naive` token for
token in fp32 and the trunk transformers' Janus (tests/test_janus.py); perf/fast_sample.py draws the same tokens faster.

Run the self-check (CPU, seconds): python janus.py    Tests: pytest -q tests/test_janus.py    Speed: bench/janus.py
Copy together with vq.py (the tokenizer), ckpt.py (weight reading) and sampling.py (the step rule).
Symbols: B prompts, R rows (B, or 2B with CFG: [cond; null]), T prompt length (left-padded token ids), N image
tokens (a g*g grid), S = T + N - 1 sequence length, V image vocabulary (VQ codebook), H heads, hd head dim.
Follows: deepseek-ai/Janus@1daa72f janus/models/modeling_vlm.py (module names), generation_inference.py;
syjmelody/RankE@2798acc janus/post_train/trainer.py (prompt batching, positions, rollouts, log-probs); transformers
v5.24.0 models/llama/modeling_llama.py (numerics), models/janus/modeling_janus.py (HF layout). Written from them.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ckpt import load_strict, read_state_dict, resolve  # checkpoint plumbing (a leaf file, see ckpt.py)
from sampling import check_finite, check_settings, draw, guide, step_logits  # one sampling step (a leaf file)
from vq import CODEBOOK_USED_LEN, VQ_CONFIGS, VQConfig, VQModel  # gen_vision_model = LlamaGen VQ-16 (same keys)

# A 32-px tokenizer for the tiny config: 4x4 grid x 2^3 = 32 px. 32 GroupNorm groups as in transformers' JanusVQVAE,
# so the HF parity tests can decode with it too (vq.py's "tiny" decodes 8 px).
JANUS_VQ_CONFIGS = {"janus_tiny": VQConfig(codebook_size=64, codebook_embed_dim=8, ch=32, ch_mult=(1, 2, 2, 2),
                                           num_res_blocks=1, z_channels=32, norm_groups=32)}


@dataclass
class JanusGenConfig:  # Janus-Pro-1B language_config + gen_* configs (deepseek-ai/Janus-Pro-1B config.json)
    vocab_size: int = 102400         # text vocabulary (embed_tokens rows)
    dim: int = 2048
    n_layer: int = 24
    n_head: int = 16                 # H; hd = dim / n_head = 128 (no grouped k/v heads)
    ffn_hidden: int = 5632           # SwiGLU width (intermediate_size)
    norm_eps: float = 1e-6
    rope_base: float = 10000.0
    image_vocab: int = 16384         # V = VQ codebook size
    gen_embed_dim: int = 8           # gen_embed width (a separate learned table, not the L2-normalised codebook)
    image_tokens: int = 576          # N = 24 x 24 (384 px, downsample 16)
    max_positions: int = 16384       # max_position_embeddings; sets no weight shape (RoPE is computed on the fly)
    bos_id: int = 100000             # <｜begin▁of▁sentence｜>
    pad_id: int = 100002             # <｜▁pad▁｜> (7B: 100015)
    boi_id: int = 100003             # <begin_of_image>: expected; text_encoders.JanusTextEncoder checks the tokenizer
    vq: str = "vq16"                 # key of vq.VQ_CONFIGS (or JANUS_VQ_CONFIGS) of its tokenizer
    grad_ckpt: bool = False          # activation checkpointing whenever grad is enabled (docs/method.md D10)

    def __post_init__(self):
        if math.isqrt(self.image_tokens) ** 2 != self.image_tokens or self.dim % self.n_head or self.head_dim % 2:
            raise ValueError(f"need a square image_tokens (got {self.image_tokens}) and an even dim / n_head")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head


JANUS_CONFIGS = {
    "janus_pro_1b": JanusGenConfig(),  # 1,485,053,952 params + VQ-16 71,883,403 (tests/test_janus.py)
    "tiny": JanusGenConfig(vocab_size=256, dim=64, n_layer=2, n_head=4, ffn_hidden=128, image_vocab=64,
                           image_tokens=16, max_positions=128, bos_id=250, pad_id=252, boi_id=253, vq="janus_tiny"),
}


def janus_vq_config(cfg: JanusGenConfig) -> VQConfig:
    """The VQConfig of cfg's tokenizer; its codebook must be the image vocabulary."""
    vc = VQ_CONFIGS.get(cfg.vq) or JANUS_VQ_CONFIGS.get(cfg.vq)
    if vc is None or vc.codebook_size != cfg.image_vocab:
        raise ValueError(f"JanusGenConfig.vq={cfg.vq!r}: need a key of vq.VQ_CONFIGS or JANUS_VQ_CONFIGS whose "
                         f"codebook_size equals image_vocab={cfg.image_vocab}")
    return vc


# ---- Building blocks. Attribute names = the original checkpoint's keys (HF Llama under language_model.model.) -----
def rope_cos_sin(cfg: JanusGenConfig, pos: torch.Tensor):
    """Positions (R,S) -> (cos, sin), each (R,S,hd) fp32, rotate_half layout (HF Llama): frequency j of
    base^(-2j/hd) appears at channels j and j + hd/2. Never in the state_dict."""
    hd = cfg.head_dim
    inv = 1.0 / cfg.rope_base ** (torch.arange(0, hd, 2, device=pos.device).float() / hd)      # (hd/2,)
    ang = pos[..., None].float() * inv                                                          # (R,S,hd/2)
    ang = torch.cat([ang, ang], -1)
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (R,H,S,hd): x cos + rotate_half(x) sin, rotate_half(x) = [-x2, x1] (halves), in fp32, cast back."""
    xf, c, s = x.float(), cos[:, None], sin[:, None]
    x1, x2 = xf.chunk(2, -1)
    return (xf * c + torch.cat([-x2, x1], -1) * s).type_as(x)


def layout(mask: torch.Tensor, n: int):
    """Prompt mask (R,T) bool + n image tokens -> positions (R,S) and attention mask (R,1,S,S), S = T+n, True =
    attend: causal, prompt pads masked as keys, diagonal forced on (a pad row sees itself, no row is empty).
    Positions = cumsum(valid) - 1, pads 1 (trainer.py:457-458; docs/method.md §17.2): extra left padding changes
    nothing (transformers' Janus generate uses arange positions: a constant shift per row, the same up to rounding)."""
    valid = torch.cat([mask, mask.new_ones(mask.shape[0], n)], 1)                               # (R,S)
    pos = (valid.long().cumsum(1) - 1).masked_fill(~valid, 1)
    S = valid.shape[1]
    causal = torch.ones(S, S, dtype=torch.bool, device=mask.device).tril()
    return pos, ((causal[None] & valid[:, None, :]) | torch.eye(S, dtype=torch.bool, device=mask.device))[:, None]


def rms_norm(x, weight, eps: float):  # HF LlamaRMSNorm: variance in fp32, cast back, then times weight
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


class SelfAttention(nn.Module):
    def __init__(self, cfg: JanusGenConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(cfg.dim, cfg.dim, bias=False) for _ in range(4))

    def forward(self, x, rope, mask, cache=None, start=0):
        R, S, _ = x.shape
        q, k, v = (p(x).view(R, S, self.n_head, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))                            # (R,H,S,hd)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:  # static KV cache (R,H,L,hd): write positions start..start+S-1, read 0..start+S-1
            cache[0][:, :, start:start + S], cache[1][:, :, start:start + S] = k, v
            k, v = cache[0][:, :, :start + S], cache[1][:, :, :start + S]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)                             # scale 1/sqrt(hd)
        return self.o_proj(y.transpose(1, 2).reshape(R, S, -1))


class MLP(nn.Module):  # SwiGLU: down(silu(gate x) * up x)
    def __init__(self, cfg: JanusGenConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden, cfg.dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):  # pre-norm Llama block
    def __init__(self, cfg: JanusGenConfig):
        super().__init__()
        self.self_attn, self.mlp = SelfAttention(cfg), MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x, rope, mask, cache=None, start=0):
        h = x + self.self_attn(self.input_layernorm(x), rope, mask, cache, start)
        return h + self.mlp(self.post_attention_layernorm(h))


class VisionHead(nn.Module):  # gen_head (modeling_vlm.py:36-51): Linear(dim, dim), GELU (erf), Linear(dim, V)
    def __init__(self, cfg: JanusGenConfig):
        super().__init__()
        self.output_mlp_projector = nn.Linear(cfg.dim, cfg.dim)
        self.vision_activation = nn.GELU()
        self.vision_head = nn.Linear(cfg.dim, cfg.image_vocab)

    def forward(self, x):
        return self.vision_head(self.vision_activation(self.output_mlp_projector(x)))


class JanusGen(nn.Module):
    """The generation path of Janus-Pro's MultiModalityCausalLM (modeling_vlm.py:190-219), without the understanding
    side (vision_model, aligner), the text lm_head and the VQ (gen_vision_model: a separate vq.VQModel). No dropout."""

    def __init__(self, cfg: JanusGenConfig, *, seed: int = 0):
        super().__init__()
        self.cfg = replace(cfg)  # own copy: build_backbone sets .cfg.grad_ckpt on the model, not on JANUS_CONFIGS
        self.gen_aligner = nn.Module()  # MlpProjector (projector.py:39-45): Linear(8, dim), GELU, Linear(dim, dim)
        self.gen_aligner.layers = nn.Sequential(nn.Linear(cfg.gen_embed_dim, cfg.dim), nn.GELU(),
                                                nn.Linear(cfg.dim, cfg.dim))
        self.gen_head = VisionHead(cfg)
        self.gen_embed = nn.Embedding(cfg.image_vocab, cfg.gen_embed_dim)
        self.language_model = nn.Module()  # HF LlamaForCausalLM; only its LlamaModel `model` (no lm_head) is used
        self.language_model.model = body = nn.Module()
        body.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        body.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layer))
        body.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self._init_weights(seed)

    @torch.no_grad()
    def _init_weights(self, seed: int) -> None:  # seeded N(0, 0.02) (HF initializer_range), biases 0, norms 1
        if self.gen_embed.weight.is_meta:  # load_janus: every entry comes from the checkpoint
            return
        g = torch.Generator().manual_seed(seed)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.copy_(torch.empty(m.weight.shape).normal_(0.0, 0.02, generator=g))
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()

    def embed_image(self, tokens):  # (R,n) image ids -> (R,n,dim): gen_aligner(gen_embed(z)) (modeling_vlm.py:262-263)
        return self.gen_aligner.layers(self.gen_embed(tokens))

    def logits(self, h):  # (...,dim) -> (...,V) fp32: gen_head outside autocast
        # DEVIATION(RankE@2798acc): there the bf16 head's logits (ulp 1/16-1/8 at |logit| 8-32) enter CFG x5 as bf16.
        w = self.gen_head.vision_head.weight
        if h.is_meta or not torch.is_autocast_enabled(h.device.type):  # meta: synthetic.dry_run; no autocast to leave
            return self.gen_head(h.to(w.dtype)).float()
        with torch.autocast(h.device.type, enabled=False):
            return self.gen_head(h.to(w.dtype)).float()

    def trunk(self, h, rope, mask, caches=None, start=0):  # (R,S,dim) -> (R,S,dim) after the final norm
        for i, layer in enumerate(self.language_model.model.layers):
            if caches is None and self.cfg.grad_ckpt and torch.is_grad_enabled():
                # DEVIATION: checkpoint whenever grad is on, also in eval mode; the released trainer's HF
                # checkpointing was off in its eval-mode log-prob pass (docs/method.md D10). No numerical effect.
                h = checkpoint(layer, h, rope, mask, use_reentrant=False)
            else:
                h = layer(h, rope, mask, None if caches is None else caches[i], start)
        return self.language_model.model.norm(h)

    def forward(self, tokens, ids, mask):
        """Teacher forcing: tokens (R,n) int64 (n <= N), prompt ids (R,T) int64 left-padded, mask (R,T) bool ->
        logits (R,n,V) fp32; logits[:, t] predicts tokens[:, t] from the prompt and tokens[:, :t] (tokens[:, -1]
        unused), as policy.GPT.forward. The trainer's log-prob pass (trainer.py:359-431), head on the last n only."""
        _check_inputs(self.cfg, ids, mask, tokens)
        T, emb = ids.shape[1], self.language_model.model.embed_tokens(ids)
        h = torch.cat([emb, self.embed_image(tokens[:, :-1]).to(emb.dtype)], 1)                # (R,S,dim)
        pos, am = layout(mask, tokens.shape[1] - 1)
        h = self.trunk(h, rope_cos_sin(self.cfg, pos), am)
        return self.logits(h[:, T - 1:])                  # (R,n,V): position T-1 (<begin_of_image>) predicts z_0


def _check_inputs(cfg: JanusGenConfig, ids, mask, tokens=None):
    if ids.dtype != torch.long or ids.dim() != 2 or mask.dtype != torch.bool or mask.shape != ids.shape:
        raise ValueError(f"need ids int64 (B,T) and mask bool (B,T), got {ids.dtype} {tuple(ids.shape)} / "
                         f"{mask.dtype} {tuple(mask.shape)}: use text_encoders.JanusTextEncoder")
    if ids.shape[1] + cfg.image_tokens > cfg.max_positions:
        raise ValueError(f"prompt length {ids.shape[1]} + N={cfg.image_tokens} exceeds max_positions "
                         f"{cfg.max_positions}")
    if not ids.is_meta:
        first = ids.gather(1, mask.long().argmax(1, keepdim=True))[:, 0]                       # at the first valid
        if not (mask[:, -1].all() and (ids[:, -1] == cfg.boi_id).all() and (first == cfg.bos_id).all()):
            raise ValueError(f"prompts must be left-padded, start with BOS {cfg.bos_id} and end with "
                             f"<begin_of_image> {cfg.boi_id} (mask[:, -1] True); use text_encoders.JanusTextEncoder")
    if tokens is not None and (tokens.dtype != torch.long or tokens.shape[:-1] != ids.shape[:1]
                               or not 1 <= tokens.shape[-1] <= cfg.image_tokens):
        raise ValueError(f"tokens must be int64 (B={ids.shape[0]}, n) with 1 <= n <= N={cfg.image_tokens}, got "
                         f"{tokens.dtype} {tuple(tokens.shape)}")
    if tokens is not None and not tokens.is_meta and not bool(((tokens >= 0) & (tokens < cfg.image_vocab)).all()):
        raise ValueError(f"tokens must be codebook ids in [0, {cfg.image_vocab}), got [{int(tokens.min())}, "
                         f"{int(tokens.max())}]: tokens of another tokenizer, or not tokens")


def null_prompt(ids, mask, cfg: JanusGenConfig):
    """The unconditional rows (docs/method.md §17.2; trainer.py:463-475; HF modeling_janus.py generate): a copy in
    which every position strictly between the row's BOS (its first valid token) and the final <begin_of_image>
    becomes pad. Returns (null ids (B,T), mask): the mask is unchanged, so those pads are attended (and keep their
    positions)."""
    T, first = ids.shape[1], mask.long().argmax(1, keepdim=True)                                # (B,1) BOS index
    ar = torch.arange(T, device=ids.device)[None]
    return ids.masked_fill((ar > first) & (ar < T - 1), cfg.pad_id), mask


# ---- Sampling and log-probs (docs/method.md §17.3, §4.2, §4.5, §4.6; trainer.py:359-431, 479-516) -------------
def _prepare(model: JanusGen, ids, mask, cfg_scale, temperature=1.0, top_k=0, top_p=1.0):
    """Checks + the CFG batch. DEVIATION(RankE@2798acc): rows [cond; null] halves (as transformers' Janus generate),
    not interleaved (trainer.py:468-469); rows never interact, so the tokens are the same."""
    _check_inputs(model.cfg, ids, mask)
    check_settings(cfg_scale, temperature, top_k, top_p)
    dev = model.gen_embed.weight.device
    ids, mask = ids.to(dev), mask.to(dev)
    if cfg_scale == 1.0:
        return ids, mask
    return torch.cat([ids, null_prompt(ids, mask, model.cfg)[0]]), torch.cat([mask, mask])     # (2B,T)


@torch.no_grad()
def sample(model: JanusGen, ids, mask, *, cfg_scale=5.0, temperature=1.0, top_k=0, top_p=1.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,N) int64 image tokens, raster order, through the model's own modules: the prompt fills a static KV cache,
    then each step feeds gen_aligner(gen_embed(z_{n-1})) at the next position. Per step (sampling.py, logits in
    fp32): CFG, temperature, top-k, top-p, a multinomial draw on `generator` (None: torch's default one;
    DEVIATION(RankE@2798acc): released drew from the global RNG). Same tokens as `sample_naive` for the same
    generator state in fp32 (under bf16 autocast, rounding can break near-ties); fast_sample.sample_janus draws the
    same tokens as this one faster (what train.py uses). Released (trainer.py:479-516): a DynamicCache and one wasted
    forward on z_{N-1}; same tokens."""
    cfg, B, N = model.cfg, ids.shape[0], model.cfg.image_tokens
    x, m = _prepare(model, ids, mask, cfg_scale, temperature, top_k, top_p)                    # (R,T): [cond; null]
    (R, T), dev = x.shape, x.device
    S = T + N - 1                                                     # z_{N-1} is never fed back
    pos, am = layout(m, N - 1)                                                                  # (R,S), (R,1,S,S)
    cos, sin = rope_cos_sin(cfg, pos)                                                           # (R,S,hd) each
    h = model.language_model.model.embed_tokens(x)                                   # (R,T,dim): step 0's input
    kv = torch.get_autocast_dtype(dev.type) if torch.is_autocast_enabled(dev.type) else h.dtype   # k/v's dtype
    caches = [tuple(torch.zeros(R, cfg.n_head, S, cfg.head_dim, dtype=kv, device=dev) for _ in range(2))
              for _ in range(cfg.n_layer)]                                            # per layer: static K, V
    tokens, start, emb_dtype = torch.empty(B, N, dtype=torch.long, device=dev), 0, h.dtype
    for n in range(N):
        if n > 0:  # feed z_{n-1} at position T+n-1, the same token to its cond and null rows (dtype as in forward)
            h = model.embed_image(tokens[:, n - 1:n].repeat(R // B, 1)).to(emb_dtype)          # (R,1,dim)
        end = start + h.shape[1]                  # positions start..end-1 written to the caches, 0..end-1 attended
        h = model.trunk(h, (cos[:, start:end], sin[:, start:end]), am[:, :, start:end, :end], caches, start)
        logits = step_logits(model.logits(h[:, -1]), B, cfg_scale, temperature, top_k, top_p)   # (B,V) fp32: z_n
        check_finite(logits, "janus.sample")
        tokens[:, n], start = draw(logits.softmax(-1), generator), end
    return tokens


@torch.no_grad()
def sample_naive(model: JanusGen, ids, mask, *, cfg_scale=5.0, temperature=1.0, top_k=0, top_p=1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Oracle for `sample`: same math, same random draws, the full teacher-forced forward recomputed every step."""
    B, N = ids.shape[0], model.cfg.image_tokens
    x, m = _prepare(model, ids, mask, cfg_scale, temperature, top_k, top_p)
    tokens = torch.zeros(B, N, dtype=torch.long, device=x.device)
    for n in range(N):  # tokens[:, n] is the unused last input of the forward
        logits = model(tokens[:, :n + 1].repeat(x.shape[0] // B, 1), x, m)[:, -1]             # (R,V)
        probs = step_logits(logits, B, cfg_scale, temperature, top_k, top_p).softmax(-1)
        tokens[:, n] = torch.multinomial(probs, 1, generator=generator)[:, 0]
    return tokens


def token_logprobs(model: JanusGen, ids, mask, tokens, *, cfg_scale=1.0) -> torch.Tensor:
    """(B,N) differentiable log pi(z_t | z_<t, c), one teacher-forced forward, log-softmax in fp32. cfg_scale == 1:
    conditional rows only, as released (trainer.py:359-431); otherwise the CFG-combined logits (docs/method.md §4.5,
    `--logp_cfg guided`), cond and null halves in one batch."""
    if tokens.dim() != 2 or tokens.shape[0] != ids.shape[0]:   # here, before the CFG batch doubles B (rest: forward)
        raise ValueError(f"tokens must be (B={ids.shape[0]}, n), one row per prompt, got {tuple(tokens.shape)}")
    B, (x, m) = ids.shape[0], _prepare(model, ids, mask, cfg_scale)
    tokens = tokens.to(x.device)
    logits = guide(model(tokens.repeat(x.shape[0] // B, 1), x, m), B, cfg_scale)                # (B,N,V)
    return logits.gather(-1, tokens[..., None])[..., 0] - logits.logsumexp(-1)


# ---- Loading (docs/method.md §17.1): original layout (deepseek-ai/Janus-Pro-1B pytorch_model.bin) or HF-converted --
GEN_PREFIXES = ("language_model.model.", "gen_embed.", "gen_aligner.", "gen_head.")
VQ_PREFIX = "gen_vision_model."
DROPPED = ("vision_model.", "aligner.", "language_model.lm_head.")   # understanding side + text head: unused here
# HF layout (deepseek-community/Janus-Pro-1B; transformers models/janus convert_janus_weights_to_hf.py and
# modeling_janus.py module names) -> original names; applied in order, each at most once per key.
HF_TO_ORIGINAL = [
    (r"^model\.language_model\.", "language_model.model."), (r"^lm_head\.", "language_model.lm_head."),
    (r"^model\.vision_model\.", "vision_model."), (r"^model\.aligner\.", "aligner."),
    (r"^model\.generation_embeddings\.", "gen_embed."),
    (r"^model\.generation_aligner\.fc1\.", "gen_aligner.layers.0."),
    (r"^model\.generation_aligner\.hidden_layers\.0\.", "gen_aligner.layers.2."),
    (r"^model\.generation_head\.proj_out\.", "gen_head.output_mlp_projector."),
    (r"^model\.generation_head\.vision_head\.", "gen_head.vision_head."),
    (r"^model\.vqmodel\.", "gen_vision_model."),
    (r"^(gen_vision_model\.(?:en|de)coder)\.(?:down|up)\.(\d+)\.block\.", r"\1.conv_blocks.\2.res."),
    (r"^(gen_vision_model\.(?:en|de)coder)\.(?:down|up)\.(\d+)\.", r"\1.conv_blocks.\2."),  # attn, down/upsample
    (r"^(gen_vision_model\.(?:en|de)coder\.mid)\.block_1\.", r"\1.0."),
    (r"^(gen_vision_model\.(?:en|de)coder\.mid)\.attn_1\.", r"\1.1."),
    (r"^(gen_vision_model\.(?:en|de)coder\.mid)\.block_2\.", r"\1.2."),
]


def hf_to_original(key: str) -> str:
    for pat, rep in HF_TO_ORIGINAL:
        key = re.sub(pat, rep, key)
    return key


def read_any(path_or_hub: str) -> dict:
    """{key: tensor} from a torch file (ckpt.read_state_dict) or one .safetensors file (the HF-converted layout),
    local or hf://owner/repo/file. Missing or unreadable: an error naming the file."""
    if not path_or_hub.endswith(".safetensors"):
        return read_state_dict(path_or_hub, flag="--janus_ckpt")
    from safetensors.torch import load_file  # installed with transformers; only for the HF-converted layout
    path = resolve(path_or_hub, flag="--janus_ckpt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path!r} (check the path, or download the file there)")
    try:
        return load_file(path)
    except Exception as e:  # noqa: BLE001 -- corrupt header, truncated file
        raise RuntimeError(f"{path}: cannot be read as safetensors: file is corrupt or truncated; re-download it "
                           f"({type(e).__name__}: {e})") from e


def load_janus(path_or_hub: str, cfg: JanusGenConfig, *, map_location="cpu"):
    """Strictly load Janus-Pro weights (e.g. hf://deepseek-ai/Janus-Pro-1B/pytorch_model.bin with
    JANUS_CONFIGS["janus_pro_1b"]) -> (JanusGen, vq.VQModel), fp32, eval mode. Keys are routed by prefix; the
    understanding side and the text head (DROPPED) are dropped and counted in model.load_report; any other key,
    and any missing / extra / misshapen entry, raises naming the key and the file. The HF-converted layout is
    renamed by HF_TO_ORIGINAL; it lacks quantize.codebook_used, filled with VQModel's default (zeros, never read)."""
    sd = read_any(path_or_hub)
    hf = any(k.startswith("model.") for k in sd)
    gen_sd, vq_sd, dropped = {}, {}, dict.fromkeys(DROPPED, 0)
    for key, v in sd.items():
        k = hf_to_original(key) if hf else key
        if k.startswith(DROPPED):
            dropped[next(p for p in DROPPED if k.startswith(p))] += 1
        elif k.startswith(VQ_PREFIX):
            vq_sd[k[len(VQ_PREFIX):]] = v
        elif k.startswith(GEN_PREFIXES):
            gen_sd[k] = v
        else:
            raise RuntimeError(f"{path_or_hub}: unexpected key {key!r} (expected the prefixes "
                               f"{GEN_PREFIXES + (VQ_PREFIX,)} or the dropped {DROPPED}; a Janus-Pro checkpoint?)")
    filled = []
    if hf and "quantize.codebook_used" not in vq_sd:  # dropped by the HF conversion; VQModel's default buffer
        vq_sd["quantize.codebook_used"], filled = torch.zeros(CODEBOOK_USED_LEN), ["quantize.codebook_used"]
    with torch.device("meta"):
        model, vqm = JanusGen(cfg), VQModel(janus_vq_config(cfg))
    model, vqm = model.to_empty(device=map_location), vqm.to_empty(device=map_location)  # all overwritten below
    src = f"{path_or_hub} (HF layout; names after HF_TO_ORIGINAL)" if hf else path_or_hub
    load_strict(model, gen_sd, source=src)
    load_strict(vqm, vq_sd, source=f"{src} ({VQ_PREFIX}*)")
    model.load_report = {"layout": "hf" if hf else "original", "dropped": dropped, "filled": filled}
    print(f"[load_janus] {path_or_hub}: {model.load_report['layout']} layout, {len(gen_sd)} + {len(vq_sd)} entries "
          f"loaded; dropped (unused for images) {dropped}; filled {filled or 'nothing'}", flush=True)
    return model.float().eval(), vqm.float().eval()


if __name__ == "__main__":
    import time
    torch.set_num_threads(1)
    with torch.device("meta"):  # shapes only
        n1b = sum(p.numel() for p in JanusGen(JANUS_CONFIGS["janus_pro_1b"]).parameters())
        nvq = sum(p.numel() for p in VQModel(VQ_CONFIGS["vq16"]).parameters())
    print(f"Janus-Pro-1B generation path: {n1b:,} params + VQ-16 {nvq:,} = {n1b + nvq:,} (expected 1,556,937,355)")
    cfg = JANUS_CONFIGS["tiny"]
    model, g = JanusGen(cfg).eval(), torch.Generator().manual_seed(0)
    with torch.no_grad():  # larger random weights than the init (norms 1 + noise): distributions far from uniform
        for name, p in model.named_parameters():
            p.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.15, generator=g)
    c = {"bos": cfg.bos_id, "boi": cfg.boi_id, "pad": cfg.pad_id}
    ids = torch.tensor([[c["pad"], c["pad"], c["bos"], 7, 8, c["boi"]], [c["bos"], 3, 4, 5, 6, c["boi"]]] * 4)
    mask = ids != c["pad"]                                                                 # B = 8, left-padded
    out = {}
    for fn in (sample, sample, sample_naive):  # the first call warms up
        t0 = time.perf_counter()
        out[fn.__name__] = fn(model, ids, mask, cfg_scale=4.0, temperature=0.9, top_k=32, top_p=0.95,
                              generator=torch.Generator().manual_seed(1))
        print(f"{fn.__name__:13s} {ids.shape[0] * cfg.image_tokens / (time.perf_counter() - t0):8.0f} tokens/s")
    same = torch.equal(out["sample"], out["sample_naive"])
    lp = token_logprobs(model, ids, mask, out["sample"], cfg_scale=4.0)
    print(f"tiny JanusGen ({sum(p.numel() for p in model.parameters()):,} params): sample == sample_naive: {same}; "
          f"mean guided log pi of the samples {lp.mean():.3f} (uniform {-math.log(cfg.image_vocab):.3f})")
    assert same
