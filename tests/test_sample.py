"""sample.py: a train.py checkpoint -> COCO / GenEval / HPSv2 image folders with the backbone's released evaluation
sampler settings and image conversion; the folders as the official evaluators read them (their reading rules below,
transcribed from their sources, and clean-fid's own reader); captions with commas; interrupted and re-used folders;
resumable; bad paths named; NaN decoder output refused. Run: pytest -q tests/test_sample.py
"""
import argparse
import glob
import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

import backbones
import eval_fid
import sample
import train
from data import to_uint8, to_uint8_janus


@pytest.fixture(scope="module")
def toy_ckpt(toy_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = train.parse_config(["--toy_preset", "tiny", "--toy_cache", toy_cache, "--out_dir", str(out), "--batch_prompts",
                              "2", "--group_size", "2", "--steps", "1", "--sample_every", "0", "--device", "cpu",
                              "--report_n", "0"])
    train.main(cfg)
    return str(out / "ckpt_0000001.pt")


# ------------------------------------------------------------------------------------------- the official readers
# hpsv2 (1.2.0) pulls in a pinned pytest, protobuf 3.20, pandas and webdataset, and GenEval needs mmdet and CUDA, so
# their reading code is transcribed here from their sources; LlamaGen's evaluation.py needs the `clip` package, so
# its folder reader is transcribed too; clean-fid installs cleanly and is used as itself.
def llamagen_reads(fake_dir):
    """LlamaGen's EvalDataset, coco2014 with load_txt_from_file (evaluations/t2i/evaluation.py:77-89): images/*.png in
    natural order, zipped with the lines of captions.txt -> [(image path, caption)]."""
    def natural(key):
        return [int(t) if t.isdigit() else t.lower() for t in re.split("([0-9]+)", key)]
    images = sorted(glob.glob(os.path.join(fake_dir, "images", "*.png")), key=natural)
    with open(os.path.join(fake_dir, "captions.txt"), encoding="utf-8") as f:
        return list(zip(images, f.read().splitlines()))


def cleanfid_reads(folder):
    """The number of images clean-fid's folder reader scores (cleanfid.fid.get_folder_features, its own listing)."""
    from cleanfid.fid import get_folder_features
    feats = get_folder_features(folder, model=lambda x: x.mean((1, 2, 3))[:, None], num_workers=0, batch_size=8,
                                device=torch.device("cpu"), mode="clean", verbose=False)
    return len(feats)


def geneval_reads(image_dir):
    """GenEval's evaluate_images.py main loop (evaluation/evaluate_images.py:263-273): every digit-named sub-folder is a
    prompt, json.load of its metadata.jsonl, its samples the files of samples/ whose name re.match(r"\\d+\\.png")
    -> {folder: (metadata, sorted sample names)}."""
    read = {}
    for sub in os.listdir(image_dir):
        folder = os.path.join(image_dir, sub)
        if not os.path.isdir(folder) or not sub.isdigit():
            continue
        with open(os.path.join(folder, "metadata.jsonl")) as fp:
            metadata = json.load(fp)
        names = [n for n in os.listdir(os.path.join(folder, "samples"))
                 if os.path.isfile(os.path.join(folder, "samples", n)) and re.match(r"\d+\.png", n)]
        read[sub] = (metadata, sorted(names))
    return read


def hpsv2_reads(image_path, data_path):
    """hpsv2's evaluate_benchmark + BenchmarkDataset (hpsv2/evaluation.py:118-129, 28-39): every entry of image_path
    is a style, its prompts {data_path}/{style}.json, image idx {style}/{idx:05d}.jpg, a missing one skipped
    -> {style: [(prompt, image path)]}."""
    read = {}
    for style in os.listdir(image_path):
        with open(os.path.join(data_path, f"{style}.json")) as f:
            prompts = json.load(f)
        files = [(p, os.path.join(image_path, style, f"{i:05d}.jpg")) for i, p in enumerate(prompts)]
        read[style] = [(p, f) for p, f in files if os.path.exists(f)]
    return read


def leftover_files(folder):
    """Hidden files other than a finished run's record (temporary files of an interrupted write)."""
    return [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs
            if f.startswith(".") and f != ".sampled_with.json"]


# ------------------------------------------------------------------------------------------- from a checkpoint
CAPTIONS_FILE = ('Prompt\na red circle, on the left\n"a blue square" on the left, small\n'
                 'a green cross on the left \n\na yellow triangle')                    # LlamaGen's file layout
CAPTIONS = ["a red circle, on the left", "a blue square on the left, small", "a green cross on the left ",
            "a yellow triangle"]                                                       # as pandas reads them


def prompts(tmp_path):
    (tmp_path / "coco.csv").write_text(CAPTIONS_FILE, encoding="utf-8")
    (tmp_path / "geneval.jsonl").write_text(json.dumps({"prompt": "a green cross", "tag": "single_object"}) + "\n")
    hps = tmp_path / "hps"
    hps.mkdir()
    for style in eval_fid.HPS_STYLES:
        (hps / f"{style}.json").write_text(json.dumps(["a yellow triangle"]))   # toy vocabulary only
    return tmp_path / "coco.csv", tmp_path / "geneval.jsonl", hps


def record_prompts(monkeypatch):
    """Every caption that reaches the sampler, in order."""
    seen, make = [], sample.make_generate

    def make_recording(*a, **k):
        generate = make(*a, **k)
        return lambda captions, key: seen.extend(captions) or generate(captions, key)
    monkeypatch.setattr(sample, "make_generate", make_recording)
    return seen


@pytest.mark.slow
def test_every_benchmark_from_a_toy_checkpoint_as_the_official_tools_read_it(toy_ckpt, tmp_path, monkeypatch):
    coco, geneval, hps = prompts(tmp_path)
    seen = []
    sample_fn = backbones.fast_sample.sample_gpt                 # what backbones hands sample.py for the toy GPT
    monkeypatch.setattr(backbones.fast_sample, "sample_gpt", lambda *a, **k: seen.append(k) or sample_fn(*a, **k))
    prompted = record_prompts(monkeypatch)
    assert sample.main(["--ckpt", toy_ckpt, "--bench", "coco", "--prompts", str(coco), "--out_dir",
                        str(tmp_path / "c"), "--n", "6", "--device", "cpu"]) == 6
    expect = CAPTIONS + CAPTIONS[:2]                                                    # cycled to --n
    pairs = llamagen_reads(str(tmp_path / "c"))                                         # what LlamaGen scores
    assert pairs == [(str(tmp_path / "c" / "images" / f"{i:06d}.png"), c) for i, c in enumerate(expect)]
    assert prompted == expect                                    # commas kept: the prompts are the scored captions
    assert cleanfid_reads(str(tmp_path / "c" / "images")) == 6
    assert Image.open(pairs[0][0]).size == (32, 32)
    assert {k: seen[0][k] for k in ("cfg_scale", "temperature", "top_k", "top_p")} == backbones.EVAL_SETTINGS["tiny"]
    assert sample.main(["--ckpt", toy_ckpt, "--bench", "coco", "--prompts", str(coco), "--out_dir",
                        str(tmp_path / "c"), "--n", "6", "--device", "cpu"]) == 0          # resumable: nothing new

    assert sample.main(["--ckpt", toy_ckpt, "--bench", "geneval", "--prompts", str(geneval), "--out_dir",
                        str(tmp_path / "g"), "--device", "cpu"]) == 4                      # 4 images per prompt
    # without --seed each benchmark samples with its released seed: 42 for COCO (and HPS), 0 for GenEval
    assert [json.loads((tmp_path / d / ".sampled_with.json").read_text())["seed"] for d in "cg"] == [42, 0]
    assert geneval_reads(str(tmp_path / "g")) == {
        "00000": ({"prompt": "a green cross", "tag": "single_object"}, [f"{k:04d}.png" for k in range(4)])}

    assert sample.main(["--ckpt", toy_ckpt, "--bench", "hps", "--prompts", str(hps), "--out_dir",
                        str(tmp_path / "h"), "--device", "cpu"]) == 4                      # 1 per prompt and style
    read = hpsv2_reads(str(tmp_path / "h"), str(hps))
    assert sorted(read) == sorted(eval_fid.HPS_STYLES) and all(len(v) == 1 for v in read.values())
    assert all(Image.open(f).format == "JPEG" for v in read.values() for _, f in v)    # as the released samplers
    for d in ("c", "g", "h"):                                                           # no marker, no temp file left
        assert not os.path.exists(tmp_path / d / eval_fid.MARKER) and leftover_files(tmp_path / d) == []


@pytest.mark.slow
def test_policy_and_decoder_choice_loads_those_weights(toy_ckpt):
    ck = torch.load(toy_ckpt, map_location="cpu", weights_only=True)
    _, _, gpt, vq, _ = sample.load_sampler(toy_ckpt, policy="ema", decoder="online")
    assert all(torch.equal(v, ck["ema_gpt"][k]) for k, v in gpt.state_dict().items())
    assert all(torch.equal(v, ck["vq"][k]) for k, v in vq.state_dict().items())
    assert any(not torch.equal(ck["gpt"][k], ck["ema_gpt"][k]) for k in ck["gpt"])     # the choice matters


def test_bad_paths_are_named(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="--ckpt .*no such file"):
        sample.main(["--ckpt", str(tmp_path / "missing.pt"), "--bench", "coco", "--prompts", str(tmp_path / "x.csv"),
                     "--out_dir", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="--prompts"):
        sample.main(["--ckpt", str(tmp_path / "missing.pt"), "--bench", "hps", "--prompts", str(tmp_path / "none"),
                     "--out_dir", str(tmp_path / "o")])
    monkeypatch.setenv("WORLD_SIZE", "2")          # torchrun: every process would write every image
    with pytest.raises(SystemExit, match="WORLD_SIZE 2: sample.py is one process"):
        sample.main(["--ckpt", str(tmp_path / "missing.pt"), "--bench", "coco", "--prompts", str(tmp_path / "x.csv"),
                     "--out_dir", str(tmp_path / "o")])


@pytest.mark.slow
def test_refused_folder_is_named_before_sampling(toy_ckpt, tmp_path):
    coco, _, _ = prompts(tmp_path)
    (tmp_path / "c" / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "c" / "images" / "000009.png")
    with pytest.raises(SystemExit, match="clean-fid.*000009.png.*new --out_dir"):
        sample.main(["--ckpt", toy_ckpt, "--bench", "coco", "--prompts", str(coco), "--out_dir", str(tmp_path / "c"),
                     "--n", "2", "--device", "cpu"])
    (tmp_path / "bad.csv").write_text("Prompt\na red circle\ta blue square\n")
    with pytest.raises(SystemExit, match="bad.csv:2: 2 tab-separated fields"):
        sample.main(["--ckpt", toy_ckpt, "--bench", "coco", "--prompts", str(tmp_path / "bad.csv"), "--out_dir",
                     str(tmp_path / "c2"), "--device", "cpu"])


@pytest.mark.slow
def test_janus_checkpoint_samples_with_janus_eval_settings_and_conversion(toy_cache, tmp_path, monkeypatch):
    # a tiny Janus trained one step in the toy world; sample.py must use Janus's released evaluation sampler
    # (CFG 5, top-k 50: D12), not the rollout top-k 1000 of its training preset, and its uint8 conversion
    from perf import fast_sample
    from janus_fixtures import write_tiny_janus
    ckpt_path, tok_dir = write_tiny_janus(tmp_path / "janus")
    cfg = train.parse_config(["--backbone", "janus_pro_1b", "--janus_config", "tiny", "--janus_ckpt", ckpt_path,
                              "--janus_tokenizer", tok_dir, "--image_size", "32", "--toy_preset", "tiny",
                              "--toy_cache", toy_cache, "--out_dir", str(tmp_path / "run"), "--batch_prompts", "2",
                              "--group_size", "2", "--steps", "1", "--sample_every", "0", "--device", "cpu"])
    train.main(cfg)
    assert cfg.top_k == 1000 and cfg.cfg_scale == 5.0                                   # the training preset
    seen, fn = [], fast_sample.sample_janus                      # what backbones hands sample.py for Janus
    monkeypatch.setattr(fast_sample, "sample_janus",
                        lambda *a, **k: seen.append({**k, "dtype": next(a[0].parameters()).dtype}) or fn(*a, **k))
    decoded, load = [], sample.load_sampler

    def load_recording(*a, **k):                                 # keeps every decoder output in [-1, 1]
        cfg, te, gpt, vq, sample_fn = load(*a, **k)
        decode = vq.decode_indices
        vq.decode_indices = lambda tokens: decoded.append(decode(tokens)) or decoded[-1]
        return cfg, te, gpt, vq, sample_fn
    monkeypatch.setattr(sample, "load_sampler", load_recording)
    coco, _, _ = prompts(tmp_path)
    assert sample.main(["--ckpt", str(tmp_path / "run" / "ckpt_0000001.pt"), "--bench", "coco", "--prompts",
                        str(coco), "--out_dir", str(tmp_path / "c"), "--n", "2", "--device", "cpu"]) == 2
    assert {k: seen[0][k] for k in ("cfg_scale", "top_k", "dtype")} == {"cfg_scale": 5.0, "top_k": 50,
                                                                       "dtype": torch.bfloat16}   # --precision released
    assert decoded[0].dtype == torch.bfloat16                    # Janus decodes with its bf16 model too
    saved = np.stack([np.asarray(Image.open(tmp_path / "c" / "images" / f"{i:06d}.png")) for i in range(2)])
    assert saved.shape == (2, 32, 32, 3)
    # the released Janus conversion (RankE janus/sample/sample_t2i_ddp_coco.py:211-212), written with numpy
    dec = decoded[0].float().numpy().transpose(0, 2, 3, 1)
    assert np.array_equal(saved, np.clip((dec + 1) / 2 * 255, 0, 255).astype(np.uint8))
    llamagen = to_uint8(decoded[0]).permute(0, 2, 3, 1).numpy()
    assert (saved != llamagen).mean() > 0.1                      # LlamaGen's conversion would give other pixels


def test_janus_conversion_is_the_released_one_byte_for_byte():
    x = torch.cat([torch.linspace(-1.2, 1.2, 240001), torch.tensor([-1.0, 1.0, 0.0, 1 / 255, -1 / 255])])
    released = np.clip((x.numpy() + 1) / 2 * 255, 0, 255).astype(np.uint8)  # janus/sample/sample_t2i_ddp_coco.py:212
    assert np.array_equal(to_uint8_janus(x).numpy(), released)
    assert to_uint8_janus(torch.tensor([-1.0, 0.0, 1.0])).tolist() == [0, 127, 255]
    assert to_uint8(torch.tensor([-1.0, 0.0, 1.0])).tolist() == [0, 128, 255]       # LlamaGen: half a level up


# ------------------------------------------------------------------------------------------- captions
def test_read_captions_is_llamagens_one_caption_per_line(tmp_path):
    p = tmp_path / "coco_captions.csv"
    p.write_text(CAPTIONS_FILE, encoding="utf-8")
    assert sample.read_captions(str(p), n=9) == (CAPTIONS * 3)[:9]
    p.write_bytes(b"Prompt\r\nA man, a plan, a canal\r\n")                             # CRLF line ends
    assert sample.read_captions(str(p)) == ["A man, a plan, a canal"] * 30000
    p.write_text("caption\nx\n")
    with pytest.raises(ValueError, match="header `Prompt`"):
        sample.read_captions(str(p))
    p.write_text("Prompt\n\n")
    with pytest.raises(ValueError, match="no captions"):
        sample.read_captions(str(p))
    p.write_text('Prompt\nfine\n"a caption\nover two lines"\n')
    with pytest.raises(ValueError, match=":4: caption .*line break"):
        sample.read_captions(str(p))
    p.write_text("Prompt\nfine\na red circle\ta blue square\n")           # a tab: pandas would cut the caption
    with pytest.raises(ValueError, match=":3: 2 tab-separated fields"):
        sample.read_captions(str(p))


# ------------------------------------------------------------------------------------------- folder writers
def make_generate(calls):
    def generate(captions, key):
        calls.append(list(captions))
        vals = torch.tensor([len(c) * 10 % 256 for c in captions], dtype=torch.uint8)
        return vals.view(-1, 1, 1, 1).expand(-1, 3, 8, 8).contiguous()  # (B,3,8,8) uint8
    return generate


def failing_after(calls_ok):
    """A generator that raises on its call number calls_ok + 1, like a run killed mid-way."""
    calls = []
    good = make_generate(calls)

    def generate(captions, key):
        if len(calls) == calls_ok:
            raise KeyboardInterrupt
        return good(captions, key)
    return generate


def test_sample_to_folder_is_resumable(tmp_path):
    caps = [f"caption number {'x' * i}" for i in range(7)]
    calls = []
    gen = make_generate(calls)
    assert sample.sample_to_folder(gen, caps, str(tmp_path), batch_size=3, progress=False) == 7
    assert [len(c) for c in calls] == [3, 3, 1]
    assert sorted(os.listdir(tmp_path / "images")) == [f"{i:06d}.png" for i in range(7)]
    assert (tmp_path / "captions.txt").read_text().splitlines() == caps
    img = np.asarray(Image.open(tmp_path / "images" / "000004.png"))
    assert img.shape == (8, 8, 3) and (img == len(caps[4]) * 10 % 256).all()
    # remove two samples: a second run generates exactly those, nothing else
    os.remove(tmp_path / "images" / "000002.png")
    os.remove(tmp_path / "images" / "000005.png")
    calls.clear()
    assert sample.sample_to_folder(gen, caps, str(tmp_path), batch_size=3, progress=False) == 2
    assert calls == [caps[0:3], caps[3:6]]                  # the blocks that hold them, drawn again whole
    calls.clear()
    assert sample.sample_to_folder(gen, caps, str(tmp_path), batch_size=3, progress=False) == 0 and calls == []
    with pytest.raises(ValueError, match="another batch_size"):    # other blocks would draw other images
        sample.sample_to_folder(gen, caps, str(tmp_path), batch_size=4, progress=False)
    assert eval_fid.read_coco_folder(str(tmp_path)) == ([str(tmp_path / "images" / f"{i:06d}.png") for i in range(7)],
                                                        caps)


class _Cfg:
    backbone = "tiny"


class _Decoder:
    """Stand-in VQ: 12 tokens -> a (3, 2, 2) image in [-1, 1]."""
    @staticmethod
    def decode_indices(tokens):
        return tokens.float().view(-1, 3, 2, 2) / 127.5 - 1


def random_generate(seed):
    """sample.make_generate around a stand-in sampler that draws its tokens from the generator it is given."""
    def sample_fn(gpt, cond, mask, *, generator, **settings):
        return torch.randint(0, 256, (cond.shape[0], 12), generator=generator)
    encode = lambda caps: (torch.zeros(len(caps), 1, 1), torch.ones(len(caps), 1, dtype=torch.bool))  # noqa: E731
    return sample.make_generate(_Cfg(), encode, None, _Decoder(), sample_fn, seed=seed)


def folder_bytes(folder):
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files if not f.startswith(".")}


def test_a_resumed_run_writes_the_uninterrupted_runs_images(tmp_path, monkeypatch):
    caps = [f"caption {i}" for i in range(8)]
    sample.sample_to_folder(random_generate(5), caps, str(tmp_path / "whole"), batch_size=3, progress=False)
    whole = folder_bytes(tmp_path / "whole")
    real_replace = os.replace

    def killed_at(name):                     # a kill while the 5th image (mid-block) is renamed into place
        def replace(src, dst):
            if str(dst).endswith(name):
                raise KeyboardInterrupt
            real_replace(src, dst)
        return replace
    monkeypatch.setattr(os, "replace", killed_at("000004.png"))
    with pytest.raises(KeyboardInterrupt):
        sample.sample_to_folder(random_generate(5), caps, str(tmp_path / "cut"), batch_size=3, progress=False)
    monkeypatch.setattr(os, "replace", real_replace)
    assert len(os.listdir(tmp_path / "cut" / "images")) == 4 + 1                       # 4 images + a .tmp
    assert sample.sample_to_folder(random_generate(5), caps, str(tmp_path / "cut"), batch_size=3,
                                   progress=False) == 4
    assert folder_bytes(tmp_path / "cut") == whole                                       # every byte
    # each image depends on the seed and its block, not on the blocks drawn before it
    sample.sample_to_folder(random_generate(5), caps[3:6], str(tmp_path / "one"), batch_size=3, progress=False)
    assert folder_bytes(tmp_path / "one")["images/000000.png"] != whole["images/000003.png"]   # another block key
    other = sample.sample_to_folder(random_generate(6), caps, str(tmp_path / "seed6"), batch_size=3, progress=False)
    assert other == 8 and folder_bytes(tmp_path / "seed6")["images/000000.png"] != whole["images/000000.png"]
    gen = random_generate(5)
    assert torch.equal(gen(caps[:3], "0"), gen(caps[:3], "0")) and not torch.equal(gen(caps[:3], "0"),
                                                                                   gen(caps[:3], "3"))


def test_generate_output_and_captions_are_validated(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        sample.sample_to_folder(lambda c, key: torch.zeros(len(c), 3, 8, 8), ["a"], str(tmp_path), progress=False)
    with pytest.raises(ValueError, match=r"\(2, 3, H, W\)"):
        sample.sample_to_folder(lambda c, key: torch.zeros(1, 3, 8, 8, dtype=torch.uint8), ["a", "b"], str(tmp_path / "2"),
                                progress=False)
    with pytest.raises(ValueError, match="caption 1 is 'b\\\\nc'"):
        sample.sample_to_folder(make_generate([]), ["a", "b\nc"], str(tmp_path / "3"), progress=False)


def test_nan_decoder_output_is_refused_not_written_black(tmp_path):
    """A decoder that outputs NaN (a diverged checkpoint, an overflowing dtype) stops sampling with the cause named:
    the uint8 conversion made NaN black, and the evaluators scored folders of black PNGs."""
    class NanVQ:
        def decode_indices(self, tokens):
            return torch.full((tokens.shape[0], 3, 8, 8), float("nan"))
    text_encoder = lambda caps: (torch.zeros(len(caps), 2, 4), torch.ones(len(caps), 2, dtype=torch.bool))  # noqa: E731
    sampler = lambda gpt, cond, mask, generator=None, **kw: torch.zeros(cond.shape[0], 4, dtype=torch.long)  # noqa: E731
    for backbone in ("tiny", "janus_pro_1b"):                                # to_uint8 and to_uint8_janus
        cfg = argparse.Namespace(backbone=backbone)
        generate = sample.make_generate(cfg, text_encoder, None, NanVQ(), sampler, seed=0)
        with pytest.raises(ValueError, match="NaN/inf values.*diverged"):
            sample.sample_to_folder(generate, ["a", "b"], str(tmp_path / backbone), batch_size=2, progress=False)
        assert not glob.glob(str(tmp_path / backbone / "images" / "*.png"))


def test_sample_geneval_layout(tmp_path):
    meta = tmp_path / "evaluation_metadata.jsonl"
    meta.write_text("\n".join(json.dumps({"tag": "single_object", "prompt": p}) for p in ["a cat", "a dog"]))
    calls = []
    assert sample.sample_geneval(make_generate(calls), str(meta), str(tmp_path / "out"), n_per_prompt=2,
                                 batch_size=3) == 4
    assert calls == [["a cat", "a cat", "a dog"], ["a dog"]]
    read = geneval_reads(str(tmp_path / "out"))
    assert read == {"00000": ({"tag": "single_object", "prompt": "a cat"}, ["0000.png", "0001.png"]),
                    "00001": ({"tag": "single_object", "prompt": "a dog"}, ["0000.png", "0001.png"])}
    assert sample.sample_geneval(make_generate(calls), str(meta), str(tmp_path / "out"), n_per_prompt=2,
                                 batch_size=3) == 0


def test_interrupted_runs_are_refused_by_every_reader_and_resume(tmp_path, monkeypatch):
    from cleanfid.utils import EXTENSIONS
    caps = [f"c{i}, d" for i in range(5)]
    coco = tmp_path / "coco"
    # killed inside a file write: the half-written file lies under a name no reader matches
    real_replace, kills = os.replace, []

    def replace_once_killed(src, dst):
        if str(dst).endswith("000001.png") and not kills:
            kills.append(src)
            raise KeyboardInterrupt
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", replace_once_killed)
    with pytest.raises(KeyboardInterrupt):
        sample.sample_to_folder(make_generate([]), caps, str(coco), batch_size=2, progress=False)
    monkeypatch.setattr(os, "replace", real_replace)
    assert os.path.basename(kills[0]) == ".000001.png.tmp" and os.path.isfile(kills[0])
    assert not re.match(r"\d+\.png", ".000001.png.tmp")                              # GenEval's pattern
    listed = [p for e in EXTENSIONS for p in glob.glob(str(coco / "images" / "**" / f"*.{e}"), recursive=True)]
    assert listed == [str(coco / "images" / "000000.png")]                              # clean-fid's listing
    with pytest.raises(FileNotFoundError):                                              # LlamaGen: no captions.txt
        llamagen_reads(str(coco))
    with pytest.raises(ValueError, match="unfinished"):
        eval_fid.read_coco_folder(str(coco))
    with pytest.raises(ValueError, match="unfinished run with another seed"):           # resume with other settings
        sample.sample_to_folder(make_generate([]), caps, str(coco), batch_size=2, progress=False, run={"seed": 1})
    with pytest.raises(ValueError, match="unfinished run with another captions_sha1, n"):
        sample.sample_to_folder(make_generate([]), caps[:3], str(coco), batch_size=2, progress=False)
    assert sample.sample_to_folder(make_generate([]), caps, str(coco), batch_size=2, progress=False) == 4
    assert leftover_files(coco) == [] and len(llamagen_reads(str(coco))) == 5 and cleanfid_reads(str(coco)) == 5

    # GenEval: every prompt folder exists from the start, metadata.jsonl only at the end -> GenEval stops on it
    meta = tmp_path / "evaluation_metadata.jsonl"
    meta.write_text("\n".join(json.dumps({"tag": "t", "prompt": p}) for p in ["a cat", "a dog", "a cow"]))
    with pytest.raises(KeyboardInterrupt):
        sample.sample_geneval(failing_after(1), str(meta), str(tmp_path / "g"), n_per_prompt=2, batch_size=2)
    assert sorted(os.listdir(tmp_path / "g")) == ["00000", "00001", "00002", eval_fid.MARKER]
    with pytest.raises(FileNotFoundError, match="metadata.jsonl"):
        geneval_reads(str(tmp_path / "g"))
    assert sample.sample_geneval(make_generate([]), str(meta), str(tmp_path / "g"), n_per_prompt=2, batch_size=2) == 4
    assert [len(v[1]) for v in geneval_reads(str(tmp_path / "g")).values()] == [2, 2, 2]

    # HPSv2: the marker beside the styles makes hpsv2 fail instead of scoring the styles it finds
    hps = tmp_path / "hps_prompts"
    hps.mkdir()
    for style in eval_fid.HPS_STYLES:
        (hps / f"{style}.json").write_text(json.dumps([f"{style} {i}" for i in range(3)]))
    with pytest.raises(KeyboardInterrupt):
        sample.sample_hps_benchmark(failing_after(2), str(hps), str(tmp_path / "h"), batch_size=2)
    with pytest.raises(FileNotFoundError, match=f"{eval_fid.MARKER}.json"):
        hpsv2_reads(str(tmp_path / "h"), str(hps))
    # a kill while the marker itself was written leaves its temporary file beside the styles: resume still works
    (tmp_path / "h" / f".{eval_fid.MARKER}.tmp").write_text("{")
    assert sample.sample_hps_benchmark(make_generate([]), str(hps), str(tmp_path / "h"), batch_size=2) == 9
    assert all(len(v) == 3 for v in hpsv2_reads(str(tmp_path / "h"), str(hps)).values())


def test_leftovers_of_other_runs_are_refused(tmp_path):
    coco = tmp_path / "coco"
    caps = [f"c{i}" for i in range(5)]
    sample.sample_to_folder(make_generate([]), caps, str(coco), progress=False, run={"ckpt": "a.pt", "seed": 0})
    assert sample.sample_to_folder(make_generate([]), caps, str(coco), progress=False,
                                   run={"ckpt": "a.pt", "seed": 0}) == 0               # the same run: nothing to do
    with pytest.raises(ValueError, match="finished run with another ckpt"):            # another checkpoint: refused
        sample.sample_to_folder(make_generate([]), caps, str(coco), progress=False, run={"ckpt": "b.pt", "seed": 0})
    os.remove(coco / ".sampled_with.json")                                             # a folder of an older sample.py
    with pytest.raises(ValueError, match="finished run of other captions"):
        sample.sample_to_folder(make_generate([]), caps[:3], str(coco), progress=False)
    os.remove(coco / "captions.txt")                        # a larger run's images without its captions
    with pytest.raises(FileExistsError, match="2 entries that clean-fid .*000003.png"):
        sample.sample_to_folder(make_generate([]), caps[:3], str(coco), progress=False)

    meta = tmp_path / "evaluation_metadata.jsonl"
    meta.write_text("\n".join(json.dumps({"tag": "t", "prompt": p}) for p in ["a cat", "a dog"]))
    sample.sample_geneval(make_generate([]), str(meta), str(tmp_path / "g"), n_per_prompt=3)
    with pytest.raises(FileExistsError, match="2 entries that GenEval.*0002.png"):     # 3 per prompt, now 2
        sample.sample_geneval(make_generate([]), str(meta), str(tmp_path / "g"), n_per_prompt=2)
    (tmp_path / "g" / "00000" / "samples" / "0000.png.tmp").write_bytes(b"")           # GenEval counts this name
    with pytest.raises(FileExistsError, match="0000.png.tmp"):
        sample.sample_geneval(make_generate([]), str(meta), str(tmp_path / "g"), n_per_prompt=3)
    os.remove(tmp_path / "g" / "00000" / "samples" / "0000.png.tmp")
    meta.write_text(json.dumps({"tag": "t", "prompt": "a cat"}))                       # a shorter prompt list
    with pytest.raises(FileExistsError, match="GenEval.*00001"):
        sample.sample_geneval(make_generate([]), str(meta), str(tmp_path / "g"), n_per_prompt=3)

    hps = tmp_path / "hps_prompts"
    hps.mkdir()
    for style in eval_fid.HPS_STYLES:
        (hps / f"{style}.json").write_text(json.dumps([f"{style} 0"]))
    sample.sample_hps_benchmark(make_generate([]), str(hps), str(tmp_path / "h"), run={"seed": 42})
    with pytest.raises(ValueError, match="finished run with another seed"):
        sample.sample_hps_benchmark(make_generate([]), str(hps), str(tmp_path / "h"), run={"seed": 0})
    (tmp_path / "h" / "scores_hps.json").write_text("{}")                              # hpsv2 would open it as a style
    with pytest.raises(FileExistsError, match="hpsv2.*scores_hps.json"):
        sample.sample_hps_benchmark(make_generate([]), str(hps), str(tmp_path / "h"))


def test_a_finished_folder_reopened_for_repair_reads_as_unfinished_until_done(tmp_path):
    """A finished folder that lost an image is reopened to sample it again. If that run is killed, the folder must
    not read as complete to the official tools, which ignore MARKER: LlamaGen's reader would zip the images after the
    hole with the wrong captions, GenEval would score the prompt without the lost sample. So reopening removes
    captions.txt / metadata.jsonl, and finishing writes them again."""
    caps = [f"c{i}" for i in range(5)]
    coco = tmp_path / "coco"
    sample.sample_to_folder(make_generate([]), caps, str(coco), batch_size=2, progress=False)
    os.remove(coco / "images" / "000002.png")
    with pytest.raises(KeyboardInterrupt):
        sample.sample_to_folder(failing_after(0), caps, str(coco), batch_size=2, progress=False)
    with pytest.raises(FileNotFoundError):                                              # LlamaGen: no captions.txt
        llamagen_reads(str(coco))
    assert sample.sample_to_folder(make_generate([]), caps, str(coco), batch_size=2, progress=False) == 1
    assert [os.path.basename(p) for p, _ in llamagen_reads(str(coco))] == [f"{i:06d}.png" for i in range(5)]

    meta = tmp_path / "evaluation_metadata.jsonl"
    meta.write_text("\n".join(json.dumps({"tag": "t", "prompt": p}) for p in ["a cat", "a dog"]))
    g = tmp_path / "g"
    sample.sample_geneval(make_generate([]), str(meta), str(g), n_per_prompt=2, batch_size=2)
    os.remove(g / "00001" / "samples" / "0000.png")
    with pytest.raises(KeyboardInterrupt):
        sample.sample_geneval(failing_after(0), str(meta), str(g), n_per_prompt=2, batch_size=2)
    with pytest.raises(FileNotFoundError, match="metadata.jsonl"):
        geneval_reads(str(g))
    assert sample.sample_geneval(make_generate([]), str(meta), str(g), n_per_prompt=2, batch_size=2) == 1
    assert [len(v[1]) for v in geneval_reads(str(g)).values()] == [2, 2]


# ------------------------------------------------------------------------------------------- precision
def test_released_precision_is_each_released_samplers():
    """--precision released: LlamaGen COCO / GenEval cast the GPT to bf16 and decode in fp32 with TF32 allowed
    (sample_t2i_ddp.py, sample_t2i_ddp_geneval.py), LlamaGen HPSv2 keeps an fp32 GPT under bf16 autocast
    (sample_t2i_ddp_hpsv2.py:125-139), Janus casts its whole model; fp32 and the toy (no released sampler): fp32."""
    P, bf16 = sample.Precision, torch.bfloat16
    plans = {(bb, bench): sample.precision_plan(bb, bench, "released")
             for bb in ("llamagen_xl", "janus_pro_1b") for bench in sample.BENCHES}
    assert plans == {("llamagen_xl", "coco"): P(bf16, tf32=True), ("llamagen_xl", "geneval"): P(bf16, tf32=True),
                     ("llamagen_xl", "hps"): P(autocast=True), **{("janus_pro_1b", b): P(bf16, bf16)
                                                                  for b in sample.BENCHES}}
    assert {sample.precision_plan(bb, b, "fp32") for bb in ("llamagen_xl", "janus_pro_1b", "tiny")
            for b in sample.BENCHES} | {sample.precision_plan("tiny", b, "released") for b in sample.BENCHES} \
        == {sample.FP32}


def test_bf16_conversion_is_the_released_hps_samplers_expression():
    """Under the released HPSv2 sampler's autocast the decoder's output is bf16 and clamp(127.5 x + 128, 0, 255)
    runs in bf16, whose grid (spacing 1 above 128) ROUNDS most levels that fp32 truncates."""
    x = (torch.rand(20000, generator=torch.Generator().manual_seed(0)) * 2.2 - 1.1).to(torch.bfloat16)
    released = torch.clamp(127.5 * x + 128.0, 0, 255).to(torch.uint8)                  # bf16 arithmetic
    assert torch.equal(to_uint8(x, torch.bfloat16), released)
    assert (to_uint8(x) != released).float().mean() > 0.2                             # fp32: truncated
    assert torch.equal(to_uint8_janus(x, torch.float32), to_uint8_janus(x.float()))


class _ConvDecoder(torch.nn.Module):
    """Stand-in VQ with a conv, so that bf16 autocast changes its output dtype: 12 tokens -> (3, 2, 2)."""
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def decode_indices(self, tokens):
        return torch.tanh(self.conv(tokens.float().view(-1, 3, 2, 2) / 127.5 - 1))


def test_autocast_plan_samples_decodes_and_converts_under_bf16_autocast():
    """make_generate(autocast=True) runs the sampler, the decoder and the uint8 conversion inside bf16 autocast (the
    released HPSv2 sampler's order); autocast=False (every other plan) converts the fp32 decoder output."""
    seen, dec = [], _ConvDecoder()

    def sample_fn(gpt, cond, mask, *, generator, **settings):
        seen.append(torch.is_autocast_enabled("cpu"))
        return torch.randint(0, 256, (cond.shape[0], 12), generator=generator)
    encode = lambda caps: (torch.zeros(len(caps), 1, 1), torch.ones(len(caps), 1, dtype=torch.bool))  # noqa: E731
    images = sample.make_generate(_Cfg(), encode, None, dec, sample_fn, seed=3, autocast=True)(["a", "b"], 0)
    gen = torch.Generator().manual_seed(sample.batch_seed(3, 0))
    tokens = sample_fn(None, torch.zeros(2, 1, 1), None, generator=gen)                # the draw generate made
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        x = dec.decode_indices(tokens)
    assert x.dtype == torch.bfloat16 and seen[0] is True
    assert torch.equal(images, torch.clamp(127.5 * x + 128.0, 0, 255).to(torch.uint8))
    plain = sample.make_generate(_Cfg(), encode, None, dec, sample_fn, seed=3)(["a", "b"], 0)
    with torch.no_grad():
        assert seen[-1] is False and torch.equal(plain, to_uint8(dec.decode_indices(tokens)))


# ------------------------------------------------------------------------------------------- seeds, files, folders
def test_batch_seed_is_a_fixed_63_bit_function_of_seed_and_key():
    """A batch's seed never changes between versions (a folder begun by one sample.py and resumed by another holds
    one run's images) and spans 63 bits (torch seeds are int64)."""
    assert [sample.batch_seed(42, "0"), sample.batch_seed(0, "anime/3"), sample.batch_seed(42, "96")] == \
        [7501086104722257524, 5159813112686896354, 7133421689893590427]
    seeds = [sample.batch_seed(s, k) for s in range(3) for k in range(200)]
    assert len(set(seeds)) == len(seeds) and all(0 <= x < 2 ** 63 for x in seeds) and max(seeds) >= 2 ** 62


def test_images_are_lossless_png_and_quality_100_jpeg(tmp_path):
    """COCO / GenEval images are PNG, byte for byte the generated pixels; HPSv2 images are JPEG at quality 100 (every
    quantization step 1), as the released samplers write them."""
    caps = [f"caption {i}" for i in range(3)]
    gen = random_generate(5)
    sample.sample_to_folder(gen, caps, str(tmp_path / "c"), batch_size=3, progress=False)
    want = gen(caps, "0").permute(0, 2, 3, 1).numpy()
    for i in range(3):
        with Image.open(tmp_path / "c" / "images" / f"{i:06d}.png") as img:
            assert img.format == "PNG" and np.array_equal(np.asarray(img), want[i])
    hps = tmp_path / "hps_prompts"
    hps.mkdir()
    for style in eval_fid.HPS_STYLES:
        (hps / f"{style}.json").write_text(json.dumps([f"{style} 0"]))
    sample.sample_hps_benchmark(gen, str(hps), str(tmp_path / "h"))
    for style in eval_fid.HPS_STYLES:
        with Image.open(tmp_path / "h" / style / "00000.jpg") as img:
            assert img.format == "JPEG" and all(max(t) == 1 for t in img.quantization.values())


def test_runs_remove_their_temporary_files_and_nothing_else(tmp_path):
    """Temporary files (.NAME.tmp) that a killed run left in the folders a run writes are removed; other files a
    user keeps there (hidden or not, as long as no evaluator counts them) stay."""
    def plant(*dirs):
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
            for name in (".0099.png.tmp", ".keep", "notes.tmp"):
                (d / name).write_text("x")

    def left(folder):
        return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs
                      if f in (".0099.png.tmp", ".keep", "notes.tmp"))
    coco = tmp_path / "coco"
    plant(coco / "images")
    sample.sample_to_folder(make_generate([]), ["a", "b"], str(coco), progress=False)
    assert left(coco) == ["images/.keep", "images/notes.tmp"]
    meta = tmp_path / "evaluation_metadata.jsonl"
    meta.write_text(json.dumps({"tag": "t", "prompt": "a cat"}))
    g = tmp_path / "g"
    plant(g / "00000", g / "00000" / "samples")
    sample.sample_geneval(make_generate([]), str(meta), str(g), n_per_prompt=2)
    assert left(g) == ["00000/.keep", "00000/notes.tmp", "00000/samples/.keep", "00000/samples/notes.tmp"]
    hps = tmp_path / "hps_prompts"
    hps.mkdir()
    for style in eval_fid.HPS_STYLES:
        (hps / f"{style}.json").write_text(json.dumps([f"{style} 0"]))
    h = tmp_path / "h"
    plant(*(h / style for style in eval_fid.HPS_STYLES))
    sample.sample_hps_benchmark(make_generate([]), str(hps), str(h))
    assert left(h) == sorted(f"{style}/{n}" for style in eval_fid.HPS_STYLES for n in (".keep", "notes.tmp"))


def test_geneval_refuses_no_prompts_and_a_folder_of_other_prompts(tmp_path):
    """A finished GenEval folder has no MARKER and keeps its record; an empty metadata file is refused; a folder
    whose metadata.jsonl holds other prompts (no record: an older sample.py's) is refused, not relabelled."""
    meta = tmp_path / "evaluation_metadata.jsonl"
    meta.write_text("\n")
    with pytest.raises(ValueError, match="no prompts"):
        sample.sample_geneval(make_generate([]), str(meta), str(tmp_path / "g"))
    meta.write_text("\n".join(json.dumps({"tag": "t", "prompt": p}) for p in ["a cat", "a dog"]))
    g = tmp_path / "g"
    sample.sample_geneval(make_generate([]), str(meta), str(g), n_per_prompt=1)
    assert not (g / eval_fid.MARKER).exists() and json.loads((g / ".sampled_with.json").read_text())["bench"] == \
        "geneval"
    os.remove(g / ".sampled_with.json")
    meta.write_text("\n".join(json.dumps({"tag": "t", "prompt": p}) for p in ["a cat", "a cow"]))
    with pytest.raises(ValueError, match="00001.metadata.jsonl holds another prompt than prompt 1"):
        sample.sample_geneval(make_generate([]), str(meta), str(g), n_per_prompt=1)
    assert json.loads((g / "00001" / "metadata.jsonl").read_text())["prompt"] == "a dog"


def test_begin_run_compares_identities_as_they_read_back(tmp_path):
    """The identity is compared as JSON reads it back (a tuple is a list there): the same run resumes."""
    sample.begin_run(str(tmp_path), {"bench": "coco", "shape": (2, 3)})
    sample.begin_run(str(tmp_path), {"bench": "coco", "shape": (2, 3)})
    with pytest.raises(ValueError, match="another shape"):
        sample.begin_run(str(tmp_path), {"bench": "coco", "shape": (3, 2)})


def test_geneval_writer_counts_what_geneval_reads(tmp_path):
    """The GenEval writer refuses leftovers by GenEval's own reading rule (eval_fid.geneval_counted): digit-named
    folders only, and in samples/ only files named like 0000.png; what GenEval skips (a notes folder, a digit-named
    file, other names) is no leftover."""
    g = tmp_path / "g"
    (g / "00000" / "samples" / "0001.png").mkdir(parents=True)                # a folder, not a sample
    (g / "00000" / "samples" / "0000.png").write_bytes(b"x")
    (g / "00000" / "samples" / "notes.txt").write_text("x")
    (g / "00000" / "metadata.jsonl").write_text(json.dumps({"prompt": "a cat"}))
    (g / "logs" / "samples").mkdir(parents=True)
    (g / "logs" / "samples" / "0000.png").write_bytes(b"x")
    (g / "00009").write_text("a file")
    read = {sub: names for sub, (_, names) in geneval_reads(str(g)).items()}
    assert eval_fid.geneval_counted(str(g)) == read == {"00000": ["0000.png"]}
