"""Kernel machines with scikit-learn's estimator contract, on any `ntkit.kernels` kernel.

`KernelRidge` / `KernelRidgeClassifier`: the exact solve (the reference). `EigenPro3` /
`EigenPro3Classifier`: projected preconditioned SGD with p centers decoupled from the n training
points (Abedsoltan, Belkin & Pandit 2023), O(p) memory. `load(path)` reads a saved model.

>>> import numpy as np
>>> from ntkit.solvers import EigenPro3Classifier
>>> X = np.random.default_rng(0).normal(size=(200, 4)); y = (X[:, 0] > 0).astype(int)
>>> clf = EigenPro3Classifier("laplacian:bandwidth=4", centers=100, epochs=5).fit(X, y)
>>> clf.score(X, y) > 0.9
True
"""

from ntkit.solvers.base import NotPSDError, SavedModelError, SolverInputError, load
from ntkit.solvers.eigenpro3 import DivergenceError, EigenPro3, EigenPro3Classifier
from ntkit.solvers.nystrom import NystromAdaptedWarning
from ntkit.solvers.ridge import KernelRidge, KernelRidgeClassifier, SingularKernelWarning

__all__ = ["KernelRidge", "KernelRidgeClassifier", "EigenPro3", "EigenPro3Classifier", "load", "NotPSDError", "SavedModelError",
           "SolverInputError", "DivergenceError", "NystromAdaptedWarning", "SingularKernelWarning"]
