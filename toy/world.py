"""The toy world: a laptop-scale stand-in for LlamaGen + CLIP reward + COCO FID / GenEval.

RankE (arXiv 2605.21195) post-trains a discrete AR text-to-image model (LlamaGen GPT t2i + VQ-16) with a CLIP reward
and evaluates it with FID, CLIP score and GenEval (docs/method.md §11-§13). Here all of it runs on a 2-core CPU with
nothing downloaded, through the same classes as the real backbone, so the toy exercises the real code paths:

    real setting                          toy world (this file + toy/models.py)
    COCO / BLIP3o images + captions       ToyWorld.sample: 32x32 scenes of 1-2 coloured shapes, templated captions
    VQ-16 tokenizer (vq.py)               VQModel(VQ_CONFIGS["toy"]): 8x8 tokens, trained here (VQGAN minus GAN)
    LPIPS-VGG                             ToyFeatureNet.perceptual: LPIPS-style distance on the attribute CNN
    GPT-XL t2i + FLAN-T5 (policy.py)      GPT(GPT_CONFIGS["toy"]) + WordTextEncoder, next-token CE here
    CLIP ViT-L/14 reward (rewards.py)     open_clip CLIP (32 px, patch 4) trained contrastively -> ClipReward
    CLIP ViT-B/32 eval score              a second open_clip CLIP (patch 8, other widths and seed)
    Inception features of FID             ToyFeatureNet penultimate features (an attribute classifier, no reward)
    GenEval                               ToyWorld.check: exact attribute checker, from pixels
Compositional split: the HELDOUT (colour, shape) pairs never occur in the generator's (VQ, GPT) training scenes;
every split="heldout" scene has one. The evaluators (CLIPs, feature CNN) see all pairs, as a real CLIP has seen
far more than the generator.

Run:    python -m toy.world [--preset tiny] [--cache_dir .cache/toy] [--out grid.png]
        the default configuration loads the shipped base models (toy/assets/, checksum-verified); any other is built
        once into the cache (820 s measured on an idle 2-core CPU, 2 threads; --preset tiny: seconds) and loaded in
        0.3 s later; then prints the quality table and writes a sample grid PNG. Built weights depend on the torch
        thread count (float reduction order), which the cache key does not include: builds with 1 and 2 threads give
        different, equally trained models (docs/experiments.md, "The toy world").
Tests:  pytest tests/test_toy_world.py
Use:    b = load_toy(ToyConfig()); x, caps = b.world.sample(8, torch.Generator().manual_seed(0)); b.world.check(x, caps)
Cache:  cache_dir/<config_key(cfg)>/{feat,vq,gpt,clip_reward,clip_eval}.pt + .json (sha256, upstream sha256s);
        a missing, truncated, corrupt or stale file is rebuilt with a logged warning, never used (a shipped one is
        an error naming the file and the problem).
Depends on: torch; siblings vq.py, policy.py, rewards.py, text_encoders.py, data.py (save_grid), toy/models.py (the
models and their training recipes). Part of the toy wing (toy/): it imports concept files, no concept file imports it.
Evaluation of trained checkpoints on this world: toy/eval.py.
Symbols: n scenes, S = 32 image side, C = 6 colours, N = 64 image tokens, K = 256 codes, T = 16 caption slots,
D = 64 caption width, F = 256 feature width; coordinates (x, y) in pixels, y down; images in [-1, 1] unless "01".
"""
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from policy import GPT, GPT_CONFIGS
from text_encoders import WordTextEncoder
from data import save_grid
from rewards import ClipReward
from toy.models import (CLIP_ARCHS, ToyFeatureNet, ToyTokenizer, _cached, _seeded, evaluate, make_clip,
                        train_clip, train_feat, train_gpt, train_vq)
from vq import VQ_CONFIGS, VQModel

# --- the world's vocabulary of attributes --------------------------------------------------------------------
# Six colours near the corners of the RGB cube: pairwise distance >= 159 (0-255 units), so a pixel within RADIUS
# of one colour is unambiguous even after VQ blur; anything farther from every colour counts as background.
COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240),
           "yellow": (240, 220, 50), "white": (235, 235, 235), "pink": (235, 80, 200)}
