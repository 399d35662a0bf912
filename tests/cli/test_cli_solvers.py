"""Issue 13, item 9 on the command line: a tiny bandwidth fits, a bad precomputed kernel and a
corrupted saved model end in one `error:` line, never a traceback."""

from __future__ import annotations

import numpy as np
import pytest

from ntkit.cli.app import main

from helpers.inputs import assert_one_line_error, random_psd


# -- the command line ------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", ["gaussian:bandwidth=1e-30", "gaussian:bandwidth=1e-200"])
def test_cli_ridge_tiny_bandwidth_fits(tmp_path, capsys, kernel):
    rc = main(["fit", "digits[0:40]", "--kernel", kernel, "--solver", "ridge", "--alpha", "0", "-q",
               "-o", str(tmp_path / "m.npz")])
    assert rc == 0, capsys.readouterr().err
    assert np.isfinite(np.load(tmp_path / "m.npz")["dual_coef"]).all()


@pytest.mark.parametrize("case", ["zero", "inf-diagonal", "asymmetric"])
def test_cli_ridge_bad_precomputed_kernel_one_line_error(tmp_path, capsys, case):
    K = {"zero": np.zeros((20, 20)), "inf-diagonal": random_psd(20), "asymmetric": random_psd(20)}[case]
    if case == "inf-diagonal":
        K[3, 3] = np.inf
    if case == "asymmetric":
        K[0, 1] += 1.0
    np.save(tmp_path / "K.npy", K)
    out = tmp_path / "m.npz"
    rc = main(["fit", "digits[0:20]", "--kernel", f"npy:{tmp_path / 'K.npy'}", "--solver", "ridge", "--alpha", "0",
               "-q", "-o", str(out)])
    err = capsys.readouterr().err
    assert_one_line_error(rc, err)
    assert {"zero": "kernel matrix is zero", "inf-diagonal": "non-finite entr",
            "asymmetric": "not symmetric"}[case] in err
    assert not out.exists()


def _rewrite(path, **changes):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    np.savez(path, **arrays)


def test_cli_predict_with_a_corrupted_model_is_a_one_line_error(tmp_path, capsys):
    rc = main(["fit", "digits[0:40]", "--kernel", "gaussian:bandwidth=20", "--solver", "ridge", "--alpha", "1e-3",
               "-q", "-o", str(tmp_path / "m.npz")])
    assert rc == 0
    coef = np.load(tmp_path / "m.npz")["dual_coef"].copy()
    coef[:] = np.inf
    _rewrite(tmp_path / "m.npz", dual_coef=coef)
    capsys.readouterr()
    rc = main(["predict", str(tmp_path / "m.npz"), "digits[40:50]", "-o", str(tmp_path / "p.npy")])
    err = capsys.readouterr().err
    assert_one_line_error(rc, err)
    assert "'dual_coef'" in err and not (tmp_path / "p.npy").exists()
