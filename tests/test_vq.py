"""Tests for vq.py: VQ-16 layout (344 keys, exact parameter counts), quantiser properties, strict loading and its
error messages, PatchGAN and LPIPS. CPU only, well under a minute.

Run:  pytest -q tests/test_vq.py
"""
import argparse
import math
import os
import time

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import ckpt
import vq

HUB_VQ = "hf://peizesun/llamagen_t2i/vq_ds16_t2i.pt"


# ---- expected VQ-16 state dict, enumerated independently from docs/method.md §13.4 ---------------------------------
def _conv(p, o, i, k):
    return {f"{p}.weight": (o, i, k, k), f"{p}.bias": (o,)}


def _norm(p, c):
    return {f"{p}.weight": (c,), f"{p}.bias": (c,)}


def _R(p, i, o):  # ResnetBlock R(in, out)
    d = {**_norm(f"{p}.norm1", i), **_conv(f"{p}.conv1", o, i, 3)}
    d.update({**_norm(f"{p}.norm2", o), **_conv(f"{p}.conv2", o, o, 3)})
    return {**d, **_conv(f"{p}.nin_shortcut", o, i, 1)} if i != o else d


def _A(p, c):  # AttnBlock A(c)
    d = _norm(f"{p}.norm", c)
    for n in ("q", "k", "v", "proj_out"):
        d.update(_conv(f"{p}.{n}", c, c, 1))
    return d


def _expected_vq16():
    e = _conv("encoder.conv_in", 128, 3, 3)
    chans = [(128, 128), (128, 128), (128, 256), (256, 256), (256, 512)]
    for lvl, (i, o) in enumerate(chans):
        e.update(_R(f"encoder.conv_blocks.{lvl}.res.0", i, o))
        e.update(_R(f"encoder.conv_blocks.{lvl}.res.1", o, o))
        if lvl == 4:
            e.update({**_A("encoder.conv_blocks.4.attn.0", 512), **_A("encoder.conv_blocks.4.attn.1", 512)})
        else:
            e.update(_conv(f"encoder.conv_blocks.{lvl}.downsample.conv", o, o, 3))
    e.update({**_R("encoder.mid.0", 512, 512), **_A("encoder.mid.1", 512), **_R("encoder.mid.2", 512, 512)})
    e.update({**_norm("encoder.norm_out", 512), **_conv("encoder.conv_out", 256, 512, 3)})
    e.update(_conv("decoder.conv_in", 512, 256, 3))
    e.update({**_R("decoder.mid.0", 512, 512), **_A("decoder.mid.1", 512), **_R("decoder.mid.2", 512, 512)})
    chans = [(512, 512), (512, 256), (256, 256), (256, 128), (128, 128)]
    for lvl, (i, o) in enumerate(chans):
        for j in range(3):
            e.update(_R(f"decoder.conv_blocks.{lvl}.res.{j}", i if j == 0 else o, o))
        if lvl == 0:
            e.update({k: v for j in range(3) for k, v in _A(f"decoder.conv_blocks.0.attn.{j}", 512).items()})
        if lvl < 4:
            e.update(_conv(f"decoder.conv_blocks.{lvl}.upsample.conv", o, o, 3))
    e.update({**_norm("decoder.norm_out", 128), **_conv("decoder.conv_out", 3, 128, 3)})
    e.update({"quantize.embedding.weight": (16384, 8), "quantize.codebook_used": (65536,)})
    e.update({**_conv("quant_conv", 8, 256, 1), **_conv("post_quant_conv", 256, 8, 1)})
    return e


def _count(mod):
    return sum(p.numel() for p in mod.parameters())


def test_vq16_state_dict_matches_llamagen_layout():
    with torch.device("meta"):
        m = vq.VQModel(vq.VQ_CONFIGS["vq16"])
    sd = m.state_dict()
    assert len(sd) == 344
    assert {k: tuple(v.shape) for k, v in sd.items()} == _expected_vq16()
    # LlamaGen registers encoder, decoder, quantize, quant_conv, post_quant_conv in that order
    assert [n for n, _ in m.named_children()] == ["encoder", "decoder", "quantize", "quant_conv", "post_quant_conv"]
    assert tuple(sd["decoder.conv_blocks.1.res.0.nin_shortcut.weight"].shape) == (256, 512, 1, 1)
    assert tuple(sd["encoder.conv_blocks.4.attn.1.proj_out.weight"].shape) == (512, 512, 1, 1)
    assert _count(m) == 71_883_403 and sum(v.numel() for v in sd.values()) == 71_948_939
    parts = [_count(getattr(m, n)) for n in ("encoder", "decoder", "quantize", "quant_conv", "post_quant_conv")]
    assert parts == [29_298_176, 42_449_795, 131_072, 2_056, 2_304]
    assert "quantize.codebook_used" not in dict(m.named_parameters())  # a buffer, not a parameter
    assert m.last_layer is m.decoder.conv_out.weight
    dec = {id(p) for p in m.decoder_parameters()}
    assert dec == {id(p) for p in [*m.decoder.parameters(), *m.post_quant_conv.parameters()]}
    assert sum(p.numel() for p in m.decoder_parameters()) == 42_449_795 + 2_304


