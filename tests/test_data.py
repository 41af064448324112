"""data.py: the three source layouts, the one preprocessing (= the released RankE torchvision transform),
skip-and-count (decode failures only; read failures raise), exact resume, per-epoch orders that do not repeat across
seeds, the cheap --data check, to_uint8 (NaN refused) and save_grid.

Run: pytest -q tests/test_data.py
"""
import gc
import gzip
import io
import json
import lzma
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import data
from data import (PairDataset, PairStream, check_source, image_batches, load_image, preprocess, save_grid, to_uint8,
                  to_uint8_janus, write_tar)


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
    assert preprocess(Image.fromarray(a), 1).shape == (3, 1, 1)                       # any positive side
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


def test_nan_or_inf_decoder_output_is_refused_not_black():
    """clamp keeps NaN and the uint8 cast makes it 0: a diverged decoder would write black images into sample grids
    (and, through sample.py, evaluation folders). Both conversions and save_grid name the problem instead."""
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.zeros(2, 3, 4, 4)
        x[1, 2, 3, 0] = bad
        for convert in (to_uint8, to_uint8_janus):
            with pytest.raises(ValueError, match="holds 1 NaN/inf values .*diverged"):
                convert(x)
            with pytest.raises(ValueError, match="NaN/inf"):
                convert(x.half())
    with pytest.raises(ValueError, match="NaN/inf"):
        save_grid("never_written.png", torch.full((1, 3, 4, 4), float("nan")), ["a"], G=1)
    assert not os.path.exists("never_written.png")


def test_save_grid_non_square_images(tmp_path):
    """The grid takes H and W separately (it read the side from the width only: a bare reshape error, or rows cut
    wrong, for a non-square image)."""
    R, G, H, W = 2, 3, 4, 6
    vals = torch.linspace(-1, 1, R * G)
    images = vals.view(-1, 1, 1, 1).expand(R * G, 3, H, W).contiguous()
    for h, w, imgs in ((H, W, images), (W, H, images.transpose(2, 3))):
        save_grid(str(tmp_path / "g.png"), imgs, ["r0", "r1"], G)
        grid = np.asarray(Image.open(tmp_path / "g.png"))
        assert grid.shape == (R * h, G * w, 3)
        for r in range(R):
            for j in range(G):
                assert (grid[r * h:(r + 1) * h, j * w:(j + 1) * w] == int(to_uint8(vals[r * G + j]))).all()


@pytest.mark.parametrize("rec", [{"image": "a.png", "caption": None}, {"image": "a.png", "caption": 7},
                                 {"image": "a.png", "caption": ["a red image"]}, {"image": 12, "caption": "x"},
                                 {"image": None, "caption": "x"}, {"image": "", "caption": "x"}])
def test_jsonl_wrong_types_are_named_at_indexing(tmp_path, rec):
    """A caption or image that is not a string is refused when the jsonl is indexed, naming file and line (it crashed
    later, at the first read of that sample, with a bare AttributeError / TypeError)."""
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    good = json.dumps({"image": "a.png", "caption": "a red image"})
    (tmp_path / "p.jsonl").write_text(good + "\n" + json.dumps(rec) + "\n")
    with pytest.raises(ValueError, match=r"p\.jsonl:2: expected a non-empty string 'image'.*fix that line"):
        PairDataset(str(tmp_path / "p.jsonl"), 8)


