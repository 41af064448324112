"""vapi.py: contextual noise, position-wise sampling, reconstruction reward, CE prior.

Run: pytest -q tests/test_vapi.py
"""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import vapi

SETTINGS = settings(max_examples=25, deadline=None)


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------ contextual noise

def test_noise_xi0_identity_xi1_changes_about_1_minus_1_over_K():
    z = torch.randint(0, 4, (50, 400), generator=gen(0))
    same, s = vapi.noisy_context(z, 0.0, 4, gen(1))
    assert torch.equal(same, z) and s["frac_replaced"] == 0.0 and s["frac_changed"] == 0.0
    noisy, s = vapi.noisy_context(z, 1.0, 4, gen(1))
    assert s["frac_replaced"] == 1.0
    assert abs(s["frac_changed"] - 0.75) < 0.01                # 20,000 tokens: sd ~0.003
    assert noisy.dtype == z.dtype and int(noisy.min()) >= 0 and int(noisy.max()) < 4
    counts = torch.bincount(noisy.reshape(-1), minlength=4).float() / noisy.numel()
    assert torch.allclose(counts, torch.full((4,), 0.25), atol=0.015)   # uniform replacement


@SETTINGS
@given(st.floats(0.05, 0.95), st.integers(0, 1000))
def test_noise_rate_and_determinism(xi, seed):
    z = torch.randint(0, 1000, (20, 256), generator=gen(seed))
    a, s = vapi.noisy_context(z, xi, 1000, gen(seed))
    b, _ = vapi.noisy_context(z, xi, 1000, gen(seed))
    assert torch.equal(a, b)                                   # same generator state -> same corruption
    assert abs(s["frac_replaced"] - xi) < 0.05                 # 5,120 tokens: sd <= 0.007
    assert s["frac_changed"] == pytest.approx(float((a != z).float().mean()))
    c, _ = vapi.noisy_context(z, xi, 1000, gen(seed + 1))
    assert not torch.equal(a, c)


def test_noise_bad_input():
    z = torch.randint(0, 8, (2, 5), generator=gen(0))
    with pytest.raises(ValueError, match="xi"):
        vapi.noisy_context(z, 1.5, 8, gen(0))
    with pytest.raises(ValueError, match="wrong K"):
        vapi.noisy_context(z, 0.5, 4, gen(0))


# ------------------------------------------------------------------------------------------ position-wise sampling

