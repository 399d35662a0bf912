"""Kernel-target alignment.

Centered alignment (Cortes, Mohri & Rostamizadeh, "Algorithms for Learning Kernels Based on
Centered Alignment", JMLR 2012):

    A(K, y) = ⟨K_c, L_c⟩_F / (‖K_c‖_F ‖L_c‖_F),  K_c = HKH, L_c = H yyᵀ H, H = I − 11ᵀ/n,

with yyᵀ = Y Yᵀ for targets Y: (n, c) (one-hot rows for integer labels). ``center=False`` gives
the uncentered alignment of Cristianini et al. (NIPS 2001).

A stored kernel is streamed in row blocks, never loaded: one pass for the row means r (K is
symmetric, so they are the column means too), one pass over the centered blocks
K_c = K − r1ᵀ − 1rᵀ + μ11ᵀ for ‖K_c‖_F² and ⟨K_c, L_c⟩_F = ⟨K_c, YYᵀ⟩_F = Σ Y ⊙ (K_c Y). Centering
the blocks themselves (rather than expanding ‖HKH‖² into ‖K‖² − 2n‖r‖² + n²μ²) avoids the
cancellation when the mean component dominates, as it does for uncentered eNTKs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ntkit.analysis._kernel import kernel_shape, row_blocks
from ntkit.analysis.generalization import targets


def alignment(K: Any, y: Any, *, center: bool = True, num_classes: int | None = None,
              block_rows: int | None = None) -> float:
    """Centered kernel-target alignment of a symmetric kernel ``K: (n, n)`` with targets ``y``.

    Args:
        K: tensor, array or stored kernel (streamed in row blocks).
        y: integer labels ``(n,)`` (one-hot encoded) or float targets ``(n,)`` / ``(n, c)``.
        center: centered alignment (Cortes et al. 2012); False for the uncentered one.
        num_classes: one-hot width for labels (default: max label + 1).

    Returns:
        A value in [-1, 1] (in [0, 1] for PSD K); 0 when K_c or L_c vanishes.

    >>> import numpy as np
    >>> y = np.array([0, 0, 1, 1])
    >>> round(alignment(np.eye(2)[y] @ np.eye(2)[y].T, y), 12)
    1.0
    """
    n, _ = kernel_shape(K, square=True)
    Y = targets(y, num_classes)
    if Y.shape[0] != n:
        raise ValueError(f"y has {Y.shape[0]} rows but K has {n}: pass one target per row of K")
    r = np.zeros(n)
    if center:
        Y = Y - Y.mean(axis=0)
        for s, e, block in row_blocks(K, block_rows):
            r[s:e] = block.mean(axis=1)
    mu = r.mean()
    inner = 0.0
    k_norm_sq = 0.0
    for s, e, block in row_blocks(K, block_rows):
        if center:
            block = block - r[s:e, None] - r[None, :] + mu
        inner += float(np.sum(Y[s:e] * (block @ Y)))
        k_norm_sq += float(np.einsum("ij,ij->", block, block))
    G = Y.T @ Y  # ‖L_c‖_F = ‖H YYᵀ H‖_F = ‖(HY)ᵀ(HY)‖_F
    l_norm_sq = float(np.einsum("ij,ij->", G, G))
    if k_norm_sq <= 0 or l_norm_sq <= 0:
        return 0.0
    return float(inner / np.sqrt(k_norm_sq * l_norm_sq))
