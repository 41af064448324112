"""Tests for eval_fid.py (CPU, offline, fake generators / extractors; folders written by sample.py's writers,
clean-fid's own reader and resizer as the reference).  Run: pytest -q tests/test_eval_fid.py"""
import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import eval_fid as ef
import sample
from data import to_uint8
from test_sample import make_generate   # the fake uint8 generator, one copy for both test files


# ------------------------------------------------------------------------------------------- Frechet distance
def test_frechet_distance_closed_form_diagonal():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    s1, s2 = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    closed = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    assert ef.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(closed, rel=1e-10)
    # 1-D: (m1 - m2)^2 + (sd1 - sd2)^2
    assert ef.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


def test_frechet_distance_rotation_invariant_full_covariance():
    """Rotating both Gaussians by the same orthogonal Q leaves FD unchanged (non-diagonal sqrtm path)."""
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.2, 2, 6), rng.uniform(0.2, 2, 6)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    rot = ef.frechet_distance(q @ mu1, q @ np.diag(s1) @ q.T, q @ mu2, q @ np.diag(s2) @ q.T)
    assert rot == pytest.approx(ef.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)), rel=1e-8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_distance_symmetric_nonnegative_and_zero_on_self(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, 12))
    y = rng.normal(size=(150, 12)) @ rng.normal(size=(12, 12)) * 0.5 + 0.3
    a, b = ef.feature_stats(x), ef.feature_stats(y)
    assert a[0].dtype == np.float64 and a[1].shape == (12, 12)
    d_ab, d_ba = ef.frechet_distance(*a, *b), ef.frechet_distance(*b, *a)
    assert d_ab > 0 and d_ab == pytest.approx(d_ba, rel=1e-6)
    assert abs(ef.frechet_distance(*a, *a)) < 1e-8
    # rank-deficient covariances (fewer samples than dims) still give a finite, non-negative value
    z = ef.feature_stats(rng.normal(size=(5, 12)))
    assert np.isfinite(ef.frechet_distance(*z, *a)) and ef.frechet_distance(*z, *a) > 0


def test_feature_stats_by_hand_two_samples():
    """feature_stats = (per-feature mean, unbiased (n - 1) covariance, features in columns); M = 2 is enough.
    x = [[0, 0], [2, 4]]: mu = (1, 2), deviations +-(1, 2), so Sigma = 2 (1, 2)(1, 2)^T / (2 - 1)."""
    mu, sigma = ef.feature_stats([[0.0, 0.0], [2.0, 4.0]])
    assert np.allclose(mu, [1.0, 2.0]) and np.allclose(sigma, [[2.0, 4.0], [4.0, 8.0]])


def test_frechet_distance_singular_fallback_and_imaginary_part():
    """The documented fallbacks: a product S1 S2 without a finite square root gets eps*I added to BOTH covariances,
    with a warning (S1 = [[0, 1], [0, 0]], S2 = I: sqrtm((S1 + eI)(1 + e)I) has trace 2 sqrt(e (1 + e)), so
    d^2 = 2 - 4 sqrt(e (1 + e))); numerical noise in the imaginary part is dropped (the result is a plain real float,
    no ComplexWarning; zero on self), an imaginary part above 1e-3 is an error (S1 = diag(1, -2.25e-6): sqrt has 1.5e-3 i)."""
    import warnings
    eps = 1e-6
    with pytest.warns(UserWarning, match="singular"):
        d = ef.frechet_distance([0.0, 0.0], [[0.0, 1.0], [0.0, 0.0]], [0.0, 0.0], np.eye(2))   # default eps
    assert d == pytest.approx(2 - 4 * np.sqrt(eps * (1 + eps)), rel=1e-9)
    with pytest.raises(ValueError, match="imaginary"):
        ef.frechet_distance([0.0, 0.0], np.diag([1.0, -2.25e-6]), [0.0, 0.0], np.eye(2))
    rng = np.random.default_rng(0)
    z = ef.feature_stats(rng.normal(size=(5, 12)))             # rank 4 of 12: sqrtm(S S) comes back complex
    with warnings.catch_warnings():
        warnings.simplefilter("error", np.exceptions.ComplexWarning)
        warnings.simplefilter("ignore", UserWarning)             # scipy's LinAlgWarning for a singular product
        d = ef.frechet_distance(*z, *z)
    assert type(d) is float and abs(d) < 1e-6


