"""What the kernel says: spectra, generalization prediction from the training kernel (GCV),
kernel-target alignment, per-layer decomposition, and figures (`ntkit.analysis.plots`).

Every function takes a kernel as a torch tensor, a numpy array or a stored kernel (anything
with ``.shape``, ``.dtype`` and ``K[i:j, k:l] -> np.ndarray``, like ``ntkit.store.KernelStore``);
stored kernels are read in row blocks. Computations are in float64.

>>> import numpy as np
>>> from ntkit.analysis import spectrum, gcv, alignment
>>> X = np.random.default_rng(0).standard_normal((100, 5)); K = X @ X.T
>>> y = (X[:, 0] > 0).astype(int)
>>> spectrum(K, k=5).eigenvalues.shape
(5,)
>>> res = gcv(K, y, np.logspace(-4, 0, 5))     # GCV_λ per ridge; res.best_ridge
>>> a = alignment(K, y)                         # centered kernel-target alignment

Anchor: Wei, Hu & Steinhardt, "More Than a Toy: Random Matrix Models Predict How Real-World
Neural Representations Generalize", ICML 2022.
"""

from ntkit.analysis import plots
from ntkit.analysis.generalization import (
                                GCVResult,
                                IndefiniteKernelWarning,
                                KernelEigh,
                                PredictedVsActual,
                                eigh_kernel,
                                gcv,
                                predicted_vs_actual,
                                targets,
)
from ntkit.analysis.kernel_alignment import alignment
from ntkit.analysis.layers import LayerDecomposition, layer_decomposition, parameter_groups
from ntkit.analysis.spectra import SPECTRUM_METHODS, ConvergenceWarning, PowerLawFit, Spectrum, power_law_fit, spectrum

__all__ = [
    "SPECTRUM_METHODS",
    "ConvergenceWarning",
    "GCVResult",
    "IndefiniteKernelWarning",
    "KernelEigh",
    "LayerDecomposition",
    "PowerLawFit",
    "PredictedVsActual",
    "Spectrum",
    "alignment",
    "eigh_kernel",
    "gcv",
    "layer_decomposition",
    "parameter_groups",
    "plots",
    "power_law_fit",
    "predicted_vs_actual",
    "spectrum",
    "targets",
]
