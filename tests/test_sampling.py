"""sampling.py: the per-step rule both samplers share. CFG and temperature by hand, top-k keeps exactly the k largest,
top-p keeps the shortest sorted prefix whose mass exceeds p, the draw is torch.multinomial's (same tokens, same
generator state, same distribution), the finiteness check. CPU, offline, a few seconds.

Run: pytest -q tests/test_sampling.py
"""
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sampling import check_finite, check_settings, draw, guide, step_logits, top_k_top_p

inf = float("inf")


def test_cfg_and_temperature_by_hand():
    cond, null = torch.tensor([[2.0, 0.0, 1.0]]), torch.tensor([[1.0, 0.0, 1.0]])
    assert torch.equal(guide(torch.cat([cond, null]), 1, 3.0), torch.tensor([[4.0, 0.0, 1.0]]))   # u + s (c - u)
    assert guide(cond, 1, 1.0) is cond                                      # s = 1: no null rows, nothing done
    out = step_logits(torch.cat([cond, null]), 1, 3.0, 0.5, 0, 1.0)         # (u + s (c - u)) / temperature
    torch.testing.assert_close(out, torch.tensor([[8.0, 0.0, 2.0]]))
    assert torch.equal(step_logits(cond, 1, 1.0, 0.0, 0, 1.0), cond / 1e-5)   # temperature 0 -> 1e-5
    rows = torch.randn(4, 3, 5)                                             # (R,...,V): 2 prompts, 3 positions
    torch.testing.assert_close(guide(rows, 2, 2.5), rows[2:] + 2.5 * (rows[:2] - rows[2:]))


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    orig = logits.clone()
    for k in (1, 7, 49):
        out = top_k_top_p(logits, k)
        assert torch.equal(logits, orig)                                    # the caller's logits are not edited
        assert (torch.isfinite(out).sum(-1) == k).all()
        kept = torch.isfinite(out)
        assert torch.equal(kept, logits >= logits.topk(k).values[:, -1:])
        assert torch.equal(out[kept], logits[kept])                         # kept logits unchanged
    assert torch.equal(top_k_top_p(logits, 50), logits) and torch.equal(top_k_top_p(logits, 500), logits)
    ties = torch.tensor([[3.0, 1.0, 3.0, 0.0, 3.0]])
    assert torch.equal(top_k_top_p(ties, 2), torch.tensor([[3.0, -inf, 3.0, -inf, 3.0]]))   # ties at the k-th kept
    assert torch.equal(top_k_top_p(torch.tensor([[3.0, 1.0, 2.0, 0.0]]), 2), torch.tensor([[3.0, -inf, 2.0, -inf]]))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=12, unique=True), st.integers(0, 14), st.floats(0.05, 1.0))
def test_top_k_top_p_keeps_right_set(vals, top_k, top_p):
    logits = torch.tensor([vals], dtype=torch.float64)
    orig = logits.clone()
    out = top_k_top_p(logits, top_k, top_p)
    assert torch.equal(logits, orig)                               # the caller's logits are not edited
    x = orig[0]
    keep_k = x >= torch.sort(x, descending=True).values[min(top_k, len(vals)) - 1] if top_k > 0 else x == x
    p = torch.where(keep_k, x, -torch.inf).softmax(0)
    order = torch.argsort(-torch.where(keep_k, x, -torch.inf), stable=True)
    before = torch.cumsum(p[order], 0) - p[order]                  # mass strictly before each sorted token
    assume(top_p == 1.0 or (before - top_p).abs().min() > 1e-9)    # avoid float ties at the boundary
    keep = torch.zeros_like(keep_k)
    keep[order] = keep_k[order] & ((before <= top_p) | (torch.arange(len(vals)) == 0) | (top_p == 1.0))
    assert torch.equal(torch.isfinite(out[0]), keep)
    assert keep.any()
    kept = out[0].softmax(0)                                       # renormalised over the kept set
    torch.testing.assert_close(kept[keep], p[keep] / p[keep].sum())
    if top_p < 1.0:                                                # the smallest set whose mass exceeds top_p
        assert p[keep].sum() > top_p - 1e-9 and p[keep].sum() - p[keep].min() <= top_p + 1e-9


