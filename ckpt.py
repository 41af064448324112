"""Checkpoint plumbing: read upstream weights, load them strictly, save and resume training checkpoints, and check
user-given paths before anything heavy runs. A leaf: imports no repository module, so any file may import it.

Concept: none of RankE's maths lives here; this is what every entry point needs around it (docs/method.md §13.1,
§13.4, §13.14.5 for the upstream-weights rules):
  read_state_dict(path | hf://owner/repo/file) -> flat {key: tensor}: unwraps LlamaGen's {"model": ..., "args":
      Namespace} wrapper, strips DDP / torch.compile prefixes, drops runtime buffers (KV caches, RoPE tables, masks);
  load_strict(model, state_dict, source=...)   strict load preceded by a readable key / shape comparison;
  resolve(hf://...)                            hub path -> local file (huggingface_hub cache), fails fast offline;
  offline_if_unreachable()                     an unreachable hub switches the process to offline mode (one probe);
  cached_download(path, url, hint)             a local file, the torch-hub cache, or a download of url;
  atomic_save / list_ckpts / load_latest_ckpt  train.py's checkpoints ckpt_*.pt: written through a temp file and
      os.replace (a kill mid-write keeps the previous one), resumed from the newest READABLE one;
  load_ckpt(path, flag=..., need=...)          one training checkpoint, every failure a CkptError naming the flag;
  check_path(flag, value, kind)                None if a user path is usable, else a one-line error naming the flag,
      the value and the fix; an hf:// path is looked up in the local hub cache only (never downloaded here).

Run the self-check (CPU, a second):  python ckpt.py
Tests: pytest -q tests/test_ckpt.py (and the loading tests in tests/test_vq.py, tests/test_policy.py).
Depends on: torch; huggingface_hub only for hf:// paths (imported inside the functions that need it).
Symbols: sd = state dict {key: tensor}; "hf://owner/repo/file" = file `file` of Hugging Face model repo owner/repo.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

_DROP = ("kv_cache", "freqs_cis", "causal_mask")  # never part of a model's weights (docs/method.md §13.14.3)
_TRUE = ("1", "ON", "YES", "TRUE")                 # how huggingface_hub reads a boolean environment variable


class CkptError(ValueError):
    """A checkpoint path or file that cannot be used; the message names the flag, the value and the fix."""


# =================================================================================================================
# Hugging Face Hub paths (hf://owner/repo/filename)
# =================================================================================================================
def _split_hub(path_or_hub: str) -> tuple[str, str]:
    """'hf://owner/repo/sub/file.pt' -> ('owner/repo', 'sub/file.pt'); a malformed path is a ValueError."""
    parts = path_or_hub[len("hf://"):].split("/")
    if len(parts) < 3 or not all(parts):
        raise ValueError(f"bad hub path {path_or_hub!r}: expected 'hf://owner/repo/filename'")
    return "/".join(parts[:2]), "/".join(parts[2:])


def _hub_url(repo_id: str, filename: str) -> str:
    return f"https://huggingface.co/{repo_id}/resolve/main/{filename}"


def _guess_flag(filename: str) -> str:
    # The two train.py flags that take upstream weights; only used to word the error message.
    return "--vq_ckpt" if "vq" in os.path.basename(filename).lower() else "--gpt_ckpt"


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE is set (the environment variable, or huggingface_hub's constant read at import)."""
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE:
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
_probe: dict = {}   # this process's one probe of the hub: {"why": None (reachable) or the reason it is not}


