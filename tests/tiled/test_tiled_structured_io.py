"""`ntkit.compute` on models as researchers write them: mapping inputs with an attention mask,
a mapping output picked by `output_fn`, and a per-token kernel (trace/diagonal axes), in memory
and into a store that is killed and resumed bit-identically; the mask is part of the data's
fingerprint. Reference: the float64 brute force (`ntkit.reference`), 1e-8 relative (float64
sums in another order differ by ~1e-15)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import ntkit
from ntkit.reference import ntk_reference
from ntkit.store import KernelStore, StoreMismatchError
from helpers import job

ROOT = Path(__file__).resolve().parents[2]
AXES = dict(output_fn=job.token_logits, diagonal_axes=1, trace_axes=-1)


def _close(k, r):
    k = torch.as_tensor(np.asarray(k))
    assert k.shape == r.shape
    assert float((k - r).abs().max()) <= 1e-8 * float(r.abs().max())


@pytest.fixture(scope="module")
def token_job():
    model, x = job.build_tokens()
    x = {k: v[:12] for k, v in x.items()}
    return model, x


@pytest.mark.parametrize("method", ["jacobian", "structured", "ntk-vp", "auto"])
def test_mapping_inputs_per_token_kernel_in_memory_and_store(tmp_path, token_job, method):
    model, x = token_job
    z = {k: v[:5] for k, v in job.build_tokens()[1].items()}
    ref_sym = ntk_reference(model, x, **AXES)
    ref = ntk_reference(model, x, z, **AXES)
    _close(ntkit.compute(model, x, tile=5, method=method, **AXES), ref_sym)
    _close(ntkit.compute(model, x, z, tile=5, method=method, **AXES), ref)
    ks = ntkit.compute(model, x, store=tmp_path / "K.zarr", tile=5, method=method, **AXES)
    assert ks.shape == (12, 12, 6) and ks.metadata["output"] == "axes:trace=2,diagonal=1"
    _close(ks.to_numpy(), ref_sym)
    assert ks.verify().ok


def test_store_with_free_output_axes_mirrors_them(tmp_path, token_job):
    """A symmetric store whose tiles keep x1's and x2's token axes: the mirror tile swaps them."""
    model, x = token_job
    ks = ntkit.compute(model, x, store=tmp_path / "K.zarr", tile=5, output_fn=job.token_logits, trace_axes=-1)
    assert ks.shape == (12, 12, 6, 6)
    _close(ks.to_numpy(), ntk_reference(model, x, output_fn=job.token_logits, trace_axes=-1))
    assert ks.verify().ok


def test_a_changed_mask_is_other_data(tmp_path, token_job):
    model, x = token_job
    path = tmp_path / "K.zarr"
    ntkit.compute(model, x, store=path, tile=5, output="trace")
    other = dict(x, attention_mask=x["attention_mask"].clone())
    other["attention_mask"][3, -1] = 1 - other["attention_mask"][3, -1]
    with pytest.raises(StoreMismatchError, match="the row data differ"):
        ntkit.compute(model, other, store=path, tile=5, output="trace")
    renamed = {"input_ids": x["input_ids"], "attention_mask": x["attention_mask"].clone()}
    assert ntkit.compute(model, renamed, store=path, tile=5, output="trace").complete  # same data: resumes


def test_dataset_of_mapping_items(token_job):
    """A Dataset whose items are ({input_ids, attention_mask, label}) mappings: labels left out."""
    model, x = token_job

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 12

        def __getitem__(self, i):
            return {"input_ids": x["input_ids"][i], "attention_mask": x["attention_mask"][i], "label": i % 3}

    _close(ntkit.compute(model, Items(), tile=5, output="trace"), ntk_reference(model, x, output="trace"))


def _start(path: Path, sleep: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "tests.helpers.job", str(path), "--sleep", str(sleep), "--tokens"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_then_resume_is_bit_identical_with_mapping_inputs(tmp_path):
    reference = job.run_tokens(str(tmp_path / "ref.zarr"))
    path = tmp_path / "K.zarr"
    proc = _start(path, sleep=0.05)
    t = time.time()
    while time.time() - t < 60:
        if (path / "tiles").is_dir() and len(list((path / "tiles").glob("*.json"))) >= 2:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done, total = KernelStore(path).progress
    assert 1 <= done < total
    resumed = job.run_tokens(str(path))
    assert resumed.complete and resumed.verify().ok
    assert np.array_equal(resumed.to_numpy(), reference.to_numpy())
    model, x = job.build_tokens()
    _close(reference.to_numpy(), ntk_reference(model, x, **AXES))


def test_a_store_refuses_another_output_fn_and_the_disk_cache_with_axes(tmp_path, token_job):
    """output_fn's name is part of a store's identity; Jacobian rows cached on disk hold the plain
    outputs only, so features='disk' with trace/diagonal axes is refused before any work."""
    model, x = token_job
    path = tmp_path / "K.zarr"
    ntkit.compute(model, x, store=path, tile=5, output="trace", output_fn=job.token_logits)

    def pooled(out):
        return out["logits"]

    with pytest.raises(StoreMismatchError, match="output_fn differs"):
        ntkit.compute(model, x, store=path, tile=5, output="trace", output_fn=pooled)
    with pytest.raises(ValueError, match="features='disk'.*trace_axes/diagonal_axes"):
        ntkit.compute(model, x, store=tmp_path / "D.zarr", features="disk", **AXES)
    assert not (tmp_path / "D.zarr").exists()
