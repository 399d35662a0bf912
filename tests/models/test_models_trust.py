"""Issue 13, item 1: nothing named in a data file runs code unless the user names it.

A saved model (`.npz`) or a kernel store whose model spec was rewritten to `file:evil.py:make` must
be refused before evil.py is imported (it writes a marker file when imported), by
`ntkit.solvers.load`, `ntkit predict` and `ntkit verify`; with the opt-in naming that file it works.
Pickles in `--weights` files, `npz:` data and saved models never run either.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import ntkit
from ntkit.cli import main
from ntkit.models import UntrustedModelError, build_model
from ntkit.solvers import KernelRidge, KernelRidgeClassifier, load

SPEC = "mlp:depth=2,width=8"


def _evil(tmp_path: Path) -> tuple[Path, Path]:
    """A model file that leaves a marker when imported; its factory builds the real SPEC model."""
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil dir" / "evil.py"
    evil.parent.mkdir()
    evil.write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from ntkit.models import build_model\n"
        f"def make(input_shape, num_classes):\n    return build_model({SPEC!r}, input_shape, num_classes)\n")
    return evil, marker


def _tampered_model(tmp_path: Path, evil: Path, cls=KernelRidge) -> tuple[Path, np.ndarray, np.ndarray]:
    """A fitted model saved with an ntk:SPEC kernel, its __meta__ then pointed at evil.py."""
    from ntkit.data import load_data

    x, y = load_data("digits[0:12]").tensors()
    x = x.double()
    target = y if cls is KernelRidgeClassifier else torch.nn.functional.one_hot(y, 10).double()
    model = cls(kernel=f"ntk:{SPEC}", alpha=0.1).fit(x, target)
    want = model.predict(x[:5])
    path = model.save(tmp_path / "model.npz")
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["__meta__"]))
    assert meta["kernel"]["model"] == SPEC
    meta["kernel"]["model"] = f"file:{evil}:make"
    arrays["__meta__"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    return path, x[:5].numpy(), np.asarray(want)


def test_load_refuses_a_file_model_named_in_the_npz_before_importing_it(tmp_path):
    evil, marker = _evil(tmp_path)
    path, x, want = _tampered_model(tmp_path, evil)
    with pytest.raises(UntrustedModelError) as info:
        load(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and str(evil) in msg
    assert f"--trust-code '{evil}'" in msg and f"trust_code=[{str(evil)!r}]" in msg
    assert not marker.exists()
    other = tmp_path / "other.py"
    other.write_text("")
    with pytest.raises(UntrustedModelError):  # trusting another file is not trusting this one
        load(path, trust_code=[other])
    with pytest.raises(UntrustedModelError):
        load(path, trust_code=[f"file:{other}:make"])
    assert not marker.exists()
    with pytest.raises(ValueError, match="not a file"):
        load(path, trust_code=[tmp_path / "missing.py"])
    assert not marker.exists()

    loaded = load(path, trust_code=[evil])  # the opt-in that names the file
    assert marker.read_text() == "ran"
    np.testing.assert_allclose(np.asarray(loaded.predict(x)), want, rtol=1e-10, atol=1e-12)
    marker.unlink()
    load(path, trust_code=True)
    assert marker.exists()
    marker.unlink()
    load(path, trust_code=f"file:{evil}:make")  # an exact spec works too
    assert marker.exists()


def test_predict_refuses_unless_the_file_is_named_on_the_command_line(tmp_path, capsys):
    evil, marker = _evil(tmp_path)
    path, _, _ = _tampered_model(tmp_path, evil, cls=KernelRidgeClassifier)
    pred = tmp_path / "pred.npy"
    argv = ["predict", str(path), "digits[0:5]", "-o", str(pred), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "refusing to run code" in err and "--trust-code" in err and "Traceback" not in err
    assert not marker.exists() and not pred.exists()
    assert main(argv + ["--trust-code", str(tmp_path / "nope.py")]) == 2
    assert "not a file" in capsys.readouterr().err and not marker.exists()
    assert main(argv + ["--trust-code", str(evil)]) == 0
    assert marker.exists() and np.load(pred).shape == (5,)


def test_a_file_model_typed_by_the_user_is_trusted(tmp_path):
    evil, marker = _evil(tmp_path)
    net = build_model(f"file:{evil}:make", (1, 8, 8), 10)
    assert marker.exists() and net(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.fixture
def tampered_store(tmp_path):
    evil, marker = _evil(tmp_path)
    store = tmp_path / "K.zarr"
    assert main(["compute", "digits[0:8]", SPEC, "-o", str(store), "--quiet", "--tile", "4"]) == 0
    meta_path = store / "zarr.json"
    doc = json.loads(meta_path.read_text())
    assert doc["attributes"]["ntkit"]["model"]["spec"].startswith("mlp:")
    doc["attributes"]["ntkit"]["model"]["spec"] = f"file:{evil}:make"
    meta_path.write_text(json.dumps(doc))
    return store, evil, marker


def test_verify_refuses_a_file_model_from_store_metadata(tampered_store, capsys):
    store, evil, marker = tampered_store
    assert main(["verify", str(store), "--sample", "1"]) == 2
    err = capsys.readouterr().err
    assert "refusing to run code" in err and f"the store {store}" in err and "--trust-code" in err
    assert not marker.exists()
    # commands that read the store without rebuilding its model never run it either
    assert main(["info", str(store)]) == 0
    assert main(["verify", str(store), "--sample", "0"]) == 0
    assert ntkit.open(store).to_numpy().shape == (8, 8)
    out = store.parent / "fit.npz"
    assert main(["fit", "digits[0:8]", "--kernel", f"store:{store}", "--solver", "ridge", "-o", str(out),
                 "--quiet"]) == 0
    assert main(["analyze", str(store), "-o", str(store.parent / "report"), "--quiet"]) == 0
    assert not marker.exists()
    capsys.readouterr()
    assert main(["verify", str(store), "--sample", "1", "--trust-code", str(evil)]) == 0
    assert marker.exists() and "OK" in capsys.readouterr().out


class _Exploit:
    """Unpickling this creates a marker file: a stand-in for arbitrary code."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickles_in_weights_data_and_saved_models_never_run(tmp_path):
    marker = tmp_path / "PICKLED"
    exploit = _Exploit()
    exploit.marker = str(marker)
    weights = tmp_path / "w.pt"
    torch.save({"0.weight": exploit}, weights)
    with pytest.raises(Exception):
        build_model(SPEC, (1, 8, 8), 10, weights=weights)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.array([exploit, exploit], dtype=object), y=np.array([0, 1]))
    from ntkit.data import DataFormatError, load_data

    with pytest.raises(DataFormatError):
        load_data(f"npz:{data}")
    model = KernelRidge(kernel="laplacian", alpha=0.1).fit(np.eye(3), np.eye(3))
    saved = model.save(tmp_path / "m.npz")
    with np.load(saved) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["dual_coef"] = np.array([exploit], dtype=object)
    np.savez(saved, **arrays)
    with pytest.raises(ValueError):
        load(saved)
    assert not marker.exists()
    pickle.loads(pickle.dumps(exploit))  # the payload itself does run when unpickled
    assert marker.exists()


