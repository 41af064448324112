"""janus.py: the Janus-Pro-1B generation path as a policy (sampler, log-probs, padding, null prompt, loading, text);
fast_sample.sample_janus (what train.py samples with) against the readable janus.sample, token for token.

The oracle for the Llama trunk, the gen modules, the null prompt and generation is transformers'
JanusForConditionalGeneration (skipped when the installed transformers lacks it), fed the same tiny random weights.
CPU, offline, ~20 s on one thread (+ ~30 s when torch.compile first builds sample_janus(compile=True)'s step).
Run: OMP_NUM_THREADS=1 pytest -q tests/test_janus.py
"""
import dataclasses
import os
import shutil

import pytest
import torch

import janus
import text_encoders
import vq
from perf.fast_sample import sample_janus
from janus_fixtures import CFG, SPECIALS, random_tiny, to_hf_key, write_tiny_janus

BOS, PAD, BOI = CFG.bos_id, CFG.pad_id, CFG.boi_id
DROPPED_COUNTS = {"vision_model.": 5, "aligner.": 4, "language_model.lm_head.": 1}   # janus_fixtures.UNDERSTANDING


def prompts(lengths, extra_pad=0):
    """Left-padded prompts BOS, caption ids, <begin_of_image>: caption lengths `lengths`, extra_pad more pad columns."""
    g = torch.Generator().manual_seed(len(lengths))
    T = max(lengths) + 2 + extra_pad
    ids, mask = torch.full((len(lengths), T), PAD), torch.zeros(len(lengths), T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        ids[b, T - n - 2:] = torch.cat([torch.tensor([BOS]), torch.randint(4, 200, (n,), generator=g),
                                        torch.tensor([BOI])])
        mask[b, T - n - 2:] = True
    return ids, mask


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls: 1 thread is fastest, and on a busy 2-core box 2 threads can be 20x slower. Restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model():
    return random_tiny(0)[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("janus")
    return {lay: write_tiny_janus(d / lay, lay) for lay in ("original", "hf")}


# ---- sampler, log-probs, padding, null prompt -----------------------------------------------------------------------
@pytest.mark.parametrize("seed,cfg_scale,top_k,top_p", [(0, 5.0, 0, 1.0), (1, 1.0, 0, 1.0), (2, 3.0, 10, 1.0),
                                                         (3, 5.0, 20, 0.9), (4, 1.0, 5, 1.0)])
def test_kv_cache_sampler_matches_naive(model, seed, cfg_scale, top_k, top_p):
    ids, mask = prompts([1, 4, 7])
    kw = dict(cfg_scale=cfg_scale, temperature=0.9, top_k=top_k, top_p=top_p)
    tok = janus.sample(model, ids, mask, generator=torch.Generator().manual_seed(seed), **kw)
    slow = janus.sample_naive(model, ids, mask, generator=torch.Generator().manual_seed(seed), **kw)
    assert tok.shape == (3, CFG.image_tokens) and tok.dtype == torch.long
    assert torch.equal(tok, slow)
    assert len(tok.unique()) > 3                                    # far from a constant: the check has teeth


@pytest.mark.parametrize("seed,cfg_scale,temperature,top_k,top_p", [
    (0, 5.0, 1.0, 0, 1.0), (1, 1.0, 0.9, 0, 1.0), (2, 3.0, 1.0, 10, 1.0), (3, 5.0, 0.9, 20, 0.9), (4, 2.0, 1.2, 0, 0.8),
    (5, 5.0, 1.0, 1000, 1.0)])
def test_fast_sampler_draws_the_readable_samplers_tokens(model, seed, cfg_scale, temperature, top_k, top_p):
    """fast_sample.sample_janus == janus.sample token for token, and the generator ends in the same state: CFG and
    none, temperature, top-k (also >= V), top-p, both, on prompts of different lengths."""
    ids, mask = prompts([1, 4, 7, 2])
    kw = dict(cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p)
    g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    tok = janus.sample(model, ids, mask, generator=g1, **kw)
    assert torch.equal(sample_janus(model, ids, mask, generator=g2, **kw), tok)
    assert torch.equal(g1.get_state(), g2.get_state()) and len(tok.unique()) > 3


@pytest.mark.slow
def test_compiled_fast_sampler_matches_readable(model):
    """sample_janus(compile=True): the decode step under torch.compile, static shapes (the whole cache, masked)."""
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        pytest.skip("torch.compile (inductor) needs a C++ compiler")
    ids, mask = prompts([1, 4, 7])
    kw = dict(cfg_scale=5.0, temperature=0.9, top_k=20, top_p=0.9)
    compiled = sample_janus(model, ids, mask, generator=torch.Generator().manual_seed(3), compile=True, **kw)
    tok = janus.sample(model, ids, mask, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(compiled, tok) and len(tok.unique()) > 3


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_token_logprobs_equal_the_samplers(model, cfg_scale, monkeypatch):
    ids, mask = prompts([2, 5])
    steps, real = [], janus.step_logits                             # the log-distribution each token is drawn from
    monkeypatch.setattr(janus, "step_logits", lambda *a: steps.append(real(*a).log_softmax(-1)) or steps[-1])
    tokens = janus.sample(model, ids, mask, cfg_scale=cfg_scale, generator=torch.Generator().manual_seed(0))
    lp = torch.stack(steps, 1).gather(-1, tokens[..., None])[..., 0]                           # (B,N)
    got = janus.token_logprobs(model, ids, mask, tokens, cfg_scale=cfg_scale)
    assert got.shape == (2, CFG.image_tokens) and got.requires_grad            # differentiable
    torch.testing.assert_close(got, lp, atol=2e-5, rtol=0)
    assert lp.std() > 0.1                                           # not uniform
    if cfg_scale != 1.0:                                            # the guided log-probs differ from cond-only ones
        assert (janus.token_logprobs(model, ids, mask, tokens) - lp).abs().max() > 1e-2


def test_token_logprobs_are_differentiable_and_grad_ckpt_is_exact():
    m = random_tiny(1)[0]
    ids, mask = prompts([3, 6])
    tokens = torch.randint(0, CFG.image_vocab, (2, CFG.image_tokens), generator=torch.Generator().manual_seed(0))
    grads = []
    for ck in (False, True):
        m.cfg.grad_ckpt = ck
        m.zero_grad()
        janus.token_logprobs(m, ids, mask, tokens).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0].abs().sum() > 0


def test_grad_ckpt_checkpoints_each_layer_only_where_grad_flows(monkeypatch):
    """--grad_ckpt wraps each of the n_layer blocks in a non-reentrant checkpoint when grad is on (D10), and never in
    no-grad passes or the KV-cache sampler's steps (equal gradients alone cannot show that it checkpoints at all)."""
    m = random_tiny(1)[0]
    ids, mask = prompts([3])
    tokens = torch.zeros(1, CFG.image_tokens, dtype=torch.long)
    calls, real = [], janus.checkpoint
    monkeypatch.setattr(janus, "checkpoint", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    for ck, grad, want in ((True, True, CFG.n_layer), (True, False, 0), (False, True, 0)):
        m.cfg.grad_ckpt, calls[:] = ck, []
        with torch.set_grad_enabled(grad):
            janus.token_logprobs(m, ids, mask, tokens)
        assert len(calls) == want and all(kw == {"use_reentrant": False} for kw in calls), (ck, grad)
    m.cfg.grad_ckpt, calls[:] = True, []
    with torch.enable_grad():
        janus.sample(m, ids, mask, cfg_scale=1.0, generator=torch.Generator().manual_seed(0))
    assert calls == []


def test_positions_and_attention_mask_by_hand():
    """layout: positions cumsum(valid) - 1 with pads at 1 (docs/method.md §17.2); keys masked at pads, causal, the
    diagonal always on. Positions enter only through RoPE, which sees differences: a shift of a whole row would pass
    every logit test, so they are checked by value."""
    pos, am = janus.layout(torch.tensor([[False, True, True], [True, True, True]]), 2)
    assert pos.tolist() == [[1, 0, 1, 2, 3], [0, 1, 2, 3, 4]]
    assert am.shape == (2, 1, 5, 5)
    assert am[0, 0].int().tolist() == [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 1, 1, 1, 0],
                                       [0, 1, 1, 1, 1]]
    assert torch.equal(am[1, 0], torch.ones(5, 5, dtype=torch.bool).tril())


def test_fresh_weights_are_seeded_normal_002_with_zero_biases():
    """JanusGen(cfg, seed=s) (--synthetic janus, the tests' models): every Linear / Embedding weight drawn from
    N(0, 0.02) with its own generator, biases 0, RMSNorm weights 1; the same seed gives the same weights."""
    a, b, c = janus.JanusGen(CFG, seed=3), janus.JanusGen(CFG, seed=3), janus.JanusGen(CFG, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.gen_embed.weight, c.gen_embed.weight)
    w = torch.cat([m.weight.detach().flatten() for m in a.modules()
                   if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))])
    assert abs(float(w.mean())) < 1e-3 and abs(float(w.std()) - 0.02) < 5e-4            # ~100k draws
    biases = [m.bias for m in a.modules() if isinstance(m, torch.nn.Linear) and m.bias is not None]
    assert len(biases) == 4 and all(not bb.any() for bb in biases)                       # aligner 2, gen_head 2
    assert all(bool((m.weight == 1).all()) for m in a.modules() if isinstance(m, janus.RMSNorm))



