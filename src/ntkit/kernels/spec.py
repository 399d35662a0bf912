"""Kernel specs: the strings the CLI and the solvers take, and the JSON a saved solver keeps."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ntkit.kernels.base import Kernel
from ntkit.kernels.empirical import EmpiricalNTK
from ntkit.kernels.ntk_relu import NtkRelu
from ntkit.kernels.precomputed import Precomputed
from ntkit.kernels.radial import Gaussian, Laplacian

__all__ = ["KERNEL_GRAMMAR", "KernelSpecError", "parse_kernel", "kernel_from_config", "kernel_config"]

KERNEL_GRAMMAR = """\
kernel specs:
  laplacian[:bandwidth=B]          exp(-|x-z|/B)           (default B = 10)
  gaussian[:bandwidth=B]           exp(-|x-z|^2/(2 B^2))   (default B = 10)
  ntk-relu[:depth=D,bias=B]        infinite-width ReLU MLP NTK, D hidden layers (default 2, 0.0)
  ntk:MODEL[@OPTIONS]              empirical NTK of a model spec, e.g. ntk:cnn, ntk:mlp:depth=3,width=512@pntk;
                                   OPTIONS: an output (trace | pntk | logit:K) or output=,method=,seed=
  npy:PATH.npy                     a precomputed kernel matrix (inputs are row/column indices)
  store:PATH                       a kernel store from `ntkit compute --store` (inputs are indices)"""

_NAMES = ("laplacian", "gaussian", "ntk-relu", "ntk", "npy", "store")
_ALIASES = {"lap": "laplacian", "gauss": "gaussian", "rbf": "gaussian", "ntkrelu": "ntk-relu", "relu-ntk": "ntk-relu", "ntk_relu": "ntk-relu",
            "entk": "ntk", "precomputed": "npy"}


class KernelSpecError(ValueError):
    """A kernel spec that cannot be parsed; the message shows the grammar."""

    @property
    def reason(self) -> str:
        """The problem alone, without the grammar (the command line prints one line)."""
        return str(self).split(f"\n{KERNEL_GRAMMAR}")[0]


def _fail(spec: str, why: str) -> KernelSpecError:
    return KernelSpecError(f"bad kernel spec {spec!r}: {why}\n{KERNEL_GRAMMAR}")


def _options(spec: str, text: str, allowed: Mapping[str, type]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise _fail(spec, f"option {part!r} must be key=value")
        key, value = (s.strip() for s in part.split("=", 1))
        if key not in allowed:
            near = difflib.get_close_matches(key, list(allowed), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise _fail(spec, f"unknown option {key!r}{hint}; valid: {', '.join(allowed)}")
        try:
            out[key] = allowed[key](value)
        except ValueError:
            raise _fail(spec, f"{key}={value!r} is not a valid {allowed[key].__name__}") from None
    return out


def parse_kernel(spec: str, *, input_shape: tuple[int, ...] | None = None, num_classes: int | None = None,
                 seed: int | None = None, dtype: Any = None) -> Kernel:
    """A kernel from its spec (see `KERNEL_GRAMMAR`).

    `ntk:MODEL` builds `build_model(MODEL, input_shape, num_classes, seed=seed)`, so it needs the
    data's `input_shape` and `num_classes` (the solvers pass them at fit time); a seed in the
    spec wins over `seed`. `dtype` converts that model (e.g. torch.float64).

    >>> parse_kernel("laplacian:bandwidth=5")
    Laplacian(laplacian:bandwidth=5.0)
    """
    if not isinstance(spec, str):
        raise TypeError(f"a kernel spec is a string, got {type(spec).__name__}")
    text = spec.strip()
    name, _, rest = text.partition(":")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _NAMES:
        near = difflib.get_close_matches(key, list(_NAMES) + list(_ALIASES), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise _fail(spec, f"unknown kernel {name!r}{hint}")
    if key in ("laplacian", "gaussian"):
        opts = _options(spec, rest, {"bandwidth": float, "bw": float})
        bw = opts.get("bandwidth", opts.get("bw", 10.0))
        try:
            return (Laplacian if key == "laplacian" else Gaussian)(bw)
        except ValueError as e:
            raise _fail(spec, str(e)) from None
    if key == "ntk-relu":
        opts = _options(spec, rest, {"depth": int, "bias": float})
        try:
            return NtkRelu(**opts)
        except ValueError as e:
            raise _fail(spec, str(e)) from None
    if key in ("npy", "store"):
        if not rest:
            raise _fail(spec, f"{key}: needs a path, e.g. {key}:K.npy")
        if key == "npy" and not rest.endswith(".npy"):
            raise _fail(spec, "npy:PATH must name a .npy file")
        return Precomputed.from_path(rest)
    # ntk:MODEL[@OPTIONS]
    model, _, options = rest.rpartition("@") if "@" in rest else (rest, "", "")
    if not model:
        raise _fail(spec, "ntk: needs a model spec, e.g. ntk:cnn or ntk:mlp:depth=3,width=512")
    kw: dict[str, Any] = {}
    if options:
        if "=" in options:
            kw = _options(spec, options, {"output": str, "method": str, "seed": int})
        else:
            kw = {"output": options}
    if input_shape is None or num_classes is None:
        raise _fail(spec, "ntk:MODEL builds the model for the data, so it needs input_shape= and num_classes= "
                          "(solvers and `ntkit fit` pass them; in Python you can also use "
                          "EmpiricalNTK.from_spec or EmpiricalNTK(model))")
    s = kw.pop("seed", seed if seed is not None else 0)
    return EmpiricalNTK.from_spec(model, tuple(input_shape), int(num_classes), seed=s, dtype=dtype, **kw)


def kernel_config(kernel: Kernel) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(JSON config, arrays) that rebuild `kernel` with `kernel_from_config`; TypeError if it can't be."""
    if isinstance(kernel, EmpiricalNTK):
        return kernel.to_config(), kernel.state_arrays()
    return kernel.to_config(), {}


