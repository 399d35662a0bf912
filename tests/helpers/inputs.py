"""Small inputs several test folders build the same way: a tiny MLP (and one with a NaN weight),
an npz of labeled random features, a PSD matrix, and the one-line error check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def tiny_mlp(seed: int = 0, act=torch.nn.Tanh) -> torch.nn.Module:
    """4 -> 8 -> 3, seeded, in eval mode."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), act(), torch.nn.Linear(8, 3)).eval()


def nan_weight(net: torch.nn.Module) -> torch.nn.Module:
    """`net` with one NaN in its first layer's weight."""
    with torch.no_grad():
        net[0].weight[1, 2] = float("nan")
    return net


def labeled_npz(path: Path, y, y_test=None) -> Path:
    """An npz of 6 random features per label `y` (and `x_test` for `y_test`)."""
    rng = np.random.default_rng(0)
    arrays = {"x": rng.standard_normal((len(y), 6)).astype(np.float32), "y": np.asarray(y)}
    if y_test is not None:
        arrays |= {"x_test": rng.standard_normal((len(y_test), 6)).astype(np.float32), "y_test": np.asarray(y_test)}
    np.savez(path, **arrays)
    return path


def random_psd(n: int = 8, seed: int = 0) -> np.ndarray:
    """A random n x n positive semi-definite matrix (rank n)."""
    a = np.random.default_rng(seed).normal(size=(n, n + 4))
    return a @ a.T


def assert_one_line_error(rc: int, err: str) -> None:
    """A command-line user error: exit status 2, an `error:` line and no traceback."""
    assert rc == 2, err
    assert "error:" in err and "Traceback" not in err