def test_a_model_built_on_meta_draws_no_weights(monkeypatch):
    """load_janus builds JanusGen on the meta device and fills every entry from the checkpoint: no random draw (for
    Janus-Pro-1B, 1.5 B normals thrown away) and no generator."""
    class NoDraws:                                  # janus.py's `torch`, without torch.Generator
        def __getattr__(self, name):
            if name == "Generator":
                raise AssertionError("a meta model drew random weights")
            return getattr(torch, name)
    monkeypatch.setattr(janus, "torch", NoDraws())
    with torch.device("meta"):
        m = janus.JanusGen(janus.JANUS_CONFIGS["janus_pro_1b"])
    assert m.gen_embed.weight.is_meta


def test_head_runs_in_fp32_under_autocast_and_for_a_bf16_model(model):
    """logits leaves autocast: under bf16 autocast they equal the fp32 head on the same hidden state, and a bf16
    model's logits come back as fp32 (the DEVIATION note at JanusGen.logits)."""
    h = torch.randn(2, 3, CFG.dim, generator=torch.Generator().manual_seed(0)).bfloat16()
    ref = model.gen_head(h.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model.logits(h)
    assert got.dtype == torch.float32 and torch.equal(got, ref)
    m16 = random_tiny(0)[0].to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m16.logits(h).dtype == torch.float32


def test_extra_left_padding_changes_nothing(model):
    ids, mask = prompts([2, 6])
    ids2, mask2 = prompts([2, 6], extra_pad=5)
    assert torch.equal(ids2[:, 5:], ids) and not mask2[:, :5].any()
    tokens = torch.randint(0, CFG.image_vocab, (2, CFG.image_tokens), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(tokens, ids2, mask2), model(tokens, ids, mask), atol=1e-5, rtol=0)
    for cfg_scale in (1.0, 4.0):                        # null rows too
        a, b = (janus.token_logprobs(model, i, m, tokens, cfg_scale=cfg_scale) for i, m in ((ids, mask), (ids2, mask2)))
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    s = [janus.sample(model, i, m, cfg_scale=4.0, top_k=1) for i, m in ((ids, mask), (ids2, mask2))]
    assert torch.equal(*s)


def test_null_prompt_rule():
    ids, mask = prompts([0, 3, 5])
    null, m = janus.null_prompt(ids, mask, CFG)
    assert m is mask and ids[1, 3] != PAD                               # mask unchanged, input not edited
    assert null.tolist() == [[PAD] * 5 + [BOS, BOI], [PAD, PAD, BOS, PAD, PAD, PAD, BOI], [BOS] + [PAD] * 5 + [BOI]]


def test_input_checks(model):
    ids, mask = prompts([3])
    with pytest.raises(ValueError, match="left-padded"):                # right padding
        model(torch.zeros(1, 2, dtype=torch.long), torch.cat([ids, torch.full((1, 1), PAD)], 1),
              torch.cat([mask, torch.zeros(1, 1, dtype=torch.bool)], 1))
    with pytest.raises(ValueError, match="int64"):
        model(torch.zeros(1, 2, dtype=torch.long), ids.int(), mask)
    right = torch.cat([ids, torch.full((1, 1), PAD)], 1), torch.cat([mask, torch.zeros(1, 1, dtype=torch.bool)], 1)
    for fn in (janus.sample, sample_janus):                             # the samplers check before the KV-cache pass
        with pytest.raises(ValueError, match="left-padded"):
            fn(model, *right, cfg_scale=5.0)
    with pytest.raises(ValueError, match=rf"codebook ids in \[0, {CFG.image_vocab}\)"):
        janus.token_logprobs(model, ids, mask, torch.full((1, 2), CFG.image_vocab), cfg_scale=5.0)
    with pytest.raises(ValueError, match=r"\(B=1, n\).*\(2, 2\)"):                  # the caller's B, not 2B
        janus.token_logprobs(model, ids, mask, torch.zeros(2, 2, dtype=torch.long), cfg_scale=5.0)
    for bad in (torch.zeros(1, 2, dtype=torch.int32), torch.zeros(1, 0, dtype=torch.long),
                torch.zeros(1, CFG.image_tokens + 1, dtype=torch.long)):          # dtype; n = 0; n = N + 1
        with pytest.raises(ValueError, match=rf"1 <= n <= N={CFG.image_tokens}"):
            model(bad, ids, mask)
    model(torch.zeros(1, CFG.image_tokens, dtype=torch.long), ids, mask)                # n = N is allowed
    long_ids = torch.cat([torch.full((1, CFG.max_positions - CFG.image_tokens - ids.shape[1] + 1), PAD), ids], 1)
    long_mask = torch.cat([torch.zeros(1, long_ids.shape[1] - ids.shape[1], dtype=torch.bool), mask], 1)
    with pytest.raises(ValueError, match=f"prompt length {long_ids.shape[1]} \\+ N={CFG.image_tokens} exceeds"):
        model(torch.zeros(1, 2, dtype=torch.long), long_ids, long_mask)
    model(torch.zeros(1, 2, dtype=torch.long), long_ids[:, 1:], long_mask[:, 1:])      # exactly max_positions


def test_sample_under_bf16_autocast(model):
    ids, mask = prompts([2, 4])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        t = janus.sample(model, ids, mask, cfg_scale=5.0, top_k=20, generator=torch.Generator().manual_seed(0))
        lp = janus.token_logprobs(model, ids, mask, t)
        fast = sample_janus(model, ids, mask, cfg_scale=5.0, top_k=20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fast, t)            # the same dtypes on the way (the image embedding cast to fp32 as in forward)
    assert t.shape == (2, CFG.image_tokens) and lp.dtype == torch.float32 and torch.isfinite(lp).all()


def test_fast_sampler_equals_the_readable_one_under_bf16_autocast():
    # a deeper model with 64 image tokens, where a bf16 image embedding in the fast step's residual stream (forward
    # and janus.sample cast it to fp32) changed tokens
    cfg = dataclasses.replace(CFG, n_layer=4, image_tokens=64)
    model, g = janus.JanusGen(cfg).eval(), torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.15, generator=g)
    ids = torch.tensor([[PAD, PAD, BOS, 7, 8, BOI], [BOS, 3, 4, 5, 6, BOI]] * 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = janus.sample(model, ids, ids != PAD, cfg_scale=5.0, top_k=20, generator=torch.Generator().manual_seed(1))
        got = sample_janus(model, ids, ids != PAD, cfg_scale=5.0, top_k=20, generator=torch.Generator().manual_seed(1))
    assert torch.equal(got, want)


# ---- parity with transformers' JanusForConditionalGeneration --------------------------------------------------------
def hf_janus(model, vqm):
    """transformers' Janus with a tiny config matching CFG, our weights renamed into it (vision side random)."""
    tf = pytest.importorskip("transformers")
    if not hasattr(tf, "JanusForConditionalGeneration"):
        pytest.skip("transformers lacks JanusForConditionalGeneration (needs >= 4.52)")
    text = dict(model_type="llama", vocab_size=CFG.vocab_size, hidden_size=CFG.dim, intermediate_size=CFG.ffn_hidden,
                num_hidden_layers=CFG.n_layer, num_attention_heads=CFG.n_head, num_key_value_heads=CFG.n_head,
                rms_norm_eps=CFG.norm_eps, rope_theta=CFG.rope_base, max_position_embeddings=CFG.max_positions,
                bos_token_id=BOS, eos_token_id=251, pad_token_id=PAD)
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=64,
                  patch_size=16, num_image_tokens=CFG.image_tokens, projection_dim=CFG.dim)   # (64/16)^2 = 16
    vc = vqm.cfg
    vqc = dict(embed_dim=vc.codebook_embed_dim, num_embeddings=vc.codebook_size, base_channels=vc.ch,
               channel_multiplier=list(vc.ch_mult), num_res_blocks=vc.num_res_blocks, latent_channels=vc.z_channels,
               projection_dim=CFG.dim, image_token_embed_dim=CFG.dim)
    hf = tf.JanusForConditionalGeneration(tf.JanusConfig(text_config=text, vision_config=vision, vq_config=vqc))
    ours = {**model.state_dict(), **{f"gen_vision_model.{k}": v for k, v in vqm.state_dict().items()}}
    ours = {to_hf_key(k): v for k, v in ours.items() if not k.endswith("codebook_used")}
    hf_keys = {k for k in hf.state_dict() if not k.startswith(("model.vision_model.", "model.aligner.", "lm_head."))}
    assert set(ours) == hf_keys                                     # the key maps match transformers' module names
    assert {janus.hf_to_original(k) for k in hf_keys} == {k for k in (*model.state_dict(), *(
        f"gen_vision_model.{k}" for k in vqm.state_dict())) if not k.endswith("codebook_used")}
    hf.load_state_dict(ours, strict=False)
    return hf.eval()


