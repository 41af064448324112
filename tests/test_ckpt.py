"""Tests for ckpt.py: training-checkpoint save / list / resume past a corrupt file, load_ckpt errors, check_path on
local and hf:// paths (hub cache only, never downloading), cached_download offline.

Run: pytest -q tests/test_ckpt.py   (CPU, offline, a few seconds; the upstream-weights readers are tested in
tests/test_vq.py and tests/test_policy.py)
"""
import os
import sys

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


# ------------------------------------------------------------------------------------------- writes that lose nothing
def test_atomic_save_killed_mid_write_keeps_the_previous_file(tmp_path, monkeypatch):
    """A kill while torch.save writes leaves the previous checkpoint under its name, readable, and writes nothing
    outside the checkpoint's folder (the temporary file lies beside it, on the same file system)."""
    path = str(tmp_path / "run" / "ckpt_0000001.pt")
    os.makedirs(os.path.dirname(path))
    ckpt.atomic_save({"step": 1}, path)
    real_save = torch.save

    def killed(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", killed)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        ckpt.atomic_save({"step": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert ckpt.load_latest_ckpt(str(tmp_path / "run"))[0] == {"step": 1}
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_atomic_save_syncs_the_data_before_the_rename_and_the_rename_after(tmp_path, monkeypatch):
    """Durable against a power loss: the whole file is fsync'ed before it is renamed into place, and the folder
    (the rename itself) after."""
    import stat
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("dir", st.st_ino) if stat.S_ISDIR(st.st_mode) else ("file", st.st_size))
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", os.path.basename(b)))
                        or real_replace(a, b))
    path = tmp_path / "ckpt_0000001.pt"
    ckpt.atomic_save({"w": torch.arange(1000)}, str(path))
    assert events == [("file", path.stat().st_size), ("replace", path.name), ("dir", tmp_path.stat().st_ino)]


# ------------------------------------------------------------------------------------------- reading weights
def test_read_state_dict_strips_compile_prefixes_and_refuses_what_is_not_a_state_dict(tmp_path):
    """torch.compile'd keys (a wrapped submodule or the whole model, under DDP too) load under their plain names; a
    file that is no dict of tensors, or that pickles other Python objects (never unpickled), is an error."""
    import datetime
    w = torch.ones(2)
    torch.save({"model": {"blocks._orig_mod.w": w, "_orig_mod.module.head.b": w}}, tmp_path / "c.pt")
    assert sorted(ckpt.read_state_dict(str(tmp_path / "c.pt"))) == ["blocks.w", "head.b"]
    torch.save(w, tmp_path / "tensor.pt")
    with pytest.raises(RuntimeError, match="no state dict found"):
        ckpt.read_state_dict(str(tmp_path / "tensor.pt"))
    torch.save({"model": {"w": w}, "saved_on": datetime.date(2024, 1, 1)}, tmp_path / "obj.pt")
    with pytest.raises(RuntimeError, match="Python objects other than tensors"):
        ckpt.read_state_dict(str(tmp_path / "obj.pt"))
    with pytest.raises(ckpt.CkptError, match="cannot be read by torch.load"):     # a training checkpoint alike
        ckpt.load_ckpt(str(tmp_path / "obj.pt"))


# ------------------------------------------------------------------------------------------- offline switches
def test_hf_hub_offline_in_the_environment_is_offline_without_a_probe(monkeypatch):
    """HF_HUB_OFFLINE set after huggingface_hub was imported (its constant still False) counts, and an offline
    process never probes the network."""
    c = _hub_at(monkeypatch, "https://huggingface.co")
    monkeypatch.setattr(ckpt, "_unreachable", lambda *a: pytest.fail("probed although offline"))
    assert ckpt.hub_offline() is False
    monkeypatch.setenv("HF_HUB_OFFLINE", "yes")
    assert ckpt.hub_offline() is True and ckpt.offline_if_unreachable() is True and c.HF_HUB_OFFLINE is False


def test_unreachable_hub_answers_offline_on_the_first_call(monkeypatch, capsys):
    """The probe's own call already answers True (offline) when the hub cannot be reached, and says so."""
    c = _hub_at(monkeypatch, f"http://127.0.0.1:{_closed_port()}")
    assert ckpt.offline_if_unreachable() is True and c.HF_HUB_OFFLINE is True
    assert "offline mode" in capsys.readouterr().err


def test_without_huggingface_hub_only_an_unreachable_hub_is_offline(monkeypatch):
    """No huggingface_hub installed: offline only by HF_HUB_OFFLINE or a failed probe (nothing to switch then)."""
    _hub_at(monkeypatch, "https://huggingface.co")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)                 # import fails
    assert ckpt.hub_offline() is False
    monkeypatch.setattr(ckpt, "_unreachable", lambda endpoint, timeout: f"cannot reach {endpoint}")
    assert ckpt.offline_if_unreachable() is True and ckpt._probe == {"why": "cannot reach https://huggingface.co"}


def test_probe_uses_the_scheme_port_and_gives_up_on_a_hung_lookup(monkeypatch):
    """The probe connects to the endpoint's port (443 for https, 80 for http, an explicit one as given); an answer
    within the timeout is reachable; a lookup that hangs (getaddrinfo ignores socket timeouts) is given up after
    about timeout + 1 s, in a daemon thread that cannot keep the process alive."""
    import socket
    import threading
    import time
    seen, hang, delay = [], threading.Event(), []

    def connect(address, timeout):
        seen.append(address)
        if hang.is_set():
            threading.Event().wait(30)
        time.sleep(delay[0] if delay else 0)
        return socket.socket()
    monkeypatch.setattr(socket, "create_connection", connect)
    for endpoint in ("https://hub.example", "http://hub.example", "http://hub.example:8080"):
        assert ckpt._unreachable(endpoint, 1.0) is None
    assert seen == [("hub.example", 443), ("hub.example", 80), ("hub.example", 8080)]
    delay.append(1.1)
    assert ckpt._unreachable("https://hub.example", 1.5) is None                 # slow, yet within the timeout
    hang.set()
    t0 = time.perf_counter()
    why = ckpt._unreachable("https://hub.example", 0.05)
    assert why == "no answer from hub.example:443 within 0.05 s" and time.perf_counter() - t0 < 1.5
    probes = [t for t in threading.enumerate() if t.name.endswith("(connect)")]
    assert probes and all(t.daemon for t in probes)


# ------------------------------------------------------------------------------------------- paths and downloads
def test_cached_download_into_an_existing_cache_folder(tmp_path, monkeypatch):
    """Online, a file missing from an existing torch-hub checkpoints folder is downloaded there (the folder's
    existence is no error)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, dst, **k: open(dst, "wb").close())
    assert ckpt.cached_download(None, "https://example.org/w.pth", "") == str(tmp_path / "checkpoints" / "w.pth")


def test_check_path_takes_path_objects_and_names_unreadable_files(tmp_path, monkeypatch):
    """A pathlib.Path is a path like its string; a file this user cannot read is named as such (simulated: the
    tests may run as root, who reads everything)."""
    f = tmp_path / "w.pt"
    f.write_bytes(b"weights")
    assert ckpt.check_path("--vq_ckpt", f) is None and ckpt.check_path("--out", tmp_path, "dir") is None
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: p != str(f) and real_access(p, mode))
    assert "not readable by this user" in ckpt.check_path("--vq_ckpt", f)
