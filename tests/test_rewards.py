"""Tests for rewards.py (CPU, offline, tiny random open_clip CLIPs).  Run: pytest -q tests/test_rewards.py"""
import os
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import open_clip
import rewards
from rewards import ClipReward, WeightedReward, make_reward, resize_short_side_center_crop


def tiny_clip(image_size=32, patch_size=8, seed=0):
    torch.manual_seed(seed)  # test-only: open_clip's init uses the global RNG
    return open_clip.CLIP(embed_dim=32, vision_cfg=dict(image_size=image_size, patch_size=patch_size, width=32,
                                                        layers=1, head_width=16),
                          text_cfg=dict(context_length=16, vocab_size=100, width=32, heads=2, layers=1))


def tokenize(texts):
    """Toy tokenizer: chars -> ids 1..97, EOT = 99 is the largest id (open_clip pools the text at the argmax)."""
    out = torch.zeros(len(texts), 16, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = [1 + ord(c) % 97 for c in t][:14] + [99]
        out[i, :len(ids)] = torch.tensor(ids)
    return out


def make(resize="bilinear", image_size=32, patch_size=8, **kw):
    mean, std = (rewards.RELEASED_CLIP_MEAN, rewards.RELEASED_CLIP_STD) if resize == "bilinear" else \
        (rewards.OPENAI_MEAN, rewards.OPENAI_STD)
    return ClipReward(tiny_clip(image_size, patch_size), tokenize, image_size=image_size, mean=mean, std=std,
                      resize=resize, **kw)


PROMPTS = ["a red cube", "a blue ball", "two cats"]


def rand_images(b=3, h=40, w=40, seed=0, dtype=torch.float32):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("resize", rewards.RESIZE_MODES)
def test_shapes_range_and_info(resize):
    r = make(resize)
    scores, info = r(rand_images(), PROMPTS)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert (scores.abs() <= 100.0 + 1e-3).all()  # 100 x cosine
    assert set(info) == {"clip_mean"} and abs(info["clip_mean"] - scores.mean().item()) < 1e-5
    assert all(not p.requires_grad for p in r.model.parameters()) and not r.model.training


@pytest.mark.parametrize("resize", rewards.RESIZE_MODES)
def test_image_gradient_matches_finite_difference(resize):
    r = make(resize)
    r.model.double()
    x = rand_images(b=2, h=40, w=48, dtype=torch.float64).requires_grad_(True)
    prompts = PROMPTS[:2]
    scores, _ = r(x, prompts)
    scores.sum().backward()
    grad = x.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # central difference along one pixel direction (a central pixel, so the centre crop keeps it)
    for idx in [(0, 1, 20, 24), (1, 2, 17, 30)]:
        h = 1e-6
        xp, xm = x.detach().clone(), x.detach().clone()
        xp[idx] += h
        xm[idx] -= h
        with torch.no_grad():
            fd = (r(xp, prompts)[0].double().sum() - r(xm, prompts)[0].double().sum()) / (2 * h)
        assert grad[idx].item() != 0.0
        assert abs(fd.item() - grad[idx].item()) <= 1e-4 * max(1.0, abs(grad[idx].item())), (fd, grad[idx])


def test_gradient_reaches_decoder_parameters():
    r = make("bilinear")
    torch.manual_seed(1)
    decoder = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.SiLU(),
                                  torch.nn.Conv2d(8, 3, 3, padding=1))
    z = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    x = decoder(z)  # (B,3,16,16) in "[-1,1]"
    images01 = ((x + 1) / 2).clamp(0, 1)
    scores, _ = r(images01, PROMPTS)
    (-scores.mean()).backward()
    for p in decoder.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in r.model.parameters())  # the reward model stays frozen


def test_text_cache_hit_and_values():
    r = make("bilinear")
    calls = []
    orig = r.model.encode_text

    def counting(tokens):
        calls.append(tokens.shape[0])
        return orig(tokens)

    r.model.encode_text = counting
    x = rand_images()
    s1, _ = r(x, PROMPTS)
    assert (r.cache_misses, r.cache_hits) == (3, 0)
    s2, _ = r(x, list(PROMPTS))  # same prompts again: all served from the cache
    assert calls == [3] and r.cache_misses == 3 and r.cache_hits == 3
    assert torch.allclose(s1, s2)
    # a new prompt mixed with cached ones: only the new one is encoded, and repeated prompts are encoded once
    r(rand_images(b=4), ["a red cube", "new prompt", "new prompt", "two cats"])
    assert calls == [3, 1] and (r.cache_misses, r.cache_hits) == (4, 5)   # the 2nd "new prompt" is no hit: 1 encode
    # cached features equal a fresh computation
    with torch.no_grad():
        fresh = orig(tokenize(["a blue ball"]))
        fresh = fresh / fresh.norm(dim=-1, keepdim=True)
    assert torch.allclose(r.text_features(["a blue ball"]), fresh, atol=1e-6)


