"""A model seen as a pure function f(θ, x) of the selected parameters, and its Jacobian rows.

Everything the three methods share lives here: parameter selection (names or globs, frozen
parameters excluded, tied weights counted once), buffers, input validation, the check that a model
in training mode does not mix samples, the per-sample Jacobian rows ∂f(x_n)/∂θ_g for a group g of
parameters (vmapped with torch.func, or a per-sample autograd loop for models vmap cannot
transform), and a per-sample profile (forward FLOPs, activation sizes) for the cost model,
measured by the same probe forward that validates the inputs. What these learn about the model
is kept between calls in its plan cache (`memo`, see `ntkit.engine.cache`).
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from ntkit._runtime.flops import FlopCount
from ntkit.engine.cache import Memo, memo_for
from ntkit.engine.inputs import Batch, input_signature, iter_leaves
from ntkit.engine.outputs import OutputSpec
from ntkit.engine.returns import OutputError, pick_output
from ntkit.engine.rows_check import rows_error, tolerance

ParamSelection = str | Sequence[str] | None
OutputFn = Callable[[Any], torch.Tensor]


class VmapFallbackWarning(UserWarning):
    """The model could not be transformed by torch.func.vmap; a per-sample loop is used."""


def select_parameters(model: nn.Module, params: ParamSelection) -> list[str]:
    """Names of the parameters that enter the kernel, in `model.named_parameters()` order.

    `params` is None (all trainable parameters), a name, a glob (`"fc.*"`), a module prefix
    (`"fc"` selects `fc.weight` and `fc.bias`), or a list of those. Frozen parameters
    (`requires_grad=False`) never enter the kernel. Tied parameters are counted once.
    """
    named = list(model.named_parameters())  # deduplicates tied parameters
    if not named:
        raise ValueError("the model has no parameters, so its NTK is zero-dimensional")
    trainable = [n for n, p in named if p.requires_grad]
    if params is None:
        if not trainable:
            raise ValueError(
                "every parameter of the model is frozen (requires_grad=False): nothing to "
                "differentiate. Unfreeze some parameters or select them with params=..."
            )
        return trainable
    patterns = [params] if isinstance(params, str) else list(params)
    if not patterns:
        raise ValueError("params=[] selects no parameter; pass None for all trainable parameters")
    all_names = [n for n, _ in named]
    chosen: set[str] = set()
    for pat in patterns:
        if not isinstance(pat, str):
            raise TypeError(f"params entries must be strings (names or globs), got {pat!r}")
        hits = [n for n in all_names if fnmatch.fnmatchcase(n, pat) or n.startswith(pat + ".")]
        if not hits:
            near = difflib.get_close_matches(pat, all_names, n=3, cutoff=0.4)
            hint = f" Closest names: {', '.join(near)}." if near else ""
            shown = ", ".join(all_names[:12]) + (" ..." if len(all_names) > 12 else "")
            raise ValueError(
                f"params pattern {pat!r} matches no parameter of the model.{hint} "
                f"Parameters are: {shown}"
            )
        live = [n for n in hits if n in trainable]
        if not live:
            raise ValueError(
                f"params pattern {pat!r} matches only frozen parameters ({', '.join(hits[:6])}); "
                "frozen parameters (requires_grad=False) are not part of the kernel"
            )
        chosen.update(live)
    return [n for n in trainable if n in chosen]


@dataclass
class Profile:
    """What one forward pass of one sample costs (for the cost model and memory plans)."""

    flops: float  # forward FLOPs for one sample
    activations: int  # elements of all module outputs for one sample
    peak: int = 1  # elements of the largest single module output for one sample


class FunctionalModel:
    """`model` as f(θ, x) over the selected parameters θ, with everything else held constant.

    The model itself is never modified: θ, the other parameters and the buffers are detached
    views (or copies on `device`), and calls go through `torch.func.functional_call`.
    """

    def __init__(
        self,
        model: nn.Module,
        params: ParamSelection = None,
        device: torch.device | str | None = None,
        output_fn: OutputFn | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if output_fn is not None and not callable(output_fn):
            raise TypeError(f"output_fn must be a callable taking the model's return value, got {output_fn!r}")
        self.model = model
        self.output_fn = output_fn
        self.names = select_parameters(model, params)
        named = dict(model.named_parameters())
        tensors = list(named.values()) + [b for _, b in model.named_buffers()]
        devices = {t.device for t in tensors}
        dtypes = {p.dtype for p in named.values() if p.is_floating_point()}
        if len(dtypes) > 1:
            raise ValueError(
                f"the model mixes parameter dtypes {sorted(map(str, dtypes))}: convert it to one "
                "dtype first, e.g. model.float() or model.double()"
            )
        if device is None:
            if len(devices) > 1:
                raise ValueError(
                    f"the model's tensors are on several devices {sorted(map(str, devices))}: "
                    "move it to one with model.to(device), or pass device= to compute there"
                )
            self.device = next(iter(devices))
        else:
            self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = next(iter(dtypes)) if dtypes else torch.get_default_dtype()

        def place(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(self.device)

        self.theta: dict[str, torch.Tensor] = {n: place(named[n]) for n in self.names}
        self.frozen: dict[str, torch.Tensor] = {
            n: place(p) for n, p in named.items() if n not in self.theta
        }
        # Buffers are copied: a forward that updates them in place (call counters, BatchNorm
        # in training mode in the per-sample fallback) must never change the user's model.
        self.buffers: dict[str, torch.Tensor] = {
            n: place(b).clone() for n, b in model.named_buffers()
        }
        self.sizes = {n: t.numel() for n, t in self.theta.items()}
        self.n_params = sum(self.sizes.values())
        self.vmappable: bool | None = None  # decided on first use
        self.vmap_checked: set[str] = set()  # parameters whose vmapped rows matched plain autograd
        self.n_logits: int | None = None
        self.out_squeezed = False  # model returns (N,) rather than (N, O)
        self.out_shape: tuple[int, ...] = ()  # S of the model's (N, *S) output
        self._profile: Profile | None = None
        # What planning learns about this model's structure, kept between calls (see
        # ntkit.engine.cache); `sig` (input shape and dtype) is set by check_inputs.
        self.memo: Memo = memo_for(model, (tuple(self.names), self.device, self.dtype, _key(output_fn)))
        self.sig: tuple | None = None

    # -- evaluation ---------------------------------------------------------------------------
    def call(self, theta: dict[str, torch.Tensor], x: torch.Tensor | Batch, fresh_buffers: bool = False):
        """The model's differentiated output on a batch x (a tensor (N, *input) or a `Batch` of
        arguments): (N, *S), picked from what the model returns by `output_fn` / `pick_output`."""
        buffers = {n: b.clone() for n, b in self.buffers.items()} if fresh_buffers else self.buffers
        if isinstance(x, Batch):
            out = functional_call(self.model, ({**self.frozen, **theta}, buffers), x.args, x.kwargs)
        else:
            out = functional_call(self.model, ({**self.frozen, **theta}, buffers), (x,))
        if self.output_fn is not None:
            return self.output_fn(out)
        return out if isinstance(out, torch.Tensor) else pick_output(out)

    def logits(self, theta: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """f(θ, x) as (N, O) for a batch x: (N, *input)."""
        out = self.call(theta, x)
        return out.reshape(x.shape[0], -1)

    def reduced(self, theta: dict[str, torch.Tensor], x: torch.Tensor, spec: OutputSpec):
        """The differentiated outputs for a batch: (N, O') with O' = 1 for logit:K and pntk."""
        out = self.logits(theta, x)
        if spec.kind == "logit":
            return out[:, spec.logit : spec.logit + 1]
        if spec.kind == "pntk":
            return out.sum(dim=1, keepdim=True) / math.sqrt(out.shape[1])
        return out

    def single(self, theta: dict[str, torch.Tensor], x: torch.Tensor, spec: OutputSpec):
        """The differentiated outputs of one sample x: (*input) -> (O',)."""
        return self.reduced(theta, x.unsqueeze(0), spec)[0]

    # -- validation -----------------------------------------------------------------------------
    def check_inputs(self, x1: torch.Tensor | Batch, x2: torch.Tensor | Batch | None) -> int:
        """Validate x1 (and x2), run the model once, and return O. Raises ValueError with a fix."""
        for name, x in (("x1", x1), ("x2", x2)):
            if x is None:
                continue
            for leaf, t in iter_leaves(x):
                what = name if isinstance(x, torch.Tensor) else f"{name}[{leaf!r}]" if x.kwargs else f"{name}[{leaf}]"
                self._check_tensor(what, name, t)
        if x2 is not None and input_signature(x1) != input_signature(x2):
            if isinstance(x1, torch.Tensor) and isinstance(x2, torch.Tensor):
                raise ValueError(
                    f"x1 and x2 have different input shapes {tuple(x1.shape[1:])} and "
                    f"{tuple(x2.shape[1:])}; both must be (N, *input) for the same input shape"
                )
            raise ValueError(
                f"x1 and x2 have different structures, {_describe(x1)} and {_describe(x2)}; both must hold the "
                "same arguments with the same shapes after dim 0 and dtypes (pad sequences to one length)"
            )
        self.sig = input_signature(x1)
        known = self.memo.get(("inputs", self.sig))
        if known is not None:  # this structure accepted these inputs before (and was checked)
            self.n_logits, self.out_squeezed, self.out_shape, self._profile = known
            self.vmappable = self.memo.get(("vmappable", self.sig))
            self.vmap_checked = set(self.memo.get(("vmap_checked", self.sig)) or ())
            return self.n_logits
        # Two samples tell (N,) and (N, O) outputs apart; a model in training mode gets four for
        # the check that its samples do not interact.
        training = any(m.training for m in self.model.modules())
        probe = x1[: min(len(x1), 4 if training else 2)]
        with torch.no_grad():
            try:
                out = self._profiled_call(probe)
            except Exception as e:  # noqa: BLE001 - any model error is reported with context
                if isinstance(e, OutputError):
                    raise
                if self.output_fn is not None and _raised_in(e, self.output_fn):
                    raise ValueError(f"output_fn failed on the model's return value: {type(e).__name__}: {e}") from e
                shown = f"inputs of shape {tuple(x1.shape)}" if isinstance(x1, torch.Tensor) else f"inputs {_describe(x1)}"
                how = ("ntkit feeds batches (N, *input); check the input shape the model expects"
                       if isinstance(x1, torch.Tensor) else
                       "ntkit calls model(*tuple) or model(**mapping) on slices of N samples; check the "
                       "argument names and shapes the forward expects")
                raise ValueError(
                    f"the model rejected {shown} (tried x1[:{len(probe)}]): {type(e).__name__}: {e}. {how}"
                ) from e
        if not isinstance(out, torch.Tensor):
            raise ValueError(
                f"output_fn returned {type(out).__name__}; it must return the tensor (N, *S) to differentiate"
            )
        if out.ndim == 1 and out.shape[0] == len(probe):
            self.out_squeezed = True
            n_logits = 1
        elif out.ndim >= 2 and out.shape[0] == len(probe):
            n_logits = math.prod(out.shape[1:])
        else:
            raise ValueError(
                f"the model's output for {len(probe)} inputs has shape {tuple(out.shape)}; ntkit "
                f"needs the batch first: ({len(probe)},) or ({len(probe)}, *S). Return the outputs "
                "batch-first (or pick them with output_fn=...)"
            )
        self.out_shape = tuple(out.shape[1:])
        if not out.is_floating_point():
            raise ValueError(f"the model's output has dtype {out.dtype}; it must be floating")
        if n_logits == 0:
            raise ValueError(
                f"the model has no outputs: its output for {len(probe)} inputs has shape "
                f"{tuple(out.shape)} (O = 0), so its eNTK is empty. Give its last layer at least one "
                "output (e.g. num_classes >= 1)"
            )
        self.n_logits = n_logits
        if training:
            self._check_samples_independent(probe, out)
        self.memo.put(("inputs", self.sig), (n_logits, self.out_squeezed, self.out_shape, self._profile))
        return n_logits

    def _check_tensor(self, what: str, name: str, x: torch.Tensor) -> None:
        if x.ndim == 0:
            raise ValueError(f"{what} is a scalar; inputs are batches of shape (N, *input)")
        if x.shape[0] == 0:
            raise ValueError(f"{what} is empty (N = 0); pass at least one input")
        if x.device != self.device:
            raise ValueError(
                f"{what} is on {x.device} but the model is on {self.device}: move the "
                f"inputs with .to({str(self.device)!r}), or pass device= to compute elsewhere"
            )
        if x.is_floating_point():
            if x.dtype != self.dtype:
                raise ValueError(
                    f"{what} has dtype {x.dtype} but the model's parameters are {self.dtype}: "
                    f"convert one of them (e.g. {name}.to({self.dtype}))"
                )
            bad = (~torch.isfinite(x)).sum().item()
            if bad:
                raise ValueError(
                    f"{what} contains {bad} NaN or Inf value(s); the kernel would be "
                    "undefined. Clean or impute the inputs first"
                )
        elif x.is_complex():
            raise ValueError(f"{what} is complex; ntkit computes real NTKs only")

    def _check_samples_independent(self, probe: torch.Tensor, batched: torch.Tensor) -> None:
        """A model in training mode may mix samples (BatchNorm) or be random (dropout)."""
        fix = (
            "The NTK is defined per sample: call model.eval() first (BatchNorm then uses its "
            "running statistics and dropout is off)"
        )
        with torch.no_grad():
            try:
                single = torch.cat(
                    [self.call(self.theta, probe[i : i + 1], True).reshape(1, -1) for i in range(len(probe))]
                )
            except Exception as e:  # noqa: BLE001
                raise ValueError(
                    f"the model is in training mode and fails on a single sample ({e}). {fix}"
                ) from e
            again = self.call(self.theta, probe, fresh_buffers=True).reshape(len(probe), -1)
        batched = batched.reshape(len(probe), -1)
        scale = batched.abs().max().clamp_min(1e-30)
        tol = 1e-4 if self.dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-10
        if not torch.allclose(batched, again, rtol=0, atol=tol * float(scale)):
            raise ValueError(f"the model is in training mode and its output is random. {fix}")
        if not torch.allclose(batched, single, rtol=0, atol=tol * float(scale)):
            raise ValueError(
                "the model is in training mode and its outputs for a batch differ from its "
                f"outputs for the same samples one at a time (samples interact). {fix}"
            )

    # -- profile --------------------------------------------------------------------------------
    def _profiled_call(self, x: torch.Tensor) -> torch.Tensor:
        """The probe forward of `check_inputs` on a few samples x, measuring the profile on the
        way (forward FLOPs as FlopCounterMode counts them, `ntkit._runtime.flops`; activation
        elements by hooks on the leaf modules; both per sample): one forward serves validation
        and the cost model."""
        sizes = _ActivationSizes(self.model)
        try:
            with FlopCount() as counter:
                out = self.call(self.theta, x, fresh_buffers=True)
            flops = float(counter.total)
        except Exception:  # noqa: BLE001 - a counting failure is not the model's: run it plainly
            sizes.remove()
            self._profile = None
            return self.call(self.theta, x, fresh_buffers=True)
        finally:
            sizes.remove()
        n = x.shape[0]
        self._profile = self._make_profile(flops / n, sizes.acts / n, sizes.peak / n)
        return out

    def _make_profile(self, flops: float, acts: float, peak: float) -> Profile:
        # Elementwise work is not counted by FlopCounterMode; a dense layer costs 2 FLOPs/weight.
        return Profile(flops=max(flops, 2.0 * self.n_params, acts), activations=max(int(acts), 1),
                       peak=max(int(peak), 1))

    def profile(self, x: torch.Tensor) -> Profile:
        """Forward FLOPs and activation elements of one sample (measured by `check_inputs`'
        probe, or here on x[:1] when that was not possible; then cached)."""
        if self._profile is not None:
            return self._profile
        sizes = _ActivationSizes(self.model)
        flops = 0.0
        try:
            with torch.no_grad(), FlopCount() as counter:
                self.call(self.theta, x[:1])
            flops = float(counter.total)
        except Exception:  # noqa: BLE001 - the profile is an estimate; fall back below
            pass
        finally:
            sizes.remove()
        self._profile = self._make_profile(flops, sizes.acts, sizes.peak)
        if self.sig is not None and self.n_logits is not None:
            self.memo.put(("inputs", self.sig), (self.n_logits, self.out_squeezed, self.out_shape, self._profile))
        return self._profile

    # -- Jacobian rows --------------------------------------------------------------------------
    def jacobian_rows(
        self, names: Sequence[str], x: torch.Tensor, spec: OutputSpec
    ) -> dict[str, torch.Tensor]:
        """∂f(x_n)/∂θ_g for the parameters `names`: {name: (n, O', *param.shape)}.

        Vmapped per sample with torch.func; the first rows of each parameter are checked against
        plain autograd (`ntkit.engine.rows_check`). A failure of vmap, or rows that fail the check,
        switch this model to a per-sample autograd loop for good, with one warning that names
        the cause.
        """
        if self.vmappable is not False:
            try:
                rows = self._jacobian_rows_vmap(names, x, spec)
            except torch.OutOfMemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - vmap errors come in many types
                # Even after vmap worked on other samples (a batching rule can fail only for
                # some batch sizes); an error of the model itself comes back from the loop.
                self._no_vmap(f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
            else:
                unchecked = [n for n in names if n not in self.vmap_checked]
                if not unchecked:
                    return rows
                err = rows_error(self, unchecked, x, spec, rows)
                if err <= tolerance(self.dtype):
                    if x.shape[0] >= 2:  # one sample broadcasts against anything: proves little
                        self.vmap_checked |= set(unchecked)
                        self.vmappable = True
                        self.memo.put(("vmappable", self.sig), True)
                        self.memo.put(("vmap_checked", self.sig), frozenset(self.vmap_checked))
                    return rows
                self._no_vmap(f"its vmapped Jacobian rows differ from plain autograd's by {err:.1e} relative "
                              "on the same samples: a wrong batching rule in one of its operators")
        return self._jacobian_rows_loop(names, x, spec)

    def _no_vmap(self, why: str) -> None:
        self.vmappable = False
        self.memo.put(("vmappable", self.sig), False)
        warnings.warn(
            f"torch.func.vmap cannot transform {type(self.model).__name__} ({why}); computing its "
            "Jacobian one sample at a time instead (exact, but slower)",
            VmapFallbackWarning,
            stacklevel=5,
        )

    def _jacobian_rows_vmap(self, names, x, spec):
        group = {n: self.theta[n] for n in names}
        rest = {n: t for n, t in self.theta.items() if n not in group}

        def f(g, xi):
            return self.single({**rest, **g}, xi, spec)

        return vmap(jacrev(f), in_dims=(None, 0))(group, x)

    def _jacobian_rows_loop(self, names, x, spec):
        """One sample at a time: a forward and one backward vmapped over the O' outputs (models
        whose forward vmap cannot batch, e.g. data-dependent branches on an attention mask, often
        have a backward it can), else one backward per output."""
        out: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        for i in range(x.shape[0]):
            with torch.enable_grad():
                leaves = {n: self.theta[n].clone().requires_grad_(True) for n in names}
                theta = {**self.theta, **leaves}
                y = self.reduced(theta, x[i : i + 1], spec)[0]
                batched = self.memo.get(("batched_backward", self.sig)) if self.sig is not None else None
                if batched is not False and y.shape[0] > 1:
                    try:
                        eye = torch.eye(y.shape[0], dtype=y.dtype, device=y.device)
                        g = torch.autograd.grad(y, list(leaves.values()), eye, retain_graph=True,
                                                allow_unused=True, is_grads_batched=True)
                        g = {n: gi if gi is not None else torch.zeros(y.shape[0], *leaves[n].shape, dtype=y.dtype,
                                                                     device=y.device) for n, gi in zip(names, g)}
                        # a batching rule of the backward can be as wrong as the forward's
                        if batched is None and rows_error(self, names, x[i : i + 1], spec,
                                                          {n: gi[None] for n, gi in g.items()}) > tolerance(self.dtype):
                            raise ValueError("the backward vmapped over the outputs disagrees with plain autograd")
                        for n in names:
                            out[n].append(g[n])
                        if batched is None and self.sig is not None:
                            self.memo.put(("batched_backward", self.sig), True)
                        continue
                    except torch.OutOfMemoryError:
                        raise
                    except Exception:  # noqa: BLE001 - the backward cannot be vmapped: per output below
                        if batched:
                            raise
                        if self.sig is not None:
                            self.memo.put(("batched_backward", self.sig), False)
                per_logit = []
                for a in range(y.shape[0]):
                    g = torch.autograd.grad(
                        y[a], list(leaves.values()), retain_graph=a + 1 < y.shape[0], allow_unused=True
                    )
                    per_logit.append(
                        [torch.zeros_like(leaves[n]) if gi is None else gi for n, gi in zip(names, g)]
                    )
            for k, n in enumerate(names):
                out[n].append(torch.stack([row[k] for row in per_logit]))
        return {n: torch.stack(v) for n, v in out.items()}


class _ActivationSizes:
    """Forward hooks on the leaf modules summing (and taking the max of) their output sizes."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.acts = self.peak = 0
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules() if not list(m.children())]

    def _hook(self, _m, _i, out) -> None:
        if isinstance(out, torch.Tensor):
            self.acts += out.numel()
            self.peak = max(self.peak, out.numel())

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def _key(fn: Any) -> Any:
    try:
        hash(fn)
        return fn
    except TypeError:
        return id(fn)


def _describe(x: Any) -> str:
    return f"a tensor {tuple(x.shape)}" if isinstance(x, torch.Tensor) else x.describe()


def _raised_in(e: BaseException, fn: Any) -> bool:
    code = getattr(fn, "__code__", None)
    tb = e.__traceback__
    while tb is not None and code is not None:
        if tb.tb_frame.f_code is code:
            return True
        tb = tb.tb_next
    return False
