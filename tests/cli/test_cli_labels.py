"""Issue 13, item 3 on the command line: one bad label must not size a model with 10**9 outputs;
`--num-classes` names the count, and `predict` needs none. The run with a label of 10**9 runs in a
subprocess under a 4 GiB address-space limit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


from ntkit.cli import main

from helpers.inputs import labeled_npz


SRC = str(Path(__file__).resolve().parents[2] / "src")
MLP = "mlp:depth=2,width=8"


def test_compute_with_a_label_of_1e9_is_a_one_line_error_not_an_oom(tmp_path):
    path = labeled_npz(tmp_path / "d.npz", [0, 1, 2, 10**9])
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
        "from ntkit.cli import main\n"
        f"sys.exit(main(['compute', 'npz:{path}', '{MLP}', '-o', '{tmp_path / 'K.npy'}', '--quiet']))\n")
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "y[3] = 1,000,000,000" in r.stderr and "--num-classes" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "K.npy").exists()


def test_num_classes_on_the_command_line(tmp_path, capsys):
    path = labeled_npz(tmp_path / "d.npz", [1, 2, 3, 1100])  # sparse ids: 1101 classes only when told
    out = tmp_path / "K.npy"
    base = ["compute", f"npz:{path}", MLP, "-o", str(out), "--quiet"]
    assert main(base) == 2
    assert "--num-classes" in capsys.readouterr().err and not out.exists()
    assert main(base + ["--num-classes", "10"]) == 2
    assert "out of range for --num-classes 10" in capsys.readouterr().err
    assert main(base + ["--num-classes", "1101"]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["data"]["num_classes"] == 1101 and meta["n_logits"] == 1101

    fit = ["fit", f"npz:{path}", "--kernel", f"ntk:{MLP}", "--solver", "ridge", "-o", str(tmp_path / "m.npz"),
           "--quiet"]
    assert main(fit) == 2 and "--num-classes" in capsys.readouterr().err
    assert main(fit + ["--num-classes", "1101"]) == 0

    store = tmp_path / "K.zarr"
    assert main(["compute", f"npz:{path}", MLP, "-o", str(store), "--quiet", "--num-classes", "1101"]) == 0
    assert main(["verify", str(store), "--sample", "1"]) == 2  # 1101 from the store's file: not trusted
    assert "--num-classes 1101" in capsys.readouterr().err
    assert main(["verify", str(store), "--sample", "1", "--num-classes", "1101"]) == 0


def test_predict_needs_no_class_count(tmp_path, capsys):
    """Data that is only predicted loads whatever its labels (the count sizes nothing there)."""
    train = labeled_npz(tmp_path / "train.npz", [0, 1, 2, 1])
    model = tmp_path / "m.npz"
    assert main(["fit", f"npz:{train}", "--kernel", "laplacian", "--solver", "ridge", "-o", str(model),
                 "--quiet"]) == 0
    test = labeled_npz(tmp_path / "test.npz", [0, 1, 10**9])
    assert main(["predict", str(model), f"npz:{test}", "-o", str(tmp_path / "p.npy")]) == 0
    assert "accuracy" in capsys.readouterr().out
