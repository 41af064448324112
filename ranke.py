"""RankE losses: group advantages, the clipped policy surrogate, rank weights and the decoder/discriminator terms.

Paper concept: RankE (arXiv 2605.21195) alternates a GRPO-style policy step (docs/method.md §4) with a decoder step on
the same rollouts (§5) and a PatchGAN discriminator step (§6). This file holds only the math, as pure functions
`tensors in -> (loss or tensor, dict of python-float stats)`; models, sampling and the loop live in train.py.
It imports torch only, so it can be copied alone into another codebase.

Run the self-check:  python ranke.py   (a 4-action categorical policy learns from a fixed reward; the expected
reward printed every 5 steps rises from 1.5 towards 3.0; then a small rank-weight example is printed.)

Symbols: B prompts, G samples per prompt (group), N image tokens per sample, k samples kept per prompt for the
decoder step, h x w discriminator patch-logit grid, A advantage, rho = pi_theta / pi_old (PPO ratio; not the
reward r), tau rank temperature. Rollouts are laid out prompt-major: row b*G + j is sample j of prompt b.

Disagreements page vs released code that touch this file (docs/method.md §14):
- D2: the page weights the decoder's Rank-GAN by w ~ exp(r/tau) over the G rollouts; every released script keeps
  only the top k = 1 sample per prompt, so w == 1 (best-of-G) and tau has no effect. rank_weights(k=1) reproduces
  the scripts; k = G gives the page's soft weighting, with tau_schedule's anneal 4 -> 1 over 20% of training.
- D7: the page says GRPO with a clipped surrogate; the released code runs one PPO epoch with logp_old recomputed
  by the same network, so rho == 1, the clip never binds and the gradient is REINFORCE with z-scored advantages.
  The KL is the squared-log-ratio "k2" estimator 1/2 (logp - logp_ref)^2, not DeepSeek-GRPO's "k3"
  exp(ref - logp) - (ref - logp) - 1; policy_loss(kl_estimator="k3") gives the latter. train.py's ppo_epochs > 1
  makes the clip active.

Follows: syjmelody/RankE@2798acc autoregressive/post_train/trainer.py (advantages 310-328, policy loss 468-539,
rank weights 566-579, EMA 277-288), autoregressive/models/vqrl_models.py (hinge losses 533-567, adaptive weight
606-633); the adaptive weight is the one of taming-transformers' VQLPIPSWithDiscriminator.calculate_adaptive_weight.
"""
import math

import torch
import torch.nn.functional as F

__all__ = ["group_advantages", "policy_loss", "rank_weights", "uniform_selection", "tau_schedule", "rank_gan_loss",
           "disc_hinge_loss", "adaptive_gan_weight", "gt_recon_loss", "consistency_loss", "reward_loss", "ema_update"]


def _require(ok, msg):
    if not ok:
        raise ValueError(msg)


def _f(x):
    """Detached python float of a scalar tensor (for stats dicts)."""
    return float(x.detach()) if torch.is_tensor(x) else float(x)


def _groups(r, G, name="r"):
    _require(r.dim() == 1, f"{name} must be 1-D (B*G,), got shape {tuple(r.shape)}; flatten the rollouts prompt-major")
    _require(isinstance(G, int) and G >= 2, f"group size G must be an int >= 2 (unbiased std), got {G!r}")
    _require(r.numel() % G == 0, f"{name} has {r.numel()} entries, not a multiple of G={G}; pass B*G rewards")
    return r.view(-1, G)                                                  # (B, G)


# ----------------------------------------------------------------------------------------------------------------
# Policy step (docs/method.md §4)
# ----------------------------------------------------------------------------------------------------------------

