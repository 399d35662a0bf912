"""An npz of several named input arrays (no 'x'): the model's keyword inputs, sliced, joined and
fingerprinted like one array; malformed files are refused with the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntkit.data import load_data
from ntkit.data.formats import DataFormatError


def _write(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


@pytest.fixture
def tokens(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 20, (9, 5))
    mask = (np.arange(5)[None] < rng.integers(1, 6, (9, 1))).astype(np.int64)
    return _write(tmp_path / "t.npz", input_ids=ids, attention_mask=mask, y=rng.integers(0, 3, 9),
                  input_ids_test=ids[:4], attention_mask_test=mask[:4], y_test=np.arange(4) % 3), ids, mask


def test_keyword_arrays_load_as_a_mapping(tokens):
    spec, ids, mask = tokens
    ds = load_data(spec + "[train:2:6,test:0:2]")
    x, y = ds[:]
    assert set(x) == {"input_ids", "attention_mask"} and ds.input_shape == {"input_ids": (5,), "attention_mask": (5,)}
    assert torch.equal(x["input_ids"], torch.from_numpy(np.concatenate([ids[2:6], ids[:2]])))
    assert torch.equal(x["attention_mask"], torch.from_numpy(np.concatenate([mask[2:6], mask[:2]])))
    assert len(ds) == 6 and ds.dtype == torch.int64
    one, label = ds[1]
    assert torch.equal(one["input_ids"], torch.from_numpy(ids[3])) and int(label) == int(y[1])


def test_the_mask_is_part_of_the_fingerprint(tmp_path, tokens):
    spec, ids, mask = tokens
    other = mask.copy()
    other[0, -1] = 1 - other[0, -1]
    changed = _write(tmp_path / "u.npz", input_ids=ids, attention_mask=other, y=np.zeros(9, np.int64))
    same = _write(tmp_path / "v.npz", input_ids=ids, attention_mask=mask, y=np.zeros(9, np.int64))
    assert load_data(changed).fingerprint() != load_data(same).fingerprint()
    assert load_data(same).fingerprint() == load_data(_write(tmp_path / "s.npz", input_ids=ids, attention_mask=mask,
                                                             y=np.zeros(9, np.int64))).fingerprint()


@pytest.mark.parametrize("arrays,match", [
    (dict(input_ids=np.zeros((3, 2)), attention_mask=np.zeros((4, 2))), "one row per sample"),
    (dict(input_ids=np.zeros((3, 2)), input_ids_test=np.zeros((2, 2)), mask_test=np.zeros((2, 2))), "do not match"),
    (dict(input_ids=np.zeros((3, 2)), input_ids_test=np.zeros((2, 3))), r"\(2,\) and input_ids_test \(3,\)"),
    (dict(y=np.zeros(3, np.int64)), "no array 'x' and no other input arrays"),
])
def test_malformed_keyword_npz(tmp_path, arrays, match):
    with pytest.raises(DataFormatError, match=match):
        load_data(_write(tmp_path / "bad.npz", **arrays))
