"""Issue 13, item 8 in Python: resuming a store with another tile or a smaller memory budget is
refused (the engine's blocking changes a tile's bits, so a smaller plan would break the
bit-identical resume)."""

from __future__ import annotations

import pytest
import torch

import ntkit
from ntkit.store import StoreMismatchError


def test_python_api_resume_refuses_tile_and_smaller_memory(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    x = torch.randn(12, 4)
    path = tmp_path / "K.zarr"
    ntkit.compute(net, x, store=path, tile=4, memory="64MB")
    with pytest.raises(StoreMismatchError, match="its tiles are 4 x 4"):
        ntkit.compute(net, x, store=path, tile=6)
    with pytest.raises(StoreMismatchError, match="planned for"):
        ntkit.compute(net, x, store=path, memory="16MB")
    ntkit.compute(net, x, store=path, tile=4, memory="1GB")  # the store's plan fits: accepted
