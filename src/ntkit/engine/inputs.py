"""Model inputs as researchers write them: a tensor, a tuple of tensors, or a mapping of tensors.

`ntkit.ntk(model, x)` calls `model(x)`; `ntkit.ntk(model, (a, b))` calls `model(a, b)`;
`ntkit.ntk(model, {"input_ids": ids, "attention_mask": mask})` calls
`model(input_ids=ids, attention_mask=mask)`. Every tensor is batched along dim 0 with the same N,
so a per-sample attention mask travels with its sample through blocks, tiles and the store.
Values that are not tensors (a flag such as `return_dict=False`) are passed unchanged to every
call. Inputs are never differentiated (only parameters are), so integer ids and masks are fine.

A tuple or mapping becomes a `Batch`, which the engine slices like a tensor (`b[s]`, `b.shape[0]`,
`len(b)`, `b.to(device)`); a lone tensor stays a tensor, so the common case pays nothing. `Batch`
is a torch pytree node whose leaves are its tensors, so `torch.func.vmap` maps over all of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from ntkit._runtime.digest import tensor_bytes

__all__ = ["Batch", "Inputs", "as_inputs", "input_signature", "iter_leaves", "fingerprint_update"]

Inputs = torch.Tensor | tuple | Mapping  # what users pass as x1 / x2


class Batch:
    """A batch of N samples of model inputs: positional values `args` and keyword values `kwargs`.

    Tensors are batched along dim 0 (all with the same N); other values are constants passed
    unchanged. `shape` is `(N,)`: only the batch axis (per-tensor shapes are in `leaves()`).
    """

    __slots__ = ("args", "kwargs", "n", "consts")

    def __init__(self, args: tuple = (), kwargs: Mapping[str, Any] | None = None, n: int | None = None,
                 consts: frozenset[str] | None = None) -> None:
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        # Which values are constants is fixed when the batch is made (not re-read from types), so
        # the pytree structure survives placeholders standing in for the tensors.
        if consts is None:
            consts = frozenset([str(i) for i, a in enumerate(self.args) if not isinstance(a, torch.Tensor)]
                               + [k for k, v in self.kwargs.items() if not isinstance(v, torch.Tensor)])
        self.consts = consts
        if n is None:
            sizes = {int(t.shape[0]) for _, t in self.leaves() if isinstance(t, torch.Tensor) and t.ndim}
            n = sizes.pop() if len(sizes) == 1 else -1
        self.n = n

    # -- structure ------------------------------------------------------------------------------
    def leaves(self) -> list[tuple[str, torch.Tensor]]:
        """(name, tensor) for every tensor: positional ones named by their index ("0", "1", ...)."""
        out = [(str(i), a) for i, a in enumerate(self.args) if str(i) not in self.consts]
        out += [(k, v) for k, v in self.kwargs.items() if k not in self.consts]
        return out

    def _map(self, fn) -> Batch:
        args = tuple(a if str(i) in self.consts else fn(a) for i, a in enumerate(self.args))
        kwargs = {k: v if k in self.consts else fn(v) for k, v in self.kwargs.items()}
        return Batch(args, kwargs, consts=self.consts)

    def describe(self) -> str:
        """e.g. `{input_ids: (8, 16) int64, attention_mask: (8, 16) int64}`."""
        parts = [f"{k}: {tuple(t.shape)} {str(t.dtype).replace('torch.', '')}" for k, t in self.leaves()]
        parts += [f"{k}={v!r}" for k, v in self.constants()]
        return ("{" if self.kwargs else "(") + ", ".join(parts) + ("}" if self.kwargs else ")")

    def constants(self) -> list[tuple[str, Any]]:
        """(name, value) for the values that are not tensors."""
        out = [(str(i), a) for i, a in enumerate(self.args) if str(i) in self.consts]
        return out + [(k, v) for k, v in self.kwargs.items() if k in self.consts]

    # -- the tensor-like surface the engine uses -------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return torch.Size([self.n])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: Any) -> Batch:
        return self._map(lambda t: t[index])

    def unsqueeze(self, dim: int) -> Batch:
        return self._map(lambda t: t.unsqueeze(dim))

    def to(self, target: Any, non_blocking: bool = False) -> Batch:
        """Tensors moved to a device, or floating tensors converted to a dtype (ids stay integers)."""
        if isinstance(target, torch.dtype):
            return self._map(lambda t: t.to(target) if t.is_floating_point() else t)
        return self._map(lambda t: t.to(target, non_blocking=non_blocking))

    def contiguous(self) -> Batch:
        return self._map(lambda t: t.contiguous())

    def detach(self) -> Batch:
        return self._map(lambda t: t.detach())

    def cpu(self) -> Batch:
        return self._map(lambda t: t.cpu())

    def pin_memory(self) -> Batch:
        return self._map(lambda t: t.pin_memory())

    def is_floating_point(self) -> bool:
        """True when some tensor is floating (the ones a dtype conversion changes)."""
        return any(t.is_floating_point() for _, t in self.leaves())

    @property
    def device(self) -> torch.device:
        leaves = self.leaves()
        return leaves[0][1].device if leaves else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the first floating tensor (else of the first tensor)."""
        leaves = [t for _, t in self.leaves()]
        floats = [t for t in leaves if t.is_floating_point()]
        return (floats or leaves)[0].dtype if leaves else torch.get_default_dtype()

    def call(self, fn, *prefix: Any) -> Any:
        """fn(*prefix, *args, **kwargs)."""
        return fn(*prefix, *self.args, **self.kwargs)

    def __repr__(self) -> str:
        return f"Batch(n={self.n}, {self.describe()})"


