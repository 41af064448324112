"""Latent Covariate Shift (LCS) and token entropy (RankE, arXiv 2605.21195; docs/method.md §10).

The VQ decoder is trained only on z_gt = Quantize(E(x)) of real images, but at inference it decodes z ~ pi_theta(.|y).
LCS measures how far the policy's token distribution has drifted from the real one:

    LCS = D_KL(pi_theta || p_GT) = sum_k pi(k) ln(pi(k) / p_GT(k))      (nats; model first, real second)
    H(pi) = -sum_k pi(k) log2 pi(k)                                      (bits; max log2 K = 14 for K = 16384)

Choices (docs/method.md §10 "recommended protocol"; the paper's own protocol is unpublished):
- Histograms pool all N positions of all images into K bins (the unigram marginal); a per-position variant is
  available (`per_position=True`, (N, K)).
- Smoothing: eps = 1e-10 is added to EVERY bin of both histograms, which are then renormalised. It only keeps
  ln(pi/p) finite where the real histogram has an empty bin; with eps = 1e-10 such a bin contributes about
  pi(k) * ln(pi(k) / 1e-10), i.e. a large penalty, so empty real bins are not hidden.
- The noise floor: KL between two disjoint real sets of the same size (`real_floor`); the page's "Real 0.0279" bar
  is most likely such a floor. It shrinks roughly like (K - 1) / (2 n) with n tokens per set, so always compare
  models at the same sample count and report the floor beside them.

Run the self-check:  python shift.py
CLI:                 python shift.py --tokens_model a.pt --tokens_real b.pt --K 16384 [--tokens_real2 c.pt]
                     (each .pt holds an int tensor of token ids (M, N); without --tokens_real2 the floor is taken
                      between two random halves of --tokens_real, i.e. at half the sample count)
Tests:               pytest tests/test_shift.py
Depends on: torch; no repository file (copies alone). Real-image files -> tensors: data.image_batches.
Symbols: M images, N = h*w image tokens per image, K codebook size.
"""
import argparse
import math

import torch


