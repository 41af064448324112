"""ranke.py: advantages, clipped surrogate + KL, rank weights, tau schedule, GAN/recon terms, EMA.

Run: pytest -q tests/test_ranke.py
"""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings, strategies as st

import ranke

SETTINGS = settings(max_examples=30, deadline=None)


def rewards(draw, B, G, lo=-10.0, hi=10.0):
    vals = draw(st.lists(st.floats(lo, hi, allow_nan=False, width=64), min_size=B * G, max_size=B * G))
    return torch.tensor(vals, dtype=torch.float64)


# ------------------------------------------------------------------------------------------ group advantages

@st.composite
def reward_batches(draw):
    B, G = draw(st.integers(1, 4)), draw(st.integers(3, 8))      # G <= 8: |A| <= 2.47, the clamp never bites
    return rewards(draw, B, G), G


@SETTINGS
@given(reward_batches())
def test_advantages_zero_mean_unit_unbiased_std(batch):
    r, G = batch
    adv, stats = ranke.group_advantages(r, G)
    for rg, ag in zip(r.view(-1, G), adv.view(-1, G)):
        if rg.std() > 1e-3:
            assert abs(float(ag.sum())) < 1e-9
            assert abs(float(ag.std(unbiased=True)) - 1.0) < 1e-9
        elif rg.std() <= 1e-4:
            assert torch.all(ag == 0)
    assert 0.0 <= stats["frac_degenerate"] <= 1.0


@SETTINGS
@given(reward_batches(), st.floats(0.1, 10.0), st.floats(-10.0, 10.0))
def test_advantages_invariant_to_positive_affine(batch, a, b):
    r, G = batch
    adv, _ = ranke.group_advantages(r, G)
    adv2, _ = ranke.group_advantages(a * r + b, G)
    keep = r.view(-1, G).std(dim=1) > 1e-2                     # both versions clearly non-degenerate
    assert torch.allclose(adv.view(-1, G)[keep], adv2.view(-1, G)[keep], atol=1e-8)


def test_degenerate_groups_exactly_zero_and_stats():
    r = torch.tensor([2.0, 2.0, 2.0, 2.0, 1.0, 1.0 + 5e-5, 1.0, 1.0, 0.0, 1.0, 2.0, 3.0])
    adv, stats = ranke.group_advantages(r, 4)
    assert torch.equal(adv[:8], torch.zeros(8))                # constant group and std 2.5e-5 <= 1e-4 group
    assert torch.allclose(adv[8:], (r[8:] - 1.5) / r[8:].std())
    assert stats["frac_degenerate"] == pytest.approx(2 / 3)
    assert stats["reward_mean"] == pytest.approx(float(r.mean()))


def test_advantage_clamp_bound():
    G = 64                                                     # one outlier: z = (G-1)/sqrt(G) = 7.875 > 5
    r = torch.zeros(G)
    r[3] = 1.0
    adv, _ = ranke.group_advantages(r, G)
    assert float(adv.max()) == 5.0 and float(adv[3]) == 5.0
    assert float(adv.abs().max()) <= 5.0
    adv_wide, _ = ranke.group_advantages(r, G, clip=100.0)
    assert float(adv_wide[3]) == pytest.approx(63 / 8, rel=1e-5)


def test_advantage_bad_input():
    with pytest.raises(ValueError, match="multiple of G"):
        ranke.group_advantages(torch.zeros(7), 4)
    with pytest.raises(ValueError, match="G must be"):
        ranke.group_advantages(torch.zeros(8), 1)


# ------------------------------------------------------------------------------------------ policy loss

@SETTINGS
@given(st.integers(1, 6), st.integers(1, 5), st.integers(0, 10_000), st.floats(0.0, 1.0),
       st.sampled_from(["k2", "k3"]))
def test_on_policy_gradient_is_reinforce(rows, N, seed, beta, est):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(rows, N, generator=g, dtype=torch.float64) * 5).requires_grad_()
    adv = torch.randn(rows, generator=g, dtype=torch.float64)
    # logp_ref == logp: the KL term and its gradient vanish, so the gradient is pure REINFORCE for any beta
    loss, stats = ranke.policy_loss(logp, logp.detach().clone(), logp.detach().clone(), adv, beta=beta,
                                    kl_estimator=est)
    loss.backward()
    expect = (-adv / (rows * N))[:, None].expand(rows, N)
    assert torch.allclose(logp.grad, expect, atol=1e-12)
    assert stats["kl"] == 0.0 and stats["clip_frac"] == 0.0 and stats["ratio_mean"] == pytest.approx(1.0)
    assert stats["pg_loss"] == pytest.approx(-float(adv.mean()), abs=1e-9)