def group_advantages(r, G, *, eps_std=1e-4, clip=5.0):
    """Group z-score of the rewards: A_i = (r_i - mean_g r) / std_g r per prompt, unbiased std; 0 for groups whose
    std <= eps_std; clamped to [-clip, clip]. r: (B*G,) raw rewards (not normalised across steps). -> A (B*G,).
    Note: with the unbiased std |A| <= (G-1)/sqrt(G) (2.47 for G=8), so the clamp only binds for G >= 27."""
    rg = _groups(r, G)
    rg = rg.to(torch.promote_types(rg.dtype, torch.float32))              # (B, G), at least fp32
    mean = rg.mean(dim=1, keepdim=True)                                   # docs/method.md §4.1
    std = rg.std(dim=1, unbiased=True, keepdim=True)                      # docs/method.md §4.1: unbiased (n-1)
    degenerate = std <= eps_std                                           # (B, 1) all-equal groups
    adv = torch.where(degenerate, torch.zeros_like(rg), (rg - mean) / std.clamp_min(eps_std))  # docs/method.md §4.1
    adv = adv.clamp(-clip, clip).reshape(-1).to(r.dtype)                  # docs/method.md §4.1: clamp [-5, 5]
    stats = {"mean": _f(adv.mean()), "std": _f(adv.std()) if adv.numel() > 1 else 0.0,
             "frac_degenerate": _f(degenerate.float().mean()), "reward_mean": _f(rg.mean()),
             "reward_std": _f(rg.std()) if rg.numel() > 1 else 0.0}
    return adv, stats


def policy_loss(logp, logp_old, logp_ref, adv, *, clip_eps=0.2, beta=0.05, kl_estimator="k2"):
    """L_GPT = L_pg + beta * L_KL, both means over all B*G*N tokens (docs/method.md §4.3).
    logp: (B*G, N) differentiable log pi_theta of the sampled tokens; logp_old, logp_ref: (B*G, N), detached here;
    adv: (B*G,) per-sequence advantage, broadcast over the N tokens."""
    _require(logp.dim() == 2, f"logp must be (B*G, N), got shape {tuple(logp.shape)}")
    _require(logp_old.shape == logp.shape and logp_ref.shape == logp.shape,
             f"logp {tuple(logp.shape)}, logp_old {tuple(logp_old.shape)} and logp_ref {tuple(logp_ref.shape)} "
             "must have the same (B*G, N) shape")
    _require(adv.shape == logp.shape[:1], f"adv must be (B*G,) = ({logp.shape[0]},), got {tuple(adv.shape)}")
    _require(kl_estimator in ("k2", "k3"), f"kl_estimator must be 'k2' or 'k3', got {kl_estimator!r}")
    _require(clip_eps > 0, f"clip_eps must be > 0, got {clip_eps}")
    logp_old, logp_ref, a = logp_old.detach(), logp_ref.detach(), adv.detach()[:, None]   # a: (B*G, 1)
    log_ratio = logp - logp_old
    ratio = log_ratio.exp()                                          # docs/method.md §4.3: rho_t = exp(l_theta - l_old)
    surr = ratio * a
    surr_clip = ratio.clamp(1 - clip_eps, 1 + clip_eps) * a
    pg = -torch.minimum(surr, surr_clip).mean()                     # docs/method.md §4.3: -mean min(rho A, clip(rho) A)
    d = logp - logp_ref
    if kl_estimator == "k2":
        kl_tok = 0.5 * d.pow(2)                                      # docs/method.md §4.3: 1/2 (l_theta - l_ref)^2 (k2)
    else:
        kl_tok = (torch.expm1(-d) + d).clamp_min(0)   # D7 alternative, k3: exp(ref-l) - (ref-l) - 1; >= 0 in floats too
    kl = kl_tok.mean()
    loss = pg + beta * kl                                                 # docs/method.md §4.3: L_GPT
    with torch.no_grad():
        binds = (surr_clip < surr)                                        # the clipped branch is the active minimum
        stats = {"loss": _f(loss), "pg_loss": _f(pg), "kl": _f(kl), "clip_frac": _f(binds.float().mean()),
                 "approx_kl": _f(((ratio - 1) - log_ratio).mean()),       # k3 of old vs new (cleanrl, Schulman)
                 "ratio_mean": _f(ratio.mean())}
    return loss, stats


# ----------------------------------------------------------------------------------------------------------------
# Decoder step: selection, rank weights, loss terms (docs/method.md §5) and discriminator (docs/method.md §6)
# ----------------------------------------------------------------------------------------------------------------

