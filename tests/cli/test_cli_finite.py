"""Issue 13, item 5 on the command line: huge inputs end in one `error:` line, exit 2, and no
output that looks complete.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ntkit.cli.app import main


def _npz(path, x):
    np.savez(path, x=x.astype(np.float32), y=np.arange(len(x)) % 3)
    return f"npz:{path}"


@pytest.mark.parametrize("suffix", [".npy", ".zarr"])
def test_cli_huge_inputs_exit_2_with_one_line_and_nothing_complete(tmp_path, capsys, suffix):
    x = np.random.default_rng(0).normal(size=(8, 4))
    x[5] *= 1e30
    out = tmp_path / f"K{suffix}"
    rc = main(["compute", _npz(tmp_path / "d.npz", x), "mlp:depth=2,width=8", "-o", str(out), "-q",
               "--method", "jacobian"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "error:" in err and "Traceback" not in err and "non-finite" in err and "max |x|" in err
    if suffix == ".npy":
        assert not out.exists() and not (tmp_path / "K.json").exists()
        assert not list(tmp_path.glob(".*.tmp"))
    else:
        meta = json.loads((out / "zarr.json").read_text())["attributes"]["ntkit"]
        assert meta["complete"] is False
