"""EigenPro3: large kernel models f(x) = Σ_{i≤p} α_i k(x, z_i) by projected preconditioned SGD.

Abedsoltan, Belkin & Pandit, "Toward Large Kernel Models", ICML 2023 (arXiv:2302.02605). The p
centers Z are decoupled from the n training points; memory is O(p) (plus one m × p batch block).

The problem. With k's RKHS H and Z-span H_Z = span{k(·, z_i)}, minimize over f ∈ H_Z

    L(f) = 1/(2n) Σ_i (f(x_i) − y_i)² + (λ/2n)·‖f‖²_H          (λ = `alpha`, the ridge)

whose solution has (K_zx K_xz + λ K_zz) α = K_zx y: for Z = X the kernel ridge interpolant,
for p < n the projected (Nyström) least-squares solution.

One step on a batch B of m points, residuals g_j = f(x_j) − y_j (Algorithm 1 of the paper):

    ∇ = Σ_{j∈B} g_j k(·, x_j) + (mλ/n) f              (stochastic Fréchet gradient, ×m)
    P = I − Σ_{i≤q} (1 − λ_{q+1}/λ_i) ψ_i ⊗ ψ_i          (data preconditioner, `nystrom`)
    f ← proj_Z( f − (η/m) P ∇ )                         (projection onto H_Z in the H-norm)

ψ_i = k(·, X_s) e_i / √(s λ_i) are the Nyström eigenfunctions from s points X_s, (λ_i, e_i) the
top q+1 eigenpairs of K_ss / s (scipy.linalg.eigh, subset_by_index). The batch size is the
critical m* = β/λ_{q+1} (β = max k(x, x)) and the step η = m/(β + (m − 1)λ_{q+1}) (Ma, Bassily
& Belkin 2018), both from the spectrum.

In coefficients: proj_Z(h) has weights K_zz⁻¹ h(Z). ntkit's version differs from the public code
in three ways, each checked by a test:

1. The Nyström sample X_s is drawn from the centers (which are drawn from the training data when
   `centers` is a number). Then the ψ_i lie in H_Z, P commutes with proj_Z, and the update is
       α ← α − (η/m)·(I − S E D Eᵀ K_sZ)·K_zz⁻¹ K_zB g,   D = diag((1 − λ_{q+1}/λ_i)/(s λ_i)),
   with S the sample's coordinates — so the fixed point is exactly the projected solution
   (a sample outside the centers makes it an oblique projection), and K_sZ K_zz⁻¹ = Sᵀ makes the
   preconditioner's term exact and cheap: E D Eᵀ K_sB g added on the s sample centers.
2. A batch point that *is* a center needs no projection: K_zz⁻¹ k(Z, z_j) = e_j, so its gradient
   goes straight onto its own coefficient. With `centers` = all training points every step is an
   exact EigenPro 2 step and no projection runs at all.
3. The rest, K_zz⁻¹ b with b = K_zB g over the non-center batch points, is an inner
   preconditioned conjugate-gradient solve (Nyström preconditioner of K_zz from the same
   eigensystem, Frangella, Tropp & Udell 2023) that is warm-started across batches: the unsolved
   residual ρ = b − K_zz δ is carried into the next batch's solve instead of being recomputed
   from zero, so a few inner iterations per batch suffice and no work is thrown away
   (`projection_iters`, `projection_tol`). The public code restarts a two-epoch inner SGD from
   zero after every batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin

from ntkit.kernels.base import as_tensor
from ntkit.solvers.base import (KernelMachine, SolverInputError, check_inputs, check_ridge, check_targets,
                                class_targets, n_rows, peek_tensor)
from ntkit.solvers.eigenpro3_iteration import DivergenceError, EigenPro3Iteration
from ntkit.solvers.progress import resolve_progress
from ntkit.solvers.sharding import shard_rows

__all__ = ["EigenPro3", "EigenPro3Classifier", "DivergenceError"]


class _EigenPro3Base(EigenPro3Iteration, KernelMachine, BaseEstimator):
    """Parameters, fit / partial_fit plumbing and save/load; the iteration is `EigenPro3Iteration`."""

    def __init__(
        self,
        kernel: Any = "laplacian:bandwidth=10",
        centers: int | Any = 1000,
        *,
        epochs: int = 10,
        alpha: float = 0.0,
        batch_size: int | str = "auto",
        lr: float | str = "auto",
        nystrom_size: int | str = "auto",
        top_q: int | str = "auto",
        projection_iters: int = 10,
        projection_tol: float = 1e-3,
        memory: int | str | None = None,
        devices: Any = None,
        seed: int = 0,
        verbose: bool = False,
    ) -> None:
        self.kernel = kernel
        self.centers = centers
        self.epochs = epochs
        self.alpha = alpha
        self.batch_size = batch_size
        self.lr = lr
        self.nystrom_size = nystrom_size
        self.top_q = top_q
        self.projection_iters = projection_iters
        self.projection_tol = projection_tol
        self.memory = memory
        self.devices = devices
        self.seed = seed
        self.verbose = verbose

    # ------------------------------------------------------------------ parameters
    def _check_params(self) -> None:
        def positive_int(name: str, v: Any, auto: bool = False) -> None:
            if auto and v == "auto":
                return
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                alt = " or 'auto'" if auto else ""
                raise ValueError(f"{name} must be a positive integer{alt}, got {v!r}")

        if not isinstance(self.epochs, (int, np.integer)) or isinstance(self.epochs, bool) or self.epochs < 0:
            raise ValueError(f"epochs must be an integer >= 0, got {self.epochs!r}")
        positive_int("batch_size", self.batch_size, auto=True)
        positive_int("nystrom_size", self.nystrom_size, auto=True)
        positive_int("projection_iters", self.projection_iters)
        if self.top_q != "auto" and (not isinstance(self.top_q, (int, np.integer)) or self.top_q < 0):
            raise ValueError(f"top_q must be an integer >= 0 or 'auto', got {self.top_q!r}")
        check_ridge(self.alpha)
        if self.lr != "auto" and (not isinstance(self.lr, (int, float)) or not self.lr > 0):
            raise ValueError(f"lr must be 'auto' or a positive step size, got {self.lr!r}")
        if not (isinstance(self.projection_tol, (int, float)) and 0 < self.projection_tol < 1):
            raise ValueError(f"projection_tol must be in (0, 1), got {self.projection_tol!r}")
        if isinstance(self.centers, (int, np.integer)) and not isinstance(self.centers, bool) and self.centers < 1:
            raise ValueError(f"centers must be a positive number of centers or an array, got {self.centers}")

    def _devices(self) -> list[torch.device]:
        if self.devices is None:
            dev = getattr(self.kernel_, "device", None)
            if dev is None and hasattr(self.kernel_, "_device"):
                dev = self.kernel_._device()
            return [torch.device(dev) if dev is not None else torch.device("cpu")]
        devs = [self.devices] if isinstance(self.devices, (str, torch.device)) else list(self.devices)
        if not devs:
            raise ValueError("devices must name at least one device, e.g. ['cuda:0', 'cuda:1']")
        return [torch.device(d) for d in devs]

    # ------------------------------------------------------------------ shared fit / predict
    def _prepare_fit(self, X: Any, Y: torch.Tensor) -> torch.Tensor:
        self.kernel_ = self._resolve_kernel(peek_tensor(X), Y.shape[1])
        return check_inputs(X, indices=self._uses_indices(self.kernel_))

    def _initialized(self) -> bool:
        return getattr(self, "_E", None) is not None

    def _check_continue(self, X: torch.Tensor, Y: torch.Tensor) -> None:
        self._check_input_shape(X)
        if Y.shape[1] != self.dual_coef_.shape[1]:
            raise SolverInputError(f"y has {Y.shape[1]} outputs but the model has {self.dual_coef_.shape[1]}")

    def _fit_impl(self, X: Any, Y: torch.Tensor, eval_set: Any, callback: Any, progress: Any = "auto") -> None:
        for attr in ("dual_coef_", "_E", "history_"):
            if hasattr(self, attr):
                delattr(self, attr)
        with resolve_progress(progress) as report:
            self._report = report
            try:
                Xt = self._prepare_fit(X, Y)
                self._setup(Xt, Y, X)
                self._fit_loop(Xt, Y, int(self.epochs), eval_set, callback, self._center_of, report)
            finally:
                self._report = None  # a bar or a user's callable is no part of the fitted model
        self._check_finite_coef()

    def _check_finite_coef(self) -> None:
        """A fit never ends with NaN/inf coefficients (they would predict NaN or garbage)."""
        bad = int((~torch.isfinite(self.dual_coef_)).sum())
        if bad:
            raise DivergenceError(
                f"EigenPro3 ended with {bad} non-finite coefficient(s) of {self.dual_coef_.numel()}: the kernel "
                "or the step size overflowed; check the kernel's scale (a precomputed matrix with huge entries?), "
                "pass a smaller lr or a larger alpha")

    def _partial_impl(self, X: Any, Y: torch.Tensor, one_step: bool) -> None:
        if not self._initialized():
            Xt = self._prepare_fit(X, Y)
            self._setup(Xt, Y, X)
            center_of = self._center_of
        else:
            Xt = check_inputs(X, indices=self._uses_indices(self.kernel_))
            self._check_continue(Xt, Y)
            center_of = None
        if one_step:
            self._blowup = float("inf")
            # The unsolved part of the projection stays pending for the next call (as between batches).
            self._step(Xt, Y, center_of, self._lr_for(Xt.shape[0]))
        else:
            self._fit_loop(Xt, Y, 1, None, None, center_of)
        self._check_finite_coef()

    # ------------------------------------------------------------------ save / load
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta = {"input_shape": list(self.input_shape_), "n_features_in": getattr(self, "n_features_in_", None),
                "dtype": str(self._dtype).removeprefix("torch."), "batch_size": self.batch_size_, "lr": self.lr_,
                "beta": self.beta_, "tail_eigval": self.tail_eigval_, "top_q": self.top_q_,
                "nystrom_size": self.nystrom_size_, "n_train": self._n_train, "min_eig": self._eig.min_eig,
                "history": getattr(self, "history_", [])}
        arrays = {"centers": self.centers_.cpu().numpy(), "dual_coef": self.dual_coef_.cpu().numpy(),
                  "rho": self._rho.cpu().numpy(), "nystrom_index": self.nystrom_index_.cpu().numpy(),
                  "eigvals": np.asarray(self.eigvals_), "eigvecs": np.asarray(self._eig.eigvecs),
                  "rng_state": self._gen.get_state().numpy()}  # so a loaded model goes on identically
        if hasattr(self, "classes_"):
            arrays["classes"] = np.asarray(self.classes_)
        return meta, arrays

    def _restore(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        from ntkit.solvers.nystrom import NystromEigensystem

        self._devs = self._devices()
        self._dtype = getattr(torch, meta["dtype"])
        self.centers_ = as_tensor(arrays["centers"])
        self.centers = self.centers_
        self._p = self.centers_.shape[0]
        self.input_shape_ = tuple(meta["input_shape"])
        if meta.get("n_features_in") is not None:
            self.n_features_in_ = meta["n_features_in"]
        self._shards, self._devs, self._Zk = shard_rows(self.centers_, self._devs)
        self.dual_coef_ = torch.from_numpy(arrays["dual_coef"]).to(self._devs[0], self._dtype)
        self._rho = torch.from_numpy(arrays["rho"]).to(self._devs[0], self._dtype)
        self.nystrom_index_ = torch.from_numpy(arrays["nystrom_index"]).long()
        self._eig = NystromEigensystem(arrays["eigvals"], arrays["eigvecs"], meta["tail_eigval"], meta["beta"],
                                       meta["min_eig"])
        self.eigvals_, self.tail_eigval_, self.beta_ = arrays["eigvals"], meta["tail_eigval"], meta["beta"]
        self.top_q_, self.nystrom_size_ = meta["top_q"], meta["nystrom_size"]
        self.batch_size_, self.lr_, self._n_train = meta["batch_size"], meta["lr"], meta["n_train"]
        self.history_ = list(meta.get("history", []))
        if "classes" in arrays:
            self.classes_ = arrays["classes"]
        self._gen = torch.Generator()
        self._gen.set_state(torch.from_numpy(arrays["rng_state"]))
        self._E = None  # the iteration's tensors are rebuilt on the first partial_fit / fit_batch

    def _ensure_iteration_state(self) -> None:
        if getattr(self, "_E", None) is None and hasattr(self, "_eig"):
            self._init_state(self.dual_coef_.shape[1], self._memory_plan())


_FIT_DOC = """
    Args:
        kernel: a `ntkit.kernels.Kernel`, a spec ("laplacian:bandwidth=10", "ntk:cnn", "npy:K.npy";
            `ntkit.kernels.KERNEL_GRAMMAR`) or a callable k(x, z) on flattened inputs.
        centers: p, the number of centers drawn from the training data (seeded), or the centers
            themselves, an array (p, *input) (indices for a `Precomputed` kernel).
        epochs: passes over the training data.
        alpha: the ridge λ ≥ 0 (in the units of `KernelRidge`: (K_zx K_xz + λ K_zz) α = K_zx y).
        batch_size: "auto" (the critical batch size β/λ_{q+1}, capped by `memory` and n) or m.
        lr: "auto" (η = m / (β + (m − 1) λ_{q+1})) or a step size η.
        nystrom_size: s, the Nyström sample, drawn from the centers: "auto" = min(2000, p), or a
            number (more than p: all centers, with a warning).
        top_q: q, the eigenpairs the preconditioner flattens; "auto": as many as keep β/λ_{q+1}
            within the largest batch memory, n and s allow.
        projection_iters, projection_tol: inner CG iterations per batch at most, and the relative
            residual at which they stop (the rest is carried to the next batch).
        memory: working-memory budget (bytes or "2GB"; default a quarter of free memory): bounds the
            m × p batch block; K_zz is cached when it takes at most a quarter of it.
        devices: a device or a list of devices; the centers are split across them.
        seed: seeds the choice of centers, the Nyström sample and the batch order.
        verbose: print one line per epoch.

    Learned: `centers_` (p, *input), `dual_coef_` (p, C), `batch_size_`, `lr_`, `eigvals_`
    (top q of K_ss/s), `tail_eigval_` (λ_{q+1}), `beta_`, `top_q_`, `nystrom_size_`, `history_`
    (per-epoch train/test metrics and times), `kernel_`.

    `fit(X, y, eval_set=(X_test, y_test), callback=fn)` trains for `epochs` (fn(record) after each
    epoch; returning False stops); `partial_fit(X, y)` runs one epoch over new data (set up from the
    first call); `fit_batch(X, y)` one step on one batch. `save(path)` / `ntkit.solvers.load(path)`.
    `fit(..., progress=)` reports the kernel evaluations (the Nyström sample, the centers), each
    epoch's batches and the eval_set predictions: "auto" (default) draws a bar on stderr after 2 s
    when stderr is a terminal, True always, False never; a callable(done, total) gets the counts
    (see `ntkit.solvers.progress`).
