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
