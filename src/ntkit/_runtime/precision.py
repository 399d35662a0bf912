"""Split-precision Gram step: float32-level products from three TF32 tensor-core products.

`precision="tf32x3"` writes each float32 operand as x = hi + lo, both TF32 numbers (10 explicit
mantissa bits), and computes a·b ≈ hi_a·hi_b + hi_a·lo_b + lo_a·hi_b (the lo·lo term is below
float32's rounding). A TF32 tensor core multiplies TF32 inputs exactly and accumulates in float32,
so the three products run at tensor-core speed while the result keeps ~2^-22 relative accuracy per
term. Tensor-core accumulation loses accuracy on long contractions (a naive 3×TF32 in torch was
1.6e-4 off float64 at P = 100k on an H100, see `GRAM_CHUNK`), so the contraction dimension is cut
into short chunks whose float32 results are summed in float64.

Only the Gram step of Jacobian contraction (`contract_rows`) and the per-sample-gradient
contractions of structured derivatives (`ntkit.rules.contract.contract_grads`) go through here;
everything else (Jacobian passes, convolutions, structured derivatives' direct contractions)
runs in plain float32 with TF32 off (`matmul_precision` below).

On CPU there are no tensor cores: the same algorithm runs on float32 BLAS, where the product of
two TF32 numbers (11 × 11 significant bits) is exact, so the products are those a tensor core
computes, accumulated in another order. It costs 3-4× the float32 Gram step (more on small
blocks, where splitting the operands weighs): it is there to check the mode, not for speed.

Extra memory per product, not counted by the engine's plan: the hi/lo copies of one chunk of
both operands (4·(R + C)·GRAM_CHUNK floats), a float32 chunk result and a float64 accumulator
of R·C entries: small next to the (R + C)·P Jacobian rows whenever P ≫ GRAM_CHUNK.

Reference: Ootomo & Yokota, "Recovering single precision accuracy from Tensor Cores while
surpassing the FP32 theoretical peak performance", IJHPCA 2022 (the 3×TF32 split, rounding to
nearest for hi and lo).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch

GRAM_MODES = ("default", "tf32x3")
# Contraction length per chunk of the tf32x3 products. A naive 3×TF32 over the whole contraction
# lost accuracy about linearly in its length on an H100 (1.5e-5 at 10k, 1.6e-4 at 100k against
# float64, PEERS.md), most likely the tensor cores' float32 accumulation: 4096 keeps that term
# near 6e-6 by the same trend. Summing a chunk's (R, C) result in float64 costs ~20 bytes
# of memory traffic per entry against 6·4096 tensor-core FLOPs: about a tenth of the products'
# time on an H100, less for longer chunks. Not yet measured on a GPU.
GRAM_CHUNK = 4096

_TF32_BITS = 13  # float32 has 23 explicit mantissa bits, TF32 keeps 10
_ROUND = 1 << (_TF32_BITS - 1)
_MASK = -(1 << _TF32_BITS)  # int32 0xFFFFE000
_INF = 0x7F800000  # the magnitude bits of inf; larger ones are nan
_ABS = 0x7FFFFFFF

_GRAM: ContextVar[str] = ContextVar("ntkit_gram_precision", default="default")


@contextlib.contextmanager
def gram_precision(mode: str) -> Iterator[None]:
    """Products of the Gram step inside this block: "default" (the operands' own dtype and the
    backend's settings) or "tf32x3" (float32 operands only: split products, float64 sums).

    A context variable, so it is per thread (and per asyncio task): other threads keep theirs.
    """
    if mode not in GRAM_MODES:
        raise ValueError(f"unknown Gram precision {mode!r}; use one of {', '.join(GRAM_MODES)}")
    token = _GRAM.set(mode)
    try:
        yield
    finally:
        _GRAM.reset(token)


def uses_tf32x3(x: torch.Tensor) -> bool:
    """Whether Gram products of operands like x are split here (tf32x3 asked, x float32)."""
    return x.dtype == torch.float32 and _GRAM.get() == "tf32x3"


# ----------------------------------------------------------------------------------- TF32 flags
def _flag_owners(matmul: bool, convolutions: bool) -> list[object]:
    owners: list[object] = []
    if matmul:
        owners.append(torch.backends.cuda.matmul)
    if convolutions:
        owners += [torch.backends.cudnn.conv, torch.backends.cudnn.rnn]
    return owners


@contextlib.contextmanager
def cuda_tf32(enabled: bool, *, matmul: bool = True, convolutions: bool = True) -> Iterator[None]:
    """TF32 on (`enabled`) or off for CUDA float32 matmuls and/or cuDNN convolutions in this
    block; the previous settings come back afterwards.

    Uses torch's `fp32_precision` ("tf32" / "ieee") where it exists: on torch 2.11 the older
    `allow_tf32 = False`, set after it had been True, still gave TF32-like errors once, and
    torch refuses to read a legacy flag after the new one was set (restoring the previous value
    makes both readable again). The flags are per process, not per thread: another thread's
    CUDA matmuls in the meantime get them too (ntkit's Dask workers run one thread each).
    """
    new_api = hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision")
    if new_api:
        owners = _flag_owners(matmul, convolutions)
        old = [o.fp32_precision for o in owners]
        for o in owners:
            o.fp32_precision = "tf32" if enabled else "ieee"
        try:
            yield
        finally:
            for o, v in zip(owners, old):
                o.fp32_precision = v
        return
    legacy = ([(torch.backends.cuda.matmul, "allow_tf32")] if matmul else []) + (
        [(torch.backends.cudnn, "allow_tf32")] if convolutions else [])
    old_legacy = [getattr(o, a) for o, a in legacy]
    for o, a in legacy:
        setattr(o, a, enabled)
    try:
        yield
    finally:
        for (o, a), v in zip(legacy, old_legacy):
            setattr(o, a, v)


# ---------------------------------------------------------------------------------------- split
def round_tf32(x: torch.Tensor) -> torch.Tensor:
    """x (float32, any shape) rounded to the nearest TF32 number, ties away from zero (as the
    tensor cores' `cvt.rna.tf32.f32` conversion), exactly, on the float32 bit pattern.

    Adding half a TF32 unit to the magnitude bits and clearing the 13 low ones rounds the
    magnitude; a carry into the exponent is the correct next binade. inf and nan come back
    unchanged, and finite values whose rounding would overflow to inf are truncated instead
    (hi stays finite so that lo = x - hi is exact and hi + lo = x still holds).
    """
    if x.dtype != torch.float32:
        raise TypeError(f"TF32 rounding needs float32, got {x.dtype}")
    return _round_bits(x.view(torch.int32))[0].view(torch.float32)


def _round_bits(bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(TF32-rounded bits, "is finite" mask) of float32 bit patterns; integer ops only (they
    are several times faster than float classification on CPU)."""
    mag = bits & _ABS
    up = (bits + _ROUND).bitwise_and_(_MASK)
    # Rounding up would reach the exponent of inf (or x is inf/nan): truncate; keep a nan.
    special = mag >= _INF - _ROUND
    # Such values are rare: skip the select when there are none, except on CUDA, where asking
    # would wait for the device.
    if bits.is_cuda or special.any():
        up = torch.where(special, torch.where(mag > _INF, bits, bits & _MASK), up)
    return up, mag < _INF


def split_tf32(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (float32) -> (hi, lo), both TF32 numbers, with hi + lo = x to ~2^-22 relative.

    hi = round_tf32(x); x - hi is exact in float32 (at most 13 significant bits) and lo is its
    rounding to TF32. Non-finite x: hi = x, lo = 0 (so that products propagate inf/nan as x would).
    """
    if x.dtype != torch.float32:
        raise TypeError(f"TF32 splitting needs float32, got {x.dtype}")
    hi_bits, finite = _round_bits(x.view(torch.int32))
    hi = hi_bits.view(torch.float32)
    lo = _round_bits((x - hi).view(torch.int32))[0].view(torch.float32)
    return hi, lo.masked_fill_(~finite, 0.0)


# ------------------------------------------------------------------------------------- products
def _matmul_tf32x3(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out (float64) += a @ b for a (R, P), b (P, C) or a batch (B, R, P), (B, P, C), by chunks
    of GRAM_CHUNK along P: three TF32 products per chunk, the chunk's sum added in float64."""
    batched = a.dim() == 3
    addmm = torch.Tensor.baddbmm_ if batched else torch.Tensor.addmm_
    mm = torch.bmm if batched else torch.mm
    p = a.shape[-1]
    with cuda_tf32(True, convolutions=False) if a.is_cuda else contextlib.nullcontext():
        for k0 in range(0, p, GRAM_CHUNK):
            a_hi, a_lo = split_tf32(a[..., k0:k0 + GRAM_CHUNK])
            b_hi, b_lo = split_tf32(b[..., k0:k0 + GRAM_CHUNK, :])
            # The two small terms first, so that they are not rounded against the big one.
            part = mm(a_lo, b_hi)
            addmm(part, a_hi, b_lo)
            addmm(part, a_hi, b_hi)
            out.add_(part)
    return out


def gram_tf32x3(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ bᵀ in float64 from tf32x3 products: a (R, P), b (C, P) -> (R, C), or batched
    a (B, R, P), b (B, C, P) -> (B, R, C). Both float32, on the same device."""
    out = torch.zeros((*a.shape[:-1], b.shape[-2]), dtype=torch.float64, device=a.device)
    return _matmul_tf32x3(a, b.transpose(-1, -2), out)


def accumulator_dtype(x: torch.Tensor) -> torch.dtype:
    """dtype of a Gram accumulator for operands like x: float64 under tf32x3, else x's."""
    return torch.float64 if uses_tf32x3(x) else x.dtype


def _into(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if acc.dtype == torch.float64:
        return _matmul_tf32x3(a, b, acc)
    total = torch.zeros(acc.shape, dtype=torch.float64, device=acc.device)
    return acc.add_(_matmul_tf32x3(a, b, total))


def addmm_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """acc (R, C) += a (R, P) @ b (P, C) for the Gram step: `acc.addmm_(a, b)` itself unless
    the context asks for tf32x3 (then acc may be float64, see `accumulator_dtype`)."""
    if not uses_tf32x3(a):
        return acc.addmm_(a, b)
    return _into(acc, a, b)


def baddbmm_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """acc (B, R, C) += a (B, R, P) @ b (B, P, C), per batch entry (per logit); as `addmm_`."""
    if not uses_tf32x3(a):
        return acc.baddbmm_(a, b)
    return _into(acc, a, b)


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (R, P) @ b (P, C) for the Gram step: `a @ b` itself, or under tf32x3 the float64 sum."""
    if not uses_tf32x3(a):
        return a @ b
    return _matmul_tf32x3(a, b, torch.zeros((a.shape[0], b.shape[1]), dtype=torch.float64, device=a.device))


__all__ = ["GRAM_CHUNK", "GRAM_MODES", "accumulator_dtype", "addmm_", "baddbmm_", "cuda_tf32",
           "gram_precision", "gram_tf32x3", "mm", "round_tf32", "split_tf32", "uses_tf32x3"]


PRECISIONS = ("float32", "tf32", "tf32x3")


@contextlib.contextmanager
def matmul_precision(device: torch.device, precision: str) -> Iterator[None]:
    """The float32 arithmetic of one tile.

    "float32": TF32 off on CUDA (matmuls and cuDNN convolutions). "tf32": on for all of them
    (10-bit mantissa products, ~1e-3). "tf32x3": off for everything but the Gram step, whose
    products are split into three TF32 products summed in float64 chunks (float32-level
    accuracy; on CPU an exact emulation, see above).
    """
    gram = gram_precision("tf32x3" if precision == "tf32x3" else "default")
    tf32 = cuda_tf32(precision == "tf32") if device.type == "cuda" else contextlib.nullcontext()
    with tf32, gram:
        yield
