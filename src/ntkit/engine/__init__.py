"""The eNTK engine: Jacobian contraction, NTK-vector products and the automatic choice."""

from ntkit.engine.api import METHODS, OUTPUTS, NtkPlan, ntk, ntk_fn, ntk_vp, plan

__all__ = ["METHODS", "OUTPUTS", "NtkPlan", "ntk", "ntk_fn", "ntk_vp", "plan"]