def test_parity_with_transformers():
    model, vqm = random_tiny(2)
    hf = hf_janus(model, vqm)
    ids, mask = prompts([2, 5, 8])
    B, N, s = ids.shape[0], CFG.image_tokens, 3.0
    gc = dict(bos_token_id=BOS, pad_token_id=PAD, generation_kwargs={"boi_token_id": BOI}, guidance_scale=s,
              num_return_sequences=1)
    from transformers import GenerationConfig
    # greedy CFG tokens (HF argmax; ours top-k 1)
    want = hf.generate(ids, attention_mask=mask.long(), generation_mode="image",
                       generation_config=GenerationConfig(do_sample=False, **gc))
    assert torch.equal(janus.sample(model, ids, mask, cfg_scale=s, top_k=1), want)
    assert torch.equal(sample_janus(model, ids, mask, cfg_scale=s, top_k=1), want)
    # sampled tokens: HF draws from the global RNG, ours from a generator in the same state
    torch.manual_seed(7)
    want = hf.generate(ids, attention_mask=mask.long(), generation_mode="image",
                       generation_config=GenerationConfig(do_sample=True, top_k=10, **gc))
    got = janus.sample(model, ids, mask, cfg_scale=s, top_k=10, generator=torch.Generator().manual_seed(7))
    assert torch.equal(got, want) and len(got.unique()) > 3
    # teacher-forced logits, conditional and null rows (HF: arange positions; ours cumsum(mask) - 1)
    tokens = want
    x = torch.cat([ids, janus.null_prompt(ids, mask, CFG)[0]])
    m, z = torch.cat([mask, mask]), tokens.repeat(2, 1)
    with torch.no_grad():
        emb = torch.cat([hf.get_input_embeddings()(x), hf.prepare_embeddings_for_image_generation(z[:, :-1])], 1)
        am = torch.cat([m, torch.ones(2 * B, N - 1, dtype=torch.bool)], 1).long()
        h = hf.model.language_model(inputs_embeds=emb, attention_mask=am).last_hidden_state
        want_logits = hf.model.generation_head(h[:, x.shape[1] - 1:])
        got_logits = model(z, x, m)
    torch.testing.assert_close(got_logits, want_logits, atol=1e-4, rtol=0)
    # VQ decode of the same tokens (HF renames of gen_vision_model)
    with torch.no_grad():
        torch.testing.assert_close(vqm.decode_indices(tokens), hf.model.vqmodel.decode(tokens), atol=1e-4, rtol=0)


