"""Tests for the shipped toy base models (toy/assets/): they belong to the default configuration, match their
checksums, stay within the size budget, load without building anything, reproduce the quality figures recorded when
they were built, and a damaged file is a clear error, never a silent rebuild.

Tolerances of the quality check (the figures are recomputed on this CPU, the manifest's were computed on the
building machine): figures that do not go through the sampler (VQ PSNR and codebook usage, checker / CLIP scores of
real images) within 1e-3 relative; figures of base-GPT samples within 0.02 absolute (checker, CLIP x100 / 100) and
5 % (toy FID): another CPU's float rounding can flip a sampled token at a near-tie, and a flipped token changes the
rest of that image.

Run: pytest -q tests/test_toy_assets.py   (CPU, ~30 s: the quality table samples 1000 base images)
"""
import json
import os
import shutil

import pytest
import torch

from toy import models as toy_models
from toy import world as toy_world

NAMES = ("feat", "vq", "gpt", "clip_reward", "clip_eval")


@pytest.fixture(scope="module")
def manifest():
    man = toy_world.shipped_manifest()
    assert man is not None, "toy/assets/manifest.json is missing: run `python -m toy.world --rebuild`"
    return man


def test_shipped_models_belong_to_the_default_config(manifest):
    # fails when a recipe or a default changes without `python -m toy.world --rebuild`
    assert manifest["config_key"] == toy_world.config_key(toy_world.ToyConfig())
    assert manifest["toy_version"] == toy_world.TOY_VERSION


def test_checksums_and_size_budget(manifest):
    total = 0
    for name in NAMES:
        path = os.path.join(toy_world.SHIPPED, name + ".pt")
        with open(os.path.join(toy_world.SHIPPED, name + ".json")) as f:
            assert json.load(f)["sha256"] == toy_models._sha256(path), name
        sd = torch.load(path, weights_only=True)
        assert all(v.dtype == torch.float16 for v in sd.values() if v.is_floating_point()), name   # fp16 storage
        total += os.path.getsize(path)
    assert total <= 25e6, f"shipped toy models take {total / 1e6:.1f} MB; the budget is 25 MB"


def test_default_config_loads_shipped_without_building(tmp_path, manifest):
    b = toy_world.load_toy(toy_world.ToyConfig(), cache_dir=str(tmp_path), progress=False)
    assert b.cache_path == toy_world.SHIPPED and os.listdir(tmp_path) == []          # nothing built or cached
    sd = torch.load(os.path.join(toy_world.SHIPPED, "gpt.pt"), weights_only=True)
    assert all(torch.equal(b.gpt.state_dict()[k], v.float()) for k, v in sd.items())  # strict, upcast to fp32


def test_shipped_bundle_scores_and_features_equal_the_models_by_hand(tmp_path):
    """The bundle's reward / eval CLIP score = 100 cos(image, caption) of the shipped CLIP on (x01 - 0.5) / 0.5 at
    32 px (what the CLIPs were trained on); the toy-FID features and perceptual distance are the shipped feature
    net's, frozen (no parameter asks for a gradient: the decoder's perceptual loss must not grow graphs into it)."""
    b = toy_world.load_toy(toy_world.ToyConfig(), cache_dir=str(tmp_path), progress=False)
    x, caps = b.world.sample(8, torch.Generator().manual_seed(0), "train")
    x01 = (x + 1) / 2
    tok = toy_models.ToyTokenizer(b.world.vocab)
    shipped = lambda name: torch.load(os.path.join(toy_world.SHIPPED, name + ".pt"), weights_only=True)
    for name, fn in (("clip_reward", lambda i, c: b.reward_fn(i, c)[0]), ("clip_eval", b.eval_clip_fn)):
        clip = toy_models.make_clip(name, tok)
        clip.load_state_dict(shipped(name))
        with torch.no_grad():
            img = torch.nn.functional.normalize(clip.eval().encode_image(x01 * 2 - 1), dim=-1)
            txt = torch.nn.functional.normalize(clip.encode_text(tok(caps)), dim=-1)
        got = fn(x01, caps)
        assert torch.allclose(got, 100 * (img * txt).sum(-1), atol=1e-3), name
        assert got.mean() > 80, name                                     # real images with their true captions
    assert not b.eval_clip_fn(x01.clone().requires_grad_(True), caps).requires_grad   # an evaluator: no graph
    assert b.reward_fn(x01.clone().requires_grad_(True), caps)[0].requires_grad        # the reward: differentiable
    feat = toy_models.ToyFeatureNet()
    feat.load_state_dict(shipped("feat"))
    with torch.no_grad():
        acts, f, _ = feat.eval()(x)                                  # the net's input: [-1, 1] images
        acts_y = feat(x.flip(0))[0]
    assert torch.equal(b.feature_fn(x01), f)                          # toy-FID features: the penultimate layer
    # LPIPS-style, blocks 1-3: |a/|a| - b/|b||^2 over channels = 2 - 2 cos, averaged over space, summed over blocks
    want = sum((2 - 2 * torch.nn.functional.cosine_similarity(a, a_y, dim=1)).mean((1, 2))
               for a, a_y in zip(acts[:3], acts_y[:3]))
    assert torch.allclose(b.perceptual(x, x.flip(0)), want, atol=1e-5)
    assert not any(p.requires_grad for p in b.perceptual.__self__.parameters())


