"""LlamaGen VQ-16 image tokenizer and the VQGAN training parts (PatchGAN, LPIPS), with strict LlamaGen loading.

Concept (docs/method.md §13.2-13.5, §13.13): a convolutional VQ-VAE. The encoder maps an image x in [-1,1] to a grid of
8-d vectors z (downsample 16: 256 px -> 16x16 tokens); each vector and each codebook row is L2-normalised and
replaced by its cosine-nearest codebook row (straight-through gradient); the decoder maps the grid back to pixels.
RankE (docs/method.md §5) fine-tunes only the decoder (+ post_quant_conv) with L1 + LPIPS + adaptive PatchGAN terms.

Run the self-check (CPU, seconds): python vq.py        Tests: pytest -q tests/test_vq.py
Copy together with ckpt.py (read_state_dict / load_strict / cached_download: reading upstream weight files).

Symbols: B batch, C codebook_embed_dim (8), K codebook size (16384), H,W image size, h,w token grid (H/16),
N = h*w image tokens (raster order: index = row*w + col), Z z_channels (256).

Follows: FoundationVision/LlamaGen tokenizer/tokenizer_image/vq_model.py, discriminator_patchgan.py, lpips.py
(themselves after taming-transformers). Written from the spec, not copied.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ckpt import cached_download, load_strict, read_state_dict  # checkpoint plumbing (a leaf file, see ckpt.py)

# ---- VQ-16 (docs/method.md §13.2-13.5). Module names = LlamaGen's state-dict keys (§13.4), registered in key order
@dataclass
class VQConfig:
    codebook_size: int = 16384       # K
    codebook_embed_dim: int = 8      # C
    ch: int = 128                    # base width
    ch_mult: tuple = (1, 1, 2, 2, 4)  # widths per level; len-1 stride-2 stages -> downsample 2**(len-1)
    num_res_blocks: int = 2          # encoder; the decoder has num_res_blocks + 1 per level
    z_channels: int = 256            # Z
    norm_groups: int = 32            # GroupNorm groups (eps 1e-6)
    dropout: float = 0.0
    commit_beta: float = 0.25
    attn_last_level: bool = True     # attention blocks at the lowest-resolution level (plus in `mid`)


VQ_CONFIGS = {
    "vq16": VQConfig(),  # LlamaGen VQ-16: 71,883,403 params, 256 px -> 16x16 tokens
    "tiny": VQConfig(codebook_size=64, ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=32, norm_groups=8),
    # toy world: 32 px -> 8x8 tokens, trains on 2 CPU cores in minutes
    "toy": VQConfig(codebook_size=256, ch=64, ch_mult=(1, 1, 2), num_res_blocks=1, z_channels=64),
}
CODEBOOK_USED_LEN = 65536  # LlamaGen's usage buffer length, fixed regardless of K (§13.14.11)


def _gn(cfg: VQConfig, c: int) -> nn.GroupNorm:
    return nn.GroupNorm(cfg.norm_groups, c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):  # vq_model.py:279-314
    def __init__(self, cfg: VQConfig, c_in: int, c_out: int):
        super().__init__()
        self.norm1, self.conv1 = _gn(cfg, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.dropout = _gn(cfg, c_out), nn.Dropout(cfg.dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        if c_in != c_out:
            self.nin_shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))  # swish = x * sigmoid(x) = silu
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):  # vq_model.py:317-351: single head over the h*w positions
    def __init__(self, cfg: VQConfig, c: int):
        super().__init__()
        self.norm = _gn(cfg, c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (m(y).flatten(2).transpose(1, 2).unsqueeze(1) for m in (self.q, self.k, self.v))  # (B,1,hw,c)
        o = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v, same math as LG's bmm version
        return x + self.proj_out(o.squeeze(1).transpose(1, 2).reshape(b, c, h, w))


class Resample(nn.Module):  # `downsample.conv` / `upsample.conv`
    def __init__(self, c: int, up: bool):
        super().__init__()
        self.up, self.conv = up, nn.Conv2d(c, c, 3, stride=1 if up else 2, padding=1 if up else 0)

    def forward(self, x):
        if self.up:  # nearest x2, then 3x3 conv
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric zero pad (right 1, bottom 1), then 3x3 stride 2


class Level(nn.Module):  # conv_blocks.{i}: res.{j}, attn.{j} (after res j, lowest level only), down/upsample
    def __init__(self, cfg: VQConfig, c_in: int, c_out: int, n_res: int, attn: bool, resample: str | None):
        super().__init__()
        self.res = nn.ModuleList(ResnetBlock(cfg, c_in if j == 0 else c_out, c_out) for j in range(n_res))
        self.attn = nn.ModuleList(AttnBlock(cfg, c_out) for _ in range(n_res if attn else 0))
        self.resample = resample
        if resample is not None:
            self.add_module(resample, Resample(c_out, up=resample == "upsample"))

    def forward(self, h):
        for j, block in enumerate(self.res):
            h = block(h)
            h = self.attn[j](h) if len(self.attn) else h
        return getattr(self, self.resample)(h) if self.resample else h


def _mid(cfg: VQConfig, c: int) -> nn.ModuleList:  # mid.0 res, mid.1 attn, mid.2 res
    return nn.ModuleList([ResnetBlock(cfg, c, c), AttnBlock(cfg, c), ResnetBlock(cfg, c, c)])


class Encoder(nn.Module):  # vq_model.py:64-124
    def __init__(self, cfg: VQConfig):
        super().__init__()
        L, c = len(cfg.ch_mult), [cfg.ch] + [cfg.ch * m for m in cfg.ch_mult]  # level i: c[i] -> c[i+1]
        self.conv_in = nn.Conv2d(3, cfg.ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList(
            Level(cfg, c[i], c[i + 1], cfg.num_res_blocks, cfg.attn_last_level and i == L - 1,
                  None if i == L - 1 else "downsample") for i in range(L))
        self.mid = _mid(cfg, c[-1])
        self.norm_out, self.conv_out = _gn(cfg, c[-1]), nn.Conv2d(c[-1], cfg.z_channels, 3, padding=1)

    def forward(self, x):  # (B,3,H,W) -> (B,Z,h,w)
        h = self.conv_in(x)
        for m in [*self.conv_blocks, *self.mid]:
            h = m(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):  # vq_model.py:128-194; conv_blocks.0 is the LOWEST resolution, num_res_blocks+1 each
    def __init__(self, cfg: VQConfig):
        super().__init__()
        L, c = len(cfg.ch_mult), [cfg.ch * m for m in (cfg.ch_mult[-1], *reversed(cfg.ch_mult))]
        self.conv_in = nn.Conv2d(cfg.z_channels, c[0], 3, padding=1)
        self.mid = _mid(cfg, c[0])
        self.conv_blocks = nn.ModuleList(
            Level(cfg, c[i], c[i + 1], cfg.num_res_blocks + 1, cfg.attn_last_level and i == 0,
                  None if i == L - 1 else "upsample") for i in range(L))
        self.norm_out, self.conv_out = _gn(cfg, c[-1]), nn.Conv2d(c[-1], 3, 3, padding=1)

    def forward(self, z):  # (B,Z,h,w) -> (B,3,H,W), not clamped (§13.14.12)
        h = self.conv_in(z)
        for m in [*self.mid, *self.conv_blocks]:
            h = m(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):  # vq_model.py:200-276, l2_norm=True, show_usage=True, entropy ratio 0
    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.beta = cfg.commit_beta
        self.embedding = nn.Embedding(cfg.codebook_size, cfg.codebook_embed_dim)
        self.register_buffer("codebook_used", torch.zeros(CODEBOOK_USED_LEN))  # persistent: in the state dict

    def codebook(self):  # (K,C) unit rows; stored rows are not guaranteed unit-norm (§13.14.11)
        return F.normalize(self.embedding.weight, p=2, dim=-1)

    def forward(self, z):  # z (B,C,h,w) -> z_q (B,C,h,w) straight-through, loss scalar, idx (B,N)
        b, c, h, w = z.shape
        z = F.normalize(z.permute(0, 2, 3, 1).reshape(b, h * w, c), p=2, dim=-1)  # (B,N,C), raster order
        e = self.codebook()
        idx = torch.einsum("bnc,kc->bnk", z.detach(), e.detach()).argmax(-1)  # cosine NN = argmin L2 on the sphere
        z_q = e[idx]  # (B,N,C)
        if self.training:  # usage ring buffer: shift left, append the newest indices (LG; train mode only)
            # DEVIATION: LG's in-place shift fails once a batch holds > 65536 tokens; we keep the newest 65536.
            with torch.no_grad():
                new = idx.flatten()[-CODEBOOK_USED_LEN:].to(self.codebook_used.dtype)
                self.codebook_used.copy_(torch.cat([self.codebook_used[new.numel():], new]))
        # vq_loss = codebook term + beta * commitment term (vq_model.py:247-251)
        # DEVIATION: computed in eval mode too (LG returns None there); callers that do not train ignore it.
        loss = torch.mean((z_q - z.detach()) ** 2) + self.beta * torch.mean((z_q.detach() - z) ** 2)
        z_q = z + (z_q - z).detach()  # straight-through: forward = z_q, gradient flows to z
        return z_q.reshape(b, h, w, c).permute(0, 3, 1, 2), loss, idx


def _draw_(p: torch.Tensor, g: torch.Generator, *, bound: float | None = None, mean=0.0, std=1.0) -> None:
    """p ~ U(-bound, bound) (bound given) else N(mean, std^2), drawn on CPU from g; meta tensors are skipped."""
    if not p.is_meta:
        t = torch.empty(p.shape, device="cpu")
        p.copy_(t.uniform_(-bound, bound, generator=g) if bound is not None else t.normal_(mean, std, generator=g))


def _init_(module: nn.Module, g: torch.Generator) -> None:
    """Re-draw PyTorch's default conv init U(-1/sqrt(fan_in), 1/sqrt(fan_in)) from an explicit generator."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            for p in (m.weight, m.bias):
                if p is not None:
                    _draw_(p, g, bound=1.0 / math.sqrt(m.weight[0].numel()))