def test_text_cache_is_bounded():
    r = make("bilinear", text_cache_size=2)
    r(rand_images(), PROMPTS)
    assert len(r._text_cache) == 2 and "a red cube" not in r._text_cache  # least recently used evicted


def test_text_cache_state_restores_the_saved_features_without_re_encoding():
    # train.py saves the cache in checkpoints: a prompt's feature depends in its last bits on its encoding batch,
    # so a resumed run must reuse the saved features, not re-encode them in another batch
    a = make("bilinear")
    a(rand_images(b=4), ["a red cube", "a blue ball", "a red cube", "two cats"])
    a(rand_images(b=1), ["new prompt"])
    a.text_features(["a red cube"])                      # LRU order: blue ball, two cats, new prompt, red cube
    with torch.no_grad():   # stand-in for a last-bits difference: perturb the saved features
        state = a.cache_state()
        state["features"] = state["features"] + 1e-3
    assert state["prompts"] == ["a blue ball", "two cats", "new prompt", "a red cube"]
    b = make("bilinear")
    b.load_cache_state(state)
    got = b.text_features(["two cats", "a red cube"])
    assert b.cache_misses == 0 and torch.equal(got, state["features"][[1, 3]])
    assert list(b._text_cache) == ["a blue ball", "new prompt", "two cats", "a red cube"]   # the order moved on
    w = WeightedReward({"a": (a, 1.0)})
    c = WeightedReward({"a": (make("bilinear"), 1.0)})
    c.load_cache_state(w.cache_state())
    assert torch.equal(c.rewards["a"][0].cache_state()["features"], a.cache_state()["features"])
    lazy = rewards.make_reward("clip")                   # never built: nothing to save, and loading nothing builds nothing
    lazy.load_cache_state(lazy.cache_state())
    assert lazy.cache_state()["prompts"] == [] and lazy._reward is None
    with pytest.raises(ValueError, match="damaged"):
        b.load_cache_state({"prompts": ["x"], "features": torch.zeros(2, 4)})


def test_non_finite_raises_naming_the_reward():
    r = make("bilinear", name="my_clip")
    x = rand_images()
    x[1, 0, 3, 3] = float("nan")
    with pytest.raises(RuntimeError, match="my_clip"):
        r(x, PROMPTS)


def test_bad_inputs_are_rejected():
    r = make("bilinear")
    with pytest.raises(ValueError, match="one prompt string per image"):
        r(rand_images(), PROMPTS[:2])
    with pytest.raises(ValueError, match="float"):
        r((rand_images() * 255).to(torch.uint8), PROMPTS)
    with pytest.raises(ValueError, match="resize"):
        make("nearest")
    for bad in (rand_images()[:, 0], rand_images()[:, :2], rand_images().tolist()):    # (B,H,W), 2 channels, a list
        with pytest.raises(ValueError, match=r"\(B,3,H,W\) tensor"):
            r(bad, PROMPTS)
    with pytest.raises(ValueError, match="mean/std need 3 channel values"):
        ClipReward(tiny_clip(), tokenize, image_size=32, mean=(0.5, 0.5), std=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match=r"tokenize must return a \(n, L\) LongTensor"):
        ClipReward(tiny_clip(), lambda texts: tokenize(texts)[0], image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)(
            rand_images(), PROMPTS)