@SETTINGS
@given(st.lists(st.tuples(st.floats(0.3, 2.0), st.sampled_from([-2.0, -0.5, 0.7, 3.0])), min_size=1, max_size=12),
       st.sampled_from([0.1, 0.2, 0.3]))
def test_clip_binds_exactly_outside_trust_region_in_advantage_direction(pairs, eps):
    pairs = [(rho, a) for rho, a in pairs if abs(rho - (1 + eps)) > 1e-3 and abs(rho - (1 - eps)) > 1e-3]
    if not pairs:
        return
    rho = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    adv = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    logp = torch.zeros(len(pairs), 1, dtype=torch.float64, requires_grad=True)
    logp_old = -torch.log(rho)[:, None]                        # ratio = exp(logp - logp_old) = rho
    loss, stats = ranke.policy_loss(logp, logp_old, logp.detach(), adv, clip_eps=eps, beta=0.0)
    loss.backward()
    binds = ((rho > 1 + eps) & (adv > 0)) | ((rho < 1 - eps) & (adv < 0))
    grad = logp.grad[:, 0]
    assert torch.all(grad[binds] == 0)
    assert torch.allclose(grad[~binds], -adv[~binds] * rho[~binds] / len(pairs))
    assert torch.all(grad[~binds] != 0)
    assert stats["clip_frac"] == pytest.approx(float(binds.double().mean()))
    clipped = rho.clamp(1 - eps, 1 + eps)
    assert stats["pg_loss"] == pytest.approx(float(-torch.minimum(rho * adv, clipped * adv).mean()))


@pytest.mark.parametrize("est", ["k2", "k3"])
def test_kl_and_its_gradient_vanish_at_reference(est):
    logp = (-torch.rand(4, 3, generator=torch.Generator().manual_seed(0))).requires_grad_()
    loss, stats = ranke.policy_loss(logp, logp.detach(), logp.detach(), torch.zeros(4), beta=1.0, kl_estimator=est)
    loss.backward()
    assert stats["kl"] == 0.0 and float(loss.detach()) == 0.0
    assert torch.all(logp.grad == 0)


@SETTINGS
@given(st.lists(st.floats(-6.0, 6.0), min_size=1, max_size=16))
@example([-3.8298580025785275e-11])       # exp(x) - x - 1 rounds to -1.1e-16 here; k3 must still be >= 0
def test_kl_estimator_values_and_k3_nonnegative(ds):
    d = torch.tensor(ds, dtype=torch.float64)[:, None]         # d = logp - logp_ref, one token per row
    logp = torch.zeros_like(d).requires_grad_()
    adv = torch.zeros(d.shape[0], dtype=torch.float64)
    _, s2 = ranke.policy_loss(logp, logp.detach(), -d, adv, beta=1.0, kl_estimator="k2")
    assert s2["kl"] == pytest.approx(float((0.5 * d ** 2).mean()), rel=1e-9, abs=1e-12)
    for row in d:                                              # k3 >= 0 token by token
        _, s3 = ranke.policy_loss(logp[:1], logp[:1].detach(), -row[None], adv[:1], beta=1.0, kl_estimator="k3")
        x = float(-row)                                        # ref - logp
        assert s3["kl"] == pytest.approx(math.exp(x) - x - 1, rel=1e-9, abs=1e-12)
        assert s3["kl"] >= 0.0


def test_policy_loss_kl_gradient_direction_and_bad_input():
    logp = torch.tensor([[0.0]], requires_grad=True)
    loss, _ = ranke.policy_loss(logp, logp.detach(), torch.tensor([[-1.0]]), torch.zeros(1), beta=2.0)
    loss.backward()
    assert float(logp.grad) == pytest.approx(2.0)              # d/dl of 2 * 1/2 (l + 1)^2 at l = 0
    with pytest.raises(ValueError, match="kl_estimator"):
        ranke.policy_loss(logp, logp, logp, torch.zeros(1), kl_estimator="k1")
    with pytest.raises(ValueError, match="adv must be"):
        ranke.policy_loss(logp, logp, logp, torch.zeros(2))


