"""Structured-derivative rules per layer type, their registry and `check_rule`.

`method="structured"` (see `ntkit.engine.structured`) contracts, layer by layer, what each layer
saw (its inputs) with the cotangents of every differentiated output at its outputs, following the
rule registered for the layer's type:

| layer | parameters | factor |
|---|---|---|
| `nn.Linear` (any leading dims) | weight, bias | Linear |
| `nn.Conv1d/2d/3d` (stride, padding incl. strings and modes, dilation, groups) | weight, bias | Linear over patches |
| `nn.ConvTranspose1d/2d/3d` (padding_mode zeros) | weight, bias | Linear over unfolded cotangents |
| `nn.LayerNorm`, `nn.GroupNorm`, `nn.RMSNorm`, `nn.BatchNorm1d/2d/3d` (eval) | weight, bias | per-sample gradients |
| `nn.Embedding` (no max_norm / scale_grad_by_freq) | weight | one-hot Linear (scatter) |
| `nn.MultiheadAttention` (no add_bias_kv) | in/q/k/v projections, out_proj | Linear |

Layers without a rule (or whose parameters are also used elsewhere) fall back to Jacobian
contraction for just their parameters, with one warning. Register rules for your own layers with
`@register_rule(MyLayer)` and check them with `check_rule(layer, example_input)`.
"""

from ntkit.rules import attention, conv, embedding, linear, norm  # noqa: F401 - they register rules
from ntkit.rules.check import RuleCheck, check_rule
from ntkit.rules.factors import Factor, GradFactor, Lazy, LinearFactor
from ntkit.rules.registry import RULES, Rule, register_rule, rule_for

__all__ = ["RULES", "Factor", "GradFactor", "Lazy", "LinearFactor", "Rule", "RuleCheck", "check_rule",
           "register_rule", "rule_for"]
