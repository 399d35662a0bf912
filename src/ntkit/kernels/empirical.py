"""`EmpiricalNTK`: a network's empirical NTK as a kernel on raw inputs.

k(x, z) = ⟨∇θ g(x), ∇θ g(z)⟩ summed over the differentiated outputs g: all logits for
output="trace", one logit for "logit:K", g = Σ_a f_a / √O for "pntk" (see `ntkit.ntk`).

A kernel machine evaluates k(x_batch, Z) against the same centers Z over and over. The Jacobian
rows of Z (the eNTK's feature map, (M, O'·P)) are cached after the first call when they fit in the
memory budget, so each later call only differentiates the new inputs. Without the cache, calls
go through `ntkit.ntk`, which picks the cheapest method for the pair.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import torch
from torch import nn

from ntkit._runtime.blocks import block_slices
from ntkit.kernels.base import Kernel, KernelInputError, as_tensor
from ntkit.kernels.progress import Steps, current_progress

__all__ = ["EmpiricalNTK", "KERNEL_OUTPUTS"]

#: outputs that make the eNTK a scalar kernel (N, M)
KERNEL_OUTPUTS = ("trace", "pntk", "logit:K")


class EmpiricalNTK(Kernel):
    """The empirical NTK of `model` as a kernel `k(x, z) -> (N, M)` on inputs (N, *input), or on
    tuples / mappings of tensors batched on dim 0 (the model's positional / keyword arguments).

    Args:
        model: any module `ntkit.ntk` takes (call `.eval()` for BatchNorm); it is read at every
            call, so training it changes the kernel (the feature cache notices parameter changes).
        output: "trace" (sum over logits), "pntk" or "logit:K": the scalar outputs of `ntkit.ntk`.
        method, params, batch_size, memory, output_fn: as in `ntkit.ntk`.
        cache: keep the Jacobian rows of the last `z` (the centers of a kernel machine) between
            calls: "auto" when they fit in `memory` (default: a quarter of free memory), or
            True/False.

    The result is in the model's dtype on its device; floating inputs are cast to that dtype.
    Built with `EmpiricalNTK.from_spec("cnn", input_shape, num_classes)` (or the kernel spec
    `ntk:cnn`), the kernel can be saved with a solver: as its model spec and state dict.
    """

    def __init__(self, model: nn.Module, output: str = "trace", method: str = "auto", *,
                 params: Any = None, batch_size: int | None = None, memory: int | str | None = None,
                 cache: bool | str = "auto", output_fn: Any = None) -> None:
        super().__init__()
        from ntkit.engine.api import parse_method
        from ntkit.engine.functional import FunctionalModel
        from ntkit.engine.outputs import parse_output

        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        spec = parse_output(output)
        if spec.kind not in ("trace", "pntk", "logit"):
            raise ValueError(f"EmpiricalNTK needs a scalar kernel: output must be one of "
                             f"{', '.join(KERNEL_OUTPUTS)}, got {output!r} (its shape is not (N, M))")
        if cache not in ("auto", True, False):
            raise ValueError(f"cache must be 'auto', True or False, got {cache!r}")
        self.model, self.output, self.method = model, str(spec), parse_method(method)
        self.params, self.batch_size, self.memory, self.cache = params, batch_size, memory, cache
        self.output_fn = output_fn
        self._ospec = spec
        self._fm_cls = FunctionalModel
        self._cached: tuple[Any, ...] | None = None  # (weakref to z, z version, params version, features)
        # Set by from_spec: what rebuilds the model when a solver is saved and loaded.
        self.model_spec: str | None = None
        self.input_shape: tuple[int, ...] | None = None
        self.num_classes: int | None = None
        self.seed: int | None = None

    @classmethod
    def from_spec(cls, model_spec: str, input_shape: tuple[int, ...], num_classes: int, *, seed: int = 0,
                  output: str = "trace", method: str = "auto", dtype: torch.dtype | str | None = None,
                  **kw: Any) -> EmpiricalNTK:
        """The eNTK of `build_model(model_spec, input_shape, num_classes, seed=seed)`."""
        from ntkit.models import build_model

        net = build_model(model_spec, tuple(input_shape), int(num_classes), seed=seed)
        if dtype is not None:
            net = net.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
        k = cls(net.eval(), output=output, method=method, **kw)
        k.model_spec, k.input_shape, k.num_classes, k.seed = str(model_spec), tuple(input_shape), int(num_classes), seed
        return k

    # -- configuration -----------------------------------------------------------------------
    @property
    def spec(self) -> str | None:
        if self.model_spec is None:
            return None
        return f"ntk:{self.model_spec}@output={self.output},method={self.method},seed={self.seed}"

    def to_config(self) -> dict[str, Any]:
        if self.model_spec is None:
            raise TypeError(
                "this EmpiricalNTK was built from a model object, so it cannot be saved: build it "
                "with EmpiricalNTK.from_spec(model_spec, input_shape, num_classes) or the kernel spec "
                "'ntk:MODEL' (its weights are then saved as a state dict)")
        return {"type": "ntk", "model": self.model_spec, "input_shape": list(self.input_shape or ()),
                "num_classes": self.num_classes, "seed": self.seed, "output": self.output,
                "method": self.method, "dtype": str(self._dtype()).removeprefix("torch.")}

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The model's state dict as numpy arrays (saved next to the config)."""
        return {k: v.detach().cpu().numpy() for k, v in self.model.state_dict().items()}

    # -- inputs ------------------------------------------------------------------------------
    def _dtype(self) -> torch.dtype:
        for p in self.model.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.get_default_dtype()

    def _device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    def prepare(self, x: Any, name: str = "x") -> Any:
        from ntkit.engine.inputs import Batch, as_inputs

        if isinstance(x, (tuple, dict, Batch)) or (hasattr(x, "keys") and hasattr(x, "__getitem__")):
            try:
                b = as_inputs(x, name)
            except (TypeError, ValueError) as e:
                raise KernelInputError(str(e)) from None
            return b.to(self._dtype()).to(self._device())
        t = as_tensor(x, name)
        if t.ndim == 0:
            raise KernelInputError(f"{name} is a scalar; inputs are batches of shape (N, *input)")
        if t.is_floating_point():
            t = t.to(self._dtype())
        return t.to(self._device())

    def _out_dtype(self, x, z):
        return self._dtype()

    def _params_version(self) -> tuple[int, ...]:
        return tuple(p._version for p in self.model.parameters()) + tuple(id(p) for p in self.model.parameters())

    # -- features (Jacobian rows) ------------------------------------------------------------
    def _fm(self):
        return self._fm_cls(self.model, self.params, None, self.output_fn)

    def _feature_step(self, fm) -> int:
        """Samples per Jacobian block of `_features` (at most 256, under the memory budget)."""
        spec = self._ospec.resolve(fm.n_logits)
        width = spec.n_out(fm.n_logits) * fm.n_params
        itemsize = torch.empty((), dtype=fm.dtype).element_size()
        return min(self.batch_size or max(1, int(self._budget() // max(1, 4 * width * itemsize))), 256)

    def _n_featureblock_slices(self, fm, n: int, chunk: int | None = None) -> int:
        """How many Jacobian blocks `_features` runs for n samples (taken `chunk` at a time)."""
        step = self._feature_step(fm)
        return sum(len(block_slices(c.stop - c.start, step)) for c in block_slices(n, chunk or max(n, 1)))

    def _features(self, fm, x: torch.Tensor, steps: Steps | None = None) -> torch.Tensor:
        """Jacobian rows of the differentiated outputs: (n, O'·P), blocked over samples."""
        spec = self._ospec.resolve(fm.n_logits)
        width = spec.n_out(fm.n_logits) * fm.n_params
        step = self._feature_step(fm)
        out = torch.empty((x.shape[0], width), dtype=fm.dtype, device=fm.device)
        for s in block_slices(x.shape[0], step):
            rows = fm.jacobian_rows(fm.names, x[s], spec)
            out[s] = torch.cat([rows[n].reshape(s.stop - s.start, spec.n_out(fm.n_logits), -1)
                                for n in fm.names], dim=2).reshape(s.stop - s.start, -1)
            if steps is not None:
                steps.advance()
        return out

    def _budget(self) -> int:
        from ntkit.engine.memory import parse_memory

        return parse_memory(self.memory, self._device())

    def _cache_hit(self, z_raw: Any) -> bool:
        c = self._cached
        return (self.cache is not False and c is not None and c[0]() is z_raw
                and c[1] == getattr(z_raw, "_version", None) and c[2] == self._params_version())

    def _cacheable(self, zp: torch.Tensor, fm) -> bool:
        if self.cache is False:
            return False
        spec = self._ospec.resolve(fm.n_logits)
        need = zp.shape[0] * spec.n_out(fm.n_logits) * fm.n_params * torch.empty((), dtype=fm.dtype).element_size()
        return not (self.cache == "auto" and need > self._budget() // 2)

    def _cached_features(self, z_raw: Any, zp: torch.Tensor, fm, steps: Steps | None = None) -> torch.Tensor | None:
        """Features of z from the cache, or computed and cached when allowed; None otherwise."""
        if self.cache is False:
            return None
        pv = self._params_version()
        if self._cache_hit(z_raw):
            return self._cached[3]
        if not self._cacheable(zp, fm):
            return None
        feats = self._features(fm, zp, steps)
        try:
            self._cached = (weakref.ref(z_raw), getattr(z_raw, "_version", None), pv, feats)
        except TypeError:  # an object without weak references (a list): nothing to key the cache on
            self._cached = None
        return feats

    def __getstate__(self) -> dict[str, Any]:  # pickling and copying drop the feature cache
        state = dict(self.__dict__)
        state["_cached"] = None
        return state

    def clear_cache(self) -> None:
        """Drop the cached Jacobian rows."""
        self._cached = None

    # -- public operations -------------------------------------------------------------------
    def __call__(self, x: Any, z: Any = None) -> torch.Tensor:
        """k(x, z): (N, M); z=None exploits symmetry (one triangle through `ntkit.ntk`)."""
        from ntkit.engine.api import ntk

        xp = self.prepare(x, "x")
        if z is None or z is x:
            return ntk(self.model, xp, None, method=self.method, output=self.output, params=self.params,
                       batch_size=self.batch_size, memory=self.memory, progress=current_progress(),
                       output_fn=self.output_fn)
        zp = self.prepare(z, "z")
        fm = self._fm()
        fm.check_inputs(xp, zp)
        steps = None
        if current_progress() is not None and (self._cache_hit(z) or self._cacheable(zp, fm)):
            steps = Steps(self._n_featureblock_slices(fm, xp.shape[0])
                          + (0 if self._cache_hit(z) else self._n_featureblock_slices(fm, zp.shape[0])))
        fz = self._cached_features(z, zp, fm, steps)
        if fz is None:
            return ntk(self.model, xp, zp, method=self.method, output=self.output, params=self.params,
                       batch_size=self.batch_size, memory=self.memory, progress=current_progress(),
                       output_fn=self.output_fn)
        return self._features(fm, xp, steps) @ fz.T

    def mv(self, x: Any, z: Any, v: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """k(x, z) @ v = J(x)·(J(z)ᵀ v) without forming k: v (M,) or (M, C) -> (N,) or (N, C)."""
        xp = self.prepare(x, "x")
        zp = xp if (z is None or z is x) else self.prepare(z, "z")
        fm = self._fm()
        fm.check_inputs(xp, None if zp is xp else zp)
        vec = v.ndim == 1
        v2 = v.reshape(v.shape[0], -1).to(device=fm.device, dtype=fm.dtype)
        if v2.shape[0] != zp.shape[0]:
            raise KernelInputError(f"v has {v2.shape[0]} rows but z has {zp.shape[0]}: pass one row per z")
        z_raw = z if z is not None else x
        steps = None
        if current_progress() is not None:
            steps = Steps(self._n_featureblock_slices(fm, xp.shape[0], 256)
                          + (0 if self._cache_hit(z_raw) else self._n_featureblock_slices(fm, zp.shape[0], 256)))
        fz = self._cached_features(z_raw, zp, fm, steps)
        if fz is not None:
            w = fz.T @ v2
        else:
            w = None
            for s in block_slices(zp.shape[0], 256):
                part = self._features(fm, zp[s], steps).T @ v2[s]
                w = part if w is None else w + part
        res = torch.cat([self._features(fm, xp[s], steps) @ w for s in block_slices(xp.shape[0], 256)])
        if out is not None:
            out += res
            res = out
        return res[:, 0] if vec else res

    def diag(self, x: Any) -> torch.Tensor:
        """k(x_i, x_i) = ‖J(x_i)‖²: (N,)."""
        xp = self.prepare(x, "x")
        fm = self._fm()
        fm.check_inputs(xp, None)
        return torch.cat([self._features(fm, xp[s]).pow(2).sum(1) for s in block_slices(xp.shape[0], 256)])

    def __repr__(self) -> str:
        what = self.model_spec or type(self.model).__name__
        return f"EmpiricalNTK({what}, output={self.output!r}, method={self.method!r})"
