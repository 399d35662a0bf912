"""Issue 13, item 8: options `ntkit compute` used to ignore silently are now applied or refused.

- `--precision` is validated for every output and honoured for `-o K.npy` (recorded in the sidecar);
- `--batch-size` with a store is refused (a store plans its blocks under `--memory`);
- on resume, a different `--tile` is refused naming the store's tile, a `--memory` below the
  store's planned peak is refused (the engine's blocking changes a tile's bits, so a smaller plan
  would break the bit-identical resume), and one that fits is honoured and said so.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import ntkit
from ntkit.cli.app import main


DATA, MODEL = "digits[0:24]", "mlp:depth=2,width=8"


def test_invalid_precision_refused_for_npy(tmp_path, capsys):
    out = tmp_path / "K.npy"
    rc = main(["compute", DATA, MODEL, "-o", str(out), "--precision", "bogus", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown --precision 'bogus'" in err and "tf32x3" in err and "Traceback" not in err
    assert not out.exists()


def test_tf32x3_with_ntk_vp_refused_for_npy(tmp_path, capsys):
    rc = main(["compute", DATA, MODEL, "-o", str(tmp_path / "K.npy"), "--precision", "tf32x3", "--method",
               "ntk-vp", "-q"])
    assert rc == 2 and "--method ntk-vp" in capsys.readouterr().err


def test_precision_honoured_and_recorded_for_npy(tmp_path, capsys):
    from ntkit.data import resolve_kernel_data
    from ntkit._runtime.precision import gram_precision
    from ntkit.models import build_model

    out = tmp_path / "K.npy"
    assert main(["compute", DATA, MODEL, "-o", str(out), "--precision", "tf32x3", "--method", "jacobian"]) == 0
    assert "precision tf32x3" in capsys.readouterr().out
    assert json.loads((tmp_path / "K.json").read_text())["precision"] == "tf32x3"
    rows, _ = resolve_kernel_data(DATA, None)
    x = rows.tensors()[0].float()
    net = build_model(MODEL, rows.input_shape, rows.num_classes, seed=0).float()
    plain = ntkit.ntk(net, x, output="trace", method="jacobian").numpy()
    with gram_precision("tf32x3"):
        split = ntkit.ntk(net, x, output="trace", method="jacobian").numpy()
    K = np.load(out)
    assert not np.array_equal(plain, split)  # the option is observable on this kernel
    np.testing.assert_array_equal(K, split)


def test_batch_size_refused_for_a_store(tmp_path, capsys):
    out = tmp_path / "K.zarr"
    rc = main(["compute", DATA, MODEL, "-o", str(out), "--batch-size", "4", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "--batch-size" in err and "--memory" in err
    assert not out.exists()


@pytest.fixture
def half_done(tmp_path):
    """A store of 6 tiles (8 x 8) with one tile's record missing, as after a crash."""
    out = tmp_path / "K.zarr"
    assert main(["compute", DATA, MODEL, "-o", str(out), "--tile", "8", "--memory", "64MB", "-q"]) == 0
    full = ntkit.open(out).to_numpy()
    (out / "tiles" / "1.2.json").unlink()
    return out, full


def test_resume_with_another_tile_refused_naming_the_store_tile(half_done, capsys):
    out, _ = half_done
    rc = main(["compute", DATA, MODEL, "-o", str(out), "--tile", "12", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "its tiles are 8 x 8" in err and "--tile 8" in err and "--overwrite" in err
    assert "1.2" not in ntkit.open(out).done()


def test_resume_with_a_smaller_budget_refused_naming_the_plan(half_done, capsys):
    out, _ = half_done
    rc = main(["compute", DATA, MODEL, "-o", str(out), "--memory", "20MB", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "planned for 61 MiB" in err and "bit-identical" in err and "--memory 64MB" in err
    assert "1.2" not in ntkit.open(out).done()


def test_resume_with_a_budget_that_fits_says_the_plan_is_kept_and_is_bit_identical(half_done, capsys):
    out, full = half_done
    capsys.readouterr()
    rc = main(["compute", DATA, MODEL, "-o", str(out), "--memory", "200MB", "--tile", "8"])
    text = capsys.readouterr().out
    assert rc == 0 and "resumed with the store's own plan" in text and "tiles 8 x 8" in text, text
    np.testing.assert_array_equal(ntkit.open(out).to_numpy(), full)


def test_predict_row_offset_refused_for_a_kernel_of_samples(tmp_path, capsys):
    model = tmp_path / "m.npz"
    assert main(["fit", "digits[0:40]", "--kernel", "laplacian:bandwidth=10", "--solver", "ridge", "-o", str(model),
                 "-q"]) == 0
    capsys.readouterr()
    out = tmp_path / "p.npy"
    rc = main(["predict", str(model), "digits[40:50]", "--row-offset", "40", "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "--row-offset 40" in err and "leave --row-offset out" in err and not out.exists()
    assert main(["predict", str(model), "digits[40:50]", "-o", str(out), "-q"]) == 0
