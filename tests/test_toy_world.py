"""Tests of the toy world (toy/world.py, toy/models.py): generator, held-out split, exact checker, cache, bundle.

Run: pytest -q tests/test_toy_world.py   (CPU; builds the tiny preset a few times into tmp folders)
"""
import json
import logging
import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

from toy import models as toy_models
from toy.world import BACKGROUND, COLOURS, HELDOUT, ToyConfig, ToyWorld, config_key, load_toy
from toy.models import ToyFeatureNet, ToyTokenizer

WORLD = ToyWorld()
ATTRS_ONE = ("colour", "shape", "size", "position")
ATTRS_TWO = ("colour", "shape", "colour2", "shape2", "relation")


def gen(seed):
    return torch.Generator().manual_seed(seed)


def scenes_of(split, n, seed):
    x, caps = WORLD.sample(n, gen(seed), split)
    return x, caps, [WORLD.parse(c) for c in caps]


# --- generator -------------------------------------------------------------------------------------------------
def test_generator_deterministic_and_seed_dependent():
    x1, c1 = WORLD.sample(64, gen(3))
    x2, c2 = WORLD.sample(64, gen(3))
    x3, c3 = WORLD.sample(64, gen(4))
    assert torch.equal(x1, x2) and c1 == c2
    assert not torch.equal(x1, x3) and c1 != c3
    assert x1.shape == (64, 3, 32, 32) and x1.min() >= -1 and x1.max() <= 1


def test_generator_variety():
    _, caps, parsed = scenes_of("all", 2000, 0)
    assert {p["n"] for p in parsed} == {1, 2}
    assert len(set(caps)) > 800                                   # far from a handful of memorisable captions
    assert {o for p in parsed for o in p["objs"]} == {(c, s) for c in range(6) for s in range(4)}
    assert all(w in WORLD.vocab for c in caps for w in c.split())


def test_heldout_pairs_never_in_train_and_always_in_heldout():
    held = {(WORLD.colours.index(c), WORLD.shapes.index(s)) for c, s in HELDOUT}
    _, _, train = scenes_of("train", 3000, 1)
    assert not any(o in held for p in train for o in p["objs"])
    _, _, heldout = scenes_of("heldout", 1000, 2)
    assert all(any(o in held for o in p["objs"]) for p in heldout)


def test_scenes_fit_in_image_and_objects_do_not_touch():
    sc = WORLD.scenes(2000, gen(5), "all")
    r = sc["ext"].float() / 2
    assert ((sc["cx"] - r) >= 0).all() and ((sc["cx"] + r) <= 32).all()
    assert ((sc["cy"] - r) >= 0).all() and ((sc["cy"] + r) <= 32).all()
    m = WORLD.masks(sc["shape"], sc["ext"], sc["cx"], sc["cy"])             # (n, 2, S, S)
    two = sc["n_obj"] == 2
    assert not (m[two, 0] & m[two, 1]).any()


def test_scene_attributes_cover_exactly_their_stated_ranges():
    """Each drawn quantity takes every value of its stated range and no other (ToyWorld.scenes' comments): the
    shipped base models learnt this distribution, so a shifted range is a different world."""
    sc = WORLD.scenes(6000, gen(6), "all")
    vals = lambda t: set(t.tolist())
    half = 0.5 * (sc["ext"] % 2)                                         # odd extents sit on pixel centres
    cx, cy = sc["cx"] - half, sc["cy"] - half                          # (n, 2) integer positions
    assert vals(sc["n_obj"]) == {1, 2} and (sc["colour"][:, 0] != sc["colour"][:, 1]).all()
    one, two = sc["n_obj"] == 1, sc["n_obj"] == 2
    for size, (lo, hi) in enumerate(((7, 10), (13, 16))):             # SIZES: small 7..10, large 13..16 px
        sel = one & (sc["size"] == size)
        assert vals(sc["ext"][sel, 0]) == set(range(lo, hi + 1)) and torch.equal(sc["ext"][sel, 0], sc["ext"][sel, 1])
        jit = 2 - size                                                 # +-2 px small, +-1 px large around the anchor
        for axis, c in enumerate((cx, cy)):
            off = c[sel, 0] - WORLD.anchors[sc["pos"][sel], axis]
            assert vals(off) == set(range(-jit, jit + 1)), (size, axis)
    assert vals(sc["pos"][one]) == set(range(5))
    assert vals(sc["ext"][two].flatten()) == set(range(7, 11))         # two objects: 7..10 px each
    assert vals(sc["rel"][two]) == set(range(4))
    horiz = sc["rel"] < 2                                              # "to the left / right of": x is the axis
    along = torch.where(horiz[:, None], cx, cy)[two]                  # (n2, 2) A, B on the relation's axis
    across = torch.where(horiz[:, None], cy, cx)[two]
    a_near = (sc["rel"][two] % 2 == 0)                                 # "left of" / "above": A is the near one
    near, far = set(range(7, 11)), set(range(22, 26))
    assert vals(along[a_near, 0]) == near and vals(along[a_near, 1]) == far
    assert vals(along[~a_near, 0]) == far and vals(along[~a_near, 1]) == near
    assert vals(across[:, 0]) == set(range(9, 24))                     # A off the axis: 9..23
    d = across[:, 1] - across[:, 0]                                    # B within +-5 of A, clamped to 7..25
    inner = (across[:, 0] >= 12) & (across[:, 0] <= 20)                # no clamp can act there
    assert vals(d[inner]) == set(range(-5, 6)) and vals(across[:, 1]) == set(range(7, 26))


