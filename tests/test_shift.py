"""Tests for shift.py (LCS KL, entropy, floor).  Run: pytest -q tests/test_shift.py"""
import math
import subprocess
import sys
import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

from shift import (PAPER_N_REAL, entropy_bits, histogram_from_images, histogram_from_sampler, lcs_kl, real_floor,
                   report, token_counts, token_histogram, two_real_sets)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_histogram_pooled_and_per_position_by_hand():
    tokens = torch.tensor([[0, 1, 1], [2, 1, 0]])  # M=2 images, N=3 positions, K=4
    h = token_histogram(tokens, 4)
    assert torch.allclose(h, torch.tensor([2, 3, 1, 0], dtype=torch.float64) / 6)
    hp = token_histogram(tokens, 4, per_position=True)  # (N, K)
    expect = torch.tensor([[0.5, 0, 0.5, 0], [0, 1, 0, 0], [0.5, 0.5, 0, 0]], dtype=torch.float64)
    assert hp.shape == (3, 4) and torch.allclose(hp, expect)
    assert torch.equal(token_counts(tokens, 4), torch.tensor([2, 3, 1, 0]))
    # pooled histogram = mean of the per-position ones when every image has N tokens
    assert torch.allclose(hp.mean(0), h)


def test_histogram_rejects_bad_ids():
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        token_histogram(torch.tensor([[0, 4]]), 4)
    with pytest.raises(ValueError, match="integer"):
        token_histogram(torch.tensor([[0.0, 1.0]]), 4)
    with pytest.raises(ValueError, match="shapes differ"):
        lcs_kl(torch.ones(4), torch.ones(5))


def test_kl_identical_is_zero():
    g = torch.Generator().manual_seed(0)
    h = torch.rand(64, generator=g, dtype=torch.float64)
    assert abs(float(lcs_kl(h, h))) < 1e-12
    assert abs(float(lcs_kl(h, 3.0 * h))) < 1e-12  # counts vs probabilities: both are renormalised


def test_kl_two_bin_examples_by_hand():
    # KL((1/2,1/2) || (1/4,3/4)) = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3)
    assert abs(float(lcs_kl(torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75]))) - 0.5 * math.log(4 / 3)) < 1e-9
    # KL((1,0) || (1/2,1/2)) = ln 2 (the empty model bin contributes 0 log 0 = ~0 after eps)
    assert abs(float(lcs_kl(torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5]))) - math.log(2)) < 1e-8
    # direction matters: model first, real second
    a, b = torch.tensor([0.9, 0.1], dtype=torch.float64), torch.tensor([0.5, 0.5], dtype=torch.float64)
    expect_ab = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert abs(float(lcs_kl(a, b)) - expect_ab) < 1e-9 and abs(float(lcs_kl(b, a)) - expect_ab) > 1e-3
    # an empty REAL bin is penalised heavily, not hidden, by eps = 1e-10: 1/2 ln(1/2 / ~1e-10)
    big = float(lcs_kl(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])))
    assert abs(big - (0.5 * math.log(0.5 / 1e-10) + 0.5 * math.log(0.5))) < 1e-6


def test_per_position_kl_shape():
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 8, (50, 4), generator=g)
    b = torch.randint(0, 8, (50, 4), generator=g)
    kl = lcs_kl(token_histogram(a, 8, True), token_histogram(b, 8, True))
    assert kl.shape == (4,) and (kl >= 0).all()
    assert torch.allclose(kl[2], lcs_kl(token_histogram(a[:, 2], 8), token_histogram(b[:, 2], 8)))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0, 100), min_size=2, max_size=20), st.data())
def test_kl_nonnegative(p, data):
    q = data.draw(st.lists(st.floats(0, 100), min_size=len(p), max_size=len(p)))
    p, q = torch.tensor(p, dtype=torch.float64), torch.tensor(q, dtype=torch.float64)
    if p.sum() == 0 or q.sum() == 0:
        p, q = p + 1.0, q + 1.0
    kl = float(lcs_kl(p, q))
    assert kl >= -1e-12 and math.isfinite(kl)