def _unreachable(endpoint: str, timeout: float) -> str | None:
    """None when a TCP connection to the endpoint's host opens within `timeout` s, else the reason. In a daemon
    thread, because a name lookup (getaddrinfo) ignores socket timeouts."""
    import socket
    import threading
    import urllib.parse
    url = urllib.parse.urlsplit(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    out: list = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            out.append(None)
        except OSError as e:
            out.append(f"cannot reach {host}:{port} ({type(e).__name__}: {e})")
    t = threading.Thread(target=connect, daemon=True)
    t.start()
    t.join(timeout + 1.0)
    return out[0] if out else f"no answer from {host}:{port} within {timeout:g} s"


def offline_if_unreachable(timeout: float = 3.0) -> bool:
    """True when this process is offline for the Hugging Face Hub. When HF_HUB_OFFLINE is not set and the hub
    cannot be reached, switch to offline mode (huggingface_hub's constant, which huggingface_hub, open_clip and
    transformers read at each call), so that every hub lookup answers from the local cache at once instead of
    retrying for 20-50 s and failing anyway. No probe behind a proxy (a direct connection says nothing there); one
    probe per process; entry points call this before their first hub lookup."""
    if hub_offline():
        return True
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return False
    if "why" not in _probe:
        try:
            from huggingface_hub import constants
            endpoint = constants.ENDPOINT
        except ImportError:
            endpoint = "https://huggingface.co"
        _probe["why"] = _unreachable(endpoint, timeout)
    if _probe["why"] is None:
        return False
    try:   # huggingface_hub's constant only, not the environment: other hosts (torch hub downloads) may still answer
        from huggingface_hub import constants
        constants.HF_HUB_OFFLINE = True
    except ImportError:
        return True   # no huggingface_hub: no hub lookup can happen, nothing to switch
    print(f"[hub] {_probe['why']}: offline mode, Hugging Face files come from the local cache only "
          f"(set HF_HUB_OFFLINE=1 to skip this check)", file=sys.stderr, flush=True)
    return True


def _hub_cache_dir() -> str:
    try:
        from huggingface_hub import constants
        return constants.HF_HUB_CACHE
    except ImportError:
        return os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub")


def resolve(path_or_hub: str, *, flag: str | None = None) -> str:
    """A local path is returned as is; 'hf://owner/repo/filename' -> local path via huggingface_hub (its cache
    first, else a download). Offline / no route / 404 / gated: FileNotFoundError saying where to put the file."""
    if not path_or_hub.startswith("hf://"):
        return path_or_hub
    repo_id, filename = _split_hub(path_or_hub)
    flag = flag or _guess_flag(filename)
    url = _hub_url(repo_id, filename)
    try:
        from huggingface_hub import hf_hub_download
        offline_if_unreachable()            # an unreachable hub: the cache answers at once (no 20-50 s of retries)
        return hf_hub_download(repo_id, filename)
    except Exception as e:  # offline (LocalEntryNotFoundError), no route, 404, gated, ...: chained, not swallowed
        raise FileNotFoundError(
            f"could not fetch {path_or_hub} from the Hugging Face Hub ({type(e).__name__}: {e}). "
            f"Download {url} and pass its local path instead (e.g. {flag} /path/{os.path.basename(filename)})."
        ) from e


def cached_download(path: str | None, url: str, hint: str) -> str:
    """`path` if given; else the torch-hub cache copy of `url` (TORCH_HOME/hub/checkpoints/<basename>); else a
    download into that cache. HF_HUB_OFFLINE (the project's offline switch) -> FileNotFoundError(hint) without
    touching the network. `hint` says which file is missing and how to pass it."""
    if path is not None:
        return path
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    if os.path.isfile(cached):
        return cached
    hint = f"{hint} Or put it at {cached}."
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE:   # the user's switch (not a probe of another host)
        raise FileNotFoundError(f"offline (HF_HUB_OFFLINE=1). {hint}")
    try:
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        torch.hub.download_url_to_file(url, cached, progress=False)  # writes a temp file, then renames
    except Exception as e:
        raise FileNotFoundError(f"download failed ({type(e).__name__}: {e}). {hint}") from e
    return cached


# =================================================================================================================
# Upstream weights (docs/method.md §13.1, §13.4, §13.14.5)
# =================================================================================================================
def read_state_dict(path_or_hub: str, *, map_location="cpu", flag: str | None = None) -> dict[str, torch.Tensor]:
    """Local path or 'hf://owner/repo/filename' -> flat {key: tensor}: unwraps LlamaGen's {"model": ..., "args":
    Namespace} wrapper, strips DDP / torch.compile prefixes, drops runtime buffers (KV caches, RoPE tables, masks).
    flag: the command-line flag the path came from (for error messages; guessed from the file name if None)."""
    path = resolve(path_or_hub, flag=flag)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path!r} (check the path, or download the file there)")
    torch.serialization.add_safe_globals([argparse.Namespace])  # LlamaGen files may carry "args" (§13.14.5)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        if "weights only load failed" in str(e).lower() and "unsupported global" in str(e).lower():
            raise RuntimeError(f"{path}: holds Python objects other than tensors/argparse.Namespace; re-save it "
                               f"as a plain state_dict (torch.save(model.state_dict(), ...)). ({e})") from e
        raise RuntimeError(f"{path}: cannot be read by torch.load: file is corrupt or truncated; re-download it "
                           f"({type(e).__name__}: {e})") from e
    sd = ckpt  # §13.1 step 1: unwrap "model", else "module", else "state_dict", else take the raw dict
    if isinstance(ckpt, dict):
        sd = next((ckpt[w] for w in ("model", "module", "state_dict") if isinstance(ckpt.get(w), dict)), ckpt)
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        top = list(ckpt)[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise RuntimeError(f"{path}: no state dict found (top level: {top}); expected a dict of tensors, "
                           f"optionally under 'model', 'module' or 'state_dict'")
    out = {}
    for k, v in sd.items():
        while k.startswith(("module.", "_orig_mod.")):  # §13.1 step 2 (DDP, torch.compile prefixes)
            k = k.split(".", 1)[1]
        k = k.replace("._orig_mod.", ".")  # torch.compile'd submodule
        if not any(d in k.split(".") for d in _DROP):  # §13.1 step 3
            out[k] = v
    return out


def load_strict(model: torch.nn.Module, state_dict: dict, *, source: str) -> None:
    """load_state_dict(strict=True) preceded by a readable key / shape comparison (docs/method.md §13.4)."""
    want = model.state_dict()
    missing = [k for k in want if k not in state_dict]
    unexpected = [k for k in state_dict if k not in want]
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(want[k].shape)}"
              for k in want if k in state_dict and state_dict[k].shape != want[k].shape]
    if missing or unexpected or shapes:
        lines = [f"cannot load {source} into {type(model).__name__} strictly (wrong config? wrong file?):"]
        for name, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                more = f" ... (+{len(items) - 10} more)" if len(items) > 10 else ""
                lines.append(f"  {len(items)} {name}: " + ", ".join(items[:10]) + more)
        raise RuntimeError("\n".join(lines))
    model.load_state_dict(state_dict, strict=True)