def test_render_draws_the_stated_colours_and_pixel_areas():
    """Two objects by hand: a 7-px square centred on pixel (9, 16) and an 8-px cross centred on the pixel corner
    (24, 16). The square covers its 7 x 7 pixels in COLOURS' exact value (0-255 / 127.5 - 1), the cross two bars
    of 8 x 2 px (arm half-width 0.35 x 4 = 1.4 px: 2 pixel centres), everything else is BACKGROUND."""
    t = torch.tensor
    sc = dict(n_obj=t([2]), colour=t([[0, 2]]), shape=t([[1, 3]]), ext=t([[7, 8]]), cx=t([[9.5, 24.0]]),
              cy=t([[16.5, 16.0]]), size=t([0]), pos=t([0]), rel=t([0]))
    img = (WORLD.render(sc)[0] + 1) * 127.5                                       # (3, S, S) back to 0-255
    want = torch.tensor(BACKGROUND, dtype=torch.float32).view(3, 1, 1).repeat(1, 32, 32)
    want[:, 13:20, 6:13] = torch.tensor(COLOURS["red"], dtype=torch.float32).view(3, 1, 1)      # rows 13..19
    blue = torch.tensor(COLOURS["blue"], dtype=torch.float32).view(3, 1, 1)
    want[:, 15:17, 20:28] = blue                                                   # horizontal bar
    want[:, 12:20, 23:25] = blue                                                   # vertical bar
    assert torch.allclose(img, want, atol=1e-4)
    one = dict(sc, n_obj=t([1]))                                                  # slot 1 is not drawn
    assert torch.allclose((WORLD.render(one)[0, :, 12:20, 20:28] + 1) * 127.5,
                          torch.tensor(BACKGROUND, dtype=torch.float32).view(3, 1, 1).expand(3, 8, 8), atol=1e-4)


def test_the_world_is_the_one_the_shipped_models_learnt():
    """A digest of scenes, images and captions drawn from fixed seeds (integer draws and exact float arithmetic: the
    same on every CPU). It changes only when the world changes; the shipped toy/assets/ were trained on this one, so
    a deliberate change bumps TOY_VERSION, rebuilds them (`python -m toy.world --rebuild`) and updates the digest."""
    import hashlib
    h = hashlib.sha256()
    for k, split in enumerate(("train", "heldout", "all")):
        sc = WORLD.scenes(256, gen(100 + k), split)
        for key in sorted(sc):
            h.update(key.encode() + sc[key].double().numpy().tobytes())
        h.update(WORLD.render(sc).numpy().tobytes() + "|".join(WORLD.caption(sc)).encode())
        h.update("|".join(WORLD.alter(c, gen(200 + k))[0] for c in WORLD.caption(sc)).encode())
    assert h.hexdigest()[:16] == "82abc0d80ca91a48", (
        "the toy world's scenes changed: if on purpose, bump TOY_VERSION and rebuild toy/assets/; if only torch "
        "changed (its CPU random draws), the world is the same but its draws are not: say so and update the digest")


