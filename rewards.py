"""Differentiable CLIP-family rewards for RankE (arXiv 2605.21195; docs/method.md §7, decision D6).

Every reward has one signature (one calling convention for every reward):

    scores, info = reward_fn(images01, prompts)
    images01: (B, 3, H, W) float in [0, 1]  (the caller maps decoder output x in [-1, 1] by (x + 1) / 2 and clamps)
    prompts:  list of B strings, prompts[i] describes images01[i]
    scores:   (B,) float32 (float64 for a float64 model), differentiable w.r.t. images01
    info:     dict of plain floats (batch means)

- ClipReward:     100 x cosine(image, text) of any open_clip CLIP model (the generic machinery).
- make_reward:    "clip"  = OpenAI CLIP ViT-L/14 (training reward of the CLIP runs),
                  "hpsv2" = HPS v2.1 (open_clip ViT-H-14 + HPS_v2.1_compressed.pt; reward of the HPS runs).
                  Both are lazy: the checkpoint is resolved and the model built on the first call (or .load()).
- WeightedReward: sum_k w_k * R_k (docs/method.md §7: "Total reward = sum_k w_k raw_k, no normalisation").

Run the self-check (tiny random CLIP, downloads nothing):  python rewards.py
Tests:                                                     pytest tests/test_rewards.py
Depends on: torch, open_clip (huggingface_hub only for hf:// paths). Copy this file alone.
Symbols: B images (= B*G rollouts in train.py), S model input side (224), D joint embedding width,
L text context length (77 for OpenAI BPE).
"""
import os
import re
import unicodedata
import zipfile
from collections import OrderedDict

import torch
import torch.nn.functional as F

import open_clip

# docs/method.md §7: the released CLIP reward normalises with the OpenAI mean/std ROUNDED TO 4 DECIMALS.
RELEASED_CLIP_MEAN = (0.4814, 0.4578, 0.4082)
RELEASED_CLIP_STD = (0.2686, 0.2613, 0.2757)
OPENAI_MEAN = tuple(open_clip.OPENAI_DATASET_MEAN)  # full precision (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = tuple(open_clip.OPENAI_DATASET_STD)    # (0.26862954, 0.26130258, 0.27577711)

HPS_HUB_FILE = "hf://xswu/HPSv2/HPS_v2.1_compressed.pt"  # D14: v2.1 pinned, never a silent fall back to v2.0
RESIZE_MODES = ("bilinear", "bicubic", "bicubic_crop")


def resize_short_side_center_crop(x, size):
    """torchvision Resize(size, BICUBIC) + CenterCrop(size) on a float tensor, as HPS's preprocess_val runs them
    after ToTensor (hpsv2/src/open_clip/transform.py:141-157): no rounding, no clamp.

    x (B,3,H,W) float -> (B,3,size,size). The short side goes to `size`, the long side to int(size*long/short)
    (torchvision's rounding); antialias=True, torchvision's default for tensors (PIL's bicubic filter, which it
    follows, widens its support when shrinking).
    """
    h, w = x.shape[-2:]
    if h <= w:
        new_h, new_w = size, int(size * w / h)
    else:
        new_h, new_w = int(size * h / w), size
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))  # torchvision center_crop
    return x[..., top:top + size, left:left + size]  # (B,3,S,S)