def rank_weights(r, G, k, tau):
    """Top-k rollouts per prompt by reward and their rank weights (docs/method.md §5.1).
    r: (B*G,) rollout rewards (EMA-decoder images, D3). -> idx (B*k,) int64 global rows into the B*G rollouts
    (prompt-major, best first within a prompt; ties go to the lower index, as argmax), w (B*k,) with batch mean 1.
    k = 1 (every released script) is best-of-G with w == 1 (D2); k = G gives the page's w ~ exp(r/tau)."""
    rg = _groups(r, G)                                                    # (B, G)
    _require(isinstance(k, int) and 1 <= k <= G, f"k must be an int in [1, G={G}], got {k!r}")
    _require(tau > 0, f"tau must be > 0, got {tau}")
    order = torch.sort(rg.detach(), dim=1, descending=True, stable=True).indices[:, :k]   # (B, k) docs/method.md §5.1
    r_top = rg.detach().gather(1, order).float()                          # (B, k)
    w = torch.softmax(r_top / tau, dim=1)                                 # docs/method.md §5.1: softmax(r_topK / tau)
    w = (w / (w.mean() + 1e-8)).reshape(-1)                               # docs/method.md §5.1: rescale to batch mean 1
    base = torch.arange(rg.shape[0], device=r.device)[:, None] * G        # (B, 1) first row of each prompt
    idx = (order + base).reshape(-1)                                      # (B*k,)
    stats = {"tau": float(tau), "w_min": _f(w.min()), "w_max": _f(w.max()),
             "sel_reward_mean": _f(r_top.mean()), "reward_mean": _f(rg.float().mean())}
    return idx, w, stats


def uniform_selection(B, G, k, seed, device="cpu"):
    """The paper's "uniform GAN" ablation (docs/method.md §5.1): k samples per prompt drawn at random, without
    looking at rewards, all with weight 1. Prompt b uses torch.Generator seeded with seed + b, so the draw is
    reproducible and the same on every rank. -> (idx (B*k,) rows into the prompt-major (B*G) batch, w (B*k,), {})."""
    _require(1 <= k <= G, f"k must be in [1, G={G}], got {k}")
    pick = torch.stack([torch.randperm(G, generator=torch.Generator().manual_seed(seed + b))[:k] for b in range(B)])
    idx = (pick + G * torch.arange(B)[:, None]).reshape(-1).to(device)                       # (B*k,)
    return idx, torch.ones(idx.shape[0], device=device), {}


def tau_schedule(step, total_steps, tau_start=4.0, tau_end=1.0, frac=0.2):
    """Cosine anneal of the rank temperature from tau_start to tau_end over the first frac*total_steps steps, then
    constant (docs/method.md §5.1). -> (tau: float, stats)."""
    _require(total_steps > 0 and frac > 0, f"need total_steps > 0 and frac > 0, got {total_steps}, {frac}")
    p = min(1.0, max(0.0, step / (frac * total_steps)))
    tau = tau_end + (tau_start - tau_end) * 0.5 * (1 + math.cos(math.pi * p))   # docs/method.md §5.1
    return tau, {"tau": tau}


def rank_gan_loss(d_fake, w, disc_weight=0.5):
    """Reward-weighted hinge generator loss on the selected samples: disc_weight * (-mean_{b,h,w} w_b D(x*_b))
    (docs/method.md §5.2 item 2; the caller multiplies by lambda_g). d_fake: (B*k, 1, h, w) patch logits; w: (B*k,)."""
    _require(d_fake.dim() == 4 and d_fake.shape[0] == w.shape[0] and w.dim() == 1,
             f"d_fake must be (B*k, 1, h, w) and w (B*k,), got {tuple(d_fake.shape)} and {tuple(w.shape)}")
    g = -(w.detach().to(d_fake.dtype)[:, None, None, None] * d_fake).mean()   # docs/method.md §5.2 item 2
    loss = disc_weight * g
    return loss, {"loss": _f(loss), "g_loss": _f(g), "logits_fake": _f(d_fake.mean())}


def disc_hinge_loss(d_real, d_fake, disc_factor=0.5):
    """Hinge discriminator loss: factor * 1/2 [mean relu(1 - D(real)) + mean relu(1 + D(fake))] (docs/method.md §6).
    The caller passes d_fake computed on detached fakes (reconstructions of real images, D4)."""
    loss_real = F.relu(1.0 - d_real).mean()
    loss_fake = F.relu(1.0 + d_fake).mean()
    loss = disc_factor * 0.5 * (loss_real + loss_fake)                    # docs/method.md §6
    return loss, {"loss": _f(loss), "loss_real": _f(loss_real), "loss_fake": _f(loss_fake),
                  "logits_real": _f(d_real.mean()), "logits_fake": _f(d_fake.mean())}


