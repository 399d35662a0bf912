"""`ntkit.compute` refuses a budget it cannot hold before it creates the store (issue 13, item 2)."""

from __future__ import annotations

import pytest
import torch

import ntkit
from ntkit.schedule import BudgetTooSmallError


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def test_compute_refuses_an_absurd_budget_before_creating_the_store(tmp_path):
    with pytest.raises(BudgetTooSmallError, match=r"--memory \d+MB or more"):
        ntkit.compute(_net(), torch.randn(6, 4), store=tmp_path / "K.zarr", memory=1000)
    assert not (tmp_path / "K.zarr").exists()