# ------------------------------------------------------------------------------------------ rank weights, tau

@st.composite
def rank_cases(draw):
    B, G = draw(st.integers(1, 4)), draw(st.integers(2, 8))
    return rewards(draw, B, G, -5.0, 5.0).float(), G, draw(st.integers(1, G)), draw(st.floats(0.1, 10.0))


@SETTINGS
@given(rank_cases())
def test_rank_weights_properties(case):
    r, G, k, tau = case
    idx, w, _ = ranke.rank_weights(r, G, k, tau)
    B = r.numel() // G
    assert idx.dtype == torch.int64 and idx.shape == (B * k,) and w.shape == (B * k,)
    assert abs(float(w.mean()) - 1.0) < 1e-5
    assert torch.all(w >= 0)
    for b in range(B):
        sel = idx[b * k:(b + 1) * k]
        assert torch.all((sel >= b * G) & (sel < (b + 1) * G))
        assert len(set(sel.tolist())) == k
        rest = [i for i in range(b * G, (b + 1) * G) if i not in set(sel.tolist())]
        if rest:                                               # the top k of the prompt
            assert float(r[sel].min()) >= float(r[rest].max())
        rs, ws = r[sel], w[b * k:(b + 1) * k]
        for i in range(k):                                     # monotone: higher reward -> weight not lower
            for j in range(k):
                if rs[i] > rs[j]:
                    assert ws[i] >= ws[j] - 1e-6
                if rs[i] == rs[j]:
                    assert ws[i] == pytest.approx(float(ws[j]), rel=1e-6)


@SETTINGS
@given(rank_cases())
def test_rank_weights_k1_is_best_of_G(case):
    r, G, _, tau = case
    idx, w, _ = ranke.rank_weights(r, G, 1, tau)
    B = r.numel() // G
    assert torch.equal(idx, r.view(B, G).argmax(dim=1) + torch.arange(B) * G)
    assert torch.all(w == 1.0)


def test_rank_weights_huge_tau_uniform_and_hand_example():
    r = torch.tensor([0.1, 0.9, 0.5, 0.3, 2.0, 1.0, 0.0, 3.0])
    idx, w, _ = ranke.rank_weights(r, 4, 3, tau=1e7)
    assert idx.tolist() == [1, 2, 3, 7, 4, 5]
    assert torch.allclose(w, torch.ones(6), atol=1e-5)
    idx, w, _ = ranke.rank_weights(r, 4, 2, tau=1.0)           # softmax([.9,.5]), softmax([3,2]); batch mean 1/2
    p1 = 1 / (1 + math.exp(-0.4))
    p2 = 1 / (1 + math.exp(-1.0))
    assert torch.allclose(w, torch.tensor([p1, 1 - p1, p2, 1 - p2]) * 2, atol=1e-5)
    with pytest.raises(ValueError, match="k must be"):
        ranke.rank_weights(r, 4, 5, 1.0)


def test_tau_schedule_endpoints_and_monotone():
    total = 1000
    taus = [ranke.tau_schedule(t, total)[0] for t in range(0, total + 1, 7)]
    assert ranke.tau_schedule(0, total)[0] == 4.0
    assert ranke.tau_schedule(200, total)[0] == 1.0 and ranke.tau_schedule(950, total)[0] == 1.0
    assert ranke.tau_schedule(100, total)[0] == pytest.approx(2.5)
    assert all(a >= b for a, b in zip(taus, taus[1:]))


# ------------------------------------------------------------------------------------------ GAN / decoder terms

def test_hinge_losses_hand_values():
    d_real = torch.tensor([0.5, 2.0, -1.0]).view(3, 1, 1, 1)
    d_fake = torch.tensor([-2.0, 0.0, 0.5]).view(3, 1, 1, 1)
    loss, s = ranke.disc_hinge_loss(d_real, d_fake, disc_factor=0.5)
    assert float(loss.detach()) == pytest.approx(0.5 * 0.5 * (2.5 / 3 + 2.5 / 3))
    assert s["loss_real"] == pytest.approx(2.5 / 3)
    d = torch.tensor([[1.0, 2.0], [3.0, -1.0]]).view(2, 1, 1, 2)
    loss, _ = ranke.rank_gan_loss(d, torch.tensor([0.5, 1.5]), disc_weight=0.5)
    assert float(loss.detach()) == pytest.approx(0.5 * -(0.5 + 1.0 + 4.5 - 1.5) / 4)