def test_alter_changes_exactly_the_named_attribute():
    """alter's contract, by parsing both captions: one stated attribute changed (a new colour differs from BOTH
    objects' colours: "a red X above a red Y" is no world caption), every other field kept; a random attribute is
    drawn among those the caption states, each of them in turn."""
    _, caps, parsed = scenes_of("all", 300, 9)
    field = {"colour": lambda p: p["objs"][0][0], "shape": lambda p: p["objs"][0][1], "size": lambda p: p["size"],
             "position": lambda p: p["pos"], "colour2": lambda p: p["objs"][1][0],
             "shape2": lambda p: p["objs"][1][1], "relation": lambda p: p["rel"]}
    drawn = {1: set(), 2: set()}
    g = gen(10)
    for cap, p in zip(caps, parsed):
        names = ATTRS_ONE if p["n"] == 1 else ATTRS_TWO
        for attr in (None, *names):
            new, got = WORLD.alter(cap, g, attr)
            q = WORLD.parse(new)
            assert got in names and (attr is None or got == attr) and q["n"] == p["n"]
            changed = {a for a in names if field[a](q) != field[a](p)}
            assert changed == {got}, (cap, new, got)
            if got.startswith("colour"):
                assert field[got](q) not in {o[0] for o in p["objs"]}
            if attr is None:
                drawn[p["n"]].add(got)
    assert drawn == {1: set(ATTRS_ONE), 2: set(ATTRS_TWO)}
    with pytest.raises(ValueError, match="'relation' not in"):
        WORLD.alter("a small red circle on the left", g, "relation")
    with pytest.raises(ValueError, match="not a toy-world caption"):
        WORLD.alter("a red circle", g)


# --- the exact checker ----------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), split=st.sampled_from(["train", "heldout"]))
def test_checker_accepts_every_real_scene(seed, split):
    x, caps = WORLD.sample(16, gen(seed), split)
    assert torch.equal(WORLD.check(x, caps), torch.ones(16))


@pytest.mark.slow
@pytest.mark.parametrize("attr", sorted(set(ATTRS_ONE + ATTRS_TWO)))
def test_checker_rejects_one_altered_attribute(attr):
    x, caps, parsed = scenes_of("all", 240, 7)
    keep = [i for i, p in enumerate(parsed) if attr in (ATTRS_ONE if p["n"] == 1 else ATTRS_TWO)]
    g = gen(8)
    altered = [WORLD.alter(caps[i], g, attr) for i in keep]
    assert all(a == attr and c != caps[i] for (c, a), i in zip(altered, keep))
    det = WORLD.check_detail(x[keep], [c for c, _ in altered])
    assert all(not d[attr] for d in det)                         # the changed attribute itself is caught
    assert (WORLD.check(x[keep], [c for c, _ in altered]) < 1).all()


def test_checker_counts_objects():
    x, caps, parsed = scenes_of("all", 200, 9)
    two = [i for i, p in enumerate(parsed) if p["n"] == 2]
    one = [i for i, p in enumerate(parsed) if p["n"] == 1]
    # a two-object image described as one of its objects alone: everything but the count may hold
    solo = [WORLD.format(dict(n=1, objs=parsed[i]["objs"][:1], size=0, pos=0, rel=0)) for i in two]
    assert not any(d["count"] for d in WORLD.check_detail(x[two], solo))
    # a one-object image with a two-object caption
    k = len(min(one, two, key=len))
    det = WORLD.check_detail(x[one[:k]], [caps[i] for i in two[:k]])
    assert not any(d["count"] for d in det)


def pixel(rgb):
    """A 0-255 colour of the world as a (3, 1, 1) pixel in [-1, 1], for hand-drawn test images."""
    return (torch.tensor(rgb, dtype=torch.float32) / 127.5 - 1).view(3, 1, 1)


def test_checker_rules_on_a_hand_drawn_bar():
    """One red bar, 4 rows x 12 columns: its extent is the LONGER side (12 > 11.5: large); a two-object caption
    whose second object is missing still reports every attribute, the missing object's and the relation failing."""
    img = pixel(BACKGROUND).repeat(1, 32, 32)
    img[:, 10:14, 4:16] = pixel(COLOURS["red"])
    one, = WORLD.check_detail(img[None], ["a large red square on the left"])
    assert one["colour"] and one["size"] and one["count"]
    two, = WORLD.check_detail(img[None], ["a red square above a blue circle"])
    assert set(two) == set(ATTRS_TWO) | {"count"}
    assert two["colour"] and not (two["colour2"] or two["shape2"] or two["relation"] or two["count"])
    assert WORLD.check(img[None], ["a red square above a blue circle"]).item() <= 2 / 6
    img[:, 25:27, 25:27] = pixel(COLOURS["blue"])
    speck, = WORLD.check_detail(img[None], ["a large red square on the left"])
    assert speck["count"]                                        # a 4-px speck (< MIN_AREA) is no object
    img[:, 25:28, 25:29] = pixel(COLOURS["blue"])
    block, = WORLD.check_detail(img[None], ["a red square above a blue circle"])
    assert block["colour2"] and block["count"]                   # 3 x 4 = MIN_AREA px: an object


