"""Tests for the toy base models' training recipes (toy/models.py): each recipe's one step equals its loss composed by
hand from the recipe's stated parts, on the same generator state, and `_fit`'s optimiser, schedule and clipping are
the stated ones. The shipped toy/assets/ were built by these recipes; the other tests only load them, so a changed
recipe would otherwise show only after a 15-minute rebuild (`python -m toy.world --rebuild`).

How: `_fit` is replaced by a recorder, so a recipe hands over its step function instead of training; the step is
then called on a cloned generator and compared with the loss written out here.

Run: pytest -q tests/test_toy_models.py   (CPU, seconds)
"""
import math

import pytest
import torch
import torch.nn.functional as F

from policy import GPT, GPT_CONFIGS
from text_encoders import WordTextEncoder
from toy import models as toy_models
from toy.models import ToyFeatureNet, ToyTokenizer, make_clip
from toy.world import ToyConfig, ToyWorld
from vq import VQ_CONFIGS, VQModel

WORLD = ToyWorld()
CFG = ToyConfig.tiny(vq_restart=2, vq_steps=10, vq_batch=2)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def clone(g):
    return torch.Generator().set_state(g.get_state())


@pytest.fixture
def fit(monkeypatch):
    """Replace _fit with a recorder: -> dict with the recipe's name, params, steps, lr, loss_fn, wd."""
    rec = {}

    def record(name, params, steps, lr, loss_fn, progress, wd=0.0):
        rec.update(name=name, params=params, steps=steps, lr=lr, loss_fn=loss_fn, wd=wd)
    monkeypatch.setattr(toy_models, "_fit", record)
    return rec