# =================================================================================================================
# Training checkpoints (train.py's out_dir/ckpt_{step:07d}.pt)
# =================================================================================================================
def atomic_save(obj, path: str) -> None:
    """torch.save through `path`.tmp + fsync + os.replace: a kill mid-write (or a power loss) leaves the previous
    file at `path` intact, never a truncated one under the final name."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if hasattr(os, "O_DIRECTORY"):                # the rename itself, on a POSIX file system
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def list_ckpts(out_dir: str) -> list[str]:
    """out_dir's ckpt_*.pt paths, oldest first (the zero-padded step in the name sorts them); [] if no folder."""
    names = sorted(n for n in os.listdir(out_dir) if n.startswith("ckpt_") and n.endswith(".pt")) \
        if os.path.isdir(out_dir) else []
    return [os.path.join(out_dir, n) for n in names]


def _torch_load(path: str):
    return torch.load(path, map_location="cpu", weights_only=True)


def load_latest_ckpt(out_dir: str):
    """-> (checkpoint dict, its path): the newest READABLE ckpt_*.pt of out_dir; an unreadable one (truncated by a
    kill mid-write, corrupt) is reported on stderr and the previous one is tried. None readable: FileNotFoundError."""
    for path in reversed(list_ckpts(out_dir)):
        try:
            return _torch_load(path), path
        except Exception as e:  # noqa: BLE001 -- any failure to read means: corrupt, fall back to the previous one
            print(f"[resume] {path} is unreadable ({type(e).__name__}: {str(e)[:200]}); "
                  f"it is probably truncated by a kill mid-write. Trying the previous checkpoint.", file=sys.stderr)
    raise FileNotFoundError(f"--resume: no readable checkpoint ckpt_*.pt in {out_dir!r}")


