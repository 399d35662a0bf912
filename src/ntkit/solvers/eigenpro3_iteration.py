"""The EigenPro3 iteration: its setup from the spectrum, one projected preconditioned step, epochs.

The algorithm, its notation (Z the p centers, X_s the Nyström sample, E, D, λ_{q+1}, ρ) and how
ntkit's version differs from the paper are in `ntkit.solvers.eigenpro3`'s docstring. This module
holds the state and the steps as a mixin of the estimators there (which add the scikit-learn
contract, the parameters and save/load); the centers are sharded over devices
(`ntkit.solvers.sharding`) and the projection is a warm-started conjugate-gradient solve
(`ntkit.solvers.cg`).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ntkit._runtime.blocks import block_slices
from ntkit.solvers.base import SolverInputError, check_inputs, check_targets, class_targets, n_rows
from ntkit.solvers.cg import conjugate_gradient
from ntkit.solvers.nystrom import NystromAdaptedWarning, critical_batch_size, nystrom_eigensystem, step_size
from ntkit.solvers.progress import phase
from ntkit.solvers.sharding import shard_rows

__all__ = ["DivergenceError", "EigenPro3Iteration"]


class DivergenceError(RuntimeError):
    """The iteration blew up: the step size was too large for this kernel and data."""


class EigenPro3Iteration:
    """The iteration's state and steps, mixed into `EigenPro3` / `EigenPro3Classifier`.

    Reads the estimator's parameters (`kernel_`, `centers`, `alpha`, `batch_size`, `lr`,
    `nystrom_size`, `top_q`, `projection_iters`, `projection_tol`, `memory`, `seed`, `verbose`)
    and `_devices()`; sets the learned attributes (`centers_`, `dual_coef_` (p, C), `batch_size_`,
    `lr_`, `eigvals_`, `history_`, ...).
    """

    _is_classifier = False

    # ------------------------------------------------------------------ setup
    def _setup(self, X: torch.Tensor, Y: torch.Tensor, X_raw: Any) -> None:
        """Centers, the Nyström eigensystem, batch and step size, the projection preconditioner."""
        self._check_params()
        gen = torch.Generator().manual_seed(int(self.seed))
        self._gen = gen
        n = X.shape[0]
        self._devs = self._devices()
        self._set_input_info(X, X_raw)
        probe = self.kernel_(X[:1], X[:1])
        self._dtype = probe.dtype if probe.is_floating_point() else torch.float32

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
        self._shards, self._devs, self._Zk = shard_rows(Z, self._devs)

        # -- memory: the batch block (m × p) and, if it fits, K_zz
        cache_kzz = self._memory_plan()
        m_mem = self._chunk

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

    def _memory_plan(self) -> bool:
        """The batch block (m × p) within the `memory` budget: sets `_budget` and `_chunk` (rows of
        a batch read at once); returns whether K_zz (p × p) fits a quarter of the budget."""
        from ntkit.engine.memory import parse_memory

        itemsize = torch.empty((), dtype=self._dtype).element_size()
        self._budget = parse_memory(self.memory, self._devs[0])
        self._chunk = max(1, int(self._budget // (4 * self._p * itemsize)))
        return self._p * self._p * itemsize <= self._budget // 4

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

    def _solve_pending(self, iters: int, tol: float) -> None:
        """Move the pending projection residual ρ (p, C) into the coefficients: δ with K_zz δ ≈ ρ by
        preconditioned CG (at most `iters` iterations, relative residual `tol` per column); what
        stays unsolved remains in ρ for the next call."""
        if not bool(self._rho.abs().max() > 0):
            return
        delta, info = conjugate_gradient(self._kzz_mv, self._rho, precond=self._precond, tol=tol, maxiter=iters)
        self.dual_coef_ += delta
        self._rho -= info.Ax
        if self._u is not None:
            self._u += info.Ax
        self.projection_iters_used_ += info.iterations

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
        for ch in block_slices(m, self._chunk):
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
        self._solve_pending(int(self.projection_iters), float(self.projection_tol))
        return torch.cat(preds)

    def _flush(self) -> None:
        """Finish the pending projection (at the end of fit / partial_fit)."""
        self._solve_pending(5 * int(self.projection_iters), 1e-6)

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
                with phase(progress, f"test predictions ({n_rows(ev[0])} samples)"):
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