def test_adaptive_weight_hand_values_linear_last_layer():
    W = torch.nn.Parameter(torch.tensor([[0.3, -0.7]]))        # (1, 2) "decoder last layer"
    x1, x2 = torch.tensor([3.0, 4.0]), torch.tensor([1.0, 0.0])
    nll = (W @ x1).sum()                                       # grad_W = x1, norm 5
    g = 2.0 * (W @ x2).sum()                                   # grad_W = 2 x2, norm 2
    w, s = ranke.adaptive_gan_weight(nll, g, W, disc_weight=0.5)
    assert float(w) == pytest.approx(0.5 * 5.0 / (2.0 + 1e-4)) and not w.requires_grad
    assert s["fallback"] == 0.0 and s["nll_grad_norm"] == pytest.approx(5.0)
    w, _ = ranke.adaptive_gan_weight((W @ x1).sum(), 0.0 * W.sum(), W)   # zero GAN grad -> clamp at max_w
    assert float(w) == pytest.approx(0.5 * 1e4)
    with torch.no_grad():
        w, s = ranke.adaptive_gan_weight((W @ x1).sum(), (W @ x2).sum(), W)
    assert float(w) == 0.5 and s["fallback"] == 1.0


def mse_dist(a, b):
    return ((a - b) ** 2).flatten(1).mean(1)


def test_gt_recon_loss_terms_and_detached_weight():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 4, 4, generator=g) * 2 - 1
    h = torch.randn(2, 5, 4, 4, generator=g)
    W = torch.nn.Parameter(torch.randn(3, 5, 1, 1, generator=g) * 0.3)
    x_rec = F.conv2d(h, W)                                     # a linear decoder whose last layer is W
    loss, s = ranke.gt_recon_loss(x, x_rec, None, W, mse_dist, use_gan=False)
    l1, p = (x - x_rec).abs().mean(), mse_dist(x, x_rec).mean()
    assert float(loss.detach()) == pytest.approx(float((l1 + p).detach()))
    assert s["l1"] == pytest.approx(float(l1.detach())) and s["perceptual"] == pytest.approx(float(p.detach()))
    d = x_rec.mean(1, keepdim=True) * 2.0                      # a toy "discriminator"
    loss, s = ranke.gt_recon_loss(x, x_rec, d, W, mse_dist, use_gan=True)
    nll, gl = l1 + p, -d.mean()
    gn = torch.autograd.grad(nll, W, retain_graph=True)[0]
    gg = torch.autograd.grad(gl, W, retain_graph=True)[0]
    aw = 0.5 * gn.norm() / (gg.norm() + 1e-4)
    assert float(loss.detach()) == pytest.approx(float((nll + aw * gl).detach()), rel=1e-5)
    assert s["adaptive_weight"] == pytest.approx(float(aw.detach()), rel=1e-5)
    (gw,) = torch.autograd.grad(loss, W)                       # the weight is a constant in the backward pass
    assert torch.allclose(gw, gn + aw * gg, atol=1e-5)
    with pytest.raises(ValueError, match="d_fake_rec"):
        ranke.gt_recon_loss(x, x_rec, None, W, mse_dist, use_gan=True)


def test_consistency_clamps_and_detaches_ema_and_reward_loss():
    x = torch.zeros(2, 1, 1, 2, requires_grad=True)
    x_ema = torch.tensor([[3.0, 0.5], [-0.2, -4.0]]).view(2, 1, 1, 2).requires_grad_()
    loss, _ = ranke.consistency_loss(x, x_ema, lambda a, b: (a - b).abs().flatten(1).mean(1))
    assert float(loss.detach()) == pytest.approx((1.0 + 0.5 + 0.2 + 1.0) / 4)    # x_ema clamped to [-1, 1]
    loss.backward()
    assert x_ema.grad is None and x.grad is not None
    scores = torch.tensor([1.0, 2.0, -3.0], requires_grad=True)
    loss, _ = ranke.reward_loss(scores, torch.tensor([2.0, 0.5, 0.5]))
    assert float(loss.detach()) == pytest.approx(-(2.0 + 1.0 - 1.5) / 3)
    loss.backward()
    assert torch.allclose(scores.grad, -torch.tensor([2.0, 0.5, 0.5]) / 3)