def _flatten(b: Batch):
    tensors = [t for _, t in b.leaves()]
    skeleton = (tuple(("const", a) if str(i) in b.consts else None for i, a in enumerate(b.args)),
                tuple((k, ("const", v) if k in b.consts else None) for k, v in b.kwargs.items()))
    return tensors, skeleton


def _unflatten(tensors, skeleton) -> Batch:
    it = iter(tensors)
    args = tuple(next(it) if s is None else s[1] for s in skeleton[0])
    kwargs = {k: next(it) if s is None else s[1] for k, s in skeleton[1]}
    consts = frozenset([str(i) for i, s in enumerate(skeleton[0]) if s is not None]
                       + [k for k, s in skeleton[1] if s is not None])
    sizes = {int(t.shape[0]) for t in tensors if isinstance(t, torch.Tensor) and t.ndim}
    # Inside vmap a mapped batch's axis is hidden (its leaves are per-sample): N is then whatever
    # dim 0 shows, which only `unsqueeze(0)` (FunctionalModel.single) follows, fixing it to 1.
    return Batch(args, kwargs, n=sizes.pop() if len(sizes) == 1 else -1, consts=consts)


pytree.register_pytree_node(Batch, _flatten, _unflatten)


def as_inputs(x: Any, name: str, device: torch.device | None = None) -> Any:
    """`x` as the engine's inputs: a tensor (numpy arrays converted), or a `Batch` for a tuple or
    mapping of tensors/arrays. Raises TypeError/ValueError naming `name` and the fix."""
    if x is None:
        return None
    if isinstance(x, Batch):
        b = x
    elif isinstance(x, torch.Tensor):
        return x.to(device) if device is not None else x
    elif isinstance(x, np.ndarray):
        t = torch.from_numpy(x)
        return t.to(device) if device is not None else t
    elif isinstance(x, (tuple, list)) and not _is_namedtuple(x):
        if not x:
            raise ValueError(f"{name} is an empty {type(x).__name__}; pass a tensor (N, *input), a tuple "
                             "of tensors (positional arguments) or a mapping of tensors (keyword arguments)")
        if not any(isinstance(v, (torch.Tensor, np.ndarray)) for v in x):
            inner = type(x[0]).__name__
            raise TypeError(f"{name} must be a torch.Tensor of shape (N, *input), a tuple of tensors (positional "
                            f"arguments) or a mapping of tensors (keyword arguments), got a {type(x).__name__} of "
                            f"{inner}; convert it with torch.tensor(...)")
        b = Batch(tuple(_leaf(v, f"{name}[{i}]") for i, v in enumerate(x)))
    elif isinstance(x, Mapping):
        if not x:
            raise ValueError(f"{name} is an empty mapping; pass the model's keyword arguments as tensors")
        bad = [k for k in x if not isinstance(k, str)]
        if bad:
            raise TypeError(f"{name} has non-string key {bad[0]!r}; a mapping of inputs is passed as keyword "
                            "arguments, so its keys must be the forward's parameter names")
        b = Batch((), {k: _leaf(v, f"{name}[{k!r}]") for k, v in x.items()})
    else:
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, *input), a tuple of tensors (positional "
                        f"arguments) or a mapping of tensors (keyword arguments), got {type(x).__name__}")
    leaves = b.leaves()
    if not leaves:
        raise ValueError(f"{name} holds no tensor ({b.describe()}): at least one input must be a batch "
                         "(N, ...) of tensors")
    for k, t in leaves:
        if t.ndim == 0:
            raise ValueError(f"{name} input {k!r} is a scalar tensor; every tensor input is a batch (N, ...). "
                             "Pass a constant as a Python value, or expand it to (N,)")
    sizes = {k: int(t.shape[0]) for k, t in leaves}
    if len(set(sizes.values())) > 1:
        shown = ", ".join(f"{k}: {n}" for k, n in sizes.items())
        raise ValueError(f"{name}'s tensors have different batch sizes along dim 0 ({shown}); every tensor "
                         "input must hold the same N samples")
    return b.to(device) if device is not None else b


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(x, "_fields")


