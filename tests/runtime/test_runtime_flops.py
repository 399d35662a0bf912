"""`FlopCount` reports exactly what torch's FlopCounterMode reports (it reads the same formula
table), on convolutions, linear layers, batched matmuls and attention, and counts nothing twice
when nested inside another dispatch mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ntkit._runtime.flops import FlopCount


class _Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)
        self.lin = nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.conv(x)).flatten(2).transpose(1, 2)  # (n, 36, 8)
        a, _ = self.att(h, h, h, need_weights=False)
        g = torch.bmm(a, a.transpose(1, 2)) @ a
        return self.lin(g.mean(1))


@pytest.mark.parametrize("model, x", [
    (nn.Sequential(nn.Linear(7, 11), nn.Tanh(), nn.Linear(11, 3)), torch.randn(4, 7)),
    (_Mixed(), torch.randn(2, 3, 6, 6)),
    (nn.LSTM(4, 6, batch_first=True), torch.randn(3, 5, 4)),
])
def test_same_total_as_flop_counter_mode(model, x):
    with torch.no_grad():
        with FlopCounterMode(display=False) as ref:
            model(x)
        with FlopCount() as got:
            model(x)
    assert got.total == ref.get_total_flops()
    assert got.total > 0 or isinstance(model, nn.LSTM)  # the LSTM's fused kernel has no formula


def test_counts_once_and_returns_outputs_unchanged():
    model = nn.Linear(6, 4)
    x = torch.randn(3, 6)
    with torch.no_grad():
        want = model(x)
        with FlopCount() as outer:
            with FlopCount() as inner:
                y = model(x)
    assert torch.equal(y, want)
    assert inner.total == 2 * 3 * 6 * 4
    assert outer.total == inner.total
