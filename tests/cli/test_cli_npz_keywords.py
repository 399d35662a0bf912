"""`ntkit compute npz:TOKENS.npz file:model.py:make`: an npz of keyword inputs (input_ids,
attention_mask) reaches the model as keyword arguments, to a .npy and to a verified store; a model
spec that takes one array is refused in one line. Reference: the float64 brute force."""

from __future__ import annotations

import numpy as np
import torch

from ntkit.reference import ntk_reference
from cli_run import run_cli

MODEL = '''
import torch
class Tok(torch.nn.Module):
    def __init__(self, shapes, classes):
        super().__init__()
        assert set(shapes) == {"input_ids", "attention_mask"}, shapes
        self.emb = torch.nn.Embedding(20, 6)
        self.head = torch.nn.Linear(6, classes)
    def forward(self, input_ids, attention_mask):
        h = (self.emb(input_ids) * attention_mask[..., None]).sum(1) / attention_mask.sum(1, keepdim=True)
        return self.head(torch.tanh(h))
def make(input_shape, num_classes):
    return Tok(input_shape, num_classes)
'''


def test_keyword_npz_to_npy_and_store(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 20, (12, 5))
    mask = (np.arange(5)[None] < rng.integers(1, 6, (12, 1))).astype(np.int64)
    np.savez(tmp_path / "tok.npz", input_ids=ids, attention_mask=mask, y=rng.integers(0, 3, 12))
    (tmp_path / "tok.py").write_text(MODEL)
    r = run_cli(["compute", "npz:tok.npz", "file:tok.py:make", "--output", "trace", "--dtype", "float64",
                 "-o", "K.npy", "--quiet"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    k = np.load(tmp_path / "K.npy")
    # the command line's model: the same factory built from the same seed (--seed 0)
    from ntkit.models import build_model

    net = build_model("file:" + str(tmp_path / "tok.py") + ":make", {"input_ids": (5,), "attention_mask": (5,)}, 3,
                      seed=0).double()
    x = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    ref = ntk_reference(net, x, output="trace").numpy()
    assert np.abs(k - ref).max() <= 1e-8 * np.abs(ref).max()
    r = run_cli(["compute", "npz:tok.npz", "file:tok.py:make", "--output", "trace", "--dtype", "float64",
                 "-o", "K.zarr", "--tile", "5", "--quiet"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_cli(["verify", "K.zarr", "--sample", "2", "--trust-code", "tok.py"], cwd=tmp_path)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
    r = run_cli(["compute", "npz:tok.npz", "mlp", "-o", "K2.npy"], cwd=tmp_path)
    assert r.returncode == 2 and "keyword inputs (input_ids, attention_mask)" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
