"""The toy world's base models: how each is built, trained, cached and reported (companion of toy/world.py).

toy/world.py owns the world (scenes, captions, checker) and `load_toy`; this file holds what load_toy builds with it:
  ToyFeatureNet       attribute CNN: toy-FID features (Inception stand-in) + `perceptual` (LPIPS stand-in)
  ToyTokenizer        word-level tokenizer of the toy CLIPs (EOT = largest id: open_clip pools at argmax)
  make_clip           the two open_clip CLIP architectures (reward: patch 4; independent evaluator: patch 8)
  train_feat / train_vq / train_gpt / train_clip   the training recipes (one tqdm bar each, explicit generators)
  _cached             the artifact cache: sha256-checked weights, written atomically, rebuilt when invalid
  evaluate            the base-model quality table printed by `python -m toy.world`
Recipes follow: LlamaGen tokenizer/train_vq.py (L1/L2 + perceptual + codebook/commitment; GAN omitted, see
train_vq), LlamaGen train_t2i.py (next-token CE, caption dropout 0.1), CLIP (symmetric InfoNCE) + hard negatives.

Run: python -m toy.models (the pieces on random weights, seconds); `python -m toy.world` builds and reports.
Tests: pytest tests/test_toy_models.py (each recipe's step against its loss by hand) tests/test_toy_world.py.
Depends on: torch, tqdm, open_clip; siblings perf/fast_sample.py (sample_gpt), eval_fid.py (Frechet distance). Copy with
toy/world.py. Part of the toy wing (toy/): no concept file imports it; it never imports toy/world.py back.
Symbols: B batch, N = 64 image tokens, K = 256 codes, E CLIP embedding width, F = 256 feature width.
"""
import contextlib
import hashlib
import json
import logging
import math
import os
import pickle
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import open_clip
from eval_fid import feature_stats, frechet_distance
from perf.fast_sample import sample_gpt

log = logging.getLogger("toy")

