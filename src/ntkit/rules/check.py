"""`check_rule`: check a layer's rule against the float64 reference (`ntkit.reference`).

Ships with the library so that users can check the rules they register for their own layers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ntkit.reference import ntk_reference
from ntkit.rules.capture import Target, capture
from ntkit.rules.contract import KINDS, LinearTerm, build_terms, contract_direct, contract_grads
from ntkit.rules.registry import rule_for

# Outputs larger than this are projected on a few fixed random directions for the check.
MAX_OUTPUTS = 12


class _Head(nn.Module):
    """The layer with its output flattened to (n, O) (projected when large; tuples: first)."""

    def __init__(self, layer: nn.Module, proj: torch.Tensor | None, call) -> None:
        super().__init__()
        self.layer = layer
        self.call = call
        self.register_buffer("proj", proj)

    def forward(self, x):
        y = self.layer(x) if self.call is None else self.call(self.layer, x)
        if isinstance(y, tuple):
            y = y[0]
        y = y.reshape(y.shape[0], -1)
        return y if self.proj is None else y @ self.proj


@dataclass(frozen=True)
class RuleCheck:
    """Relative errors (max|Θ − Θ_ref| / max|Θ_ref|) per (output, mode) of a rule check."""

    layer: str
    errors: dict[tuple[str, str], float]
    tol: float

    @property
    def ok(self) -> bool:
        return all(e <= self.tol for e in self.errors.values())

    def __str__(self) -> str:
        worst = max(self.errors.values()) if self.errors else 0.0
        return f"rule check of {self.layer}: {'ok' if self.ok else 'FAILED'} (worst relative error {worst:.2e})"


def check_rule(module: nn.Module, example_input: torch.Tensor, *, call=None, tol: float = 1e-8,
               seed: int = 0) -> RuleCheck:
    """Check `module`'s registered rule against the float64 reference kernel; raise if it fails.

    The module (a single layer, e.g. your own with `@register_rule`) is copied to float64 and
    called on `example_input: (N, *input)` (converted to float64 when floating); its output is
    flattened to (N, O) (projected on 8 fixed random directions when O > 12). Every output mode
    and both contraction modes (direct, per-sample gradients) are compared with
    `ntkit.reference.ntk_reference`, with x2 = None and with a second batch. `call(layer, x)`
    says how to call a layer that takes more than one input (default `layer(x)`), e.g.
    `call=lambda m, x: m(x, x, x, need_weights=False)[0]` for self-attention.

    Returns a `RuleCheck` (errors per (output, mode)); raises AssertionError when an error
    exceeds `tol`, and ValueError when there is no rule or it misses trainable parameters.

    >>> import torch
    >>> from ntkit.rules import check_rule
    >>> check_rule(torch.nn.Conv1d(2, 3, 3, padding=1), torch.randn(4, 2, 7)).ok
    True
    """
    rule = rule_for(module)
    if rule is None:
        raise ValueError(f"no rule is registered for {type(module).__name__} (see ntkit.rules.register_rule)")
    layer = copy.deepcopy(module).double()
    x = example_input.double() if example_input.is_floating_point() else example_input
    reason = rule.supports(layer)
    if reason is not None:
        raise ValueError(f"the rule for {type(module).__name__} does not apply to this instance: {reason}")
    params = {n: p for n, p in layer.named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(rule.params))
    if missing:
        raise ValueError(f"the rule for {type(module).__name__} does not cover parameters {', '.join(missing)}")
    with torch.no_grad():
        y = layer(x) if call is None else call(layer, x)
    y = y[0] if isinstance(y, tuple) else y
    width = y[0].numel()
    g = torch.Generator().manual_seed(seed)
    proj = None if width <= MAX_OUTPUTS else torch.randn(width, 8, generator=g, dtype=torch.float64) / width**0.5
    head = _Head(layer, proj, call)
    target = Target("layer", layer, rule, {n: "layer." + n for n in params})
    names = ["layer." + n for n in params]
    n = x.shape[0]
    h = max(1, n // 2)
    halves = (x[:h], x[h:]) if n > 1 else (x, x)
    errors: dict[tuple[str, str], float] = {}
    caps = [capture(lambda xb=xb: head(xb), [target]).factors() for xb in (x, *halves)]
    refs = {"sym": ntk_reference(head, x), "rect": ntk_reference(head, halves[0], halves[1])}
    for setting, (f1, f2) in {"sym": (caps[0], caps[0]), "rect": (caps[1], caps[2])}.items():
        ref = refs[setting]
        n1 = next(iter(f1.values()))[0].n_samples
        n2 = next(iter(f2.values()))[0].n_samples
        for kind in KINDS:
            terms = build_terms(f1, names, kind, n1, n2, setting == "sym")
            modes = ["grads"] + (["direct"] if any(isinstance(t, LinearTerm) and t.groups == 1 for t in terms) else [])
            for mode in modes:
                k = torch.zeros(ref.shape if kind == "full" else ref.shape[:2] if kind == "trace" else ref.shape[:3],
                                dtype=torch.float64)
                acc = k.permute(0, 2, 1, 3) if kind == "full" else k if kind == "trace" else k.permute(2, 0, 1)
                for t in terms:
                    if mode == "direct" and isinstance(t, LinearTerm) and t.groups == 1:
                        contract_direct(t.prepare(f1), t.prepare(f2), kind, acc)
                    else:
                        for g1, g2 in zip(t.grads(f1, slice(None)), t.grads(f2, slice(None))):
                            contract_grads(g1, g2, kind, acc)
                want = ref if kind == "full" else ref.diagonal(dim1=2, dim2=3)
                if kind == "trace":
                    want = want.sum(-1)
                errors[(f"{kind}/{setting}", mode)] = float((k - want).abs().max() / want.abs().max().clamp_min(1e-300))
    report = RuleCheck(type(module).__name__, errors, tol)
    if not report.ok:
        bad = {k: f"{v:.2e}" for k, v in errors.items() if v > tol}
        raise AssertionError(f"{report}; errors above {tol:g}: {bad}")
    return report
