"""Latent Covariate Shift (LCS) and token entropy (RankE, arXiv 2605.21195; docs/method.md §10).

The VQ decoder is trained only on z_gt = Quantize(E(x)) of real images, but at inference it decodes z ~ pi_theta(.|y).
LCS measures how far the policy's token distribution has drifted from the real one:

    LCS = D_KL(pi_theta || p_GT) = sum_k pi(k) ln(pi(k) / p_GT(k))      (nats; model first, real second)
    H(pi) = -sum_k pi(k) log2 pi(k)                                      (bits; max log2 K = 14 for K = 16384)

The protocol (docs/method.md §10): the paper's, from its Fig. 1 caption. p_GT comes from N = 5,000 real MS-COCO images
(`PAPER_N_REAL`, `PAPER_REAL_SOURCE`), and its "Real" bar is the KL between two independently sampled real sets of N
images each, encoded by the same frozen tokenizer: the finite-sample floor (`real_floor`). `report` takes both real
sets and refuses to run without the second one; `two_real_sets` draws the two disjoint sets of N from a pool (e.g.
COCO val2014's 40,504 images). The caption does not say which COCO split, how many model samples, or how the
histograms are smoothed; this file's choices for those:
- Histograms pool all N positions of all images into K bins (the unigram marginal); a per-position variant is
  available (`per_position=True`, (N, K)).
- Smoothing: eps = 1e-10 is added to EVERY bin of both histograms, which are then renormalised. It only keeps
  ln(pi/p) finite where the real histogram has an empty bin; with eps = 1e-10 such a bin contributes about
  pi(k) * ln(pi(k) / 1e-10), i.e. a large penalty, so empty real bins are not hidden.
- The floor shrinks roughly like (K - 1) / n with n tokens in each of the two sets (2 n KL is about chi-square with
  K - 1 degrees of freedom for ONE sample against the truth; two samples double the variance), so sample as many model images as real ones
  and always compare models at the same counts. `split_floor=True` (CLI --split_floor) is the older fallback for a
  single real set: the KL between its two random halves, a floor at half the count (larger than the paper's).

Run the self-check:  python shift.py
CLI:                 python shift.py --tokens_model a.pt --tokens_real b.pt --tokens_real2 c.pt --K 16384
                     (each .pt holds an int tensor of token ids (M, N); b and c: two independent real sets of the same
                      size; --split_floor instead of --tokens_real2 splits b into halves)
Tests:               pytest tests/test_shift.py
Depends on: torch; no repository file (copies alone). Real-image files -> tensors: data.image_batches.
Symbols: M images, N = h*w image tokens per image, K codebook size.
"""
import argparse
import math

import torch

# The paper's protocol (arXiv 2605.21195, Fig. 1 caption): p_GT from 5,000 real MS-COCO images; "Real" = the KL between
# two independently sampled real sets (of that size here), encoded by the same frozen tokenizer.
PAPER_N_REAL = 5000
PAPER_REAL_SOURCE = "MS-COCO (split not stated; e.g. val2014, the FID reference of docs/method.md §11)"


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
    if (h.sum(-1) == 0).any():
        raise ValueError(f"{what} has a row with no mass (all zeros): build it from at least one token")
    return h


def _smooth(h, eps):
    h = h + eps  # docs/method.md §10 step 3: add eps to every bin ...
    return h / h.sum(-1, keepdim=True)  # ... and renormalise