def truncated_png():
    """A PNG cut in its pixel data: PIL raises OSError ("image file is truncated") while DECODING it."""
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    return buf.getvalue()[:len(buf.getvalue()) // 2]


def test_read_failure_raises_and_is_not_remembered_as_bad(tmp_path):
    """An OSError while READING the bytes (the tar moved, storage failed) is no property of the sample: it is raised
    naming the tar, and not put into the stream's saved bad indices (which a resumed run skipped for ever); an OSError
    PIL raises while DECODING read bytes (a truncated image) is still a skipped, counted bad image."""
    tar = str(tmp_path / "p.tar")
    write_tar(tar, [("a", png("red"), "red"), ("t", truncated_png(), "truncated"), ("b", png("blue"), "blue")])
    stream = PairStream(PairDataset(tar, 8), batch=4, seed=0)
    assert set(stream.next()[1]) == {"red", "blue"} and stream.stats()["skipped_bad_image"] == 1
    os.rename(tar, tar + ".moved")
    with pytest.raises(OSError, match=f"cannot read sample . from '{tar}'.*restore the file"):
        stream.next()
    os.rename(tar + ".moved", tar)
    assert list(stream.state_dict()["bad"].values()) == ["bad_image"]           # the truncated image only
    assert len(stream.next()[0]) == 4                                           # readable again: the run goes on


def test_tar_cut_short_after_indexing_is_a_read_failure(tmp_path):
    """A tar that shrank after indexing (a copy still running, a replaced file) reads fewer bytes than the index says:
    that is a READ failure naming the file, not a bad image skipped for ever."""
    tar = str(tmp_path / "p.tar")
    write_tar(tar, [("a", png("red"), "red")])
    ds = PairDataset(tar, 8)
    with open(tar, "r+b") as f:
        f.truncate(ds.pairs[0].load_bytes.args[1] + 10)            # 10 bytes into the image member
    with pytest.raises(OSError, match=r"cannot read sample a .*shorter than when indexed"):
        ds.get(0)
    assert ds.bad == {}


@pytest.mark.parametrize("compress", [gzip.compress, lzma.compress])
def test_compressed_tar_is_refused_naming_the_fix(tmp_path, compress):
    """tarfile.open decompresses silently, but the lazy reader reads byte ranges of the file itself: every image of
    a compressed .tar read as corrupt. It is refused up front, saying to decompress it."""
    write_tar(str(tmp_path / "plain.tar"), [("a", png("red"), "red")])
    (tmp_path / "p.tar").write_bytes(compress((tmp_path / "plain.tar").read_bytes()))
    with pytest.raises(ValueError, match="compressed tar: decompress it"):
        PairDataset(str(tmp_path / "p.tar"), 8)


def test_data_values_are_checked_cheaply(tmp_path):
    """check_source (what backbones.check_paths runs before any model loads: tests/test_train.py) gives each bad
    --data part one message naming --data, the value and the fix; check_paths accepted any existing path and skipped
    empty comma parts, so PairDataset refused them only after the big models had loaded. A tar damaged past the
    check's first header is named too."""
    write_tar(str(tmp_path / "good.tar"), [("k", png("red"), "a red image")])
    (tmp_path / "junk.tar").write_bytes(b"not a tar file" * 50)
    (tmp_path / "gz.tar").write_bytes(gzip.compress((tmp_path / "good.tar").read_bytes()))
    (tmp_path / "captions.txt").write_text("a red image\n")
    (tmp_path / "empty").mkdir()
    good = str(tmp_path / "good.tar")
    for value, why in ((good + ",", "empty comma-separated part"), (str(tmp_path / "junk.tar"), "not a tar"),
                       (str(tmp_path / "gz.tar"), "decompress it"), (str(tmp_path / "captions.txt"), "neither"),
                       (str(tmp_path / "empty"), "no image"), (str(tmp_path / "nope.jsonl"), "no such file")):
        bad = check_source(value)
        assert len(bad) == 1 and bad[0].startswith("--data ") and why in bad[0] and value.rstrip(",") in bad[0], bad
        with pytest.raises((ValueError, FileNotFoundError), match=why):
            PairDataset(value, 8)                                      # the same check, the same words
    assert check_source(good) == [] and len(check_source(f"{good},{tmp_path / 'empty'},")) == 2
    with pytest.raises(ValueError, match="junk.tar.*not readable as a tar"):
        data._index_tar(str(tmp_path / "junk.tar"))


def test_seeds_and_ranks_do_not_share_epoch_orders(tmp_path):
    """The epoch permutation is seeded by a hash of (seed, rank, epoch): with seed + 1000003 rank + epoch, --seed 1
    epoch e replayed --seed 0 epoch e + 1, and --seed 1000003 rank 0 replayed --seed 0 rank 1."""
    write_tar(str(tmp_path / "p.tar"), [(f"{i:02d}", png((i * 20, 0, 0)), f"c{i}") for i in range(12)])
    ds = PairDataset(str(tmp_path / "p.tar"), 8)

    def epochs(seed, rank=0, n=3):
        s = PairStream(ds, batch=12, seed=seed, rank=rank)
        return [tuple(s.next()[1]) for _ in range(n)]                # one batch = one whole epoch
    orders = epochs(0) + epochs(1) + epochs(1000003) + epochs(0, rank=1)
    assert len(set(orders)) == len(orders)


def test_index_and_read_close_their_files(tmp_path):
    """Captions and images are read through `with open` (open(p).read() left each file to the garbage collector:
    a ResourceWarning per caption and per image)."""
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a red image")
    (tmp_path / "p.jsonl").write_text(json.dumps({"image": "a.png", "caption": "a red image"}) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for src in (str(tmp_path), str(tmp_path / "p.jsonl")):
            assert PairDataset(src, 8).get(0)[1] == "a red image"
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_each_epoch_visits_every_pair_once_in_a_new_order(tmp_path):
    """An epoch is one pass over the pairs: every pair once, then a new epoch (counted) starts a new order."""
    write_tar(str(tmp_path / "p.tar"), [(str(i), png((i * 20, 0, 0)), f"c{i}") for i in range(7)])
    stream = PairStream(PairDataset(str(tmp_path / "p.tar"), 8), batch=7, seed=0)
    first, second = stream.next()[1], stream.next()[1]
    assert sorted(first) == sorted(second) == [f"c{i}" for i in range(7)] and first != second
    assert (stream.state_dict()["epoch"], stream.state_dict()["pos"]) == (1, 7)
    stream.next()
    assert (stream.state_dict()["epoch"], stream.state_dict()["pos"]) == (2, 7)
    a = PairStream(stream.ds, batch=3, seed=0)
    for _ in range(3):
        a.next()                                                        # 9 draws: epoch 1, position 2
    b = PairStream(stream.ds, batch=3, seed=0)
    b.load_state_dict(a.state_dict())                                   # resumed mid-way through epoch 1
    assert [b.next()[1] for _ in range(3)] == [a.next()[1] for _ in range(3)]


def test_bad_samples_are_logged_once_and_stay_skipped_after_a_resume(tmp_path, capsys):
    """A bad sample is reported once, not at every epoch; a resumed stream skips the samples the run had skipped
    without reading them again."""
    tar = str(tmp_path / "p.tar")
    write_tar(tar, [("a", png("red"), "red"), ("b", b"garbage", "broken"), ("c", png("blue"), " ")])
    stream = PairStream(PairDataset(tar, 8), batch=6, seed=0)
    stream.next()
    err = capsys.readouterr().err
    assert err.count("skipping b: unreadable image") == 1 and err.count("skipping c: empty caption") == 1
    resumed = PairDataset(tar, 8)
    resumed.pairs[1].load_bytes = lambda: pytest.fail("a sample known to be bad was read again")
    PairStream(resumed, batch=6, seed=0).load_state_dict(stream.state_dict())
    assert resumed.get(1) is None and resumed.skipped == {"bad_image": 1, "empty_caption": 1}


def test_sources_with_nothing_to_train_on_are_refused_up_front(tmp_path):
    """An empty (0-byte) .jsonl or .tar fails the cheap --data check; a jsonl of blank lines holds no pairs; an
    image side below 1 is refused before indexing (every image would be 'bad')."""
    for name in ("e.jsonl", "e.tar"):
        (tmp_path / name).write_bytes(b"")
        bad = check_source(str(tmp_path / name))
        assert len(bad) == 1 and "empty (0 bytes" in bad[0]
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    with pytest.raises(ValueError, match="holds no .image, caption. pairs"):
        PairDataset(str(tmp_path / "blank.jsonl"), 8)
    write_tar(str(tmp_path / "p.tar"), [("a", png("red"), "red")])
    for size in (0, -1, 8.0):
        with pytest.raises(ValueError, match="--image_size must be a positive int"):
            PairDataset(str(tmp_path / "p.tar"), size)
    assert PairDataset(str(tmp_path / "p.tar"), 1).get(0)[0].shape == (3, 1, 1)


def test_blank_jsonl_lines_and_tar_folders_are_not_samples(tmp_path):
    """Blank lines of a jsonl and folder entries of a tar are layout, not samples: nothing is indexed or skipped
    for them."""
    import tarfile
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    (tmp_path / "p.jsonl").write_text("\n" + json.dumps({"image": "a.png", "caption": "a red image"}) + "\n\n")
    assert len(PairDataset(str(tmp_path / "p.jsonl"), 8)) == 1
    with tarfile.open(tmp_path / "d.tar", "w") as tf:
        for name, payload in (("sub", None), ("sub/k.png", png("red")), ("sub/k.txt", b"a red image")):
            info = tarfile.TarInfo(name)
            if payload is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    stream = PairStream(PairDataset(str(tmp_path / "d.tar"), 8), batch=2, seed=0)
    assert len(stream.ds) == 1 and stream.next()[1] == ["a red image"] * 2
    assert stream.stats() == {"skipped_bad_image": 0, "skipped_empty_caption": 0}