class VQModel(nn.Module):
    def __init__(self, cfg: VQConfig, *, generator: torch.Generator | None = None):
        super().__init__()
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):  # module constructors draw from the global RNG: keep it untouched
            self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)  # LG's registration (= state-dict) order
            self.quantize = VectorQuantizer(cfg)
            self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_embed_dim, 1)  # (B,Z,h,w) -> (B,C,h,w)
            self.post_quant_conv = nn.Conv2d(cfg.codebook_embed_dim, cfg.z_channels, 1)
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        with torch.no_grad():
            _init_(self, g)
            w = self.quantize.embedding.weight  # codebook: U(-1/K, 1/K) then unit rows (vq_model.py:209-210)
            _draw_(w, g, bound=1.0 / cfg.codebook_size)
            w.copy_(F.normalize(w, dim=-1))

    def encode(self, x):  # x (B,3,H,W) in [-1,1] -> z_q (B,C,h,w), loss scalar, idx (B,N) int64
        f = 2 ** (len(self.cfg.ch_mult) - 1)  # downsample factor (16 for VQ-16)
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"expected images (B,3,H,W) with H, W divisible by {f}, got {tuple(x.shape)}")
        return self.quantize(self.quant_conv(self.encoder(x)))

    @torch.no_grad()
    def encode_indices(self, x):  # (B,3,H,W) -> (B,N) int64, raster order; in the weights' dtype, autocast off
        with torch.autocast(x.device.type, enabled=False):   # bf16 would move ~7 % of the nearest codes
            return self.encode(x.to(self.quant_conv.weight.dtype))[2]

    def codebook_lookup(self, idx, grid: tuple[int, int] | None = None):  # idx (B,N) -> z_q (B,C,h,w)
        B, N = idx.shape
        h, w = grid if grid is not None else (math.isqrt(N), math.isqrt(N))
        if h * w != N:
            raise ValueError(f"{N} tokens do not fill grid {(h, w)}; pass grid=(h, w) with h*w == N")
        if idx.min() < 0 or idx.max() >= self.cfg.codebook_size:
            raise ValueError(f"token ids must lie in [0, {self.cfg.codebook_size}), got "
                             f"[{int(idx.min())}, {int(idx.max())}]")
        z_q = self.quantize.codebook()[idx]  # (B,N,C), normalised rows (§13.5 decode_code)
        return z_q.reshape(B, h, w, -1).permute(0, 3, 1, 2)

    def decode(self, z_q):  # (B,C,h,w) -> (B,3,H,W), unclamped
        return self.decoder(self.post_quant_conv(z_q))

    def decode_indices(self, idx, grid: tuple[int, int] | None = None):  # (B,N) -> (B,3,H,W)
        return self.decode(self.codebook_lookup(idx, grid))

    def forward(self, x):  # tokenizer training: (x_rec, codebook loss)
        z_q, loss, _ = self.encode(x)
        return self.decode(z_q), loss

    def decoder_parameters(self) -> list[nn.Parameter]:  # the part RankE trains (docs/method.md §5)
        return list(self.post_quant_conv.parameters()) + list(self.decoder.parameters())

    @property
    def last_layer(self) -> nn.Parameter:  # for the VQGAN adaptive weight
        return self.decoder.conv_out.weight