def lcs_kl(hist_model, hist_real, eps=1e-10):
    """D_KL(pi_model || p_real) in nats after eps-smoothing both (docs/method.md §10). Pass probabilities
    (token_histogram): eps is added before renormalising, so raw counts would be smoothed less. (K,) inputs -> 0-dim
    float64 tensor; (N, K) -> (N,) per-position KLs. 0 ln 0 = 0 (a model bin with no mass adds nothing, eps = 0 too)."""
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    pi, p = _check_hist(hist_model, "hist_model"), _check_hist(hist_real, "hist_real")
    if pi.shape != p.shape:
        raise ValueError(f"histogram shapes differ: model {tuple(pi.shape)} vs real {tuple(p.shape)} (same K?)")
    pi, p = _smooth(pi, eps), _smooth(p, eps)
    term = pi * (pi.log() - p.log())                     # pi(k) ln(pi(k)/p(k)); NaN where pi(k) = 0 and eps = 0
    return torch.where(pi > 0, term, torch.zeros_like(term)).sum(-1)   # sum_k, with 0 ln 0 = 0


def entropy_bits(hist):
    """H = -sum_k pi(k) log2 pi(k) in bits (0 log 0 = 0); (K,) -> 0-dim tensor, (N, K) -> (N,)."""
    h = _check_hist(hist, "hist")
    h = h / h.sum(-1, keepdim=True)
    return -torch.special.xlogy(h, h).sum(-1) / math.log(2.0)


def real_floor(tokens_a, tokens_b, K, eps=1e-10):
    """KL between the histograms of two independent real token sets of the same size: the finite-sample floor of
    lcs_kl (the paper's "Real" bar, docs/method.md §10)."""
    return float(lcs_kl(token_histogram(tokens_a, K), token_histogram(tokens_b, K), eps))


# ---------------------------------------------------------------------------------------------------------------
# Thin helpers that produce the histograms (the measurement itself is the four functions above). Real images come
# in as tensors: data.image_batches loads files with the training preprocessing.

@torch.no_grad()
def histogram_from_images(encode_indices, batches, K, *, device=None):
    """p_GT: VQ-encode real images and pool their token ids (docs/method.md §10 step 1).

    encode_indices: callable (B,3,H,W) in [-1,1] -> (B, N) int64 (vq.VQModel.encode_indices); device: where the
    encoder is (each batch is moved there; data.image_batches yields CPU tensors);
    batches: an iterable of (B, 3, H, W) float tensors in [-1, 1]. For image FILES use
    data.image_batches(paths, S, batch_size): the training preprocessing (data.preprocess), so p_GT is measured on
    the images the model trains on (this file stays free of image I/O and copies alone).
    Returns (probabilities (K,) float64, all tokens (M, N) int64). Call it once per real set (two_real_sets): the
    tokens of both sets go to report / real_floor."""
    if isinstance(batches, (list, tuple)) and batches and isinstance(batches[0], str):
        raise TypeError("histogram_from_images takes tensor batches, not file paths: pass "
                        "data.image_batches(paths, image_size, batch_size) (data.py, the training preprocessing)")
    all_tokens = [encode_indices(x if device is None else x.to(device)).cpu() for x in batches]  # each (B, N)
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


def two_real_sets(items, n=PAPER_N_REAL, seed=0):
    """Two disjoint random sets of n items each (image paths, say) from a pool: p_GT's set and the floor's second
    set of the paper's protocol (n = 5,000 MS-COCO images, docs/method.md §10). Seeded, so the sets are reproducible."""
    items = list(items)
    if n < 1 or len(items) < 2 * n:
        raise ValueError(f"two_real_sets: need 2 x n = {2 * n} real items, the pool has {len(items)}; pass a larger "
                         f"pool or a smaller n (the paper uses n = {PAPER_N_REAL})")
    perm = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    return [items[i] for i in perm[:n]], [items[i] for i in perm[n:2 * n]]


