"""Shared fixtures: the real Fashion-MNIST files and small real-data subsets."""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir():
    from vggdeploy.data import find_data_dir

    return find_data_dir()


@pytest.fixture(scope="session")
def test_split(data_dir):
    from vggdeploy.data import load_split

    return load_split("test", data_dir)