BACKGROUND = (20, 20, 30)
RADIUS, MIN_AREA = 60.0, 12         # colour residual radius (see segment); smallest pixel area that counts as an object
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = {"small": (7, 10), "large": (13, 16)}          # bounding-box extent in pixels (inclusive range)
SIZE_SPLIT = 11.5                                       # checker: extent <= 11.5 is "small"
POSITIONS = {"left": ("on the left", (9, 16)), "right": ("on the right", (23, 16)),   # phrase, anchor (x, y)
             "top": ("at the top", (16, 9)), "bottom": ("at the bottom", (16, 23)),
             "centre": ("in the centre", (16, 16))}
RELATIONS = ("to the left of", "to the right of", "above", "below")
# Held-out split: these (colour, shape) pairs never occur in a train scene; every held-out scene has one.
HELDOUT = (("red", "triangle"), ("green", "cross"), ("blue", "circle"), ("yellow", "square"))


class ToyWorld:
    """Procedural captioned 32x32 scenes, an exact attribute checker, and the caption vocabulary."""

    def __init__(self, cfg=None):
        size = 32 if cfg is None else cfg.image_size
        if size != 32:
            raise ValueError(f"ToyWorld geometry is defined for 32x32 images, got image_size={size}; use 32")
        self.S = 32
        self.colours, self.shapes = list(COLOURS), list(SHAPES)
        self.palette = torch.tensor(list(COLOURS.values()), dtype=torch.float32)      # (C, 3) 0-255
        self.pos_names = list(POSITIONS)
        self.anchors = torch.tensor([a for _, a in POSITIONS.values()], dtype=torch.float32)  # (5, 2)
        held = {(self.colours.index(c), SHAPES.index(s)) for c, s in HELDOUT}
        pairs = [(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES))]
        self.pairs = {"train": torch.tensor([p for p in pairs if p not in held]),      # (P, 2) colour, shape ids
                      "heldout": torch.tensor(sorted(held)), "all": torch.tensor(pairs)}
        words = {"a"} | set(SIZES) | set(COLOURS) | set(SHAPES)
        for phrase in [p for p, _ in POSITIONS.values()] + list(RELATIONS):
            words |= set(phrase.split())
        self.vocab = sorted(words)

    # --- generation ----------------------------------------------------------------------------------------
    def scenes(self, n, generator, split="train"):
        """Draw n scene descriptions: dict of (n, 2) object tensors + (n,) scene tensors (slot 1 unused if n_obj=1)."""
        if split not in self.pairs:
            raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
        g = generator
        rint = lambda lo, hi, shape: torch.randint(lo, hi + 1, shape, generator=g)   # inclusive ints
        n_obj = rint(1, 2, (n,))
        # object A: a pair of the split; object B: a pair of a different colour, from the train pairs unless
        # split="all" (a held-out scene needs only one held-out object).
        pa = self.pairs[split][rint(0, len(self.pairs[split]) - 1, (n,))]              # (n, 2)
        tr = self.pairs["all" if split == "all" else "train"]
        pb = tr[rint(0, len(tr) - 1, (n,))]
        while (bad := pb[:, 0] == pa[:, 0]).any():                                      # redraw same-colour B
            pb[bad] = tr[rint(0, len(tr) - 1, (int(bad.sum()),))]
        colour, shape = torch.stack([pa[:, 0], pb[:, 0]], 1), torch.stack([pa[:, 1], pb[:, 1]], 1)  # (n, 2)
        # one object: size class, extent in its range, position anchor + jitter (+-2 small, +-1 large)
        size_cls = rint(0, 1, (n,))
        lo = torch.tensor([r[0] for r in SIZES.values()])[size_cls]
        ext1 = lo + rint(0, 3, (n,))
        pos = rint(0, len(POSITIONS) - 1, (n,))
        jit = 2 - size_cls                                                              # (n,)
        xy1 = self.anchors[pos] + (torch.rand(n, 2, generator=g) * (2 * jit[:, None] + 1)).floor() - jit[:, None]
        # two objects: relation; A/B on the relation axis at 7..10 / 22..25, off axis within +-5 of each other
        rel = rint(0, len(RELATIONS) - 1, (n,))
        near, far = rint(7, 10, (n,)).float(), rint(22, 25, (n,)).float()
        off_a = rint(9, 23, (n,)).float()
        off_b = (off_a + rint(-5, 5, (n,))).clamp(7, 25)
        first = torch.where(rel % 2 == 0, near, far)    # "left of"/"above": A is the near one
        second = torch.where(rel % 2 == 0, far, near)
        horiz = rel < 2
        xa, ya = torch.where(horiz, first, off_a), torch.where(horiz, off_a, first)
        xb, yb = torch.where(horiz, second, off_b), torch.where(horiz, off_b, second)
        ext2 = rint(7, 10, (n, 2))
        two = n_obj == 2
        ext = torch.where(two[:, None], ext2, torch.stack([ext1, ext1], 1))            # (n, 2)
        cx = torch.where(two[:, None], torch.stack([xa, xb], 1), xy1[:, :1].expand(n, 2))
        cy = torch.where(two[:, None], torch.stack([ya, yb], 1), xy1[:, 1:].expand(n, 2))
        # odd extents sit on pixel centres, even ones on pixel corners, so every shape is symmetric in the grid
        cx, cy = cx + 0.5 * (ext % 2), cy + 0.5 * (ext % 2)
        return dict(n_obj=n_obj, colour=colour, shape=shape, ext=ext, cx=cx, cy=cy, size=size_cls, pos=pos,
                    rel=rel)

    def masks(self, shape, ext, cx, cy):
        """Rasterise shapes: all args (...,) -> bool (..., S, S). Pixel centres at i + 0.5; no anti-aliasing."""
        p = torch.arange(self.S, dtype=torch.float32) + 0.5
        r = (ext.float() / 2)[..., None, None]
        dx = (p - cx[..., None].float()).abs()[..., None, :]                            # (..., 1, S)
        dy = (p - cy[..., None].float())[..., :, None]                                  # (..., S, 1)
        inside = dy.abs() <= r
        arm = 0.35 * r                                                                  # cross arm half-width
        all4 = torch.stack([dx ** 2 + dy ** 2 <= r ** 2,                                # circle
                            (dx <= r) & inside,                                         # square
                            inside & (dx <= (dy + r) / 2),                              # triangle, apex up
                            ((dx <= r) & (dy.abs() <= arm)) | ((dx <= arm) & inside)])  # cross
        return torch.gather(all4, 0, shape[None, ..., None, None].expand_as(all4[:1]).long())[0]

    def render(self, sc):
        """Scene dict -> images (n, 3, S, S) in [-1, 1]."""
        n = sc["n_obj"].shape[0]
        m = self.masks(sc["shape"], sc["ext"], sc["cx"], sc["cy"])                      # (n, 2, S, S)
        m[:, 1] &= (sc["n_obj"] == 2)[:, None, None]
        img = torch.tensor(BACKGROUND, dtype=torch.float32).view(1, 3, 1, 1).repeat(n, 1, self.S, self.S)
        for k in (1, 0):
            col = self.palette[sc["colour"][:, k]].view(n, 3, 1, 1)
            img = torch.where(m[:, k, None], col, img)
        return img / 127.5 - 1

    def caption(self, sc):
        """Scene dict -> list of templated captions."""
        t = {k: v.tolist() for k, v in sc.items()}
        return [self.format(dict(n=t["n_obj"][i], objs=list(zip(t["colour"][i], t["shape"][i]))[:t["n_obj"][i]],
                                 size=t["size"][i], pos=t["pos"][i], rel=t["rel"][i]))
                for i in range(len(t["n_obj"]))]

    def sample(self, n, generator, split="train"):
        """-> images (n, 3, S, S) in [-1, 1], captions list[str]; deterministic given the generator state."""
        sc = self.scenes(n, generator, split)
        return self.render(sc), self.caption(sc)

    # --- captions <-> attributes ---------------------------------------------------------------------------
    def format(self, p):
        """Parsed caption dict (n, objs [(colour id, shape id)], size, pos, rel) -> caption string."""
        (c1, s1), c, s = p["objs"][0], self.colours, self.shapes
        if p["n"] == 1:
            return f"a {list(SIZES)[p['size']]} {c[c1]} {s[s1]} {POSITIONS[self.pos_names[p['pos']]][0]}"
        c2, s2 = p["objs"][1]
        return f"a {c[c1]} {s[s1]} {RELATIONS[p['rel']]} a {c[c2]} {s[s2]}"

    def parse(self, caption):
        """Inverse of format(); a caption outside the two templates is a ValueError naming it."""
        w, c, s = caption.split(), self.colours, self.shapes
        try:
            if len(w) >= 5 and w[1] in SIZES and w[0] == "a":       # "a {size} {colour} {shape} {position}"
                pos = [p for p, _ in POSITIONS.values()].index(" ".join(w[4:]))
                return dict(n=1, objs=[(c.index(w[2]), s.index(w[3]))], size=list(SIZES).index(w[1]), pos=pos,
                            rel=0)
            if w[0] != "a" or w[-3] != "a":                          # "a {c} {s} {relation} a {c} {s}"
                raise ValueError(caption)                            # (not an assert: python -O would drop it)
            return dict(n=2, objs=[(c.index(w[1]), s.index(w[2])), (c.index(w[-2]), s.index(w[-1]))], size=0,
                        pos=0, rel=RELATIONS.index(" ".join(w[3:-3])))
        except (ValueError, IndexError):
            raise ValueError(f"{caption!r} is not a toy-world caption; expected e.g. 'a small red circle on the "
                             "left' or 'a red circle above a blue square'") from None

    def alter(self, caption, generator, attr=None):
        """Change exactly one stated attribute (random, or `attr`) -> (new caption, attribute name).
        Attributes: colour, shape, size, position (one object); colour, shape, colour2, shape2, relation (two)."""
        p = self.parse(caption)
        names = ["colour", "shape"] + (["size", "position"] if p["n"] == 1 else ["colour2", "shape2", "relation"])
        attr = attr or names[int(torch.randint(len(names), (1,), generator=generator))]
        if attr not in names:
            raise ValueError(f"attribute {attr!r} not in {names} for caption {caption!r}")
        pick = lambda k, used: [j for j in range(k) if j not in used][
            int(torch.randint(k - len(used), (1,), generator=generator))]                 # random id not in `used`
        objs = [list(o) for o in p["objs"]]
        k = 1 if attr.endswith("2") else 0
        if attr.startswith("colour"):                    # a colour different from both objects' colours
            objs[k][0] = pick(len(self.colours), {o[0] for o in objs})
        elif attr.startswith("shape"):
            objs[k][1] = pick(len(self.shapes), {objs[k][1]})
        else:
            key, n = {"size": ("size", len(SIZES)), "position": ("pos", len(POSITIONS)),
                      "relation": ("rel", len(RELATIONS))}[attr]
            p[key] = pick(n, {p[key]})
        p["objs"] = [tuple(o) for o in objs]
        return self.format(p), attr

    # --- the exact attribute checker (toy GenEval) ---------------------------------------------------------
    def segment(self, images):
        """images [-1,1] (n,3,S,S) -> colour class (n,S,S) (-1 = background / no colour within RADIUS) and
        connected-component labels (n,S,S) (-1 = none; label = largest pixel index of the component)."""
        # A blurred edge pixel is a mix alpha*colour + (1-alpha)*background: project each pixel onto every
        # colour's background->colour segment; it belongs to the colour with the smallest residual if alpha >= 0.5
        # (the half-intensity contour = the true edge of a blurred shape) and the residual is < RADIUS.
        bg = torch.tensor(BACKGROUND, dtype=torch.float32).view(1, 1, 3, 1, 1)
        p = (images.detach().float().clamp(-1, 1)[:, None] + 1) * 127.5 - bg                # (n, 1, 3, S, S)
        v = self.palette.view(1, -1, 3, 1, 1) - bg                                         # (1, C, 3, 1, 1)
        alpha = ((p * v).sum(2) / v.pow(2).sum(2)).clamp(0, 1)                             # (n, C, S, S)
        resid = (p - alpha[:, :, None] * v).pow(2).sum(2).sqrt()                           # (n, C, S, S)
        resid = torch.where(alpha >= 0.5, resid, torch.full_like(resid, float("inf")))
        dmin, cls = resid.min(1)
        cls[dmin > RADIUS] = -1
        S = self.S
        lab = torch.arange(S * S).view(1, S, S).expand_as(cls).clone()
        lab[cls < 0] = -1
        cls_p = F.pad(cls, (1, 1, 1, 1), value=-2)                                        # -2 matches nothing
        while True:   # label propagation: each pixel takes the max label of 4-neighbours of its own colour
            lab_p, new = F.pad(lab, (1, 1, 1, 1), value=-1), lab.clone()
            for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
                same = cls_p[:, dy:dy + S, dx:dx + S] == cls
                new = torch.where(same, torch.maximum(new, lab_p[:, dy:dy + S, dx:dx + S]), new)
            if torch.equal(new, lab):
                return cls, lab
            lab = new

    def objects(self, cls, lab):
        """One image's segmentation -> list of objects (colour id, area, bbox centre x/y, extent, mask),
        components smaller than MIN_AREA dropped."""
        ids, areas = lab[lab >= 0].unique(return_counts=True)
        objs = []
        for i, a in zip(ids.tolist(), areas.tolist()):
            if a < MIN_AREA:
                continue
            m = lab == i
            ys, xs = m.nonzero(as_tuple=True)
            x0, x1, y0, y1 = xs.min().item(), xs.max().item(), ys.min().item(), ys.max().item()
            objs.append(dict(colour=cls.view(-1)[i].item(), area=a, mask=m, cx=(x0 + x1 + 1) / 2,
                             cy=(y0 + y1 + 1) / 2, ext=max(x1 - x0, y1 - y0) + 1))
        return objs

    def shape_of(self, o):
        """Shape id whose rasterisation in the object's bounding box has the highest IoU with its mask."""
        k = len(SHAPES)
        t = self.masks(torch.arange(k), torch.full((k,), o["ext"]), torch.full((k,), o["cx"]),
                       torch.full((k,), o["cy"]))                                         # (k, S, S)
        iou = (t & o["mask"]).sum((1, 2)) / (t | o["mask"]).sum((1, 2))
        return int(iou.argmax())

    def check_detail(self, images, captions):
        """-> list of {attribute: bool} per image (names as in alter(), plus "count"). Rules, from pixels only:
        a named object is the largest connected component of its colour (>= MIN_AREA px); colour holds if one
        exists; shape = the best-IoU shape drawn in its bounding box; size = bbox extent vs SIZE_SPLIT; position =
        the anchor nearest the bbox centre; relation = sign of the bbox-centre offset on the dominant axis; count =
        number of components (any colour) == objects named. Attributes of an object that is not found fail."""
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, self.S, self.S) or images.shape[0] != len(captions):
            raise ValueError(f"need images (n,3,{self.S},{self.S}) and n captions, got {tuple(images.shape)} / "
                             f"{len(captions)}")
        if not torch.isfinite(images).all():    # NaN pixels would fail every attribute: a silent score of 0
            raise ValueError("images hold NaN / inf: the decoder output is broken; check the checkpoint")
        if images.numel() and images.amin() >= 0:   # the background is -0.84 in [-1,1]; a [0,1] image has none
            raise ValueError("images hold no pixel below 0: the checker takes [-1, 1] images (the toy background is "
                             "about -0.84); for images x01 in [0, 1] pass 2 * x01 - 1")
        cls, lab = self.segment(images)
        out = []
        for i, cap in enumerate(captions):
            p, objs = self.parse(cap), self.objects(cls[i], lab[i])
            largest = {}
            for o in sorted(objs, key=lambda o: o["area"]):
                largest[o["colour"]] = o                                  # largest component of each colour
            res, found = {}, []
            for k, (c, s) in enumerate(p["objs"]):
                o, sfx = largest.get(c), "2" if k else ""
                res["colour" + sfx] = o is not None
                res["shape" + sfx] = o is not None and self.shape_of(o) == s
                found.append(o)
            a = found[0]
            if p["n"] == 1:
                res["size"] = a is not None and (a["ext"] > SIZE_SPLIT) == (p["size"] == 1)
                res["position"] = a is not None and int(
                    (self.anchors - torch.tensor([a["cx"], a["cy"]])).norm(dim=1).argmin()) == p["pos"]
            else:
                b = found[1]
                res["relation"] = False
                if a is not None and b is not None:
                    dx, dy = b["cx"] - a["cx"], b["cy"] - a["cy"]      # B minus A; image y grows downwards
                    res["relation"] = [dx > abs(dy), -dx > abs(dy), dy > abs(dx), -dy > abs(dx)][p["rel"]]
            res["count"] = len(objs) == p["n"]
            out.append(res)
        return out

    def check(self, images, captions):
        """-> (n,) float: fraction of the caption's stated attributes that hold in the pixels (1.0 = all)."""
        det = self.check_detail(images, captions)
        return torch.tensor([sum(d.values()) / len(d) for d in det])


