"""What every ntkit kernel machine shares: input checks, targets, the kernel, save and load.

A fitted model is f(x) = Σ_i dual_coef_[i] k(x, centers_[i]) (for kernel ridge the centers are
the training inputs). Saved models are one `.npz` file: the arrays plus a JSON description under
`__meta__` (no pickled code; an eNTK kernel is its model spec plus the state dict).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from ntkit._runtime.digest import tensor_bytes
from ntkit._runtime.files import atomic_open
from ntkit.kernels import Kernel, Precomputed, as_kernel, kernel_config, kernel_from_config, parse_kernel
from ntkit.kernels.base import KernelInputError, as_tensor

__all__ = ["SolverInputError", "NotPSDError", "SavedModelError", "KernelMachine", "load", "FORMAT", "check_inputs",
           "check_targets", "class_targets", "check_ridge", "n_rows", "peek_tensor", "is_precomputed"]

FORMAT = "ntkit.kernel_machine.v1"


class SolverInputError(ValueError):
    """Training or prediction data a solver cannot use (mismatched rows, NaN/Inf, wrong shapes)."""


class NotPSDError(ValueError):
    """The kernel is not positive semi-definite where the solver needs it to be."""


def _is_sparse(x: Any) -> bool:
    try:
        import scipy.sparse as sp

        return sp.issparse(x)
    except ImportError:  # pragma: no cover
        return False


def n_rows(X: Any) -> int:
    """Rows of X (N, ...) before any other check, so that a label/row mismatch is reported first."""
    if X is None:
        raise ValueError("X is None; pass an array of shape (N, *input)")
    shape = getattr(X, "shape", None)
    if shape is None:
        try:
            shape = np.asarray(X).shape
        except Exception:  # noqa: BLE001
            raise ValueError(f"X must be an array of shape (N, *input), got {type(X).__name__}") from None
    if len(shape) == 0:
        raise ValueError("X is a scalar; pass an array of shape (N, *input)")
    return int(shape[0])


def peek_tensor(X: Any) -> torch.Tensor | None:
    """X (N, *input) as a tensor when that is cheap, for building ntk:MODEL kernels (input shape only)."""
    try:
        return as_tensor(X)
    except Exception:  # noqa: BLE001 - the proper check with its message comes right after
        return None


def is_precomputed(kernel: Any) -> bool:
    """Whether a `kernel` parameter (a Kernel or a spec) is a precomputed matrix (inputs are indices)."""
    return isinstance(kernel, Precomputed) or (isinstance(kernel, str) and kernel.startswith(("npy:", "store:")))


def check_ridge(alpha: Any) -> None:
    """Raise ValueError unless the ridge `alpha` is a finite number >= 0."""
    if not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha (the ridge) must be a finite number >= 0, got {alpha!r}")


def check_inputs(X: Any, name: str = "X", *, indices: bool = False) -> torch.Tensor:
    """X as a tensor (N, *input) (indices (N,) for a precomputed kernel), finite, non-empty."""
    if X is None:
        raise SolverInputError(f"{name} is None; pass an array of shape (N, *input)")
    if _is_sparse(X):
        raise TypeError(f"{name} is a scipy sparse matrix; sparse input is not supported: pass a dense "
                        f"array ({name}.toarray())")
    if isinstance(X, np.ndarray) and X.dtype.kind == "c" or isinstance(X, torch.Tensor) and X.is_complex():
        raise SolverInputError(f"Complex data not supported: {name} has a complex dtype; kernels here are real")
    if not isinstance(X, (np.ndarray, torch.Tensor)):
        X = np.asarray(X)
        if X.dtype.kind == "c":
            raise SolverInputError(f"Complex data not supported: {name} has a complex dtype")
    if isinstance(X, np.ndarray) and X.dtype == object:
        X = X.astype(np.float64)  # numbers stored as objects; anything else raises TypeError here
    try:
        t = as_tensor(X, name)
    except KernelInputError as e:
        raise SolverInputError(str(e)) from None
    if indices:
        if t.ndim == 2 and t.shape[1] == 1:
            t = t[:, 0]
        if t.ndim != 1:
            raise SolverInputError(f"with a precomputed kernel {name} holds indices into it: a 1-D array (N,), "
                                   f"got shape {tuple(t.shape)}")
    elif t.ndim < 2:
        raise SolverInputError(
            f"Expected 2D array, got {t.ndim}D array instead: {name} must have shape (N, *input). Reshape "
            f"your data either using {name}.reshape(-1, 1) if it has a single feature or "
            f"{name}.reshape(1, -1) if it contains a single sample")
    if t.shape[0] == 0:
        raise SolverInputError(f"{name} has 0 samples; at least one is required")
    if not indices and t[0].numel() == 0:
        raise SolverInputError(f"{name} has 0 feature(s) (shape={tuple(t.shape)}) while a minimum of 1 is required.")
    if t.is_floating_point():
        bad = ~torch.isfinite(t.reshape(t.shape[0], -1)).all(1)
        if bool(bad.any()):
            rows = torch.nonzero(bad)[:5, 0].tolist()
            raise SolverInputError(f"{name} contains NaN or inf values in {int(bad.sum())} row(s), e.g. rows "
                                   f"{rows}: remove or impute them first")
    return t


def check_targets(y: Any, n: int, name: str = "y") -> torch.Tensor:
    """Regression targets as float64 (N,) or (N, C), one row per sample and finite."""
    if y is None:
        raise SolverInputError("this estimator requires y to be passed, but the target y is None")
    arr = y if isinstance(y, (np.ndarray, torch.Tensor)) else np.asarray(y)
    if isinstance(arr, np.ndarray) and arr.dtype.kind == "c" or isinstance(arr, torch.Tensor) and arr.is_complex():
        raise SolverInputError(f"Complex data not supported: {name} has a complex dtype")
    if isinstance(arr, np.ndarray) and arr.dtype == object:
        arr = arr.astype(np.float64)
    t = as_tensor(arr, name)
    if t.ndim == 0 or t.ndim > 2:
        raise SolverInputError(f"{name} must have shape (N,) or (N, C), got {tuple(t.shape)}")
    if t.shape[0] != n:
        raise SolverInputError(f"{name} has {t.shape[0]} rows but X has {n}: pass one target per row of X")
    if n == 0:
        raise SolverInputError("X and y have 0 samples; at least one is required")
    t = t.to(torch.float64)
    bad = ~torch.isfinite(t.reshape(n, -1)).all(1)
    if bool(bad.any()):
        rows = torch.nonzero(bad)[:5, 0].tolist()
        raise SolverInputError(f"{name} contains NaN or inf values in {int(bad.sum())} row(s), e.g. rows {rows}")
    return t


def class_targets(y: Any, n: int, classes: np.ndarray | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """(classes, one-hot float64 targets (N, C)) from labels of any type (ints, strings)."""
    if y is None:
        raise SolverInputError("this estimator requires y to be passed, but the target y is None")
    arr = y.cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        from sklearn.exceptions import DataConversionWarning

        warnings.warn("A column-vector y was passed when a 1d array was expected: using y.ravel()",
                      DataConversionWarning, stacklevel=3)
        arr = arr.ravel()
    if arr.ndim != 1:
        raise SolverInputError(f"labels must be a 1-D array (N,) of class labels, got shape {arr.shape}; "
                               "for multi-output regression use the regressor")
    if arr.shape[0] != n:
        raise SolverInputError(f"labels have {arr.shape[0]} rows but X has {n}: pass one label per row of X")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise SolverInputError("labels contain NaN or inf values")
    check_classification_targets(arr)
    if classes is None:
        classes = np.unique(arr)
    pos = np.searchsorted(classes, arr)
    pos = np.clip(pos, 0, len(classes) - 1)
    unknown = classes[pos] != arr
    if unknown.any():
        raise SolverInputError(f"labels {np.unique(arr[unknown])[:5].tolist()} are not among the classes "
                               f"{classes.tolist()[:20]} this model was set up with")
    onehot = torch.zeros((n, len(classes)), dtype=torch.float64)
    onehot[torch.arange(n), torch.from_numpy(pos.astype(np.int64))] = 1.0
    return classes, onehot


class KernelMachine:
    """Shared parts of the solvers (mixed into scikit-learn estimators)."""

    _fitted_attr = "dual_coef_"

    # -- kernel --------------------------------------------------------------------------------
    def _resolve_kernel(self, X: torch.Tensor | None, n_outputs: int) -> Kernel:
        """The `kernel` parameter as a Kernel (a spec like ntk:cnn is built for X's input shape)."""
        k = self.kernel
        if isinstance(k, str) and k.strip().lower().startswith(("ntk:", "entk:")):
            if X is None:
                raise SolverInputError("an ntk:MODEL kernel is built at fit time from the data's input shape")
            return parse_kernel(k, input_shape=tuple(X.shape[1:]), num_classes=n_outputs,
                                seed=getattr(self, "seed", 0))
        return as_kernel(k)

    def _uses_indices(self, kernel: Kernel) -> bool:
        return isinstance(kernel, Precomputed)

    def _check_X_predict(self, X: Any) -> torch.Tensor:
        check_is_fitted(self, self._fitted_attr)
        t = check_inputs(X, "X", indices=self._uses_indices(self.kernel_))
        self._check_input_shape(t)
        return t

    def _check_input_shape(self, t: torch.Tensor) -> None:
        """Raise SolverInputError when the samples of t (N, *input) are not shaped like the training data."""
        shape = tuple(self.input_shape_)
        if not self._uses_indices(self.kernel_) and tuple(t.shape[1:]) != shape:
            if t.ndim == 2 and len(shape) == 1:
                raise SolverInputError(f"X has {t.shape[1]} features, but {type(self).__name__} is expecting "
                                       f"{shape[0]} features as input: pass data shaped like the training data")
            raise SolverInputError(f"X has samples of shape {tuple(t.shape[1:])}, but {type(self).__name__} was "
                                   f"fit on samples of shape {shape}: pass data shaped like the training data")

    def _set_input_info(self, X: torch.Tensor, X_raw: Any) -> None:
        self.input_shape_ = tuple(X.shape[1:])
        if X.ndim == 2 and not self._uses_indices(self.kernel_):
            self.n_features_in_ = int(X.shape[1])
        names = getattr(X_raw, "columns", None)
        if names is not None and all(isinstance(c, str) for c in names):
            self.feature_names_in_ = np.asarray(list(names), dtype=object)

    def __sklearn_tags__(self):
        # a mixin ahead of BaseEstimator: super() is scikit-learn's
        tags = super().__sklearn_tags__()
        tags.input_tags.pairwise = is_precomputed(self.kernel)
        tags.target_tags.multi_output = not isinstance(self, ClassifierMixin)
        return tags

    # -- save / load -----------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:  # pragma: no cover - per solver
        raise NotImplementedError

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted model to `path` (.npz): arrays + a JSON description; returns the path.

        The kernel is saved by its spec (an eNTK built from a model spec: the spec and its state
        dict); a kernel without one (a callable, an eNTK of a model object, an in-memory
        precomputed matrix) raises TypeError naming the fix. Load with `ntkit.solvers.load`.
        """
        check_is_fitted(self, self._fitted_attr)
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        try:
            kcfg, karrays = kernel_config(self.kernel_)
        except TypeError as e:
            raise TypeError(f"cannot save this {type(self).__name__}: {e}") from None
        meta, arrays = self._state()
        params = self.get_params(deep=False)
        params["kernel"] = kcfg.get("spec") if isinstance(self.kernel, (Kernel, str)) else None
        if isinstance(self.kernel_, Precomputed) and self.kernel_.path:
            # the spec keeps the path as typed; a model used from another folder finds it here
            kcfg = {**kcfg, "abspath": os.path.abspath(self.kernel_.path)}
        meta = {"format": FORMAT, "class": type(self).__name__, "params": _jsonable(params),
                "kernel": kcfg, **meta}
        if isinstance(self.kernel_, Precomputed):
            # Which matrix the coefficients belong to: checked when the model is loaded, so a
            # replaced or recomputed kernel file is refused instead of predicting silently wrong.
            meta["kernel_probe"] = kernel_probe(self.kernel_, self._fit_indices())
        if getattr(self, "kernel_rows_", None) is not None:
            meta["kernel_rows"] = self.kernel_rows_
        import ntkit

        meta["ntkit_version"] = ntkit.__version__
        arrays = dict(arrays)
        for name, a in karrays.items():
            arrays[f"kernel_state/{name}"] = a
        arrays["__meta__"] = np.array(json.dumps(meta))
        with atomic_open(path) as fh:  # a full or read-only disk leaves nothing behind
            np.savez(fh, **arrays)
        return path


    def _fit_indices(self) -> np.ndarray:
        """The kernel indices a model on a precomputed kernel was fitted with (its centers)."""
        pts = getattr(self, "centers_", None)
        if pts is None:
            pts = self.X_fit_
        return np.asarray(pts.cpu().numpy() if isinstance(pts, torch.Tensor) else pts, dtype=np.int64).reshape(-1)


def kernel_probe(kernel: Precomputed, fit_idx: np.ndarray) -> dict[str, Any]:
    """A fingerprint of a precomputed kernel at a model's training rows and columns: the shape,
    the dtype and sha256 of K[i, j] over up to 16 of the indices (first and last 8), read as float64."""
    import hashlib

    idx = np.unique(np.concatenate([fit_idx[:8], fit_idx[-8:]])) if fit_idx.size else fit_idx
    block = tensor_bytes(kernel(idx, idx).to(torch.float64)) if idx.size else b""
    return {"shape": [int(s) for s in kernel.shape], "index": idx.tolist(),
            "sha256": hashlib.sha256(block).hexdigest()}


def check_kernel_probe(kernel: Precomputed, probe: dict[str, Any], path: Any) -> None:
    """Raise SavedModelError when `kernel` is not the matrix the saved model's `probe` describes."""
    idx = np.asarray(probe.get("index", []), dtype=np.int64)
    where = kernel.path or "the precomputed kernel"
    fix = "predict with the kernel the model was fitted on, or fit the model again on this one"
    if idx.size and int(idx.max()) >= min(kernel.shape):
        raise SavedModelError(f"{path}: the kernel {where} is {kernel.shape[0]} x {kernel.shape[1]} but the model was "
                              f"fitted on a {probe.get('shape', ['?', '?'])[0]} x {probe.get('shape', ['?', '?'])[1]} one "
                              f"and needs its rows and columns 0..{int(idx.max())}; {fix}")
    now = kernel_probe(kernel, idx)
    if now["sha256"] != probe.get("sha256"):
        raise SavedModelError(f"{path}: the kernel {where} is not the one this model was fitted on (its entries at the "
                              f"model's training rows and columns differ); {fix}")


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, (np.ndarray, torch.Tensor)):
            out[k] = None  # an array-valued parameter (centers) is saved as an array, not here
        elif isinstance(v, (list, tuple)):
            out[k] = [str(i) if isinstance(i, torch.device) else i for i in v]
        elif isinstance(v, torch.device):
            out[k] = str(v)
        elif isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        else:
            out[k] = repr(v)
    return out