def test_frechet_distance_bad_shapes():
    with pytest.raises(ValueError, match="shape mismatch"):
        ef.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="M >= 2"):
        ef.feature_stats(np.zeros((1, 4)))


# ------------------------------------------------------------------------------------------- images / sampling
def test_to_uint8_and_center_crop_resize():
    x = torch.tensor([-1.0, -0.99, 0.0, 1.0, 2.0]).view(1, 1, 1, 5)
    assert to_uint8(x).flatten().tolist() == [0, 1, 128, 255, 255]  # clamp(127.5 x + 128), truncated (data.py)
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, 10:30] = 200  # the centre 20 columns
    out = ef.center_crop_resize(Image.fromarray(a), 20)
    assert out.size == (20, 20) and (np.asarray(out) == 200).all()
    assert ef.center_crop_resize(Image.fromarray(a), 8).size == (8, 8)


def test_read_coco_folder_refuses_partial_and_foreign_folders(tmp_path):
    caps = [f"caption number {'x' * i}" for i in range(7)]
    sample.sample_to_folder(make_generate([]), caps, str(tmp_path), batch_size=3, progress=False)
    paths, read = ef.read_coco_folder(str(tmp_path))
    assert read == caps and paths == [str(tmp_path / "images" / f"{i:06d}.png") for i in range(7)]
    with pytest.raises(ValueError, match="7 samples.*--n 8"):
        ef.read_coco_folder(str(tmp_path), n=8)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "000007.png")   # a larger earlier run
    with pytest.raises(FileExistsError, match="1 entries that clean-fid.*000007.png.*delete them"):
        ef.read_coco_folder(str(tmp_path))
    os.remove(tmp_path / "images" / "000007.png")
    os.remove(tmp_path / "images" / "000002.png")
    with pytest.raises(FileNotFoundError, match="1 of 7 samples missing.*000002.png"):
        ef.read_coco_folder(str(tmp_path))
    (tmp_path / ef.MARKER).write_text("{}")
    with pytest.raises(ValueError, match="unfinished"):
        ef.read_coco_folder(str(tmp_path))
    os.remove(tmp_path / ef.MARKER)
    os.remove(tmp_path / "captions.txt")
    with pytest.raises(FileNotFoundError, match="captions.txt"):
        ef.read_coco_folder(str(tmp_path))


def test_coco_reference_dir_means_what_llamagen_means(tmp_path):
    # LlamaGen's evaluation.py reads ref_dir + "/val2014" (evaluations/t2i/evaluation.py:228-232)
    (tmp_path / "coco2014" / "val2014").mkdir(parents=True)
    (tmp_path / "coco2014" / "train2014").mkdir()
    assert ef.coco_reference_dir(str(tmp_path / "coco2014")) == str(tmp_path / "coco2014" / "val2014")
    with pytest.raises(FileNotFoundError, match="val2014 folder itself: pass its parent .*coco2014"):
        ef.coco_reference_dir(str(tmp_path / "coco2014" / "val2014"))
    with pytest.raises(FileNotFoundError, match="has no val2014/ folder"):
        ef.coco_reference_dir(str(tmp_path / "coco2014" / "train2014"))


# ------------------------------------------------------------------------------------------- reference stats cache
class CountingFeatures:
    """Fake extractor: per-channel means and a few pixels of the (B,3,S,S) uint8 batch."""
    extractor_id = "fake-v1"

    def __init__(self):
        self.calls = 0

    def __call__(self, u8):
        self.calls += 1
        x = u8.double() / 255
        return torch.cat([x.mean((2, 3)), x[:, :, 0, :3].flatten(1)], 1)  # (B, 12)


