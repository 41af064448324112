"""Shared pytest setup: offline hubs, repo root on sys.path, a few threads.

Run the suite from the repository root:  pytest -q
"""
import os
import sys

# Model hubs are unreachable in CI: anything that would download must fail fast with a clear message.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def toy_cache(tmp_path_factory):
    """Build the tiny toy world once for the whole session (seconds); used by test_train, test_toy_eval and
    test_toy_reproduce."""
    import toy_world
    d = str(tmp_path_factory.mktemp("toy_cache"))
    toy_world.load_toy(toy_world.ToyConfig.tiny(), cache_dir=d, progress=False)
    return d
