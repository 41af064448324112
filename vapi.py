"""VA-pi baseline: the pure pieces VA-pi adds on top of RankE's GRPO math (docs/method.md §12.2-12.7).

Paper concept: VA-pi post-trains an AR image model *without* autoregressive rollouts. Per ground-truth image:
VQ-encode it to tokens z (B,N); corrupt the teacher-forcing context with contextual noise (each token replaced by a
uniform random index with probability xi); ONE teacher-forced forward gives a distribution per position; draw G
sequences position-wise from it; decode each with the frozen VQ decoder; reward = -(MSE + perceptual) to the GT
image; group-z-scored advantages and the PPO-clipped surrogate (reused from ranke.py: this file builds on it);
plus beta x next-token cross-entropy on the same noisy-context logits as a prior regulariser; optional k3 KL to
the base policy (off in every released script). train.py's vapi_step assembles these with policy.GPT.

Run the self-check:  python vapi.py   (a bigram toy policy over V=8 "codes" learns to reconstruct fixed GT token
grids; the mean reward printed every 10 steps rises towards 0 and the argmax accuracy towards 1.)
Copies alone (torch only); its self-check also needs ranke.py beside it.

Symbols: B images, G samples per image, N image tokens, V = K codebook size, xi context-noise probability.
Rows are image-major: row b*G + j is sample j of image b (same layout as ranke.py).

Released defects NOT reproduced (docs/method.md §12.7), with how this code avoids them:
- defect 6 (Janus off-by-one teacher forcing): targets are the clean z at the same positions as the logits, and
  policy.GPT.forward's contract is that logits[:, t] sees only tokens[:, :t]; the context never contains the
  token it predicts. (tokens_noisy[:, N-1] is drawn too but never enters the context.)
- defect 5 (old log-probs in eval mode, new ones in train mode, r != 1 at step 0; old ones after top-k): the
  rollout distribution and the trained log-probs come from one forward, "old" = its detached copy, so r == 1
  exactly; no top-k/top-p (all released scripts sample with top-k 0, top-p 1), so nothing to mismatch.
- defect 4 (eval-mode forward without input positions -> crash): policy.GPT builds its own positions.
- defect 7 (frozen base built and KL computed with coefficient unused): train.py runs the reference forward only
  when the KL weight is > 0.
- defect 3 (non-strict checkpoint loading that loads nothing): policy.load_gpt is strict.

Follows: Lil-Shake/VA-Pi LlamaGen/autoregressive/train/train_t2i_grpo.py:69-108 (noise, teacher-forced forward),
train_c2i_grpo.py:132-151 (position-wise sampling), 552-587 (reward), 840-849 (CE prior).
"""
import torch
import torch.nn.functional as F

# No repository import at module level: this file copies alone. VA-pi's advantages and clipped surrogate are
# ranke.group_advantages / ranke.policy_loss; train.py passes this file's outputs to them, and the self-check below
# imports ranke itself (the only place here that needs it).

__all__ = ["noisy_context", "positionwise_sample", "positionwise_logprobs", "recon_reward", "ce_prior"]

# Released hyperparameters: docs/method.md §12.3; its T2I column (LlamaGen GPT-XL, 256 px, VA-Pi
# train_t2i_grpo_8gpu.sh:66-99) is train.py's PRESETS["llamagen_xl_vapi"]. Fixed rather than flags: the k3 KL
# estimator, plain softmax position-wise sampling (T 1, no top-k / top-p), AdamW betas (0.9, 0.999); the advantage
# clip at 5 (--adv-clip-max) is left out: it never binds, |A| <= (G - 1) / sqrt(G) = 2.47 for groups of G = 8
# z-scored with the unbiased std (ranke.group_advantages).
# DEVIATION: advantages via ranke.group_advantages, (r - mean) / std with groups of std <= 1e-4 set to 0;
# VA-pi divides by (std + 1e-8). Same result except for near-constant groups (VA-pi then amplifies noise; §14).
# DEVIATION: train.py decays every policy parameter; VA-pi's trainers skip those whose name has "norm" (§12.2).


def _require(ok, msg):
    if not ok:
        raise ValueError(msg)


