"""`ntkit.kernels.EmpiricalNTK` on mapping inputs (ids + attention mask) with a mapping output:
k(x, z), the cached-feature path, mv and diag against the float64 brute force (1e-8 relative)."""

from __future__ import annotations

import pytest
import torch

from ntkit.kernels import EmpiricalNTK
from ntkit.kernels.base import KernelInputError
from ntkit.reference import ntk_reference
from helpers import job


def _close(k, r):
    assert k.shape == r.shape
    assert float((k - r).abs().max()) <= 1e-8 * float(r.abs().max())


@pytest.mark.parametrize("cache", [True, False])
def test_empirical_ntk_on_mapping_inputs(cache):
    model, x = job.build_tokens()
    a = {k: v[:6] for k, v in x.items()}
    z = {k: v[6:10] for k, v in x.items()}
    kern = EmpiricalNTK(model, output="trace", cache=cache, output_fn=job.token_logits)
    ref = ntk_reference(model, a, z, output="trace", output_fn=job.token_logits)
    _close(kern(a, z), ref)
    _close(kern(a, z), ref)  # again: from the feature cache when it is on
    _close(kern(a), ntk_reference(model, a, output="trace", output_fn=job.token_logits))
    v = torch.randn(4, 2, dtype=torch.float64)
    _close(kern.mv(a, z, v), ref @ v)
    _close(kern.diag(a), torch.diagonal(ntk_reference(model, a, output="trace", output_fn=job.token_logits)))


def test_mapping_inputs_with_different_batch_sizes_are_refused():
    model, x = job.build_tokens()
    bad = {"input_ids": x["input_ids"][:3], "attention_mask": x["attention_mask"][:2]}
    with pytest.raises(KernelInputError, match="different batch sizes"):
        EmpiricalNTK(model)(bad)