def read_saved(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(meta, arrays) of a saved kernel machine."""
    p = Path(path)
    if not p.exists() and p.with_name(p.name + ".npz").exists():
        p = p.with_name(p.name + ".npz")
    if not p.exists():
        raise FileNotFoundError(f"no saved model at {path}: write one with model.save(path) or `ntkit fit -o PATH`")
    from ntkit.data.formats import read_npz_arrays

    arrays = read_npz_arrays(p, what="a model saved by ntkit",
                             fix="Save one with `ntkit fit ... -o PATH` or model.save(PATH).")
    if "__meta__" not in arrays:
        raise ValueError(f"{p} is not a model saved by ntkit (no __meta__ entry)")
    meta = json.loads(str(arrays.pop("__meta__")))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{p} has format {meta.get('format')!r}; this ntkit reads {FORMAT!r}")
    check_saved_arrays(p, meta, arrays)
    return meta, arrays


class SavedModelError(ValueError):
    """A saved kernel machine whose arrays are non-finite or do not fit together."""


def check_saved_arrays(path: str | os.PathLike[str], meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Refuse a saved model whose arrays would predict silently wrong values: non-finite floats
    (coefficients, centers, the preconditioner) or shapes that do not fit together
    (coefficients vs centers, classes vs coefficient columns, the Nyström sample vs its
    eigenvectors and the centers, the samples vs `input_shape`). Raises SavedModelError naming
    the array and the file."""
    fix = "the file is corrupted or was written by a failed fit: fit and save the model again"

    def fail(what: str) -> None:
        raise SavedModelError(f"{path}: {what}; {fix}")

    for name, a in arrays.items():
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            n_nan, n_inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
            fail(f"array {name!r} {tuple(a.shape)} has {n_nan} NaN and {n_inf} inf value(s)")
    cls = str(meta.get("class", ""))
    points = "centers" if "centers" in arrays else "X_fit"
    need = [points, "dual_coef"] + (["rho", "nystrom_index", "eigvals", "eigvecs"] if cls.startswith("EigenPro3") else [])
    for name in need:
        if name not in arrays:
            fail(f"array {name!r} is missing (a {cls or 'kernel machine'} needs {', '.join(need)})")
    X, coef = arrays[points], arrays["dual_coef"]
    if X.ndim < 1 or coef.ndim not in (1, 2) or coef.shape[0] != X.shape[0]:
        fail(f"array 'dual_coef' {tuple(coef.shape)} does not match {points!r} {tuple(X.shape)} (one coefficient "
             "row per point)")
    shape = meta.get("input_shape")
    if shape is not None and tuple(X.shape[1:]) != tuple(shape):
        fail(f"array {points!r} {tuple(X.shape)} holds samples of shape {tuple(X.shape[1:])}, but the model says "
             f"input_shape {tuple(shape)}")
    n_out = coef.shape[1] if coef.ndim == 2 else 1
    if "classes" in arrays and arrays["classes"].shape != (n_out,):
        fail(f"array 'classes' {tuple(arrays['classes'].shape)} does not match the {n_out} coefficient column(s) "
             "of 'dual_coef'")
    if cls.startswith("EigenPro3"):
        rho, idx, vals, vecs = arrays["rho"], arrays["nystrom_index"], arrays["eigvals"], arrays["eigvecs"]
        if rho.shape != coef.shape:
            fail(f"array 'rho' {tuple(rho.shape)} does not match 'dual_coef' {tuple(coef.shape)}")
        if idx.ndim != 1 or vecs.ndim != 2 or vecs.shape[0] != idx.shape[0] or vals.shape != (vecs.shape[1],):
            fail(f"the Nyström arrays do not fit together: 'nystrom_index' {tuple(idx.shape)}, 'eigvecs' "
                 f"{tuple(vecs.shape)}, 'eigvals' {tuple(vals.shape)} (need (s,), (s, q), (q,))")
        if idx.size and (idx.dtype.kind not in "iu" or idx.min() < 0 or idx.max() >= X.shape[0]):
            fail(f"array 'nystrom_index' points outside the {X.shape[0]} centers")


def load(path: str | os.PathLike[str], *, trust_code: Any = False, kernel: Any = None) -> KernelMachine:
    """A kernel machine saved with `.save(path)`, ready to predict (and, for EigenPro3, to go on training).

    Loading runs no code from the file: an eNTK kernel is rebuilt from its model spec, and a spec
    that would run code (`file:PATH.py:FACTORY`, torchvision pretrained weights) raises
    `ntkit.models.UntrustedModelError` before anything is imported, unless `trust_code` says the
    file may: `trust_code=["nets/mine.py"]` (the `.py` files, or exact model specs, trusted) or
    `True` (whatever the saved model names).

    `kernel`: for a model fitted on a precomputed kernel, another `Precomputed` kernel to use
    instead of the saved one (e.g. with more rows: new data against the same training columns);
    the caller checks that its columns are the model's (`ntkit.solvers.rows.check_replacement`).
    Otherwise the saved kernel is reopened and checked against the entries the model was fitted
    on (SavedModelError when it was replaced).
    """
    from ntkit.solvers.eigenpro3 import EigenPro3, EigenPro3Classifier
    from ntkit.solvers.ridge import KernelRidge, KernelRidgeClassifier

    meta, arrays = read_saved(path)
    classes = {c.__name__: c for c in (KernelRidge, KernelRidgeClassifier, EigenPro3, EigenPro3Classifier)}
    cls = classes.get(meta["class"])
    if cls is None:
        raise ValueError(f"{path}: unknown model class {meta['class']!r}")
    kstate = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("kernel_state/")}
    replaced = kernel is not None
    if replaced:
        if not isinstance(kernel, Precomputed) or not str(meta["kernel"].get("spec", "")).startswith(("npy:", "store:")):
            raise ValueError(f"{path}: only a model fitted on a precomputed kernel (npy:, store:) can take another "
                             f"precomputed kernel; this one's kernel is {meta['kernel'].get('spec') or 'an eNTK'}")
    else:
        kernel = kernel_from_config(meta["kernel"], kstate, trust_code=trust_code, source=f"the saved model {path}")
    valid = cls().get_params(deep=False)
    params = {k: v for k, v in meta["params"].items() if k in valid and k != "kernel" and v is not None}
    model = cls(kernel=kernel, **params)
    model.kernel_ = kernel
    model._restore(meta, arrays)
    if isinstance(kernel, Precomputed) and isinstance(meta.get("kernel_probe"), dict) and not replaced:
        check_kernel_probe(kernel, meta["kernel_probe"], path)
    model.kernel_rows_ = meta.get("kernel_rows")
    return model
