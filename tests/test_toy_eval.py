"""Tests for toy/eval.py (the toy world's evaluation): metrics on fake worlds, a checkpoint row with its three
decoders, and the --ckpt errors (missing file, folder, empty, corrupt, foreign dict) without a traceback.

Run: pytest -q tests/test_toy_eval.py   (CPU; uses the session's tiny toy cache)
"""
import copy
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import ckpt
from toy import eval as te
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------- metrics on fakes
def test_evaluate_toy_with_fake_world():
    K, N, M = 16, 4, 40
    g = torch.Generator().manual_seed(0)
    real_tokens = torch.randint(0, K, (M, N), generator=g)

    def decode(z):  # (B, N) -> (B,3,2,2) in [-1,1]; encode(decode(z)) == z
        return (z.float() / (K - 1) * 2 - 1).view(-1, 1, 2, 2).expand(-1, 3, -1, -1)

    def encode_indices(x):
        return ((x[:, 0].reshape(x.shape[0], -1) + 1) / 2 * (K - 1)).round().long()

    captions = [str(i) for i in range(M)]
    real_images = decode(real_tokens)
    real_images_b = decode(torch.randint(0, K, (M, N), generator=g))    # the LCS floor's second real set
    common = dict(decode=decode, eval_clip_fn=lambda x, c: x.mean((1, 2, 3)) * 100,
                  feature_fn=lambda x: x.flatten(1)[:, :4].double(), check=lambda x, c: torch.ones(len(c)),
                  encode_indices=encode_indices, K=K, batch_size=16, real_images_b=real_images_b)
    exact = te.evaluate_toy(lambda caps: real_tokens[[int(c) for c in caps]], captions, real_images, **common)
    assert abs(exact["fid"]) < 1e-6 and exact["lcs_kl_nats"] < 1e-9 and exact["check"] == 1.0 and exact["n"] == M
    assert exact["entropy_model_bits"] == pytest.approx(exact["entropy_real_bits"])
    collapsed = te.evaluate_toy(lambda caps: torch.zeros(len(caps), N, dtype=torch.long), captions, real_images,
                                **common)
    assert collapsed["lcs_kl_nats"] > 1.0 and collapsed["entropy_model_bits"] == 0.0 and collapsed["fid"] > 0.1
    assert collapsed["real_floor_nats"] == exact["real_floor_nats"] > 0


