"""Test-suite settings: one torch thread and one BLAS thread per worker (tiny ops are slower
multi-threaded, and pytest-xdist already runs one worker per core)."""

import pytest
import threadpoolctl  # a scikit-learn dependency
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """numpy/scipy's BLAS (the solvers' host linear algebra) on one thread too."""
    with threadpoolctl.threadpool_limits(1):
        yield