# ------------------------------------------------------------------------------------------ EMA

def net():
    torch.manual_seed(0)                                       # test-only; library code takes generators
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


def state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_ema_decay_0_copies_decay_1_keeps_and_mix():
    ema, model = net(), net()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()
    model(torch.randn(5, 3))                                   # moves BN running stats and num_batches_tracked
    before = state(ema)
    ranke.ema_update(ema, model, 1.0)                          # floats kept; integer buffers always copied
    src = model.state_dict()
    assert all(torch.equal(v, before[k] if v.is_floating_point() else src[k]) for k, v in ema.state_dict().items())
    assert not torch.equal(before["1.num_batches_tracked"], src["1.num_batches_tracked"])
    ranke.ema_update(ema, model, 0.9)
    for k, v in ema.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, 0.9 * before[k] + 0.1 * src[k], atol=1e-6), k
        else:
            assert torch.equal(v, src[k]), k                   # num_batches_tracked copied
    ranke.ema_update(ema, model, 0.0)
    assert all(torch.equal(v, src[k]) for k, v in ema.state_dict().items())


def test_ema_bf16_ema_of_fp32_model():
    ema, model = net().to(torch.bfloat16), net()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    before = state(ema)
    ranke.ema_update(ema, model, 0.75)
    src = model.state_dict()
    for k, v in ema.state_dict().items():
        assert v.dtype == before[k].dtype
        if v.is_floating_point():
            assert torch.equal(v, (before[k].float() * 0.75 + src[k] * 0.25).to(torch.bfloat16)), k
    ranke.ema_update(ema, model, 0.0)
    assert torch.equal(ema[0].weight, model[0].weight.to(torch.bfloat16))
    with pytest.raises(ValueError, match="differ"):
        ranke.ema_update(torch.nn.Linear(3, 4), model, 0.5)


# ------------------------------------------------------------------------------------------ gaps found by mutation
# (each test below fails on at least one mutant of ranke.py that the tests above let through)

def test_advantage_eps_std_boundary_default_and_low_precision_rewards():
    """docs/method.md §4.1: A = 0 iff s_b <= 1e-4 (inclusive, default 1e-4), math in >= fp32 whatever r's dtype."""
    r = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)     # unbiased std exactly 1.0
    adv, _ = ranke.group_advantages(r, 3, eps_std=1.0)
    assert torch.equal(adv, torch.zeros(3, dtype=torch.float64))            # std == eps_std is degenerate
    adv, _ = ranke.group_advantages(r * 1.5e-4, 3)                          # std 1.5e-4 > default 1e-4: z-scored
    assert torch.allclose(adv, torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="1-D"):
        ranke.group_advantages(torch.zeros(2, 4), 4)
    # bf16 rewards 128..131: their mean 129.5 is not a bf16 number, so a bf16 mean/std would be off by ~0.5
    rb = torch.tensor([128.0, 129.0, 130.0, 131.0], dtype=torch.bfloat16)
    adv, _ = ranke.group_advantages(rb, 4)
    ref = (rb.double() - 129.5) / rb.double().std()
    assert adv.dtype == torch.bfloat16 and torch.allclose(adv.double(), ref, atol=1e-2)


def test_advantage_stats_report_the_returned_tensors():
    """stats: mean / unbiased std of the returned A and the raw rewards' mean / std (checked where A's mean != 0)."""
    adv, s = ranke.group_advantages(torch.tensor([1.0, 3.0], dtype=torch.float64), 2)   # B=1, G=2: A = -+1/sqrt 2
    assert s["std"] == pytest.approx(1.0) and s["reward_std"] == pytest.approx(math.sqrt(2.0))
    assert s["reward_mean"] == pytest.approx(2.0)
    r = torch.zeros(64, dtype=torch.float64)
    r[3] = 1.0                                                 # clamp binds: mean(A) = (5 - 63/8) / 64 != 0
    adv, s = ranke.group_advantages(r, 64)
    assert s["mean"] == pytest.approx((5.0 - 63 / 8) / 64) and s["std"] == pytest.approx(float(adv.std()))


