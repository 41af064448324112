"""train.py --synthetic: the real loop on random-weight models, nothing read or downloaded (perf/synthetic.py).

Scale in the runs below: --synthetic tiny. Real size: FLAN-T5-XL width (2048 x 5120, 32 heads, vocabulary 32128;
2 of 24 layers), the VQ-16 depth and codebook (16384 x 8; base width 32 of 128), LPIPS-VGG16, the PatchGAN, the
reward CLIP's input (224 px, patch 14, BPE tokenizer, 77 tokens; 2 layers x width 256 per tower), the policy's
vocabularies and 120 caption slots (2 layers x width 256); 64-px images (4x4 tokens). Full sizes are checked on the
meta device. The sockets are closed during the runs: a download attempt fails the test.

Run: pytest -q tests/test_synthetic.py   (about a minute on 2 CPU cores; 55 s single-threaded)
"""
import json
import socket
from types import SimpleNamespace

import pytest
import torch

import ckpt
import data
import runtime
from perf import synthetic
import train
import vq as vqlib

ARGS = ["--synthetic", "tiny", "--steps", "2", "--ckpt_every", "2", "--batch_prompts", "2", "--group_size", "2",
        "--grad_accum", "1", "--sample_every", "0", "--device", "cpu"]
DECODER_KEYS = ("decoder.", "post_quant_conv.")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError(f"a synthetic run tried to open a network connection {a}")
    monkeypatch.setattr(socket.socket, "connect", refuse)


