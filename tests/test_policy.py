"""policy.py: GPT-XL t2i layout and counts, 2-D RoPE, masks, KV-cache sampler vs naive oracle, log-probs, loading;
fast_sample.sample_gpt (what train.py samples with) against the readable policy.sample, token for token. The step rule
(CFG, top-k / top-p, the draw) has its own tests in tests/test_sampling.py. CPU, offline, tiny config.

Run: pytest -q tests/test_policy.py
"""
import argparse
import dataclasses
import math

import pytest
import torch

from perf import fast_sample
import janus
import policy
from perf.fast_sample import sample_gpt
from policy import (GPT, GPT_CONFIGS, GPTConfig, attention_mask, load_gpt, rope_table, sample, sample_naive,
                    token_logprobs)
from text_encoders import WordTextEncoder

CFG = GPT_CONFIGS["tiny"]
WORDS = ["a", "red", "blue", "green", "circle", "square", "on", "the", "left", "right", "big"]


def random_model(cfg=CFG, seed=0, std=0.3):
    """Random weights everywhere (incl. the zero-initialised head), so the distributions are far from uniform."""
    model = GPT(cfg, seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std, generator=g)
    return model


def captions(B=3):
    enc = WordTextEncoder(WORDS, CFG.caption_dim, CFG.cls_token_num)
    caps = ["a red circle", "a big blue square on the left", "green", "the right circle"][:B]
    return enc(caps)


def text_of_every_length(name, grad_ckpt=False):
    """A random GPT of GPT_CONFIGS[name]'s widths with a 4x4 grid, and 4 captions of 1, T, 3 and 2 valid slots."""
    cfg = dataclasses.replace(GPT_CONFIGS[name], grad_ckpt=grad_ckpt, block_size=16)
    model = random_model(cfg, std=0.15)
    g = torch.Generator().manual_seed(1)
    L = torch.tensor([1, cfg.cls_token_num, 3, 2])                                          # valid text slots
    mask = torch.arange(cfg.cls_token_num)[None] >= (cfg.cls_token_num - L)[:, None]       # pads first
    cond = torch.randn(4, cfg.cls_token_num, cfg.caption_dim, generator=g) * mask[..., None]
    return model, cond, mask


