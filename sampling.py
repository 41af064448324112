"""One sampling step of an autoregressive image-token policy: classifier-free guidance (CFG), temperature, top-k /
top-p filtering and the categorical draw from a torch.Generator. Shared by both backbones' samplers (policy.py,
janus.py) and by their fast decode paths (perf/fast_sample.py). A leaf: imports torch only, so any file may import it.

Concept (arXiv 2605.21195 samples its rollouts with CFG; docs/method.md §4.6, §17.3): with c and u the logits of the
conditional and the null-prompt row at one step, s the CFG scale and T the temperature,
    o = u + s (c - u),     z ~ softmax(topk-topp(o / max(T, 1e-5))).
Follows: FoundationVision/LlamaGen@ce98ec4 autoregressive/models/generate.py:16-54 (top_k_top_p_filtering), 57-66
(sample: temperature, multinomial), 77-102 (CFG in prefill / decode_one_token); deepseek-ai/Janus@1daa72f
generation_inference.py:54-110 (CFG, softmax / temperature, multinomial). Written from them.

Run the self-check (CPU, a second): python sampling.py   Tests: pytest -q tests/test_sampling.py
Symbols: B prompts, R model rows (B, or 2B with CFG: the [cond; null] halves), V vocabulary.
"""
from __future__ import annotations

import math

import torch


def check_settings(cfg_scale: float, temperature: float, top_k: int, top_p: float) -> None:
    """cfg_scale >= 1: the released samplers guide only above 1 (LlamaGen generate.py `if cfg_scale > 1.0`), so a
    scale in (0, 1) would mean no guidance there and u + s (c - u) here; refused rather than read either way."""
    if not (1 <= cfg_scale < math.inf and 0 <= temperature < math.inf and top_k >= 0 and int(top_k) == top_k
            and 0 < top_p <= 1):
        raise ValueError(f"need finite cfg_scale >= 1 (1 = no guidance), finite temperature >= 0, an integer "
                         f"top_k >= 0, 0 < top_p <= 1; got {cfg_scale}, {temperature}, {top_k}, {top_p}")


def guide(logits: torch.Tensor, B: int, cfg_scale: float) -> torch.Tensor:
    """CFG on raw logits: (R,...,V) rows [cond; null] -> (B,...,V) u + s (c - u). With s == 1 the samplers compute
    no null half (R == B) and the logits pass unchanged."""
    if cfg_scale == 1.0:
        return logits
    cond, null = logits[:B], logits[B:]
    return null + cfg_scale * (cond - null)


def top_k_top_p(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """(...,V) -> (...,V) with the filtered entries at -inf; the input is not edited (generate.py:16-54 edits it in
    place). top-k keeps the logits >= the k-th largest (ties kept; k >= V keeps all). top-p then keeps the shortest
    prefix of the tokens sorted by probability whose mass exceeds top_p (the token that crosses top_p is kept)."""
    if 0 < top_k < logits.shape[-1]:  # the k-th largest; unsorted topk returns the same k values, cheaper
        kth = torch.topk(logits, top_k, dim=-1, sorted=False).values.amin(-1, keepdim=True)    # (...,1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        srt, idx = torch.sort(logits, dim=-1, descending=True)
        remove = srt.softmax(-1).cumsum(-1) > top_p                                        # sorted order
        remove = torch.cat([torch.zeros_like(remove[..., :1]), remove[..., :-1]], -1)      # shift: keep the crosser
        logits = logits.masked_fill(remove.scatter(-1, idx, remove), float("-inf"))       # back to vocab order
    return logits


def step_logits(logits, B: int, cfg_scale: float, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """(R,...,V) raw logits, rows [cond; null] -> (B,...,V) the logits a token is drawn from: CFG, temperature (0 is
    read as 1e-5, generate.py:58), top-k, top-p."""
    logits = guide(logits, B, cfg_scale)
    if temperature != 1.0:  # x / 1 == x: skipped
        logits = logits / max(temperature, 1e-5)
    return top_k_top_p(logits, top_k, top_p)


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,V) probabilities -> (B,) int64: the token torch.multinomial(probs, 1, generator=generator) draws, with the
    same use of the generator. torch draws one sample as argmax(probs / q), q ~ Exp(1) per entry (aten/src/ATen/
    native/Distributions.cpp); written out because multinomial first checks probs, a host sync per step on a GPU
    (callers check the logits with `check_finite`). On CPU torch's exponential_ computes q = -log1p(-u) from one
    float64 u ~ U[0,1) per entry (aten/src/ATen/native/cpu/DistributionTemplates.h); drawing u directly gives the same
    q and the same generator state, ~3x cheaper (tests/test_sampling.py holds all this to torch.multinomial)."""
    if probs.device.type == "cpu":
        q = torch.empty(probs.shape, dtype=torch.float64).uniform_(generator=generator).neg_().log1p_().neg_().float()
    else:
        q = torch.empty_like(probs).exponential_(generator=generator)
    return (probs / q).argmax(-1)


def check_finite(logits: torch.Tensor, who: str) -> None:
    """Raise if a row of (...,V) logits holds NaN or +inf, or nothing finite (softmax would be NaN). The row maximum
    tells: max propagates NaN."""
    if not bool(torch.isfinite(logits.amax(-1)).all()):
        raise FloatingPointError(f"{who}: non-finite logits (NaN/inf weights or activations; under fp16? use bf16 or "
                                 "fp32): the drawn tokens would be meaningless")


if __name__ == "__main__":
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [1.0, 1.0, 0.0, 0.0]])          # rows [cond; null], B = 1
    print("CFG s=3 (u + s (c - u)):", step_logits(logits, 1, 3.0).tolist())
    print("top-k 2:", top_k_top_p(logits[:1], 2).tolist(), " top-p 0.5:", top_k_top_p(logits[:1], 0, 0.5).tolist())
    probs = step_logits(logits, 1, 3.0).softmax(-1).expand(20000, -1)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    tok = draw(probs, g1)
    same = torch.equal(tok, torch.multinomial(probs, 1, generator=g2)[:, 0])
    freq = torch.bincount(tok, minlength=4) / len(tok)
    print(f"draw == torch.multinomial: {same}; frequencies {freq.tolist()} vs probs "
          f"{[round(p, 4) for p in probs[0].tolist()]}")
    assert same