@pytest.mark.parametrize("resize", ["bicubic", "bicubic_crop"])
def test_each_resize_mode_is_its_released_transform(resize):
    """The two resize-then-normalise modes, value by value: "bicubic" squashes with a plain (not antialiased,
    corners not aligned) bicubic and normalises with the given mean / std (the COCO eval CLIP score, docs/method.md
    §11); "bicubic_crop" is HPS's resize of the short side + centre crop, then normalised (D6). Inputs are not
    square and larger than S, so an antialiased filter, a crop or a skipped step each change the numbers."""
    r = ClipReward(tiny_clip(), tokenize, image_size=32, mean=(0.2, 0.5, 0.7), std=(0.3, 0.2, 0.4), resize=resize)
    x = rand_images(b=2, h=48, w=64)
    mean, std = torch.tensor([0.2, 0.5, 0.7]).view(1, 3, 1, 1), torch.tensor([0.3, 0.2, 0.4]).view(1, 3, 1, 1)
    if resize == "bicubic":
        want = F.interpolate(x, size=(32, 32), mode="bicubic", align_corners=False)
    else:
        want = torch.stack([_hps_reference((x[i] * 255).round().to(torch.uint8), 32) for i in range(2)])
        x = (x * 255).round() / 255                    # the reference starts from uint8 pixels
    torch.testing.assert_close(r.preprocess(x), (want - mean) / std, atol=2e-5 if resize == "bicubic" else 1e-4, rtol=0)


def test_half_precision_models_report_float32_scores():
    """A bf16 reward model scores in float32 (the loss math downstream stays fp32), close to the fp32 model's."""
    r32 = make("bilinear")
    r16 = make("bilinear")
    r16.model.to(torch.bfloat16)
    x = rand_images()
    s32, s16 = r32(x, PROMPTS)[0], r16(x, PROMPTS)[0]
    assert s16.dtype == torch.float32 and not torch.equal(s16, s32) and torch.allclose(s16, s32, atol=2.0)


def test_weighted_reward_equals_manual_sum_and_skips_zero_weight():
    a, b = make("bilinear", name="a"), make("bicubic_crop", name="b")

    def must_not_run(images01, prompts):
        raise AssertionError("a weight-0 component was evaluated")

    x = rand_images().requires_grad_(True)
    total, info = WeightedReward({"a": (a, 1.0), "b": (b, 0.5), "z": (must_not_run, 0.0)})(x, PROMPTS)
    manual = a(x, PROMPTS)[0] + 0.5 * b(x, PROMPTS)[0]
    assert torch.allclose(total, manual, atol=1e-5)
    assert abs(info["a"] - a(x, PROMPTS)[0].mean().item()) < 1e-5 and "z" not in info
    assert abs(info["reward_total"] - manual.mean().item()) < 1e-4
    total.sum().backward()
    assert x.grad.abs().sum() > 0
    assert info["a_mean"] == info["a"] and info["b_mean"] == info["b"]   # each component's own info kept
    with pytest.raises(ValueError, match="every weight is 0"):
        WeightedReward({"a": (a, 0.0)})
    with pytest.raises(ValueError, match="at least one"):
        WeightedReward({})


def test_score_is_100_times_the_cosine_of_image_and_text_embeddings():
    """docs/method.md §7 by hand (2 images: a batch-axis normalisation or a shape mix-up with 3 channels shows)."""
    r = make("bilinear")
    x = rand_images(b=2)
    scores, _ = r(x, PROMPTS[:2])
    with torch.no_grad():
        img, txt = r.model.encode_image(r.preprocess(x)), r.model.encode_text(tokenize(PROMPTS[:2]))
    torch.testing.assert_close(scores, 100 * F.cosine_similarity(img, txt, dim=-1), atol=1e-4, rtol=0)


@pytest.fixture
def empty_hub_cache(monkeypatch, tmp_path):
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("name,needle", [("clip", "open_clip_pytorch_model.bin"),
                                         ("hpsv2", "HPS_v2.1_compressed.pt")])
def test_offline_fails_fast_with_instructions(empty_hub_cache, name, needle):
    reward = make_reward(name)  # lazy: nothing happens yet
    t0 = time.time()
    with pytest.raises(FileNotFoundError) as e:
        reward(rand_images(b=1), ["a cat"])
    assert time.time() - t0 < 10.0
    msg = str(e.value)
    assert needle in msg and "path=" in msg and name in msg


def test_hub_path_resolves_a_cached_file_offline_subfolders_included(empty_hub_cache, tmp_path):
    """hf://owner/repo/path/in/repo: everything after the repo is the file's path (HF repos hold files in folders);
    a cached file resolves offline through huggingface_hub to its snapshot copy; an uncached one names the hub's
    own error."""
    import huggingface_hub.constants as c
    snap = tmp_path / "models--owner--repo" / "snapshots" / ("0" * 40)
    (snap / "sub").mkdir(parents=True)
    (snap / "sub" / "HPS.pt").write_bytes(b"weights")
    (tmp_path / "models--owner--repo" / "refs").mkdir()
    (tmp_path / "models--owner--repo" / "refs" / "main").write_text("0" * 40)
    assert c.HF_HUB_CACHE == str(tmp_path)
    for name in ("hpsv2", "clip"):
        got = make_reward(name, path="hf://owner/repo/sub/HPS.pt").resolve()
        assert os.path.samefile(got, snap / "sub" / "HPS.pt"), name
    with pytest.raises(FileNotFoundError, match=r"could not fetch hf://owner/repo/sub/other\.pt \((LocalEntry|"
                                                r"OfflineMode)\w*"):
        make_reward("hpsv2", path="hf://owner/repo/sub/other.pt").resolve()