# ------------------------------------------------------------------------------------------------ layout / counts
def test_gpt_xl_state_dict_and_param_count():
    with torch.device("meta"):
        model = GPT(GPT_CONFIGS["GPT-XL-t2i"])
    sd = model.state_dict()
    assert len(sd) == 258
    assert sum(p.numel() for p in model.parameters()) == 777_678_080
    assert sum(v.numel() for v in sd.values()) == 777_923_840
    shapes = {"cls_embedding.cap_proj.fc1.weight": (1280, 2048), "cls_embedding.cap_proj.fc2.weight": (1280, 1280),
              "cls_embedding.uncond_embedding": (120, 2048), "tok_embeddings.weight": (16384, 1280),
              "layers.0.attention.wqkv.weight": (3840, 1280), "layers.35.attention.wo.weight": (1280, 1280),
              "layers.7.feed_forward.w1.weight": (3584, 1280), "layers.7.feed_forward.w3.weight": (3584, 1280),
              "layers.7.feed_forward.w2.weight": (1280, 3584), "layers.35.attention_norm.weight": (1280,),
              "layers.35.ffn_norm.weight": (1280,), "norm.weight": (1280,), "output.weight": (16384, 1280)}
    for k, s in shapes.items():
        assert tuple(sd[k].shape) == s, k
    names = {n for n, _ in model.named_parameters()}
    assert "cls_embedding.uncond_embedding" not in names
    assert [n for n, _ in model.named_buffers()] == ["cls_embedding.uncond_embedding"]
    assert not any(m.bias is not None for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert model.cls_embedding.cap_proj.act.approximate == "tanh"                # not the erf GELU (gotcha 7)


def test_bad_config_rejected():
    with pytest.raises(ValueError, match="square"):
        GPTConfig(block_size=200)


def test_no_runtime_state_in_state_dict_after_sampling():
    model = random_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cond, mask = captions()
    for fn in (sample, sample_gpt):
        fn(model, cond, mask, cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
    after = model.state_dict()
    assert list(after) == list(before)
    assert not any(w in k for k in after for w in ("cache", "rope", "freqs", "mask"))
    assert all(torch.equal(before[k], after[k]) for k in after)


# ------------------------------------------------------------------------------------------------ RoPE / mask
@pytest.mark.parametrize("name", ["GPT-XL-t2i", "tiny"])
def test_rope_table_layout(name):
    cfg = GPT_CONFIGS[name]
    rope = rope_table(cfg)
    T, g, q = cfg.cls_token_num, math.isqrt(cfg.block_size), cfg.head_dim // 4
    assert rope.shape == (T + cfg.block_size, cfg.head_dim // 2, 2) and rope.dtype == torch.float32
    assert torch.count_nonzero(rope[:T]) == 0                       # text rows: cos = sin = 0 exactly
    f = cfg.rope_base ** (-torch.arange(q, dtype=torch.float64) / q)  # f_j = base^(-j/(hd/4))
    for n in (0, 1, g + 2, cfg.block_size - 1):
        r, c = divmod(n, g)
        ang = torch.cat([r * f, c * f])                              # first hd/4 pairs by row, last hd/4 by column
        want = torch.stack([ang.cos(), ang.sin()], -1).float()
        torch.testing.assert_close(rope[T + n], want, atol=2e-6, rtol=0)


def test_apply_rope_pairs_adjacent_and_zeroes_text():
    cfg = CFG
    rope = rope_table(cfg)
    x = torch.randn(1, rope.shape[0], 1, cfg.head_dim)
    y = policy.apply_rope(x, rope)
    assert torch.count_nonzero(y[:, :cfg.cls_token_num]) == 0
    n = cfg.cls_token_num + 5                                        # rotate pair (2k, 2k+1) as a complex number
    z = torch.view_as_complex(x[0, n, 0].view(-1, 2).contiguous()) * torch.view_as_complex(rope[n].contiguous())
    torch.testing.assert_close(y[0, n, 0], torch.view_as_real(z).flatten())


def test_attention_mask_convention():
    cm = torch.tensor([[False, False, True], [True, True, True]])
    m = attention_mask(cm, 5)[:, 0]
    assert m.shape == (2, 5, 5)
    assert m[0].tolist() == [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]
    assert torch.equal(m[1], torch.ones(5, 5, dtype=torch.bool).tril())


# ------------------------------------------------------------------------------------------------ forward
def test_forward_shape_causality_and_pads():
    model = random_model()
    cond, mask = captions()
    tok = torch.randint(0, CFG.vocab_size, (3, CFG.block_size), generator=torch.Generator().manual_seed(0))
    logits = model(tok, cond, mask)
    assert logits.shape == (3, CFG.block_size, CFG.vocab_size) and logits.dtype == torch.float32
    t = 6
    tok2 = tok.clone()
    tok2[:, t:] = (tok2[:, t:] + 1) % CFG.vocab_size
    logits2 = model(tok2, cond, mask)
    torch.testing.assert_close(logits2[:, :t + 1], logits[:, :t + 1], atol=1e-5, rtol=0)  # position t sees z_<t only
    assert (logits2[:, t + 1:] - logits[:, t + 1:]).abs().max() > 1e-3
    noisy = torch.where(mask[..., None], cond, torch.randn_like(cond) * 5)     # garbage in the pad slots
    torch.testing.assert_close(model(tok, noisy, mask), logits, atol=1e-5, rtol=0)
    moved = cond.clone()
    moved[:, -1] += 1.0                                                       # a real slot does matter
    assert (model(tok, moved, mask) - logits).abs().max() > 1e-3


def test_forward_rejects_bad_inputs():
    model = random_model()
    cond, mask = captions()
    tok = torch.zeros(3, CFG.block_size, dtype=torch.long)
    with pytest.raises(ValueError, match="cond must be"):
        model(tok, cond[:, :4], mask[:, :4])
    with pytest.raises(ValueError, match="left-aligned"):
        model(tok, cond, mask.flip(1))
    with pytest.raises(ValueError, match="tokens must be"):
        model(tok.int(), cond, mask)
    with pytest.raises(RuntimeError, match="eval"):
        sample(model.train(), cond, mask)
    with pytest.raises(ValueError, match=rf"codebook ids in \[0, {CFG.vocab_size}\), got \[0, {CFG.vocab_size}\]"):
        model(tok.index_fill(1, torch.tensor([0]), CFG.vocab_size), cond, mask)      # an id one past the codebook
    with pytest.raises(ValueError, match=r"tokens must be \(B=3, n\).*\(2, "):   # the caller's B, not 2B
        token_logprobs(model.eval(), cond, mask, tok[:2], cfg_scale=4.0)


def test_drop_caption_rows_equal_uncond_forward():
    model = random_model()
    cond, mask = captions()
    tok = torch.randint(0, CFG.vocab_size, (3, CFG.block_size), generator=torch.Generator().manual_seed(1))
    drop = torch.tensor([True, False, True])
    out = model(tok, cond, mask, drop_caption=drop)
    null = model.cls_embedding.uncond_embedding.expand_as(cond)
    ref = model(tok, torch.where(drop[:, None, None], null, cond), mask)
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    assert (out[1] - model(tok, null, mask)[1]).abs().max() > 1e-3


def test_dropout_only_in_train_mode():
    cfg = dataclasses.replace(CFG, token_dropout_p=0.5)
    model = random_model(cfg)
    cond, mask = captions()
    tok = torch.randint(0, cfg.vocab_size, (3, cfg.block_size), generator=torch.Generator().manual_seed(2))
    assert torch.equal(model(tok, cond, mask), model(tok, cond, mask))
    torch.manual_seed(0)
    assert not torch.allclose(model.train()(tok, cond, mask), model.eval()(tok, cond, mask))


def test_grad_ckpt_applied_in_eval_mode_same_grads(monkeypatch):
    cond, mask = captions()
    tok = torch.randint(0, CFG.vocab_size, (3, CFG.block_size), generator=torch.Generator().manual_seed(3))
    grads = []
    calls = []
    real = policy.checkpoint
    monkeypatch.setattr(policy, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    for ckpt in (False, True):
        model = random_model(dataclasses.replace(CFG, grad_ckpt=ckpt))   # eval mode
        token_logprobs(model, cond, mask, tok).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert len(calls) == CFG.n_layer
    torch.testing.assert_close(grads[0], grads[1])


# ------------------------------------------------------------------------------------------------ sampling
@pytest.mark.parametrize("kw", [dict(cfg_scale=3.0, temperature=0.7, top_k=20, top_p=0.9),
                                dict(cfg_scale=1.0, temperature=1.3, top_k=0, top_p=1.0)])
def test_kv_cache_sampler_matches_naive(kw):
    model = random_model()
    cond, mask = captions()
    tok = sample(model, cond, mask, generator=torch.Generator().manual_seed(7), **kw)
    slow = sample_naive(model, cond, mask, generator=torch.Generator().manual_seed(7), **kw)
    assert tok.shape == (3, CFG.block_size) and tok.dtype == torch.long
    assert torch.equal(tok, slow)
    assert len(set(tok.flatten().tolist())) > 3                   # not a degenerate constant output


@pytest.mark.parametrize("name", ["tiny", "toy"])
def test_kv_cache_sampler_matches_naive_top_k_and_grad_ckpt(name):
    """top-k below V, captions of 1..T words, and a grad_ckpt model (the samplers never checkpoint): sample ==
    sample_naive == fast_sample.sample_gpt token for token."""
    model, cond, mask = text_of_every_length(name, grad_ckpt=True)
    kw = dict(cfg_scale=4.0, temperature=0.9, top_k=model.cfg.vocab_size // 4)
    tok = sample(model, cond, mask, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(tok, sample_naive(model, cond, mask, generator=torch.Generator().manual_seed(0), **kw))
    assert torch.equal(tok, sample_gpt(model, cond, mask, generator=torch.Generator().manual_seed(0), **kw))
    assert len(set(tok.flatten().tolist())) > 3


@pytest.mark.parametrize("name", ["tiny", "toy"])
@pytest.mark.parametrize("kw", [dict(cfg_scale=4.0), dict(cfg_scale=1.0, temperature=1.3),
                                dict(cfg_scale=3.0, temperature=0.8, top_k=20), dict(cfg_scale=2.0, top_p=0.8),
                                dict(cfg_scale=5.0, temperature=0.9, top_k=40, top_p=0.9)])
def test_fast_sampler_draws_the_readable_samplers_tokens(name, kw):
    """fast_sample.sample_gpt == policy.sample token for token, and the generator ends in the same state: CFG and
    none, temperature, top-k, top-p, both; captions of 1..T slots (the fast path's fp32 text-key summary: the same
    algebra, other rounding, so equal tokens are the property that holds, not equal logits)."""
    model, cond, mask = text_of_every_length(name)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    tok = sample(model, cond, mask, generator=g1, **kw)
    assert torch.equal(sample_gpt(model, cond, mask, generator=g2, **kw), tok)
    assert torch.equal(g1.get_state(), g2.get_state()) and len(set(tok.flatten().tolist())) > 3


def test_fast_samplers_take_the_readable_samplers_arguments_and_defaults():
    """A caller can swap policy.sample / janus.sample for fast_sample's (train.py, sample.py, the toy wing do): the
    same names, order and defaults (the defaults of CFG and the sampling settings are never exercised by a call that
    passes them all); sample_janus adds only `compile`."""
    import inspect
    for fast, readable, extra in ((sample_gpt, policy.sample, []), (fast_sample.sample_janus, janus.sample,
                                                                     ["compile"])):
        f, r = inspect.signature(fast).parameters, inspect.signature(readable).parameters
        assert list(f) == list(r) + extra
        assert [(p.kind, p.default) for p in r.values()] == [(f[k].kind, f[k].default) for k in r]


@pytest.mark.parametrize("fn", [sample, sample_gpt])
def test_sample_rejects_non_finite_logits(fn):
    model = random_model()
    cond, mask = captions()
    with torch.no_grad():
        model.output.weight[5, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite"):
        fn(model, cond, mask, cfg_scale=2.0, generator=torch.Generator().manual_seed(0))


def test_seed_determinism():
    model = random_model()
    cond, mask = captions()
    run = lambda s: sample(model, cond, mask, cfg_scale=2.0, top_k=30, generator=torch.Generator().manual_seed(s))
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


@pytest.mark.parametrize("module,fn", [(policy, sample), (fast_sample, sample_gpt)])
def test_cfg_changes_samples_and_uses_null_half(monkeypatch, module, fn):
    model = random_model()
    cond, mask = captions()
    rows = []
    real = module.step_logits
    monkeypatch.setattr(module, "step_logits", lambda lg, *a: rows.append(lg.shape[0]) or real(lg, *a))
    fn(model, cond, mask, cfg_scale=1.0, generator=torch.Generator().manual_seed(0))
    assert set(rows) == {3}                                        # cfg 1: no null half computed at all
    rows.clear()
    fn(model, cond, mask, cfg_scale=5.0, generator=torch.Generator().manual_seed(0))
    assert set(rows) == {6}


@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_token_logprobs_equal_sampler_distribution(monkeypatch, cfg_scale):
    model = random_model()
    cond, mask = captions()
    steps = []
    real = policy.step_logits
    monkeypatch.setattr(policy, "step_logits", lambda *a: steps.append(real(*a).log_softmax(-1)) or steps[-1])
    tok = sample(model, cond, mask, cfg_scale=cfg_scale, generator=torch.Generator().manual_seed(4))
    dist = torch.stack(steps, 1)                                               # (B,N,V) sampler log-distributions
    want = dist.gather(-1, tok[..., None])[..., 0]
    got = token_logprobs(model, cond, mask, tok, cfg_scale=cfg_scale)
    assert got.shape == tok.shape and got.requires_grad
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    got.sum().backward()
    assert model.output.weight.grad.abs().sum() > 0
    assert model.cls_embedding.uncond_embedding.grad is None


def test_guided_logprobs_by_hand():
    model = random_model()
    cond, mask = captions()
    tok = torch.randint(0, CFG.vocab_size, (3, CFG.block_size), generator=torch.Generator().manual_seed(5))
    lc = model(tok, cond, mask)                                                     # conditional branch
    lu = model(tok, model.cls_embedding.uncond_embedding.expand_as(cond), mask)     # null caption, SAME mask
    want = (lu + 4.0 * (lc - lu)).log_softmax(-1).gather(-1, tok[..., None])[..., 0]
    torch.testing.assert_close(token_logprobs(model, cond, mask, tok, cfg_scale=4.0), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(token_logprobs(model, cond, mask, tok),
                               lc.log_softmax(-1).gather(-1, tok[..., None])[..., 0], atol=1e-5, rtol=0)


def test_sample_defaults_and_logprobs_in_train_mode():
    """sample's defaults are plain sampling (no CFG, T 1, no top-k / top-p); token_logprobs runs in the model's
    current mode, train mode included (no dropout in this config, so it equals the eval-mode log-probs), while
    sampling refuses train mode."""
    model = random_model(dataclasses.replace(CFG, token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0))
    cond, mask = captions()
    tok = sample(model, cond, mask, generator=torch.Generator().manual_seed(2))
    assert torch.equal(tok, sample(model, cond, mask, cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0,
                                   generator=torch.Generator().manual_seed(2)))
    want = token_logprobs(model, cond, mask, tok, cfg_scale=2.0)
    model.train()
    torch.testing.assert_close(token_logprobs(model, cond, mask, tok, cfg_scale=2.0), want, atol=1e-6, rtol=0)
    with pytest.raises(RuntimeError, match="eval"):
        sample(model, cond, mask, generator=torch.Generator().manual_seed(2))


def test_bf16_autocast_sampling_and_logprobs():
    model = random_model()
    cond, mask = captions()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tok = sample(model, cond, mask, cfg_scale=3.0, top_k=20, generator=torch.Generator().manual_seed(0))
        lp = token_logprobs(model, cond, mask, tok)
        fast = sample_gpt(model, cond, mask, cfg_scale=3.0, top_k=20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fast, tok)          # the same bf16 sums (no fp32-only text summary with bf16 caches)
    assert tok.shape == (3, CFG.block_size) and 0 <= tok.min() and tok.max() < CFG.vocab_size
    torch.testing.assert_close(lp.float(), token_logprobs(model, cond, mask, tok), atol=0.3, rtol=0.1)
    half = random_model().to(torch.bfloat16)                                         # whole model cast, as upstream
    draws = [fn(half, cond, mask, cfg_scale=3.0, generator=torch.Generator().manual_seed(0))
             for fn in (sample, sample_gpt)]
    assert draws[0].shape == tok.shape and torch.equal(*draws)       # RMSNorm's variance in fp32 in both


# ------------------------------------------------------------------------------------------------ loading
def test_llamagen_checkpoint_loads_strictly(tmp_path):
    model = random_model(seed=5)
    sd = {"module." + k: v for k, v in model.state_dict().items()}
    path = tmp_path / "t2i_tiny.pt"
    torch.save({"model": sd, "args": argparse.Namespace(gpt_model="tiny"), "steps": 3}, path)
    loaded = load_gpt(str(path), CFG)
    assert not loaded.training
    cond, mask = captions()
    tok = torch.randint(0, CFG.vocab_size, (3, CFG.block_size), generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded(tok, cond, mask), model(tok, cond, mask))

    bad = dict(sd)
    bad["module.layers.0.attention.wqkv.weights"] = bad.pop("module.layers.0.attention.wqkv.weight")
    torch.save({"model": bad}, tmp_path / "bad_key.pt")
    with pytest.raises(RuntimeError, match="wqkv.weight"):
        load_gpt(str(tmp_path / "bad_key.pt"), CFG)
    with pytest.raises(RuntimeError, match="tok_embeddings.weight"):
        load_gpt(str(path), dataclasses.replace(CFG, vocab_size=32))
    with pytest.raises(FileNotFoundError):
        load_gpt(str(tmp_path / "missing.pt"), CFG)


