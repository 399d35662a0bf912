"""`ntkit dynamics`: predicted trajectories from a stored kernel, as a user runs it."""

from __future__ import annotations

import numpy as np
import torch
from cli_run import run_cli

from ntkit.data import load_data
from ntkit.predict import gradient_descent_mse

SPEC = "digits[train:0:40,test:0:15]"


def _kernel(tmp_path, square=False):
    x = load_data(SPEC).tensors()[0].reshape(55, -1).double()
    K = (x @ (x if square else x[:40]).T / x.shape[1]).numpy()
    np.save(tmp_path / "K.npy", K)
    return K


def test_writes_the_predicted_trajectories(tmp_path):
    K = _kernel(tmp_path)
    r = run_cli(["dynamics", "K.npy", SPEC, "-t", "0,5,50,inf", "--ridge", "1e-3", "-o", "traj.npz"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "test acc" in r.stdout and "wrote traj.npz" in r.stdout
    got = np.load(tmp_path / "traj.npz")
    labels = load_data(SPEC).labels.numpy()
    Y = np.eye(10)[labels]
    want = gradient_descent_mse(K[:40], Y[:40], ridge=1e-3)(np.array([0, 5, 50, np.inf]), 0.0, 0.0, K[40:])
    assert np.allclose(got["train"], want.train, atol=1e-12) and np.allclose(got["test"], want.test, atol=1e-12)
    assert got["t"].tolist() == [0, 5, 50, np.inf] and got["test_loss"].shape == (4,)
    assert np.isclose(got["test_loss"][0], 0.5 * np.mean(Y[40:] ** 2))
    assert np.isclose(got["test_acc"][-1], np.mean(want.test[-1].argmax(1) == labels[40:]))
    # a square kernel of all 55 samples: the spec's train part says which are the training set
    _kernel(tmp_path, square=True)
    r = run_cli(["dynamics", "K.npy", SPEC, "-t", "0,5,50,inf", "--ridge", "1e-3", "-o", "sq.npz", "-q"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert np.allclose(np.load(tmp_path / "sq.npz")["test"], want.test, atol=1e-12)


def test_refusals_are_one_line_errors(tmp_path):
    _kernel(tmp_path)
    cases = [
        (["-t", "0,-1"], "negative or NaN time"),
        (["--lr", "-2"], "lr must be a finite number > 0"),
    ]
    for extra, message in cases:
        r = run_cli(["dynamics", "K.npy", SPEC, "-o", "x.npz", *extra], cwd=tmp_path)
        assert r.returncode == 2 and message in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 4
    r = run_cli(["dynamics", "K.npy", "digits[train:0:30]", "-o", "x.npz"], cwd=tmp_path)
    assert r.returncode == 2 and "has 55 rows but the data has 30 samples" in r.stderr
    np.save(tmp_path / "sq.npy", np.eye(55))
    r = run_cli(["dynamics", "sq.npy", "digits[0:55]", "-o", "x.npz"], cwd=tmp_path)
    assert r.returncode == 2 and "--train N" in r.stderr
    (tmp_path / "x.npz").write_text("keep")
    r = run_cli(["dynamics", "K.npy", SPEC, "-o", "x.npz"], cwd=tmp_path)
    assert r.returncode == 2 and "--overwrite" in r.stderr and (tmp_path / "x.npz").read_text() == "keep"
    assert not list(tmp_path.glob("*.tmp*"))
