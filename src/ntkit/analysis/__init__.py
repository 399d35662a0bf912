"""What the kernel says: spectra, generalization prediction from the training kernel (GCV),
kernel-target alignment, per-layer decomposition, and figures (`ntkit.analysis.plots`).

Every function takes a kernel as a torch tensor, a numpy array or a stored kernel (anything
with ``.shape``, ``.dtype`` and ``K[i:j, k:l] -> np.ndarray``, like ``ntkit.store.KernelStore``);
stored kernels are read in row blocks. Computations are in float64.

>>> import numpy as np
>>> from ntkit.analysis import spectrum, gcv, alignment, analyze
>>> X = np.random.default_rng(0).standard_normal((100, 5)); K = X @ X.T
>>> y = (X[:, 0] > 0).astype(int)
>>> spectrum(K, k=5).eigenvalues.shape
(5,)
>>> res = gcv(K, y, np.logspace(-4, 0, 5))     # GCV_λ per ridge; res.best_ridge
>>> a = alignment(K, y)                         # centered kernel-target alignment
>>> rep = analyze(K, y, layers=False)           # all of it, as `ntkit analyze` (out_dir= writes the report)

`analyze` (`ntkit.analysis.report`) is the whole `ntkit analyze` pipeline; `ntkit.analysis.demo`
is `ntkit demo`.

Anchor: Wei, Hu & Steinhardt, "More Than a Toy: Random Matrix Models Predict How Real-World
Neural Representations Generalize", ICML 2022.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names -> their module, imported on first use: `import ntkit.cli` (whose option defaults come
# from `ntkit.analysis.report_inputs`) must not load torch, scipy and matplotlib.
_HOMES = {
    "GCVResult": "generalization", "IndefiniteKernelWarning": "generalization", "KernelEigh": "generalization",
    "PredictedVsActual": "generalization", "eigh_kernel": "generalization", "gcv": "generalization",
    "predicted_vs_actual": "generalization", "targets": "generalization",
    "alignment": "kernel_alignment",
    "LayerDecomposition": "layers", "layer_decomposition": "layers", "parameter_groups": "layers",
    "AnalysisError": "report", "Report": "report", "analyze": "report",
    "SPECTRUM_METHODS": "spectra", "ConvergenceWarning": "spectra", "PowerLawFit": "spectra", "Spectrum": "spectra",
    "power_law_fit": "spectra", "spectrum": "spectra",
}


def __getattr__(name: str) -> Any:
    if name == "plots":
        return importlib.import_module("ntkit.analysis.plots")
    if name in _HOMES:
        value = getattr(importlib.import_module(f"ntkit.analysis.{_HOMES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ntkit.analysis' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "SPECTRUM_METHODS",
    "AnalysisError",
    "ConvergenceWarning",
    "GCVResult",
    "IndefiniteKernelWarning",
    "KernelEigh",
    "LayerDecomposition",
    "PowerLawFit",
    "PredictedVsActual",
    "Report",
    "Spectrum",
    "alignment",
    "analyze",
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
