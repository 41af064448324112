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
                              "2", "--group_size", "2", "--steps", "1", "--sample_every", "0", "--device", "cpu",
                              "--report_n", "0"])
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


def test_janus_checkpoint_samples_with_janus_eval_settings(toy_cache, tmp_path, monkeypatch):
    # a tiny Janus trained one step in the toy world; sample.py must use Janus's released evaluation sampler
    # (CFG 5, top-k 50: D12), not the rollout top-k 1000 of its training preset
    import janus
    from janus_fixtures import write_tiny_janus
    ckpt_path, tok_dir = write_tiny_janus(tmp_path / "janus")
    cfg = train.parse_config(["--backbone", "janus_pro_1b", "--janus_config", "tiny", "--janus_ckpt", ckpt_path,
                              "--janus_tokenizer", tok_dir, "--image_size", "32", "--toy_preset", "tiny",
                              "--toy_cache", toy_cache, "--out_dir", str(tmp_path / "run"), "--batch_prompts", "2",
                              "--group_size", "2", "--steps", "1", "--sample_every", "0", "--device", "cpu"])
    train.main(cfg)
    assert cfg.top_k == 1000 and cfg.cfg_scale == 5.0                                   # the training preset
    seen, fn = [], janus.sample
    monkeypatch.setattr(janus, "sample", lambda *a, **k: seen.append(k) or fn(*a, **k))
    coco, _, _ = prompts(tmp_path)
    assert sample.main(["--ckpt", str(tmp_path / "run" / "ckpt_0000001.pt"), "--bench", "coco", "--prompts",
                        str(coco), "--out_dir", str(tmp_path / "c"), "--n", "2", "--device", "cpu"]) == 2
    assert {k: seen[0][k] for k in ("cfg_scale", "top_k")} == {"cfg_scale": 5.0, "top_k": 50}
    assert Image.open(tmp_path / "c" / "images" / "000000.png").size == (32, 32)