@pytest.mark.parametrize("K", [2, 16, 16384])
def test_entropy_uniform_is_log2_K(K):
    assert abs(float(entropy_bits(torch.ones(K))) - math.log2(K)) < 1e-9
    delta = torch.zeros(K)
    delta[0] = 1.0
    assert abs(float(entropy_bits(delta))) < 1e-12  # 0 log 0 = 0
    # KL to uniform = ln K - H(nats)
    g = torch.Generator().manual_seed(K)
    p = torch.rand(K, generator=g, dtype=torch.float64)
    h_nats = float(entropy_bits(p)) * math.log(2)
    assert abs(float(lcs_kl(p, torch.ones(K, dtype=torch.float64), eps=0.0)) - (math.log(K) - h_nats)) < 1e-9


def test_real_floor_shrinks_with_sample_count():
    K = 64
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(K, generator=g), 0)  # one fixed "real" token distribution

    def mean_floor(n_images, repeats=5):
        vals = []
        for _ in range(repeats):
            a = torch.multinomial(p, n_images * 16, replacement=True, generator=g).view(n_images, 16)
            b = torch.multinomial(p, n_images * 16, replacement=True, generator=g).view(n_images, 16)
            vals.append(real_floor(a, b, K))
        return sum(vals) / len(vals)

    small, large = mean_floor(20), mean_floor(640)
    assert large < small / 5, (small, large)  # ~ (K-1)/n: 32x more tokens -> ~32x smaller
    assert 0 < large < 3 * (K - 1) / (640 * 16)


def test_helpers_from_images_and_sampler(tmp_path):
    from PIL import Image
    import numpy as np
    K = 8

    def encode_indices(x):  # fake VQ: token = quantised mean brightness of each 2x2 quadrant
        assert x.shape[1:] == (3, 16, 16) and x.min() >= -1 and x.max() <= 1
        q = torch.nn.functional.avg_pool2d(x.mean(1, keepdim=True), 8).flatten(1)  # (B, 4)
        return ((q + 1) / 2 * (K - 1)).round().long()

    paths = []
    for i, v in enumerate([0, 255, 255]):
        p = str(tmp_path / f"{i}.png")
        Image.fromarray(np.full((20, 24, 3), v, np.uint8)).save(p)
        paths.append(p)
    from data import image_batches   # image files -> tensors with the training preprocessing (data.preprocess)
    h, tokens = histogram_from_images(encode_indices, image_batches(paths, 16, batch_size=2), K)
    assert tokens.shape == (3, 4) and h[0] == pytest.approx(1 / 3) and h[K - 1] == pytest.approx(2 / 3)
    with pytest.raises(TypeError, match="data.image_batches"):     # shift.py does no image I/O itself
        histogram_from_images(encode_indices, paths, K)
    h2, _ = histogram_from_images(encode_indices, [torch.full((3, 3, 16, 16), -1.0)], K)
    assert h2[0] == 1.0
    seen = []                                             # device=: each batch is moved to the encoder's device
    histogram_from_images(lambda x: seen.append(x.device) or torch.zeros(len(x), 4, dtype=torch.long),
                          [torch.zeros(1, 3, 16, 16)], K, device=torch.device("meta"))
    assert seen == [torch.device("meta")]

    calls = []

    def sample_tokens(prompts):
        calls.append(len(prompts))
        return torch.tensor([[len(p) % K] * 4 for p in prompts])

    h3, t3 = histogram_from_sampler(sample_tokens, ["a", "bb", "ccc", "a", "bb"], K, batch_size=2)
    assert calls == [2, 2, 1] and t3.shape == (5, 4)
    assert h3[1] == pytest.approx(0.4) and h3[2] == pytest.approx(0.4) and h3[3] == pytest.approx(0.2)