# =================================================================================================================
# Config, cache and the bundle
# =================================================================================================================
TOY_VERSION = 2          # bump when a recipe changes: it is part of the cache key (2: weights stored in fp16)
# The default configuration's base models ship with the repository (built by `python -m toy.world --rebuild`), so
# every machine starts from the same weights: a build depends on the CPU's float reduction order (thread count,
# vector width), so two machines never build identical models. manifest.json names the configuration they belong
# to (config_key), each file's sha256 sits in its .json, and the quality table recorded at build time.
SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")


def shipped_manifest():
    """toy/assets/manifest.json as a dict, or None when the folder holds no manifest."""
    path = os.path.join(SHIPPED, "manifest.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


@dataclass
class ToyConfig:
    seed: int = 0            # master seed: every data generator and model init derives from it
    image_size: int = 32     # fixed geometry (the world is drawn for 32x32)
    feat_steps: int = 400    # attribute CNN (toy-FID features + perceptual distance)
    feat_batch: int = 64
    vq_steps: int = 900      # tokenizer (VQGAN recipe minus GAN); more small steps beat fewer big ones here
    vq_batch: int = 16
    vq_restart: int = 100    # re-draw unused codebook rows every this many steps (0 = never), see train_vq
    n_train: int = 12000     # fixed train-split images tokenised once for the GPT
    gpt_steps: int = 1000    # GPT next-token training
    gpt_batch: int = 32
    clip_steps: int = 450    # each of the two CLIPs
    clip_batch: int = 128    # images per contrastive batch (+ as many hard-negative captions)
    cfg_scale: float = 3.0   # (eval only) CFG scale of the base-sample report
    n_eval: int = 500        # (eval only) images per split in the report

    @classmethod
    def tiny(cls, **kw):
        """A complete but untrained-quality bundle in seconds (tests, train.py smoke runs)."""
        small = dict(feat_steps=4, feat_batch=8, vq_steps=4, vq_batch=8, n_train=32, gpt_steps=4, gpt_batch=8,
                     clip_steps=4, clip_batch=8, n_eval=16)
        return cls(**{**small, **kw})


def world_definition():
    """The attribute tables the scenes, captions and checker are drawn from (top of this file). The base models learn
    them (HELDOUT decides which pairs the generator never sees), so they are part of the cache key: an edited table
    gets its own models instead of the shipped ones."""
    return dict(colours=COLOURS, background=BACKGROUND, radius=RADIUS, min_area=MIN_AREA, shapes=SHAPES, sizes=SIZES,
                size_split=SIZE_SPLIT, positions=POSITIONS, relations=RELATIONS, heldout=HELDOUT)


def config_key(cfg):
    """16-hex hash of everything the artifacts depend on (config minus eval-only fields, sibling configs, the world's
    attribute tables)."""
    d = {k: v for k, v in asdict(cfg).items() if k not in ("cfg_scale", "n_eval")}
    blob = json.dumps([TOY_VERSION, d, asdict(VQ_CONFIGS["toy"]), asdict(GPT_CONFIGS["toy"]), CLIP_ARCHS,
                       world_definition()], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class ToyBundle:
    cfg: ToyConfig
    world: ToyWorld
    vq: VQModel
    gpt: GPT
    text_encoder: WordTextEncoder
    reward_fn: ClipReward          # reward_fn(images01, captions) -> (scores (B,), info); differentiable
    eval_clip_fn: object           # (images01, captions) -> (B,) 100*cos of the independent eval CLIP, no grad
    feature_fn: object             # (images01) -> (B, F) toy-FID features
    perceptual: object             # (x, y) in [-1,1] -> (B,) toy perceptual distance
    cache_path: str = ""           # folder holding this config's artifacts


def load_toy(cfg=ToyConfig(), cache_dir=".cache/toy", *, build=True, progress=True, folder=None):
    """The world's base models: the shipped ones (toy/assets/) for the default configuration, strictly loaded and
    checksum-verified, never rebuilt silently; any other configuration is built once (minutes) into
    cache_dir/<config_key> and loaded from there (seconds) afterwards. folder: build into / load from this folder
    instead (`--rebuild`)."""
    world, man = ToyWorld(cfg), shipped_manifest()
    if folder is None and man is not None and man["config_key"] == config_key(cfg):
        folder, build = SHIPPED, False
    folder = folder or os.path.join(cache_dir, config_key(cfg))
    os.makedirs(folder, exist_ok=True)
    seed = lambda k: 1000 * cfg.seed + k             # k < 1000: one seed per artifact and use, never shared
    gen = lambda k: torch.Generator().manual_seed(seed(k))
    gcfg, vcfg = GPT_CONFIGS["toy"], VQ_CONFIGS["toy"]
    if gcfg.vocab_size != vcfg.codebook_size or gcfg.block_size != (cfg.image_size // 4) ** 2:
        raise ValueError(f"GPT_CONFIGS['toy'] (vocab {gcfg.vocab_size}, block {gcfg.block_size}) must match "
                         f"VQ_CONFIGS['toy'] (K={vcfg.codebook_size}, {(cfg.image_size // 4) ** 2} tokens)")
    text_encoder = WordTextEncoder(world.vocab, dim=gcfg.caption_dim, max_len=gcfg.cls_token_num, seed=cfg.seed)
    tok = ToyTokenizer(world.vocab)
    with _seeded(seed(11)):
        feat, h_feat = _cached(folder, "feat", ToyFeatureNet(),
                               lambda m: train_feat(m, world, cfg, gen(1), progress), {}, build)
    feat.requires_grad_(False)
    with _seeded(seed(12)):
        vq, h_vq = _cached(folder, "vq", VQModel(vcfg, generator=gen(20)),
                           lambda m: train_vq(m, world, cfg, feat.perceptual, gen(2), progress),
                           {"feat": h_feat}, build)
    with _seeded(seed(13)):
        gpt, _ = _cached(folder, "gpt", GPT(gcfg, seed=seed(23)),
                         lambda m: train_gpt(m, vq, text_encoder, world, cfg, gen(3), progress), {"vq": h_vq}, build)
    clips = {}
    for k, name in enumerate(CLIP_ARCHS):       # independent seeds and architectures
        with _seeded(seed(14 + k)):
            clips[name] = _cached(folder, name, make_clip(name, tok),
                                  lambda m: train_clip(m, tok, world, cfg, gen(4 + k), progress, name), {}, build)[0]
    half = (0.5, 0.5, 0.5)                      # the CLIPs were trained on x01 * 2 - 1
    reward_fn = ClipReward(clips["clip_reward"], tok, image_size=32, mean=half, std=half, name="toy_clip")
    eval_clip = ClipReward(clips["clip_eval"], tok, image_size=32, mean=half, std=half, name="toy_eval_clip")

    def eval_clip_fn(images01, captions):
        with torch.no_grad():
            return eval_clip(images01, captions)[0]
    return ToyBundle(cfg, world, vq, gpt, text_encoder, reward_fn, eval_clip_fn, feat.feature_fn, feat.perceptual,
                     folder)


def rebuild_shipped(progress=True):
    """`python -m toy.world --rebuild`: build the default configuration from scratch into a temporary folder, record
    its quality table and build facts in manifest.json, then swap it in for toy/assets/ (the old folder survives
    until the new one is complete). An interrupted rebuild continues: the temporary folder is named by the config
    key and keeps every finished, checksum-valid artifact. -> the quality table."""
    import shutil
    import platform
    cfg, old = ToyConfig(), SHIPPED + ".old"
    tmp = f"{SHIPPED}.tmp-{config_key(cfg)}"
    t0 = time.time()
    bundle = load_toy(cfg, folder=tmp, progress=progress)
    build_s = time.time() - t0
    table, grid = evaluate(bundle, cfg.n_eval, cfg.cfg_scale, torch.Generator().manual_seed(12345))
    man = dict(config_key=config_key(cfg), toy_version=TOY_VERSION, config=asdict(cfg),
               quality=dict(n=cfg.n_eval, cfg_scale=cfg.cfg_scale, eval_seed=12345, table=table),
               built_with=dict(torch=torch.__version__, threads=torch.get_num_threads(), machine=platform.machine(),
                               seconds=round(build_s, 1)))
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump(man, f, indent=1)
    x = torch.cat(list(grid.values()))                                    # (R*8, 3, 32, 32), one row per label
    save_grid(os.path.join(tmp, "samples.png"), x.repeat_interleave(2, -1).repeat_interleave(2, -2), list(grid), G=8)
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(SHIPPED):
        os.replace(SHIPPED, old)
    os.replace(tmp, SHIPPED)
    shutil.rmtree(old, ignore_errors=True)
    return table


def print_table(table, n):
    print(f"{'metric (n = ' + str(n) + ' scenes per split)':<56}{'train':>10}{'held-out':>10}")
    for k, v in table.items():
        print(f"{k:<56}" + (f"{v['train']:>10.3f}{v['heldout']:>10.3f}" if isinstance(v, dict) else f"{v:>10.3f}"))


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="Load (or build) the toy world and print its quality table.")
    ap.add_argument("--preset", choices=("default", "tiny"), default="default", help="tiny: seconds, low quality")
    ap.add_argument("--cache_dir", default=".cache/toy", help="artifact cache of non-shipped configurations")
    ap.add_argument("--out", default=None, help="sample grid PNG (default: <cache folder>/samples.png)")
    ap.add_argument("--seed", type=int, default=0, help="ToyConfig.seed (0 = the shipped models)")
    ap.add_argument("--rebuild", action="store_true", help="remake the shipped default models in toy/assets/ "
                    "(~15 min on 2 cores; other machines build other, equally good weights: docs/experiments.md)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.rebuild:
        if args.preset != "default" or args.seed != 0:
            ap.error("--rebuild remakes the shipped default models only (no --preset / --seed)")
        table = rebuild_shipped()
        print(f"rebuilt {SHIPPED} (manifest.json, samples.png)")
        print_table(table, ToyConfig().n_eval)
        raise SystemExit(0)
    cfg = ToyConfig.tiny(seed=args.seed) if args.preset == "tiny" else ToyConfig(seed=args.seed)
    t0 = time.time()
    bundle = load_toy(cfg, args.cache_dir)
    print(f"toy world {config_key(cfg)}: ready in {time.time() - t0:.1f} s (folder {bundle.cache_path})")
    table, grid = evaluate(bundle, cfg.n_eval, cfg.cfg_scale, torch.Generator().manual_seed(12345))
    print_table(table, cfg.n_eval)
    out = args.out or os.path.join(args.cache_dir if bundle.cache_path == SHIPPED else bundle.cache_path, "samples.png")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)   # the shipped models create no cache folder
    x = torch.cat(list(grid.values()))                                    # (R*8, 3, 32, 32), one row per label
    save_grid(out, x.repeat_interleave(2, -1).repeat_interleave(2, -2), list(grid), G=8)   # x2 nearest upscale
    print(f"sample grid: {out}")