def report(tokens_model, tokens_real, K, tokens_real2=None, seed=0, eps=1e-10, *, split_floor=False):
    """KL(pi_model || p_real), both entropies and the real-vs-real floor as plain floats, by the paper's protocol:
    tokens_real (M, N) gives p_GT and tokens_real2, a second real set of the same size M encoded by the same
    tokenizer, gives the floor KL(real || real2). split_floor=True (no tokens_real2) instead takes the floor between
    two random halves of tokens_real (seeded by `seed`): a floor at half the count, larger than the paper's."""
    h_model, h_real = token_histogram(tokens_model, K), token_histogram(tokens_real, K)
    n_real = int(torch.as_tensor(tokens_real).shape[0])
    if split_floor:
        if tokens_real2 is not None:
            raise ValueError("report: pass tokens_real2 (the paper's floor) or split_floor=True, not both")
        perm = torch.randperm(n_real, generator=torch.Generator().manual_seed(seed))
        half = n_real // 2
        if half == 0:
            raise ValueError("report: need at least 2 real images to split for the floor")
        floor = real_floor(tokens_real[perm[:half]], tokens_real[perm[half:2 * half]], K, eps)
    elif tokens_real2 is None:
        raise ValueError(f"report: the real-vs-real floor needs a second real set (the paper: two independently "
                         f"sampled sets of {PAPER_N_REAL} MS-COCO images, docs/method.md §10); pass tokens_real2 "
                         f"(shift.two_real_sets draws both from one pool), or split_floor=True for two halves of "
                         f"tokens_real (a floor at half the count)")
    elif int(torch.as_tensor(tokens_real2).shape[0]) != n_real:
        raise ValueError(f"report: the two real sets must have the same size (the floor depends on it): tokens_real "
                         f"has {n_real} images, tokens_real2 {int(torch.as_tensor(tokens_real2).shape[0])}")
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
    print("sampled: " + ", ".join(f"{k} {v:.4f}" for k, v in r.items()) + f"  (expected floor ~ (K-1)/n = "
          f"{(K - 1) / (64 * 16):.4f}, one draw)")


def main(argv=None):
    ap = argparse.ArgumentParser(description="Latent Covariate Shift: KL(pi_model || p_real), entropies, floor")
    ap.add_argument("--tokens_model", help="torch .pt with an int tensor (M, N) of policy-sampled token ids")
    ap.add_argument("--tokens_real", help="torch .pt with an int tensor (M, N) of VQ-encoded real token ids")
    ap.add_argument("--tokens_real2", default=None, help=f"a second, independent real set of the same size: the "
                    f"floor (the paper: two sets of {PAPER_N_REAL} MS-COCO images)")
    ap.add_argument("--split_floor", action="store_true", help="no second real set: floor between two halves of "
                    "--tokens_real (at half the count, larger than the paper's floor)")
    ap.add_argument("--K", type=int, default=16384, help="codebook size")
    ap.add_argument("--eps", type=float, default=1e-10, help="smoothing added to every bin before renormalising")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random halves of --split_floor")
    args = ap.parse_args(argv)
    if args.tokens_model is None and args.tokens_real is None:
        return _self_check()
    if args.tokens_model is None or args.tokens_real is None:
        ap.error("pass both --tokens_model and --tokens_real (or neither, for the self-check)")
    if (args.tokens_real2 is None) == (not args.split_floor):
        ap.error(f"pass --tokens_real2 (a second real set of the same size: the paper's floor, 2 x {PAPER_N_REAL} "
                 f"images) or --split_floor (two halves of --tokens_real), exactly one of them")
    load = lambda p: torch.load(p, map_location="cpu", weights_only=True)  # noqa: E731
    model, real = load(args.tokens_model), load(args.tokens_real)
    r = report(model, real, args.K, None if args.tokens_real2 is None else load(args.tokens_real2), seed=args.seed,
               eps=args.eps, split_floor=args.split_floor)
    for k, v in r.items():
        print(f"{k:>20s} {v:.6f}")
    print(f"{'images':>20s} model {model.shape[0]}, real {real.shape[0]}"
          + (" (floor: two halves of them)" if args.split_floor else " per set")
          + ("" if model.shape[0] == real.shape[0] else "; sample as many model images as real ones"))


if __name__ == "__main__":
    main()