@pytest.mark.slow
def test_report_and_cli(tmp_path):
    g = torch.Generator().manual_seed(0)
    real = torch.randint(0, 32, (40, 16), generator=g)
    real2 = torch.randint(0, 32, (40, 16), generator=g)
    model = torch.randint(0, 16, (40, 16), generator=g)  # uses only half the codebook
    r = report(model, real, 32, real2)                   # toy_eval's positional call: the second real set 4th
    assert r["lcs_kl_nats"] > 5 * r["real_floor_nats"] > 0
    assert r["real_floor_nats"] == real_floor(real, real2, 32)
    assert r["entropy_model_bits"] < r["entropy_real_bits"] <= 5.0
    for name, t in (("m", model), ("r", real), ("r2", real2)):
        torch.save(t, tmp_path / f"{name}.pt")
    cli = [sys.executable, os.path.join(ROOT, "shift.py"), "--tokens_model", str(tmp_path / "m.pt"),
           "--tokens_real", str(tmp_path / "r.pt"), "--K", "32"]
    out = subprocess.run(cli + ["--tokens_real2", str(tmp_path / "r2.pt")], capture_output=True, text=True,
                         check=True).stdout
    values = {l.split()[0]: l.split()[-1] for l in out.splitlines()}
    assert abs(float(values["lcs_kl_nats"]) - r["lcs_kl_nats"]) < 1e-5
    assert abs(float(values["real_floor_nats"]) - r["real_floor_nats"]) < 1e-5
    assert "model 40, real 40 per set" in out
    # without a second real set the CLI refuses, naming both ways out
    res = subprocess.run(cli, capture_output=True, text=True)
    assert res.returncode == 2 and "--tokens_real2" in res.stderr and "--split_floor" in res.stderr
    halves = subprocess.run(cli + ["--split_floor"], capture_output=True, text=True, check=True).stdout
    assert "two halves" in halves


def test_report_follows_the_papers_protocol():
    # p_GT from N real images, the floor from a second, independent real set of N: no second set is an error (it
    # used to fall back to two halves of one set, a floor at half the count), and so are sets of different sizes
    g = torch.Generator().manual_seed(3)
    real, real2, model = (torch.randint(0, 8, (20, 4), generator=g) for _ in range(3))
    with pytest.raises(ValueError, match="tokens_real2.*split_floor"):
        report(model, real, 8)
    with pytest.raises(ValueError, match="same size"):
        report(model, real, 8, real2[:10])
    with pytest.raises(ValueError, match="not both"):
        report(model, real, 8, real2, split_floor=True)
    # split_floor: the floor between two seeded random halves of the one real set
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(5))
    r = report(model, real, 8, seed=5, split_floor=True)
    assert r["real_floor_nats"] == real_floor(real[perm[:10]], real[perm[10:]], 8)
    assert PAPER_N_REAL == 5000


def test_split_floor_sits_at_half_the_count():
    # why the paper's protocol matters: two halves of N images give about twice the floor of two sets of N
    K, N, tok = 64, 100, 16                              # 1,600 tokens per set: no empty bin (eps would dominate)
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(0.3 * torch.randn(K, generator=g), 0)
    draw = lambda: torch.multinomial(p, N * tok, replacement=True, generator=g).view(N, tok)  # noqa: E731
    two_sets, halves = [], []
    for seed in range(20):
        real, real2 = draw(), draw()
        two_sets.append(report(real, real, K, real2)["real_floor_nats"])
        halves.append(report(real, real, K, seed=seed, split_floor=True)["real_floor_nats"])
    ratio = sum(halves) / sum(two_sets)
    assert 1.6 < ratio < 2.5, ratio


def test_two_real_sets_are_disjoint_seeded_and_sized():
    pool = [f"img{i}.jpg" for i in range(25)]
    a, b = two_real_sets(pool, n=10, seed=1)
    assert len(a) == len(b) == 10 and not set(a) & set(b) and set(a) | set(b) <= set(pool)
    assert (a, b) == two_real_sets(pool, n=10, seed=1) and (a, b) != two_real_sets(pool, n=10, seed=2)
    with pytest.raises(ValueError, match="need 2 x n = 30"):
        two_real_sets(pool, n=15)
    with pytest.raises(ValueError, match="5000"):
        two_real_sets(pool)                              # the paper's N by default


def test_lcs_kl_empty_model_bin_and_empty_histogram():
    # a model bin with no mass adds 0 (0 ln 0 = 0), also without smoothing: KL([.5,.5,0] || [.25,.25,.5]) = ln 2
    assert float(lcs_kl([0.5, 0.5, 0.0], [0.25, 0.25, 0.5], eps=0.0)) == pytest.approx(math.log(2.0), rel=1e-12)
    with pytest.raises(ValueError, match="no mass"):
        lcs_kl([0.0, 0.0, 0.0], [0.25, 0.25, 0.5])


