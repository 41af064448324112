"""(image, caption) pairs for post-training: a folder, a jsonl list, or WebDataset-style tars; the ONE image
preprocessing of the repository; and the [-1,1] -> uint8 conversion and sample-grid writer.

Paper concept: the prompt/ground-truth source of one RankE iteration (docs/method.md §3 "Take B (image, caption)
pairs", §9 Data). Captions are the RL prompts; images are the real samples for the decoder's ground-truth
reconstruction and for the discriminator, and (VQ-encoded) the real token histogram p_GT of the LCS measurement
(docs/method.md §10, shift.py): both go through `preprocess`, so p_GT is measured on the images the model trains on.

Accepted sources (`--data`):
  * a folder:  `a.jpg` + `a.txt` side by side (any of .jpg .jpeg .png .webp), searched recursively;
  * a jsonl:   one `{"image": "relative/or/absolute.jpg", "caption": "..."}` per line;
  * a tar, or several comma-separated: members `KEY.jpg` + `KEY.txt` (the released BLIP3o / HPDv2 15k tars).
Preprocessing (`preprocess`, docs/method.md §9): matches the released RankE transform (syjmelody/RankE@2798acc
autoregressive/post_train/post_train.py:254-259, applied to every sample by dataset/sft_dataset.py:273-324):
torchvision Resize(S, BICUBIC) of the PIL image (short side -> S, long side int(S * long / short), truncated; PIL's
bicubic, which always antialiases), CenterCrop(S) (offset int(round((side - S) / 2)), Python's half-to-even round),
ToTensor, Normalize(0.5, 0.5). Reimplemented on PIL + numpy (no torchvision import), equal to torchvision's
output bit for bit (tests/test_data.py). LlamaGen's own `center_crop_arr` (docs/method.md §13.12: BOX-halving while
the short side >= 2S, long side rounded instead of truncated, crop offset floored) gives slightly different
pixels even below 2S (e.g. a 151x100 image -> 97x64 there, 96x64 here); RankE trains with the torchvision transform.

Bad samples (image bytes PIL cannot decode, empty caption, image missing its caption) are skipped and counted,
never turned into black images (DEVIATION from the released loader, which substitutes a zero tensor or an empty
caption; a zero tensor is a grey "real" image the discriminator then learns from; docs/method.md §14). A source
with no usable sample is an error, and so is a failed READ of the bytes (a moved tar, a storage hiccup): that is no
property of the sample, so it is raised, not remembered as bad for the rest of the run. `check_source` is the
cheap check of a `--data` value (layout, existence, tar format; nothing indexed) that train.py runs before any model
loads.

Randomness is explicit: `PairStream` draws a per-epoch permutation from sha256(seed, rank, epoch) and remembers its
position, so `state_dict()` / `load_state_dict()` resume the exact stream.

Images out: `to_uint8` (clamp(127.5 x + 128, 0, 255), the LlamaGen / RankE evaluation convention, docs/method.md
§11) is the [-1,1] -> uint8 conversion; `to_uint8_janus` (half a level darker) is the released Janus samplers' one,
used for Janus evaluation images only (sample.py); both refuse NaN / inf (else black images); `save_grid` writes one
PNG row per prompt (train.py's samples, the toy world's quality grid) with the captions in a .txt beside it.

Self-check: `python data.py` (writes a small tar with one corrupt image and one empty caption, reads it back,
writes a sample grid).
Depends on: numpy, torch, PIL (no repository file: copies alone).
Symbols: B pairs per batch, S image side in pixels, R prompts (grid rows), G images per prompt (grid columns).
"""
import functools
import hashlib
import io
import json
import os
import struct
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")


# ---------------------------------------------------------------------------------------------------------------
# The one image preprocessing (the released RankE transform, see the module docstring)

