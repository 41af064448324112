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


def test_bad_flags_and_a_failing_run_are_named(monkeypatch):
    """bench.kernels: --steps 1 left nothing for the median (StatisticsError) and a failing train.py showed only a
    CalledProcessError (its stderr was captured and dropped). bench.stages times RankE's stages: --method refused."""
    import subprocess
    import sys
    import pytest
    from bench import kernels, stages
    monkeypatch.setattr(sys, "argv", ["kernels", "--steps", "1"])
    with pytest.raises(SystemExit):
        kernels.main()
    monkeypatch.setattr(sys, "argv", ["kernels", "--settings", "unpinned"])
    monkeypatch.setattr(kernels.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "boom: why"))
    with pytest.raises(SystemExit, match="setting 'unpinned': train.py failed \\(exit 1\\):\nboom: why"):
        kernels.main()
    with pytest.raises(SystemExit, match="drop --method"):
        stages.main(["--scale", "tiny", "--device", "cpu", "--method", "grpo"])