# ------------------------------------------------------------------------------------------ gaps found by mutation
# (each test below fails on at least one mutant of shift.py that the tests above let through)

def test_token_counts_inputs_and_range_checks():
    """Counts accept array-likes (numpy), reject negative ids and non-(M, N) per-position input; an empty token set
    has no histogram."""
    import numpy as np
    assert torch.equal(token_counts(np.array([[0, 1], [1, 1]]), 3), torch.tensor([1, 3, 0]))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        token_counts(torch.tensor([[-1, 2]]), 4)
    with pytest.raises(ValueError, match="per_position"):
        token_counts(torch.zeros(2, 3, 4, dtype=torch.long), 4, per_position=True)
    with pytest.raises(ValueError, match="no tokens"):
        token_histogram(torch.zeros(0, 4, dtype=torch.long), 4)


def test_histogram_checks_and_eps_sign():
    """lcs_kl refuses negative, non-finite, 3-D histograms, a per-position row with no mass, and eps < 0."""
    ok = torch.tensor([0.5, 0.5], dtype=torch.float64)
    for bad in (torch.tensor([-0.1, 1.1]), torch.tensor([float("nan"), 1.0]), torch.tensor([float("inf"), 1.0]),
                torch.ones(2, 2, 2)):
        with pytest.raises(ValueError, match="non-negative finite"):
            lcs_kl(bad, ok if bad.dim() == 1 else torch.ones(2, 2, 2))
    with pytest.raises(ValueError, match="no mass"):                # one empty position of an (N, K) histogram
        lcs_kl(torch.tensor([[1.0, 1.0], [0.0, 0.0]]), torch.ones(2, 2))   # columns both have mass
    with pytest.raises(ValueError, match="eps"):
        lcs_kl(ok, ok, eps=-1e-3)


def test_per_position_entropy_by_hand():
    """entropy_bits on (N, K) counts normalises each row: rows (1,1,0,0) and (1,1,1,1) have 1 and 2 bits."""
    h = entropy_bits(torch.tensor([[1.0, 1.0, 0.0, 0.0], [3.0, 3.0, 3.0, 3.0]]))
    assert h.shape == (2,) and torch.allclose(h, torch.tensor([1.0, 2.0], dtype=torch.float64))


def test_helpers_refuse_empty_input_and_take_iterables():
    """No images / no prompts is an error; prompts and the real pool may be any iterable; two_real_sets needs exactly
    2 n items (n >= 1) and no more."""
    with pytest.raises(ValueError, match="no images"):
        histogram_from_images(lambda x: x, [], 4)
    with pytest.raises(ValueError, match="no prompts"):
        histogram_from_sampler(lambda p: torch.zeros(len(p), 2, dtype=torch.long), [], 4)
    h, t = histogram_from_sampler(lambda p: torch.ones(len(p), 2, dtype=torch.long), (s for s in "abc"), 4)
    assert t.shape == (3, 2) and h[1] == 1.0
    a, b = two_real_sets((f"{i}" for i in range(4)), n=2)
    assert sorted(a + b) == ["0", "1", "2", "3"]
    a, b = two_real_sets(["x", "y"], n=1)
    assert sorted(a + b) == ["x", "y"]
    with pytest.raises(ValueError, match="need 2 x n"):
        two_real_sets(["x", "y"], n=0)


def test_report_split_floor_halves_and_max_entropy():
    """split_floor uses two disjoint halves of equal size floor(M / 2) (the odd image left out) and needs M >= 2;
    max_entropy_bits = log2 K."""
    g = torch.Generator().manual_seed(4)
    real, model = torch.randint(0, 8, (5, 4), generator=g), torch.randint(0, 8, (5, 4), generator=g)
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(2))
    r = report(model, real, 8, seed=2, split_floor=True)
    assert r["real_floor_nats"] == real_floor(real[perm[:2]], real[perm[2:4]], 8)
    assert r["max_entropy_bits"] == 3.0
    with pytest.raises(ValueError, match="at least 2"):
        report(model, real[:1], 8, split_floor=True)
