"""Tests for ckpt.py: training-checkpoint save / list / resume past a corrupt file, load_ckpt errors, check_path on
local and hf:// paths (hub cache only, never downloading), cached_download offline.

Run: pytest -q tests/test_ckpt.py   (CPU, offline, a few seconds; the upstream-weights readers are tested in
tests/test_vq.py and tests/test_policy.py)
"""
import os

import pytest
import torch

import ckpt


# ------------------------------------------------------------------------------------------- training checkpoints
def test_atomic_save_list_and_resume_past_a_corrupt_file(tmp_path, capsys):
    assert ckpt.list_ckpts(str(tmp_path / "none")) == []
    for step in (3, 1, 2):
        ckpt.atomic_save({"step": step}, str(tmp_path / f"ckpt_{step:07d}.pt"))
    (tmp_path / "other.pt").write_bytes(b"x")                       # not a ckpt_*.pt: ignored
    names = [os.path.basename(p) for p in ckpt.list_ckpts(str(tmp_path))]
    assert names == ["ckpt_0000001.pt", "ckpt_0000002.pt", "ckpt_0000003.pt"]
    assert not list(tmp_path.glob("*.tmp"))
    ck, path = ckpt.load_latest_ckpt(str(tmp_path))
    assert ck["step"] == 3 and path.endswith("ckpt_0000003.pt")
    newest = tmp_path / "ckpt_0000003.pt"
    newest.write_bytes(newest.read_bytes()[:20])                      # a kill mid-write
    ck, path = ckpt.load_latest_ckpt(str(tmp_path))
    assert ck["step"] == 2 and "unreadable" in capsys.readouterr().err
    for p in tmp_path.glob("ckpt_*.pt"):
        p.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no readable checkpoint"):
        ckpt.load_latest_ckpt(str(tmp_path))


def test_load_ckpt_errors_name_the_flag(tmp_path):
    good = tmp_path / "ckpt_0000001.pt"
    ckpt.atomic_save({"step": 1, "gpt": {}}, str(good))
    assert ckpt.load_ckpt(str(good), need=("step",))["step"] == 1
    cases = {"missing": (tmp_path / "missing.pt", "no such file"), "folder": (tmp_path, "is a folder"),
             "truncated": (tmp_path / "t.pt", "cannot be read"), "keys": (good, "lacks ['vq']")}
    (tmp_path / "t.pt").write_bytes(good.read_bytes()[:30])
    for name, (path, words) in cases.items():
        with pytest.raises(ckpt.CkptError) as err:
            ckpt.load_ckpt(str(path), flag="--resume_from", need=("step", "vq"))
        msg = str(err.value)
        assert msg.startswith("--resume_from ") and words in msg and "\n" not in msg, (name, msg)


# ------------------------------------------------------------------------------------------- check_path
def test_check_path_local(tmp_path):
    f = tmp_path / "w.pt"
    f.write_bytes(b"weights")
    assert ckpt.check_path("--vq_ckpt", str(f)) is None
    assert ckpt.check_path("--data", str(f), "file_or_dir") is None
    assert ckpt.check_path("--data", str(tmp_path), "file_or_dir") is None
    assert ckpt.check_path("--out", str(tmp_path), "dir") is None
    msg = ckpt.check_path("--vq_ckpt", str(tmp_path / "nope.pt"))
    assert msg.startswith("--vq_ckpt ") and "nope.pt" in msg and "no such file" in msg
    assert "does not exist either" in ckpt.check_path("--vq_ckpt", str(tmp_path / "a" / "b.pt"))
    ckpt.atomic_save({}, str(tmp_path / "ckpt_0000005.pt"))
    msg = ckpt.check_path("--ckpt", str(tmp_path))                    # a run folder: suggests its newest ckpt
    assert "is a folder" in msg and "ckpt_0000005.pt" in msg
    assert "is a file, not a folder" in ckpt.check_path("--out", str(f), "dir")
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "empty (0 bytes" in ckpt.check_path("--gpt_ckpt", str(tmp_path / "empty.pt"))
    assert "no path given" in ckpt.check_path("--gpt_ckpt", "")
    assert "a train.py checkpoint" in ckpt.check_path("--ckpt", None, what="a train.py checkpoint")
    with pytest.raises(ValueError, match="kind"):
        ckpt.check_path("--x", str(f), "folder")