def load_ckpt(path: str, *, flag: str = "--ckpt", need: tuple = (), what: str = "a checkpoint file") -> dict:
    """One checkpoint dict (CPU tensors, weights_only). Every failure is a CkptError whose one-line message names
    `flag`, the path and what to pass instead: unusable path (check_path), unreadable file, not a dict, or a dict
    without the keys in `need`."""
    err = check_path(flag, path, "file", what=what)
    if err:
        raise CkptError(err)
    try:
        ck = _torch_load(resolve(path, flag=flag))
    except Exception as e:  # noqa: BLE001 -- truncated, corrupt, not a torch file, or foreign pickled objects
        raise CkptError(f"{flag} {path!r}: cannot be read by torch.load ({type(e).__name__}: {' '.join(str(e).split())[:160]}); the "
                        f"file is corrupt, truncated or not a torch checkpoint: pass {what}") from e
    missing = [k for k in need if not isinstance(ck, dict) or k not in ck]
    if missing:
        top = sorted(ck)[:8] if isinstance(ck, dict) else type(ck).__name__
        raise CkptError(f"{flag} {path!r}: lacks {missing} (top level: {top}); pass {what}")
    return ck


# =================================================================================================================
# User paths, checked before anything heavy runs
# =================================================================================================================
_KINDS = ("file", "dir", "file_or_dir")


def check_path(flag: str, value, kind: str = "file", *, what: str | None = None) -> str | None:
    """None when `value` (the argument of `flag`) is usable as a `kind` ("file", "dir" or "file_or_dir"); otherwise
    a one-line error naming the flag, the value and the fix. `what` words the fix ("a train.py checkpoint ...").
    hf://owner/repo/file (kind "file"/"file_or_dir"): never downloaded here. Cached locally -> None; not cached and
    HF_HUB_OFFLINE set -> an error saying where to put the file; not cached and online -> None (the load downloads
    it). A file of 0 bytes is an error (an interrupted write or download); contents are not read."""
    if kind not in _KINDS:
        raise ValueError(f"check_path(kind={kind!r}): use one of {_KINDS}")
    what = what or {"file": "the path of an existing file", "dir": "the path of an existing folder",
                    "file_or_dir": "the path of an existing file or folder"}[kind]
    if value is None or str(value).strip() == "":
        return f"{flag}: no path given; pass {what}"
    value = str(value)
    if value.startswith("hf://"):
        if kind == "dir":
            return f"{flag} {value!r}: a Hugging Face Hub path names a file, not a folder; pass {what}"
        return _check_hub(flag, value)
    if not os.path.exists(value):
        parent = os.path.dirname(os.path.abspath(value))
        where = "" if os.path.isdir(parent) else f" (its folder {parent!r} does not exist either)"
        return f"{flag} {value!r}: no such file or folder{where}; pass {what}"
    if kind == "file" and os.path.isdir(value):
        ck = list_ckpts(value)
        eg = f", e.g. {flag} {ck[-1]}" if ck else ""
        return f"{flag} {value!r} is a folder, not a file; pass {what}{eg}"
    if kind == "dir" and not os.path.isdir(value):
        return f"{flag} {value!r} is a file, not a folder; pass {what}"
    if not os.access(value, os.R_OK):
        return f"{flag} {value!r}: not readable by this user (permissions); fix them or pass another path"
    if os.path.isfile(value) and os.path.getsize(value) == 0:
        return f"{flag} {value!r} is empty (0 bytes: an interrupted write or download); re-create it or pass {what}"
    return None


