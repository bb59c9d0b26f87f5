import os

import hypothesis_profiles  # noqa: F401  (registers and loads the vispos hypothesis profile for every test)
import pytest
import torch


def pytest_configure(config):
    # keep the suite light on small CI machines; tests that need more threads set them explicitly
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