@pytest.fixture(scope="module")
def tiny():
    return vq.VQModel(vq.VQ_CONFIGS["tiny"], generator=torch.Generator().manual_seed(1)).eval()


def _images(b, s, seed=0, w=None):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, s, w or s, generator=g) * 2 - 1


@pytest.mark.parametrize("name,size,grid", [("tiny", 16, 8), ("toy", 32, 8)])
def test_round_trip_shapes_and_raster_order(name, size, grid):
    m = vq.VQModel(vq.VQ_CONFIGS[name]).eval()
    x = _images(2, size)
    z_q, loss, idx = m.encode(x)
    K, C = m.cfg.codebook_size, m.cfg.codebook_embed_dim
    assert z_q.shape == (2, C, grid, grid) and loss.ndim == 0
    assert idx.shape == (2, grid * grid) and idx.dtype == torch.int64 and 0 <= idx.min() and idx.max() < K
    assert torch.equal(m.encode_indices(x), idx)
    torch.testing.assert_close(m.codebook_lookup(idx), z_q, atol=1e-6, rtol=0)
    # raster order: token r*w + c is the cosine-nearest codebook row of the encoder vector at (r, c)
    with torch.no_grad():
        z = F.normalize(m.quant_conv(m.encoder(x)), dim=1)  # (B,C,h,w)
        e = F.normalize(m.quantize.embedding.weight, dim=1)
        for b, r, c in [(0, 0, 1), (1, 2, 0), (1, grid - 1, grid - 2)]:
            assert idx[b, r * grid + c] == (e @ z[b, :, r, c]).argmax()
        x_rec = m.decode_indices(idx)
    assert x_rec.shape == x.shape
    torch.testing.assert_close(x_rec, m.decode(z_q), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        m.decoder.conv_out.bias.fill_(3.0)
        assert m.decode_indices(idx).min() > 1.0  # the decoder output is not clamped (docs/method.md §13.14.12)


def test_non_square_grid(tiny):
    x = _images(1, 16, w=32)
    z_q, _, idx = tiny.encode(x)
    assert idx.shape == (1, 8 * 16)
    torch.testing.assert_close(tiny.codebook_lookup(idx, grid=(8, 16)), z_q, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="grid"):
        tiny.codebook_lookup(idx)  # 128 tokens are not a square
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        tiny.codebook_lookup(torch.full((1, 64), 64))
    with pytest.raises(ValueError, match="divisible"):
        tiny.encode(_images(1, 15))


def test_encode_checks_each_side_against_the_downsample_factor(tiny):
    """encode accepts H, W that are multiples of 2**(len(ch_mult) - 1) and refuses others, each side on its own:
    tiny (2 levels) has factor 2; a 4-level config has factor 8 (a side of 8 gives one token, a side of 12 is
    refused). codebook_lookup refuses ids below 0 or >= K anywhere in the batch."""
    with pytest.raises(ValueError, match="divisible by 2"):
        tiny.encode(_images(1, 16, w=15))                         # only the width is odd
    with pytest.raises(ValueError, match="divisible by 2"):
        tiny.encode(_images(1, 15, w=16))
    deep = vq.VQModel(vq.VQConfig(codebook_size=16, ch=8, ch_mult=(1, 1, 1, 1), num_res_blocks=1, z_channels=8,
                                  norm_groups=4)).eval()
    assert deep.encode_indices(_images(1, 8)).shape == (1, 1)
    assert deep.encode_indices(_images(1, 8, w=16)).shape == (1, 2)
    with pytest.raises(ValueError, match="divisible by 8"):
        deep.encode(_images(1, 12, w=8))
    ok = torch.zeros(1, 64, dtype=torch.long)
    for bad in (-1, 64):
        idx = ok.clone()
        idx[0, 5] = bad                                          # one bad id among valid ones
        with pytest.raises(ValueError, match=r"\[0, 64\)"):
            tiny.codebook_lookup(idx)


def test_encode_indices_ignores_autocast(tiny):
    # docs/method.md §5.1: GT tokens come from the fp32 encoder; under bf16 autocast the plain encode moves ~2 % of
    # the nearest codes on this model
    x = _images(4, 64)
    want = tiny.encode_indices(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not torch.equal(tiny.encode(x)[2], want)                # what the guard prevents
        assert torch.equal(tiny.encode_indices(x), want)


def test_straight_through_gradient_reaches_encoder_not_codebook():
    m = vq.VQModel(vq.VQ_CONFIGS["tiny"])
    x_rec, loss = m(_images(2, 16))
    x_rec.square().mean().backward(retain_graph=True)
    assert m.encoder.conv_in.weight.grad.abs().sum() > 0 and m.quant_conv.weight.grad.abs().sum() > 0
    assert m.quantize.embedding.weight.grad is None  # reconstruction reaches the codebook only via the VQ loss
    loss.backward()
    assert m.quantize.embedding.weight.grad.abs().sum() > 0


def test_codebook_used_updates_only_in_train_mode():
    m = vq.VQModel(vq.VQ_CONFIGS["tiny"]).eval()
    x = _images(2, 16)
    m.encode(x)
    assert torch.count_nonzero(m.quantize.codebook_used) == 0
    m.train()
    idx = m.encode(x)[2]
    used = m.quantize.codebook_used
    assert used.shape == (65536,) and torch.equal(used[-idx.numel():], idx.flatten().float())
    assert torch.count_nonzero(used[:-idx.numel()]) == 0


def test_init_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = vq.VQModel(vq.VQ_CONFIGS["tiny"], generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state)
    b = vq.VQModel(vq.VQ_CONFIGS["tiny"], generator=torch.Generator().manual_seed(3))
    c = vq.VQModel(vq.VQ_CONFIGS["tiny"], generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.decoder.conv_out.weight, c.decoder.conv_out.weight)
    torch.testing.assert_close(a.quantize.embedding.weight.norm(dim=1), torch.ones(64))  # unit rows at init


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(2, 32), st.integers(0, 2**31 - 1))
def test_quantiser_picks_argmax_cosine(b, h, w, K, seed):
    g = torch.Generator().manual_seed(seed)
    q = vq.VectorQuantizer(vq.VQConfig(codebook_size=K, codebook_embed_dim=8)).eval()
    with torch.no_grad():
        q.embedding.weight.copy_(torch.randn(K, 8, generator=g) * 3)  # rows deliberately not unit-norm
    z = torch.randn(b, 8, h, w, generator=g)
    z_q, loss, idx = q(z)
    zn = F.normalize(z.permute(0, 2, 3, 1).reshape(b, h * w, 8), dim=-1)
    en = F.normalize(q.embedding.weight.detach(), dim=-1)
    cos = zn @ en.T  # (B,N,K)
    assert torch.all(cos.gather(-1, idx[..., None]).squeeze(-1) >= cos.max(-1).values - 1e-6)
    torch.testing.assert_close(z_q.permute(0, 2, 3, 1).reshape(b, h * w, 8), en[idx], atol=1e-6, rtol=0)
    expect = (1 + q.beta) * (en[idx] - zn).square().mean()  # vq term + beta * commitment term (same value)
    torch.testing.assert_close(loss, expect, atol=1e-6, rtol=1e-5)


def test_quantiser_loss_gradients_split_codebook_and_commitment():
    """vq loss = mean (e[idx] - sg(z))^2 + beta mean (sg(e[idx]) - z)^2 on unit vectors: the codebook gets the first
    term's gradient only, the encoder output the commitment term's (times beta) plus the straight-through gradient of
    z_q, which passes to z as if z_q were z. Held against the same terms written out with autograd."""
    g = torch.Generator().manual_seed(0)
    q = vq.VectorQuantizer(vq.VQConfig(codebook_size=8, codebook_embed_dim=4)).eval()
    with torch.no_grad():
        q.embedding.weight.copy_(torch.randn(8, 4, generator=g) * 2)
    z = torch.randn(2, 4, 3, 3, generator=g, requires_grad=True)
    up = torch.randn(2, 4, 3, 3, generator=g)                    # an upstream gradient for z_q
    z_q, loss, idx = q(z)
    (loss + (z_q * up).sum()).backward()
    z2 = z.detach().clone().requires_grad_(True)
    w2 = q.embedding.weight.detach().clone().requires_grad_(True)
    zn = F.normalize(z2.permute(0, 2, 3, 1).reshape(2, 9, 4), dim=-1)
    e = F.normalize(w2, dim=-1)[idx]
    ref = (e - zn.detach()).square().mean() + q.beta * (e.detach() - zn).square().mean()
    (ref + (zn.reshape(2, 3, 3, 4).permute(0, 3, 1, 2) * up).sum()).backward()
    torch.testing.assert_close(loss, ref.detach(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(q.embedding.weight.grad, w2.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(z.grad, z2.grad, atol=1e-6, rtol=1e-5)
    assert q.beta == 0.25 and w2.grad.abs().sum() > 0


# ---- checkpoints ------------------------------------------------------------------------------------------------
def _save_wrapped(model, path, prefix="module."):
    sd = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save({"model": sd, "args": argparse.Namespace(vq_model="VQ-16", codebook_size=64), "steps": 7}, path)


def test_load_vq_llamagen_wrapped_checkpoint(tmp_path, tiny):
    for prefix in ("module.", "_orig_mod.", "module._orig_mod."):
        path = str(tmp_path / "vq.pt")
        _save_wrapped(tiny, path, prefix)
        loaded = vq.load_vq(path, vq.VQ_CONFIGS["tiny"])
        assert not loaded.training
        idx = torch.randint(0, 64, (2, 64), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert torch.equal(loaded.decode_indices(idx), tiny.decode_indices(idx))


def test_read_state_dict_drops_runtime_entries(tmp_path):
    sd = {"module.a.weight": torch.ones(2), "layers.0.attention.kv_cache.k_cache": torch.zeros(1),
          "freqs_cis": torch.zeros(3), "causal_mask": torch.zeros(2, 2)}
    torch.save({"state_dict": sd}, tmp_path / "c.pt")
    assert list(ckpt.read_state_dict(str(tmp_path / "c.pt"))) == ["a.weight"]
    torch.save({"optimizer": {"lr": 1.0}}, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError, match="no state dict found"):
        ckpt.read_state_dict(str(tmp_path / "bad.pt"))


def test_corrupt_checkpoint_is_reported(tmp_path, tiny):
    path = tmp_path / "vq.pt"
    _save_wrapped(tiny, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match="corrupt") as err:
        ckpt.read_state_dict(str(path))
    assert str(path) in str(err.value)


def test_wrong_key_and_wrong_shape_are_named(tmp_path, tiny):
    sd = dict(tiny.state_dict())
    sd["decoder.conv_out.wieght"] = sd.pop("decoder.conv_out.weight")
    m = vq.VQModel(vq.VQ_CONFIGS["tiny"])
    with pytest.raises(RuntimeError) as err:
        ckpt.load_strict(m, sd, source="x.pt")
    msg = str(err.value)
    assert "missing keys: decoder.conv_out.weight" in msg and "unexpected keys: decoder.conv_out.wieght" in msg
    _save_wrapped(tiny, str(tmp_path / "vq.pt"))
    cfg = vq.VQConfig(**{**vq.VQ_CONFIGS["tiny"].__dict__, "codebook_size": 32})
    with pytest.raises(RuntimeError, match=r"quantize.embedding.weight: checkpoint \(64, 8\) vs model \(32, 8\)"):
        vq.load_vq(str(tmp_path / "vq.pt"), cfg)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        vq.load_vq(str(tmp_path / "nope.pt"), vq.VQ_CONFIGS["tiny"])


def test_hub_path_offline_fails_fast_with_instructions():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by tests/conftest.py before huggingface_hub is imported
    t0 = time.time()
    with pytest.raises(FileNotFoundError) as err:
        ckpt.read_state_dict(HUB_VQ)
    assert time.time() - t0 < 10
    msg = str(err.value)
    assert "https://huggingface.co/peizesun/llamagen_t2i/resolve/main/vq_ds16_t2i.pt" in msg
    assert "--vq_ckpt /path/vq_ds16_t2i.pt" in msg
    with pytest.raises(ValueError, match="owner/repo/filename"):
        ckpt.read_state_dict("hf://peizesun/vq.pt")


# ---- PatchGAN and LPIPS -----------------------------------------------------------------------------------------
def test_patchgan_layout_count_and_init():
    with torch.device("meta"):
        d = vq.PatchGAN()
        assert d(torch.empty(2, 3, 256, 256)).shape == (2, 1, 30, 30)
    assert _count(d) == 2_765_633
    assert {k.split(".")[1] for k in d.state_dict()} == {"0", "2", "3", "5", "6", "8", "9", "11"}
    assert len(d.state_dict()) == 22
    a, b = (vq.PatchGAN(generator=torch.Generator().manual_seed(5)) for _ in range(2))
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    w = torch.cat([a.main[i].weight.flatten() for i in (0, 2, 5, 8, 11)])
    assert abs(w.std().item() - 0.02) < 1e-3 and abs(w.mean().item()) < 1e-3  # N(0, 0.02)
    assert torch.all(a.main[3].bias == 0) and abs(a.main[3].weight.mean().item() - 1) < 0.01
    assert a(_images(2, 64)).shape == (2, 1, 6, 6)


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    from torchvision.models import vgg as tv_vgg  # the real torchvision layout the VGG16 file comes in
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        features = tv_vgg.make_layers(tv_vgg.cfgs["D"])
    d = tmp_path_factory.mktemp("lpips")
    sd = {f"features.{k}": v for k, v in features.state_dict().items()}
    sd["classifier.6.bias"] = torch.zeros(1000)  # torchvision files also hold the classifier: must be ignored
    torch.save(sd, d / "vgg16.pth")
    g = torch.Generator().manual_seed(0)
    chans = (64, 128, 256, 512, 512)
    lin = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for k, c in enumerate(chans)}
    torch.save(lin, d / "vgg.pth")
    return str(d / "vgg16.pth"), str(d / "vgg.pth"), features, lin


@pytest.mark.slow
def test_lpips_properties(lpips_files):
    vgg_path, lin_path, features, lin = lpips_files
    lp = vq.LPIPS(vgg_path=vgg_path, lin_path=lin_path)
    assert not any(p.requires_grad for p in lp.parameters())
    lp.train()
    assert not lp.training and not lp.lin0.training  # stays in eval mode: head dropout off
    x, y = _images(3, 32, seed=1), _images(3, 32, seed=2)
    d = lp(x, y)
    assert d.shape == (3,) and torch.all(d > 0)
    assert torch.equal(lp(x, x), torch.zeros(3))
    torch.testing.assert_close(lp(x, y), d)  # deterministic (no dropout)
    # reference: torchvision features sliced at relu1_2 ... relu5_3, unit-normalised, weighted, averaged, summed
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    hx, hy, ref = (x - shift) / scale, (y - shift) / scale, 0
    for k, (a, b) in enumerate([(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)]):
        hx, hy = features[a:b](hx), features[a:b](hy)
        nx, ny = (t / (t.norm(dim=1, keepdim=True) + 1e-10) for t in (hx, hy))
        ref = ref + ((nx - ny) ** 2 * lin[f"lin{k}.model.1.weight"]).sum(1).mean((1, 2))
    torch.testing.assert_close(d, ref.detach(), rtol=1e-4, atol=1e-6)
    xg = x.clone().requires_grad_(True)
    lp(xg, y).sum().backward()
    assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0


def test_lpips_hub_paths_name_their_own_flags(lpips_files):
    """An hf:// LPIPS file that cannot be fetched is reported with its own flag (the message is guessed from the file
    name otherwise, and said --gpt_ckpt)."""
    vgg_path, lin_path, _, _ = lpips_files
    with pytest.raises(FileNotFoundError, match=r"--lpips_vgg /path/vgg16\.pth"):
        vq.LPIPS(vgg_path="hf://someone/lpips/vgg16.pth", lin_path=lin_path)
    with pytest.raises(FileNotFoundError, match=r"--lpips_lin /path/vgg\.pth"):
        vq.LPIPS(vgg_path=vgg_path, lin_path="hf://someone/lpips/vgg.pth")


def test_lpips_missing_files_are_named(lpips_files, tmp_path):
    vgg_path, _, _, _ = lpips_files
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        vq.LPIPS(vgg_path=vgg_path, lin_path=str(tmp_path / "nope.pth"))
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", "vgg16-397923af.pth")
    if os.path.isfile(cached):
        pytest.skip("a VGG16 file is cached on this machine; the offline path is not exercised")
    with pytest.raises(FileNotFoundError) as err:
        vq.LPIPS()
    msg = str(err.value)
    assert "vgg_path" in msg and "lin_path" in msg and "download.pytorch.org" in msg
