"""What a model returns, and the tensor of it that the kernel differentiates.

Models return a tensor, a tuple, a mapping or a dataclass (transformers' `ModelOutput` is both a
mapping and a dataclass). `pick_output` chooses the tensor by a rule a user can predict: the
tensor itself, else `logits`, else the only tensor there is; anything else is an error that says
how to choose with `output_fn=`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any

import torch

__all__ = ["OutputError", "pick_output"]


class OutputError(ValueError):
    """The model's return value holds no single tensor to differentiate; pass output_fn=."""


def pick_output(out: Any) -> torch.Tensor:
    """The tensor to differentiate in a model's return value: the tensor itself; `.logits` (or
    the key "logits") of a `ModelOutput`, dataclass or mapping; else the one tensor it holds. Raises
    OutputError naming the choices and `output_fn=` otherwise."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        if isinstance(out.get("logits"), torch.Tensor):
            return out["logits"]
        items = [(repr(k), v) for k, v in out.items()]
        hint = "output_fn=lambda out: out[{}]"
    elif is_dataclass(out):
        if isinstance(getattr(out, "logits", None), torch.Tensor):
            return out.logits
        items = [(f.name, getattr(out, f.name, None)) for f in fields(out)]
        hint = "output_fn=lambda out: out.{}"
    elif isinstance(out, (tuple, list)):
        if isinstance(getattr(out, "logits", None), torch.Tensor):  # a namedtuple
            return out.logits
        items = [(str(i), v) for i, v in enumerate(out)]
        hint = "output_fn=lambda out: out[{}]"
    else:
        raise OutputError(f"the model returned {type(out).__name__}, not a tensor; pass output_fn= (a callable "
                          "that takes the model's return value and returns the tensor (N, *S) to differentiate)")
    tensors = [(k, v) for k, v in items if isinstance(v, torch.Tensor)]
    if len(tensors) == 1:
        return tensors[0][1]
    shown = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in tensors) or "none"
    first = tensors[0][0] if tensors else "..."
    raise OutputError(f"the model returned a {type(out).__name__} with {len(tensors)} tensors ({shown}) and no "
                      f"'logits'; say which one to differentiate, e.g. {hint.format(first)}")