def write_ref_folder(folder, n=6, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        h, w = rng.integers(10, 20, size=2)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(os.path.join(folder, f"{i}.jpg"))


def test_reference_stats_cached_and_invalidated(tmp_path):
    ref, cache = str(tmp_path / "ref"), str(tmp_path / "cache")
    write_ref_folder(ref)
    fx = CountingFeatures()
    kw = dict(cache_dir=cache, batch_size=4, num_workers=0)
    mu, sigma = ef.reference_stats(ref, fx, eval_res=8, **kw)
    assert fx.calls == 2 and mu.shape == (12,) and sigma.shape == (12, 12)
    mu2, sigma2 = ef.reference_stats(ref, fx, eval_res=8, **kw)  # cache hit: the extractor is not called
    assert fx.calls == 2 and np.array_equal(mu, mu2) and np.array_equal(sigma, sigma2)
    ef.reference_stats(ref, fx, eval_res=6, **kw)  # other eval_res -> recompute
    assert fx.calls == 4
    ef.reference_stats(ref, fx, eval_res=8, extractor_id="fake-v2", **kw)  # other extractor -> recompute
    assert fx.calls == 6
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(os.path.join(ref, "new.png"))  # folder changed
    ef.reference_stats(ref, fx, eval_res=8, **kw)
    assert fx.calls == 8
    ef.reference_stats(ref, fx, eval_res=8, **kw)
    assert fx.calls == 8
    assert not [f for f in os.listdir(cache) if f.endswith(".tmp")]
    # the cached numbers are the statistics of the features
    feats = ef.folder_features(ef.list_images(ref), CountingFeatures(), 8, batch_size=3, num_workers=0)
    assert np.allclose(ef.reference_stats(ref, fx, eval_res=8, **kw)[0], feats.mean(0))


def test_evaluate_coco_with_fake_extractor(tmp_path):
    ref = str(tmp_path / "coco2014")
    write_ref_folder(os.path.join(ref, "val2014"), n=8)
    write_ref_folder(os.path.join(ref, "train2014"), n=5, seed=1)   # beside val2014: never part of the reference
    caps = [f"c{i}" for i in range(5)]
    sample.sample_to_folder(make_generate([]), caps, str(tmp_path / "fake"), progress=False)
    seen = []

    def clip_fn(images01, captions):
        seen.extend(captions)
        assert images01.shape[1:] == (3, 8, 8) and images01.max() <= 1
        return torch.full((len(captions),), 30.0), {}

    res = ef.evaluate_coco(str(tmp_path / "fake"), ref, inception=CountingFeatures(), clip_fn=clip_fn, n=5,
                           eval_res=8, cache_dir=str(tmp_path / "cache"), batch_size=2, num_workers=0)
    assert res["fid"] > 0 and res["clip_score"] == pytest.approx(30.0) and seen == caps
    feats = ef.folder_features(ef.list_images(os.path.join(ref, "val2014")), CountingFeatures(), 8, num_workers=0)
    fake = ef.folder_features(ef.read_coco_folder(str(tmp_path / "fake"))[0], CountingFeatures(), 8, num_workers=0)
    assert res["fid"] == pytest.approx(ef.frechet_distance(*ef.feature_stats(fake), *ef.feature_stats(feats)))


# ------------------------------------------------------------------------------------------- CLIP score
def test_clip_score_prefix_applied():
    seen = []
    tok = ef.prefixed(lambda caps: seen.extend(caps) or torch.zeros(len(caps), 77, dtype=torch.long))
    tok(["a dog on a bench", "two cats"])
    assert seen == ["A photo depicts a dog on a bench", "A photo depicts two cats"]


def test_prefix_matches_released_token_insertion():
    """Tokenising prefix + caption == the released insertion of the prefix's 3 tokens after SOT, cut to 77 with
    EOT forced in the last column (evaluation.py compute_clip_score), for short and over-long captions."""
    import open_clip
    tok = open_clip.get_tokenizer("ViT-B-32")
    caps = ["a man riding a wave on a surfboard", " ".join(["zebra"] * 73), " ".join(["giraffe"] * 120),
            " ".join(["cat"] * 72)]
    tokens = tok(caps)  # truncated, EOT forced
    pre = tok(["A photo depicts "])[:, 1:4].expand(len(caps), -1)
    released = torch.cat([tokens[:, :1], pre, tokens[:, 1:]], 1)[:, :77]
    last = released[:, 76:77].clone()
    last[last > 0] = 49407
    released = torch.cat([released[:, :76], last], 1)
    assert torch.equal(ef.prefixed(tok)(caps), released)


def test_clip_score_folder_means_scores(tmp_path):
    caps = ["a", "bb", "ccc"]
    sample.sample_to_folder(make_generate([]), caps, str(tmp_path), progress=False)
    fn = lambda x, c: (x.mean((1, 2, 3)) * 100, {})  # noqa: E731
    got = ef.clip_score_folder(ef.read_coco_folder(str(tmp_path))[0], caps, fn, 8, batch_size=2, num_workers=0)
    assert got == pytest.approx(np.mean([10, 20, 30]) / 255 * 100, rel=1e-5)


def test_clip_score_offline_fails_fast(monkeypatch, tmp_path):
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="ViT-B/32.*--clip"):
        ef.make_clip_score()
    with pytest.raises(FileNotFoundError, match="not found"):
        ef.make_clip_score(str(tmp_path / "none.pt"))