def test_segment_labels_non_convex_components_as_one():
    """A component's label (its largest pixel index) must spread in all four directions: in a Γ with a 1-px top bar
    it goes up, then right; in an L with a 1-px bottom bar, left, then up; in a ∩ up, across and down again. The
    world's own shapes are convex, so only decoded images need this."""
    img = pixel(BACKGROUND).repeat(3, 1, 32, 32)
    green = pixel(COLOURS["green"])
    img[:, :, 4:28, 4:8] = green                                 # a left bar in all three
    img[0, :, 4:5, 4:28] = green                                 # Γ: a 1-px top bar
    img[1, :, 27:28, 4:28] = green                               # L: a 1-px bottom bar
    img[2, :, 4:28, 20:24] = green                               # ∩: a second leg joined at the top
    img[2, :, 4:8, 4:24] = green
    cls, lab = WORLD.segment(img)
    for i in range(3):
        assert (cls[i] >= 0).sum() > 0 and lab[i][cls[i] >= 0].unique().numel() == 1, i
    # 4-connected: two squares that touch only at a corner are two components, on either diagonal
    img = img[:2].clone()
    img[:] = pixel(BACKGROUND)
    img[0, :, 4:10, 4:10] = green                                # upper-left and lower-right
    img[0, :, 10:16, 10:16] = green
    img[1, :, 4:10, 10:16] = green                               # upper-right and lower-left
    img[1, :, 10:16, 4:10] = green
    cls, lab = WORLD.segment(img)
    assert [lab[i][cls[i] >= 0].unique().numel() for i in range(2)] == [2, 2]


def test_checker_refuses_non_finite_images():
    x, caps, _ = scenes_of("train", 4, 3)
    x[1, 0, 5, 5] = float("nan")                  # one broken pixel: an error, not a silent score of 0
    with pytest.raises(ValueError, match="NaN"):
        WORLD.check(x, caps)


def test_checker_refuses_wrong_size_or_01_range():
    """The checker's geometry is 32 x 32 in [-1, 1]: another size is an error naming it (not a bare reshape error), and
    images in [0, 1] (no pixel below 0, where the background is -0.84) are refused, not scored near 0."""
    x, caps, _ = scenes_of("train", 4, 3)
    with pytest.raises(ValueError, match=r"need images \(n,3,32,32\).*\(4, 3, 64, 64\)"):
        WORLD.check(x.repeat_interleave(2, -1).repeat_interleave(2, -2), caps)
    for x01 in ((x + 1) / 2, ((x + 1) / 2).index_put_((torch.tensor(0),) * 4, torch.tensor(0.0))):   # min 0 too
        with pytest.raises(ValueError, match=r"\[-1, 1\] images.*2 \* x01 - 1"):
            WORLD.check(x01, caps)
    assert torch.equal(WORLD.check(x, caps), torch.ones(4))                  # the same scenes in [-1, 1] pass


def test_checker_tolerates_mild_blur_and_noise():
    x, caps = WORLD.sample(160, gen(10))
    noisy = x + 0.15 * torch.randn(x.shape, generator=gen(11))
    assert WORLD.check(noisy, caps).mean() > 0.98
    down_up = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x, 2), scale_factor=2, mode="bilinear")
    assert WORLD.check(down_up, caps).mean() > 0.9
    assert WORLD.check(torch.full_like(x, -0.85), caps).max() < 0.5  # an empty image holds almost nothing


def test_parse_format_roundtrip_and_bad_captions():
    _, caps, parsed = scenes_of("all", 500, 12)
    assert [WORLD.format(p) for p in parsed] == caps
    for bad in ["a purple circle on the left", "two red circles", "a small red circle", "",
                "one red circle above two blue square"]:
        with pytest.raises(ValueError, match="not a toy-world caption"):
            WORLD.parse(bad)
    with pytest.raises(ValueError, match="split"):
        WORLD.sample(2, gen(0), "test")