def test_evaluate_toy_decoders_numbers_by_brute_force():
    """Every number of a row against a direct computation on the same images: clip and reward are means over all M
    captions (batches of unequal size included), check is the checker's mean on images clamped to [-1, 1], fid / kid
    are eval_fid's on the features of the clamped images mapped to [0, 1] vs the real images' features, and the
    re-encode agreement is the fraction of tokens that survive decode -> encode. Two decoders of the same tokens: a
    faithful one and a lossy, over-bright one (its odd tokens decode as the even one below, and its pixels leave
    [-1, 1], so the clamp matters). detail=False drops the round trip and the floor but changes no other number."""
    import numpy as np
    from eval_fid import feature_stats, frechet_distance, kernel_inception_distance
    K, N, M, bs = 16, 4, 37, 16                               # 37 = 16 + 16 + 5: a short last batch
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, K, (M, N), generator=g)
    real_tokens = torch.randint(0, K, (M, N), generator=g)

    def faithful(z):  # (B, N) -> (B,3,2,2) in [-1,1]; encode(faithful(z)) == z
        return (z.float() / (K - 1) * 2 - 1).view(-1, 1, 2, 2).expand(-1, 3, -1, -1) * torch.tensor([1.0, 0.5, 0.25]
                                                                                                   ).view(1, 3, 1, 1)

    def lossy(z):     # odd tokens rendered as the even one below, channel 2 scaled past [-1, 1]
        return faithful(z // 2 * 2) * torch.tensor([1.0, 1.0, 6.0]).view(1, 3, 1, 1)

    def encode_indices(x):
        return ((x[:, 0].reshape(x.shape[0], -1) + 1) / 2 * (K - 1)).round().long().clamp(0, K - 1)

    captions = [str(i) for i in range(M)]
    real_images = faithful(real_tokens)
    weight = torch.arange(M, dtype=torch.float64) + 1         # captions matter: a per-caption weight
    clip_fn = lambda x, c: x.mean((1, 2, 3)) * weight[[int(i) for i in c]].float()            # noqa: E731
    reward_fn = lambda x, c: (x[:, 1].mean((1, 2)) - 0.5, None)                             # noqa: E731
    check = lambda x, c: ((x.amax((1, 2, 3)) <= 1) & (x[:, 0, 0, 0] > 0.1)).float()         # noqa: E731
    feature_fn = lambda x: torch.stack([x[:, 0].mean((1, 2)), x[:, 1, 0, 0], x[:, 2, 1, 1] ** 2], 1)  # noqa: E731
    common = dict(eval_clip_fn=clip_fn, feature_fn=feature_fn, check=check, K=K, batch_size=bs,
                  real_images_b=faithful(torch.randint(0, K, (M, N), generator=g)), reward_fn=reward_fn)
    rows = te.evaluate_toy_decoders(lambda caps: tokens[[int(c) for c in caps]], captions, real_images,
                                    decoders={"faithful": (faithful, encode_indices), "lossy": (lossy, encode_indices)},
                                    **common)
    real_feats = np.asarray(feature_fn((real_images + 1) / 2), np.float64)
    for name, decode in (("faithful", faithful), ("lossy", lossy)):
        x = decode(tokens).clamp(-1, 1)
        x01, row = (x + 1) / 2, rows[name]
        feats = np.asarray(feature_fn(x01), np.float64)
        # means accumulated in float64 (a float32 sum over 1,024 captions would move the printed digits' neighbours)
        assert row["clip"] == pytest.approx(float(clip_fn(x01, captions).double().mean()), rel=1e-12)
        assert row["reward"] == pytest.approx(float(reward_fn(x01, captions)[0].double().mean()), rel=1e-12)
        assert row["check"] == pytest.approx(float(check(x, captions).double().mean()), abs=1e-12)
        assert row["fid"] == pytest.approx(frechet_distance(*feature_stats(feats), *feature_stats(real_feats)),
                                           rel=1e-6)
        assert (row["kid"], row["kid_se"]) == pytest.approx(kernel_inception_distance(feats, real_feats), rel=1e-6)
        assert row["n"] == M
    assert rows["faithful"]["real_reencode_agree"] == 1.0
    assert rows["faithful"]["reencode_agree"] == 1.0 and rows["faithful"]["reencode_cycle_l1"] == 0.0
    assert rows["lossy"]["reencode_agree"] == pytest.approx(float((tokens % 2 == 0).double().mean()))
    assert rows["lossy"]["real_reencode_agree"] == pytest.approx(float((real_tokens % 2 == 0).double().mean()))
    assert 0 < rows["lossy"]["check"] < rows["faithful"]["check"] < 1      # the clamp kept some lossy images valid
    assert rows["faithful"]["lcs_kl_nats"] == rows["lossy"]["lcs_kl_nats"] > 0    # same tokens, same LCS
    brief = te.evaluate_toy_decoders(lambda caps: tokens[[int(c) for c in caps]], captions, real_images,
                                     decoders={"lossy": (lossy, encode_indices)}, detail=False, **common)["lossy"]
    assert set(rows["lossy"]) - set(brief) == {"reencode_agree", "reencode_cycle_l1", "real_reencode_agree",
                                               "real_reencode_cycle_l1", "real_floor_nats"}
    assert brief == {k: v for k, v in rows["lossy"].items() if k in brief}
    with pytest.raises(ValueError, match="captions but"):
        te.evaluate_toy_decoders(lambda caps: tokens[:len(caps)], captions[:-1], real_images,
                                 decoders={"x": (faithful, encode_indices)}, **common)


# ------------------------------------------------------------------------------------------- a checkpoint row
@pytest.fixture(scope="module")
def fake_run(toy_cache, tmp_path_factory):
    """A train.py-shaped checkpoint of the tiny toy world: base GPT, a perturbed online VQ decoder, base as EMA."""
    from toy import world as toy_world
    b = toy_world.load_toy(toy_world.ToyConfig.tiny(), cache_dir=toy_cache, progress=False)
    vq = {k: v.clone() for k, v in b.vq.state_dict().items()}
    w = vq["decoder.conv_out.weight"]
    vq["decoder.conv_out.weight"] = w + 0.05 * torch.randn(w.shape, generator=torch.Generator().manual_seed(0))
    d = tmp_path_factory.mktemp("run")
    path = str(d / "ckpt_0000003.pt")
    ckpt.atomic_save({"config": {"toy_cache": toy_cache, "toy_preset": "tiny", "cfg_scale": 4.0}, "gpt":
                      b.gpt.state_dict(), "vq": vq, "ema_vq": b.vq.state_dict(), "step": 3}, path)
    return path


@pytest.mark.slow
def test_checkpoint_row_and_decoders(fake_run, toy_cache):
    rows = {dec: te.evaluate_toy_checkpoint(fake_run, n=8, decoder=dec) for dec in te.DECODERS}
    online, ema, base = rows["online"], rows["ema"], rows["base"]
    assert online["step"] == 3 and all(math.isfinite(online[k]) for k in te.TOY_COLUMNS)
    assert 0.0 <= online["check_train"] <= 1.0 and online["fid"] >= 0.0
    # same policy, same seed: identical tokens (same LCS KL) whatever the decoder; other decoder, other pixels
    assert online["lcs_kl"] == base["lcs_kl"] == ema["lcs_kl"] and online["fid"] != base["fid"]
    assert ema == base                                        # this fake run's EMA decoder is the base decoder
    base_models = te.evaluate_toy_checkpoint(None, toy_cache=toy_cache, toy_preset="tiny", n=8)
    assert base_models["step"] == 0 and base_models["lcs_kl"] == base["lcs_kl"]   # the checkpoint holds the base GPT
    with pytest.raises(ValueError, match="decoder="):
        te.evaluate_toy_checkpoint(fake_run, n=8, decoder="frozen")
    # one sampling pass for several decoders (toy_reproduce's online + base-decoder rows) = separate passes, exactly
    assert te.evaluate_toy_checkpoint_decoders(fake_run, ("online", "base", "ema"), n=8) == rows
    with pytest.raises(ValueError, match="decoders="):
        te.evaluate_toy_checkpoint_decoders(fake_run, ("online", "frozen"), n=8)


@pytest.mark.slow
def test_checkpoint_rows_are_the_decoders_rows_of_its_models_captions_and_stream(fake_run, toy_cache, tmp_path):
    """evaluate_toy_checkpoint_decoders written out by hand: the checkpoint's GPT (here moved off the base GPT),
    sampled at its config's CFG, draws every split from ONE stream seeded `seed` (train, then held-out); the train
    captions and real images come from seed + 1 (then the LCS floor's real set from the same generator), the
    held-out captions from seed + 2; 'online' decodes with the checkpoint's vq, 'ema' with its ema_vq, 'base' with
    the bundle's decoder."""
    from perf import fast_sample
    from toy import world as toy_world
    n, seed = 8, 5
    ck = te.read_train_ckpt(fake_run)
    g = torch.Generator().manual_seed(1)
    ck["gpt"] = {k: v + 0.5 * v.std() * torch.randn(v.shape, generator=g) if v.is_floating_point() and v.numel() > 1
                 else v for k, v in ck["gpt"].items()}
    path = str(tmp_path / "ckpt_0000003.pt")
    ckpt.atomic_save(ck, path)
    b = toy_world.load_toy(toy_world.ToyConfig.tiny(), cache_dir=toy_cache, progress=False)
    b.gpt.load_state_dict(ck["gpt"])
    b.gpt.eval()
    vqs = {d: copy.deepcopy(b.vq).eval() for d in te.DECODERS}
    vqs["online"].load_state_dict(ck["vq"])
    vqs["ema"].load_state_dict(ck["ema_vq"])
    gen = torch.Generator().manual_seed(seed)

    def sample(caps):
        return fast_sample.sample_gpt(b.gpt, *b.text_encoder(list(caps)), cfg_scale=ck["config"]["cfg_scale"],
                                      generator=gen)
    g = torch.Generator().manual_seed(seed + 1)
    real, caps = b.world.sample(n, g, "train")
    real_b, _ = b.world.sample(n, g, "train")
    by_hand = te.evaluate_toy_decoders(sample, caps, real, decoders={d: (v.decode_indices, v.encode_indices)
                                                                     for d, v in vqs.items()},
                                       eval_clip_fn=b.eval_clip_fn, feature_fn=b.feature_fn, check=b.world.check,
                                       K=b.vq.cfg.codebook_size, real_images_b=real_b, reward_fn=b.reward_fn)
    _, caps_ho = b.world.sample(n, torch.Generator().manual_seed(seed + 2), "heldout")
    z_ho = sample(caps_ho)                                                       # after the train split's tokens
    rows = te.evaluate_toy_checkpoint_decoders(path, te.DECODERS, n=n, seed=seed)
    pairs = {"reward": "reward", "clip": "clip", "check_train": "check", "fid": "fid", "kid": "kid",
             "kid_se": "kid_se", "lcs_kl": "lcs_kl_nats", "lcs_floor": "real_floor_nats",
             "reencode_agree": "reencode_agree", "real_reencode_agree": "real_reencode_agree"}
    for d, vq in vqs.items():
        assert {k: rows[d][k] for k in pairs} == {k: by_hand[d][v] for k, v in pairs.items()}, d
        held_out = torch.as_tensor(b.world.check(vq.decode_indices(z_ho).clamp(-1, 1), list(caps_ho)))
        assert rows[d]["check_heldout"] == float(held_out.double().mean()) and rows[d]["step"] == 3
    assert rows["online"]["fid"] != rows["base"]["fid"]                         # the decoders do differ
    base_gpt = te.evaluate_toy_checkpoint(fake_run, n=n, seed=seed, decoder="base")
    assert base_gpt["lcs_kl"] != rows["base"]["lcs_kl"]                         # and so do the two policies


def test_checkpoint_that_is_not_a_toy_run_or_lacks_the_ema_decoder_is_named(tmp_path, capsys):
    """Refused before the toy world loads: a train.py checkpoint of another backbone (its config has no toy_preset /
    toy_cache), and --decoder ema on a checkpoint without ema_vq; and --n below 3."""
    other, no_ema = str(tmp_path / "ckpt_0000001.pt"), str(tmp_path / "ckpt_0000002.pt")
    ckpt.atomic_save({"config": {"backbone": "llamagen_xl"}, "gpt": {}, "vq": {}, "step": 1}, other)
    ckpt.atomic_save({"config": {"toy_cache": str(tmp_path / "none"), "toy_preset": "tiny"}, "gpt": {}, "vq": {},
                      "step": 2}, no_ema)
    with pytest.raises(ckpt.CkptError, match=r"^--ckpt .*not a toy-world run"):
        te.read_train_ckpt(other)
    with pytest.raises(ckpt.CkptError, match=r"holds no EMA decoder \(ema_vq\); use --decoder online or base"):
        te.evaluate_toy_checkpoint_decoders(no_ema, ("online", "ema"))
    assert not os.path.exists(tmp_path / "none")                                 # nothing was built
    with pytest.raises(SystemExit) as e:                                         # KID needs 3 captions per split
        te.main(["--ckpt", no_ema, "--n", "2"])
    assert e.value.code == 2 and "--n 2: need at least 3" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_json_several_decoders(fake_run, tmp_path, capsys):
    out = tmp_path / "rows.json"
    printed = te.main(["--ckpt", fake_run, "--n", "8", "--decoder", "online", "base", "--json", str(out)])
    assert json.loads(out.read_text()) == printed and set(printed) == {"online", "base"}
    line = lambda row: " | ".join(f"{k} {row[k]:.4f}" for k in te.TOY_COLUMNS)  # noqa: E731
    assert capsys.readouterr().out.splitlines() == [f"{d}: {line(printed[d])}" for d in ("online", "base")]
    assert printed["base"] == te.evaluate_toy_checkpoint(fake_run, n=8, decoder="base")
    assert not os.path.exists(str(out) + ".tmp")
    one = te.main(["--ckpt", fake_run, "--n", "8", "--decoder", "base"])       # one decoder: its row, no prefix
    assert one == printed["base"] and capsys.readouterr().out.splitlines() == [line(one)]


# ------------------------------------------------------------------------------------------- --ckpt errors
def _run(*args):
    return subprocess.run([sys.executable, "-m", "toy.eval", *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.slow
def test_missing_ckpt_is_a_clear_error_not_a_traceback(tmp_path):
    missing = str(tmp_path / "missing.pt")
    res = _run("--ckpt", missing)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m toy.eval: error: --ckpt") and missing in last and "no such file" in last
    assert "ckpt_" in last and "omit --ckpt" in last                              # says what to pass instead


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["folder", "empty", "corrupt", "foreign"])
def test_bad_ckpt_files_are_named(kind, tmp_path, fake_run):
    path = tmp_path / "c.pt"
    if kind == "folder":
        path = tmp_path
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "corrupt":                                          # a checkpoint cut short by a kill mid-write
        data = open(fake_run, "rb").read()
        path.write_bytes(data[: len(data) // 3])
    else:
        torch.save({"model": {}}, path)
    with pytest.raises(ckpt.CkptError) as err:
        te.read_train_ckpt(str(path))
    msg = str(err.value)
    assert msg.startswith("--ckpt ") and str(path) in msg and "\n" not in msg
    assert {"folder": "is a folder", "empty": "empty", "corrupt": "cannot be read", "foreign": "lacks"}[kind] in msg
    with pytest.raises(SystemExit) as e:                              # the command line: exit 2, no traceback
        te.main(["--ckpt", str(path)])
    assert e.value.code == 2