def adaptive_gan_weight(nll_loss, g_loss, last_layer, disc_weight=0.5, max_w=1e4):
    """VQGAN adaptive weight: disc_weight * clamp(||grad_W nll|| / (||grad_W g|| + 1e-4), 0, max_w), detached,
    W = the decoder's last conv weight (docs/method.md §5.2 item 1). Returns a 0-d tensor.
    When no gradient can exist (grad mode off, or a loss that does not require grad, e.g. in evaluation), it
    returns disc_weight, as released; stats["fallback"] = 1.0 says so. A last_layer that is not in the graph of
    a differentiable loss is a caller bug and raises (autograd's error)."""
    ok = torch.is_grad_enabled() and nll_loss.requires_grad and g_loss.requires_grad
    if not ok:                                                            # released: fixed disc_weight without grads
        w = torch.tensor(float(disc_weight), device=nll_loss.device)
        return w, {"weight": float(disc_weight), "fallback": 1.0, "nll_grad_norm": float("nan"),
                   "g_grad_norm": float("nan")}
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]   # docs/method.md §5.2 item 1
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    ratio = nll_grad.norm() / (g_grad.norm() + 1e-4)                      # docs/method.md §5.2 item 1
    w = (disc_weight * ratio.clamp(0.0, max_w)).detach()                  # docs/method.md §5.2 item 1
    return w, {"weight": _f(w), "fallback": 0.0, "nll_grad_norm": _f(nll_grad.norm()),
               "g_grad_norm": _f(g_grad.norm())}


def gt_recon_loss(x, x_rec, d_fake_rec, last_layer, dist, *, use_gan, disc_weight=0.5):
    """Ground-truth reconstruction anchor (docs/method.md §5.2 item 1; lambda_r applied by the caller):
    mean|x - x_rec| + mean dist(x, x_rec) [+ adaptive weight * (-mean D(x_rec)) when use_gan], where the adaptive
    weight carries disc_weight (train.py --disc_weight, the same value as in the hinge and Rank-GAN terms).
    x, x_rec: (B,3,H,W) in [-1,1] (x_rec unclamped decoder output); d_fake_rec: (B,1,h,w) D logits on x_rec or
    None; dist(x, y) -> (B,) perceptual distance (LPIPS); last_layer: decoder conv_out.weight."""
    _require(x.shape == x_rec.shape, f"x {tuple(x.shape)} and x_rec {tuple(x_rec.shape)} must have the same shape")
    _require(use_gan == (d_fake_rec is not None),
             "pass d_fake_rec (D logits on x_rec) exactly when use_gan=True" if use_gan else
             "d_fake_rec was given but use_gan=False: pass None, or use_gan=True to add the GAN term")
    l1 = (x - x_rec).abs().mean()                                         # docs/method.md §5.2 item 1: per-pixel L1
    p = dist(x, x_rec)
    _require(p.dim() == 1 and p.shape[0] == x.shape[0], f"dist must return (B,) = ({x.shape[0]},), got {tuple(p.shape)}")
    p = p.mean()                                                          # docs/method.md §5.2 item 1: LPIPS per image
    nll = l1 + p
    loss, stats = nll, {"l1": _f(l1), "perceptual": _f(p)}
    if use_gan:
        g = -d_fake_rec.mean()                                            # docs/method.md §5.2 item 1: hinge generator
        aw, s = adaptive_gan_weight(nll, g, last_layer, disc_weight)      # disc_weight x adaptive ratio
        loss = nll + aw * g
        stats.update({"gan_g": _f(g), "adaptive_weight": _f(aw), "adaptive_fallback": s["fallback"]})
    stats["loss"] = _f(loss)
    return loss, stats


def consistency_loss(x, x_ema, dist):
    """EMA-decoder consistency anchor: mean dist(x, clamp(x_ema, -1, 1)), x_ema detached (docs/method.md §5.2 item 3;
    lambda_c applied by the caller). x: (B*k,3,H,W) online decode of the selected tokens, x_ema: EMA decode."""
    _require(x.shape == x_ema.shape, f"x {tuple(x.shape)} and x_ema {tuple(x_ema.shape)} must have the same shape")
    d = dist(x, x_ema.detach().clamp(-1, 1))                              # docs/method.md §5.2 item 3
    _require(d.dim() == 1 and d.shape[0] == x.shape[0], f"dist must return (B,) = ({x.shape[0]},), got {tuple(d.shape)}")
    loss = d.mean()
    return loss, {"loss": _f(loss)}