def token_counts(tokens, K, per_position=False):
    """tokens: int tensor (M, N) (any shape when pooled) -> int64 counts (K,), or (N, K) with per_position."""
    tokens = torch.as_tensor(tokens)
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(f"token ids must be an integer tensor, got {tokens.dtype}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= K):
        raise ValueError(f"token ids must lie in [0, {K}); got range [{int(tokens.min())}, {int(tokens.max())}] "
                         "(wrong K, or tokens from another codebook?)")
    tokens = tokens.long()
    if not per_position:
        return torch.bincount(tokens.reshape(-1), minlength=K)  # (K,)
    if tokens.dim() != 2:
        raise ValueError(f"per_position needs tokens of shape (M, N), got {tuple(tokens.shape)}")
    M, N = tokens.shape
    flat = (torch.arange(N, device=tokens.device) * K + tokens).reshape(-1)  # position n, id k -> bin n*K + k
    return torch.bincount(flat, minlength=N * K).view(N, K)  # (N, K)


def token_histogram(tokens, K, per_position=False):
    """Counts -> probabilities (float64): (K,) pooled over all images and positions, or (N, K) per position."""
    counts = token_counts(tokens, K, per_position)
    total = counts.sum(-1, keepdim=True)
    if (total == 0).any():
        raise ValueError("token_histogram: no tokens given (empty tensor)")
    return counts.double() / total  # (K,) or (N, K), rows sum to 1


def _check_hist(h, what):
    h = torch.as_tensor(h).double()
    if h.dim() not in (1, 2) or not torch.isfinite(h).all() or (h < 0).any():
        raise ValueError(f"{what} must be a non-negative finite (K,) or (N, K) histogram, got shape "
                         f"{tuple(h.shape)}")
    return h


def _smooth(h, eps):
    h = h + eps  # docs/method.md §10 step 3: add eps to every bin ...
    return h / h.sum(-1, keepdim=True)  # ... and renormalise


def lcs_kl(hist_model, hist_real, eps=1e-10):
    """D_KL(pi_model || p_real) in nats after eps-smoothing both (docs/method.md §10). Counts or probabilities both work
    (each is renormalised). (K,) inputs -> 0-dim float64 tensor; (N, K) -> (N,) per-position KLs."""
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    pi, p = _check_hist(hist_model, "hist_model"), _check_hist(hist_real, "hist_real")
    if pi.shape != p.shape:
        raise ValueError(f"histogram shapes differ: model {tuple(pi.shape)} vs real {tuple(p.shape)} (same K?)")
    pi, p = _smooth(pi, eps), _smooth(p, eps)
    return (pi * (pi.log() - p.log())).sum(-1)  # sum_k pi(k) ln(pi(k)/p(k))


def entropy_bits(hist):
    """H = -sum_k pi(k) log2 pi(k) in bits (0 log 0 = 0); (K,) -> 0-dim tensor, (N, K) -> (N,)."""
    h = _check_hist(hist, "hist")
    h = h / h.sum(-1, keepdim=True)
    return -torch.special.xlogy(h, h).sum(-1) / math.log(2.0)


def real_floor(tokens_a, tokens_b, K, eps=1e-10):
    """KL between the histograms of two disjoint real token sets: the finite-sample noise floor of lcs_kl."""
    return float(lcs_kl(token_histogram(tokens_a, K), token_histogram(tokens_b, K), eps))


# ---------------------------------------------------------------------------------------------------------------
# Thin helpers that produce the histograms (the measurement itself is the four functions above). Real images come
# in as tensors: data.image_batches loads files with the training preprocessing.

@torch.no_grad()
def histogram_from_images(encode_indices, batches, K):
    """p_GT: VQ-encode real images and pool their token ids (docs/method.md §10 step 1).

    encode_indices: callable (B,3,H,W) in [-1,1] -> (B, N) int64 (vq.VQModel.encode_indices);
    batches: an iterable of (B, 3, H, W) float tensors in [-1, 1]. For image FILES use
    data.image_batches(paths, S, batch_size): the training preprocessing (data.preprocess), so p_GT is measured on
    the images the model trains on (this file stays free of image I/O and copies alone).
    Returns (probabilities (K,) float64, all tokens (M, N) int64) so the caller can also split for real_floor."""
    if isinstance(batches, (list, tuple)) and batches and isinstance(batches[0], str):
        raise TypeError("histogram_from_images takes tensor batches, not file paths: pass "
                        "data.image_batches(paths, image_size, batch_size) (data.py, the training preprocessing)")
    all_tokens = [encode_indices(x).cpu() for x in batches]  # each (B, N)
    if not all_tokens:
        raise ValueError("histogram_from_images: no images given")
    tokens = torch.cat(all_tokens)
    return token_histogram(tokens, K), tokens


@torch.no_grad()
def histogram_from_sampler(sample_tokens, prompts, K, *, batch_size=32):
    """pi_theta: sample one token grid per prompt with the eval sampler (docs/method.md §10 step 2).

    sample_tokens: callable list[str] -> (B, N) int64 (fixed CFG / top-k / generator inside).
    Returns (probabilities (K,) float64, all tokens (M, N) int64)."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("histogram_from_sampler: no prompts given")
    tokens = torch.cat([sample_tokens(prompts[i:i + batch_size]).cpu() for i in range(0, len(prompts), batch_size)])
    return token_histogram(tokens, K), tokens


def report(tokens_model, tokens_real, K, tokens_real2=None, seed=0, eps=1e-10):
    """KL, entropies and floor as plain floats. Without tokens_real2 the floor is measured between two random
    halves of tokens_real (so at half the sample count: an upper estimate of the full-size floor)."""
    h_model, h_real = token_histogram(tokens_model, K), token_histogram(tokens_real, K)
    if tokens_real2 is None:
        perm = torch.randperm(tokens_real.shape[0], generator=torch.Generator().manual_seed(seed))
        half = tokens_real.shape[0] // 2
        if half == 0:
            raise ValueError("need at least 2 real images to split for the floor (or pass tokens_real2)")
        floor = real_floor(tokens_real[perm[:half]], tokens_real[perm[half:2 * half]], K, eps)
    else:
        floor = real_floor(tokens_real, tokens_real2, K, eps)
    return {"lcs_kl_nats": float(lcs_kl(h_model, h_real, eps)), "entropy_model_bits": float(entropy_bits(h_model)),
            "entropy_real_bits": float(entropy_bits(h_real)), "real_floor_nats": floor,
            "max_entropy_bits": math.log2(K)}


@torch.no_grad()
def reencode_agreement(tokens, decode, encode_indices, *, batch_size=64):
    """How faithfully the decoder renders a set of token grids (the shift beyond histograms): decode z, re-encode the
    image with the frozen encoder, decode again.
        agree = mean 1[E(Dec(z)) == z]            (fraction of tokens that survive the round trip)
        cycle_l1 = mean |Dec(z) - Dec(E(Dec(z)))|  (pixels in [-1, 1])
    Applied to the policy's tokens and to the VQ tokens of real images: the real row is what the decoder does on its
    own training distribution, so the gap between the two rows is the decoder's error on the shifted tokens.
    tokens (M, N) int; decode: (B, N) -> (B,3,S,S) in [-1,1]; encode_indices: (B,3,S,S) -> (B, N).
    Returns {"agree": float, "cycle_l1": float}."""
    same, l1, n_tok, n_pix = 0, 0.0, 0, 0
    for s in range(0, tokens.shape[0], batch_size):
        z = tokens[s:s + batch_size]                                      # (B, N)
        x = decode(z).float().clamp(-1, 1)                                # (B,3,S,S)
        z2 = encode_indices(x).to(z.device).view(z.shape)                 # (B, N)
        x2 = decode(z2).float().clamp(-1, 1)
        same += int((z2 == z).sum())
        n_tok += z.numel()
        l1 += float((x - x2).abs().sum())
        n_pix += x.numel()
    return {"agree": same / n_tok, "cycle_l1": l1 / n_pix}


def _self_check():
    # Synthetic histograms: KL(pi || uniform) = ln K - H_nats(pi) exactly, so a reader can verify the numbers.
    K = 16
    g = torch.Generator().manual_seed(0)
    pi = torch.softmax(torch.randn(K, generator=g, dtype=torch.float64), 0)
    uniform = torch.full((K,), 1.0 / K, dtype=torch.float64)
    kl = float(lcs_kl(pi, uniform, eps=0.0))
    closed = math.log(K) - float(entropy_bits(pi)) * math.log(2.0)
    print(f"K={K}: KL(pi||uniform) = {kl:.6f} nats, ln K - H(pi) = {closed:.6f} nats, "
          f"H(uniform) = {float(entropy_bits(uniform)):.4f} bits (= log2 K = {math.log2(K):.4f})")
    real = torch.multinomial(uniform, 64 * 16, replacement=True, generator=g).view(64, 16)  # 64 images, N=16
    real2 = torch.multinomial(uniform, 64 * 16, replacement=True, generator=g).view(64, 16)
    model = torch.multinomial(pi, 64 * 16, replacement=True, generator=g).view(64, 16)
    r = report(model, real, K, tokens_real2=real2)
    print("sampled: " + ", ".join(f"{k} {v:.4f}" for k, v in r.items()) + f"  (floor ~ (K-1)/(2n) = "
          f"{(K - 1) / (2 * 64 * 16):.4f})")


def main(argv=None):
    ap = argparse.ArgumentParser(description="Latent Covariate Shift: KL(pi_model || p_real), entropies, floor")
    ap.add_argument("--tokens_model", help="torch .pt with an int tensor (M, N) of policy-sampled token ids")
    ap.add_argument("--tokens_real", help="torch .pt with an int tensor (M, N) of VQ-encoded real token ids")
    ap.add_argument("--tokens_real2", default=None, help="optional disjoint real set for the floor")
    ap.add_argument("--K", type=int, default=16384, help="codebook size")
    ap.add_argument("--eps", type=float, default=1e-10, help="smoothing added to every bin before renormalising")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random halves when --tokens_real2 is absent")
    args = ap.parse_args(argv)
    if args.tokens_model is None and args.tokens_real is None:
        return _self_check()
    if args.tokens_model is None or args.tokens_real is None:
        ap.error("pass both --tokens_model and --tokens_real (or neither, for the self-check)")
    load = lambda p: torch.load(p, map_location="cpu", weights_only=True)  # noqa: E731
    r = report(load(args.tokens_model), load(args.tokens_real), args.K,
               None if args.tokens_real2 is None else load(args.tokens_real2), seed=args.seed, eps=args.eps)
    for k, v in r.items():
        print(f"{k:>20s} {v:.6f}")


if __name__ == "__main__":
    main()