def test_step_rule_on_more_than_two_dims_is_the_rule_per_row():
    """(R,...,V) logits: CFG, temperature, top-k and top-p act on the last axis only, so a (2B, P, V) call equals the
    2-D rule applied to every position's (2B, V) slice; check_finite judges each (..., V) row on its own."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 40, generator=g) * 2                              # B = 2 prompts, 3 positions
    for kw in (dict(top_k=5), dict(top_p=0.7), dict(top_k=9, top_p=0.6)):
        out = step_logits(logits, 2, 2.5, 0.8, kw.get("top_k", 0), kw.get("top_p", 1.0))
        for p in range(3):
            want = step_logits(logits[:, p], 2, 2.5, 0.8, kw.get("top_k", 0), kw.get("top_p", 1.0))
            assert torch.equal(out[:, p], want), (kw, p)
    bad = torch.zeros(2, 3, 4)
    bad[1, 2] = -inf                                       # one position with nothing finite, the others fine
    with pytest.raises(FloatingPointError):
        check_finite(bad, "x")


def test_defaults_and_boundaries():
    """The defaults are no filtering and no temperature (top_k 0, top_p 1, T 1: the logits pass unchanged, also when
    a float32 cumulative sum of the sorted probabilities overshoots 1 before the last token); T = 2 halves the
    logits; top-p keeps the token whose mass makes the prefix EXCEED top_p, so a prefix of exactly top_p (0.5 here,
    exact in binary) is extended by one token."""
    x = torch.randn(4, 1000, generator=torch.Generator().manual_seed(0)) * 3
    csum = x.sort(-1, descending=True).values.softmax(-1).cumsum(-1)
    assert (csum[:, :-1] > 1.0).any()                      # the premise: float rounding passes 1 early
    assert torch.equal(top_k_top_p(x), x) and torch.equal(top_k_top_p(x, 0, 1.0), x)
    assert torch.equal(step_logits(x, 4, 1.0), x)
    cond, null = x[:2], x[2:]
    torch.testing.assert_close(step_logits(x, 2, 3.0), null + 3.0 * (cond - null))
    torch.testing.assert_close(step_logits(x, 4, 1.0, 2.0), x / 2)
    half = torch.tensor([[0.6931471805599453, 0.0, 0.0]], dtype=torch.float64)   # probabilities 1/2, 1/4, 1/4
    assert torch.equal(torch.isfinite(top_k_top_p(half, 0, 0.5)), torch.tensor([[True, True, False]]))


def test_draw_consumes_generator_like_multinomial():
    """draw = torch.multinomial(probs, 1): same tokens and the same generator state after, step after step (top-k
    zeros, a one-hot row, a flat row); and the CPU premise: float64 uniform_ -> -log1p(-u) = exponential_."""
    logits = torch.randn(5, 300, generator=torch.Generator().manual_seed(0)) * 3
    logits[1] = top_k_top_p(logits[1:2], 7)[0]
    logits[2] = torch.where(torch.arange(300) == 17, 0.0, float("-inf"))
    logits[3] = 0.0
    probs = logits.softmax(-1)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(20):
        tok = draw(probs, g1)
        assert tok.shape == (5,) and tok.dtype == torch.long
        assert torch.equal(tok, torch.multinomial(probs, 1, generator=g2)[:, 0])
    assert torch.equal(g1.get_state(), g2.get_state()) and tok[2] == 17
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    u = torch.empty(64, 1000, dtype=torch.float64).uniform_(generator=g1)
    assert torch.equal(torch.empty(64, 1000).exponential_(generator=g2), (-torch.log1p(-u)).float())


def test_draw_equals_multinomial_at_scale():
    """Token for token on 40,000 near-flat rows of 100 entries: the largest and second-largest probs / q are within a
    few parts in 10^4 of each other in some rows, so a q rounded below float32 precision (e.g. to half) changes some
    draws (3 of these rows); torch's multinomial and draw agree on all of them."""
    probs = (torch.randn(40000, 100, generator=torch.Generator().manual_seed(1)) * 0.5).softmax(-1)
    g1, g2 = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    assert torch.equal(draw(probs, g1), torch.multinomial(probs, 1, generator=g2)[:, 0])


def test_draw_is_reproducible_and_has_the_right_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    rows = probs.expand(40000, -1)
    a, b = draw(rows, torch.Generator().manual_seed(9)), draw(rows, torch.Generator().manual_seed(9))
    assert torch.equal(a, b) and not torch.equal(a, draw(rows, torch.Generator().manual_seed(10)))
    freq = torch.bincount(a, minlength=5).double() / len(a)
    assert freq[4] == 0                                             # a zero-probability token is never drawn
    se = (probs.double() * (1 - probs.double()) / len(a)).sqrt()
    assert ((freq - probs.double()).abs() <= 5 * se + 1e-12).all(), freq   # within 5 standard errors


def test_check_finite_and_settings():
    check_finite(torch.tensor([[0.0, -inf, 2.0]]), "x")            # filtered entries are fine
    for bad in ([[float("nan"), 0.0]], [[inf, 0.0]], [[-inf, -inf]]):
        with pytest.raises(FloatingPointError, match="x: non-finite logits"):
            check_finite(torch.tensor(bad), "x")
    check_settings(1.0, 0.0, 0, 1.0)
    for s, t, k, p in ((0.5, 1.0, 0, 1.0), (1.0, -1.0, 0, 1.0), (1.0, 1.0, -1, 1.0), (1.0, 1.0, 0, 0.0),
                       (1.0, 1.0, 0, 1.5), (inf, 1.0, 0, 1.0), (1.0, inf, 0, 1.0), (1.0, 1.0, 2.5, 1.0)):
        with pytest.raises(ValueError, match="cfg_scale >= 1"):   # inf guidance / temperature, fractional top-k too
            check_settings(s, t, k, p)
    check_settings(4.0, 0.7, 1000.0, 0.9)                          # an integral float top-k is a top-k