def noisy_context(tokens, xi, K, generator):
    """Contextual noise (docs/method.md §12.2 step 3): each token independently replaced, with probability xi, by a
    uniform random index in [0, K). A replacement can draw the same index, so xi=1 changes ~(1 - 1/K) of them.
    tokens: (B,N) int64 GT codes -> (tokens_noisy (B,N) int64, stats). generator: torch.Generator (its device)."""
    _require(tokens.dim() == 2 and not tokens.is_floating_point(), f"tokens must be (B, N) integer codes, got "
             f"{tuple(tokens.shape)} {tokens.dtype}")
    _require(0.0 <= xi <= 1.0, f"xi (context-noise probability) must be in [0, 1], got {xi}")
    if tokens.numel() and not (int(tokens.min()) >= 0 and int(tokens.max()) < K):   # (the message reads min / max)
        raise ValueError(f"tokens must lie in [0, K={K}); got range [{int(tokens.min())}, {int(tokens.max())}]: "
                         "wrong K?")
    dev = generator.device
    replace = (torch.rand(tokens.shape, generator=generator, device=dev) < xi).to(tokens.device)   # (B,N) bool
    rand = torch.randint(0, K, tokens.shape, generator=generator, device=dev).to(tokens.device)  # (B,N)
    noisy = torch.where(replace, rand, tokens)                            # docs/method.md §12.2 step 3
    stats = {"frac_replaced": float(replace.float().mean()), "frac_changed": float((noisy != tokens).float().mean())}
    return noisy, stats


def positionwise_logprobs(logits, samples, temperature=1.0):
    """log softmax(logits / T) at the sampled tokens, without repeating the (B,N,V) tensor G times.
    logits: (B,N,V) from one teacher-forced forward; samples: (B*G,N) image-major -> (B*G,N), differentiable."""
    B, N, V = logits.shape
    _require(samples.dim() == 2 and samples.shape[1] == N and samples.shape[0] % B == 0,
             f"samples must be (B*G, N) with B={B}, N={N}; got {tuple(samples.shape)}")
    G = samples.shape[0] // B
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)   # (B,N,V) docs/method.md §12.2 step 8
    idx = samples.view(B, G, N).transpose(1, 2)                           # (B,N,G)
    return logp_all.gather(-1, idx).transpose(1, 2).reshape(B * G, N)     # (B*G,N)


@torch.no_grad()
def positionwise_sample(logits, G, generator, temperature=1.0):
    """Rollouts without autoregression (docs/method.md §12.2 step 5): G sequences drawn independently per position from
    softmax(logits / T). logits: (B,N,V) -> (tokens (B*G,N) int64 image-major, their log-probs (B*G,N), detached:
    the "old" log-probs). No top-k/top-p: every released script samples the full softmax.
    DEVIATION: VA-pi draws from a separate eval-mode forward and trains on a train-mode one (defect 5); here the
    caller passes the detached logits of the one training forward, so old and new log-probs coincide."""
    _require(logits.dim() == 3, f"logits must be (B, N, V), got {tuple(logits.shape)}")
    _require(isinstance(G, int) and G >= 1, f"G must be an int >= 1, got {G!r}")
    _require(temperature > 0, f"temperature must be > 0, got {temperature}")
    _require(generator.device.type == logits.device.type, f"generator on {generator.device} but logits on "
             f"{logits.device}: make the generator with torch.Generator(device=logits.device)")
    B, N, V = logits.shape
    probs = torch.softmax(logits.float() / temperature, dim=-1).reshape(B * N, V)
    draws = torch.multinomial(probs, G, replacement=True, generator=generator)   # (B*N, G) independent draws
    tokens = draws.view(B, N, G).transpose(1, 2).reshape(B * G, N)        # (B*G, N) image-major
    return tokens, positionwise_logprobs(logits, tokens, temperature)