def test_parse_refuses_bad_captions_under_python_O():
    """The template checks are explicit ValueErrors, not asserts, which `python -O` would drop (it then parsed
    'one red circle above two blue square' as a two-object caption)."""
    import subprocess
    import sys
    code = ("from toy.world import ToyWorld\nw = ToyWorld()\n"
            "for c in ['one red circle above two blue square', 'the small red circle on the left']:\n"
            "    try:\n        print('parsed', w.parse(c))\n    except ValueError:\n        print('refused')\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-O", "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["refused", "refused"], out.stdout


def test_clip_tokenizer_puts_eot_at_the_largest_id():
    tok = ToyTokenizer(WORLD.vocab)
    ids = tok(["a small red circle on the left", "a red circle to the left of a blue square"])
    assert ids.shape == (2, tok.L) and (ids.argmax(1) == torch.tensor([8, 11])).all()  # open_clip pools at argmax
    with pytest.raises(ValueError, match="unknown"):
        tok(["a purple circle"])


def test_feature_targets_are_canonical():
    """"A left of B" and "B right of A" are the same image, so they must get the same attribute targets."""
    sc = WORLD.scenes(500, gen(13), "all")
    flipped = {k: v.flip(1) if v.dim() == 2 else v.clone() for k, v in sc.items()}   # swap the two objects
    flipped["rel"] = sc["rel"] ^ 1                                      # left<->right, above<->below
    two = sc["n_obj"] == 2
    assert torch.equal(WORLD.render(sc)[two], WORLD.render(flipped)[two])
    assert torch.equal(ToyFeatureNet.targets(sc)[two], ToyFeatureNet.targets(flipped)[two])


# --- cache and bundle ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("toycache"))
    return cache, load_toy(ToyConfig.tiny(), cache, progress=False)


@pytest.mark.slow
def test_bundle_works_end_to_end(built):
    _, b = built
    x, caps = b.world.sample(4, gen(0))
    x01 = ((x + 1) / 2).requires_grad_(True)
    scores, info = b.reward_fn(x01, caps)
    scores.sum().backward()
    assert scores.shape == (4,) and x01.grad.abs().sum() > 0 and torch.isfinite(x01.grad).all()
    assert b.eval_clip_fn(x01.detach(), caps).shape == (4,)
    assert b.feature_fn(x01.detach()).shape[0] == 4
    xp = x.clone().requires_grad_(True)
    d = b.perceptual(xp, torch.flip(x, [0]))
    d.sum().backward()
    assert d.shape == (4,) and (d > 0).all() and xp.grad.abs().sum() > 0
    assert torch.allclose(b.perceptual(x, x), torch.zeros(4))
    from policy import sample
    cond, mask = b.text_encoder(caps)
    tokens = sample(b.gpt, cond, mask, cfg_scale=3.0, generator=gen(1))
    assert tokens.shape == (4, 64)
    assert b.vq.decode_indices(tokens).shape == (4, 3, 32, 32)
    assert b.world.check(b.vq.decode_indices(tokens).clamp(-1, 1), caps).shape == (4,)


@pytest.mark.slow
def test_second_load_uses_the_cache(built):
    cache, b = built
    names = ("feat", "vq", "gpt", "clip_reward", "clip_eval")
    stamps = {n: os.path.getmtime(os.path.join(b.cache_path, n + ".pt")) for n in names}
    b2 = load_toy(ToyConfig.tiny(), cache, build=False, progress=False)
    assert {n: os.path.getmtime(os.path.join(b.cache_path, n + ".pt")) for n in names} == stamps
    for p, q in zip(b.gpt.parameters(), b2.gpt.parameters()):
        assert torch.equal(p, q)


@pytest.mark.slow
def test_build_is_reproducible(built, tmp_path):
    _, b = built
    b2 = load_toy(ToyConfig.tiny(), str(tmp_path), progress=False)
    for n in ("feat", "vq", "gpt", "clip_reward", "clip_eval"):
        with open(os.path.join(b.cache_path, n + ".json")) as f1, open(os.path.join(b2.cache_path, n + ".json")) as f2:
            assert json.load(f1)["sha256"] == json.load(f2)["sha256"], n


def test_cache_key_is_stable():
    """The key hashes values only (no module or class name), so renaming toy.py -> toy/world.py kept every existing
    .cache/toy/<key> folder valid. A deliberate recipe change bumps TOY_VERSION and updates these values (and
    toy/assets/manifest.json's config_key)."""
    assert config_key(ToyConfig()) == "2b58afbdb970a03e"
    assert config_key(ToyConfig.tiny()) == "19cdeb064910684a"


def test_an_edited_world_table_gets_its_own_models(monkeypatch):
    """The shipped base models learnt these tables (HELDOUT: the pairs the generator never saw), so editing one must
    not load them: the key changes, and load_toy then builds (or finds) other models."""
    from toy import world
    key = config_key(ToyConfig())
    assert world.load_toy.__module__ == "toy.world" and world.shipped_manifest()["config_key"] == key
    monkeypatch.setattr(world, "HELDOUT", (("red", "circle"),) + HELDOUT[1:])
    assert config_key(ToyConfig()) != key
    monkeypatch.setattr(world, "HELDOUT", HELDOUT)
    monkeypatch.setattr(world, "MIN_AREA", world.MIN_AREA + 1)
    assert config_key(ToyConfig()) != key


@pytest.mark.slow
def test_config_change_gives_a_new_key_and_a_rebuild(built):
    cache, b = built
    tiny = ToyConfig.tiny()
    assert config_key(ToyConfig.tiny(cfg_scale=9.0)) == config_key(tiny)      # eval-only fields do not count
    other = ToyConfig.tiny(vq_steps=tiny.vq_steps + 1)
    assert config_key(other) != config_key(tiny)
    with pytest.raises(FileNotFoundError, match=r"toy models: no \S+\.pt; restore"):
        load_toy(other, cache, build=False, progress=False)
    b2 = load_toy(other, cache, progress=False)
    assert b2.cache_path != b.cache_path and os.path.exists(os.path.join(b2.cache_path, "gpt.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vq", "clip_reward"])
def test_corrupt_cache_file_is_rebuilt_not_used(built, name, caplog):
    cache, b = built
    path = os.path.join(b.cache_path, name + ".pt")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)                                # a partial write
    with caplog.at_level(logging.WARNING, logger="toy"):
        with pytest.raises(FileNotFoundError, match=f"{name}.pt: checksum mismatch"):
            load_toy(ToyConfig.tiny(), cache, build=False, progress=False)   # never silently used, the reason named
    assert not any("rebuilding" in r.getMessage() for r in caplog.records)   # nothing is rebuilt here
    with caplog.at_level(logging.WARNING, logger="toy"):
        load_toy(ToyConfig.tiny(), cache, progress=False)
    assert any("checksum mismatch" in r.getMessage() and name + ".pt" in r.getMessage() for r in caplog.records)
    with open(os.path.join(b.cache_path, name + ".json")) as f:
        assert json.load(f)["sha256"] == toy_models._sha256(path)


