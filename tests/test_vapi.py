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