def test_policy_loss_defaults_are_the_papers_eps_and_beta():
    """docs/method.md §4.3 / released config: clip eps = 0.2 and KL beta = 0.05 when not passed."""
    logp = torch.zeros(1, 1, dtype=torch.float64, requires_grad=True)
    logp_old = torch.full((1, 1), -math.log(1.5), dtype=torch.float64)      # rho = 1.5, A = +1: clipped at 1.2
    loss, s = ranke.policy_loss(logp, logp_old, torch.full((1, 1), -2.0, dtype=torch.float64),
                                torch.ones(1, dtype=torch.float64))
    assert s["pg_loss"] == pytest.approx(-1.2)
    assert s["kl"] == pytest.approx(2.0)                       # 1/2 (0 - (-2))^2
    assert s["loss"] == pytest.approx(-1.2 + 0.05 * 2.0)


def test_policy_loss_treats_old_ref_and_advantages_as_constants():
    """logp_old, logp_ref and adv are detached inside: passing graph-connected tensors changes no gradient."""
    logp = torch.tensor([[-0.3, -1.2], [-2.0, -0.1]], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([0.7, -1.1], dtype=torch.float64, requires_grad=True)
    ref = (logp.detach() - 0.25).requires_grad_()
    loss, _ = ranke.policy_loss(logp, logp, ref, adv, beta=0.5)             # logp_old IS logp (rho == 1)
    loss.backward()
    expect = (-adv.detach()[:, None] + 0.5 * 0.25) / 4          # REINFORCE + beta (l - l_ref) per token, mean of 4
    assert torch.allclose(logp.grad, expect.expand(2, 2))
    assert adv.grad is None and ref.grad is None


def test_policy_loss_approx_kl_stat_and_input_checks():
    """approx_kl = mean (rho - 1 - log rho) (k3 of old vs new); shape, clip_eps > 0 checks."""
    logp = torch.zeros(1, 2, dtype=torch.float64)
    old = torch.tensor([[-0.5, 0.0]], dtype=torch.float64)     # rho = (e^0.5, 1)
    _, s = ranke.policy_loss(logp, old, logp, torch.zeros(1, dtype=torch.float64))
    assert s["approx_kl"] == pytest.approx((math.exp(0.5) - 1.5) / 2)
    assert s["ratio_mean"] == pytest.approx((math.exp(0.5) + 1) / 2)
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="same"):
        ranke.policy_loss(z, torch.zeros(2, 4), z, torch.zeros(2))       # logp_old mismatched, logp_ref fine
    with pytest.raises(ValueError, match="logp must be"):
        ranke.policy_loss(torch.zeros(6), torch.zeros(6), torch.zeros(6), torch.zeros(6))
    with pytest.raises(ValueError, match="clip_eps"):
        ranke.policy_loss(z, z, z, torch.zeros(2), clip_eps=0.0)


def test_rank_weights_ties_checks_dtype_and_stats():
    """Ties go to the lower index (stable sort); tau > 0, k >= 1; weights are fp32 constants; stats by hand."""
    r = torch.zeros(64)
    idx, _, _ = ranke.rank_weights(r, 64, 3, 1.0)
    assert idx.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="tau"):
        ranke.rank_weights(r, 64, 3, 0.0)
    with pytest.raises(ValueError, match="k must be"):
        ranke.rank_weights(r, 64, 0, 1.0)
    rg = torch.tensor([0.1, 0.9, 0.5, 0.3, 2.0, 1.0, 0.0, 3.0], requires_grad=True)
    idx, w, s = ranke.rank_weights(rg, 4, 2, tau=1.0)
    assert not w.requires_grad and w.dtype == torch.float32
    p1, p2 = 1 / (1 + math.exp(-0.4)), 1 / (1 + math.exp(-1.0))
    assert s["w_min"] == pytest.approx(2 * (1 - p2), rel=1e-5) and s["w_max"] == pytest.approx(2 * p2, rel=1e-5)
    assert s["sel_reward_mean"] == pytest.approx(1.6, rel=1e-6) and s["reward_mean"] == pytest.approx(0.975, rel=1e-6)
    _, _, s = ranke.rank_weights(torch.tensor([1, 4, 2, 2]), 2, 1, 1.0)    # integer rewards work
    assert s["reward_mean"] == 2.25
    # bf16 rewards: softmax([1, 0] / tau) computed in fp32, not bf16
    _, w, _ = ranke.rank_weights(torch.tensor([1.0, 0.0], dtype=torch.bfloat16), 2, 2, tau=3.0)
    p = 1 / (1 + math.exp(-1 / 3))
    assert torch.allclose(w, torch.tensor([2 * p, 2 * (1 - p)]), atol=1e-6)