def run(out_dir, backbone="llamagen_xl", method="ranke"):
    gan_now = ["--disc_start", "0"] if method in train.DECODER_METHODS else []   # a flag only methods with D take
    cfg = train.parse_config(["--backbone", backbone, "--method", method, "--out_dir", str(out_dir), *ARGS, *gan_now])
    train.main(cfg)
    return cfg, torch.load(ckpt.list_ckpts(str(out_dir))[-1], map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def ranke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranke")
    return out, *run(out)


def moved(ck, cfg, part):
    """Names of the entries of ck[part] that differ from the run's initial weights (gpt: the frozen reference, which
    train.py copies from the initial policy; vq: rebuilt from the same seed)."""
    if part == "gpt":
        start = ck["ref_gpt"]
    else:
        g = torch.Generator().manual_seed(cfg.seed + synthetic.SEED_OFFSETS["vq"])
        start = vqlib.VQModel(synthetic.vq_config(cfg.synthetic), generator=g).state_dict()
    return {k for k, v in start.items() if v.is_floating_point() and not torch.equal(ck[part][k], v)}


def check_moves(ck, cfg, policy_moves, decoder_moves):
    gpt = {k for k, v in ck["ref_gpt"].items() if v.is_floating_point() and not k.endswith("uncond_embedding")}
    assert moved(ck, cfg, "gpt") == (gpt if policy_moves else set()), f"--method {cfg.method}: policy"
    dec = {k for k, v in ck["vq"].items() if k.startswith(DECODER_KEYS) and v.is_floating_point()}
    assert moved(ck, cfg, "vq") == (dec if decoder_moves else set()), f"--method {cfg.method}: tokenizer"


@pytest.mark.slow
def test_ranke_two_steps_trains_policy_and_decoder_and_says_synthetic(ranke_run, capsys):
    out, cfg, ck = ranke_run
    assert ck["config"]["synthetic"] == "tiny" and ck["step"] == 2
    check_moves(ck, cfg, True, True)
    lines = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert len(lines) == 2 and all(line["synthetic"] == "tiny" for line in lines)
    assert all(k in lines[-1] for k in ("reward/clip", "policy/kl", "decoder/total", "disc/loss"))


@pytest.mark.slow
@pytest.mark.parametrize("method,policy_moves,decoder_moves", [
    ("grpo", True, False), ("decoder", False, True), ("vapi", True, False)])
def test_each_method_two_steps_moves_only_its_part(tmp_path, method, policy_moves, decoder_moves):
    cfg, ck = run(tmp_path, method=method)
    assert ck["config"]["synthetic"] == "tiny" and ck["config"]["method"] == method
    check_moves(ck, cfg, policy_moves, decoder_moves)


@pytest.mark.slow
def test_janus_two_steps(tmp_path):
    cfg, ck = run(tmp_path, backbone="janus_pro_1b")
    assert ck["config"]["synthetic"] == "tiny" and ck["config"]["backbone"] == "janus_pro_1b"
    assert ck["gpt"]["gen_head.vision_head.weight"].shape == (16384, 256)      # real image vocabulary, tiny width
    check_moves(ck, cfg, True, True)


def test_full_size_models_on_meta_match_the_released_counts(capsys):
    for backbone in ("llamagen_xl", "janus_pro_1b"):
        counts = synthetic.full_counts(backbone)
        assert counts == {k: synthetic.FULL_COUNTS[k] for k in counts}
        synthetic.dry_run(train.parse_config(["--backbone", backbone, "--dry_run"]))   # its counts, independently
        printed = capsys.readouterr().out
        assert f"policy {counts['gpt' if backbone == 'llamagen_xl' else 'janus']:,} params" in printed
        assert f"VQ {counts['vq']:,}" in printed
    assert abs(synthetic.full_counts()["t5"] / 1.22e9 - 1) < 0.01            # FLAN-T5-XL's encoder size
    assert abs(synthetic.FULL_COUNTS["clip"] / 427.6e6 - 1) < 1e-3               # dry_run's CLIP ViT-L/14 constant
    t5 = synthetic.t5_config("full")
    assert (t5.d_model, t5.d_ff, t5.d_kv, t5.num_heads, t5.num_layers, t5.vocab_size, t5.is_gated_act,
            t5.dense_act_fn) == (2048, 5120, 64, 32, 24, 32128, True, "gelu_new")


@pytest.mark.slow
def test_resume_refuses_to_mix_synthetic_and_real(ranke_run):
    out, cfg, _ = ranke_run
    for other in ("", "2"):   # a real run, or another scale, resuming this synthetic run's out_dir
        with pytest.raises(SystemExit, match=f"--synthetic 'tiny'.*this run has --synthetic '{other}'"):
            runtime.resume(SimpleNamespace(out_dir=str(out), synthetic=other), None, None, None, None, 1, 0)


@pytest.mark.slow
def test_sample_loads_a_synthetic_checkpoint_only_with_the_banner(ranke_run, capsys):
    import sample
    out, cfg, ck = ranke_run
    run_cfg, enc, gpt, vq, _ = sample.load_sampler(ckpt.list_ckpts(str(out))[-1])
    assert "CHECKPOINT OF A SYNTHETIC RUN" in capsys.readouterr().out and run_cfg.synthetic == "tiny"
    assert isinstance(enc.tokenizer, synthetic.HashT5Tokenizer)
    assert all(torch.equal(v, ck["gpt"][k]) for k, v in gpt.state_dict().items())


def test_flag_values_and_what_they_cannot_combine_with(tmp_path):
    parse = lambda *a: train.parse_config(["--backbone", "llamagen_xl", *a])  # noqa: E731
    assert parse().synthetic == "" and parse("--synthetic").synthetic == "full"
    assert parse("--synthetic", "3", "--steps", "2").synthetic == "3"
    for argv, msg in ((["--synthetic", "huge"], "--synthetic 'huge'"), (["--synthetic", "0"], "--synthetic '0'"),
                      (["--synthetic", "--data", str(tmp_path)], "drop --data")):
        with pytest.raises(SystemExit, match=msg):
            train.main(parse(*argv, "--out_dir", str(tmp_path / "o")))
    with pytest.raises(SystemExit, match="toy backbone"):
        train.main(train.parse_config(["--synthetic", "tiny", "--out_dir", str(tmp_path / "o")]))
    assert synthetic.gpt_config("3").n_layer == 3 and synthetic.gpt_config("3").dim == 1280
    assert synthetic.clip_config("clip", "3")["vision_cfg"]["width"] == 1024


def test_stream_and_tokenizers_are_deterministic_and_resumable():
    stream = lambda seed: data.WorldStream(synthetic.SyntheticWorld(64), 3, seed)  # noqa: E731  as build_world
    a = stream(7)
    a.next()
    state = a.state_dict()
    x1, c1 = a.next()
    b = stream(0)
    b.load_state_dict(state)
    x2, c2 = b.next()
    assert torch.equal(x1, x2) and c1 == c2 and x1.shape == (3, 3, 64, 64) and x1.abs().max() <= 1
    enc = synthetic.HashT5Tokenizer()(["a red cup", "a red cup on a table"], max_length=5)
    assert enc.input_ids.tolist()[0][3:] == [1, 0] and enc.input_ids[1, -1] == 1           # </s> kept, pads 0
    assert enc.input_ids[0, :2].tolist() == enc.input_ids[1, :2].tolist()                   # same words, same ids
    assert synthetic.hash_ids("a red cup", 3, 32128) == [13806, 29389, 26323]    # blake2b: the same on every machine


def test_one_table_of_models_and_the_seam_picks_the_builders():
    """backbones.MODELS is what both builders read: the synthetic models at full size are the registries' configs it
    names; train.seam sends --synthetic to perf/synthetic.py, and the real builders refuse a synthetic config."""
    import backbones
    import janus
    import policy
    m = backbones.MODELS
    assert synthetic.gpt_config("full") == policy.GPT_CONFIGS[m["llamagen_xl"].gpt]
    assert synthetic.vq_config("full") == vqlib.VQ_CONFIGS[m["llamagen_xl"].vq]
    assert synthetic.janus_config("full") == janus.JANUS_CONFIGS[m["janus_pro_1b"].gpt]
    assert synthetic.t5_config("full").num_layers == 24 and synthetic.t5_config("2").num_layers == 2
    real = train.parse_config(["--backbone", "llamagen_xl", "--dry_run"])
    assert train.seam(real) is backbones and backbones.image_side(real) == 256
    syn = train.parse_config(["--backbone", "llamagen_xl", "--synthetic", "tiny", "--device", "cpu"])
    assert train.seam(syn) is synthetic and syn.image_size == synthetic.image_side(syn) == 64
    with pytest.raises(ValueError, match="perf/synthetic.py"):
        backbones.build_policy(syn, "cpu")
    with pytest.raises(ValueError, match="perf/synthetic.py"):
        backbones.image_side(syn)


def test_dry_run_counts_what_the_iteration_holds_and_refuses_what_it_cannot_estimate(capsys):
    """Activations are not halved under bf16 autocast (the policy's residual stream and logits stay fp32: measured),
    only the rollout KV cache is bf16; --logp_cfg guided doubles the log-prob rows; the discriminator's backward
    holds B real + B reconstructed images; other methods and --synthetic scales are refused, not estimated as RankE."""
    parse = lambda *a: train.parse_config(["--backbone", "llamagen_xl", "--dry_run", *a])  # noqa: E731
    row = lambda est, head: next(v for k, v in est.items() if k.startswith(head))  # noqa: E731
    bf16, fp32 = synthetic.dry_run(parse()), synthetic.dry_run(parse("--bf16", "false"))
    guided = synthetic.dry_run(parse("--logp_cfg", "guided"))
    capsys.readouterr()
    assert row(bf16, "policy activations") == row(fp32, "policy activations")
    assert row(bf16, "decoder activations") == row(fp32, "decoder activations")
    assert 2 * row(bf16, "KV cache") == row(fp32, "KV cache")
    assert 1.6 < row(guided, "policy activations") / row(bf16, "policy activations") < 2.1
    assert any(k.endswith("PatchGAN on 8") for k in bf16)                      # 2 x B = 8 > B x K = 4
    for argv, name in ((["--method", "grpo"], "--method grpo"), (["--method", "vapi"], "--method vapi"),
                       (["--synthetic", "2"], "--synthetic '2'")):
        with pytest.raises(SystemExit, match=f"not {name}: drop that flag"):
            synthetic.dry_run(parse(*argv))


@pytest.mark.slow
def test_sample_runs_each_released_precision_on_the_llamagen_layout(ranke_run, tmp_path, monkeypatch):
    """sample.py --precision released on a LlamaGen checkpoint: COCO samples with a bf16 GPT (the released
    sample_t2i_ddp.py casts it), HPSv2 with the fp32 GPT under bf16 autocast (sample_t2i_ddp_hpsv2.py); fp32: neither.
    The images are written in every case; the bf16 paths give other sampling probabilities than fp32 (the draws
    themselves may all agree: a tiny model's bf16 rounding rarely moves a multinomial draw, seen on an Intel Xeon
    host for 128 of 128), and HPSv2's bf16-autocast decoder other pixels."""
    import json
    import numpy as np
    from PIL import Image
    import sample
    from perf import fast_sample
    out, _, _ = ranke_run
    seen, fn, probs, draw = [], fast_sample.sample_gpt, [], fast_sample.draw
    monkeypatch.setattr(fast_sample, "sample_gpt", lambda gpt, *a, **k: seen.append(
        (gpt.output.weight.dtype, torch.is_autocast_enabled("cpu"))) or fn(gpt, *a, **k))
    monkeypatch.setattr(fast_sample, "draw", lambda p, g: probs.append(p.float()) or draw(p, g))
    (tmp_path / "c.csv").write_text("Prompt\na red cat\na blue dog\n")
    (tmp_path / "hp").mkdir()
    for style in ("anime", "concept-art", "paintings", "photo"):
        (tmp_path / "hp" / f"{style}.json").write_text(json.dumps(["a red cat"]))
    first, calls, dist = {}, {}, {}
    for prec in ("released", "fp32"):
        for bench, prompts, image in (("coco", "c.csv", "images/000000.png"), ("hps", "hp", "anime/00000.jpg")):
            d, seen[:], probs[:] = tmp_path / f"{bench}_{prec}", [], []
            sample.main(["--ckpt", ckpt.list_ckpts(str(out))[-1], "--bench", bench, "--prompts",
                         str(tmp_path / prompts), "--out_dir", str(d), "--n", "2", "--batch_size", "2", "--device",
                         "cpu", "--precision", prec])
            first[bench, prec], calls[bench, prec] = np.asarray(Image.open(d / image), dtype=np.int16), set(seen)
            dist[bench, prec] = torch.stack(probs)                  # (N,B,V): every step's sampling distribution
    bf16, fp32 = torch.bfloat16, torch.float32        # (GPT weights, autocast on) of every sampler call
    assert calls == {("coco", "released"): {(bf16, False)}, ("hps", "released"): {(fp32, True)},
                     ("coco", "fp32"): {(fp32, False)}, ("hps", "fp32"): {(fp32, False)}}
    for bench in ("coco", "hps"):
        assert (dist[bench, "released"] - dist[bench, "fp32"]).abs().max() > 1e-4
    assert np.abs(first["hps", "released"] - first["hps", "fp32"]).mean() > 0.1
