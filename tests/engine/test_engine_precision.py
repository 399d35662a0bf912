"""precision="tf32x3": the TF32 split, the split Gram products against float64 (and a single
TF32 product that these tolerances catch), the context switch and CUDA flags, and the Jacobian
Gram step under the context.

On CPU the split products are an exact emulation of tensor-core products (see
`ntkit._runtime.precision`), so these are the mode's accuracy figures up to accumulation order.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntkit._runtime import precision
from ntkit.engine.jacobian_contraction import contract_rows
from ntkit.engine.outputs import OutputSpec
from ntkit._runtime.precision import gram_precision, gram_tf32x3, round_tf32, split_tf32
from helpers.engine import spy_tf32x3


FLT_MAX = float(np.finfo(np.float32).max)


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    """Relative Frobenius error, as the measurements in PEERS.md."""
    return float((got.double() - want).norm() / want.norm())


def _low_bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32) & 0x1FFF


# -- the split -------------------------------------------------------------------------------------
def test_split_keeps_ten_mantissa_bits_and_reproduces_x():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, generator=g) * torch.exp2(torch.randint(-100, 100, (200_000,), generator=g).float())
    hi, lo = split_tf32(x)
    assert (_low_bits(hi) == 0).all() and (_low_bits(lo) == 0).all()
    xd = x.double()
    assert ((xd - hi.double()).abs() <= 2.0**-11 * xd.abs()).all()
    err = (xd - hi.double() - lo.double()).abs() / xd.abs()
    assert err.max() <= 2.0**-22 and err.max() > 2.0**-26  # bounded, and not trivially exact
    # TF32 numbers split exactly; ties round away from zero, as the tensor cores' conversion
    assert torch.equal(split_tf32(hi)[0], hi) and (split_tf32(hi)[1] == 0).all()
    tie = torch.tensor([1 + 2.0**-11, -(1 + 2.0**-11), 1 + 2.0**-11 + 2.0**-23])
    assert round_tf32(tie).tolist() == [1 + 2.0**-10, -(1 + 2.0**-10), 1 + 2.0**-10]


def test_split_of_special_values():
    x = torch.tensor([float("inf"), -float("inf"), float("nan"), FLT_MAX, -FLT_MAX, 0.0, -0.0, 2.0**-149])
    hi, lo = split_tf32(x)
    assert hi[0] == float("inf") and hi[1] == -float("inf") and hi[2].isnan()
    assert (lo[:3] == 0).all()
    # the top of the range truncates instead of overflowing: hi and lo finite, hi + lo ≈ x
    assert torch.isfinite(hi[3:5]).all() and torch.isfinite(lo[3:5]).all()
    assert ((hi[3:5].double() + lo[3:5].double() - x[3:5].double()).abs() <= 2.0**-22 * FLT_MAX).all()
    assert hi[5] == 0 and torch.signbit(hi[6]) and hi[7].abs() <= 2.0**-149
    with pytest.raises(TypeError, match="float32"):
        split_tf32(x.double())


# -- the products ----------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [10_000, 100_000])
def test_gram_tf32x3_is_float32_accurate_where_one_tf32_product_is_not(p):
    g = torch.Generator().manual_seed(p)
    a, b = torch.randn(32, p, generator=g), torch.randn(24, p, generator=g)
    want = a.double() @ b.double().T
    got = gram_tf32x3(a, b)
    assert got.dtype == torch.float64 and got.shape == (32, 24)
    assert _rel(got, want) <= 1e-6
    a_hi, b_hi = split_tf32(a)[0], split_tf32(b)[0]
    assert _rel(a_hi @ b_hi.T, want) >= 1e-4  # a single TF32 product: what the tolerance catches


def test_batched_gram_and_the_context_switch():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 16, 9_000, generator=g), torch.randn(3, 12, 9_000, generator=g)
    want = a.double() @ b.double().transpose(1, 2)
    assert _rel(gram_tf32x3(a, b), want) <= 1e-6
    acc = torch.zeros(3, 16, 12)
    bt = b.transpose(1, 2)
    assert torch.equal(precision.baddbmm_(acc.clone(), a, bt), torch.baddbmm(acc, a, bt))  # default: torch's own
    with gram_precision("tf32x3"):
        assert precision.accumulator_dtype(a) == torch.float64
        assert precision.accumulator_dtype(a.double()) == torch.float64  # float64 operands: never split
        assert not precision.uses_tf32x3(a.double())
        assert _rel(precision.baddbmm_(acc.clone(), a, bt), want) <= 1e-6  # a float32 accumulator too
        with gram_precision("default"):
            assert not precision.uses_tf32x3(a)
        assert precision.uses_tf32x3(a)
    assert not precision.uses_tf32x3(a)
    with pytest.raises(ValueError, match="unknown Gram precision"), gram_precision("tf32x2"):
        pass


def test_cuda_flags_are_set_by_the_new_api_and_restored():
    m, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    if not hasattr(conv, "fp32_precision"):
        pytest.skip("torch without fp32_precision")
    from ntkit._runtime.precision import matmul_precision

    before = (m.fp32_precision, conv.fp32_precision)
    cuda = torch.device("cuda")  # only flags are set: no CUDA device is needed
    with matmul_precision(cuda, "tf32x3"):
        assert (m.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
        assert precision.uses_tf32x3(torch.zeros(1))
        with precision.cuda_tf32(True, convolutions=False):  # what the split products run under
            assert (m.fp32_precision, conv.fp32_precision) == ("tf32", "ieee")
        assert m.fp32_precision == "ieee"
    with matmul_precision(cuda, "tf32"):
        assert (m.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
        assert not precision.uses_tf32x3(torch.zeros(1))
    assert (m.fp32_precision, conv.fp32_precision) == before
    assert m.allow_tf32 in (True, False)  # torch reads the legacy flag again after the restore


# -- the Gram step of both engines -----------------------------------------------------------------
SPECS = [OutputSpec("full"), OutputSpec("trace"), OutputSpec("diagonal"), OutputSpec("logit", 1), OutputSpec("pntk")]


def _rows(b: int, o: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # "w" spans two chunks of the contraction (GRAM_CHUNK = 4096)
    return {"w": torch.randn(b, o, 70, 90, generator=g), "b": torch.randn(b, o, 90, generator=g) * 3}


def _reduce(full: torch.Tensor, spec: OutputSpec) -> torch.Tensor:
    if spec.kind == "full":
        return full
    if spec.kind == "trace":
        return full.diagonal(dim1=2, dim2=3).sum(-1)
    if spec.kind == "diagonal":
        return full.diagonal(dim1=2, dim2=3)
    return full[:, :, 0, 0]


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_contract_rows_under_tf32x3_matches_float64(spec, monkeypatch):
    o = 1 if spec.scalar else 3
    j1, j2 = _rows(5, o, 0), _rows(4, o, 1)
    flat = {k: torch.cat([j[n].reshape(j[n].shape[0], o, -1) for n in j], -1).double() for k, j in (("1", j1), ("2", j2))}
    want = _reduce(torch.einsum("nap,mbp->nmab", flat["1"], flat["2"]), spec)
    calls = spy_tf32x3(monkeypatch)
    plain = contract_rows(j1, j2, spec)
    assert calls == []  # the default path never splits
    with gram_precision("tf32x3"):
        got = contract_rows(j1, j2, spec)
    assert sorted(calls) == [90, 6300]  # one split product per parameter
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert float((got.double() - want).abs().max() / want.abs().max()) <= 1e-5
    assert float((plain.double() - want).abs().max() / want.abs().max()) <= 1e-5
