"""data.py: the three source layouts, the one preprocessing (= the released RankE torchvision transform),
skip-and-count, exact resume, to_uint8 and save_grid.

Run: pytest -q tests/test_data.py
"""
import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from data import PairDataset, PairStream, image_batches, load_image, preprocess, save_grid, to_uint8, write_tar


def png(color, size=(40, 30)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("h, w, S", [(300, 500, 64), (501, 333, 64), (17, 40, 32), (32, 32, 32), (31, 33, 32),
                                     (7, 9, 16), (257, 256, 256), (101, 99, 33), (3, 200, 16)])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_preprocess_equals_released_torchvision_transform(h, w, S, mode):
    """The released RankE transform (RankE@2798acc autoregressive/post_train/post_train.py:254-259) applied to
    img.convert("RGB") (dataset/sft_dataset.py): odd sizes exercise the truncated long side and the rounded
    (half-to-even) crop offsets; up- and downscaling; equality is exact."""
    from torchvision import transforms as T
    a = np.random.default_rng(h * w + S).integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(a).convert(mode)
    released = T.Compose([T.Resize(S, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(S), T.ToTensor(),
                          T.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])])
    x = preprocess(img, S)
    assert x.shape == (3, S, S) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    assert torch.equal(x, released(img.convert("RGB")))


def test_preprocess_crops_the_centre_and_checks_size(tmp_path):
    a = np.zeros((40, 100, 3), np.uint8)
    a[:, 30:70] = 255                                     # the central 40 columns survive the crop
    x = preprocess(Image.fromarray(a), 40)
    assert (x == 1).all()
    with pytest.raises(ValueError, match="size"):
        preprocess(Image.fromarray(a), 0)
    Image.fromarray(a).save(tmp_path / "a.png")
    assert torch.equal(load_image(str(tmp_path / "a.png"), 40), x)
    batches = list(image_batches([str(tmp_path / "a.png")] * 3, 40, batch_size=2))
    assert [b.shape[0] for b in batches] == [2, 1] and torch.equal(batches[1][0], x)
    with pytest.raises(OSError, match="nope.png"):
        load_image(str(tmp_path / "nope.png"), 8)


def test_to_uint8_convention():
    x = torch.tensor([-1.5, -1.0, -0.99, 0.0, 0.5, 1.0, 2.0])
    assert to_uint8(x).tolist() == [0, 0, 1, 128, 191, 255, 255]     # clamp(127.5 x + 128, 0, 255), truncated
    assert to_uint8(x).dtype == torch.uint8


def test_save_grid_rows_captions_atomic(tmp_path):
    R, G, S = 2, 3, 4
    vals = torch.linspace(-1, 1, R * G)
    images = vals.view(-1, 1, 1, 1).expand(R * G, 3, S, S).contiguous()
    caps = [f"prompt {r}" for r in range(R) for _ in range(G)]                  # one per image, prompt-major
    path = str(tmp_path / "samples_0000001.png")
    save_grid(path, images, caps, G)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (R * S, G * S, 3)
    for r in range(R):
        for j in range(G):
            assert (grid[r * S:(r + 1) * S, j * S:(j + 1) * S] == int(to_uint8(vals[r * G + j]))).all()
    assert (tmp_path / "samples_0000001.txt").read_text().splitlines() == ["prompt 0", "prompt 1"]
    save_grid(path, images, ["row a", "row b"], G)                               # R captions work too
    assert (tmp_path / "samples_0000001.txt").read_text().splitlines() == ["row a", "row b"]
    assert sorted(os.listdir(tmp_path)) == ["samples_0000001.png", "samples_0000001.txt"]   # no temp files left
    with pytest.raises(ValueError, match="captions"):
        save_grid(path, images, ["one"], G)
    with pytest.raises(ValueError, match="G=4"):
        save_grid(path, images, caps, 4)


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
    # captions are stripped as RankE's loader strips them; inner spaces and line breaks reach the text encoder
    write_tar(str(tmp_path / "w.tar"), [("0", png("red"), " a  red\nimage \n")])
    assert PairDataset(str(tmp_path / "w.tar"), image_size=16).get(0)[1] == "a  red\nimage"


def damaged_png():
    """A PNG whose second IDAT chunk lost its type: PIL raises SyntaxError (not OSError) while decoding it."""
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    b = bytearray(buf.getvalue())
    second = b.find(b"IDAT", b.find(b"IDAT") + 4)
    b[second:second + 4] = b"\0\0\0\0"
    return bytes(b)


def test_bad_samples_skipped_counted_once(tmp_path):
    tar = str(tmp_path / "p.tar")
    write_tar(tar, [("a", png("red"), "red"), ("b", b"garbage", "broken"), ("c", png("blue"), " "),
                    ("d", damaged_png(), "damaged chunk")])
    stream = PairStream(PairDataset(tar, 8), batch=5, seed=0)
    x, caps = stream.next()
    stream.next()
    assert x.shape == (5, 3, 8, 8) and set(caps) == {"red"}
    assert stream.stats() == {"skipped_bad_image": 2, "skipped_empty_caption": 1}


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
    # the same --data path holding other files: the saved position and skipped indices would mean other samples
    write_tar(str(tmp_path / "q.tar"), [(str(i), png((i * 20, 0, 0)), f"c{i}") for i in range(8)])
    with pytest.raises(ValueError, match="other pairs"):
        PairStream(PairDataset(str(tmp_path / "q.tar"), 8), batch=3, seed=1).load_state_dict(b.state_dict())