def reward_loss(scores, w):
    """Direct differentiable-reward loss on the selected samples: -mean(w * R) (docs/method.md §5.2 item 4; lambda_d
    applied by the caller). scores: (B*k,) rewards of the online decodes; w: (B*k,) rank weights (detached)."""
    _require(scores.dim() == 1 and scores.shape == w.shape,
             f"scores and w must both be (B*k,), got {tuple(scores.shape)} and {tuple(w.shape)}")
    loss = -(w.detach().to(scores.dtype) * scores).mean()                 # docs/method.md §5.2 item 4
    return loss, {"loss": _f(loss), "score_mean": _f(scores.mean())}


# ----------------------------------------------------------------------------------------------------------------
# EMA (docs/method.md §4.7 EMA-GPT 0.999 every 10 steps, §5.2 EMA-VQ 0.99 every decoder step)
# ----------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def ema_update(ema_model, model, decay):
    """In place: theta_ema <- decay * theta_ema + (1 - decay) * theta for every floating parameter AND floating
    buffer (e.g. BatchNorm running stats, a float codebook_used); non-floating buffers (num_batches_tracked, int
    counters) are copied. Math in fp32 (or wider), then cast to the EMA's dtype, so bf16/fp32 mixes work.
    Decision [inf]: the released trainer's exact buffer handling is not recorded in the spec; this follows
    timm's ModelEmaV2 (averages the whole floating state). Names must match one to one."""
    _require(0.0 <= decay <= 1.0, f"decay must be in [0, 1], got {decay}")
    ema_state = dict(ema_model.named_parameters())
    ema_state.update(ema_model.named_buffers())
    src_state = dict(model.named_parameters())
    src_state.update(model.named_buffers())
    _require(ema_state.keys() == src_state.keys(),
             f"ema_model and model differ in parameters/buffers: only in ema {sorted(ema_state.keys() - src_state.keys())[:5]}, "
             f"only in model {sorted(src_state.keys() - ema_state.keys())[:5]}; build the EMA as a deepcopy of the model")
    for name, e in ema_state.items():
        s = src_state[name]
        _require(e.shape == s.shape, f"EMA entry {name}: shape {tuple(e.shape)} vs model {tuple(s.shape)}")
        if e.is_floating_point() and s.is_floating_point():
            wide = torch.promote_types(torch.promote_types(e.dtype, s.dtype), torch.float32)
            new = e.to(wide) * decay + s.to(device=e.device, dtype=wide) * (1.0 - decay)   # docs/method.md §4.7/§5.2
            e.copy_(new)
        else:
            e.copy_(s)                                                    # non-float buffer: copy


# ----------------------------------------------------------------------------------------------------------------

if __name__ == "__main__":
    # A 4-action "policy" (one token per sample) with fixed reward = action index, trained by policy_loss.
    gen = torch.Generator().manual_seed(0)
    reward_of = torch.tensor([0.0, 1.0, 2.0, 3.0])
    logits = torch.zeros(4, requires_grad=True)
    logp_ref_table = torch.log_softmax(logits, -1).detach()               # frozen reference = initial policy (D1)
    opt = torch.optim.Adam([logits], lr=0.1)
    B, G = 4, 8
    print("step  E[reward]  (uniform start = 1.5, optimum = 3.0)")
    for step in range(31):
        probs = torch.softmax(logits, -1)
        if step % 5 == 0:
            print(f"{step:4d}  {float((probs.detach() * reward_of).sum()):.3f}")
        a = torch.multinomial(probs.detach().expand(B * G, 4), 1, generator=gen)   # (B*G, 1): N = 1 token
        adv, s_adv = group_advantages(reward_of[a[:, 0]], G)
        logp = torch.log_softmax(logits, -1)[a]                           # (B*G, 1)
        loss, s = policy_loss(logp, logp.detach(), logp_ref_table[a], adv, beta=0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"last step: kl={s['kl']:.4f} ratio_mean={s['ratio_mean']:.3f} clip_frac={s['clip_frac']:.3f}")

    r = torch.tensor([0.1, 0.9, 0.5, 0.3, 2.0, 1.0, 0.0, 3.0])           # B=2 prompts, G=4
    for k in (1, 2, 4):
        idx, w, _ = rank_weights(r, 4, k, tau=1.0)
        print(f"rank_weights k={k} tau=1: idx={idx.tolist()} w={[round(v, 3) for v in w.tolist()]}")
    print("tau schedule (total 100):", [round(tau_schedule(t, 100)[0], 3) for t in (0, 5, 10, 20, 50)])
