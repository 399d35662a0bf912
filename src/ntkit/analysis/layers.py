"""Per-layer decomposition of the empirical NTK.

Θ(x1, x2) = J(x1) J(x2)ᵀ = Σ_l J_l(x1) J_l(x2)ᵀ = Σ_l Θ_l over disjoint parameter groups l, so
each layer's contribution is the eNTK with ``params=`` that layer's parameters, and the parts add
up to the whole kernel. The share of the trace, tr Θ_l / tr Θ, says which layers the kernel's
(and so the linearized network's) features come from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class LayerDecomposition:
    """Θ = Σ_l Θ_l: one kernel per parameter group, in the order of ``layers``."""

    layers: list[str]  # group names (module names by default)
    params: list[list[str]]  # the parameter names in each group
    n_params: list[int]
    kinds: list[str]  # the owning module's class for default groups ("" for custom groups)
    kernels: list[torch.Tensor]  # Θ_l, each shaped like the full kernel for `output`
    output: str
    square: bool  # Θ(x, x) (x2 None): `share` is then a share of the trace

    @property
    def total(self) -> torch.Tensor:
        """Σ_l Θ_l, the eNTK of all the groups' parameters together."""
        return torch.stack(self.kernels).sum(dim=0)

    @property
    def parts(self) -> np.ndarray:
        """Per group, tr Θ_l (the sum of all of Θ_l's entries when x2 was given, as the diagonal
        is then not Θ(x, x); summed over logit axes for full/diagonal outputs): (L,)."""
        return np.array([_size(k, self.square) for k in self.kernels], dtype=np.float64)

    @property
    def share(self) -> np.ndarray:
        """``parts / parts.sum()``: each group's share of the kernel, (L,), summing to 1."""
        parts = self.parts
        total = parts.sum()
        return parts / total if total != 0 else parts


def _size(k: torch.Tensor, square: bool) -> float:
    k = k.detach().to(torch.float64)
    if k.dim() == 4:  # full (N1, N2, O, O): the logit trace, as output="trace" defines it
        k = torch.diagonal(k, dim1=2, dim2=3)
    if k.dim() == 3:  # diagonal (N1, N2, O)
        k = k.sum(dim=2)
    return float(torch.trace(k)) if square else float(k.sum())


def parameter_groups(model: nn.Module) -> dict[str, list[str]]:
    """Trainable parameters grouped by the module that owns them: ``{"0": ["0.weight", "0.bias"], …}``.

    Top-level parameters (owned by ``model`` itself) form their own group each.
    """
    groups: dict[str, list[str]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        owner = name.rsplit(".", 1)[0] if "." in name else name
        groups.setdefault(owner, []).append(name)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters: nothing to decompose")
    return groups


def layer_decomposition(
    model: nn.Module,
    x: Any,
    x2: Any = None,
    *,
    output: str = "trace",
    layers: dict[str, str | Sequence[str]] | None = None,
    method: str = "auto",
    layer_progress: Any = None,
    **ntk_kwargs: Any,
) -> LayerDecomposition:
    """The eNTK split into per-layer parts Θ_l whose sum is the full kernel.

    Args:
        model, x, x2: as for `ntkit.ntk` (``x: (N1, *input)``, ``x2: (N2, *input)`` or None).
        output: any `ntkit.ntk` output mode; each Θ_l has its shape ("trace": ``(N1, N2)``).
        layers: ``{group name: parameter names or globs}`` (default: one group per module that
            owns trainable parameters, see `parameter_groups`). Groups must not overlap, or their
            parts would not add up to the kernel.
        method, **ntk_kwargs: passed to `ntkit.ntk` (batch_size, memory, device, progress).
        layer_progress: ``layer_progress(done, total)`` after each group's kernel (total: the
            number of groups); ``progress`` is called within each group's eNTK.

    Returns:
        A `LayerDecomposition` (``kernels``, ``total``, ``share`` of the trace per group).
    """
    import ntkit
    from ntkit.engine.functional import select_parameters

    groups = dict(layers) if layers is not None else parameter_groups(model)
    if not groups:
        raise ValueError("layers={} names no parameter group; pass None for one group per module")
    names: list[list[str]] = []
    seen: dict[str, str] = {}
    for group, sel in groups.items():
        resolved = select_parameters(model, [sel] if isinstance(sel, str) else list(sel))
        for p in resolved:
            if p in seen:
                raise ValueError(f"parameter {p} is in both layer groups {seen[p]!r} and {group!r}: "
                                 "groups must be disjoint for their kernels to add up")
            seen[p] = group
        names.append(resolved)
    sizes = dict(model.named_parameters())
    kernels = []
    for i, ps in enumerate(names):
        kernels.append(ntkit.ntk(model, x, x2, method=method, output=output, params=ps, **ntk_kwargs))
        if layer_progress is not None:
            layer_progress(i + 1, len(names))
    modules = dict(model.named_modules())
    kinds = ["" if layers is not None or g not in modules else type(modules[g]).__name__ for g in groups]
    return LayerDecomposition(layers=list(groups), params=names, kinds=kinds,
                              n_params=[sum(sizes[p].numel() for p in ps) for ps in names],
                              kernels=kernels, output=output, square=x2 is None or x2 is x)