@torch.no_grad()
def recon_reward(x_rec, x_gt, dist, *, rec_weight=1.0, perceptual_weight=1.0):
    """Reconstruction reward (docs/method.md §12.2 step 6): r = -(w_rec * MSE(x_rec, x_gt) + w_p * dist(x_rec, x_gt)),
    MSE per image over C,H,W in [-1,1]; x_gt is the preprocessed GT image (not its VQ reconstruction), repeated G
    times by the caller. A constant for the policy step (no gradient). -> (r (B*G,), stats)."""
    _require(x_rec.shape == x_gt.shape, f"x_rec {tuple(x_rec.shape)} and x_gt {tuple(x_gt.shape)} must match: "
             "repeat the GT images G times (repeat_interleave) to line them up with the rollouts")
    mse = (x_rec.float() - x_gt.float()).pow(2).flatten(1).mean(1)       # (B*G,)
    p = dist(x_rec, x_gt).float()                                         # (B*G,)
    _require(p.shape == mse.shape, f"dist must return ({mse.shape[0]},), got {tuple(p.shape)}")
    r = -(rec_weight * mse + perceptual_weight * p)                       # docs/method.md §12.2 step 6
    return r, {"mse": float(mse.mean()), "perceptual": float(p.mean()), "reward_mean": float(r.mean()),
               "reward_std": float(r.std()) if r.numel() > 1 else 0.0}


def ce_prior(logits, targets):
    """Prior regulariser (docs/method.md §12.2 step 9): next-token cross-entropy of the SAME noisy-context logits
    against the clean GT tokens, mean over all B*N tokens (the caller multiplies by beta).
    logits: (B,N,V) with logits[:, t] predicting targets[:, t]; targets: (B,N) int64 -> (loss, stats)."""
    _require(logits.dim() == 3 and targets.shape == logits.shape[:2],
             f"logits must be (B, N, V) and targets (B, N); got {tuple(logits.shape)} and {tuple(targets.shape)}")
    V = logits.shape[-1]
    loss = F.cross_entropy(logits.float().reshape(-1, V), targets.reshape(-1))   # docs/method.md §12.2 step 9
    with torch.no_grad():
        acc = (logits.argmax(-1) == targets).float().mean()
    return loss, {"ce": float(loss.detach()), "token_acc": float(acc)}


if __name__ == "__main__":
    import ranke   # the self-check needs RankE's group advantages and PPO surrogate (see the module docstring)
    # Toy: class-conditional bigram policy logits[b, t] = E[context token t-1] + P[b, t] (sees only tokens[:, :t]);
    # "decoder" maps each code to a gray level; GT = 4 fixed token grids (one per class b). Reward = -(MSE + L1).
    gen = torch.Generator().manual_seed(0)
    B, G, N, V = 4, 8, 16, 8
    levels = torch.linspace(-1, 1, V)
    z_gt = torch.randint(0, V, (B, N), generator=gen)
    decode = lambda z: levels[z].view(-1, 1, 4, 4)                        # (rows, 1, 4, 4)
    l1 = lambda a, b: (a - b).abs().flatten(1).mean(1)
    E = torch.zeros(V + 1, V, requires_grad=True)                         # row 0 = "start of image"
    P = torch.zeros(B, N, V, requires_grad=True)          # per class and position
    opt = torch.optim.Adam([E, P], lr=0.2)
    print("step  reward_mean  argmax_acc  (reward -> 0, acc -> 1)")
    for step in range(41):
        z_in, s_n = noisy_context(z_gt, 0.5, V, gen)     # xi 0.5, released T2I
        prev = torch.cat([torch.zeros(B, 1, dtype=torch.long), z_in[:, :-1] + 1], dim=1)   # (B,N) shifted context
        logits = E[prev] + P                                              # (B,N,V), one teacher-forced forward
        samples, logp_old = positionwise_sample(logits.detach(), G, gen)
        r, s_r = recon_reward(decode(samples), decode(z_gt).repeat_interleave(G, 0), l1)
        adv, _ = ranke.group_advantages(r, G)
        logp = positionwise_logprobs(logits, samples)
        pg, s_p = ranke.policy_loss(logp, logp_old, logp.detach(), adv, beta=0.0)
        ce, s_c = ce_prior(logits, z_gt)
        opt.zero_grad()
        (pg + 0.1 * ce).backward()     # CE prior weight beta 0.1, released
        opt.step()
        if step % 10 == 0:
            print(f"{step:4d}  {s_r['reward_mean']:+.4f}      {s_c['token_acc']:.3f}   (ratio_mean {s_p['ratio_mean']:.3f}, "
                  f"context replaced {s_n['frac_replaced']:.2f})")
