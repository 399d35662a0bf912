"""Every mistake a user can make on the command line ends in one `error:` line and exit status 2.

Table-driven: each case is a command line and the files it needs (damaged data, weights and
model files, unwritable output locations, bad option values). Each must exit non-zero with an
`error:` message holding the key words, with no traceback, and leave no temporary file or half
store behind. Every case failed on the code before this test (a traceback, exit 0, a message
advising an unsafe fix, or a half-written file). Genuine bugs keep their traceback.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import ntkit
from ntkit.cli import main

M = "mlp:depth=2,width=8"
D = "digits[0:6]"


class _Evil:
    """A pickle that would create a marker file if it were ever unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Damaged and odd input files, written once for all cases."""
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 4)).astype(np.float32), np.arange(6) % 3
    np.savez(d / "good.npz", x=x, y=y)
    raw = (d / "good.npz").read_bytes()
    (d / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    flipped = bytearray(raw)
    flipped[100] ^= 0xFF  # inside x.npy's data: a CRC error
    (d / "flip.npz").write_bytes(bytes(flipped))
    (d / "garbage.npz").write_bytes(b"this is not a zip file at all")
    np.savez(d / "obj.npz", x=np.array([{"a": 1}, None], dtype=object), y=np.array([0, 1]))
    with zipfile.ZipFile(d / "member.npz", "w") as z:
        z.writestr("x.npy", b"not an npy")
    np.save(d / "x.npy", x)
    np.save(d / "v.npy", np.zeros(5))
    np.save(d / "K.npy", np.eye(6, dtype=np.float32))
    kraw = (d / "K.npy").read_bytes()
    (d / "Ktrunc.npy").write_bytes(kraw[: len(kraw) // 2])
    (d / "Kzip.npy").write_bytes(raw)  # an .npz under a .npy name
    # weights
    from ntkit.models import build_model

    net = build_model(M, (4,), 3)
    torch.save(net.state_dict(), d / "w.pt")
    torch.save(net, d / "whole.pt")
    wraw = (d / "w.pt").read_bytes()
    (d / "wtrunc.pt").write_bytes(wraw[: len(wraw) // 2])
    (d / "wgarbage.pt").write_bytes(b"garbage" * 10)
    with open(d / "evil.pt", "wb") as f:
        pickle.dump(_Evil(str(d / "PWNED")), f)
    (d / "wdir").mkdir()
    # model files
    (d / "syn.py").write_text("import torch\n\ndef make(:\n    pass\n")
    (d / "boom.py").write_text("import torch\nraise RuntimeError('boom at import')\n")
    (d / "factory.py").write_text("import torch\n\ndef make(input_shape, num_classes):\n"
                                  "    raise RuntimeError('factory boom')\n")
    (d / "zero.py").write_text("import math\nimport torch\n\ndef make(input_shape, num_classes):\n"
                               "    return torch.nn.Sequential(torch.nn.Flatten(), "
                               "torch.nn.Linear(math.prod(input_shape), 0))\n")
    (d / "afile").write_text("a file where a folder is expected\n")
    (d / "meta.json").write_bytes(b"\xff\xfe not json")
    return d


# (id, argv, key words of the error) -- {in}: the inputs folder, {tmp}: this case's own folder
CASES = [
    # damaged data files
    ("npz truncated", ["compute", "npz:{in}/trunc.npz", M, "-o", "{tmp}/K.npy"], ["trunc.npz", "truncated or damaged"]),
    ("npz bad crc", ["compute", "npz:{in}/flip.npz", M, "-o", "{tmp}/K.npy"], ["flip.npz", "damaged", "CRC"]),
    ("npz not a zip", ["compute", "npz:{in}/garbage.npz", M, "-o", "{tmp}/K.npy"],
     ["garbage.npz", "not a zip archive", "numpy.savez"]),
    ("npz object array", ["compute", "npz:{in}/obj.npz", M, "-o", "{tmp}/K.npy"],
     ["obj.npz", "object arrays", "never loads", "allow_pickle=False"]),
    ("npz member not npy", ["compute", "npz:{in}/member.npz", M, "-o", "{tmp}/K.npy"], ["member.npz", "not .npy arrays"]),
    ("npy as npz", ["compute", "npz:{in}/x.npy", M, "-o", "{tmp}/K.npy"], ["x.npy", "single-array .npy"]),
    ("model npz truncated", ["predict", "{in}/trunc.npz", D, "-o", "{tmp}/p.npy"], ["trunc.npz", "truncated or damaged"]),
    ("model is a npy", ["predict", "{in}/K.npy", D, "-o", "{tmp}/p.npy"], ["K.npy", "not a model saved by ntkit"]),
    ("model is a dir", ["predict", "{in}/wdir", D, "-o", "{tmp}/p.npy"], ["wdir", "is a directory"]),
    ("kernel npy truncated", ["fit", D, "-k", "npy:{in}/Ktrunc.npy", "-s", "ridge", "-o", "{tmp}/m.npz"],
     ["Ktrunc.npy", "truncated"]),
    ("kernel npy is a zip", ["analyze", "{in}/Kzip.npy", "--labels", D, "-o", "{tmp}/rep"], ["Kzip.npy", ".npz archive"]),
    ("kernel npy 1-d", ["analyze", "{in}/v.npy", "--labels", D, "-o", "{tmp}/rep"], ["v.npy", "not a kernel"]),
    ("kernel sidecar not json", ["info", "{in}/meta.json"], ["meta.json", "not the JSON metadata"]),
    ("info on a folder", ["info", "{in}/wdir"], ["wdir", "not a kernel store"]),
    ("info on an npz", ["info", "{in}/good.npz"], ["good.npz", "is not a kernel"]),
    ("info on a missing store", ["info", "{in}/nope.zarr"], ["no kernel store at", "nope.zarr"]),
    ("analyze a missing store", ["analyze", "{in}/nope.zarr", "-o", "{tmp}/rep"], ["no kernel store at", "nope.zarr"]),
    # weights
    ("weights pickled model", ["compute", "npz:{in}/good.npz", M, "-o", "{tmp}/K.npy", "--weights", "{in}/whole.pt"],
     ["whole.pt", "not a plain state dict", "torch.save(model.state_dict(), PATH)"]),
    ("weights truncated", ["compute", "npz:{in}/good.npz", M, "-o", "{tmp}/K.npy", "--weights", "{in}/wtrunc.pt"],
     ["wtrunc.pt", "not a readable PyTorch weights file", "torch.save(model.state_dict(), PATH)"]),
    ("weights garbage", ["compute", "npz:{in}/good.npz", M, "-o", "{tmp}/K.npy", "--weights", "{in}/wgarbage.pt"],
     ["wgarbage.pt", "torch.save(model.state_dict(), PATH)"]),
    ("weights code pickle", ["compute", "npz:{in}/good.npz", M, "-o", "{tmp}/K.npy", "--weights", "{in}/evil.pt"],
     ["evil.pt", "never unpickles code"]),
    ("weights dir", ["compute", "npz:{in}/good.npz", M, "-o", "{tmp}/K.npy", "--weights", "{in}/wdir"],
     ["wdir", "is a directory"]),
    ("weights missing", ["compute", "npz:{in}/good.npz", M, "-o", "{tmp}/K.npy", "--weights", "{in}/nope.pt"],
     ["no weights file", "nope.pt"]),
    # model files
    ("model file syntax error", ["compute", "npz:{in}/good.npz", "file:{in}/syn.py:make", "-o", "{tmp}/K.npy"],
     ["cannot load model file", "syn.py", "SyntaxError at line 3"]),
    ("model file raises", ["compute", "npz:{in}/good.npz", "file:{in}/boom.py:make", "-o", "{tmp}/K.npy"],
     ["boom.py", "RuntimeError at line 2", "boom at import"]),
    ("model factory raises", ["compute", "npz:{in}/good.npz", "file:{in}/factory.py:make", "-o", "{tmp}/K.npy"],
     ["factory.py:make", "line 4", "factory boom"]),
    ("zero outputs npy", ["compute", "npz:{in}/good.npz", "file:{in}/zero.py:make", "-o", "{tmp}/K.npy"],
     ["no outputs", "O = 0"]),
    ("zero outputs store", ["compute", "npz:{in}/good.npz", "file:{in}/zero.py:make", "-o", "{tmp}/K.zarr"],
     ["no outputs", "O = 0"]),
    ("demo zero outputs", ["demo", "--quick", "-q", "--model", "file:{in}/zero.py:make", "-o", "{tmp}/rep"],
     ["does not fit the digits", "zero.py"]),
    # devices
    ("device foo", ["compute", D, M, "-o", "{tmp}/K.npy", "--device", "foo"], ["'foo' is not a device", "available here: cpu"]),
    ("device meta", ["compute", D, M, "-o", "{tmp}/K.zarr", "--device", "meta"], ["meta", "available here: cpu"]),
    ("fit device foo", ["fit", D, "-o", "{tmp}/m.npz", "--device", "foo"], ["'foo' is not a device", "available here"]),
    ("analyze device foo", ["analyze", D, M, "-o", "{tmp}/rep", "--device", "foo"], ["'foo' is not a device"]),
    # output locations, checked before any work
    ("npy under a file", ["compute", D, M, "-o", "{in}/afile/K.npy"], ["afile", "is a file, not a folder"]),
    ("store under a file", ["compute", D, M, "-o", "{in}/afile/K.zarr"], ["afile", "is a file, not a folder"]),
    ("fit under a file", ["fit", D, "-o", "{in}/afile/m.npz"], ["afile", "is a file, not a folder"]),
    ("predict under a file", ["predict", "{in}/trunc.npz", D, "-o", "{in}/afile/p.npy"], ["afile", "not a folder"]),
    ("analyze under a file", ["analyze", D, M, "-o", "{in}/afile/rep"], ["afile", "is a file, not a folder"]),
    ("demo under a file", ["demo", "--quick", "-o", "{in}/afile/rep"], ["afile", "is a file, not a folder"]),
    # seeds
    ("seed overflow", ["compute", D, M, "-o", "{tmp}/K.npy", "--seed", "99999999999999999999"],
     ["--seed", "out of range", "0 to 9223372036854775807"]),
    ("seed negative", ["compute", D, M, "-o", "{tmp}/K.zarr", "--seed", "-1"], ["--seed -1", "0 to 9223372036854775807"]),
    ("fit seed overflow", ["fit", D, "-o", "{tmp}/m.npz", "--seed", "99999999999999999999"], ["0 to 9223372036854775807"]),
    ("analyze seed negative", ["analyze", D, M, "-o", "{tmp}/rep", "--seed", "-5"], ["0 to 9223372036854775807"]),
    ("demo seed overflow", ["demo", "--quick", "-o", "{tmp}/rep", "--seed", "18446744073709551616"],
     ["0 to 9223372036854775807"]),
    # usage errors (typer's own click classes)
    ("unknown option", ["compute", D, M, "-o", "{tmp}/K.npy", "--bogus"], ["No such option: --bogus", "--help"]),
    ("missing argument", ["compute"], ["Missing argument", "ntkit compute --help"]),
    ("bad integer", ["fit", D, "-o", "{tmp}/m.npz", "--epochs", "abc"], ["--epochs", "valid integer"]),
    ("unknown command", ["comptue"], ["No such command", "comptue"]),
    ("flag with value", ["compute", D, M, "-o", "{tmp}/K.npy", "--overwrite=3"], ["--overwrite", "does not take a value"]),
    # other typos
    ("memory inf", ["compute", D, M, "-o", "{tmp}/K.npy", "--memory", "inf"], ["cannot read memory budget 'inf'"]),
    ("fit zero epochs", ["fit", D, "-o", "{tmp}/m.npz", "--epochs", "0"], ["--epochs must be at least 1"]),
    ("analyze no layer samples", ["analyze", D, M, "-o", "{tmp}/rep", "--layer-samples", "0"],
     ["--layer-samples must be at least 1"]),
]


def _leftovers(*roots: Path) -> list[Path]:
    return [p for r in roots for p in r.rglob("*") if p.name.endswith(".tmp")]


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        rc = main(argv)
    except BaseException as e:  # noqa: BLE001 - a traceback is what this test forbids
        pytest.fail(f"traceback instead of an error line: {type(e).__name__}: {e}")
    cap = capsys.readouterr()
    return rc, cap.out + cap.err


@pytest.mark.parametrize("argv,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_one_line_error(argv, words, inputs, tmp_path, capsys):
    outputs = tmp_path / "out"
    outputs.mkdir()
    argv = [a.replace("{in}", str(inputs)).replace("{tmp}", str(outputs)) for a in argv]
    before = sorted(p.name for p in inputs.rglob("*"))
    rc, text = _run(argv, capsys)
    assert rc != 0, text
    assert "Traceback" not in text
    lines = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert lines, text
    for w in words:
        assert w in text, (w, text)
    assert "weights_only=False" not in text and "unsafely" not in text  # never advise an unsafe load
    assert list(outputs.iterdir()) == [], "nothing may be written"
    assert sorted(p.name for p in inputs.rglob("*")) == before, "nothing may be written next to the inputs"
    assert not _leftovers(inputs, outputs)
    assert not (inputs / "PWNED").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("cmd", [["compute", D, M, "-o", "{tmp}/K.npy"], ["fit", D, "-o", "{tmp}/m.npz"],
                                 ["analyze", D, M, "-o", "{tmp}/rep"]], ids=["compute", "fit", "analyze"])
def test_cuda_without_gpu(cmd, tmp_path, capsys):
    rc, text = _run([a.replace("{tmp}", str(tmp_path)) for a in cmd] + ["--device", "cuda"], capsys)
    assert rc == 2 and "error: --device cuda" in text and "available here: cpu" in text, text
    assert list(tmp_path.iterdir()) == []


def test_read_only_file_system(tmp_path, capsys):
    """/sys is read-only (EACCES or EPERM) even for root: refused before the kernel is computed."""
    target = Path("/sys/ntkit-write-check")
    if not Path("/sys").is_dir():
        pytest.skip("no /sys here")
    try:
        (Path("/sys") / ".ntkit-probe").touch()
        pytest.skip("/sys is writable here")
    except OSError:
        pass
    for argv in (["compute", D, M, "-o", f"{target}/K.npy"], ["compute", D, M, "-o", f"{target}.zarr"],
                 ["fit", D, "-o", f"{target}/m.npz"], ["demo", "--quick", "-o", f"{target}/rep"]):
        rc, text = _run(argv, capsys)
        assert rc == 2 and "error: cannot write" in text and "not writable" in text, text


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write into read-only folders")
def test_read_only_folder(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc, text = _run(["compute", D, M, "-o", str(ro / "K.npy")], capsys)
        assert rc == 2 and "not writable" in text and "Permission denied" in text, text
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_disk_full_when_saving_removes_the_tmp(tmp_path, capsys, monkeypatch):
    """ENOSPC while writing K.npy: one line saying the disk is full and how much was needed."""
    def full(fh, arr, *a, **k):
        fh.write(b"\x93NUMPY partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "save", full)
    rc, text = _run(["compute", D, M, "-o", str(tmp_path / "K.npy"), "--output", "full"], capsys)
    assert rc == 2 and "error: the disk is full" in text and "needs 14.5 kB" in text, text
    assert "Traceback" not in text
    assert list(tmp_path.iterdir()) == []  # neither K.npy, nor its .tmp, nor a sidecar


def test_disk_full_when_saving_a_model(tmp_path, capsys, monkeypatch):
    def full(fh, *a, **k):
        fh.write(b"PK partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", full)
    rc, text = _run(["fit", D, "-s", "ridge", "-q", "-o", str(tmp_path / "m.npz")], capsys)
    assert rc == 2 and "error:" in text and "disk is full" in text, text
    assert list(tmp_path.iterdir()) == []


def test_not_enough_space_is_found_before_computing(tmp_path, capsys, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))

    def never(*a, **k):
        raise AssertionError("the kernel was computed although it cannot be saved")

    monkeypatch.setattr(ntkit, "ntk", never)
    rc, text = _run(["compute", D, M, "-o", str(tmp_path / "K.npy"), "--output", "full"], capsys)
    assert rc == 2 and "not enough disk space" in text and "needs 14.5 kB" in text and "1 kB" in text, text
    assert list(tmp_path.iterdir()) == []


def test_user_text_is_printed_literally(tmp_path, capsys):
    """Rich markup and emoji codes in paths and specs are echoed as typed, not rendered."""
    out = tmp_path / ":a:[bold]K[/bold].npy"
    rc, text = _run(["compute", "digits[0:4]", M, "-o", str(out)], capsys)
    assert rc == 0 and out.exists(), text
    assert ":a:[bold]K[/bold].npy" in text.replace("\n", "") and "\N{NEGATIVE SQUARED LATIN CAPITAL LETTER A}" not in text
    store = tmp_path / "[/x]:thumbs_up:.zarr"  # an unmatched closing tag made rich raise
    rc, text = _run(["compute", "digits[0:4]", M, "-o", str(store)], capsys)
    assert rc == 0 and "[/x]:thumbs_up:.zarr" in text.replace("\n", ""), text
    rc, text = _run(["compute", f"npz:{tmp_path}/:a:[/x].npz", M, "-o", str(tmp_path / "K2.npy")], capsys)
    assert rc == 2 and ":a:[/x].npz" in text.replace("\n", "") and "Traceback" not in text, text


def test_bfloat16_compute_is_refused_before_creating_anything(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).bfloat16().eval()
    x = torch.randn(5, 4).bfloat16()
    for store in (tmp_path / "K.zarr", None):
        with pytest.raises(ValueError, match=r"bfloat16.*model\.float\(\)"):
            ntkit.compute(net, x, store=store, output="trace")
    assert list(tmp_path.iterdir()) == []
    # ntkit.ntk computes in the model's dtype, bfloat16 and float16 included
    for dt in (torch.bfloat16, torch.float16):
        k = ntkit.ntk(net.to(dt), x.to(dt), output="trace")
        want = ntkit.ntk(net.double(), x.double(), output="trace")
        assert k.dtype == dt and torch.allclose(k.double(), want, rtol=5e-2, atol=5e-2 * want.abs().max().item())


def test_zero_outputs_api():
    with pytest.raises(ValueError, match=r"no outputs.*O = 0"):
        ntkit.ntk(torch.nn.Linear(4, 0), torch.randn(3, 4))


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    """An unexpected exception is not turned into a one-liner; it says it is a bug to report."""
    def bug(*a, **k):
        raise RuntimeError("synthetic bug")

    monkeypatch.setattr(ntkit, "plan", bug)
    with pytest.raises(RuntimeError, match="synthetic bug") as info:
        main(["compute", D, M, "-o", str(tmp_path / "K.npy")])
    assert any("bug in ntkit" in n for n in getattr(info.value, "__notes__", []))


def test_subprocess_usage_error_and_emoji(tmp_path):
    """Through the installed entry point: one line, no traceback, no emoji."""
    env = {**os.environ, "PYTHONPATH": str(Path(ntkit.__file__).parents[1])}
    cmd = [sys.executable, "-c", "import sys; from ntkit.cli import main; sys.exit(main())"]
    r = subprocess.run(cmd + ["compute", "npz::a:.npz", M, "-o", str(tmp_path / "K.npy"), "--memry", "1GB"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("error: No such option: --memry") and "--memory" in r.stderr
    r = subprocess.run(cmd + ["compute", "npz::a:.npz", M, "-o", str(tmp_path / "K.npy")],
                       capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and ":a:.npz" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_no_arguments_prints_the_help(capsys):
    """`ntkit` alone raised typer's own NoArgsIsHelpError as a traceback."""
    rc, text = _run([], capsys)
    assert rc == 2 and "Usage" in text and "compute" in text and "Traceback" not in text
