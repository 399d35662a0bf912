"""Usage errors as a person meets them: through the real command line in a fresh process.

Every user error exits with status 2 and one line, `error: <problem>. <fix>`, on stderr; no
Python traceback, whatever the installed typer/click raise (typer >= 0.16 ships its own copy of
click, whose exception classes are not click's). The help and the version exit 0.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cli_run import run_cli

TINY = "digits[train:0:8]"
MODEL = "mlp:depth=1,width=8"

USAGE_ERRORS = {
    "misspelt command": (["comptue", TINY, MODEL], "No such command 'comptue'. Did you mean 'compute'?"),
    "unknown option": (["compute", TINY, MODEL, "-o", "K.npy", "--ouput", "trace"], "No such option: --ouput"),
    "missing -o": (["compute", TINY, MODEL], "Missing option '-o'"),
    "missing argument": (["compute"], "Missing argument"),
    "not an integer": (["compute", TINY, MODEL, "-o", "K.npy", "--batch-size", "abc"], "'--batch-size'"),
    "unknown method": (["compute", TINY, MODEL, "-o", "K.npy", "-m", "structed"], "did you mean 'structured'"),
    "bad output suffix": (["compute", TINY, MODEL, "-o", "K.txt"], "must end in .npy"),
    "unknown solver": (["fit", TINY, "-o", "m.npz", "--solver", "foo"], "unknown --solver 'foo'"),
    "misspelt data set": (["compute", "digit", MODEL, "-o", "K.npy"], "did you mean 'digits'?"),
    "misspelt part": (["compute", "digits[tset]", MODEL, "-o", "K.npy"], "did you mean 'test'?"),
    "misspelt model option": (["compute", TINY, "mlp:dpth=2", "-o", "K.npy"], "did you mean 'depth'?"),
    "misspelt kernel": (["fit", TINY, "--kernel", "lapalcian", "-o", "m.npz"], "did you mean 'laplacian'?"),
    "cifar10 without its files": (["compute", "cifar10", "cnn", "-o", "K.npy"], "--data-dir DIR"),
    "missing kernel file": (["info", "nonexist.npy"], "no such file: nonexist.npy"),
    "missing store": (["verify", "nope.zarr"], "nope.zarr"),
    "text file as weights": (["compute", TINY, MODEL, "-o", "K.npy", "--weights", "notes.txt"],
                             "not a readable PyTorch weights file"),
    "whole pickled model as weights": (["compute", TINY, MODEL, "-o", "K.npy", "--weights", "whole.pt"],
                                       "torch.save(model.state_dict(), PATH)"),
    "checkpoint dict as weights": (["compute", TINY, MODEL, "-o", "K.npy", "--weights", "ckpt.pt"],
                                   "checkpoint['state_dict']"),
}


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "notes.txt").write_text("root:x:0:0:root:/root:/bin/bash\nnot weights\n")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole.pt")
    torch.save({"epoch": 3, "state_dict": {"w": torch.zeros(2)}}, tmp_path / "ckpt.pt")
    return tmp_path


def _one_error_line(result) -> str:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{result.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("case", sorted(USAGE_ERRORS))
def test_user_error_is_one_line_with_status_2(workdir, case):
    args, expected = USAGE_ERRORS[case]
    result = run_cli(args, cwd=workdir)
    line = _one_error_line(result)
    assert result.returncode == 2, (result.returncode, line)
    assert expected in line, line
    assert "?." not in line  # click's "Did you mean 'x'?" is not followed by our period
    assert not (workdir / "K.npy").exists()


def test_no_arguments_prints_help_without_traceback(tmp_path):
    result = run_cli([], cwd=tmp_path)
    assert result.returncode == 2
    assert "Usage: ntkit" in result.stdout and "compute" in result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    assert "NoArgsIsHelp" not in result.stderr + result.stdout


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["compute", "-h"]])
def test_help_exits_zero(tmp_path, args):
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Usage: ntkit" in result.stdout
    assert "{data}" not in result.stdout  # arguments are named as in the synopsis, DATA MODEL


def test_version(tmp_path):
    import ntkit

    result = run_cli(["--version"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ntkit {ntkit.__version__}"


def test_info_on_a_plain_npy_says_what_it_can(tmp_path):
    np.save(tmp_path / "K.npy", np.zeros((3, 4), np.float32))
    result = run_cli(["info", "K.npy"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert '"shape": [\n    3,\n    4\n  ]' in result.stdout
    assert "no metadata sidecar" in result.stderr and "Traceback" not in result.stderr


def test_unlabeled_npz_needs_and_takes_num_classes(tmp_path):
    """An eNTK needs no labels: an npz with x only computes once --num-classes sizes the model."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "x.npz", x=rng.standard_normal((6, 5)).astype(np.float32))
    refused = run_cli(["compute", "npz:x.npz", MODEL, "-o", "K.npy"], cwd=tmp_path)
    assert refused.returncode == 2 and "--num-classes" in _one_error_line(refused)
    done = run_cli(["compute", "npz:x.npz", MODEL, "-o", "K.npy", "--num-classes", "3", "--output", "full",
                    "--dtype", "float64", "-q"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    K = np.load(tmp_path / "K.npy")
    assert K.shape == (6, 6, 3, 3)
    # the same kernel as the Python API on a model built from the same spec, seed and sizes
    from ntkit.models import build_model
    from ntkit.reference import ntk_reference

    x = torch.from_numpy(np.load(tmp_path / "x.npz")["x"]).double()
    net = build_model(MODEL, (5,), 3, seed=0).double()
    ref = ntk_reference(net, x, None, "full", None)
    # float64 on both sides: only summation order differs
    np.testing.assert_allclose(K, ref.numpy(), rtol=1e-10, atol=1e-12 * float(ref.abs().max()))


def test_spec_grammars_are_one_command_away(tmp_path):
    result = run_cli(["info", "--specs"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for heading in ("Data spec grammar:", "Model spec grammar:", "Kernel specs"):
        assert heading in result.stdout
    assert "  SPEC   := NAME ['[' SEL (',' SEL)* ']']       samples of a named data set\n" in result.stdout


def test_kernel_files_of_the_wrong_kind_are_named_with_the_fix(tmp_path):
    """A full (N, N, O, O) eNTK given to `fit`, and an unlabeled kernel given to `analyze`."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "x.npz", x=rng.standard_normal((8, 5)).astype(np.float32), y=np.arange(8) % 2)
    np.savez(tmp_path / "u.npz", x=rng.standard_normal((8, 5)).astype(np.float32))
    assert run_cli(["compute", "npz:x.npz", MODEL, "-o", "F.npy", "--output", "full", "-q"], cwd=tmp_path).returncode == 0
    assert run_cli(["compute", "npz:u.npz", MODEL, "-o", "U.npy", "--num-classes", "2", "-q"],
                   cwd=tmp_path).returncode == 0
    fit = run_cli(["fit", "npz:x.npz", "--kernel", "npy:F.npy", "--solver", "ridge", "-o", "m.npz"], cwd=tmp_path)
    assert fit.returncode == 2 and "--output trace" in _one_error_line(fit)
    analyze = run_cli(["analyze", "U.npy", "-o", "rep", "-q"], cwd=tmp_path)
    assert analyze.returncode == 2 and "pass --labels DATA" in _one_error_line(analyze)
    assert not (tmp_path / "rep").exists()
