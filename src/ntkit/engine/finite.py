"""Finiteness checks: a NaN or ±inf kernel is never returned, written or recorded.

Two places can make a kernel non-finite, and each check names its cause:
- the weights (parameters that enter the function, frozen ones included, and buffers such as
  BatchNorm statistics): checked before any work, naming the tensors;
- the arithmetic (inputs of huge magnitude, a forward that overflows float32): each computed
  kernel or tile is checked before it leaves the engine, naming its rows/columns, the largest
  |x| of its inputs and the fix.

Both are O(P) and O(entries) passes, negligible next to computing the kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["NonFiniteError", "check_weights", "check_kernel", "likely_cause"]

# Inputs above this magnitude are "huge": products of a few of them overflow float32 (max 3.4e38)
# once squared through a layer or two, so they are named as the likely cause.
HUGE_INPUT = 1e6


class NonFiniteError(ValueError):
    """The model's weights, or a kernel (tile) computed from them, hold NaN or ±inf values."""


def check_weights(fm: Any) -> None:
    """Raise NonFiniteError naming the non-finite parameters and buffers of a `FunctionalModel`.

    The differentiated parameters must be finite. Frozen parameters and buffers are checked for
    NaN only: ±inf there is a valid idiom (additive attention masks of -inf), while a NaN
    (BatchNorm statistics of a diverged run) poisons every output; an inf that does reach the
    outputs is caught by `check_kernel`.
    """
    tensors: list[tuple[str, str, torch.Tensor]] = []
    for name, t in fm.theta.items():
        if t.is_floating_point() or t.is_complex():
            tensors.append(("parameter", name, t))
    for name, t in fm.frozen.items():
        if t.is_floating_point() or t.is_complex():
            tensors.append(("frozen parameter", name, t))
    for name, t in fm.buffers.items():
        if t.is_floating_point():
            tensors.append(("buffer", name, t))
    if not tensors:
        return
    # One reduction per tensor and a single host sync for all of them (GPU models).
    flags = torch.stack([(~torch.isfinite(t).all() if kind == "parameter" else torch.isnan(t).any()).to(fm.device)
                         for kind, _, t in tensors]).cpu()
    if not bool(flags.any()):
        return
    parts = []
    for (kind, name, t), bad in zip(tensors, flags.tolist()):
        if bad:
            n_nan = int(torch.isnan(t).sum())
            n_inf = int(torch.isinf(t).sum()) if kind == "parameter" else 0
            what = ", ".join(s for s in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} inf" if n_inf else "") if s)
            parts.append(f"{kind} {name} ({what} of {t.numel()})")
    shown = "; ".join(parts[:8]) + (f"; and {len(parts) - 8} more" if len(parts) > 8 else "")
    raise NonFiniteError(
        f"the model has non-finite weights, so its kernel would be NaN/inf: {shown}. Load finite weights "
        "(a diverged training run or a corrupted state dict?) or re-initialize those tensors")


def _max_abs(xs: Sequence[Any]) -> float | None:
    vals = []
    for x in xs:
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.numel():
            vals.append(float(x.detach().abs().max()))
        elif isinstance(x, np.ndarray) and x.dtype.kind == "f" and x.size:
            vals.append(float(np.abs(x).max()))
    return max(vals) if vals else None


def likely_cause(inputs: Sequence[Any], dtype: Any) -> str:
    """Why a computation from finite weights on `inputs` went non-finite, and the fix."""
    name = str(dtype).replace("torch.", "")
    mx = _max_abs(inputs)
    wider = "" if name == "float64" else " or compute in float64 (--dtype float64 / model.double())"
    if mx is not None and mx > HUGE_INPUT:
        return (f"its inputs reach max |x| = {mx:.3g}, so the forward pass or its products overflow {name}: "
                f"rescale the inputs (e.g. standardize them){wider}")
    seen = "" if mx is None else f"its inputs are moderate (max |x| = {mx:.3g}), so "
    return (f"{seen}the model's forward pass or its gradients overflow or divide by zero in {name} "
            f"(exp, log, a division, huge weights?): check the model on these inputs{wider}")


_CHECK_CHUNK = 2**20  # entries per slice of the exact check: a few MB of temporaries at most


def _all_finite(k: torch.Tensor | np.ndarray) -> bool:
    """No NaN or ±inf in `k`, without a temporary of `k`'s size (isfinite on the whole kernel
    makes an |k| copy and masks, ~1.75x the kernel in float32, which a memory budget must not
    pay for the result it returns). NaN and inf survive a sum, so a finite sum settles it; a sum
    that overflows from finite entries falls back to an exact check a slice at a time."""
    if isinstance(k, torch.Tensor):
        k = k.detach()
        if k.numel() == 0 or bool(torch.isfinite(k.sum())):
            return True
        flat = k.reshape(-1)
        return all(bool(torch.isfinite(flat[i:i + _CHECK_CHUNK]).all())
                   for i in range(0, flat.numel(), _CHECK_CHUNK))
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowing sum is handled below
        if k.size == 0 or bool(np.isfinite(k.sum())):
            return True
    flat = k.reshape(-1)
    return all(bool(np.isfinite(flat[i:i + _CHECK_CHUNK]).all()) for i in range(0, flat.size, _CHECK_CHUNK))


def check_kernel(k: torch.Tensor | np.ndarray, what: str, inputs: Sequence[Any] = (),
                 dtype: torch.dtype | np.dtype | str | None = None, after: str = "") -> None:
    """Raise NonFiniteError when the kernel (or tile) `k` has NaN or ±inf entries.

    `what` names it ("the kernel (rows 0:10, cols 0:10)", "tile 0.1 (rows 0:64, cols 64:128)");
    `inputs`: the tensors it was computed from (their largest |x| is reported as the likely
    cause); `dtype`: the dtype it was computed in (float32 gets the float64 suggestion); `after`:
    a sentence appended (what happened to the result, e.g. that the tile was not recorded).
    """
    if isinstance(k, torch.Tensor):
        if _all_finite(k):
            return
        kk = k.detach()
        n_nan, n_inf, total = int(torch.isnan(kk).sum()), int(torch.isinf(kk).sum()), kk.numel()
        dtype = dtype if dtype is not None else kk.dtype
    else:
        k = np.asarray(k)
        if k.dtype.kind != "f" or _all_finite(k):
            return
        n_nan, n_inf, total = int(np.isnan(k).sum()), int(np.isinf(k).sum()), k.size
        dtype = dtype if dtype is not None else k.dtype
    cause = likely_cause(inputs, dtype)
    raise NonFiniteError(f"{what} has {n_nan + n_inf} non-finite entries of {total} ({n_nan} NaN, {n_inf} inf) "
                         f"although the weights are finite; {cause}.{' ' + after if after else ''}")
