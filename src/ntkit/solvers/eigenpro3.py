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

import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin

from ntkit.kernels.base import as_tensor
from ntkit.solvers.base import KernelMachine, SolverInputError, check_inputs, check_targets, class_targets
from ntkit.solvers.nystrom import (NystromAdaptedWarning, critical_batch_size, nystrom_eigensystem, step_size)
from ntkit.solvers.progress import phase, resolve_progress
from ntkit.solvers.ridge import _n_rows, _peek, _precomputed

__all__ = ["EigenPro3", "EigenPro3Classifier", "DivergenceError"]


class DivergenceError(RuntimeError):
    """The iteration blew up: the step size was too large for this kernel and data."""


def _blocks(n: int, size: int) -> list[slice]:
    return [slice(s, min(s + size, n)) for s in range(0, n, max(1, size))]


class _EigenPro3Base(KernelMachine, BaseEstimator):
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
        if not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha) or self.alpha < 0:
            raise ValueError(f"alpha (the ridge) must be a finite number >= 0, got {self.alpha!r}")
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

    # ------------------------------------------------------------------ setup
    def _setup(self, X: torch.Tensor, Y: torch.Tensor, X_raw: Any) -> None:
        """Centers, the Nyström eigensystem, batch and step size, the projection preconditioner."""
        self._check_params()
        gen = torch.Generator().manual_seed(int(self.seed))
        self._gen = gen
        n = X.shape[0]
        self._devs = self._devices()
        base = self._devs[0]
        self._set_input_info(X, X_raw)
        probe = self.kernel_(X[:1], X[:1])
        self._dtype = probe.dtype if probe.is_floating_point() else torch.float32
        itemsize = torch.empty((), dtype=self._dtype).element_size()

        # -- centers
        self._center_of = None  # training index -> center index (-1: not a center), for this X only
        if isinstance(self.centers, (int, np.integer)) and not isinstance(self.centers, bool):
            p = int(self.centers)
            if p > n:
                warnings.warn(f"centers={p} but only {n} training samples: using all {n} as centers",
                              NystromAdaptedWarning, stacklevel=3)
                p = n
            idx = torch.arange(n) if p == n else torch.randperm(n, generator=gen)[:p].sort().values
            Z = X[idx]
            center_of = torch.full((n,), -1, dtype=torch.long)
            center_of[idx] = torch.arange(p)
            self._center_of = center_of
            self.center_indices_ = idx
        else:
            Z = check_inputs(self.centers, "centers", indices=self._uses_indices(self.kernel_))
            if tuple(Z.shape[1:]) != tuple(X.shape[1:]):
                raise SolverInputError(f"centers have samples of shape {tuple(Z.shape[1:])} but X has "
                                       f"{tuple(X.shape[1:])}: centers live in the input space")
            p = Z.shape[0]
        self.centers_ = Z
        self._p = p

        # -- shards of the centers, one per device
        bounds = np.linspace(0, p, len(self._devs) + 1).astype(int)
        self._shards = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        self._devs = self._devs[: len(self._shards)]
        # One shard on the centers' device is the centers tensor itself, so a kernel that caches
        # per-center features (EmpiricalNTK) recognizes it in every call.
        self._Zk = [Z if len(self._shards) == 1 else Z[sh] for sh in self._shards]
        self._Zk = [z.to(d) for z, d in zip(self._Zk, self._devs)]

        # -- memory: the batch block (m × p) and, if it fits, K_zz
        from ntkit.engine.memory import parse_memory

        self._budget = parse_memory(self.memory, base)
        m_mem = max(1, int(self._budget // (4 * p * itemsize)))
        self._chunk = m_mem
        cache_kzz = p * p * itemsize <= self._budget // 4

        # -- Nyström sample from the centers, its eigensystem
        s = min(2000 if self.nystrom_size == "auto" else int(self.nystrom_size), p)
        if self.nystrom_size != "auto" and s < int(self.nystrom_size):
            warnings.warn(f"nystrom_size={self.nystrom_size} but only {p} centers (the sample is drawn from "
                          f"the centers): using a Nyström sample of {s}", NystromAdaptedWarning, stacklevel=3)
        S = torch.arange(p) if s == p else torch.randperm(p, generator=gen)[:s].sort().values
        Zs = Z[S]
        with phase(self._report_(), f"kernel on the Nyström sample ({s} x {s})"):
            K_ss = self.kernel_(Zs).to(torch.float64).cpu().numpy()
        m_cap = max(1, min(n, m_mem, s))
        q_req = self.top_q
        if q_req != "auto" and int(q_req) > s - 1:
            warnings.warn(f"top_q={q_req} needs a Nyström sample of more than {q_req} points but it has {s}: "
                          f"using top_q={s - 1}", NystromAdaptedWarning, stacklevel=3)
        # "auto": EigenPro 2's rule, as deep as keeps the critical batch size β/λ_{q+1} within what
        # memory, the data and the sample support.
        with phase(self._report_(), f"eigenvectors of the Nyström sample ({s} x {s})", kernel=False):
            eig = nystrom_eigensystem(K_ss, q_req, kernel_dtype=self._dtype, max_batch=m_cap,
                                      what="the Nyström sample")
        self.nystrom_index_ = S
        self.eigvals_ = eig.eigvals
        self.tail_eigval_ = eig.tail
        self.beta_ = eig.beta
        self.top_q_ = eig.q
        self.nystrom_size_ = s
        ridge_eig = float(self.alpha) / n
        lam = eig.tail + ridge_eig
        self._eig = eig

        # -- batch size and step size from the spectrum
        if self.batch_size == "auto":
            m = int(max(1, min(critical_batch_size(eig.beta + ridge_eig, lam), m_mem, n)))
        else:
            m = int(self.batch_size)
        self.batch_size_ = m
        self.lr_ = step_size(m, eig.beta + ridge_eig, lam) if self.lr == "auto" else float(self.lr)
        self._n_train = n
        self._init_state(Y.shape[1], cache_kzz)

    def _init_state(self, c: int, cache_kzz: bool) -> None:
        """Tensors of the iteration (after `_setup`, or after `load` from the saved eigensystem)."""
        base, dt, p = self._devs[0], self._dtype, self._p
        eig = self._eig
        self._E = torch.as_tensor(np.ascontiguousarray(eig.eigvecs), dtype=dt, device=base)
        self._D = torch.as_tensor(eig.diag(), dtype=dt, device=base)
        self._S = self.nystrom_index_.to(base)
        # Where each sample center sits in its shard (for K_sB = columns of the batch block).
        self._S_local = []
        for sh in self._shards:
            sel = (self.nystrom_index_ >= sh.start) & (self.nystrom_index_ < sh.stop)
            self._S_local.append((torch.nonzero(sel)[:, 0], self.nystrom_index_[sel] - sh.start))
        # F = K_zs E (p × q): the preconditioner's functions at the centers, for the ridge term and
        # for the projection's preconditioner B Bᵀ ≈ K_zz with B = F (sΛ)^{-1/2}.
        Zs = self.centers_[self.nystrom_index_]
        if eig.q:
            # k(Z_s, Z_k)ᵀ rather than k(Z_k, Z_s): the centers are the second argument, as in every batch
            with phase(self._report_(), f"kernel between the Nyström sample and the centers ({Zs.shape[0]} x {p})"):
                self._F = torch.cat([(self.kernel_(Zs.to(self._devs[k]), self._Zk[k]).to(dt).T
                                      @ self._E.to(self._devs[k])) for k in range(len(self._shards))]).to(base)
            s = eig.eigvecs.shape[0]
            B = self._F / torch.as_tensor(np.sqrt(s * eig.eigvals), dtype=dt, device=base)
            U, sig, _ = torch.linalg.svd(B, full_matrices=False)
            lam = sig * sig
            self._U = U
            self._Uw = (lam[-1].clamp_min(torch.finfo(dt).tiny) / lam.clamp_min(torch.finfo(dt).tiny)) - 1.0
        else:
            self._F = torch.zeros((p, 0), dtype=dt, device=base)
            self._U, self._Uw = None, None
        self._Kzz = None
        if cache_kzz:
            with phase(self._report_(), f"kernel between the centers ({p} x {p})"):
                self._Kzz = [self.kernel_(self._Zk[k], self.centers_.to(self._devs[k])).to(dt)
                             for k in range(len(self._shards))]
        if not hasattr(self, "dual_coef_") or self.dual_coef_ is None or self.dual_coef_.shape != (p, c):
            self.dual_coef_ = torch.zeros((p, c), dtype=dt, device=base)
            self._rho = torch.zeros((p, c), dtype=dt, device=base)
        self._u = self._kzz_mv(self.dual_coef_) if self.alpha > 0 else None
        self.projection_iters_used_ = 0

    # ------------------------------------------------------------------ kernel products
    def _kzz_mv(self, v: torch.Tensor) -> torch.Tensor:
        """K_zz @ v for v: (p, c), by shards (cached rows or blocked kernel products)."""
        parts = []
        for k, sh in enumerate(self._shards):
            dev = self._devs[k]
            if self._Kzz is not None:
                parts.append((self._Kzz[k] @ v.to(dev)).to(self._devs[0]))
            else:
                parts.append(self.kernel_.mv(self._Zk[k], self.centers_.to(dev), v.to(dev)).to(self._devs[0], self._dtype))
        return torch.cat(parts)

    def _batch_block(self, xb: torch.Tensor) -> list[torch.Tensor]:
        """k(x_B, Z) by shard: [(m, p_k) on device k]."""
        return [self.kernel_(xb.to(self._devs[k]), self._Zk[k]).to(self._dtype) for k in range(len(self._shards))]

    def _precond(self, r: torch.Tensor) -> torch.Tensor:
        if self._U is None:
            return r
        return r + self._U @ (self._Uw[:, None] * (self._U.T @ r))

    def _pcg(self, rho: torch.Tensor, iters: int, tol: float) -> tuple[torch.Tensor, torch.Tensor, int]:
        """δ with K_zz δ ≈ ρ by preconditioned CG, per column; returns (δ, K_zz δ, iterations)."""
        x = torch.zeros_like(rho)
        kx = torch.zeros_like(rho)
        r = rho.clone()
        target = tol * r.norm(dim=0)
        if not bool((target > 0).any()):
            return x, kx, 0
        z = self._precond(r)
        d = z.clone()
        rz = (r * z).sum(0)
        it = 0
        for it in range(1, iters + 1):
            kd = self._kzz_mv(d)
            dkd = (d * kd).sum(0)
            a = torch.where(dkd > 0, rz / dkd.clamp_min(torch.finfo(rho.dtype).tiny), torch.zeros_like(rz))
            x += a * d
            kx += a * kd
            r -= a * kd
            if bool((r.norm(dim=0) <= target).all()):
                break
            z = self._precond(r)
            rz_new = (r * z).sum(0)
            d = z + torch.where(rz > 0, rz_new / rz.clamp_min(torch.finfo(rho.dtype).tiny), torch.zeros_like(rz)) * d
            rz = rz_new
        return x, kx, it

    # ------------------------------------------------------------------ one step
    def _step(self, xb: torch.Tensor, yb: torch.Tensor, cidx: torch.Tensor | None, lr: float) -> torch.Tensor:
        """One projected preconditioned SGD step on a batch; returns the batch predictions (m, c).

        The batch is read in chunks of at most `_chunk` rows against the same α, so a large batch
        (even the full data: projected preconditioned gradient descent) stays in bounded memory.
        """
        base, dt = self._devs[0], self._dtype
        alpha = self.dual_coef_
        m, c = xb.shape[0], alpha.shape[1]
        eta = lr / m
        ridge = self.alpha > 0
        direct = torch.zeros_like(alpha)  # Σ g_j on the coefficient of each batch point that is a center
        c_s = torch.zeros((self.nystrom_size_, c), dtype=dt, device=base)  # K_sB g
        b_out = torch.zeros_like(alpha)  # K_zB g over the batch points that are not centers
        kz_in = torch.zeros_like(alpha) if ridge else None  # K_zB g over those that are
        any_out = False
        preds = []
        for ch in _blocks(m, self._chunk):
            blocks = self._batch_block(xb[ch])
            pred = sum((blk @ alpha[sh].to(blk.device)).to(base) for blk, sh in zip(blocks, self._shards))
            preds.append(pred)
            g = pred - yb[ch].to(base, dt)
            for blk, (pos, local) in zip(blocks, self._S_local):
                if len(pos):
                    c_s[pos.to(base)] += (blk[:, local.to(blk.device)].T @ g.to(blk.device)).to(base)
            inb = cidx[ch] >= 0 if cidx is not None else torch.zeros(g.shape[0], dtype=torch.bool)
            outb = ~inb
            if bool(inb.any()):
                direct.index_add_(0, cidx[ch][inb].to(base), g[inb.to(base)])
                if ridge:
                    gi = g[inb.to(base)]
                    kz_in += torch.cat([(blk[inb.to(blk.device)].T @ gi.to(blk.device)).to(base) for blk in blocks])
            if bool(outb.any()):
                any_out = True
                go = g[outb.to(base)]
                b_out += torch.cat([(blk[outb.to(blk.device)].T @ go.to(blk.device)).to(base) for blk in blocks])
        # The preconditioner's term, E D Eᵀ K_sB g on the sample centers (exact, see the docstring).
        dc = self._D[:, None] * (self._E.T @ c_s) if self.top_q_ else None
        if ridge:
            # (mλ/n)·P f, with f(X_s) = (K_zz α)[S] tracked in self._u.
            w = m * float(self.alpha) / self._n_train
            ridge_coef, ridge_u = alpha.clone(), self._u.clone()
            if self.top_q_:
                du_s = self._D[:, None] * (self._E.T @ self._u[self._S])
                ridge_coef.index_add_(0, self._S, -(self._E @ du_s))
                ridge_u -= self._F @ du_s
            du = -eta * kz_in - (eta * w) * ridge_u
            if dc is not None:
                du += eta * (self._F @ dc)  # K_zS · E D Eᵀ c_s
            self._u += du
            alpha.add_(ridge_coef, alpha=-eta * w)
        alpha.add_(direct, alpha=-eta)
        if dc is not None:
            alpha.index_add_(0, self._S, eta * (self._E @ dc))
        # The other batch points: into the projection residual, then a warm-started inner solve.
        if any_out:
            self._rho.add_(b_out, alpha=-eta)
        if bool(self._rho.abs().max() > 0):
            delta, kdelta, it = self._pcg(self._rho, int(self.projection_iters), float(self.projection_tol))
            alpha += delta
            self._rho -= kdelta
            if self._u is not None:
                self._u += kdelta
            self.projection_iters_used_ += it
        return torch.cat(preds)

    def _flush(self) -> None:
        """Finish the pending projection (at the end of fit / partial_fit)."""
        if bool(self._rho.abs().max() > 0):
            delta, kdelta, it = self._pcg(self._rho, 5 * int(self.projection_iters), 1e-6)
            self.dual_coef_ += delta
            self._rho -= kdelta
            if self._u is not None:
                self._u += kdelta
            self.projection_iters_used_ += it

    # ------------------------------------------------------------------ epochs
    def _run_epoch(self, X: torch.Tensor, Y: torch.Tensor, center_of: torch.Tensor | None,
                   shuffle: bool = True, progress: Callable[[int, int], Any] | None = None) -> dict[str, float]:
        n = X.shape[0]
        order = torch.randperm(n, generator=self._gen) if shuffle else torch.arange(n)
        se, correct, seen = 0.0, 0, 0
        # Near-equal batches: a short last batch would otherwise take the full batch's step.
        n_batches = max(1, math.ceil(n / self.batch_size_))
        if progress is not None:
            progress(0, n_batches)
        for b, idx in enumerate(torch.tensor_split(order, n_batches)):
            yb = Y[idx]
            pred = self._step(X[idx], yb, None if center_of is None else center_of[idx], self._lr_for(len(idx)))
            yb = yb.to(pred.device, pred.dtype)
            se += float(((pred - yb) ** 2).sum())
            if self._is_classifier:
                correct += int((pred.argmax(1) == yb.argmax(1)).sum())
            seen += idx.shape[0]
            if not math.isfinite(se) or (seen and se / seen > self._blowup):
                raise DivergenceError(
                    f"EigenPro3 diverged (mean squared residual {se / max(seen, 1):.3g} on the batches so far): "
                    f"the step size lr_={self.lr_:.3g} is too large for this kernel and data. Pass a smaller "
                    f"lr= (e.g. {self.lr_ / 4:.3g}), a larger nystrom_size, or a smaller top_q")
            if progress is not None:
                progress(b + 1, n_batches)
        out = {"train_mse": se / max(seen, 1)}
        if self._is_classifier:
            out["train_acc"] = correct / max(seen, 1)
        return out

    def _lr_for(self, m: int) -> float:
        """The step size for a batch of m points: η(m) from the spectrum, or `lr` scaled linearly."""
        if m == self.batch_size_:
            return self.lr_
        if self.lr == "auto":
            r = self.alpha / self._n_train
            return step_size(m, self.beta_ + r, self.tail_eigval_ + r)
        return self.lr_ * min(1.0, m / self.batch_size_)

    def _fit_loop(self, X: torch.Tensor, Y: torch.Tensor, epochs: int, eval_set: Any,
                  callback: Callable[[dict[str, Any]], Any] | None, center_of: torch.Tensor | None,
                  progress: Callable[[int, int], Any] | None = None) -> None:
        # An iterate whose residuals exceed 10⁶ × the targets' second moment has diverged.
        self._blowup = 1e6 * max(float((Y.to(torch.float64) ** 2).sum(1).mean()), 1e-12)
        ev = None
        if eval_set is not None:
            Xe, ye = eval_set
            ev = (Xe, ye)
        self.history_ = getattr(self, "history_", [])
        for e in range(epochs):
            t0 = time.perf_counter()
            rec: dict[str, Any] = {"epoch": len(self.history_) + 1}
            if progress is not None and callable(getattr(progress, "stage", None)):
                progress.stage(f"epoch {e + 1}/{epochs}")
            rec.update(self._run_epoch(X, Y, center_of, progress=progress))
            self._flush()  # so that the metrics below describe the model as it stands
            if self.alpha > 0:  # re-anchor the tracked K_zz α against rounding drift
                self._u = self._kzz_mv(self.dual_coef_)
            rec["time_s"] = time.perf_counter() - t0
            if ev is not None:
                with phase(progress, f"test predictions ({_n_rows(ev[0])} samples)"):
                    rec.update(self._eval_metrics(*ev))
            rec["projection_iters"] = self.projection_iters_used_
            self.history_.append(rec)
            if self.verbose:
                print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
            if callback is not None and callback(rec) is False:
                break

    def _eval_metrics(self, Xe: Any, ye: Any) -> dict[str, float]:
        f = self._decision(Xe).to(torch.float64).cpu()
        if self._is_classifier:
            _, Ye = class_targets(ye, f.shape[0], self.classes_)
            return {"test_mse": float(((f - Ye) ** 2).sum(1).mean()),
                    "test_acc": float((f.argmax(1) == Ye.argmax(1)).double().mean())}
        Ye = check_targets(ye, f.shape[0]).reshape(f.shape)
        return {"test_mse": float(((f - Ye) ** 2).sum(1).mean())}

    # ------------------------------------------------------------------ shared fit / predict
    _is_classifier = False

    def _prepare_fit(self, X: Any, Y: torch.Tensor) -> torch.Tensor:
        self.kernel_ = self._resolve_kernel(_peek(X), Y.shape[1])
        return check_inputs(X, indices=self._uses_indices(self.kernel_))

    def _initialized(self) -> bool:
        return getattr(self, "_E", None) is not None

    def _check_continue(self, X: torch.Tensor, Y: torch.Tensor) -> None:
        if tuple(X.shape[1:]) != tuple(self.input_shape_):
            if X.ndim == 2 and len(self.input_shape_) == 1:
                raise SolverInputError(f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                                       f"{self.input_shape_[0]} features as input")
            raise SolverInputError(f"X has samples of shape {tuple(X.shape[1:])} but the model was set up "
                                   f"with {tuple(self.input_shape_)}")
        if Y.shape[1] != self.dual_coef_.shape[1]:
            raise SolverInputError(f"y has {Y.shape[1]} outputs but the model has {self.dual_coef_.shape[1]}")

    def _decision(self, X: Any) -> torch.Tensor:
        Xt = self._check_X_predict(X)
        base = self._devs[0]
        out = None
        for k, sh in enumerate(self._shards):
            dev = self._devs[k]
            part = self.kernel_.mv(Xt.to(dev), self._Zk[k], self.dual_coef_[sh].to(dev)).to(base, self._dtype)
            out = part if out is None else out + part
        return out

    def _report_(self) -> Callable[[int, int], Any] | None:
        """The progress callable of the fit under way (None outside `fit`)."""
        return getattr(self, "_report", None)

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
        bounds = np.linspace(0, self._p, len(self._devs) + 1).astype(int)
        self._shards = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        self._devs = self._devs[: len(self._shards)]
        self._Zk = [self.centers_ if len(self._shards) == 1 else self.centers_[sh] for sh in self._shards]
        self._Zk = [z.to(d) for z, d in zip(self._Zk, self._devs)]
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
            from ntkit.engine.memory import parse_memory

            itemsize = torch.empty((), dtype=self._dtype).element_size()
            self._budget = parse_memory(self.memory, self._devs[0])
            self._chunk = max(1, int(self._budget // (4 * self._p * itemsize)))
            self._init_state(self.dual_coef_.shape[1], self._p ** 2 * itemsize <= self._budget // 4)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.pairwise = _precomputed(self.kernel)
        tags.target_tags.multi_output = not isinstance(self, ClassifierMixin)
        return tags


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
        Y = check_targets(y, _n_rows(X))
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
        Y = check_targets(y, _n_rows(X))
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
        classes, Y = class_targets(y, _n_rows(X))
        self.classes_ = classes
        self._fit_impl(X, Y, eval_set, callback, progress)
        return self

    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> EigenPro3Classifier:
        """One epoch over (X, y); the first call needs `classes` (all labels that will ever occur)."""
        if not hasattr(self, "classes_"):
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit (all labels that "
                                 "will occur, e.g. np.arange(10))")
            self.classes_ = np.unique(np.asarray(classes))
        _, Y = class_targets(y, _n_rows(X), self.classes_)
        self._ensure_iteration_state()
        self._partial_impl(X, Y, one_step=False)
        return self

    def fit_batch(self, X: Any, y: Any, classes: Any = None) -> EigenPro3Classifier:
        """One step on one batch; the first call needs `classes`."""
        if not hasattr(self, "classes_"):
            if classes is None:
                raise ValueError("classes must be passed on the first call to fit_batch")
            self.classes_ = np.unique(np.asarray(classes))
        _, Y = class_targets(y, _n_rows(X), self.classes_)
        self._ensure_iteration_state()
        self._partial_impl(X, Y, one_step=True)
        return self

    def decision_scores(self, X: Any) -> np.ndarray:
        """f(X) for every class: (N, C)."""
        return self._decision(X).cpu().numpy()

    def predict(self, X: Any) -> np.ndarray:
        """The class with the largest score, (N,)."""
        scores = self.decision_scores(X)
        return np.asarray(self.classes_)[scores.argmax(1)]

