"""data.py: the three source layouts, LlamaGen's centre crop, skip-and-count, exact resume.

Run: pytest -q tests/test_data.py
"""
import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from data import PairDataset, PairStream, center_crop_arr, write_tar


def png(color, size=(40, 30)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_center_crop_matches_llamagen_rule():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8))
    out = center_crop_arr(img, 64)       # 300x500 -> BOX halve twice (75x125) -> bicubic short side 64 -> crop
    assert out.size == (64, 64)


def test_folder_jsonl_tar_agree(tmp_path):
    colors = ["red", "green", "blue"]
    folder = tmp_path / "f"
    folder.mkdir()
    lines = []
    for i, c in enumerate(colors):
        (folder / f"{i}.png").write_bytes(png(c))
        (folder / f"{i}.txt").write_text(f"a {c} image")
        lines.append(json.dumps({"image": f"f/{i}.png", "caption": f"a {c} image"}))
    (tmp_path / "list.jsonl").write_text("\n".join(lines))
    write_tar(str(tmp_path / "p.tar"), [(str(i), png(c), f"a {c} image") for i, c in enumerate(colors)])
    got = []
    for src in (str(folder), str(tmp_path / "list.jsonl"), str(tmp_path / "p.tar")):
        ds = PairDataset(src, image_size=16)
        got.append([ds.get(i) for i in range(len(ds))])
    for a, b in zip(got[0], got[1]):
        assert torch.equal(a[0], b[0]) and a[1] == b[1]
    for a, b in zip(got[0], got[2]):
        assert torch.equal(a[0], b[0]) and a[1] == b[1]
    red = got[0][0][0]
    assert red.shape == (3, 16, 16) and red[0].min() > 0.9 and red[1].max() < -0.9   # red in [-1, 1]


def test_bad_samples_skipped_counted_once(tmp_path):
    tar = str(tmp_path / "p.tar")
    write_tar(tar, [("a", png("red"), "red"), ("b", b"garbage", "broken"), ("c", png("blue"), " ")])
    stream = PairStream(PairDataset(tar, 8), batch=5, seed=0)
    x, caps = stream.next()
    stream.next()
    assert x.shape == (5, 3, 8, 8) and set(caps) == {"red"}
    assert stream.stats() == {"skipped_bad_image": 1, "skipped_empty_caption": 1}


def test_no_usable_sample_is_an_error(tmp_path):
    tar = str(tmp_path / "p.tar")
    write_tar(tar, [("a", b"garbage", "x"), ("b", png("red"), "")])
    with pytest.raises(ValueError, match="no usable sample"):
        PairStream(PairDataset(tar, 8), batch=2, seed=0).next()
    with pytest.raises(FileNotFoundError, match="expected a folder"):
        PairDataset(str(tmp_path / "missing.tar"), 8)


def test_stream_resumes_exactly(tmp_path):
    write_tar(str(tmp_path / "p.tar"), [(str(i), png((i * 20, 0, 0)), f"c{i}") for i in range(7)])
    ds = lambda: PairDataset(str(tmp_path / "p.tar"), 8)
    a = PairStream(ds(), batch=3, seed=1)
    full = [a.next()[1] for _ in range(5)]            # crosses two epoch boundaries
    b = PairStream(ds(), batch=3, seed=1)
    first = [b.next()[1] for _ in range(2)]
    c = PairStream(ds(), batch=3, seed=1)
    c.load_state_dict(b.state_dict())
    assert first + [c.next()[1] for _ in range(3)] == full
    other_rank = PairStream(ds(), batch=3, seed=1, rank=1)
    assert [other_rank.next()[1] for _ in range(5)] != full
