"""(image, caption) pairs for post-training: a folder, a jsonl list, or WebDataset-style tars.

Paper concept: the prompt/ground-truth source of one RankE iteration (docs/method.md §3 "Take B (image, caption)
pairs", §9 Data). Captions are the RL prompts; images are the real samples for the decoder's ground-truth
reconstruction and for the discriminator.

Accepted sources (`--data`):
  * a folder:  `a.jpg` + `a.txt` side by side (any of .jpg .jpeg .png .webp), searched recursively;
  * a jsonl:   one `{"image": "relative/or/absolute.jpg", "caption": "..."}` per line;
  * a tar, or several comma-separated: members `KEY.jpg` + `KEY.txt` (the released BLIP3o / HPDv2 15k tars).
Preprocessing (docs/method.md §9, docs/method.md §13.12): halve with BOX while the short side >= 2S, bicubic resize of
the short side to S, centre crop S x S, scale to [-1, 1].

Bad samples (unreadable image, empty caption, image missing its caption) are skipped and counted, never
turned into black images (DEVIATION from the released loader, which substitutes a zero tensor or an empty
caption; a zero tensor is a grey "real" image the discriminator then learns from). A source with no usable
sample is an error.

Randomness is explicit: `PairStream` draws a per-epoch permutation from (seed, rank, epoch) and remembers its
position, so `state_dict()` / `load_state_dict()` resume the exact stream.

Self-check: `python data.py` (writes a small tar with one corrupt image and one empty caption, reads it back).
Symbols: B pairs per batch, S image side in pixels.
"""
import io
import json
import os
import sys
import tarfile
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")


def center_crop_arr(img: Image.Image, size: int) -> Image.Image:
    """LlamaGen's centre crop (docs/method.md §13.12): BOX-halve, bicubic short side -> size, centre crop."""
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return Image.fromarray(arr[top: top + size, left: left + size])


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, S, S) float in [-1, 1] (Normalize(0.5, 0.5))."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


@dataclass
class Pair:
    """One raw sample: a way to get the image bytes, and the caption text."""
    load_bytes: object   # () -> bytes
    caption: str
    name: str


def _index_tar(path: str) -> list[Pair]:
    # Group members by key (the name up to the first dot of the basename, as WebDataset does).
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    with tarfile.open(path) as tf:
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
            if img is None:
                pairs.append(Pair(None, txt, key))
                continue
            offset, size = img.offset_data, img.size   # read lazily by byte range: no extraction to disk

            def load(path=path, offset=offset, size=size):
                with open(path, "rb") as f:
                    f.seek(offset)
                    return f.read(size)
            pairs.append(Pair(load, txt, key))
    return pairs


def _index_folder(root: str) -> list[Pair]:
    pairs = []
    for d, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            stem, ext = os.path.splitext(f)
            if ext.lower() not in IMAGE_EXTS:
                continue
            txt = os.path.join(d, stem + ".txt")
            cap = open(txt, encoding="utf-8", errors="replace").read() if os.path.exists(txt) else ""
            p = os.path.join(d, f)
            pairs.append(Pair(lambda p=p: open(p, "rb").read(), cap, p))
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
            p = p if os.path.isabs(p) else os.path.join(base, p)
            pairs.append(Pair(lambda p=p: open(p, "rb").read(), cap, p))
    return pairs


class PairDataset:
    """All (image, caption) pairs of a source; `get(i)` returns (tensor, caption) or None for a bad sample."""

    def __init__(self, source: str, image_size: int):
        self.source, self.image_size, self.pairs = source, image_size, []
        for part in source.split(","):
            if os.path.isdir(part):
                self.pairs += _index_folder(part)
            elif part.endswith(".jsonl"):
                self.pairs += _index_jsonl(part)
            elif part.endswith(".tar") and os.path.isfile(part):
                self.pairs += _index_tar(part)
            else:
                raise FileNotFoundError(f"--data {part!r}: expected a folder, a .jsonl file or a .tar file that exists")
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
        caption = " ".join(p.caption.split())
        if not caption:
            self.bad[i] = "empty_caption"
            print(f"[data] skipping {p.name}: empty caption", file=sys.stderr)
            return None
        try:
            if p.load_bytes is None:
                raise OSError("no image member")
            img = Image.open(io.BytesIO(p.load_bytes()))
            img = center_crop_arr(img.convert("RGB"), self.image_size)
        except (OSError, ValueError, Image.DecompressionBombError) as e:  # PIL raises these for broken files
            self.bad[i] = "bad_image"
            print(f"[data] skipping {p.name}: unreadable image ({type(e).__name__}: {e})", file=sys.stderr)
            return None
        return to_tensor(img), caption


class PairStream:
    """Endless shuffled batches of B good pairs for one rank, resumable exactly.

    Each epoch is a permutation drawn from Generator(seed + 1000003 * rank + epoch); `pos` is the next index.
    """

    def __init__(self, dataset: PairDataset, batch: int, seed: int, rank: int = 0):
        self.ds, self.batch, self.seed, self.rank = dataset, batch, seed, rank
        self.epoch, self.pos = 0, 0
        self._perm = self._permutation()

    def _permutation(self):
        g = torch.Generator().manual_seed(self.seed + 1000003 * self.rank + self.epoch)
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

    def state_dict(self):
        return {"epoch": self.epoch, "pos": self.pos, "bad": dict(self.ds.bad)}

    def load_state_dict(self, s):
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