def test_uniform_selection_rows_weights_and_seeding():
    """Uniform-GAN ablation: k distinct rows of prompt b (rows b*G..b*G+G-1), weights 1, prompt b seeded seed + b."""
    B, G, k = 4, 6, 3
    idx, w, s = ranke.uniform_selection(B, G, k, seed=11)
    assert idx.shape == (B * k,) and idx.dtype == torch.int64 and torch.equal(w, torch.ones(B * k)) and s == {}
    for b in range(B):
        sel = idx[b * k:(b + 1) * k]
        assert len(set(sel.tolist())) == k and bool(((sel >= b * G) & (sel < (b + 1) * G)).all())
        one, _, _ = ranke.uniform_selection(1, G, k, seed=11 + b)          # prompt b == prompt 0 of seed + b
        assert torch.equal(sel - b * G, one)
    assert torch.equal(idx, ranke.uniform_selection(B, G, k, seed=11)[0])
    assert ranke.uniform_selection(1, G, G, seed=0)[0].sort().values.tolist() == list(range(G))
    assert ranke.uniform_selection(2, G, 1, seed=0)[0].shape == (2,)           # k = 1 (one sample per prompt) is valid
    for bad in (0, G + 1):
        with pytest.raises(ValueError, match="k must be"):
            ranke.uniform_selection(B, G, bad, seed=0)


def test_tau_schedule_input_checks():
    """total_steps and frac must be > 0 (either one alone is an error); total_steps = 1 is fine."""
    assert ranke.tau_schedule(0, 1)[0] == 4.0
    for total, frac in ((0, 0.2), (100, 0.0), (-5, 0.2)):
        with pytest.raises(ValueError, match="total_steps"):
            ranke.tau_schedule(0, total, frac=frac)


def test_gan_losses_defaults_hand_values_and_checks():
    """Hinge D loss with asymmetric logits (relu(1 - D(real)), relu(1 + D(fake))), default weights 0.5, logit stats,
    Rank-GAN weights detached, and shape checks."""
    d_real = torch.tensor([3.0, 0.0]).view(2, 1, 1, 1)         # relu(1 - .) = (0, 1); relu(.) would be (3, 0)
    d_fake = torch.tensor([-3.0, 1.0]).view(2, 1, 1, 1)        # relu(1 + .) = (0, 2)
    loss, s = ranke.disc_hinge_loss(d_real, d_fake)
    assert float(loss) == pytest.approx(0.5 * 0.5 * (0.5 + 1.0))
    assert s["logits_real"] == pytest.approx(1.5) and s["logits_fake"] == pytest.approx(-1.0)
    w = torch.tensor([2.0, 0.5], requires_grad=True)
    d = torch.tensor([1.0, 4.0]).view(2, 1, 1, 1).requires_grad_()
    loss, s = ranke.rank_gan_loss(d, w)
    assert float(loss.detach()) == pytest.approx(0.5 * -(2.0 + 2.0) / 2) and s["logits_fake"] == pytest.approx(2.5)
    loss.backward()
    assert w.grad is None and torch.allclose(d.grad.view(-1), -0.5 * w.detach() / 2)
    with pytest.raises(ValueError, match="d_fake must be"):
        ranke.rank_gan_loss(torch.zeros(2, 1, 1, 1), torch.ones(3))
    with pytest.raises(ValueError, match="d_fake must be"):
        ranke.rank_gan_loss(torch.zeros(2, 1, 1, 1), torch.ones(2, 1))


