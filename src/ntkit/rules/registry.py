"""The rule registry: how each layer type differentiates with respect to its own parameters.

A rule turns what one call of a layer saw — its input, and the cotangents of every differentiated
logit at its output — into *factors* (see `ntkit.rules.factors`) of the per-sample gradients of
the layer's parameters, without forming those gradients. The structured strategy contracts factors
of two batches into the kernel; layers without a rule fall back to Jacobian contraction, so the
registry is a speed-up, never a requirement.

Registering a rule for your own layer, and checking it against the float64 reference:

>>> import torch
>>> from torch import nn
>>> from ntkit.rules import GradFactor, Rule, check_rule, register_rule
>>> class Scale(nn.Module):                        # y = x * w, w: (features,)
...     def __init__(self, d):
...         super().__init__()
...         self.w = nn.Parameter(torch.ones(d))
...     def forward(self, x):
...         return x * self.w
>>> @register_rule(Scale)
... class ScaleRule(Rule):
...     params = ("w",)
...     def factors(self, module, x, cots, names):
...         (d,) = cots                             # x: (n, features), d: (O', n, features)
...         return {"w": GradFactor(d * x, module.w.shape)}   # per-sample gradients (O', n, P)
>>> check_rule(Scale(3), torch.randn(4, 3)).ok
True

Rules are looked up along the layer's class hierarchy, but only while the layer keeps the
registered class's `forward`: a subclass that overrides `forward` (a LoRA layer, a quantized
Linear) has no rule until one is registered for it.

Reference: Novak, Sohl-Dickstein & Schoenholz, "Fast Finite Width Neural Tangent Kernel",
ICML 2022, section 3.3 (structured derivatives); the registry follows Opacus' grad samplers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ntkit.rules.factors import Factor

Tap = Callable[[torch.Tensor], torch.Tensor]


class Rule:
    """How one layer type differentiates (subclass it and decorate with `register_rule`).

    A call of the layer is captured in two steps:

    1. During the forward, `save(module, args, kwargs, output)` keeps what the rule needs (by
       default the first positional input, detached) and the engine taps `output` for its
       cotangents. A rule that needs cotangents at intermediate tensors (attention's
       projections) sets `replaces_forward = True` and implements `forward(module, args,
       kwargs, tap)`, returning `(output, saved)` and calling `t = tap(t)` on each tensor whose
       cotangents it needs, in a fixed order.
    2. After one batched backward, `factors(module, saved, cots, names)` gets the cotangents
       `cots` (one per tapped tensor, `(O', n, *tensor.shape[1:])`, zero where the tensor does not
       reach the outputs) and returns `{local parameter name: Factor}` for `names`.

    `params` lists the local parameter names the rule knows (relative to the module, e.g.
    `"out_proj.weight"` for a parameter of a child). `supports(module)` returns None when the rule
    applies to this instance, else a short reason (e.g. "BatchNorm2d in training mode"), and the
    engine falls back to Jacobian contraction for that layer's parameters.
    """

    params: tuple[str, ...] = ("weight", "bias")
    replaces_forward: bool = False

    def supports(self, module: nn.Module) -> str | None:
        return None

    def save(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        return args[0].detach() if args else next(iter(kwargs.values())).detach()

    def forward(self, module: nn.Module, args: tuple, kwargs: dict, tap: Tap) -> tuple[Any, Any]:
        raise NotImplementedError

    def factors(
        self, module: nn.Module, saved: Any, cots: Sequence[torch.Tensor], names: Sequence[str]
    ) -> dict[str, Factor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return type(self).__name__


RULES: dict[type[nn.Module], Rule] = {}
_VERSION = [0]  # bumped by every registration, so that cached analyses (ntkit.engine.cache) expire


def registry_version() -> tuple[int, int]:
    """Changes whenever a rule is registered (or one is deleted from RULES)."""
    return _VERSION[0], len(RULES)


def register_rule(*layer_types: type[nn.Module]) -> Callable[[type[Rule]], type[Rule]]:
    """Class decorator: `@register_rule(nn.Linear)` registers an instance of the rule for each
    layer type (replacing an earlier rule for the same type)."""
    if not layer_types or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in layer_types):
        raise TypeError("register_rule takes one or more torch.nn.Module subclasses")

    def deco(cls: type[Rule]) -> type[Rule]:
        if not (isinstance(cls, type) and issubclass(cls, Rule)):
            raise TypeError(f"@register_rule decorates a subclass of ntkit.rules.Rule, got {cls!r}")
        for t in layer_types:
            RULES[t] = cls()
        _VERSION[0] += 1
        return cls

    return deco


def rule_for(module: nn.Module) -> Rule | None:
    """The rule registered for `module`'s class or a base class whose `forward` it keeps."""
    cls = type(module)
    for base in cls.__mro__:
        rule = RULES.get(base)
        if rule is not None:
            return rule if cls.forward is base.forward else None
    return None
