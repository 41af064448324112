"""LlamaGen VQ-16 image tokenizer and the VQGAN training parts (PatchGAN, LPIPS), plus checkpoint plumbing.

Concept (backbones.md §1.2-1.5, §1.13): a convolutional VQ-VAE. The encoder maps an image x in [-1,1] to a grid of
8-d vectors z (downsample 16: 256 px -> 16x16 tokens); each vector and each codebook row is L2-normalised and
replaced by its cosine-nearest codebook row (straight-through gradient); the decoder maps the grid back to pixels.
RankE (ranke.md §5) fine-tunes only the decoder (+ post_quant_conv) with L1 + LPIPS + adaptive PatchGAN terms.

Run the self-check (CPU, seconds):  python vq.py
Tests:                              pytest -q tests/test_vq.py

Symbols: B batch, C codebook_embed_dim (8), K codebook size (16384), H,W image size, h,w token grid (H/16),
N = h*w image tokens (raster order: index = row*w + col), Z z_channels (256).

Follows: FoundationVision/LlamaGen tokenizer/tokenizer_image/vq_model.py, discriminator_patchgan.py, lpips.py
(themselves after taming-transformers). Written from the spec, not copied.
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------------------------
# Checkpoint plumbing (backbones.md §1.1 "Recommended loader", §1.14.5, §4). policy.py imports these two.
# ----------------------------------------------------------------------------------------------------------------
_DROP = ("kv_cache", "freqs_cis", "causal_mask")  # never part of a model's weights (backbones.md §1.14.3)


def _hub_download(path_or_hub: str) -> str:
    """'hf://owner/repo/filename' -> local path via huggingface_hub (cache); fails fast offline."""
    spec = path_or_hub[len("hf://"):]
    parts = spec.split("/")
    if len(parts) < 3 or not all(parts):
        raise ValueError(f"bad hub path {path_or_hub!r}: expected 'hf://owner/repo/filename'")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    url = f"https://huggingface.co/{repo_id}/resolve/main/{filename}"
    try:
        from huggingface_hub import hf_hub_download
        return hf_hub_download(repo_id, filename)
    except Exception as e:  # offline (LocalEntryNotFoundError), no route, 404, gated, ...: chained, not swallowed
        raise FileNotFoundError(
            f"could not fetch {path_or_hub} from the Hugging Face Hub ({type(e).__name__}: {e}). "
            f"Download {url} and pass its local path instead (e.g. --vq_ckpt /path/vq_ds16_t2i.pt or "
            f"--gpt_ckpt /path/{os.path.basename(filename)})."
        ) from e


def read_state_dict(path_or_hub: str, *, map_location="cpu") -> dict[str, torch.Tensor]:
    """Read a checkpoint (local path or 'hf://owner/repo/filename') -> flat {key: tensor} state dict.

    Unwraps LlamaGen's {"model": ..., "args": Namespace} wrappers, strips DDP / torch.compile prefixes and drops
    runtime buffers (KV caches, RoPE tables, masks) that are not weights.
    """
    path = _hub_download(path_or_hub) if path_or_hub.startswith("hf://") else path_or_hub
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path!r} (check the path, or download the file there)")
    torch.serialization.add_safe_globals([argparse.Namespace])  # LlamaGen files may carry "args" (§1.14.5)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        if "weights only load failed" in str(e).lower() and "unsupported global" in str(e).lower():
            raise RuntimeError(f"{path}: holds Python objects other than tensors/argparse.Namespace; re-save it "
                               f"as a plain state_dict (torch.save(model.state_dict(), ...)). ({e})") from e
        raise RuntimeError(f"{path}: cannot be read by torch.load: file is corrupt or truncated; re-download it "
                           f"({type(e).__name__}: {e})") from e
    sd = ckpt
    for wrapper in ("model", "module", "state_dict"):  # §1.1 step 1, in this order of preference
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
            break
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        top = list(ckpt)[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise RuntimeError(f"{path}: no state dict found (top level: {top}); expected a dict of tensors, "
                           f"optionally under 'model', 'module' or 'state_dict'")
    out = {}
    for k, v in sd.items():
        for prefix in ("module.", "_orig_mod."):  # §1.1 step 2 (DDP, torch.compile)
            while k.startswith(prefix):
                k = k[len(prefix):]
        k = k.replace("._orig_mod.", ".")
        if any(d in k.split(".") for d in _DROP):  # §1.1 step 3
            continue
        out[k] = v
    return out


def load_strict(model: nn.Module, state_dict: dict, *, source: str) -> None:
    """load_state_dict(strict=True) preceded by a readable key / shape comparison (backbones.md §4)."""
    want = model.state_dict()
    missing = [k for k in want if k not in state_dict]
    unexpected = [k for k in state_dict if k not in want]
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(want[k].shape)}"
              for k in want if k in state_dict and state_dict[k].shape != want[k].shape]
    if missing or unexpected or shapes:
        lines = [f"cannot load {source} into {type(model).__name__} strictly "
                 f"(wrong config for this checkpoint? wrong file?):"]
        for name, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                more = f" ... (+{len(items) - 10} more)" if len(items) > 10 else ""
                lines.append(f"  {len(items)} {name}: " + ", ".join(items[:10]) + more)
        raise RuntimeError("\n".join(lines))
    model.load_state_dict(state_dict, strict=True)