def preprocess(img: Image.Image, size: int) -> torch.Tensor:
    """PIL image (any mode) -> float32 (3, size, size) in [-1, 1], exactly torchvision's
    Compose([Resize(size, BICUBIC), CenterCrop(size), ToTensor(), Normalize(0.5, 0.5)]) on img.convert("RGB")
    (RankE@2798acc autoregressive/post_train/post_train.py:254-259)."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"preprocess: size must be a positive int (the image side S), got {size!r}")
    img = img.convert("RGB")                                   # sft_dataset.py:99-103 converts before the transform
    w, h = img.size
    # Resize(size): short side -> size, long side int(size * long / short) (torchvision truncates, no rounding);
    # an image already of that size is returned untouched (torchvision skips the resample then).
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    nw, nh = (size, new_long) if w <= h else (new_long, size)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)              # PIL bicubic antialiases when downscaling
    # CenterCrop(size): offsets int(round((side - size) / 2.0)); the long side is >= size, so no padding case.
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    # ToTensor (uint8 / 255) then Normalize(mean 0.5, std 0.5), in that float32 order so the values are identical.
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)  # (3,S,S)
    return x.sub(0.5).div(0.5)


# what PIL raises for a broken file: OSError / ValueError mostly, SyntaxError for a damaged PNG chunk, EOFError /
# struct.error for a cut one, DecompressionBombError for an absurd size
BROKEN_IMAGE = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


def load_image(path: str, size: int) -> torch.Tensor:
    """Image file -> preprocess(...) (3, S, S) in [-1, 1]; a missing or unreadable file names itself."""
    try:
        with Image.open(path) as img:
            return preprocess(img, size)
    except BROKEN_IMAGE as e:
        raise OSError(f"cannot read image {path!r} ({type(e).__name__}: {e})") from e


def image_batches(paths, size: int, batch_size: int = 32):
    """Image files -> iterator of float (B, 3, S, S) batches in [-1, 1] through `preprocess`: what shift.py's
    histogram_from_images (p_GT of the LCS, docs/method.md §10 step 1) and any other real-image consumer take."""
    paths = list(paths)
    if batch_size < 1:
        raise ValueError(f"image_batches: batch_size must be >= 1, got {batch_size}")
    for i in range(0, len(paths), batch_size):
        yield torch.stack([load_image(p, size) for p in paths[i:i + batch_size]])


# ---------------------------------------------------------------------------------------------------------------
# Images out: the [-1,1] -> uint8 conversions and the sample grid

def _finite(x: torch.Tensor) -> torch.Tensor:
    """x as float32; NaN / inf refused (clamp keeps NaN, the uint8 cast makes it 0: black images, scored)."""
    x = x.detach().float()
    if n := int((~torch.isfinite(x)).sum()):
        raise ValueError(f"decoder output holds {n} NaN/inf values (of {x.numel()}): the checkpoint has diverged or "
                         "the decoder ran in a dtype that overflowed; use an earlier checkpoint, or decode in float32")
    return x


def to_uint8(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Decoder output in [-1, 1] (any shape, e.g. (B,3,H,W)) -> uint8: clamp(127.5 x + 128, 0, 255), truncated
    (the LlamaGen / RankE evaluation convention, docs/method.md §11), computed in `dtype`: bf16 as the released HPSv2
    sampler (under autocast), whose bf16 rounding of 127.5 x + 128 then rounds rather than truncates most levels.
    NaN / inf: ValueError."""
    return (127.5 * _finite(x).to(dtype) + 128.0).clamp(0, 255).to(torch.uint8)