def test_adaptive_weight_below_one_is_not_clamped_up():
    """The clamp is to [0, max_w]: a GAN gradient larger than the NLL one gives a ratio < 1, kept as is."""
    W = torch.nn.Parameter(torch.tensor([[0.3, -0.7]]))
    nll = (W @ torch.tensor([0.6, 0.8])).sum()                 # grad_W norm 1
    g = (W @ torch.tensor([0.0, 4.0])).sum()                   # grad_W norm 4
    w, _ = ranke.adaptive_gan_weight(nll, g, W, disc_weight=1.0)
    assert float(w) == pytest.approx(1.0 / (4.0 + 1e-4))


def test_adaptive_weight_falls_back_when_one_loss_is_constant():
    """No gradient can exist if EITHER loss does not require grad: the fixed disc_weight, not an autograd error."""
    W = torch.nn.Parameter(torch.tensor([[0.3, -0.7]]))
    nll = (W @ torch.tensor([3.0, 4.0])).sum()
    w, s = ranke.adaptive_gan_weight(nll, torch.tensor(1.0), W, disc_weight=0.25)
    assert float(w) == 0.25 and s["fallback"] == 1.0
    w, s = ranke.adaptive_gan_weight(torch.tensor(1.0), nll, W, disc_weight=0.25)
    assert float(w) == 0.25 and s["fallback"] == 1.0


def test_decoder_terms_input_checks_and_stats():
    """Shape checks of gt_recon_loss / consistency_loss / reward_loss, the reported loss, reward-loss w detached."""
    x = torch.zeros(2, 3, 4, 4)
    W = torch.nn.Parameter(torch.ones(1))
    per_image = lambda a, b: (a - b).abs().flatten(1).mean(1)  # noqa: E731
    per_pixel = lambda a, b: (a - b).abs().mean(1)             # noqa: E731  (B, H, W): wrong
    pooled = lambda a, b: (a - b).abs().mean()[None]           # noqa: E731  (1,): wrong B
    with pytest.raises(ValueError, match="same shape"):
        ranke.gt_recon_loss(x, torch.zeros(2, 3, 4, 2), None, W, per_image, use_gan=False)
    for bad in (per_pixel, pooled):
        with pytest.raises(ValueError, match="dist must return"):
            ranke.gt_recon_loss(x, x + 0.5, None, W, bad, use_gan=False)
        with pytest.raises(ValueError, match="dist must return"):
            ranke.consistency_loss(x, x + 0.5, bad)
    with pytest.raises(ValueError, match="same shape"):
        ranke.consistency_loss(x, torch.zeros(2, 3, 4, 2), per_image)
    loss, s = ranke.gt_recon_loss(x, x + 0.5, None, W, per_image, use_gan=False)
    assert s["loss"] == pytest.approx(1.0) and float(loss) == pytest.approx(1.0)
    w = torch.tensor([1.0, 3.0], requires_grad=True)
    loss, s = ranke.reward_loss(torch.tensor([2.0, 4.0], requires_grad=True), w)
    assert s["score_mean"] == pytest.approx(3.0)
    loss.backward()
    assert w.grad is None
    with pytest.raises(ValueError, match="scores and w"):
        ranke.reward_loss(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="scores and w"):
        ranke.reward_loss(torch.zeros(2, 1), torch.zeros(2, 1))


def test_ema_rejects_bad_decay_and_shapes_and_copies_mixed_dtype_buffers():
    """decay in [0, 1]; a shape mismatch is an error even where it would broadcast; a buffer that is floating in one
    model and integer in the other is copied, not averaged."""
    with pytest.raises(ValueError, match="decay"):
        ranke.ema_update(torch.nn.Linear(1, 4), torch.nn.Linear(1, 4), 1.5)
    with pytest.raises(ValueError, match="shape"):
        ranke.ema_update(torch.nn.Linear(1, 4), torch.nn.Linear(1, 1), 0.5)   # (4, 1) vs (1, 1) would broadcast
    ema, model = torch.nn.Module(), torch.nn.Module()
    ema.register_buffer("count", torch.tensor([0.0, 0.0]))
    model.register_buffer("count", torch.tensor([4, 8]))
    ranke.ema_update(ema, model, 0.5)
    assert torch.equal(ema.count, torch.tensor([4.0, 8.0]))
