"""`ntkit._runtime.rss.reset_peak`: the high-water mark the budget tests and benchmark measure from."""

from __future__ import annotations

import numpy as np
import pytest

from ntkit._runtime.rss import reset_peak, status


def test_reset_peak_brings_the_high_water_mark_down_to_rss():
    if status() is None or not reset_peak():
        pytest.skip("peak RSS cannot be reset here (Linux /proc/self/clear_refs)")
    big = np.ones(200 * 2**20 // 8)  # 200 MB touched, then freed
    del big
    rss, hwm = status()
    assert hwm - rss > 100 * 2**20  # the freed block left the peak high
    assert reset_peak()
    rss, hwm = status()
    assert hwm - rss < 20 * 2**20