def _fake_hub_cache(root, repo_id, filename, sha="0" * 40):
    """The huggingface_hub cache layout: models--owner--repo/{refs/main, snapshots/<sha>/<filename>}."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    (repo / "snapshots" / sha).mkdir(parents=True)
    (repo / "snapshots" / sha / filename).write_bytes(b"weights")


def test_check_path_hub_never_downloads(tmp_path, monkeypatch):
    import huggingface_hub
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("check_path downloaded"))
    _fake_hub_cache(tmp_path, "peizesun/llamagen_t2i", "vq_ds16_t2i.pt")
    assert ckpt.check_path("--vq_ckpt", "hf://peizesun/llamagen_t2i/vq_ds16_t2i.pt") is None       # cached
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg = ckpt.check_path("--gpt_ckpt", "hf://peizesun/llamagen_t2i/t2i_XL_stage1_256.pt")          # not cached
    assert msg.startswith("--gpt_ckpt 'hf://peizesun/llamagen_t2i/t2i_XL_stage1_256.pt'") and "HF_HUB_OFFLINE" in msg
    assert "https://huggingface.co/peizesun/llamagen_t2i/resolve/main/t2i_XL_stage1_256.pt" in msg
    assert "--gpt_ckpt /path/t2i_XL_stage1_256.pt" in msg and str(tmp_path) in msg
    assert "owner/repo/filename" in ckpt.check_path("--gpt_ckpt", "hf://peizesun/x.pt")
    assert "not a folder" in ckpt.check_path("--out", "hf://a/b/c", "dir")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(ckpt, "_probe", {"why": None})                                  # the hub answers
    assert ckpt.check_path("--gpt_ckpt", "hf://peizesun/llamagen_t2i/t2i_XL_stage1_256.pt") is None  # online: later


def _hub_at(monkeypatch, endpoint):
    """Online by the settings (no HF_HUB_OFFLINE, no proxy), with the hub at `endpoint`, not probed yet."""
    import huggingface_hub.constants as c
    for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") + ckpt._PROXY_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "ENDPOINT", endpoint)
    monkeypatch.setattr(ckpt, "_probe", {})
    return c


def _closed_port():
    import socket
    with socket.socket() as s:           # bind, read the port, close: nothing listens there afterwards
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_hub_switches_to_offline(monkeypatch, tmp_path, capsys):
    """No network and no HF_HUB_OFFLINE: huggingface_hub would retry for 20-50 s before failing. One probe switches
    the process to offline mode, so the hub path fails at once with the instructions (and a cached file works)."""
    import huggingface_hub
    c = _hub_at(monkeypatch, f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    _fake_hub_cache(tmp_path, "peizesun/llamagen_t2i", "vq_ds16_t2i.pt")
    calls = []
    real_download = huggingface_hub.hf_hub_download
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: calls.append(c.HF_HUB_OFFLINE)
                        or real_download(*a, **k))
    with pytest.raises(FileNotFoundError, match=r"could not fetch hf://peizesun/llamagen_t2i/t2i_XL_stage1_256\.pt"):
        ckpt.resolve("hf://peizesun/llamagen_t2i/t2i_XL_stage1_256.pt")
    assert calls == [True]                               # the download ran in offline mode (cache only, no retries)
    assert ckpt.hub_offline() and "HF_HUB_OFFLINE" not in os.environ   # other hosts stay allowed:
    fetched = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, dst, **k: fetched.append(url)
                        or open(dst, "wb").close())
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch_hub"))
    ckpt.cached_download(None, "https://download.pytorch.org/models/x.pth", "x.pth is missing.")
    assert fetched == ["https://download.pytorch.org/models/x.pth"]     # the torch-hub download still runs
    assert "cannot reach 127.0.0.1" in capsys.readouterr().err
    assert ckpt.resolve("hf://peizesun/llamagen_t2i/vq_ds16_t2i.pt").startswith(str(tmp_path))   # cache still works
    msg = ckpt.check_path("--gpt_ckpt", "hf://peizesun/llamagen_t2i/t2i_XL_stage1_256.pt")
    assert msg and "hub is unreachable" in msg


def test_reachable_hub_or_proxy_stays_online(monkeypatch):
    """A hub that answers leaves the process online; behind a proxy nothing is probed (a direct connection would
    fail there while the proxy works); the probe runs once per process."""
    import socket
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        c = _hub_at(monkeypatch, f"http://127.0.0.1:{server.getsockname()[1]}")
        assert ckpt.offline_if_unreachable() is False and c.HF_HUB_OFFLINE is False
        assert ckpt._probe == {"why": None}
    monkeypatch.setattr(ckpt, "_unreachable", lambda *a: pytest.fail("probed twice"))
    assert ckpt.offline_if_unreachable() is False                                   # the one probe's answer
    c = _hub_at(monkeypatch, f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert ckpt.offline_if_unreachable() is False and "HF_HUB_OFFLINE" not in os.environ


def test_cached_download_offline_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    assert ckpt.cached_download("given/path.pth", "https://example.org/w.pth", "hint") == "given/path.pth"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"offline.*w\.pth is missing.*checkpoints"):
        ckpt.cached_download(None, "https://example.org/w.pth", "w.pth is missing: pass --w PATH.")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "w.pth").write_bytes(b"x")
    assert ckpt.cached_download(None, "https://example.org/w.pth", "") == str(tmp_path / "checkpoints" / "w.pth")