def test_rope_and_rms_norm_round_as_transformers_llama_in_bf16():
    """Under bf16 autocast q / k / the residual stream are bf16 while the weights and RoPE tables are fp32: HF Llama's
    apply_rotary_pos_emb then computes in fp32 (promotion; attention rounds to bf16) and LlamaRMSNorm takes the variance
    in fp32 and rounds before the weight. janus.apply_rope / rms_norm give the same bits (the parity test is fp32)."""
    ml = pytest.importorskip("transformers.models.llama.modeling_llama")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, CFG.n_head, 7, CFG.head_dim, generator=g).bfloat16()                  # (R,H,S,hd)
    cos, sin = janus.rope_cos_sin(CFG, torch.arange(7).repeat(2, 1) + torch.tensor([[0], [3]]))
    ref = ml.apply_rotary_pos_emb(x, x, cos, sin)[0]
    assert ref.dtype == torch.float32 and torch.equal(janus.apply_rope(x, cos, sin), ref.bfloat16())
    norm = ml.LlamaRMSNorm(CFG.dim, eps=CFG.norm_eps)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(CFG.dim, generator=g) + 0.5)
    h = (torch.randn(2, 5, CFG.dim, generator=g) * 3).bfloat16()
    assert torch.equal(janus.rms_norm(h, norm.weight, CFG.norm_eps), norm(h))


