"""Issue 18, item 4 on the command line: `ntkit fit`'s table shows the phase bar after the delay."""

from __future__ import annotations

import numpy as np


def test_cli_fit_table_shows_the_phase_bar_after_the_delay():
    """The fit table's bar names the phase (the kernel, the solve, an epoch) and counts it."""
    from ntkit.cli.fit_cmd import _EpochTable

    table = _EpochTable("t", enabled=True, delay=0.0)
    with table:
        table.stage("kernel 80 x 80")
        table(0, 4)
        table(3, 4)
        task = table.bar.tasks[0]
        assert task.description == "kernel 80 x 80" and task.completed == 3 and task.total == 4
        table.stage("epoch 1/2")
        table(1, 5)
        assert [t.description for t in table.bar.tasks] == ["epoch 1/2"]
    quiet = _EpochTable("t", enabled=True, delay=3600.0)
    quiet(1, 2)  # before the delay: nothing shown
    assert quiet.live is None
    np.testing.assert_equal(len(quiet.bar.tasks), 0)
