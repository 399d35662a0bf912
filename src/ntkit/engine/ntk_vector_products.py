"""NTK-vector products: Θ·v = J(x1) (J(x2)ᵀ v) without forming the Jacobian of a block.

For the kernel itself, v runs over the basis: a VJP per basis sample on one side gives the
tangents ∂f_a(x_n)/∂θ (a chunk of samples at a time), and one JVP of the other side's batch
per tangent, vmapped, gives Θ[n, :, a, :]. Cost: N1·F·(1 + 2O') for the tangents plus
2·N1·O'·N2·F for the JVPs (about half when symmetric). It beats Jacobian contraction for
`full` when F is small relative to O·P (dense networks with many logits); memory is one chunk
of tangents, chunk·O'·P.

Reference: Novak, Sohl-Dickstein & Schoenholz, "Fast Finite Width Neural Tangent Kernel",
ICML 2022, section 3.2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.func import jvp, vmap

from ntkit.engine.functional import FunctionalModel
from ntkit.engine.memory import Plan
from ntkit.engine.outputs import OutputSpec
from ntkit.engine.progress import Progress
from ntkit.engine.rows_check import jvp_error, tolerance
from ntkit.engine.symmetry import chunks, fill_lower_in_block


def reduce_logit_blocks(y: torch.Tensor, spec: OutputSpec) -> torch.Tensor:
    """(b1, b2, O', O') -> the output layout of `spec`."""
    if spec.kind == "full":
        return y
    if spec.kind == "diagonal":
        return y.diagonal(dim1=2, dim2=3)
    if spec.kind == "trace":
        return y.diagonal(dim1=2, dim2=3).sum(-1)
    return y[..., 0, 0]


def jvp_batch(fm: FunctionalModel, spec: OutputSpec):
    """A function (tangents {name: (k, *shape)}, x: (b, *input)) -> (k, b, O') of JVPs."""

    def one(tangent, x):
        return jvp(lambda th: fm.reduced(th, x, spec), (fm.theta,), (tangent,))[1]

    return vmap(one, in_dims=(0, None))


def forward_ad_error(fm: FunctionalModel, x: torch.Tensor, spec: OutputSpec) -> str | None:
    """None if vmapped JVPs run through the model and agree with reverse mode, else the reason.

    Some operators have no forward-mode derivative (e.g. the fused attention fast path), and some
    give wrong JVPs without raising (a custom op with only a backward, a wrong batching rule);
    either way NTK-vector products are impossible and the caller falls back to Jacobian
    contraction. Checked on x[:2] against reverse mode (`ntkit.engine.rows_check.jvp_error`).
    """
    try:
        err = jvp_error(jvp_batch(fm, spec), fm, x[:2], spec)
    except torch.OutOfMemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - unsupported operators raise various types
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    if err > tolerance(fm.dtype):
        return (f"its JVPs disagree with reverse mode by {err:.1e} relative: an operator's forward-mode "
                "derivative or batching rule is wrong")
    return None


def ntk_vector_products(
    fm: FunctionalModel,
    x1: torch.Tensor,
    x2: torch.Tensor,
    spec: OutputSpec,
    plan: Plan,
    out: torch.Tensor,
    pairs: Sequence[tuple[slice, slice]],
    symmetric: bool,
    progress: Progress,
) -> None:
    """Fill Θ over `pairs` of (row block, column block) into `out` (the output layout)."""
    push = jvp_batch(fm, spec)
    by_row: dict[tuple[int, int], list[slice]] = {}
    for r, c in pairs:
        by_row.setdefault((r.start, r.stop), []).append(c)
    steps = sum(len(range(r0, r1, plan.chunk)) * len(cols) for (r0, r1), cols in by_row.items())
    progress.start(steps, {"rows": sum(r1 - r0 for r0, r1 in by_row), "blocks": steps})
    for (r0, r1), cols in by_row.items():
        parts = chunks(r0, r1, plan.chunk)
        for s in parts:
            rows = fm.jacobian_rows(fm.names, x1[s], spec)  # (c, O', *shape): the VJPs
            c, n_out = next(iter(rows.values())).shape[:2]
            tangents = {n: t.reshape(c * n_out, *t.shape[2:]) for n, t in rows.items()}
            del rows
            progress.advance(0, {"rows": s.stop - s.start})
            for col in cols:
                if symmetric and (col.start, col.stop) == (r0, r1):
                    col = slice(s.start, r1)  # the upper chunk-triangle of the diagonal block
                y = push(tangents, x2[col])  # (c·O', b2, O')
                y = y.reshape(c, n_out, y.shape[1], n_out).permute(0, 2, 1, 3)
                out[s, col] += reduce_logit_blocks(y, spec)
                progress.advance(1, {"blocks": 1})
        if symmetric:
            fill_lower_in_block(out, slice(r0, r1), parts)
