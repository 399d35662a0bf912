"""`nn.MultiheadAttention`: its input projections and output projection as Linear factors.

The rule replaces the layer's forward for the capture: it applies the q/k/v projections itself
(tapping their outputs), runs PyTorch's own attention (`F.multi_head_attention_forward` with
identity projections, so masks, `is_causal`, `add_zero_attn` and attention weights behave exactly
as in the layer) and applies `out_proj` itself (tapping its input and output). The packed
`in_proj_weight` (3E, E) is three Linear maps, one per group G = q, k, v; query and key/value
sequences of different lengths are zero-padded to one length S (exact: padded positions carry
zero inputs and zero cotangents). `bias_k`/`bias_v` (add_bias_kv) are not covered.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from ntkit.rules.factors import LinearFactor
from ntkit.rules.linear import linear_factors
from ntkit.rules.registry import Rule, register_rule

_SIG = inspect.signature(nn.MultiheadAttention.forward)


def _pad_to(t: torch.Tensor, s: int, dim: int) -> torch.Tensor:
    if t.shape[dim] == s:
        return t
    pad = [0, 0] * (t.ndim - 1 - dim) + [0, s - t.shape[dim]]
    return F.pad(t, pad)


@register_rule(nn.MultiheadAttention)
class MultiheadAttentionRule(Rule):
    params = ("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight",
              "out_proj.weight", "out_proj.bias")
    replaces_forward = True

    def supports(self, module):
        if module.bias_k is not None or module.bias_v is not None:
            return "MultiheadAttention with add_bias_kv"
        if type(module.out_proj).forward is not nn.Linear.forward:
            return "MultiheadAttention with a custom out_proj"
        return None

    def forward(self, m, args, kwargs, tap):
        b = _SIG.bind(m, *args, **kwargs)
        b.apply_defaults()
        a = b.arguments
        query, key, value = a["query"], a["key"], a["value"]
        if query.dim() != 3:
            raise ValueError("MultiheadAttention got unbatched inputs; the rule needs (N, L, E) or (L, N, E)")
        kpm = F._canonical_mask(mask=a["key_padding_mask"], mask_name="key_padding_mask",
                                other_type=F._none_or_dtype(a["attn_mask"]), other_name="attn_mask",
                                target_type=query.dtype)
        attn_mask = F._canonical_mask(mask=a["attn_mask"], mask_name="attn_mask", other_type=None,
                                      other_name="", target_type=query.dtype, check_other=False)
        if m.batch_first:
            query, key, value = (t.transpose(1, 0) for t in (query, key, value))
        e = m.embed_dim
        if m._qkv_same_embed_dim:
            wq, wk, wv = m.in_proj_weight.chunk(3)
        else:
            wq, wk, wv = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
        bq = bk = bv = None
        if m.in_proj_bias is not None:
            bq, bk, bv = m.in_proj_bias.chunk(3)
        qp = tap(F.linear(query, wq, bq))  # (L, N, E)
        kp = tap(F.linear(key, wk, bk))
        vp = tap(F.linear(value, wv, bv))
        eye = torch.eye(e, dtype=qp.dtype, device=qp.device)
        attn, weights = F.multi_head_attention_forward(
            qp, kp, vp, e, m.num_heads, None, None, None, None, m.add_zero_attn, m.dropout, eye, None,
            training=m.training, key_padding_mask=kpm, need_weights=a["need_weights"], attn_mask=attn_mask,
            use_separate_proj_weight=True, q_proj_weight=eye, k_proj_weight=eye, v_proj_weight=eye,
            average_attn_weights=a["average_attn_weights"], is_causal=a["is_causal"],
        )
        out = tap(F.linear(attn, m.out_proj.weight, m.out_proj.bias))
        saved = tuple(t.detach().transpose(0, 1) for t in (query, key, value, attn))  # (N, L, ·)
        if m.batch_first:
            out = out.transpose(1, 0)
        return (out, weights), saved

    def factors(self, m, saved, cots, names):
        q, k, v, attn = saved  # (n, L, ·)
        dq, dk, dv, dout = (c.transpose(1, 2) for c in cots)  # (O', n, L, ·)
        res = {}
        out_bias = None if m.out_proj.bias is None else m.out_proj.bias.shape
        res.update(linear_factors(attn, dout, m.out_proj.weight.shape, out_bias, names,
                                  "out_proj.weight", "out_proj.bias"))
        if not m._qkv_same_embed_dim:
            for name, x, d in (("q_proj_weight", q, dq), ("k_proj_weight", k, dk), ("v_proj_weight", v, dv)):
                if name in names:
                    res.update(linear_factors(x, d, getattr(m, name).shape, None, [name], name))
        s = max(q.shape[1], k.shape[1])
        packed = [n_ for n_ in ("in_proj_weight", "in_proj_bias") if n_ in names and getattr(m, n_) is not None]
        if packed:
            d = torch.stack([_pad_to(t, s, 2) for t in (dq, dk, dv)], 3)  # (O', n, S, 3, E)
            if "in_proj_weight" in packed:
                x = torch.stack([_pad_to(t, s, 1) for t in (q, k, v)], 2)  # (n, S, 3, E)
                res["in_proj_weight"] = LinearFactor(d, m.in_proj_weight.shape, x=x)
            if "in_proj_bias" in packed:
                res["in_proj_bias"] = LinearFactor(d, m.in_proj_bias.shape)
        return res