def test_missing_local_path_and_unknown_name():
    with pytest.raises(FileNotFoundError, match="not found"):
        make_reward("hpsv2", path="/nonexistent/HPS_v2.1_compressed.pt").load()
    with pytest.raises(FileNotFoundError, match="not found"):
        make_reward("clip", path="/nonexistent/ViT-L-14.pt").load()
    with pytest.raises(ValueError, match="unknown reward"):
        make_reward("imagereward")


def test_local_checkpoint_loads_through_open_clip(tmp_path, monkeypatch):
    """The loader path (file -> strict open_clip load -> ClipReward) on a tiny architecture."""
    src = tiny_clip(seed=3)
    path = tmp_path / "tiny.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, path)
    monkeypatch.setattr(rewards.open_clip, "create_model",
                        lambda arch, pretrained=None, force_quick_gelu=False: tiny_clip(seed=4))
    model = rewards.load_open_clip("tiny", str(path), quick_gelu=False)
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_a_local_file_resolves_to_itself(tmp_path):
    f = tmp_path / "weights.bin"
    torch.save({"visual.proj": torch.zeros(2)}, f)
    for name in ("hpsv2", "clip"):
        assert make_reward(name, path=str(f)).resolve() == str(f), name


def test_released_loaders_build_the_released_reward_configurations(monkeypatch):
    """Which open_clip model each reward loads and how its images are prepared (docs/method.md §7, D6): the CLIP
    reward is ViT-L-14 with QuickGELU (OpenAI's weights) at 224 px, bilinear after the released mean / std, x100,
    with the released tokenizer; HPS v2.1 is ViT-H-14 with plain GELU at 224 px, short side + centre crop, OpenAI's
    full-precision mean / std, x100. The file itself is the tiny model here (the real weights are gigabytes)."""
    calls = []
    monkeypatch.setattr(rewards, "load_open_clip", lambda arch, ckpt, quick_gelu: calls.append((arch, ckpt, quick_gelu))
                        or tiny_clip())
    r = rewards._load_clip("clip.bin")
    assert calls[-1] == ("ViT-L-14", "clip.bin", True)
    assert (r.name, r.image_size, r.scale, r.resize) == ("clip", 224, 100.0, "bilinear")
    assert r.mean.flatten().tolist() == list(rewards.RELEASED_CLIP_MEAN)
    assert r.std.flatten().tolist() == list(rewards.RELEASED_CLIP_STD) and r.tokenize.clean_fn is rewards._hf_clip_clean
    h = rewards._load_hpsv2("hps.pt")
    assert calls[-1] == ("ViT-H-14", "hps.pt", False)
    assert (h.name, h.image_size, h.scale, h.resize) == ("hpsv2", 224, 100.0, "bicubic_crop")
    assert h.mean.flatten().tolist() == list(rewards.OPENAI_MEAN)
    assert h.std.flatten().tolist() == list(rewards.OPENAI_STD)
    assert torch.equal(h.tokenize(["a cat"]), open_clip.get_tokenizer("ViT-H-14")(["a cat"]))


class _NotATensor:                                  # module level: picklable, but no weights-only loader accepts it
    pass


def test_a_pickled_checkpoint_is_loaded_weights_only(tmp_path, monkeypatch):
    """A user's checkpoint is never unpickled as code: only TorchScript archives (which torch.load cannot open
    otherwise) are loaded with weights_only=False."""
    import pickle
    path = tmp_path / "evil.pt"
    torch.save({**tiny_clip(seed=3).state_dict(), "extra": _NotATensor()}, path)
    monkeypatch.setattr(rewards.open_clip, "create_model",
                        lambda arch, pretrained=None, force_quick_gelu=False: tiny_clip(seed=4))
    with pytest.raises(pickle.UnpicklingError, match="[Ww]eights only load failed"):
        rewards.load_open_clip("tiny", str(path), quick_gelu=False)