# =================================================================================================================
# Pretrained base models of the toy world
# =================================================================================================================
class ToyFeatureNet(nn.Module):
    """Small CNN trained to predict the scene attributes (never a reward). Its penultimate features are the toy FID
    features (the Inception pool3 analogue); its first three blocks give the toy perceptual distance."""
    GROUPS = (6, 4, 7, 5, 3, 6, 3)   # colour A, shape A, colour B|none, shape B|none, size|n/a, position|n/a, axis|n/a

    def __init__(self, width=32, feat_dim=256):
        super().__init__()
        c = width
        block = lambda i, o, s: nn.Sequential(nn.Conv2d(i, o, 3, s, 1), nn.GroupNorm(8, o), nn.SiLU())
        self.blocks = nn.ModuleList([block(3, c, 1), block(c, 2 * c, 2), block(2 * c, 4 * c, 2),
                                     block(4 * c, 4 * c, 2)])                  # 32, 16, 8, 4 px
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * c, feat_dim), nn.SiLU())  # keeps where, not only what
        self.head = nn.Linear(feat_dim, sum(self.GROUPS))

    def forward(self, x):
        """x (B,3,32,32) in [-1,1] -> list of block activations, features (B,F), logits (B, sum(GROUPS))."""
        acts = []
        for b in self.blocks:
            x = b(x)
            acts.append(x)
        f = self.fc(x)
        return acts, f, self.head(f)

    def feature_fn(self, images01):
        """Toy-FID features: images (B,3,32,32) in [0,1] -> (B,F)."""
        return self(images01 * 2 - 1)[1]

    def perceptual(self, x, y):
        """Toy perceptual distance (the LPIPS stand-in): x, y (B,3,32,32) in [-1,1] -> (B,). LPIPS-style: channel
        unit-normalised activations of blocks 1-3, squared difference summed over channels, averaged over space,
        summed over blocks. DEVIATION(LPIPS): equal layer weights (no learned linear heads: no human 2AFC data)."""
        acts = self(torch.cat([x, y]))[0][:3]
        d = 0.0
        for a in acts:
            a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
            ax, ay = a.chunk(2)
            d = d + (ax - ay).pow(2).sum(1).mean((1, 2))
        return d

    @staticmethod
    def targets(sc):
        """Scene dict -> (B, 7) class index per attribute group (the "none"/"n/a" class is the last of a group).
        Two objects are put in canonical order (left then right, top then bottom): "a X left of a Y" and "a Y right
        of a X" are the same image, so only the relation's axis (0 horizontal, 1 vertical) is a label."""
        two, swap = sc["n_obj"] == 2, (sc["n_obj"] == 2) & (sc["rel"] % 2 == 1)
        c, s = sc["colour"].clone(), sc["shape"].clone()                               # (B, 2)
        c[swap], s[swap] = c[swap].flip(1), s[swap].flip(1)
        na = lambda v, k: torch.where(two, torch.full_like(v, k), v)
        return torch.stack([c[:, 0], s[:, 0], torch.where(two, c[:, 1], 6), torch.where(two, s[:, 1], 4),
                            na(sc["size"], 2), na(sc["pos"], 5), torch.where(two, sc["rel"] // 2, 2)], 1)


class ToyTokenizer:
    """Word-level CLIP tokenizer over world.vocab: [SOT] words [EOT] pad... with pad=0, words 1..V, SOT=V+1 and
    EOT=V+2 the LARGEST id, because open_clip pools the text at argmax(token id) (CLIP's EOT convention)."""

    def __init__(self, vocab, context_length=16):
        self.ids = {w: i + 1 for i, w in enumerate(vocab)}
        self.sot, self.eot, self.L = len(vocab) + 1, len(vocab) + 2, context_length
        self.vocab_size = len(vocab) + 3

    def __call__(self, captions):
        out = torch.zeros(len(captions), self.L, dtype=torch.long)                      # (n, L)
        for i, cap in enumerate(captions):
            unknown = [w for w in cap.split() if w not in self.ids]
            if unknown or len(cap.split()) + 2 > self.L:
                raise ValueError(f"caption {cap!r}: unknown words {unknown} or longer than {self.L - 2} words")
            ids = [self.sot] + [self.ids[w] for w in cap.split()] + [self.eot]
            out[i, :len(ids)] = torch.tensor(ids)
        return out


# Two independent CLIPs: the reward (patch 4, 64 image tokens) and the evaluator (other seed, patch 8, wider).
CLIP_ARCHS = {"clip_reward": dict(embed_dim=64, vision=dict(patch_size=4, width=96, layers=3, head_width=32),
                                  text=dict(width=64, heads=2, layers=2)),
              "clip_eval": dict(embed_dim=64, vision=dict(patch_size=8, width=128, layers=4, head_width=32),
                                text=dict(width=96, heads=3, layers=2))}


def make_clip(name, tokenizer):
    a = CLIP_ARCHS[name]
    return open_clip.CLIP(embed_dim=a["embed_dim"], vision_cfg=dict(image_size=32, **a["vision"]),
                          text_cfg=dict(context_length=tokenizer.L, vocab_size=tokenizer.vocab_size, **a["text"]))


# --- artifact cache --------------------------------------------------------------------------------------------
def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _load_valid(path, meta_path, model, deps):
    """(model in eval mode, sha256) when `path` holds a valid artifact for `deps`; else why not (a str), or None when
    there is no file."""
    if not (os.path.exists(path) or os.path.exists(meta_path)):
        return None
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        sha = _sha256(path)
        if meta["sha256"] != sha:
            return "checksum mismatch (partial or corrupted file)"
        if meta["deps"] != deps:
            return f"built from other upstream artifacts ({meta['deps']} != {deps})"
        sd = torch.load(path, map_location="cpu", weights_only=True)   # fp16 floats (see _cached)
        model.load_state_dict(sd)          # strict; copy_ upcasts each entry into the fp32 model
        return model.eval(), sha
    except (OSError, ValueError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        return f"unreadable ({type(e).__name__}: {e})"


@contextlib.contextmanager
def _build_lock(path):
    """Hold an exclusive lock file (POSIX flock) while one process builds an artifact: toy.calibrate and
    toy.reproduce start a training run and an evaluation at once, and two builds of one cache raced on its temporary
    file. The file is removed before the lock is released (no *.lock left in a cache or in toy/assets/): a waiter
    then holds the removed file's lock and finds the artifact written; a later process loads it without locking.
    No lock where fcntl is missing (Windows)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if os.path.exists(path):
                os.remove(path)
            fcntl.flock(f, fcntl.LOCK_UN)


def _cached(folder, name, model, train, deps, build):
    """Load `name`.pt into `model` if its recorded checksum and upstream checksums match; otherwise (missing,
    truncated, corrupt, stale) train it and write it atomically (tmp + os.replace), then its .json metadata, under a
    lock: a process that finds another one building the artifact waits and loads what it wrote.
    -> (model in eval mode, sha256 of the weights file)."""
    path, meta_path = os.path.join(folder, name + ".pt"), os.path.join(folder, name + ".json")
    found = _load_valid(path, meta_path, model, deps)
    if isinstance(found, tuple):
        return found
    if not build:
        raise FileNotFoundError(f"toy models: {f'{path}: {found}' if found else f'no {path}'}; restore the shipped "
                                "files (`git checkout toy/assets`) or remake them with `python -m toy.world --rebuild`")
    with _build_lock(os.path.join(folder, name + ".lock")):
        again = _load_valid(path, meta_path, model, deps)     # built by another process while this one waited
        if isinstance(again, tuple):
            return again
        if again:
            log.warning("toy cache: %s: %s; rebuilding it", path, again)
        t0 = time.time()
        model.train()
        with torch.enable_grad():       # a caller under no_grad (toy_eval of an unbuilt config) still trains
            train(model)
        model.zero_grad(set_to_none=True)   # no leftover .grad: a fresh build must equal a load from the cache (the
        #                                     loop's first optimizer steps would otherwise add the last training grads)
        # Stored in fp16 (halves the shipped toy/assets/ to ~15 MB) and the model rounded to the stored values in
        # place, so the model a build returns equals the one a later load returns, and the next artifact (the GPT
        # trains on this VQ's tokens) is built on exactly what will be loaded.
        with torch.no_grad():
            half = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
            model.load_state_dict(half)
        torch.save(half, path + ".tmp")
        os.replace(path + ".tmp", path)
        sha = _sha256(path)
        with open(meta_path + ".tmp", "w") as f:
            json.dump(dict(sha256=sha, deps=deps, build_s=round(time.time() - t0, 1)), f)
        os.replace(meta_path + ".tmp", meta_path)
        return model.eval(), sha


# --- training recipes (each draws data from its own torch.Generator; module init / dropout run under _seeded) ---
@contextlib.contextmanager
def _seeded(seed):
    """Module constructors and dropout draw from torch's global RNG: fork it, seed it, restore it on exit."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _fit(name, params, steps, lr, loss_fn, progress, wd=0.0):
    """AdamW with linear warm-up + cosine decay; loss_fn(step) -> (loss, stats dict of floats)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd, betas=(0.9, 0.95))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.55 + 0.45 * math.cos(math.pi * min(s / steps, 1.0))))
    bar = tqdm(range(steps), desc=f"toy {name}", disable=not progress, mininterval=1.0)
    for step in bar:
        loss, stats = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 25 == 0:
            bar.set_postfix({k: f"{v:.3g}" for k, v in stats.items()}, refresh=False)


def train_feat(net, world, cfg, g, progress):
    """Attribute classifier on scenes of every (colour, shape) pair: sum of per-group cross-entropies."""
    def step(_):
        sc = world.scenes(cfg.feat_batch, g, "all")
        logits = net(world.render(sc))[2].split(ToyFeatureNet.GROUPS, 1)
        y = ToyFeatureNet.targets(sc)                                                 # (B, 7)
        loss = sum(F.cross_entropy(lg, y[:, j]) for j, lg in enumerate(logits))
        acc = torch.stack([lg.argmax(1) == y[:, j] for j, lg in enumerate(logits)]).all(0).float().mean()
        return loss, {"ce": loss.item(), "acc": acc.item()}
    _fit("feature net", list(net.parameters()), cfg.feat_steps, 2e-3, step, progress)


def train_vq(vq, world, cfg, perceptual, g, progress):
    """VQGAN recipe minus the GAN, with L1 + L2 reconstruction (LlamaGen's default is L2 alone, L1 its alternative;
    docs/method.md §13.13) + perceptual + codebook/commitment.
    DEVIATION(LlamaGen tokenizer training): no PatchGAN term -- on flat-coloured 32 px shapes L1 + perceptual
    already give sharp edges, and the discriminator would double the cost of the 15-minute CPU build.
    Dead codes: every cfg.vq_restart steps (first 80% of training) codebook rows unused since the last check are
    re-drawn from this batch's encoder outputs (a common VQ-training fix; LlamaGen relies on its large data instead)."""
    K = vq.cfg.codebook_size
    usage = torch.zeros(K)

    def step(s):
        x = world.sample(cfg.vq_batch, g, "train")[0]
        if cfg.vq_restart and s % cfg.vq_restart == 0 and 0 < s < 0.8 * cfg.vq_steps:   # before this graph
            dead = (usage == 0).nonzero()[:, 0]
            with torch.no_grad():
                z = vq.quant_conv(vq.encoder(x)).permute(0, 2, 3, 1).flatten(0, 2)     # (B*N, C) encoder outputs
                pick = torch.randint(len(z), (len(dead),), generator=g)
                vq.quantize.embedding.weight[dead] = F.normalize(z[pick], dim=-1)
            usage.zero_()
        z_q, commit, idx = vq.encode(x)                                            # commit = codebook + beta*commitment
        x_rec = vq.decode(z_q)
        l1, l2 = (x_rec - x).abs().mean(), (x_rec - x).pow(2).mean()
        p = perceptual(x_rec, x).mean()
        usage.add_(torch.bincount(idx.flatten(), minlength=K))
        return l1 + l2 + p + commit, {"l1": l1.item(), "perc": p.item(), "commit": commit.item(),
                                      "used": float((usage > 0).sum())}
    _fit("VQ", list(vq.parameters()), cfg.vq_steps, 1e-3, step, progress)


def tokenize_set(vq, world, n, g, progress, chunk=500):
    """A fixed set of n train-split scenes, encoded once: tokens (n, N) int64, captions list[str]."""
    toks, caps = [], []
    for i in tqdm(range(0, n, chunk), desc="toy tokenize", disable=not progress, mininterval=1.0):
        x, c = world.sample(min(chunk, n - i), g, "train")
        toks.append(vq.encode_indices(x))
        caps += c
    return torch.cat(toks), caps


def train_gpt(gpt, vq, text_encoder, world, cfg, g, progress):
    """Next-token cross-entropy on VQ tokens (LlamaGen t2i stage), caption dropout 0.1 so that CFG works."""
    tokens, caps = tokenize_set(vq.eval(), world, cfg.n_train, g, progress)
    B = cfg.gpt_batch

    def step(_):
        i = torch.randint(len(caps), (B,), generator=g)
        cond, mask = text_encoder([caps[j] for j in i])                               # (B, T, D), (B, T)
        drop = torch.rand(B, generator=g) < gpt.cfg.class_dropout_prob
        logits = gpt(tokens[i], cond, mask, drop_caption=drop)                        # (B, N, K)
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[i].flatten())
        return loss, {"ce": loss.item()}
    _fit("GPT", list(gpt.parameters()), cfg.gpt_steps, 1e-3, step, progress, wd=0.05)


def train_clip(clip, tokenizer, world, cfg, g, progress, name):
    """Symmetric InfoNCE (CLIP) on scenes of every pair, plus one hard negative per image (its caption with one
    attribute changed) as an extra image->text candidate. Duplicate captions among the B in-batch captions are not
    negatives; a hard negative that happens to equal another image's caption (about 14 % of images per batch at
    B 128) or a caption that says the same in other words stays one. The shipped CLIPs were trained so; masking all
    2B candidates scored no better, and changing it rebuilds every toy asset (docs/method.md §11, toy world)."""
    B = cfg.clip_batch

    def step(_):
        x, caps = world.sample(B, g, "all")
        negs = [world.alter(c, g)[0] for c in caps]
        img = F.normalize(clip.encode_image(x), dim=-1)                              # (B, E); input = (x01-.5)/.5
        txt = F.normalize(clip.encode_text(tokenizer(caps + negs)), dim=-1)          # (2B, E)
        logits = clip.logit_scale.exp() * img @ txt.T                                # (B, 2B)
        last = {c: i for i, c in enumerate(caps)}                                    # one index per caption
        cid = torch.tensor([last[c] for c in caps])                                  # caption identity
        dup = (cid[:, None] == cid[None]) & ~torch.eye(B, dtype=torch.bool)          # same caption, other image
        logits = torch.cat([logits[:, :B].masked_fill(dup, -1e4), logits[:, B:]], 1)
        y = torch.arange(B)
        loss = (F.cross_entropy(logits, y) + F.cross_entropy(logits[:, :B].T, y)) / 2
        hard = (logits[y, y] > logits[y, y + B]).float().mean()
        return loss, {"loss": loss.item(), "beats_neg": hard.item()}
    _fit(name, list(clip.parameters()), cfg.clip_steps, 1e-3, step, progress, wd=0.1)


# =================================================================================================================
# Quality report (python -m toy.world)
# =================================================================================================================
@torch.no_grad()
def evaluate(b, n, cfg_scale, g):
    """The base-model quality table -> ({metric: float or {split: float}}, {label: 8 images} for the grid).
    Chance = the checker on real images with shuffled captions (what a prompt-blind perfect renderer would get)."""
    w, r = b.world, {}
    x, caps = w.sample(n, g, "heldout")
    idx = b.vq.encode_indices(x)                                                        # (n, N)
    rec = b.vq.decode_indices(idx).clamp(-1, 1)
    r["VQ PSNR on held-out scenes (dB)"] = (10 * torch.log10(4 / (rec - x).pow(2).mean((1, 2, 3)))).mean().item()
    r["VQ codebook usage on held-out scenes"] = idx.unique().numel() / b.vq.cfg.codebook_size
    rows = {"real (held-out)": x[:8], "VQ reconstruction": rec[:8]}
    feats = {"real": [], "base": [], "real2": []}
    for split in ("train", "heldout"):
        x, caps = w.sample(n, g, split)
        cond, mask = b.text_encoder(caps)
        gen = b.vq.decode_indices(sample_gpt(b.gpt, cond, mask, cfg_scale=cfg_scale, generator=g)).clamp(-1, 1)
        rows[f"base GPT, cfg {cfg_scale} ({split} captions)"] = gen[:8]
        shuffled = [caps[i] for i in torch.randperm(n, generator=g)]
        altered = [w.alter(c, g)[0] for c in caps]                                     # one attribute changed
        x01, gen01 = (x + 1) / 2, (gen + 1) / 2
        row = {f"checker: base GPT samples (cfg {cfg_scale})": w.check(gen, caps).mean().item(),
               "checker: real images": w.check(x, caps).mean().item(),
               "checker: chance (real, shuffled captions)": w.check(x, shuffled).mean().item()}
        for name, fn in (("reward CLIP", lambda i, c: b.reward_fn(i, c)[0]), ("eval CLIP", b.eval_clip_fn)):
            s_real = fn(x01, caps)                                                      # (n,) 100 * cos
            row[f"{name} score: real images"] = s_real.mean().item()
            row[f"{name} score: base GPT samples"] = fn(gen01, caps).mean().item()
            row[f"{name}: P(true caption > altered caption)"] = (s_real > fn(x01, altered)).float().mean().item()
        for k, v in row.items():
            r.setdefault(k, {})[split] = v
        feats["real"].append(b.feature_fn(x01))
        feats["base"].append(b.feature_fn(gen01))
        feats["real2"].append(b.feature_fn((w.sample(n, g, split)[0] + 1) / 2))        # fresh real scenes
    mu_s = {k: feature_stats(torch.cat(f).double().numpy()) for k, f in feats.items()}
    r["toy FID: base GPT samples vs real (both splits)"] = frechet_distance(*mu_s["real"], *mu_s["base"])
    r["toy FID: real vs real, the floor (both splits)"] = frechet_distance(*mu_s["real"], *mu_s["real2"])
    return r, rows


if __name__ == "__main__":   # seconds: the pieces on random weights (python -m toy.world --preset tiny builds a bundle)
    # No ToyWorld here (toy/world.py imports this file; importing it back would be a cycle): a hand-made vocabulary,
    # random images in [-1, 1] and a hand-written scene dict stand in for the world's.
    g = torch.Generator().manual_seed(0)
    vocab = sorted(set("a small large red blue circle square on the left to right of".split()))
    tok = ToyTokenizer(vocab)
    caps = ["a small red circle on the left", "a red circle to the right of a blue square"]
    print(f"{caps[0]!r} -> {tok(caps[:1])[0].tolist()} (EOT = {tok.eot}, the largest id)")
    x = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    with _seeded(0):                                   # module init draws from the global RNG: fix it
        net = ToyFeatureNet()
    print("perceptual(x, x) =", net.perceptual(x, x).tolist(), "(0 by construction);",
          "perceptual(x, flipped x) =", [round(v, 3) for v in net.perceptual(x, x.flip(-1)).tolist()])
    sc = dict(n_obj=torch.tensor([1, 2]), colour=torch.tensor([[0, 5], [0, 2]]), shape=torch.tensor([[0, 3], [0, 1]]),
              size=torch.tensor([0, 1]), pos=torch.tensor([1, 0]), rel=torch.tensor([0, 1]))
    print("attribute targets (one object; two objects, swapped into canonical order):",
          ToyFeatureNet.targets(sc).tolist())
    for name in CLIP_ARCHS:
        print(f"{name}: {sum(p.numel() for p in make_clip(name, tok).parameters()):,} parameters")
