"""The eNTK engine: Jacobian contraction, NTK-vector products and the automatic choice."""

from ntkit.engine.api import METHODS, OUTPUTS, NtkPlan, ntk, ntk_fn, ntk_vp, plan
from ntkit.engine.finite import NonFiniteError

__all__ = ["METHODS", "OUTPUTS", "NonFiniteError", "NtkPlan", "ntk", "ntk_fn", "ntk_vp", "plan"]
