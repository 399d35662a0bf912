"""ntkit: fast finite-width neural tangent kernels and large kernel machines for PyTorch.

The empirical NTK of a network f with parameters θ is Θ(x1, x2) = J(x1) J(x2)ᵀ, J = ∂f/∂θ.

>>> import torch, ntkit
>>> model = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
>>> K = ntkit.ntk(model, torch.randn(5, 3))          # (5, 5, 2, 2)
>>> ntkit.ntk(model, torch.randn(5, 3), output="trace").shape
torch.Size([5, 5])
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "ntk", "ntk_fn", "ntk_vp", "plan", "METHODS", "OUTPUTS", "compute", "open", "NonFiniteError",
           "linearize", "taylor_expand", "nngp", "predict"]

_ENGINE_NAMES = {"ntk", "ntk_fn", "ntk_vp", "plan", "METHODS", "OUTPUTS", "NonFiniteError"}


def __getattr__(name: str):  # lazy, so `import ntkit.data` stays light and cycle-free
    if name in _ENGINE_NAMES:
        from ntkit import engine

        return getattr(engine, name)
    if name == "compute":
        from ntkit.tiled import compute

        return compute
    if name in ("linearize", "taylor_expand", "nngp"):
        from ntkit import predict

        return getattr(predict, name)
    if name == "predict":
        import ntkit.predict

        return ntkit.predict
    if name == "open":
        from ntkit.store import open_store

        return open_store
    raise AttributeError(f"module 'ntkit' has no attribute {name!r}")
