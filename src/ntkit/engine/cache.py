"""What planning learns about a model, kept between calls on the same model and shapes.

Planning a kernel runs the model a few extra times: a probe forward that validates the inputs
and finds O, a one-sample profile (forward FLOPs, activation size) for the cost model and the
memory plan, the structured-derivative analysis (which layers the rules cover, a gradient check,
the contraction mode of each term), and one-sample probes of vmap and forward-mode AD. None of it
depends on the parameter *values*, which every call reads afresh, only on the model's structure,
so `ntk_fn`, repeated `ntk` calls and the tiles of `ntkit.compute` plan once per shape.

Entries live per model in a `weakref.WeakKeyDictionary` (a cached model is never kept alive; no
entry holds a strong reference to the model or its modules: layers are remembered by name), and
are keyed by a structural fingerprint of the model plus the call's own key (parameter selection,
device, dtype, input shape, output, N1, N2...). The fingerprint covers, for every module under
every name: its identity and class, a `forward` assigned on the instance, its scalar attributes
(`training`, stride, padding, eps, flags of custom layers...), its hooks, and the identity,
shape, dtype, device and `requires_grad` of its parameters and buffers, plus the rule registry's
version. Changing any of them (`model.train()`, replacing or re-registering a parameter or a
layer, freezing a parameter, registering a rule) starts a fresh cache for that model; changing
parameter values (an optimizer step, `load_state_dict`) does not.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as _module

from ntkit._runtime import scratch
from ntkit.rules.registry import registry_version

# Entries per model structure (several shapes, outputs and selections); least recently used go.
MAX_ENTRIES = 64
_SCALARS = (bool, int, float, str, type(None), torch.dtype, torch.device)

_MODELS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, OrderedDict]] = weakref.WeakKeyDictionary()
_MISSING = object()
_LOCK = threading.Lock()  # tiles may plan from several threads at once


def _scalar(v: Any) -> bool:
    if isinstance(v, _SCALARS):
        return True
    return isinstance(v, tuple) and all(isinstance(e, _SCALARS) for e in v)


def fingerprint(model: nn.Module) -> tuple:
    """A hashable summary of `model`'s structure (see the module docstring); no strong
    references to the model, its modules or its tensors."""
    parts: list[Hashable] = [registry_version(), tuple(_module._global_forward_hooks),
                             tuple(_module._global_forward_pre_hooks)]
    for name, m in model.named_modules(remove_duplicate=False):
        d = m.__dict__
        fwd = d.get("forward")
        parts.append((name, id(m), type(m), None if fwd is None else id(fwd),
                      tuple((k, v) for k, v in d.items() if _scalar(v)),
                      tuple(m._forward_hooks), tuple(m._forward_pre_hooks)))
        for k, p in m._parameters.items():
            parts.append(k if p is None else (k, id(p), tuple(p.shape), p.dtype, p.device, p.requires_grad))
        for k, b in m._buffers.items():
            parts.append(k if b is None else (k, id(b), tuple(b.shape), b.dtype, b.device))
    return tuple(parts)


class Memo:
    """The cache of one model structure seen through one call's base key (`get`/`put`)."""

    def __init__(self, entries: OrderedDict, base: Hashable) -> None:
        self._entries = entries
        self._base = base

    def get(self, key: Hashable, default: Any = None) -> Any:
        k = (self._base, key)
        with _LOCK:
            value = self._entries.get(k, _MISSING)
            if value is _MISSING:
                return default
            self._entries.move_to_end(k)
        return value

    def put(self, key: Hashable, value: Any) -> None:
        with _LOCK:
            self._entries[(self._base, key)] = value
            self._entries.move_to_end((self._base, key))
            while len(self._entries) > MAX_ENTRIES:
                self._entries.popitem(last=False)


def memo_for(model: nn.Module, base: Hashable) -> Memo:
    """The cache of `model`'s current structure, seen through `base` (e.g. the parameter
    selection, device and dtype). A model that cannot be weakly referenced gets a cache that
    lives as long as the returned Memo (one call)."""
    fp = fingerprint(model)
    try:
        with _LOCK:
            held = _MODELS.get(model)
            if held is None or held[0] != fp:
                held = (fp, OrderedDict())
                _MODELS[model] = held
    except TypeError:  # not weakly referenceable / not hashable: a cache for this call only
        return Memo(OrderedDict(), base)
    return Memo(held[1], base)


def clear(model: nn.Module | None = None) -> None:
    """Forget what planning learned about `model` (all models when None, which also frees the
    scratch buffers kept between calls, `ntkit._runtime.scratch`)."""
    with _LOCK:
        if model is None:
            _MODELS.clear()
            scratch.release()
        else:
            _MODELS.pop(model, None)
