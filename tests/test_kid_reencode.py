"""KID (eval_fid.kernel_inception_distance) against a brute-force reference, and the decode -> re-encode round trip
(shift.reencode_agreement) on a decoder / encoder pair with a known answer.  Run: pytest -q tests/test_kid_reencode.py"""
import itertools

import numpy as np
import pytest
import torch

from eval_fid import kernel_inception_distance
from shift import reencode_agreement


def brute_kid(a, b):
    """MMD^2_u written as the double sums of its definition, one kernel value at a time."""
    k = lambda x, y: (float(np.dot(x, y)) / len(x) + 1.0) ** 3  # noqa: E731
    n, m = len(a), len(b)
    s_aa = sum(k(a[i], a[j]) for i, j in itertools.permutations(range(n), 2))
    s_bb = sum(k(b[i], b[j]) for i, j in itertools.permutations(range(m), 2))
    s_ab = sum(k(a[i], b[j]) for i in range(n) for j in range(m))
    return s_aa / (n * (n - 1)) + s_bb / (m * (m - 1)) - 2 * s_ab / (n * m)


def test_kid_equals_brute_force_and_jackknife_equals_refits():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(9, 5)), rng.normal(0.5, 1.3, size=(7, 5))       # unequal sizes, shifted distributions
    kid, se = kernel_inception_distance(a, b)
    assert kid == pytest.approx(brute_kid(a, b), rel=1e-10)
    # delete-one jackknife by refitting: every row of a, then every row of b, left out once
    loo_a = np.array([brute_kid(np.delete(a, i, 0), b) for i in range(len(a))])
    loo_b = np.array([brute_kid(a, np.delete(b, j, 0)) for j in range(len(b))])
    var = (8 / 9) * ((loo_a - loo_a.mean()) ** 2).sum() + (6 / 7) * ((loo_b - loo_b.mean()) ** 2).sum()
    assert se == pytest.approx(np.sqrt(var), rel=1e-8)


def test_kid_is_unbiased_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(1)
    same = [kernel_inception_distance(rng.normal(size=(60, 4)), rng.normal(size=(60, 4)))[0] for _ in range(200)]
    se_mean = np.std(same) / np.sqrt(len(same))
    assert abs(np.mean(same)) < 3 * se_mean                                  # E[MMD^2_u] = 0 for equal laws
    assert min(same) < 0                                                     # unbiased: it can go below zero
    kid, se = kernel_inception_distance(rng.normal(size=(60, 4)), rng.normal(2.0, 1.0, size=(60, 4)))
    assert kid > 5 * se > 0


def test_kid_rejects_bad_shapes():
    with pytest.raises(ValueError, match="n >= 3"):
        kernel_inception_distance(np.zeros((2, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="n >= 3"):
        kernel_inception_distance(np.zeros((5, 4)), np.zeros((5, 3)))


def test_kid_smallest_sets_and_few_features():
    """n = m = 3 is the documented minimum and F may be smaller than n: the brute-force double sums still hold."""
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(3, 2)), rng.normal(1.0, 1.0, size=(3, 2))
    kid, se = kernel_inception_distance(a, b)
    assert kid == pytest.approx(brute_kid(a, b), rel=1e-10) and np.isfinite(se)


def test_reencode_agreement_known_answer():
    """K = 8 codes, code k decodes to a constant image of value -1 + 2k/7. The encoder reads the value back, except
    that it swaps codes 6 and 7: tokens 0-5 survive the round trip, 6 and 7 come back as each other, so agreement =
    the fraction of tokens below 6 and the cycle error = that of tokens 6 / 7 times the gap 2/7 between their images."""
    values = torch.linspace(-1, 1, 8)                                          # (K,)
    swap = torch.tensor([0, 1, 2, 3, 4, 5, 7, 6])
    decode = lambda z: values[z].view(z.shape[0], 1, 2, 2).expand(-1, 3, -1, -1)  # noqa: E731  (B,N=4) -> (B,3,2,2)
    encode = lambda x: swap[((x[:, 0] + 1) * 3.5).round().long().view(x.shape[0], -1)]  # noqa: E731  -> (B,4)
    z = torch.randint(0, 8, (50, 4), generator=torch.Generator().manual_seed(0))
    r = reencode_agreement(z, decode, encode, batch_size=7)
    moved = (z >= 6).double().mean().item()
    assert 0 < moved < 1
    assert r["agree"] == pytest.approx(1 - moved)
    assert r["cycle_l1"] == pytest.approx(moved * 2 / 7, rel=1e-6)
    identity = lambda x: ((x[:, 0] + 1) * 3.5).round().long().view(x.shape[0], -1)  # noqa: E731
    assert reencode_agreement(z, decode, identity) == {"agree": 1.0, "cycle_l1": 0.0}


def test_reencode_agreement_clamps_both_decodes_to_the_image_range():
    """Both decodes are clamped to [-1, 1] (a decoder's raw output can overshoot): the encoder only ever sees images
    in range, and the cycle error is measured between clamped images. Codes decode to (-3, -0.5, 0.5, 3), i.e.
    (-1, -0.5, 0.5, 1) after clamping; the encoder maps x < 0 to code 0 and x >= 0 to code 3, so codes 0 and 3
    survive and codes 1, 2 come back 0.5 away from their image."""
    values = torch.tensor([-3.0, -0.5, 0.5, 3.0])

    def encode(x):
        assert x.min() >= -1 and x.max() <= 1, "encoder fed an unclamped image"
        return torch.where(x[:, 0] < 0, 0, 3).view(x.shape[0], -1)

    decode = lambda z: values[z].view(z.shape[0], 1, 2, 2).expand(-1, 3, -1, -1)  # noqa: E731
    z = torch.randint(0, 4, (30, 4), generator=torch.Generator().manual_seed(0))
    r = reencode_agreement(z, decode, encode)
    moved = ((z == 1) | (z == 2)).double().mean().item()
    assert 0 < moved < 1
    assert r["agree"] == pytest.approx(1 - moved)
    assert r["cycle_l1"] == pytest.approx(0.5 * moved, rel=1e-6)
