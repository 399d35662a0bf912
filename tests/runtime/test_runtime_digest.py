"""`ntkit._runtime.digest.tensor_bytes`, the one tensor serialization behind every fingerprint, and
the fingerprints that use it: their digests must equal the framings they were first written
with (computed here independently, through numpy), or existing stores and saved models would
lose their identity."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from torch import nn

from ntkit._runtime.digest import tensor_bytes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64, torch.float16, torch.uint8])
def test_bytes_are_the_row_major_storage(dtype):
    t = (torch.arange(24) % 7).to(dtype).reshape(2, 3, 4)
    assert tensor_bytes(t) == np.ascontiguousarray(t.numpy()).tobytes()
    assert tensor_bytes(t.transpose(0, 2)) == np.ascontiguousarray(t.transpose(0, 2).numpy()).tobytes()


def test_bfloat16_and_empty_tensors():
    t = torch.randn(5, 3).to(torch.bfloat16)
    assert tensor_bytes(t) == t.view(torch.int16).numpy().tobytes()  # numpy has no bfloat16
    assert tensor_bytes(torch.empty(0, 4)) == b""
    assert tensor_bytes(torch.tensor(2.5)) == np.float32(2.5).tobytes()


def test_model_fingerprint_keeps_its_framing():
    from ntkit.models.build import model_fingerprint

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    want = hashlib.sha256()
    for name, t in model.state_dict().items():
        header = f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode()
        data = t.numpy().tobytes()
        for chunk in (header, data):
            want.update(len(chunk).to_bytes(8, "little"))
            want.update(chunk)
    assert model_fingerprint(model) == want.hexdigest()


def test_input_fingerprint_keeps_its_framing():
    from ntkit.engine.inputs import fingerprint_update

    x = torch.randn(6, 2, 3, dtype=torch.float64)
    got = hashlib.sha256()
    fingerprint_update(got, x[:4], True, 6)
    fingerprint_update(got, x[4:], False, 6)
    want = hashlib.sha256(f"{x.dtype}{(2, 3)}6".encode() + x.numpy().tobytes())
    assert got.hexdigest() == want.hexdigest()


def test_kernel_probe_keeps_its_framing():
    from ntkit.kernels import Precomputed
    from ntkit.solvers.base import kernel_probe

    k = np.random.default_rng(0).standard_normal((20, 20)).astype(np.float32)
    probe = kernel_probe(Precomputed(k), np.arange(20))
    idx = np.unique(np.concatenate([np.arange(8), np.arange(12, 20)]))
    want = hashlib.sha256(np.ascontiguousarray(k[np.ix_(idx, idx)].astype(np.float64)).tobytes()).hexdigest()
    assert probe["sha256"] == want and probe["index"] == idx.tolist()