# ---- loading --------------------------------------------------------------------------------------------------------
def test_load_original_layout_reports_dropped_keys(files):
    path, _ = files["original"]
    model, vqm = janus.load_janus(path, CFG)
    assert model.load_report == {"layout": "original", "dropped": DROPPED_COUNTS, "filled": []}
    assert not model.training and not vqm.training and isinstance(vqm, vq.VQModel)
    assert all(p.dtype == torch.float32 for p in [*model.parameters(), *vqm.parameters()])
    ref, ref_vq = random_tiny(0)                                    # the weights write_tiny_janus saved
    for a, b in ((model, ref), (vqm, ref_vq)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert model.cfg is not CFG                                     # own copy: build_backbone edits .cfg


def test_hf_layout_loads_identical_weights(files):
    (a, avq), (b, bvq) = (janus.load_janus(files[lay][0], CFG) for lay in ("original", "hf"))
    assert b.load_report == {"layout": "hf", "dropped": DROPPED_COUNTS, "filled": ["quantize.codebook_used"]}
    for x, y in ((a, b), (avq, bvq)):
        sx, sy = x.state_dict(), y.state_dict()
        assert sx.keys() == sy.keys() and all(torch.equal(sx[k], sy[k]) for k in sx)


def _rewrite(src, dst, edit):
    sd = torch.load(src, weights_only=True)
    edit(sd)
    torch.save(sd, dst)
    return str(dst)


@pytest.mark.parametrize("case,match", [
    ("missing", "missing keys: language_model.model.norm.weight"),
    ("extra", "unexpected key 'lm_head_extra.weight'"),
    ("misshapen", r"gen_embed.weight: checkpoint \(64, 9\) vs model \(64, 8\)"),
    ("vq_missing", "missing keys: decoder.conv_out.bias"),
    ("corrupt", "corrupt"),
])
def test_strict_loading_errors_name_the_key_and_file(files, tmp_path, case, match):
    src = files["original"][0]
    dst = tmp_path / f"{case}.bin"
    if case == "corrupt":
        dst.write_bytes(open(src, "rb").read()[:1000])
    else:
        _rewrite(src, dst, {"missing": lambda sd: sd.pop("language_model.model.norm.weight"),
                            "extra": lambda sd: sd.update({"lm_head_extra.weight": torch.zeros(2)}),
                            "misshapen": lambda sd: sd.update({"gen_embed.weight": torch.zeros(64, 9)}),
                            "vq_missing": lambda sd: sd.pop("gen_vision_model.decoder.conv_out.bias")}[case])
    with pytest.raises((RuntimeError, FileNotFoundError), match=match) as e:
        janus.load_janus(str(dst), CFG)
    assert str(dst) in str(e.value)


def test_corrupt_hf_file_names_the_file(tmp_path, files):
    dst = tmp_path / "model.safetensors"
    dst.write_bytes(open(files["hf"][0], "rb").read()[:500])
    with pytest.raises(RuntimeError, match="corrupt") as e:
        janus.load_janus(str(dst), CFG)
    assert str(dst) in str(e.value)
    missing = str(tmp_path / "absent" / "model.safetensors")          # not "corrupt": it is not there at all
    with pytest.raises(FileNotFoundError, match="checkpoint not found") as e:
        janus.load_janus(missing, CFG)
    assert missing in str(e.value)


def test_load_prints_what_it_loaded_dropped_and_filled(files, capsys):
    janus.load_janus(files["hf"][0], CFG)
    out = capsys.readouterr().out
    assert out.startswith(f"[load_janus] {files['hf'][0]}: hf layout, ") and "entries loaded" in out
    assert f"dropped (unused for images) {DROPPED_COUNTS}" in out and "filled ['quantize.codebook_used']" in out


def test_configs_that_cannot_build_are_named():
    """A non-square image grid, a width the heads do not divide, an odd head width (rotate_half pairs channels), or a
    tokenizer whose codebook is not the image vocabulary: a ValueError naming the field, before any weight exists."""
    for kw in (dict(image_tokens=15), dict(dim=66), dict(dim=12)):           # 15 not square; 66 % 4; 12 / 4 = 3 odd
        with pytest.raises(ValueError, match=r"square image_tokens \(got .*\) and an even dim / n_head"):
            dataclasses.replace(CFG, **kw)
    assert janus.janus_vq_config(CFG) is janus.JANUS_VQ_CONFIGS["janus_tiny"]
    assert janus.janus_vq_config(janus.JANUS_CONFIGS["janus_pro_1b"]) is vq.VQ_CONFIGS["vq16"]
    for kw in (dict(vq="vq32"), dict(image_vocab=32)):                       # unknown key; 64-code book for V = 32
        with pytest.raises(ValueError, match="codebook_size equals image_vocab"):
            janus.janus_vq_config(dataclasses.replace(CFG, **kw))


def test_full_size_parameter_counts():
    """Janus-Pro-1B's generation path on the meta device. Reference counts: the released architecture
    (deepseek-ai/Janus janus/models/modeling_vlm.py:190-219 with the Janus-Pro-1B config: LlamaModel 2048 wide,
    24 layers, FFN 5632, vocab 102400; gen_embed 16384 x 8; gen_aligner / gen_head MLPs; VQ_16 = LlamaGen VQ-16),
    counted from the upstream modules instantiated with random weights: 1,556,937,355 without lm_head."""
    with torch.device("meta"):
        model = janus.JanusGen(janus.JANUS_CONFIGS["janus_pro_1b"])
        vqm = vq.VQModel(janus.janus_vq_config(janus.JANUS_CONFIGS["janus_pro_1b"]))
    n = {k: sum(p.numel() for p in m.parameters()) for k, m in (
        ("body", model.language_model.model), ("gen_embed", model.gen_embed), ("gen_aligner", model.gen_aligner),
        ("gen_head", model.gen_head), ("vq", vqm))}
    assert n == {"body": 1_442_940_928, "gen_embed": 131_072, "gen_aligner": 4_214_784, "gen_head": 37_767_168,
                 "vq": 71_883_403}
    # the body in closed form: embeddings + 24 x (q,k,v,o + gate,up,down + 2 norms) + final norm
    assert n["body"] == 102400 * 2048 + 24 * (4 * 2048 ** 2 + 3 * 2048 * 5632 + 2 * 2048) + 2048
    assert sum(n.values()) == 1_556_937_355
    assert len(model.state_dict()) == 1 + 24 * 9 + 1 + 1 + 4 + 4 and len(vqm.state_dict()) == 344


# ---- text side ------------------------------------------------------------------------------------------------------
def test_text_encoder_template_left_padding_and_special_ids(files):
    tok_dir = files["original"][1]
    enc = text_encoders.JanusTextEncoder(tok_dir, CFG)
    ids, mask = enc(["a red cat ", "a small blue circle on the left"])
    assert ids.dtype == torch.long and mask.dtype == torch.bool and ids.shape == mask.shape
    assert mask[1].all() and mask[0].tolist() == [False] * 4 + [True] * 9 and (ids[0, :4] == PAD).all()
    toks = enc.tokenizer.convert_ids_to_tokens(ids[0, 4:].tolist())
    assert toks == ["<｜begin▁of▁sentence｜>", "<|User|>", ":", "a", "red", "cat", "<|Assistant|>", ":",
                    "<begin_of_image>"]
    prompt = text_encoders.JanusTextEncoder.prompt(" a red cat ")
    assert prompt == "<|User|>: a red cat\n\n<|Assistant|>:<begin_of_image>"
    model = random_tiny(0)[0]                                       # the prompts feed the policy as they are
    assert janus.sample(model, ids, mask, cfg_scale=5.0, top_k=1).shape == (2, CFG.image_tokens)
    bad = text_encoders.JanusTextEncoder(tok_dir, dataclasses.replace(CFG, boi_id=249))
    with pytest.raises(ValueError, match=r"<begin_of_image>: tokenizer \[253\] vs config \[249\]"):
        bad(["a cat"])
    bad = text_encoders.JanusTextEncoder(tok_dir, dataclasses.replace(CFG, pad_id=7))
    with pytest.raises(ValueError, match="tokenizer 252 vs config 7"):
        bad(["a cat"])
    assert SPECIALS[text_encoders.PAD] == PAD


def test_text_encoder_refuses_a_tokenizer_that_glues_words(files, tmp_path):
    # the failure of some transformers 5.x releases on Janus's byte-level BPE: words lose their spaces, while BOS,
    # pad and <begin_of_image> still check out
    from tokenizers import Tokenizer, decoders
    import shutil
    d = tmp_path / "glued"
    shutil.copytree(files["original"][1], d)
    tk = Tokenizer.from_file(str(d / "tokenizer.json"))
    tk.decoder = decoders.Fuse()                                  # decode concatenates the tokens
    tk.save(str(d / "tokenizer.json"))
    with pytest.raises(ValueError, match="turns 'a photo of a red cat' into 'aphotoofaredcat'"):
        text_encoders.JanusTextEncoder(str(d), CFG)(["a red cat"])


def test_text_encoder_offline_without_files_says_what_to_download(tmp_path):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"                  # tests/conftest.py
    enc = text_encoders.JanusTextEncoder(str(tmp_path / "nowhere"), CFG)
    with pytest.raises(FileNotFoundError, match="tokenizer.json") as e:
        enc(["a cat"])
    assert "deepseek-ai/Janus-Pro-1B" in str(e.value)


@pytest.mark.parametrize("fn", [janus.sample, sample_janus])
def test_sampler_refuses_nan_logits(model, fn):
    broken = janus.JanusGen(model.cfg)
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        broken.gen_head.vision_head.bias.fill_(float("nan"))
    ids, mask = prompts([2])
    with pytest.raises(FloatingPointError, match="non-finite logits"):
        fn(broken, ids, mask, cfg_scale=5.0, generator=torch.Generator().manual_seed(0))