# ------------------------------------------------------------------------------------------- Inception plumbing
class _FakeLayers(torch.nn.Module):
    def forward(self, x):
        return x.mean((2, 3)).repeat(1, 683)[:, :2048].reshape(-1, 2048, 1, 1)


class _FakeInception(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = _FakeLayers()

    def forward(self, x):
        return self.layers(x)


class _PixelLayers(torch.nn.Module):
    def forward(self, x):                                        # (B,3,299,299) -> 2048 pixels of a 7-px grid
        return x[:, :, ::7, ::7].flatten(1)[:, :2048].reshape(-1, 2048, 1, 1)


class _PixelInception(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = _PixelLayers()

    def forward(self, x):
        return self.layers(x)


def test_inception_features_clean_preprocessing(tmp_path):
    path = str(tmp_path / "inception-2015-12-05.pt")
    torch.jit.script(_FakeInception()).save(path)
    fx = ef.InceptionFeatures(path)
    u8 = torch.full((2, 3, 37, 37), 200, dtype=torch.uint8)
    u8[1] = 64
    f = fx(u8)  # resized to 299 by PIL float bicubic, then (x - 128) / 128
    assert f.shape == (2, 2048)
    assert torch.allclose(f[0], torch.full((2048,), (200 - 128) / 128), atol=1e-4)
    assert torch.allclose(f[1], torch.full((2048,), (64 - 128) / 128), atol=1e-4)
    prepared = fx.prepare(np.full((37, 37, 3), 200, np.uint8))
    assert prepared.shape == (3, 299, 299) and prepared.dtype == torch.float32
    with pytest.raises(FileNotFoundError, match="nvlabs-fi-cdn.*--inception"):
        ef.InceptionFeatures(str(tmp_path / "missing.pt"))
    # the clip of prepare() is in the reference-statistics cache key: caches of the unclipped resize are not reused
    assert ef.InceptionFeatures.extractor_id != "inception-2015-12-05/clean"


def test_prepare_equals_clean_fid_resizer():
    """clean-fid's own "clean" resizer (cleanfid/resize.py: PIL bicubic per channel in float, clipped to [0, 255])
    against InceptionFeatures.prepare, on edges sharp enough for bicubic to overshoot."""
    from cleanfid.resize import build_resizer
    rng = np.random.default_rng(0)
    a = (rng.integers(0, 2, (37, 53, 3)) * 255).astype(np.uint8)                    # 0/255 noise: overshoot
    theirs = build_resizer("clean")(a)                                               # (299, 299, 3) float32
    ours = ef.InceptionFeatures.prepare(a).permute(1, 2, 0).numpy()
    assert theirs.dtype == ours.dtype == np.float32 and np.array_equal(ours, theirs)
    unclipped = np.asarray(Image.fromarray(a[:, :, 0].astype(np.float32)).resize((299, 299), Image.BICUBIC))
    assert unclipped.max() > 255 and unclipped.min() < 0                             # the clip matters here


def test_coco_features_equal_clean_fid_on_a_sample_folder(tmp_path):
    """A sample.py COCO folder read by clean-fid's real folder reader (get_folder_features: its own file listing,
    ResizeDataset, "clean" resizer) with LlamaGen's custom transform, vs this file's folder_features: the same files
    in the same order give the same features (a fake Inception, called identically on both sides)."""
    import torchvision.transforms.functional as TF
    from cleanfid.fid import get_folder_features
    rng = np.random.default_rng(1)
    sizes = [(20, 30), (31, 17), (24, 24), (9, 40)]

    def generate(captions, key):                                                     # non-square sharp images
        h, w = sizes[len(generate.seen) % len(sizes)]
        generate.seen += captions
        return torch.from_numpy((rng.integers(0, 2, (len(captions), 3, h, w)) * 255).astype(np.uint8))
    generate.seen = []
    sample.sample_to_folder(generate, [f"c{i}" for i in range(11)], str(tmp_path / "coco"), batch_size=3,
                            progress=False)

    def llamagen_transform(image_np, res=16):
        # LlamaGen's compute_fid transform (evaluations/t2i/evaluation.py:31-38, 183-190): CenterCropLongEdge, Lanczos
        img = TF.center_crop(Image.fromarray(image_np), min(Image.fromarray(image_np).size))
        return np.array(img.resize((res, res), Image.LANCZOS))

    path = str(tmp_path / "inception-2015-12-05.pt")
    torch.jit.script(_PixelInception()).save(path)
    fx = ef.InceptionFeatures(path)
    cleanfid_model = lambda x: fx.net.layers((x - 128.0) / 128.0).reshape(len(x), 2048)  # noqa: E731
    theirs = get_folder_features(str(tmp_path / "coco" / "images"), model=cleanfid_model, num_workers=0,
                                 batch_size=4, device=torch.device("cpu"), mode="clean",
                                 custom_image_tranform=llamagen_transform, verbose=False)
    paths, _ = ef.read_coco_folder(str(tmp_path / "coco"))
    ours = ef.folder_features(paths, fx, 16, batch_size=4, num_workers=0)
    assert theirs.shape == ours.shape == (11, 2048)
    assert np.array_equal(theirs.astype(np.float64), ours)


# ------------------------------------------------------------------------------------------- HPSv2 / GenEval
def test_hps_benchmark_layout_and_raw_scale(tmp_path):
    prompts_dir, img_dir = tmp_path / "prompts", tmp_path / "imgs"
    prompts_dir.mkdir()
    for k, style in enumerate(ef.HPS_STYLES):
        (prompts_dir / f"{style}.json").write_text(json.dumps([f"{style} {i}" for i in range(3 + k % 2)]))
    calls = []
    assert sample.sample_hps_benchmark(make_generate(calls), str(prompts_dir), str(img_dir), batch_size=2) == 14
    assert sample.sample_hps_benchmark(make_generate(calls), str(prompts_dir), str(img_dir), batch_size=2) == 0
    seen = []

    def fake_hps(x, prompts):
        assert x.shape[1:] == (3, 224, 224)
        seen.extend(prompts)
        return x.mean((1, 2, 3)) * 100.0, {}  # x100 like rewards.make_reward("hpsv2")

    res = ef.hps_benchmark(str(img_dir), str(prompts_dir), fake_hps, batch_size=2)
    expect = {s: np.mean([len(f"{s} {i}") * 10 % 256 / 255 for i in range(3 + k % 2)])
              for k, s in enumerate(ef.HPS_STYLES)}
    for s in ef.HPS_STYLES:
        assert res[s] == pytest.approx(expect[s], abs=2e-3)  # raw, not x100
    allv = [len(f"{s} {i}") * 10 % 256 / 255 for k, s in enumerate(ef.HPS_STYLES) for i in range(3 + k % 2)]
    assert res["average"] == pytest.approx(np.mean(allv), abs=2e-3)
    assert seen[:3] == ["anime 0", "anime 1", "anime 2"]
    # refused: a stray entry beside the styles (hpsv2 would open it as a style), a missing .jpg, an unfinished run
    (img_dir / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="hpsv2.*notes.txt"):
        ef.hps_benchmark(str(img_dir), str(prompts_dir), fake_hps)
    os.remove(img_dir / "notes.txt")
    os.rename(img_dir / "photo" / "00001.jpg", img_dir / "photo" / "00001.png")
    with pytest.raises(FileNotFoundError, match="00001.jpg .*older sample.py.*jpg only"):
        ef.hps_benchmark(str(img_dir), str(prompts_dir), fake_hps)
    os.rename(img_dir / "photo" / "00001.png", img_dir / "photo" / "00001.jpg")
    # other prompts than the ones sampled (same counts, so every file is there): refused, not scored
    other = tmp_path / "other_prompts"
    other.mkdir()
    for k, style in enumerate(ef.HPS_STYLES):
        (other / f"{style}.json").write_text(json.dumps([f"{style} other {i}" for i in range(3 + k % 2)]))
    with pytest.raises(ValueError, match="sampled from other prompts"):
        ef.hps_benchmark(str(img_dir), str(other), fake_hps)
    (img_dir / ef.MARKER).write_text("{}")
    with pytest.raises(ValueError, match="unfinished"):
        ef.hps_benchmark(str(img_dir), str(prompts_dir), fake_hps)


def test_cli_writes_scores_beside_the_folder(tmp_path, monkeypatch):
    prompts_dir, img_dir = tmp_path / "prompts", tmp_path / "hps"
    prompts_dir.mkdir()
    for style in ef.HPS_STYLES:
        (prompts_dir / f"{style}.json").write_text(json.dumps([f"{style} 0"]))
    sample.sample_hps_benchmark(make_generate([]), str(prompts_dir), str(img_dir))
    monkeypatch.setattr(ef.rewards, "make_reward", lambda name, path=None: lambda x, p: (x.mean((1, 2, 3)) * 100, {}))
    before = sorted(os.listdir(img_dir))
    ef.main(["hps", "--image_dir", str(img_dir), "--prompts_dir", str(prompts_dir), "--device", "cpu"])
    assert sorted(os.listdir(img_dir)) == before == sorted(ef.HPS_STYLES)   # nothing written into the folder
    assert set(json.loads((tmp_path / "hps_scores.json").read_text())) == set(ef.HPS_STYLES) | {"average"}
    with pytest.raises(SystemExit, match="inside .*hps.*write it elsewhere"):
        ef.main(["hps", "--image_dir", str(img_dir), "--prompts_dir", str(prompts_dir), "--out",
                 str(img_dir / "scores_hps.json")])
    (tmp_path / "coco2014" / "val2014").mkdir(parents=True)
    sample.sample_to_folder(make_generate([]), ["a, b"], str(tmp_path / "coco"), progress=False)
    with pytest.raises(SystemExit, match="val2014 folder itself: pass its parent"):   # checked before any model loads
        ef.main(["coco", "--fake_dir", str(tmp_path / "coco"), "--ref_dir", str(tmp_path / "coco2014" / "val2014"),
                 "--inception", str(tmp_path / "none.pt")])
    # a missing weight or prompt file: a message naming the file and the flag, not a traceback
    with pytest.raises(SystemExit, match=r"none\.pt"):
        ef.main(["coco", "--fake_dir", str(tmp_path / "coco"), "--ref_dir", str(tmp_path / "coco2014"),
                 "--inception", str(tmp_path / "none.pt")])
    with pytest.raises(SystemExit, match="anime.json not found"):
        ef.main(["hps", "--image_dir", str(img_dir), "--prompts_dir", str(tmp_path / "nowhere")])
    monkeypatch.undo()                                            # the real make_reward: its file is missing
    with pytest.raises(SystemExit, match=r"(?s)nope\.pt.*eval_fid\.py hps: pass the HPS file with --hps PATH"):
        ef.main(["hps", "--image_dir", str(img_dir), "--prompts_dir", str(prompts_dir), "--hps",
                 str(tmp_path / "nope.pt")])


def test_hps_preprocess_crops_centre_and_equals_the_official_one():
    a = np.zeros((300, 400, 3), np.uint8)
    a[:, 50:350] = 255  # the central 300 columns survive the crop
    x = ef.hps_preprocess(Image.fromarray(a))
    assert x.shape == (3, 224, 224) and x[:, :, 2:-2].min() > 0.99
    from torchvision import transforms as T       # HPS preprocess_val minus Normalize, on a JPEG at quality 100
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (256, 320, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, format="JPEG", quality=100)
    img = Image.open(buf)
    want = T.Compose([T.ToTensor(), T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224)])(img)
    torch.testing.assert_close(ef.hps_preprocess(img), want, atol=1e-5, rtol=0)