def test_torchscript_detection(tmp_path):
    """OpenAI's ViT-L-14.pt is TorchScript (needs torch.jit.load inside torch.load); state-dict pickles are not,
    in the zip format or the legacy one."""
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "j.pt"))
    torch.save({"w": torch.zeros(2)}, tmp_path / "s.pt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert rewards._is_torchscript(str(tmp_path / "j.pt")) and not rewards._is_torchscript(str(tmp_path / "s.pt"))
    assert not rewards._is_torchscript(str(tmp_path / "legacy.pt"))


def test_transformers_layout_detection(tmp_path):
    """The released reward's HF layout is found also inside a {"state_dict": ...} wrapper; a zip that is no torch
    file, TorchScript and open_clip keys are not that layout (open_clip's own load reports on them)."""
    import zipfile
    keys = {"text_model.embeddings.token_embedding.weight": torch.zeros(4, 2)}
    torch.save({"state_dict": keys}, tmp_path / "wrapped.bin")
    torch.save({"visual.proj": torch.zeros(2)}, tmp_path / "open_clip.bin")
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "j.pt"))
    with zipfile.ZipFile(tmp_path / "notes.zip", "w") as z:
        z.writestr("readme.txt", "not a checkpoint")
    assert rewards._transformers_layout(str(tmp_path / "wrapped.bin"))
    assert not any(rewards._transformers_layout(str(tmp_path / f)) for f in ("open_clip.bin", "j.pt", "notes.zip"))


def test_lazy_reward_builds_once_and_a_saved_cache_builds_it(tmp_path, monkeypatch):
    """make_reward("clip", path) resolves once (train.py's start-up check) and builds on the first call only; a
    checkpoint's non-empty text cache builds a fresh lazy reward and is used as saved (a resumed run scores with the
    saved features)."""
    path = tmp_path / "tiny.pt"
    torch.save(tiny_clip(224, 32, seed=3).state_dict(), path)
    monkeypatch.setattr(rewards.open_clip, "create_model",
                        lambda arch, pretrained=None, force_quick_gelu=False: tiny_clip(224, 32, seed=4))
    monkeypatch.setattr(rewards, "released_clip_tokenizer", lambda: tokenize)
    resolved = []
    monkeypatch.setitem(rewards._RESOLVERS, "clip", lambda p: resolved.append(p) or p)
    lazy = make_reward("clip", path=str(path))
    assert lazy._reward is None and resolved == []                      # nothing read yet
    assert lazy.resolve() == str(path)                                   # train.py's start-up check
    x = rand_images(b=2)
    s1 = lazy(x, PROMPTS[:2])[0]
    built = lazy.load()
    assert torch.equal(lazy(x, PROMPTS[:2])[0], s1) and lazy.load() is built and resolved == [str(path)]
    state = lazy.cache_state()
    state["features"] = state["features"] + 1e-3
    fresh = make_reward("clip", path=str(path))
    fresh.load_cache_state(state)
    assert fresh._reward is not None and torch.equal(fresh.cache_state()["features"], state["features"])


def _hps_reference(u8, size):
    """HPS preprocess_val without its normalisation (hpsv2/src/open_clip/transform.py:141-157): ToTensor, then
    Resize(size, BICUBIC) and CenterCrop(size) on the float tensor."""
    from PIL import Image
    from torchvision import transforms as T
    pil = Image.fromarray(u8.permute(1, 2, 0).numpy())
    return T.Compose([T.ToTensor(), T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
                      T.CenterCrop(size)])(pil)