def test_onehot_logits_reproduce_argmax_image_major():
    B, N, V, G = 3, 7, 11, 5
    target = torch.randint(0, V, (B, N), generator=gen(0))
    logits = torch.full((B, N, V), -1e4).scatter(-1, target[..., None], 10.0)
    tokens, logp = vapi.positionwise_sample(logits, G, gen(1))
    assert tokens.shape == (B * G, N) and tokens.dtype == torch.int64
    assert torch.equal(tokens, target.repeat_interleave(G, 0))   # row b*G + j is a sample for image b
    assert torch.allclose(logp, torch.zeros(B * G, N), atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_positionwise_frequencies_follow_softmax(temperature):
    logits = torch.log(torch.tensor([[[0.2, 0.3, 0.5], [0.7, 0.2, 0.1]]]))       # B=1, N=2, V=3
    tokens, logp = vapi.positionwise_sample(logits, 20000, gen(0), temperature=temperature)
    p = torch.softmax(logits / temperature, -1)[0]
    for t in range(2):
        freq = torch.bincount(tokens[:, t], minlength=3).float() / tokens.shape[0]
        assert torch.allclose(freq, p[t], atol=0.015)
    assert torch.allclose(logp, torch.log(p[torch.arange(2)[None, :], tokens]), atol=1e-6)
    a, _ = vapi.positionwise_sample(logits, 50, gen(3), temperature=temperature)
    b, _ = vapi.positionwise_sample(logits, 50, gen(3), temperature=temperature)
    assert torch.equal(a, b)


def test_positionwise_logprobs_match_repeat_and_gather_and_carry_grad():
    B, N, V, G = 2, 4, 6, 3
    logits = torch.randn(B, N, V, generator=gen(0), requires_grad=True)
    tokens, _ = vapi.positionwise_sample(logits.detach(), G, gen(1))
    lp = vapi.positionwise_logprobs(logits, tokens, temperature=1.5)
    ref = torch.log_softmax(logits / 1.5, -1).repeat_interleave(G, 0).gather(-1, tokens[..., None])[..., 0]
    assert torch.allclose(lp, ref, atol=1e-6)
    lp.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------ reward, CE prior

def l1(a, b):
    return (a - b).abs().flatten(1).mean(1)


@SETTINGS
@given(st.integers(0, 10_000), st.floats(1e-3, 1.0))
def test_recon_reward_max_at_perfect_reconstruction(seed, scale):
    x = torch.rand(4, 3, 8, 8, generator=gen(seed)) * 2 - 1
    r, s = vapi.recon_reward(x.clone(), x, l1)
    assert torch.equal(r, torch.zeros(4)) and s["mse"] == 0.0
    noise = torch.randn(4, 3, 8, 8, generator=gen(seed + 1)) * scale
    r2, s2 = vapi.recon_reward(x + noise, x, l1)
    assert torch.all(r2 < 0)
    expect = -((noise ** 2).flatten(1).mean(1) + noise.abs().flatten(1).mean(1))
    assert torch.allclose(r2, expect, atol=1e-6)
    r3, _ = vapi.recon_reward(x + noise, x, l1, rec_weight=0.0)
    assert torch.allclose(r3, -noise.abs().flatten(1).mean(1), atol=1e-6)


def test_recon_reward_shape_error():
    with pytest.raises(ValueError, match="repeat the GT"):
        vapi.recon_reward(torch.zeros(8, 3, 4, 4), torch.zeros(2, 3, 4, 4), l1)


def test_ce_prior_is_the_training_cross_entropy():
    B, N, V = 3, 9, 13
    logits = torch.randn(B, N, V, generator=gen(0), requires_grad=True)
    z = torch.randint(0, V, (B, N), generator=gen(1))
    loss, s = vapi.ce_prior(logits, z)
    ref = F.cross_entropy(logits.view(-1, V), z.view(-1))      # LlamaGen's training loss
    assert torch.allclose(loss, ref)
    assert s["ce"] == pytest.approx(float(ref.detach()), rel=1e-6)
    assert s["token_acc"] == pytest.approx(float((logits.argmax(-1) == z).float().mean()))
    (g,) = torch.autograd.grad(loss, logits)
    assert torch.allclose(g, (torch.softmax(logits.detach(), -1) - F.one_hot(z, V)) / (B * N), atol=1e-6)


# ------------------------------------------------------------------------------------------ gaps found by mutation
# (each test below fails on at least one mutant of vapi.py that the tests above let through)

def test_noise_input_checks_at_the_boundaries():
    """tokens must be (B, N) integer codes in [0, K): K itself and -1 are out of range (also as a single token),
    float or 1-D input is refused."""
    z = torch.tensor([[0, 3], [1, 2]])
    for bad_z, K in ((z, 3), (z - 1, 4)):
        with pytest.raises(ValueError, match="wrong K"):
            vapi.noisy_context(bad_z, 0.5, K, gen(0))
    for bad in (z.float(), z.view(-1)):
        with pytest.raises(ValueError, match="integer codes"):
            vapi.noisy_context(bad, 0.5, 4, gen(0))
    with pytest.raises(ValueError, match="wrong K"):
        vapi.noisy_context(torch.tensor([[5]]), 0.5, 4, gen(0))
    empty, _ = vapi.noisy_context(torch.zeros(0, 5, dtype=torch.long), 0.5, 4, gen(0))   # an empty batch passes
    assert empty.shape == (0, 5)


def test_noise_frac_replaced_is_exact_when_every_replacement_changes_the_token():
    """With K = 2^40 a replacement draws the original code with probability ~1e-12, so the two reported rates
    (frac_replaced from the mask, frac_changed from the tokens) must agree to float precision."""
    z = torch.randint(0, 1000, (20, 256), generator=gen(0))
    _, s = vapi.noisy_context(z, 0.3, 2 ** 40, gen(1))
    assert s["frac_replaced"] == pytest.approx(s["frac_changed"], rel=1e-6) and 0.25 < s["frac_replaced"] < 0.35


def test_positionwise_defaults_low_precision_logits_and_checks():
    """Default temperature is 1 (plain softmax, as released); bf16 logits are sampled and scored in fp32 (the PPO
    ratio exp(logp - logp_old) needs fp32 log-probs); G >= 1 (G = 1 allowed), T > 0, shapes and devices checked."""
    logits = torch.randn(2, 3, 5, generator=gen(0)).to(torch.bfloat16)
    tokens, logp = vapi.positionwise_sample(logits, 400, gen(1))
    t32, _ = vapi.positionwise_sample(logits.float(), 400, gen(1))
    assert torch.equal(tokens, t32)                            # same draws as from the fp32 copy of the logits
    ref = torch.log_softmax(logits.float(), -1).repeat_interleave(400, 0).gather(-1, tokens[..., None])[..., 0]
    assert logp.dtype == torch.float32 and torch.allclose(logp, ref, atol=1e-6)
    lp = vapi.positionwise_logprobs(logits, tokens)
    assert lp.dtype == torch.float32 and torch.allclose(lp, ref, atol=1e-6)
    one, _ = vapi.positionwise_sample(logits.float(), 1, gen(0))
    assert one.shape == (2, 3)
    for G in (0, 1.5):
        with pytest.raises(ValueError, match="G must be"):
            vapi.positionwise_sample(logits, G, gen(0))
    with pytest.raises(ValueError, match="temperature"):
        vapi.positionwise_sample(logits, 2, gen(0), temperature=0.0)
    with pytest.raises(ValueError, match="logits must be"):
        vapi.positionwise_sample(logits[0], 2, gen(0))
    with pytest.raises(ValueError, match="generator on"):
        vapi.positionwise_sample(torch.zeros(1, 2, 3, device="meta"), 2, gen(0))
    for bad in (torch.zeros(7, 3, dtype=torch.long), torch.zeros(6, 4, dtype=torch.long),
                torch.zeros(6, dtype=torch.long)):
        with pytest.raises(ValueError, match="samples must be"):
            vapi.positionwise_logprobs(logits, bad)


def test_recon_reward_rejects_a_dist_that_does_not_return_one_value_per_image():
    """dist must return (B*G,): a (B*G, 1) result would broadcast against the (B*G,) MSE into a (B*G, B*G) reward."""
    x = torch.zeros(4, 3, 2, 2)
    with pytest.raises(ValueError, match="dist must return"):
        vapi.recon_reward(x, x + 0.5, lambda a, b: l1(a, b)[:, None])


def test_recon_reward_perceptual_weight_and_stats_by_hand():
    """r = -(w_rec MSE + w_p dist) with both weights applied; stats are batch means and the unbiased std of r
    (0 for one image)."""
    x_gt = torch.zeros(2, 1, 1, 2)
    x_rec = torch.tensor([1.0, 1.0, 2.0, 0.0]).view(2, 1, 1, 2)         # MSE (1, 2), L1 (1, 1)
    r, s = vapi.recon_reward(x_rec, x_gt, l1, rec_weight=2.0, perceptual_weight=0.5)
    assert torch.allclose(r, torch.tensor([-2.5, -4.5]))
    assert s["mse"] == pytest.approx(1.5) and s["perceptual"] == pytest.approx(1.0)
    assert s["reward_mean"] == pytest.approx(-3.5) and s["reward_std"] == pytest.approx(2 ** 0.5)
    _, s1 = vapi.recon_reward(x_rec[:1], x_gt[:1], l1)
    assert s1["reward_std"] == 0.0


def test_ce_prior_shape_checks_and_fp32_loss_for_bf16_logits():
    """targets must be (B, N) for (B, N, V) logits; bf16 logits give the fp32 cross-entropy of their values."""
    logits = torch.randn(2, 3, 7, generator=gen(0))
    with pytest.raises(ValueError, match="logits must be"):
        vapi.ce_prior(logits, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="logits must be"):
        vapi.ce_prior(logits[0], torch.zeros(3, dtype=torch.long))
    lb = (logits * 30).to(torch.bfloat16)
    z = torch.randint(0, 7, (2, 3), generator=gen(1))
    loss, _ = vapi.ce_prior(lb, z)
    ref = F.cross_entropy(lb.float().view(-1, 7), z.view(-1))
    assert loss.dtype == torch.float32 and torch.allclose(loss, ref, rtol=1e-6)
