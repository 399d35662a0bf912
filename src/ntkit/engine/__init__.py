"""The eNTK engine: Jacobian contraction, NTK-vector products and the automatic choice."""

from ntkit.engine.api import METHODS, OUTPUTS, ntk, ntk_fn, ntk_vp

__all__ = ["METHODS", "OUTPUTS", "ntk", "ntk_fn", "ntk_vp"]