def test_fit_is_adamw_with_warmup_cosine_to_a_tenth_and_clips_at_one(monkeypatch):
    """AdamW (betas 0.9 / 0.95, the given decay, none by default), lr x min(1, (s+1)/warm) x (0.55 + 0.45 cos(pi s /
    steps)) with warm = max(1, steps // 20), each step's fresh gradient (no accumulation) clipped to norm 1."""
    seen = []

    class Recorder(torch.optim.AdamW):
        def step(self, closure=None):
            g = torch.cat([p.grad.flatten() for grp in self.param_groups for p in grp["params"]]).clone()
            seen.append((self.param_groups[0]["lr"], g, self.defaults["betas"], self.defaults["weight_decay"]))
            return super().step(closure)
    monkeypatch.setattr(torch.optim, "AdamW", Recorder)
    p = torch.nn.Parameter(torch.zeros(4))
    loss = lambda s: (1000.0 * p[s % 4], {"s": float(s)})             # gradient 1000 e_(s mod 4): a new direction
    for steps, lr, wd in ((60, 1e-2, 0.3), (7, 1e-3, None)):
        seen.clear()
        toy_models._fit("t", [p], steps, lr, loss, False, **({} if wd is None else {"wd": wd}))
        assert len(seen) == steps
        warm = max(1, steps // 20)
        for s, (got, grad, betas, decay) in enumerate(seen):
            want = lr * min(1.0, (s + 1) / warm) * (0.55 + 0.45 * math.cos(math.pi * s / steps))
            assert got == pytest.approx(want, rel=1e-12), (steps, s)
            assert torch.allclose(grad, F.one_hot(torch.tensor(s % 4), 4).float(), atol=1e-6), (steps, s)
            assert betas == (0.9, 0.95) and decay == (wd or 0.0)


def test_feature_net_step_is_the_sum_of_per_group_cross_entropies_on_all_pairs(fit):
    torch.manual_seed(0)
    net = ToyFeatureNet(width=8, feat_dim=16)
    g = gen(1)
    toy_models.train_feat(net, WORLD, CFG, g, False)
    assert (fit["name"], fit["steps"], fit["lr"], fit["wd"]) == ("feature net", CFG.feat_steps, 2e-3, 0.0)
    assert fit["params"] == list(net.parameters())
    g2 = clone(g)
    loss, stats = fit["loss_fn"](0)
    sc = WORLD.scenes(CFG.feat_batch, g2, "all")                      # every (colour, shape) pair
    logits = net(WORLD.render(sc))[2].split(ToyFeatureNet.GROUPS, 1)
    y = ToyFeatureNet.targets(sc)
    want = sum(F.cross_entropy(lg, y[:, j]) for j, lg in enumerate(logits))
    acc = torch.stack([lg.argmax(1) == y[:, j] for j, lg in enumerate(logits)]).all(0).float().mean()
    assert torch.equal(loss, want) and stats == {"ce": want.item(), "acc": acc.item()}     # acc: all 7 groups right
    assert torch.equal(g.get_state(), g2.get_state())                # the step drew exactly this batch


def test_vq_step_is_l1_l2_perceptual_and_codebook_terms_and_restarts_only_dead_codes(fit):
    vq = VQModel(VQ_CONFIGS["toy"], generator=gen(0))
    torch.manual_seed(0)
    feat = ToyFeatureNet(width=8, feat_dim=16)
    g = gen(2)
    toy_models.train_vq(vq, WORLD, CFG, feat.perceptual, g, False)
    assert (fit["name"], fit["steps"], fit["lr"], fit["wd"]) == ("VQ", CFG.vq_steps, 1e-3, 0.0)
    g2, w0 = clone(g), vq.quantize.embedding.weight.detach().clone()
    loss, stats = fit["loss_fn"](0)                                  # step 0: no restart
    assert torch.equal(vq.quantize.embedding.weight.detach(), w0)
    x = WORLD.sample(CFG.vq_batch, g2, "train")[0]                   # generator-only training scenes
    z_q, commit, idx = vq.encode(x)
    x_rec = vq.decode(z_q)
    want = (x_rec - x).abs().mean() + (x_rec - x).pow(2).mean() + feat.perceptual(x_rec, x).mean() + commit
    assert torch.equal(loss, want)
    # steps 1-4: vq_restart = 2, so steps 2 and 4 re-draw the codes no batch used since the last restart from this
    # batch's encoder outputs; the others leave the codebook alone. (No optimiser here: the encoder stays fixed.)
    K = VQ_CONFIGS["toy"].codebook_size
    weight = lambda: vq.quantize.embedding.weight.detach().clone()
    usage = torch.zeros(K, dtype=torch.bool)
    usage[idx.flatten()] = True
    assert stats["used"] == int(usage.sum())
    for s in range(1, 5):
        gs, before = clone(g), weight()
        x_s = WORLD.sample(CFG.vq_batch, gs, "train")[0]
        if s % 2 == 0:
            z = vq.quant_conv(vq.encoder(x_s)).permute(0, 2, 3, 1).flatten(0, 2).detach()      # (B*N, C)
            pick = torch.randint(len(z), (int((~usage).sum()),), generator=gs)
        _, stats = fit["loss_fn"](s)
        after = weight()
        if s % 2 == 0:
            assert 0 < int((~usage).sum()) < K, s
            assert torch.equal(after[usage], before[usage]), s
            assert torch.allclose(after[~usage], F.normalize(z[pick], dim=-1)), s
            usage[:] = False                                          # counted afresh from the restart on
        else:
            assert torch.equal(after, before), s
        usage[vq.encode_indices(x_s).flatten()] = True
        assert stats["used"] == int(usage.sum()), s
        assert torch.equal(g.get_state(), gs.get_state()), s


def test_vq_restart_stops_after_80_percent_of_training(fit):
    vq = VQModel(VQ_CONFIGS["toy"], generator=gen(0))
    torch.manual_seed(0)
    cfg = ToyConfig.tiny(vq_restart=2, vq_steps=5, vq_batch=2)                   # 4 >= 0.8 * 5: no restart at step 4
    toy_models.train_vq(vq, WORLD, cfg, ToyFeatureNet(width=8, feat_dim=16).perceptual, gen(2), False)
    fit["loss_fn"](0)
    before = vq.quantize.embedding.weight.detach().clone()
    fit["loss_fn"](4)
    assert torch.equal(vq.quantize.embedding.weight.detach(), before)


def test_gpt_step_is_next_token_ce_with_caption_dropout(fit):
    g_tok = gen(3)
    vq = VQModel(VQ_CONFIGS["toy"], generator=gen(0))
    gpt = GPT(GPT_CONFIGS["toy"], seed=0)
    te = WordTextEncoder(WORLD.vocab, dim=GPT_CONFIGS["toy"].caption_dim, max_len=GPT_CONFIGS["toy"].cls_token_num)
    cfg = ToyConfig.tiny(n_train=40, gpt_batch=32)
    toy_models.train_gpt(gpt, vq, te, WORLD, cfg, g_tok, False)
    assert (fit["name"], fit["steps"], fit["lr"], fit["wd"]) == ("GPT", cfg.gpt_steps, 1e-3, 0.05)
    g = gen(3)
    tokens, caps = toy_models.tokenize_set(vq, WORLD, cfg.n_train, g, False)    # the fixed set, before any step
    assert tokens.shape == (40, 64) and len(caps) == 40
    assert torch.equal(g.get_state(), g_tok.get_state())
    loss, _ = fit["loss_fn"](0)
    i = torch.randint(len(caps), (cfg.gpt_batch,), generator=g)
    cond, mask = te([caps[j] for j in i])
    drop = torch.rand(cfg.gpt_batch, generator=g) < 0.1                          # caption dropout 0.1
    assert 0 < int(drop.sum()) < cfg.gpt_batch
    logits = gpt(tokens[i], cond, mask, drop_caption=drop)                       # (B, N, K)
    assert torch.equal(loss, F.cross_entropy(logits.flatten(0, 1), tokens[i].flatten()))


def test_tokenize_set_draws_its_scenes_in_chunks_of_500():
    """The scenes depend on the chunking (each world.sample call draws its attributes as whole tensors), so the
    chunk of 500 is part of the recipe the shipped GPT was trained with, like the seeds."""
    import inspect
    assert inspect.signature(toy_models.tokenize_set).parameters["chunk"].default == 500
    vq = VQModel(VQ_CONFIGS["toy"], generator=gen(0)).eval()
    t1, c1 = toy_models.tokenize_set(vq, WORLD, 7, gen(4), False, chunk=3)
    x, c2 = WORLD.sample(3, g := gen(4), "train")
    rest = [WORLD.sample(k, g, "train") for k in (3, 1)]
    assert c1 == c2 + rest[0][1] + rest[1][1]
    assert torch.equal(t1, torch.cat([vq.encode_indices(x)] + [vq.encode_indices(r[0]) for r in rest]))


def test_clip_step_is_symmetric_infonce_with_hard_negatives_and_duplicates_masked(fit):
    """Brute force, one image at a time: image i's candidates are the B captions except other copies of its own
    caption, plus all B altered captions; caption j's candidates are the B images except other images with its
    caption. Loss = mean of the two directions' cross-entropies."""
    tok = ToyTokenizer(WORLD.vocab)
    torch.manual_seed(0)
    clip = make_clip("clip_reward", tok)
    cfg = ToyConfig.tiny(clip_batch=96)
    g = gen(5)
    toy_models.train_clip(clip, tok, WORLD, cfg, g, False, "clip_reward")
    assert (fit["name"], fit["steps"], fit["lr"], fit["wd"]) == ("clip_reward", cfg.clip_steps, 1e-3, 0.1)
    g2 = clone(g)
    loss, stats = fit["loss_fn"](0)
    B = cfg.clip_batch
    x, caps = WORLD.sample(B, g2, "all")
    negs = [WORLD.alter(c, g2)[0] for c in caps]
    assert len(set(caps)) < B                                      # the batch holds duplicate captions
    with torch.no_grad():
        img = F.normalize(clip.encode_image(x), dim=-1).double()
        txt = F.normalize(clip.encode_text(tok(caps + negs)), dim=-1).double()
        scale = clip.logit_scale.exp().double()
        i2t, t2i, beats = 0.0, 0.0, 0
        for i in range(B):
            cand = [j for j in range(B) if j == i or caps[j] != caps[i]] + list(range(B, 2 * B))
            s = scale * txt[cand] @ img[i]
            i2t += -torch.log_softmax(s, 0)[cand.index(i)]
            rows = [j for j in range(B) if j == i or caps[j] != caps[i]]
            s = scale * img[rows] @ txt[i]
            t2i += -torch.log_softmax(s, 0)[rows.index(i)]
            beats += int(img[i] @ txt[i] > img[i] @ txt[B + i])
    assert loss.item() == pytest.approx(float(i2t + t2i) / (2 * B), rel=1e-5)
    assert abs(stats["beats_neg"] - beats / B) <= 1 / B                # fp32 there: one near-tie may differ
    assert torch.equal(g.get_state(), g2.get_state())


def test_feature_targets_by_hand():
    """Targets (colour A, shape A, colour B | 6, shape B | 4, size | 2, position | 5, axis | 2): two objects in
    left-then-right / top-then-bottom order, so "a red circle to the right of a blue square" is (blue square, red
    circle, horizontal) and "a white cross above a pink circle" is (white cross, pink circle, vertical)."""
    col, shp = {c: i for i, c in enumerate(WORLD.colours)}, {s: i for i, s in enumerate(WORLD.shapes)}
    t = torch.tensor
    sc = dict(n_obj=t([1, 2, 2]), colour=t([[col["green"], 0], [col["red"], col["blue"]], [col["white"], col["pink"]]]),
              shape=t([[shp["triangle"], 0], [shp["circle"], shp["square"]], [shp["cross"], shp["circle"]]]),
              size=t([1, 0, 0]), pos=t([3, 0, 0]), rel=t([0, 1, 2]))
    assert ToyFeatureNet.targets(sc).tolist() == [
        [col["green"], shp["triangle"], 6, 4, 1, 3, 2],
        [col["blue"], shp["square"], col["red"], shp["circle"], 2, 5, 0],
        [col["white"], shp["cross"], col["pink"], shp["circle"], 2, 5, 1]]


def test_clip_tokenizer_layout_and_length_limit():
    tok = ToyTokenizer(WORLD.vocab)                                  # pad 0, words 1..V, SOT V+1, EOT V+2
    V = len(WORLD.vocab)
    ids = tok(["a small red circle on the left"])[0]
    assert ids[:9].tolist() == [V + 1] + [WORLD.vocab.index(w) + 1 for w in "a small red circle on the left".split()] \
        + [V + 2] and (ids[9:] == 0).all() and tok.vocab_size == V + 3
    fits = " ".join(["a"] * (tok.L - 2))                              # SOT + 14 words + EOT = 16 slots
    assert tok([fits])[0, -1] == V + 2
    with pytest.raises(ValueError, match="longer than 14 words"):
        tok([fits + " a"])
    with pytest.raises(ValueError, match=r"unknown words \['dog'\]"):
        tok(["a dog"])


def test_seeded_fixes_and_restores_the_global_rng():
    torch.manual_seed(123)
    outside = torch.rand(3)
    torch.manual_seed(123)
    with toy_models._seeded(5):
        a = torch.rand(3)
    assert torch.equal(torch.rand(3), outside)                      # the global stream continues untouched
    with toy_models._seeded(5):
        assert torch.equal(torch.rand(3), a)
    with toy_models._seeded(6):
        assert not torch.equal(torch.rand(3), a)


def test_cached_rebuilds_an_artifact_built_from_other_upstream_artifacts(tmp_path, caplog):
    """An artifact records the checksums of the artifacts it was built from (the GPT: the VQ whose tokens it learnt);
    when they differ it is stale: rebuilt with a logged warning, never loaded. With build=False it is an error."""
    calls = []

    def train(m):
        calls.append(1)
        with torch.no_grad():
            m.weight.fill_(float(len(calls)))
    make = lambda: torch.nn.Linear(2, 2, bias=False)
    m1, sha1 = toy_models._cached(str(tmp_path), "a", make(), train, {"vq": "aaa"}, True)
    m2, sha2 = toy_models._cached(str(tmp_path), "a", make(), train, {"vq": "aaa"}, True)      # loaded
    assert len(calls) == 1 and sha2 == sha1 and torch.equal(m2.weight, m1.weight)
    with pytest.raises(FileNotFoundError, match=r"built from other upstream artifacts"):
        toy_models._cached(str(tmp_path), "a", make(), train, {"vq": "bbb"}, False)
    with caplog.at_level("WARNING", logger="toy"):
        m3, sha3 = toy_models._cached(str(tmp_path), "a", make(), train, {"vq": "bbb"}, True)
    assert len(calls) == 2 and sha3 != sha1 and (m3.weight == 2).all()
    assert "built from other upstream artifacts" in caplog.text