def to_uint8_janus(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Janus decoder output in [-1, 1] -> uint8 as the released Janus samplers convert it: clip((x + 1) / 2 * 255, 0,
    255) truncated, i.e. floor(127.5 x + 127.5), half a level below to_uint8. Same float32 operations in the same
    order, so the same bytes (Follows RankE janus/sample/sample_t2i_ddp_coco.py:211-212). NaN / inf: ValueError."""
    return ((_finite(x).to(dtype) + 1) / 2 * 255).clamp(0, 255).to(torch.uint8)


def save_grid(path: str, images: torch.Tensor, captions, G: int) -> None:
    """images (R*G, 3, H, W) in [-1, 1], prompt-major (row r = images r*G .. r*G+G-1) -> PNG at `path` with one
    row of G images per prompt; captions (R*G strings, one per image, or R, one per row) -> the R row captions in
    a .txt beside it (same name, .txt). Both files are written through a temp file + os.replace."""
    if images.dim() != 4 or images.shape[1] != 3 or G < 1 or images.shape[0] % G:
        raise ValueError(f"save_grid: images must be (R*G, 3, H, W) with G={G} dividing the count, got "
                         f"{tuple(images.shape)}")
    R, H, W = images.shape[0] // G, images.shape[2], images.shape[3]
    captions = list(captions)
    if len(captions) == R * G:
        captions = captions[::G]                                  # one per row: the first of each group
    elif len(captions) != R:
        raise ValueError(f"save_grid: {len(captions)} captions for {R} rows of {G} images; pass R*G or R captions")
    u8 = to_uint8(images).cpu()                                                      # (R*G, 3, H, W)
    grid = u8.view(R, G, 3, H, W).permute(0, 3, 1, 4, 2).reshape(R * H, G * W, 3)     # (R*H, G*W, 3)
    tmp = path + ".tmp"
    Image.fromarray(np.ascontiguousarray(grid.numpy())).save(tmp, format="PNG")
    os.replace(tmp, path)
    txt = os.path.splitext(path)[0] + ".txt"
    with open(txt + ".tmp", "w", encoding="utf-8") as f:
        f.write("\n".join(" ".join(str(c).split()) for c in captions) + "\n")
    os.replace(txt + ".tmp", txt)


@dataclass
class Pair:
    """One raw sample: a way to get the image bytes, and the caption text."""
    load_bytes: object   # () -> bytes, or None (a tar key without an image member)
    caption: str
    name: str
    where: str           # the file load_bytes reads (the tar, or the image), named when reading it fails


def _read(path: str, offset: int = 0, size: int = -1) -> bytes:
    with open(path, "rb") as f:          # closed at once (no ResourceWarning, no handle kept per sample)
        f.seek(offset)
        raw = f.read(size)
    if 0 <= size != len(raw):            # the tar shrank since it was indexed (cut short, replaced): a read failure
        raise OSError(f"read {len(raw)} of the {size} bytes at offset {offset}: the file is shorter than when indexed")
    return raw


def _part_problem(part: str) -> str | None:
    """Why one comma-separated --data part is unusable, with the fix (None: usable). Reads a tar's first header only."""
    layouts = "pass a folder of a.jpg + a.txt, a .jsonl file or an uncompressed .tar (layouts: data.py's docstring)"
    if not part.strip():
        return "an empty comma-separated part (a stray or doubled comma); remove it"
    if not os.path.exists(part):
        return "no such file or folder; expected a folder, a .jsonl file or a .tar file that exists"
    if os.path.isdir(part):
        has_image = any(f.lower().endswith(IMAGE_EXTS) for _, _, files in os.walk(part) for f in files)
        return None if has_image else f"a folder with no image ({' '.join(IMAGE_EXTS)}) under it; {layouts}"
    if not part.endswith((".jsonl", ".tar")):
        return f"neither a folder nor a .jsonl / .tar file; {layouts}"
    if not os.access(part, os.R_OK) or os.path.getsize(part) == 0:
        return "not readable (permissions) or empty (0 bytes: an interrupted copy); fix it or pass another path"
    if part.endswith(".tar"):
        try:              # mode "r:" (no decompression) reads the first header only
            tarfile.open(part, "r:").close()
        except tarfile.ReadError:    # plain tarfile.open would decompress; the lazy reader's byte ranges would not
            return ("compressed tar: decompress it (the lazy reader needs an uncompressed tar), e.g. `gzip -dc` / "
                    "`xz -dc`" if tarfile.is_tarfile(part) else
                    "not a tar archive (damaged, or another format named .tar); re-create or re-download it")
    return None


def check_source(source: str) -> list[str]:
    """The cheap check of a --data value (nothing indexed): one message per bad comma-separated part, naming --data,
    the part and the fix; [] when all look usable. train.py runs it before any model loads (backbones.check_paths)."""
    parts = source.split(",")
    return [f"--data {p!r}{f' (in {source!r})' if len(parts) > 1 else ''}: {why}"
            for p in parts if (why := _part_problem(p))]


def _index_tar(path: str) -> list[Pair]:
    # Group members by key (the name up to the first dot of the basename, as WebDataset does).
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        with tarfile.open(path, "r:") as tf:         # uncompressed only: offset_data must be an offset of the file
            for m in tf.getmembers():
                if not m.isfile():
                    continue
                d, base = os.path.split(m.name)
                key, _, ext = base.partition(".")
                groups.setdefault(os.path.join(d, key), {})["." + ext.lower()] = m
            pairs = []
            for key, members in sorted(groups.items()):
                img = next((members[e] for e in IMAGE_EXTS if e in members), None)
                txt = tf.extractfile(members[".txt"]).read().decode("utf-8", "replace") if ".txt" in members else ""
                load = None if img is None else functools.partial(_read, path, img.offset_data, img.size)
                pairs.append(Pair(load, txt, key, path))      # read lazily by byte range: no extraction
    except tarfile.ReadError as e:                                   # a damaged header past the first one
        raise ValueError(f"--data {path!r}: not readable as a tar ({e}); re-create or re-download it") from e
    return pairs


def _index_folder(root: str) -> list[Pair]:
    pairs = []
    for d, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            stem, ext = os.path.splitext(f)
            if ext.lower() not in IMAGE_EXTS:
                continue
            txt = os.path.join(d, stem + ".txt")
            cap = Path(txt).read_text("utf-8", "replace") if os.path.exists(txt) else ""   # closes the file
            p = os.path.join(d, f)
            pairs.append(Pair(functools.partial(_read, p), cap, p, p))
    return pairs


def _index_jsonl(path: str) -> list[Pair]:
    base, pairs = os.path.dirname(os.path.abspath(path)), []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                p, cap = rec["image"], rec.get("caption", "")
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{i + 1}: expected {{'image': ..., 'caption': ...}} per line ({e})") from e
            if not isinstance(p, str) or not p or not isinstance(cap, str):   # else a bare error at the first read
                raise ValueError(f"{path}:{i + 1}: expected a non-empty string 'image' (a path) and a string "
                                 f"'caption', got image {p!r:.60} and caption {cap!r:.60}: fix that line")
            p = p if os.path.isabs(p) else os.path.join(base, p)
            pairs.append(Pair(functools.partial(_read, p), cap, p, p))
    return pairs


class PairDataset:
    """All (image, caption) pairs of a source; `get(i)` returns (tensor, caption) or None for a bad sample."""

    def __init__(self, source: str, image_size: int):
        if not isinstance(image_size, int) or image_size < 1:   # else every image would be "bad" in get()
            raise ValueError(f"--image_size must be a positive int, got {image_size!r}")
        if bad := check_source(source):
            missing = any(p.strip() and not os.path.exists(p) for p in source.split(","))
            raise (FileNotFoundError if missing else ValueError)("\n".join(bad))
        self.source, self.image_size, self.pairs = source, image_size, []
        for part in source.split(","):
            index = _index_folder if os.path.isdir(part) else _index_jsonl if part.endswith(".jsonl") else _index_tar
            self.pairs += index(part)
        if not self.pairs:
            raise ValueError(f"--data {source!r} holds no (image, caption) pairs; see data.py's docstring for layouts")
        self.bad: dict[int, str] = {}   # index -> reason; each bad sample is logged and counted once

    def __len__(self):
        return len(self.pairs)

    @property
    def skipped(self) -> dict[str, int]:
        reasons = list(self.bad.values())
        return {"bad_image": reasons.count("bad_image"), "empty_caption": reasons.count("empty_caption")}

    def get(self, i: int):
        if i in self.bad:
            return None
        p = self.pairs[i]
        caption = p.caption.strip()    # as RankE (dataset/sft_dataset.py, ScalingPreprocessor): inner spaces kept
        if not caption:
            self.bad[i] = "empty_caption"
            print(f"[data] skipping {p.name}: empty caption", file=sys.stderr)
            return None
        try:          # READING the bytes: a failure is the storage's (moved, unmounted, I/O error), not the sample's
            raw = None if p.load_bytes is None else p.load_bytes()
        except OSError as e:
            raise OSError(f"--data: cannot read sample {p.name} from {p.where!r} ({type(e).__name__}: {e}); not a bad "
                          "sample: restore the file and resume, or if it is gone for good remove it (or its jsonl "
                          "line) from --data") from e
        try:          # DECODING them: what PIL raises here (OSError included: a truncated file) is a bad image
            if raw is None:
                raise OSError("no image member")
            with Image.open(io.BytesIO(raw)) as img:
                x = preprocess(img, self.image_size)
        except BROKEN_IMAGE as e:
            self.bad[i] = "bad_image"
            print(f"[data] skipping {p.name}: unreadable image ({type(e).__name__}: {e})", file=sys.stderr)
            return None
        return x, caption


class PairStream:
    """Endless shuffled batches of B good pairs for one rank, resumable exactly.

    Each epoch is a permutation drawn from a generator seeded by sha256(seed, rank, epoch); `pos` is the next index.
    """

    def __init__(self, dataset: PairDataset, batch: int, seed: int, rank: int = 0):
        self.ds, self.batch, self.seed, self.rank = dataset, batch, seed, rank
        self.epoch, self.pos = 0, 0
        self._perm = self._permutation()

    def _permutation(self):
        # a hash, not a sum: with seed + epoch, --seed s+1 epoch e replayed --seed s epoch e+1
        key = hashlib.sha256(f"{self.seed},{self.rank},{self.epoch}".encode()).digest()[:8]
        g = torch.Generator().manual_seed(int.from_bytes(key, "little") >> 1)       # 63 bits
        return torch.randperm(len(self.ds), generator=g)

    def next(self):
        images, captions = [], []
        while len(images) < self.batch:
            if self.pos >= len(self._perm):               # epoch done: new permutation
                self.epoch, self.pos = self.epoch + 1, 0
                self._perm = self._permutation()
            item = self.ds.get(int(self._perm[self.pos]))
            self.pos += 1
            if item is None:
                if len(self.ds.bad) == len(self.ds):        # every pair is known to be bad
                    raise ValueError(f"--data {self.ds.source!r}: no usable sample (skipped: {self.ds.skipped})")
                continue
            images.append(item[0])
            captions.append(item[1])
        return torch.stack(images), captions

    def stats(self):
        return {f"skipped_{k}": v for k, v in self.ds.skipped.items()}

    def _digest(self):
        """The dataset's pairs in index order (the permutations index them): a resume must see the same list."""
        return hashlib.sha1("\n".join(p.name for p in self.ds.pairs).encode()).hexdigest()

    def state_dict(self):
        return {"epoch": self.epoch, "pos": self.pos, "bad": dict(self.ds.bad), "pairs_sha1": self._digest()}

    def load_state_dict(self, s):
        if s.get("pairs_sha1", self._digest()) != self._digest():      # absent in older checkpoints
            raise ValueError(f"--data {self.ds.source!r} holds other pairs (or another order) than the run being "
                             f"resumed saw: its permutation and skipped indices would point at other samples. "
                             f"Resume with the same files, or start a new --out_dir")
        self.epoch, self.pos = s["epoch"], s["pos"]
        self.ds.bad.update(s["bad"])
        self._perm = self._permutation()


class WorldStream:
    """A generated world's endless (image, caption) stream (the toy world's `sample`), resumable through its
    generator state; the same next / stats / state_dict interface as PairStream."""

    def __init__(self, world, batch: int, seed: int):
        self.world, self.batch, self.gen = world, batch, torch.Generator().manual_seed(seed)

    def next(self):
        return self.world.sample(self.batch, self.gen, split="train")      # (B,3,S,S) in [-1,1], B captions

    def state_dict(self):
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, s):
        self.gen.set_state(s["gen"])

    def stats(self):
        return {}


