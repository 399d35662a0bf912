"""Issue 13, item 3 in the analysis: one stray label must not size the targets."""

from __future__ import annotations

import numpy as np
import pytest

from ntkit.data import LabelError


def test_analysis_targets_refuse_a_stray_label():
    from ntkit.analysis import gcv

    K = np.eye(4) + 0.1
    with pytest.raises(LabelError, match=r"y\[3\] = 1,000,000"):
        gcv(K, np.array([0, 1, 2, 10**6]), [1e-3])
    assert gcv(K, np.array([0, 1, 2, 10**6]), [1e-3], num_classes=10**6 + 1) is not None