def kernel_from_config(config: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None, *,
                       trust_code: Any = False, source: str = "a saved kernel config") -> Kernel:
    """The inverse of `kernel_config`.

    The config comes from a file (a saved model), so the model spec inside it runs no code: a
    `file:` spec (or torchvision pretrained weights) raises `ntkit.models.UntrustedModelError`
    before anything is imported, unless `trust_code` names it (True, or the `.py` files / specs
    trusted; see `ntkit.models.trust`). `source` names the file in that error.
    """
    from ntkit.models.trust import untrusted_source

    with untrusted_source(source, trust_code):
        return _kernel_from_config(config, arrays)


def _kernel_from_config(config: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None) -> Kernel:
    if config.get("type") == "ntk":
        import torch

        # Read from a file: checked before a model is built from it. A readout has at least one
        # saved number per class, so more classes than saved numbers is a corrupt (or hostile)
        # file, not a request for 10**9 logits.
        n_saved = sum(int(np.asarray(a).size) for a in (arrays or {}).values())
        if arrays and not 1 <= int(config["num_classes"]) <= n_saved:
            raise ValueError(f"the saved eNTK kernel says num_classes={config['num_classes']} but its model's "
                             f"saved state holds {n_saved} numbers: the file is corrupt; save the model again")
        if config.get("dtype") not in (None, "float16", "bfloat16", "float32", "float64"):
            raise ValueError(f"the saved eNTK kernel has dtype {config.get('dtype')!r}, not a floating dtype: "
                             "the file is corrupt; save the model again")

        k = EmpiricalNTK.from_spec(config["model"], tuple(config["input_shape"]), int(config["num_classes"]),
                                   seed=int(config["seed"] or 0), output=config["output"],
                                   method=config["method"], dtype=config.get("dtype"))
        if arrays:
            state = {name: torch.from_numpy(np.array(a)) for name, a in arrays.items()}
            k.model.load_state_dict(state)
        return k
    if "spec" not in config:
        raise ValueError(f"unrecognized kernel config {dict(config)!r}")
    spec = str(config["spec"])
    kind, _, where = spec.partition(":")
    if kind in ("npy", "store") and not os.path.exists(where) and os.path.exists(str(config.get("abspath", ""))):
        spec = f"{kind}:{config['abspath']}"  # a relative path typed in another folder
    return parse_kernel(spec)