class ClipReward:
    """Generic differentiable CLIP score: scale * cos(f_img(preprocess(images01)), f_txt(prompt)).

    model:    an open_clip CLIP (anything with encode_image / encode_text); frozen and put in eval mode here.
    tokenize: callable(list[str]) -> LongTensor (n, L).
    resize:   "bilinear"     -> normalise, THEN bilinear squash to (S, S), no crop, no antialias: the released CLIP
                                reward's order and filter (vqrl_models.py `_preprocess_clip_differentiable`).
              "bicubic"      -> bicubic squash to (S, S) (F.interpolate, no antialias), then normalise: the
                                COCO eval CLIP score (evaluations/t2i/evaluation.py, GigaGAN protocol).
              "bicubic_crop" -> antialiased bicubic resize of the short side to S, centre crop, then normalise:
                                OpenAI / HPS preprocess_val on tensors (D6).
    Normalising before or after a resize gives the same numbers up to float rounding (the filters' weights sum
    to 1); the order is kept as released so that the code reads like the reference.
    text_cache_size: text features are cached per prompt (no_grad) in an LRU of this many entries.
    """

    def __init__(self, model, tokenize, image_size, mean, std, scale=100.0, name="clip", resize="bilinear",
                 text_cache_size=100_000):
        if resize not in RESIZE_MODES:
            raise ValueError(f"ClipReward '{name}': resize={resize!r}; choose one of {RESIZE_MODES}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"ClipReward '{name}': mean/std need 3 channel values, got {mean}, {std}")
        self.model = model.eval().requires_grad_(False)  # frozen: gradients flow to the images only
        self.tokenize, self.image_size, self.scale = tokenize, int(image_size), float(scale)
        self.name, self.resize = name, resize
        self.mean = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
        self.text_cache_size = int(text_cache_size)
        self._text_cache = OrderedDict()  # prompt -> (D,) unit-norm text feature, on the model's device
        self.cache_hits = 0
        self.cache_misses = 0

    def _param(self):
        return next(self.model.parameters())

    def preprocess(self, images01):
        """(B,3,H,W) in [0,1] -> (B,3,S,S) normalised model input; differentiable."""
        p = self._param()
        x = images01.to(dtype=p.dtype)
        mean, std = self.mean.to(x), self.std.to(x)
        S = self.image_size
        if self.resize == "bilinear":  # docs/method.md §7: normalise BEFORE the bilinear resize to 224, no crop
            x = (x - mean) / std
            if x.shape[-2:] != (S, S):
                x = F.interpolate(x, size=(S, S), mode="bilinear", align_corners=False)
            return x
        if self.resize == "bicubic":  # docs/method.md §11: F.interpolate bicubic to 224, then CLIP mean/std
            if x.shape[-2:] != (S, S):
                x = F.interpolate(x, size=(S, S), mode="bicubic", align_corners=False)
        else:  # "bicubic_crop", docs/method.md D6
            x = resize_short_side_center_crop(x, S)
        return (x - mean) / std

    @torch.no_grad()
    def text_features(self, prompts):
        """list of B str -> (B, D) unit-norm text features; each distinct prompt is encoded once and cached."""
        device = self._param().device
        missing = list(dict.fromkeys(p for p in prompts if p not in self._text_cache))  # distinct, in order
        missing_set = set(missing)
        self.cache_hits += sum(1 for p in prompts if p not in missing_set)
        self.cache_misses += len(missing)
        if missing:
            tokens = self.tokenize(missing)
            if not torch.is_tensor(tokens) or tokens.dim() != 2 or tokens.shape[0] != len(missing):
                raise ValueError(f"reward '{self.name}': tokenize must return a (n, L) LongTensor for n prompts, "
                                 f"got {type(tokens).__name__} {getattr(tokens, 'shape', '')}")
            feats = self.model.encode_text(tokens.to(device))  # (n, D)
            feats = feats / feats.norm(dim=-1, keepdim=True)
            for prompt, f in zip(missing, feats):
                self._text_cache[prompt] = f
        out = []
        for p in prompts:
            self._text_cache.move_to_end(p)  # LRU: most recently used at the end
            out.append(self._text_cache[p])
        while len(self._text_cache) > self.text_cache_size:
            self._text_cache.popitem(last=False)
        return torch.stack(out)  # (B, D)

    # A prompt's text feature depends in its last bits on the batch it was encoded in (the GEMM kernels block by
    # batch size), and the cache decides which batch that is. So the cache is part of a run's state: train.py
    # saves it in every checkpoint and restores it on --resume, and a resumed run scores exactly as the
    # uninterrupted one (tests/test_train.py::test_resume_is_bit_identical).
    def cache_state(self):
        """-> {"prompts": list of n str in LRU order, "features": (n, D) CPU tensor}: the text-feature cache."""
        feats = torch.stack(list(self._text_cache.values())).cpu() if self._text_cache else torch.zeros(0)  # (n, D)
        return {"prompts": list(self._text_cache), "features": feats}

    def load_cache_state(self, state):
        """Replace the text-feature cache by a cache_state() (LRU order kept); the features are used as saved."""
        prompts, feats = state["prompts"], state["features"]
        if len(prompts) != feats.shape[0]:
            raise ValueError(f"reward '{self.name}': a cache state of {len(prompts)} prompts and {feats.shape[0]} "
                             "features; the checkpoint is damaged: resume from an earlier one")
        device = self._param().device
        self._text_cache = OrderedDict((p, f.to(device)) for p, f in zip(prompts, feats))

    def __call__(self, images01, prompts):
        if not torch.is_tensor(images01) or images01.dim() != 4 or images01.shape[1] != 3:
            raise ValueError(f"reward '{self.name}': images01 must be a (B,3,H,W) tensor, got "
                             f"{getattr(images01, 'shape', type(images01).__name__)}")
        if not images01.is_floating_point():
            raise ValueError(f"reward '{self.name}': images01 must be float in [0,1], got {images01.dtype} "
                             "(convert uint8 with x.float() / 255)")
        prompts = list(prompts)
        if len(prompts) != images01.shape[0] or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"reward '{self.name}': need one prompt string per image: {images01.shape[0]} images, "
                             f"{len(prompts)} prompts (repeat each prompt G times for G samples)")
        if self._param().device != images01.device:  # follow the images; cached text features move along
            self.model.to(images01.device)
            self._text_cache = OrderedDict((k, v.to(images01.device)) for k, v in self._text_cache.items())
        img = self.model.encode_image(self.preprocess(images01))  # (B, D)
        img = img / img.norm(dim=-1, keepdim=True)
        txt = self.text_features(prompts)  # (B, D), no grad
        scores = self.scale * (img * txt).sum(-1)  # docs/method.md §7: 100 x cosine
        if not torch.isfinite(scores).all():
            raise RuntimeError(f"reward '{self.name}' produced non-finite scores "
                               f"({int((~torch.isfinite(scores)).sum())} of {scores.numel()}): check the images "
                               "(NaN/inf decoder output) and the reward model's dtype")
        if scores.dtype in (torch.float16, torch.bfloat16):
            scores = scores.float()  # half-precision models: report float32 scores (float64 stays float64)
        return scores, {f"{self.name}_mean": float(scores.detach().mean())}


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint resolution (local file, hf://owner/repo/file, or an open_clip tag) with fast, informative failures.

def _hub_download(spec, what, kwarg, flag):
    """hf://owner/repo/filename -> local path via huggingface_hub; offline -> FileNotFoundError saying what to do."""
    parts = spec[len("hf://"):].split("/", 2)
    if len(parts) != 3 or not all(parts):
        raise FileNotFoundError(f"{what}: {spec!r} names no file; the form is hf://owner/repo/filename, e.g. "
                                f"{HPS_HUB_FILE} (train.py: {flag})")
    owner, repo, filename = parts
    try:
        from huggingface_hub import hf_hub_download
        return hf_hub_download(repo_id=f"{owner}/{repo}", filename=filename)
    except Exception as e:  # offline: LocalEntryNotFoundError at once with HF_HUB_OFFLINE=1
        raise FileNotFoundError(
            f"{what}: could not fetch {spec} ({type(e).__name__}: {e}). Download "
            f"https://huggingface.co/{owner}/{repo}/resolve/main/{filename} on a machine with network access and "
            f"pass its local path: make_reward(..., {kwarg}='/path/to/{filename}') (train.py: {flag} PATH)") from e


def _is_torchscript(path):
    """OpenAI's original ViT-L-14.pt is a TorchScript archive (code/ + constants.pkl inside the zip)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") for n in z.namelist())


def _transformers_layout(path):
    """True for a transformers CLIPModel file (keys vision_model.* / text_model.*, as openai/clip-vit-large-patch14's
    pytorch_model.bin), which open_clip cannot load. Reads the key names only (mmap); False for files that are not
    zip-format torch state dicts (TorchScript, legacy pickles, safetensors: open_clip checks those as it loads)."""
    if not zipfile.is_zipfile(path) or _is_torchscript(path):
        return False
    try:
        sd = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:   # not a plain state dict: not this layout; open_clip's strict load reports what it is
        return False
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else {}
    return any(isinstance(k, str) and k.startswith(("vision_model.", "text_model.")) for k in sd)


def load_open_clip(arch, ckpt_path, *, quick_gelu):
    """open_clip architecture `arch` with weights from a local file, strict key check."""
    model = open_clip.create_model(arch, pretrained=None, force_quick_gelu=quick_gelu)
    # weights_only=False only for TorchScript archives, which torch.load cannot open otherwise (torch.jit.load
    # runs inside); pickled state dicts are always loaded with weights_only=True.
    try:
        open_clip.load_checkpoint(model, ckpt_path, strict=True, weights_only=not _is_torchscript(ckpt_path))
    except RuntimeError as e:   # a strict load's key list runs to 10k+ characters: its head and what to pass instead
        raise RuntimeError(f"{ckpt_path} is not an open_clip {arch} checkpoint ({str(e)[:300]} ...): pass open_clip's "
                           f"open_clip_pytorch_model.bin for {arch} (or OpenAI's TorchScript .pt)") from None
    return model


def _resolve_clip_l14(path):
    """Local file for OpenAI CLIP ViT-L/14 (open_clip's 'openai' tag when path is None); ValueError for a local
    file in transformers' layout."""
    if path is not None:
        if path.startswith("hf://"):
            return _hub_download(path, "clip reward", "path", "--clip_path")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"clip reward: checkpoint {path!r} not found; pass a local ViT-L-14 file "
                                    "(open_clip_pytorch_model.bin or OpenAI's ViT-L-14.pt)")
        if _transformers_layout(path):   # the released reward's own format: found here, not after the policy loads
            raise ValueError(f"clip reward: {path!r} is a transformers CLIPModel file (keys vision_model.*), which "
                             "open_clip cannot load; pass the same weights in open_clip's layout: "
                             "hf://timm/vit_large_patch14_clip_224.openai/open_clip_pytorch_model.bin or OpenAI's "
                             "ViT-L-14.pt (train.py: --clip_path PATH)")
        return path
    cfg = open_clip.get_pretrained_cfg("ViT-L-14", "openai")
    try:
        return open_clip.download_pretrained(cfg)
    except Exception as e:
        raise FileNotFoundError(
            "clip reward: could not download OpenAI CLIP ViT-L/14 weights "
            f"({type(e).__name__}: {e}). Download https://huggingface.co/timm/vit_large_patch14_clip_224.openai/"
            f"resolve/main/open_clip_pytorch_model.bin (or OpenAI's ViT-L-14.pt: {cfg['url']}) and pass "
            "make_reward('clip', path='/path/to/that/file') (train.py: --clip_path PATH)") from e


def _hf_clip_clean(text: str) -> str:
    """The text normalisation of HF's fast CLIP tokenizer (transformers models/clip/tokenization_clip.py: normalizers
    NFC, runs of whitespace -> " ", Lowercase), which the released reward's CLIPProcessor applies. open_clip's default
    also runs ftfy.fix_text and html.unescape, so curly quotes, HTML entities and fullwidth letters got other ids."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).lower()


def released_clip_tokenizer():
    """list[str] -> (n, 77) ids as the released CLIP reward's CLIPProcessor(truncation=True) gives them: open_clip's
    ViT-L-14 BPE (the same vocabulary and merges as openai/clip-vit-large-patch14) with HF's text normalisation;
    truncated to 77 with EOT kept (both libraries). tests/test_rewards.py holds it to transformers' tokenizer."""
    tok = open_clip.get_tokenizer("ViT-L-14")
    if not hasattr(tok, "clean_fn"):     # open_clip < 2.24 cleans inside encode(): no way to swap it
        raise RuntimeError("open_clip_torch >= 2.24 is needed (its tokenizer's clean_fn); pip install -r "
                           "requirements.txt")
    tok.clean_fn = _hf_clip_clean
    return tok


def _load_clip(ckpt):
    # DEVIATION(RankE@2798acc): the released reward uses HF transformers CLIPModel openai/clip-vit-large-patch14;
    # we use open_clip's port of the same OpenAI weights (QuickGELU, argmax/EOT text pooling). Same function up to
    # float32 rounding; the text side gets the same ids as CLIPProcessor (released_clip_tokenizer).
    model = load_open_clip("ViT-L-14", ckpt, quick_gelu=True)
    return ClipReward(model, released_clip_tokenizer(), image_size=224, mean=RELEASED_CLIP_MEAN,
                      std=RELEASED_CLIP_STD, scale=100.0, name="clip", resize="bilinear")


def _resolve_hpsv2(path):
    """Local file for HPS v2.1 (HPS_HUB_FILE when path is None)."""
    spec = HPS_HUB_FILE if path is None else path
    if spec.startswith("hf://"):
        return _hub_download(spec, "hpsv2 reward", "path", "--hps_path")
    if not os.path.isfile(spec):
        raise FileNotFoundError(f"hpsv2 reward: checkpoint {spec!r} not found; download "
                                "https://huggingface.co/xswu/HPSv2/resolve/main/HPS_v2.1_compressed.pt and pass "
                                "make_reward('hpsv2', path='/path/to/HPS_v2.1_compressed.pt') "
                                "(train.py: --hps_path PATH)")
    return spec


def _load_hpsv2(ckpt):
    model = load_open_clip("ViT-H-14", ckpt, quick_gelu=False)  # HPS: laion2B ViT-H-14 (plain GELU) fine-tuned
    # DEVIATION(RankE@2798acc, D6): the released HPS reward ran under torch.no_grad on PIL uint8 images (so its
    # reward-backprop term had zero gradient) and under fp16 autocast. Here: a differentiable tensor path (bicubic
    # short side -> 224, centre crop, OpenAI mean/std, no uint8 round trip) in the model's dtype (fp32 unless the
    # caller autocasts). tests/test_rewards.py checks it against the PIL path within uint8 quantisation.
    return ClipReward(model, open_clip.get_tokenizer("ViT-H-14"), image_size=224, mean=OPENAI_MEAN,
                      std=OPENAI_STD, scale=100.0, name="hpsv2", resize="bicubic_crop")


_RESOLVERS = {"clip": _resolve_clip_l14, "hpsv2": _resolve_hpsv2}   # path flag -> local checkpoint file
_LOADERS = {"clip": _load_clip, "hpsv2": _load_hpsv2}                # local checkpoint file -> ClipReward


class LazyReward:
    """Builds its ClipReward on the first call (or .load()) and caches it; same signature as ClipReward.
    .resolve() only finds the checkpoint file (a local path, the hub cache, or a download when online) without
    building the model: train.py calls it at start-up so that a bad --clip_path / --hps_path fails in seconds."""

    def __init__(self, name, path=None):
        if name not in _LOADERS:
            raise ValueError(f"unknown reward {name!r}; available: {sorted(_LOADERS)}")
        self.name, self.path, self._reward, self._file = name, path, None, None

    def resolve(self):
        """-> local checkpoint file; FileNotFoundError naming the flag and the fix when there is none."""
        if self._file is None:
            self._file = _RESOLVERS[self.name](self.path)
        return self._file

    def load(self):
        """Build the model now (from the resolved file) and keep it."""
        if self._reward is None:
            self._reward = _LOADERS[self.name](self.resolve())
        return self._reward

    def __call__(self, images01, prompts):
        return self.load()(images01, prompts)  # ClipReward moves its model to the images' device

    def cache_state(self):
        """The ClipReward's text-feature cache; an empty one while the model is not built yet."""
        return self._reward.cache_state() if self._reward is not None else {"prompts": [], "features": torch.zeros(0)}

    def load_cache_state(self, state):
        if state["prompts"]:        # an empty cache needs no model: a reward never called stays unloaded
            self.load().load_cache_state(state)


def make_reward(name, path=None):
    """"clip" -> OpenAI CLIP ViT-L/14 (path: local file, hf://owner/repo/file, or None = open_clip 'openai' tag);
    "hpsv2" -> HPS v2.1 (path: local HPS_v2.1_compressed.pt, hf://..., or None = HPS_HUB_FILE).
    Returns a LazyReward: nothing is read or downloaded until the first call or .load()."""
    return LazyReward(name, path)


class WeightedReward:
    """R = sum_k w_k * R_k (docs/method.md §7, no normalisation); rewards: {name: (reward_fn, weight)}.

    Components with weight 0 are never called (so their models are never loaded). info holds each evaluated
    component's batch mean under "<name>" plus the components' own info entries and the total's mean.
    """

    def __init__(self, rewards):
        if not rewards:
            raise ValueError("WeightedReward needs at least one (reward_fn, weight) component")
        self.rewards = {k: (fn, float(w)) for k, (fn, w) in rewards.items()}
        if all(w == 0.0 for _, w in self.rewards.values()):
            raise ValueError(f"WeightedReward: every weight is 0 ({list(self.rewards)}); the reward would be constant")

    def __call__(self, images01, prompts):
        total, info = None, {}
        for name, (fn, w) in self.rewards.items():
            if w == 0.0:
                continue  # not evaluated: weight-0 components cost nothing
            scores, sub = fn(images01, prompts)  # (B,)
            info[name] = float(scores.detach().mean())
            info.update({k: v for k, v in sub.items() if k not in info})
            total = w * scores if total is None else total + w * scores
        info["reward_total"] = float(total.detach().mean())
        return total, info

    def cache_state(self):
        """{component name: its cache_state()} (ClipReward.cache_state says why a run saves it)."""
        return {k: fn.cache_state() for k, (fn, _) in self.rewards.items() if hasattr(fn, "cache_state")}

    def load_cache_state(self, state):
        for k, sub in state.items():
            self.rewards[k][0].load_cache_state(sub)


if __name__ == "__main__":
    # Self-check with a tiny random CLIP: scores, image gradient, text-cache behaviour. Downloads nothing.
    torch.manual_seed(0)
    clip = open_clip.CLIP(embed_dim=32, vision_cfg=dict(image_size=32, patch_size=8, width=32, layers=1,
                                                        head_width=16),
                          text_cfg=dict(context_length=16, vocab_size=100, width=32, heads=2, layers=1))

    def tokenize(texts):  # toy: chars -> ids 1..97, EOT = 99 (argmax pooling picks it)
        out = torch.zeros(len(texts), 16, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [1 + ord(c) % 97 for c in t][:14] + [99]
            out[i, :len(ids)] = torch.tensor(ids)
        return out

    reward = ClipReward(clip, tokenize, image_size=32, mean=RELEASED_CLIP_MEAN, std=RELEASED_CLIP_STD)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 48, 48, generator=g, requires_grad=True)
    prompts = ["a red cube", "a blue ball", "a red cube", "two cats"]
    scores, info = reward(images, prompts)
    scores.sum().backward()
    print("scores", [round(s, 3) for s in scores.tolist()], "| |grad| =", f"{images.grad.norm():.4e}")
    print("cosines in [-1,1] x 100:", bool((scores.abs() <= 100 + 1e-3).all()),
          "| text encodes (3 distinct prompts):", reward.cache_misses, "| info:", info)
    resumed = ClipReward(clip, tokenize, image_size=32, mean=RELEASED_CLIP_MEAN, std=RELEASED_CLIP_STD)
    resumed.load_cache_state(reward.cache_state())          # what train.py --resume does with a checkpoint's cache
    assert torch.equal(resumed(images, prompts)[0], scores) and resumed.cache_misses == 0
    print("cache state restored: same scores, no text re-encoded")
