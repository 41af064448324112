"""Shared pytest setup: offline hubs, repo root on sys.path, a few threads.

Run the suite from the repository root:  pytest -q   (everything; -m "not slow" skips the tests marked slow)
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


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs, subprocesses, 2-process runs, torch.compile, or more than "
                                       "~3 s on one thread; pytest -q -m 'not slow' is the quick inner loop")


@pytest.fixture(scope="session")
def toy_cache(tmp_path_factory):
    """Build the tiny toy world once for the whole session (seconds); used by test_train, test_toy_eval and
    test_toy_reproduce."""
    from toy import world as toy_world
    d = str(tmp_path_factory.mktemp("toy_cache"))
    toy_world.load_toy(toy_world.ToyConfig.tiny(), cache_dir=d, progress=False)
    return d
