"""bench/kernels.py's checkpoint hash: equal tensors give equal hashes whatever else the file holds; one changed
bit in any model gives another hash.  Run: pytest -q tests/test_bench_kernels.py"""
import torch

from bench.kernels import checkpoint_hash


def test_checkpoint_hash(tmp_path):
    g = torch.Generator().manual_seed(0)
    parts = {p: {"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g), "n": torch.tensor(7)}
             for p in ("gpt", "vq", "ema_vq", "disc")}
    torch.save({**parts, "config": {"seed": 1}}, tmp_path / "a.pt")
    torch.save({**parts, "config": {"seed": 2}, "step": 3}, tmp_path / "b.pt")     # other non-model entries
    assert checkpoint_hash(tmp_path / "a.pt") == checkpoint_hash(tmp_path / "b.pt")
    w = parts["disc"]["w"].clone()
    w.view(torch.int32)[0, 0] ^= 1                                                   # one bit of one float
    torch.save({**parts, "disc": {**parts["disc"], "w": w}}, tmp_path / "c.pt")
    assert checkpoint_hash(tmp_path / "c.pt") != checkpoint_hash(tmp_path / "a.pt")