def load_vq(path_or_hub: str, cfg: VQConfig, *, map_location="cpu") -> VQModel:
    """Build VQModel(cfg) and load a LlamaGen-format checkpoint strictly (e.g. hf://peizesun/llamagen_t2i/...)."""
    model = VQModel(cfg)
    load_strict(model, read_state_dict(path_or_hub, map_location=map_location), source=path_or_hub)
    return model.eval()


# ---- VQGAN training parts (docs/method.md §13.13): PatchGAN discriminator and LPIPS-VGG perceptual distance ----
class PatchGAN(nn.Module):  # taming NLayerDiscriminator (discriminator_patchgan.py:8-67); 256^2 -> (B,1,30,30)
    def __init__(self, in_ch=3, ndf=64, n_layers=3, *, generator: torch.Generator | None = None):
        super().__init__()
        mult = [min(2 ** n, 8) for n in range(n_layers + 1)]  # width multipliers 1, 2, 4, 8
        with torch.random.fork_rng(devices=[]):
            layers = [nn.Conv2d(in_ch, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]  # main.0, main.1
            for n in range(1, n_layers + 1):  # stride 2 except the last: main.{2,5,8} conv, main.{3,6,9} BN
                layers += [nn.Conv2d(ndf * mult[n - 1], ndf * mult[n], 4, 2 if n < n_layers else 1, 1, bias=False),
                           nn.BatchNorm2d(ndf * mult[n]), nn.LeakyReLU(0.2)]
            layers.append(nn.Conv2d(ndf * mult[n_layers], 1, 4, 1, 1))  # main.11: one logit per patch
            self.main = nn.Sequential(*layers)
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        with torch.no_grad():  # weights_init: conv N(0,0.02), BN weight N(1,0.02), BN bias 0
            for m in self.main:
                if isinstance(m, nn.Conv2d):
                    _draw_(m.weight, g, std=0.02)
                    if m.bias is not None:  # taming leaves PyTorch's default bias init; same law, explicit RNG
                        _draw_(m.bias, g, bound=1.0 / math.sqrt(m.weight[0].numel()))
                elif isinstance(m, nn.BatchNorm2d):
                    _draw_(m.weight, g, mean=1.0, std=0.02)
                    m.bias.zero_()

    def forward(self, x):  # (B,3,H,W) in [-1,1] -> patch logits (B,1,h',w')
        return self.main(x)


VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"  # torchvision IMAGENET1K_V1
LPIPS_LIN_URL = "https://github.com/FoundationVision/LlamaGen/raw/main/tokenizer/tokenizer_image/cache/vgg.pth"
_VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_LPIPS_CUTS = (0, 4, 9, 16, 23, 30)  # features[0:4] relu1_2 ... [23:30] relu5_3
_LPIPS_CH = (64, 128, 256, 512, 512)


def _fetch(path: str | None, url: str, what: str) -> str:
    """Local file, or the torch-hub cache / a download of `url` (ckpt.cached_download); offline -> an error naming
    the file and the two LPIPS arguments."""
    return cached_download(path, url, f"LPIPS needs two weight files; missing: {what} from {url}. Download it and "
                                      f"pass its path, LPIPS(vgg_path=<torchvision vgg16-397923af.pth>, "
                                      f"lin_path=<LlamaGen cache/vgg.pth>).")


class LPIPS(nn.Module):
    """LPIPS-VGG (lpips.py:53-164). Frozen and always in eval mode (RankE/VA-pi; LlamaGen's VQ training runs its
    Dropout(0.5) in train mode, see §13.13). forward(x, y) in [-1,1] -> (B,) distances."""

    def __init__(self, vgg_path: str | None = None, lin_path: str | None = None):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        with torch.random.fork_rng(devices=[]):  # every weight is loaded below; keep the global RNG untouched
            feats, c = [], 3
            for v in _VGG16_CFG:  # torchvision vgg16().features layout, so its indices / keys carry over
                feats += [nn.MaxPool2d(2, 2)] if v == "M" else [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
                c = v if v != "M" else c
            self.features = nn.Sequential(*feats)  # 30 modules = features[0:30]
            for k, ch in enumerate(_LPIPS_CH):  # lin{k}.model = [Dropout(0.5), 1x1 conv ch->1 no bias]
                self.add_module(f"lin{k}", nn.Module())
                getattr(self, f"lin{k}").model = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(ch, 1, 1, bias=False))
        vgg_path = _fetch(vgg_path, VGG16_URL, "the torchvision VGG16 ImageNet state_dict")
        sd = {k: v for k, v in read_state_dict(vgg_path, flag="--lpips_vgg").items()
              if k.startswith("features.")}  # no classifier
        lin_path = _fetch(lin_path, LPIPS_LIN_URL, "LlamaGen's LPIPS head tokenizer/tokenizer_image/cache/vgg.pth")
        lins = [f"lin{k}" for k in range(5)]
        for names, sd, src in ((["features"], sd, vgg_path),
                               (lins, read_state_dict(lin_path, flag="--lpips_lin"), lin_path)):
            holder = nn.Module()  # a view holding just the submodules this file fills (shared, not copied)
            for n in names:
                holder.add_module(n, getattr(self, n))
            load_strict(holder, sd, source=src)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # always eval: Dropout(0.5) in the heads stays off
        return super().train(False)

    def forward(self, x, y):  # (B,3,H,W) x2 in [-1,1] -> (B,)
        h = torch.cat([x, y]).sub(self.shift).div(self.scale)  # one VGG pass for both
        total = 0.0
        for k in range(5):
            h = self.features[_LPIPS_CUTS[k]:_LPIPS_CUTS[k + 1]](h)
            f = h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)  # unit-norm channel vectors
            fx, fy = f.chunk(2)
            total = total + getattr(self, f"lin{k}").model((fx - fy) ** 2).mean((1, 2, 3))  # spatial mean
        return total