@pytest.mark.parametrize("hw", [(256, 256), (256, 320), (300, 256)])
def test_hps_tensor_path_matches_the_official_preprocessing(hw):
    """docs/method.md D6 parity: the reward's resize + crop equals HPS's own, on smooth images and on pixel noise
    (whose bicubic overshoot both keep: neither clamps)."""
    h, w = hw
    g = torch.Generator().manual_seed(h + w)
    smooth = F.interpolate(torch.rand(1, 3, h // 8 + 1, w // 8 + 1, generator=g), size=(h, w), mode="bilinear")
    u8 = (smooth * 255).round().clamp(0, 255).to(torch.uint8)[0]  # (3,H,W)
    noise = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    for img in (u8, noise):
        ref = _hps_reference(img, 224)
        out = resize_short_side_center_crop(img[None].float() / 255, 224)[0]
        assert out.shape == ref.shape == (3, 224, 224)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    # score level: a CLIP at 224 px, scores from both paths agree closely (x100 scale)
    r = make("bicubic_crop", image_size=224, patch_size=32)
    s_tensor = r(u8[None].float() / 255, ["a photo"])[0]
    s_pil = r(_hps_reference(u8, 224)[None], ["a photo"])[0]  # already 224: resize and crop are the identity
    assert abs(s_tensor.item() - s_pil.item()) < 0.05


def test_bilinear_mode_normalises_before_resizing():
    """Released CLIP order (normalise, then resize) equals resize-then-normalise up to float rounding."""
    r = make("bilinear")
    x = rand_images(h=64, w=64, dtype=torch.float32)
    a = r.preprocess(x)
    mean = torch.tensor(rewards.RELEASED_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(rewards.RELEASED_CLIP_STD).view(1, 3, 1, 1)
    b = (F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False) - mean) / std
    assert a.shape == (3, 3, 32, 32) and torch.allclose(a, b, atol=1e-5)
    assert np.allclose(rewards.RELEASED_CLIP_MEAN, rewards.OPENAI_MEAN, atol=1e-4)  # 4-decimal rounding
    assert rewards.RELEASED_CLIP_MEAN != rewards.OPENAI_MEAN


def test_clip_reward_tokens_equal_the_released_clipprocessor():
    """The released CLIP reward tokenizes with HF's fast CLIP tokenizer (CLIPProcessor, truncation to 77). Built here
    from open_clip's own BPE (the vocabulary and merges of openai/clip-vit-large-patch14, nothing downloaded), it must
    give the reward's ids on captions where the two libraries' text cleaning differs (curly quotes, HTML entities,
    fullwidth letters: open_clip's default ftfy / html.unescape changes them) and on one longer than 77 tokens."""
    transformers = pytest.importorskip("transformers")
    from open_clip.tokenizer import SimpleTokenizer
    st = SimpleTokenizer()
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {names.get(k, k): v for k, v in st.encoder.items()}
    merges = sorted(st.bpe_ranks, key=st.bpe_ranks.get)
    hf = transformers.CLIPTokenizer(vocab=vocab, merges=merges, unk_token="<|endoftext|>", bos_token="<|startoftext|>",
                                    eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    ours = rewards.released_clip_tokenizer()
    caps = ["A red car parked on a street.", "A dog\u2019s toy on the \u201cgrass\u201d", "Tom &amp; Jerry &lt;3",
            "\uff21\uff22\uff23 fullwidth   letters\tand\ntabs", "cafe\u0301 sign", " padded ",
            "a very long caption " * 30]
    for cap in caps:
        want = hf(cap, truncation=True, max_length=77)["input_ids"]
        got = ours([cap])[0]
        assert got[:len(want)].tolist() == want and not got[len(want):].any(), cap
    # the same captions through open_clip's default cleaning: they differ (else this test would hold any tokenizer)
    assert sum(open_clip.get_tokenizer("ViT-L-14")([c])[0].tolist() != ours([c])[0].tolist() for c in caps) >= 3


def test_wrong_checkpoint_layouts_are_named_with_the_fix(tmp_path):
    """A transformers CLIPModel file (the released reward's own format) passed as --clip_path is refused by resolve(),
    i.e. at train.py's start-up check, not after the policy has loaded; a file open_clip cannot load strictly gives a
    short message naming what to pass; an hf:// path without a file name says the form."""
    hf = tmp_path / "pytorch_model.bin"
    torch.save({"text_model.embeddings.token_embedding.weight": torch.zeros(4, 2),
                "vision_model.post_layernorm.weight": torch.zeros(2)}, hf)
    with pytest.raises(ValueError, match="transformers CLIPModel file.*open_clip_pytorch_model.bin.*--clip_path"):
        make_reward("clip", path=str(hf)).resolve()
    other = tmp_path / "other.bin"
    torch.save({"visual.proj": torch.zeros(2)}, other)                  # open_clip-like keys, wrong model
    assert make_reward("clip", path=str(other)).resolve() == str(other)
    with pytest.raises(RuntimeError, match=r"(?s)not an open_clip ViT-B-32 checkpoint.*open_clip_pytorch_model") as e:
        rewards.load_open_clip("ViT-B-32", str(hf), quick_gelu=True)
    assert len(str(e.value)) < 600
    for spec in ("hf://xswu/HPSv2", "hf://openai/clip-vit-large-patch14/"):
        with pytest.raises(FileNotFoundError, match="names no file; the form is hf://owner/repo/filename"):
            make_reward("hpsv2", path=spec).resolve()