"""


class EigenPro3(RegressorMixin, _EigenPro3Base):
    __doc__ = ("EigenPro3 regression: f(x) = Σ_i dual_coef_[i] k(x, centers_[i]) fit by projected "
               "preconditioned SGD (see the module docstring for the algorithm and the paper).\n" + _FIT_DOC)

    def fit(self, X: Any, y: Any, eval_set: tuple[Any, Any] | None = None,
            callback: Callable[[dict[str, Any]], Any] | None = None,
            progress: Callable[[int, int], Any] | bool | str | None = "auto") -> EigenPro3:
        """Fit on X (N, *input), y (N,) or (N, C); returns self.

        `progress`: each phase (the kernel on the Nyström sample and on the centers, each epoch's
        batches, the eval_set predictions) reported to a callable(done, total) (with `.stage(name)`
        if it has one), as a bar on stderr after 2 s (True), not at all (False), or "auto": that
        bar when stderr is a terminal (see `ntkit.solvers.progress`)."""
        Y = check_targets(y, n_rows(X))
        self._y_1d = Y.ndim == 1
        self._fit_impl(X, Y.reshape(Y.shape[0], -1), eval_set, callback, progress)
        return self

    def partial_fit(self, X: Any, y: Any) -> EigenPro3:
        """One epoch over (X, y); the first call sets the model up from this data."""
        return self._incremental(X, y, one_step=False)

    def fit_batch(self, X: Any, y: Any) -> EigenPro3:
        """One projected preconditioned SGD step on this batch (step size for its size)."""
        return self._incremental(X, y, one_step=True)

    def _incremental(self, X: Any, y: Any, one_step: bool) -> EigenPro3:
        Y = check_targets(y, n_rows(X))
        if not self._initialized() and not hasattr(self, "dual_coef_"):
            self._y_1d = Y.ndim == 1
        self._ensure_iteration_state()
        self._partial_impl(X, Y.reshape(Y.shape[0], -1), one_step=one_step)
        return self

    def predict(self, X: Any) -> np.ndarray:
        """f(X): (N,) or (N, C)."""
        f = self._decision(X).cpu().numpy()
        return f[:, 0] if getattr(self, "_y_1d", False) else f

    def _state(self):
        meta, arrays = super()._state()
        meta["y_1d"] = bool(getattr(self, "_y_1d", False))
        return meta, arrays

    def _restore(self, meta, arrays):
        super()._restore(meta, arrays)
        self._y_1d = meta.get("y_1d", False)


class EigenPro3Classifier(ClassifierMixin, _EigenPro3Base):
    __doc__ = ("EigenPro3 on one-hot targets: predicts argmax_c f_c(x); `score` is the accuracy. Labels may "
               "be any sortable values.\n" + _FIT_DOC + "    Also learned: `classes_`.\n")

    _is_classifier = True

    def fit(self, X: Any, y: Any, eval_set: tuple[Any, Any] | None = None,
            callback: Callable[[dict[str, Any]], Any] | None = None,
            progress: Callable[[int, int], Any] | bool | str | None = "auto") -> EigenPro3Classifier:
        """Fit on X (N, *input) and labels y (N,); returns self. `progress` as in `EigenPro3.fit`."""
        classes, Y = class_targets(y, n_rows(X))
        self.classes_ = classes
        self._fit_impl(X, Y, eval_set, callback, progress)
        return self

    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> EigenPro3Classifier:
        """One epoch over (X, y); the first call needs `classes` (all labels that will ever occur)."""
        return self._incremental(X, y, classes, "partial_fit", one_step=False)

    def fit_batch(self, X: Any, y: Any, classes: Any = None) -> EigenPro3Classifier:
        """One step on one batch; the first call needs `classes`."""
        return self._incremental(X, y, classes, "fit_batch", one_step=True)

    def _incremental(self, X: Any, y: Any, classes: Any, what: str, one_step: bool) -> EigenPro3Classifier:
        if not hasattr(self, "classes_"):
            if classes is None:
                raise ValueError(f"classes must be passed on the first call to {what} (all labels that will occur, "
                                 "e.g. np.arange(10))")
            self.classes_ = np.unique(np.asarray(classes))
        _, Y = class_targets(y, n_rows(X), self.classes_)
        self._ensure_iteration_state()
        self._partial_impl(X, Y, one_step=one_step)
        return self

    def decision_scores(self, X: Any) -> np.ndarray:
        """f(X) for every class: (N, C)."""
        return self._decision(X).cpu().numpy()

    def predict(self, X: Any) -> np.ndarray:
        """The class with the largest score, (N,)."""
        scores = self.decision_scores(X)
        return np.asarray(self.classes_)[scores.argmax(1)]

