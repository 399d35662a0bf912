"""Issue 13, item 3 for saved models: the class count read from a saved model's JSON is checked
before anything is built."""

from __future__ import annotations

import json

import numpy as np
import pytest


MLP = "mlp:depth=2,width=8"


def test_a_saved_model_claiming_1e9_classes_is_refused_before_building(tmp_path):
    """The class count in a saved model's JSON is read from a file too."""
    from ntkit.solvers import KernelRidge, load

    x = np.random.default_rng(0).standard_normal((6, 4))
    path = KernelRidge(kernel=f"ntk:{MLP}", alpha=0.1).fit(x, np.eye(6)[:, :3]).save(tmp_path / "m.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["__meta__"]))
    for key, value, phrase in (("num_classes", 10**9, "num_classes=1000000000"), ("dtype", "load", "dtype")):
        bad = json.loads(json.dumps(meta))
        bad["kernel"][key] = value
        np.savez(path, **(arrays | {"__meta__": np.array(json.dumps(bad))}))
        with pytest.raises(ValueError, match=phrase):
            load(path)
    np.savez(path, **arrays)
    assert load(path).predict(x).shape == (6, 3)