def _leaf(v: Any, where: str) -> Any:
    if isinstance(v, np.ndarray):
        return torch.from_numpy(v)
    if isinstance(v, (torch.Tensor, bool, int, float, str, type(None))):
        return v
    if isinstance(v, (tuple, list, Mapping)):
        raise TypeError(f"{where} is a nested {type(v).__name__}; inputs are one level deep: a tuple or a "
                        "mapping of tensors. Wrap the model so that its forward takes flat arguments")
    return v  # another constant (an enum, a config object) is passed through as is


def iter_leaves(x: Any) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of a tensor ("x") or a Batch's tensors."""
    return [("x", x)] if isinstance(x, torch.Tensor) else x.leaves()


def input_signature(x: Any) -> tuple:
    """What an input batch's structure is, without N: per tensor its name, shape[1:] and dtype, and
    the constants' reprs. Two batches with equal signatures run through the same code."""
    if isinstance(x, torch.Tensor):
        return (tuple(x.shape[1:]), x.dtype)
    return (tuple((k, tuple(t.shape[1:]), t.dtype) for k, t in x.leaves()),
            tuple((k, repr(v)) for k, v in x.constants()), len(x.args))


def fingerprint_update(h: "hashlib._Hash", x: Any, first: bool, n: int) -> None:
    """Feed an input slice to a sha256: on the first slice its structure (names, dtypes, shapes,
    constants, N), then every tensor's bytes. A plain tensor hashes exactly as before dict inputs
    existed, so stores written then keep their identity."""
    if isinstance(x, torch.Tensor):
        x = x.contiguous().cpu()
        if first:
            h.update(f"{x.dtype}{tuple(x.shape[1:])}{n}".encode())
        h.update(tensor_bytes(x))
        return
    x = x.contiguous().cpu()
    if first:
        h.update(f"batch{len(x.args)}{n}".encode())
        for k, t in x.leaves():
            h.update(f"|{k}:{t.dtype}{tuple(t.shape[1:])}".encode())
        for k, v in x.constants():
            h.update(f"|{k}={v!r}".encode())
    for _, t in x.leaves():
        h.update(tensor_bytes(t))
