"""`nn.Embedding`: a Linear layer on one-hot inputs.

The weight (V, dim) gets g[a, n] = Σ_s e(tok_s) ⊗ d[a, n, s], so two calls contract as
Σ_{s,t} [tok1_s = tok2_t] (d1[s]·d2[t]) — a scatter, never the (V, dim) gradient unless that is
cheaper. Tokens equal to `padding_idx` get no gradient.
"""

from __future__ import annotations

from torch import nn

from ntkit.rules.factors import LinearFactor
from ntkit.rules.registry import Rule, register_rule


@register_rule(nn.Embedding)
class EmbeddingRule(Rule):
    params = ("weight",)

    def supports(self, module):
        if module.max_norm is not None:
            return "Embedding with max_norm (it renormalizes the weight in place)"
        if module.scale_grad_by_freq:
            return "Embedding with scale_grad_by_freq (its gradient depends on the batch)"
        return None

    def factors(self, module, tokens, cots, names):
        (d,) = cots  # (O', n, *lead, dim)
        o, n = d.shape[:2]
        idx = tokens.reshape(n, -1).long()
        if module.padding_idx is not None:
            idx = idx.masked_fill(idx == module.padding_idx, -1)
        d5 = d.reshape(o, n, idx.shape[1], 1, d.shape[-1])
        return {"weight": LinearFactor(d5, module.weight.shape, index=idx, in_features=module.num_embeddings,
                                       transposed=True)}