def test_shipped_vq_and_gpt_still_fit_their_weights(tmp_path):
    """vq.py's and policy.py's architectures, by what the shipped weights do in them: the toy VQ reconstructs 64
    held-out scenes at 30.44 dB and the toy GPT predicts the tokens of 64 train scenes at 1.552 nats per token
    (measured at 1 and 2 threads on 2026-12-06; the slow test above checks the build-time figures at n = 500). A
    changed layer, norm, attention, RoPE or quantiser moves these far beyond the tolerance, which covers a
    near-tie token flipping on another CPU."""
    from policy import token_logprobs
    b = toy_world.load_toy(toy_world.ToyConfig(), cache_dir=str(tmp_path), progress=False)
    x, _ = b.world.sample(64, torch.Generator().manual_seed(0), "heldout")
    with torch.no_grad():
        rec = b.vq.decode_indices(b.vq.encode_indices(x)).clamp(-1, 1)
        psnr = (10 * torch.log10(4 / (rec - x).pow(2).mean((1, 2, 3)))).mean().item()
        x, caps = b.world.sample(64, torch.Generator().manual_seed(1), "train")
        cond, mask = b.text_encoder(caps)
        nll = -token_logprobs(b.gpt, cond, mask, b.vq.encode_indices(x)).mean().item()
        tok = b.vq.encode_indices(x)                                            # (64, N)
        blind = b.gpt(tok, cond, mask, drop_caption=torch.ones(64, dtype=torch.bool))   # the null caption
        nll_blind = torch.nn.functional.cross_entropy(blind.flatten(0, 1), tok.flatten()).item()
    assert psnr == pytest.approx(30.443, abs=0.1)
    assert nll == pytest.approx(1.552, abs=0.01)
    assert nll_blind > nll + 0.1                      # the caption informs the prediction


def test_a_config_never_built_is_named_when_building_is_off(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"toy models: no \S+feat\.pt; restore the shipped files"):
        toy_world.load_toy(toy_world.ToyConfig.tiny(seed=7), cache_dir=str(tmp_path), build=False, progress=False)


def test_mismatched_gpt_and_vq_configs_are_refused_before_building(tmp_path, monkeypatch):
    import dataclasses
    from policy import GPT_CONFIGS
    toy = GPT_CONFIGS["toy"]
    for bad in (dataclasses.replace(toy, vocab_size=512), dataclasses.replace(toy, block_size=16)):
        monkeypatch.setitem(GPT_CONFIGS, "toy", bad)
        with pytest.raises(ValueError, match=r"GPT_CONFIGS\['toy'\] .* must match VQ_CONFIGS\['toy'\]"):
            toy_world.load_toy(toy_world.ToyConfig(), cache_dir=str(tmp_path), progress=False)
        assert not any(f.endswith(".pt") for _, _, fs in os.walk(tmp_path) for f in fs)   # nothing built


def test_damaged_shipped_file_is_an_error(tmp_path, monkeypatch):
    copy = tmp_path / "toy/assets"
    shutil.copytree(toy_world.SHIPPED, copy)
    raw = bytearray((copy / "gpt.pt").read_bytes())
    raw[len(raw) // 2] ^= 0xFF                                                         # one flipped byte
    (copy / "gpt.pt").write_bytes(bytes(raw))
    monkeypatch.setattr(toy_world, "SHIPPED", str(copy))
    with pytest.raises(FileNotFoundError, match="git checkout toy/assets"):
        toy_world.load_toy(toy_world.ToyConfig(), cache_dir=str(tmp_path / "cache"), progress=False)
    assert (copy / "gpt.pt").read_bytes() == bytes(raw)                               # left as it was, not rebuilt


@pytest.mark.slow
def test_recorded_quality_reproduces(manifest):
    q = manifest["quality"]
    b = toy_world.load_toy(toy_world.ToyConfig(), progress=False)
    table, _ = toy_models.evaluate(b, q["n"], q["cfg_scale"], torch.Generator().manual_seed(q["eval_seed"]))
    assert set(table) == set(q["table"])
    for k, rec in q["table"].items():
        for split, want in (rec.items() if isinstance(rec, dict) else [("", rec)]):
            got = table[k][split] if split else table[k]
            if "base GPT" not in k:
                assert got == pytest.approx(want, rel=1e-3, abs=1e-6), (k, split)
            elif "FID" in k:
                assert got == pytest.approx(want, rel=0.05), (k, split)
            else:
                scale = 100.0 if "CLIP score" in k else 1.0
                assert abs(got - want) <= 0.02 * scale, (k, split, got, want)