def write_tar(path: str, samples: list[tuple[str, bytes, str]]) -> None:
    """Write (key, image bytes, caption) triples as a WebDataset-style tar (used by tests and the self-check)."""
    with tarfile.open(path, "w") as tf:
        for key, img_bytes, caption in samples:
            for ext, data in ((".jpg", img_bytes), (".txt", caption.encode())):
                info = tarfile.TarInfo(key + ext)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    import tempfile

    def jpg(color):
        buf = io.BytesIO()
        Image.new("RGB", (40, 30), color).save(buf, format="JPEG")
        return buf.getvalue()

    with tempfile.TemporaryDirectory() as d:
        tar = os.path.join(d, "pairs.tar")
        write_tar(tar, [("a", jpg("red"), "a red image"), ("b", b"not a jpeg", "broken"),
                        ("c", jpg("blue"), "   "), ("d", jpg("green"), "a green image")])
        stream = PairStream(PairDataset(tar, image_size=16), batch=4, seed=0)
        x, caps = stream.next()
        print("batch", tuple(x.shape), "range", round(x.min().item(), 3), round(x.max().item(), 3))
        print("captions", caps, "skipped", stream.ds.skipped)   # 2 good pairs repeat; 1 bad image, 1 empty caption
        grid = os.path.join(d, "grid.png")
        save_grid(grid, x, caps, G=2)                            # 2 rows of 2
        print("grid", Image.open(grid).size, "row captions", _read(grid[:-4] + ".txt").decode().split("\n")[:2],
              "| to_uint8(-1, 0, 1) =", to_uint8(torch.tensor([-1.0, 0.0, 1.0])).tolist())