def _check_hub(flag: str, value: str) -> str | None:
    try:
        repo_id, filename = _split_hub(value)
    except ValueError as e:
        return f"{flag}: {e}"
    url, base = _hub_url(repo_id, filename), os.path.basename(filename)
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return (f"{flag} {value!r}: hf:// paths need huggingface_hub (pip install huggingface_hub); or download "
                f"{url} and pass {flag} /path/{base}")
    try:
        hit = try_to_load_from_cache(repo_id, filename)   # str = cached file; None / sentinel = not (known) cached
    except ValueError as e:                               # e.g. a filename with ".." in it
        return f"{flag} {value!r}: not a usable hub file name ({e}); pass hf://owner/repo/filename or a local path"
    if isinstance(hit, str) and os.path.isfile(hit):
        return None
    if offline_if_unreachable():
        return (f"{flag} {value!r}: not in the local Hugging Face cache ({_hub_cache_dir()}) and offline "
                f"(HF_HUB_OFFLINE, or the hub is unreachable), so it cannot be downloaded. Download {url} "
                f"elsewhere and pass its local path ({flag} /path/{base}), or fill the cache (hf download {repo_id} "
                f"{filename}) on a machine "
                f"with network access and copy that cache here")
    return None   # online: the loader downloads it (and fails fast with instructions if that is impossible)


if __name__ == "__main__":   # a second on CPU: every helper on temp files, nothing downloaded
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        model = torch.nn.Linear(3, 2)
        sd = {"module." + k: v for k, v in model.state_dict().items()}
        sd["module.layers.0.attention.kv_cache.k_cache"] = torch.zeros(1)         # a runtime buffer: dropped
        torch.save({"model": sd, "args": argparse.Namespace(gpt_model="GPT-XL")}, os.path.join(d, "up.pt"))
        got = read_state_dict(os.path.join(d, "up.pt"))
        print("read_state_dict (LlamaGen wrapper, DDP prefix, KV cache):", sorted(got))
        load_strict(torch.nn.Linear(3, 2), got, source="up.pt")
        try:
            load_strict(torch.nn.Linear(3, 4), got, source="up.pt")
        except RuntimeError as e:
            print("load_strict on a wrong shape ->", str(e).splitlines()[1].strip())
        run = os.path.join(d, "run")
        os.makedirs(run)
        for step in (1, 2, 3):
            atomic_save({"step": step}, os.path.join(run, f"ckpt_{step:07d}.pt"))
        with open(os.path.join(run, "ckpt_0000003.pt"), "r+b") as f:                   # a kill mid-write
            f.truncate(10)
        ck, path = load_latest_ckpt(run)
        print(f"list_ckpts: {[os.path.basename(p) for p in list_ckpts(run)]}; load_latest_ckpt falls back past the "
              f"truncated one -> step {ck['step']} ({os.path.basename(path)})")
        for args in (("--ckpt", os.path.join(d, "missing.pt")), ("--ckpt", run), ("--out_dir", run, "dir"),
                     ("--gpt_ckpt", "hf://owner/repo"), ("--ckpt", os.path.join(run, "ckpt_0000001.pt"))):
            print(f"check_path{args[:2]} -> {check_path(*args)}")
        try:
            load_ckpt(os.path.join(run, "ckpt_0000003.pt"), need=("step",))
        except CkptError as e:
            print("load_ckpt on the truncated file ->", str(e)[:90], "...")
