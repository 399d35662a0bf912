"""Issue 18, item 4 (fit, EigenPro3): long fits report their phases, kernel evaluations included.

`ntkit fit --solver ridge --kernel ntk:cnn` showed an empty table while the eNTK was computed, and
EigenPro3 on an eNTK in Python was silent until the end. Checked here through the callbacks (not
timed): every phase is named and counts up to its total.
"""

from __future__ import annotations

import io

import pytest

from ntkit.data import load_data
from ntkit.kernels import EmpiricalNTK, Laplacian
from ntkit.models import build_model
from ntkit.solvers import EigenPro3Classifier, KernelRidgeClassifier


class Recorder:
    """A progress callable with stage names: [(stage, done, total), ...]."""

    def __init__(self) -> None:
        self.name, self.calls = None, []

    def stage(self, name: str) -> None:
        self.name = name

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((self.name, done, total))

    def stages(self) -> list[str]:
        return list(dict.fromkeys(c[0] for c in self.calls))

    def finished(self, stage: str) -> bool:
        calls = [c for c in self.calls if c[0] == stage]
        return bool(calls) and calls[0][1] == 0 and calls[-1][1] == calls[-1][2] > 0


@pytest.fixture(scope="module")
def data():
    (x, y), (xt, yt) = load_data("digits[0:80]").tensors(), load_data("digits[test:0:20]").tensors()
    return x, y, xt, yt


def _entk():
    return EmpiricalNTK(build_model("mlp:depth=1,width=8", (1, 8, 8), 10, seed=0).eval())


def test_ridge_reports_the_kernel_evaluation_and_the_solve(data):
    x, y, _, _ = data
    rec = Recorder()
    KernelRidgeClassifier(_entk(), alpha=1e-3).fit(x, y, progress=rec)
    assert rec.stages() == ["kernel 80 x 80", "solve (Cholesky, n = 80)"]
    assert all(rec.finished(s) for s in rec.stages())
    # a plain callable gets the same counts
    seen = []
    KernelRidgeClassifier(Laplacian(5.0), alpha=1e-3).fit(x, y, progress=lambda d, t: seen.append((d, t)))
    assert seen[0][0] == 0 and seen[-1] == (1, 1) and len(seen) >= 4


def test_eigenpro3_reports_kernel_evaluations_epochs_and_evaluation(data):
    x, y, xt, yt = data
    rec = Recorder()
    clf = EigenPro3Classifier(_entk(), centers=60, epochs=2, seed=0)
    clf.fit(x, y, eval_set=(xt, yt), progress=rec)
    stages = rec.stages()
    assert stages[0] == "kernel on the Nyström sample (60 x 60)"
    assert "kernel between the Nyström sample and the centers (60 x 60)" in stages
    assert "epoch 1/2" in stages and "epoch 2/2" in stages and "test predictions (20 samples)" in stages
    for s in stages:
        assert rec.finished(s), (s, [c for c in rec.calls if c[0] == s])
    # the eNTK's Jacobian blocks of the centers and the sample were counted, not just one step
    assert max(c[2] for c in rec.calls if c[0].startswith("kernel between")) >= 2
    # the bar or callable is not kept on the fitted model (it can be pickled, cloned, saved)
    assert getattr(clf, "_report", None) is None


def test_progress_true_draws_a_bar_on_stderr_and_auto_is_quiet_off_a_terminal(data, capsys):
    from rich.console import Console

    from ntkit.solvers.progress import StderrBar, resolve_progress

    x, y, _, _ = data
    buf = io.StringIO()
    bar = StderrBar(delay=0.0, console=Console(file=buf, force_terminal=True, width=100))
    KernelRidgeClassifier(Laplacian(5.0), alpha=1e-3).fit(x, y, progress=bar)
    bar.close()
    assert "kernel 80 x 80" in buf.getvalue() and "solve" in buf.getvalue()
    with resolve_progress("auto") as report:  # stderr is captured here, not a terminal
        assert report is None
    with resolve_progress(True) as report:
        assert isinstance(report, StderrBar)
    with pytest.raises(ValueError, match="progress must be"):
        with resolve_progress("yes"):
            pass
    EigenPro3Classifier(Laplacian(5.0), centers=40, epochs=1).fit(x, y)  # default "auto": nothing printed
    assert capsys.readouterr().err == ""