if __name__ == "__main__":
    with torch.device("meta"):  # shapes only: no memory, no init
        n16 = sum(p.numel() for p in VQModel(VQ_CONFIGS["vq16"]).parameters())
    print(f"VQ-16 parameters: {n16:,} (LlamaGen: 71,883,403)")
    g = torch.Generator().manual_seed(0)
    model = VQModel(VQ_CONFIGS["tiny"], generator=g)
    # a fixed batch of smooth random images (4x4 noise upsampled bilinearly to 16x16), in [-1,1]
    x = F.interpolate(torch.rand(8, 3, 4, 4, generator=g) * 2 - 1, size=16, mode="bilinear", align_corners=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    mse = []
    for step in range(101):
        x_rec, vq_loss = model(x)
        mse.append(F.mse_loss(x_rec, x))
        opt.zero_grad()
        (mse[-1] + vq_loss).backward()  # the tokenizer-training objective without LPIPS / GAN terms
        opt.step()
    print(f"tiny VQ reconstruction MSE: {mse[0]:.4f} -> {mse[-1]:.4f} after 100 Adam steps (should fall well "
          f"below {x.var():.4f}, the error of predicting the mean colour)")
    print(f"codebook rows in use: {model.encode_indices(x).unique().numel()} / {model.cfg.codebook_size}")