@pytest.mark.slow
def test_garbage_metadata_is_rebuilt(built, caplog):
    cache, b = built
    with open(os.path.join(b.cache_path, "feat.json"), "w") as f:
        f.write("{not json")
    with caplog.at_level(logging.WARNING, logger="toy"):
        load_toy(ToyConfig.tiny(), cache, progress=False)
    assert any("unreadable" in r.getMessage() for r in caplog.records)


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="32x32"):
        ToyWorld(ToyConfig(image_size=64))


def test_two_builders_of_one_cache_build_once_and_both_load_it(tmp_path):
    """toy.calibrate / toy.reproduce start a training run and an evaluation at once; on a cold cache both built the
    same artifact and one rename failed on the other's temporary file. Now the second waits on the build lock and
    loads what the first wrote: one build, the same checksum for both, no lock or temporary file left."""
    import threading
    import time
    builds, out = [], {}

    def train(model):
        builds.append(1)
        time.sleep(0.4)                                   # long enough for the second builder to arrive
        with torch.no_grad():
            model.weight.fill_(0.25)

    def builder(key):
        torch.manual_seed(0)
        out[key] = toy_models._cached(str(tmp_path), "art", torch.nn.Linear(2, 2), train, {"dep": "x"}, True)[1]
    threads = [threading.Thread(target=builder, args=(k,)) for k in range(2)]
    threads[0].start()
    time.sleep(0.1)
    threads[1].start()
    for t in threads:
        t.join()
    assert builds == [1] and out[0] == out[1]
    assert sorted(os.listdir(tmp_path)) == ["art.json", "art.pt"]
