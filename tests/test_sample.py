"""sample.py: a train.py checkpoint -> COCO / GenEval / HPSv2 image folders with the backbone's released evaluation
sampler settings; resumable; bad paths named. Run: pytest -q tests/test_sample.py
"""
import json
import os

import pytest
import torch
from PIL import Image

import backbones
import sample
import train


@pytest.fixture(scope="module")
def toy_ckpt(toy_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = train.parse_config(["--toy_preset", "tiny", "--toy_cache", toy_cache, "--out_dir", str(out), "--batch_prompts",
                              "2", "--group_size", "2", "--steps", "1", "--sample_every", "0", "--device", "cpu"])
    train.main(cfg)
    return str(out / "ckpt_0000001.pt")


def prompts(tmp_path):
    (tmp_path / "coco.csv").write_text("Prompt\na red circle on the left\na blue square\n")
    (tmp_path / "geneval.jsonl").write_text(json.dumps({"prompt": "a green cross", "tag": "single_object"}) + "\n")
    hps = tmp_path / "hps"
    hps.mkdir()
    for style in ("anime", "concept-art", "paintings", "photo"):
        (hps / f"{style}.json").write_text(json.dumps(["a yellow triangle"]))   # toy vocabulary only
    return tmp_path / "coco.csv", tmp_path / "geneval.jsonl", hps


def test_every_benchmark_from_a_toy_checkpoint(toy_ckpt, tmp_path, monkeypatch):
    coco, geneval, hps = prompts(tmp_path)
    seen = []
    sample_fn = backbones.policy.sample
    monkeypatch.setattr(backbones.policy, "sample", lambda *a, **k: seen.append(k) or sample_fn(*a, **k))
    assert sample.main(["--ckpt", toy_ckpt, "--bench", "coco", "--prompts", str(coco), "--out_dir",
                        str(tmp_path / "c"), "--n", "3", "--device", "cpu"]) == 3
    imgs = sorted(os.listdir(tmp_path / "c" / "images"))
    assert imgs == ["000000.png", "000001.png", "000002.png"]
    assert Image.open(tmp_path / "c" / "images" / imgs[0]).size == (32, 32)
    assert {k: seen[0][k] for k in ("cfg_scale", "temperature", "top_k", "top_p")} == backbones.EVAL_SETTINGS["tiny"]
    assert sample.main(["--ckpt", toy_ckpt, "--bench", "coco", "--prompts", str(coco), "--out_dir",
                        str(tmp_path / "c"), "--n", "3", "--device", "cpu"]) == 0          # resumable: nothing new
    assert sample.main(["--ckpt", toy_ckpt, "--bench", "geneval", "--prompts", str(geneval), "--out_dir",
                        str(tmp_path / "g"), "--device", "cpu"]) == 4                      # 4 images per prompt
    assert sample.main(["--ckpt", toy_ckpt, "--bench", "hps", "--prompts", str(hps), "--out_dir",
                        str(tmp_path / "h"), "--device", "cpu"]) == 4                      # 1 per prompt and style


def test_policy_and_decoder_choice_loads_those_weights(toy_ckpt):
    ck = torch.load(toy_ckpt, map_location="cpu", weights_only=True)
    _, _, gpt, vq, _ = sample.load_sampler(toy_ckpt, policy="ema", decoder="online")
    assert all(torch.equal(v, ck["ema_gpt"][k]) for k, v in gpt.state_dict().items())
    assert all(torch.equal(v, ck["vq"][k]) for k, v in vq.state_dict().items())
    assert any(not torch.equal(ck["gpt"][k], ck["ema_gpt"][k]) for k in ck["gpt"])     # the choice matters


def test_bad_paths_are_named(tmp_path):
    with pytest.raises(SystemExit, match="--ckpt .*no such file"):
        sample.main(["--ckpt", str(tmp_path / "missing.pt"), "--bench", "coco", "--prompts", str(tmp_path / "x.csv"),
                     "--out_dir", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="--prompts"):
        sample.main(["--ckpt", str(tmp_path / "missing.pt"), "--bench", "hps", "--prompts", str(tmp_path / "none"),
                     "--out_dir", str(tmp_path / "o")])