def test_torchvision_pretrained_weights_from_a_file_need_the_opt_in():
    """Pretrained weights are downloaded and unpickled: refused from a file before torchvision loads."""
    from ntkit.models import untrusted_source

    spec = "torchvision:resnet18:weights=IMAGENET1K_V1"
    with untrusted_source("the saved model m.npz"), pytest.raises(UntrustedModelError, match="pretrained"):
        build_model(spec, (3, 32, 32), 1000)
    try:
        import torchvision  # noqa: F401
    except Exception:  # not installed (or broken): past the refusal, the import is what fails
        for trust in ([spec], True):
            with untrusted_source("m.npz", trust), pytest.raises(ImportError):
                build_model(spec, (3, 32, 32), 1000)
        with untrusted_source("m.npz"), pytest.raises(ImportError):
            build_model("torchvision:resnet18", (3, 32, 32), 10)  # no weights: nothing to trust


def test_verify_repair_refuses_a_file_model_from_store_metadata(tampered_store, capsys):
    store, evil, marker = tampered_store
    (store / "tiles" / "0.1.json").unlink()  # a missing tile: --repair must rebuild the model
    assert main(["verify", str(store), "--sample", "0", "--repair"]) == 2
    err = capsys.readouterr().err
    assert "refusing to run code" in err and "--trust-code" in err
    assert not marker.exists()
