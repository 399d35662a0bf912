"""Convolutions `nn.Conv1d/2d/3d` and `nn.ConvTranspose1d/2d/3d` as `LinearFactor`s over patches.

Conv: unfolding the (padded) input into patches (im2col) makes a convolution a Linear layer shared
over the S output positions, per group: x (n, S, G, C_in/G · K), d (O', n, S, G, C_out/G), the
weight viewed as (G, C_out/G, C_in/G · K) — exactly its memory order. Patches are unfolded lazily,
a few samples at a time. Stride, dilation, groups (depthwise included), numeric and string padding
and every `padding_mode` (non-zero modes pad first, as PyTorch does) are handled.

Transposed conv: the roles swap. Weight (C_in, C_out/G, *k): g[ci, co, k] = Σ_p x[ci, p]
d[co, p·stride + k·dilation − padding], so the *cotangents* are unfolded (over the input
positions p) and the weight is `transposed` (G, in, out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ntkit._runtime import scratch
from ntkit.rules.factors import Lazy, LinearFactor
from ntkit.rules.registry import Rule, register_rule


def unfold(x: torch.Tensor, kernel, stride, dilation, pad: list[int], mode: str, groups: int, positions: int | None = None):
    """Patches of x: (n, C, *L) as (n, G, C/G · K, S), K = prod(kernel), in (c, k...) order.

    pad: F.pad-style list (last dim first); mode: a padding_mode ("zeros" is constant 0).
    positions: keep the first `positions` windows per dim (None: all).
    """
    nd = len(kernel)
    n, c = x.shape[:2]
    if any(pad):
        x = F.pad(x, pad, mode="constant" if mode == "zeros" else mode)
    if nd <= 2 and positions is None:
        x2 = x if nd == 2 else x.unsqueeze(2)
        k = tuple(kernel) if nd == 2 else (1, kernel[0])
        st = tuple(stride) if nd == 2 else (1, stride[0])
        dl = tuple(dilation) if nd == 2 else (1, dilation[0])
        cols = F.unfold(x2, k, dilation=dl, stride=st)  # (n, C·K, S)
        return cols.view(n, groups, (c // groups) * math.prod(kernel), cols.shape[-1])
    for i in range(nd):
        span = dilation[i] * (kernel[i] - 1) + 1
        x = x.unfold(2 + i, span, stride[i])
        if dilation[i] > 1:
            x = x[..., :: dilation[i]]
        if positions is not None:
            x = x.narrow(2 + i, 0, positions[i])
    spatial = x.shape[2 : 2 + nd]
    x = x.reshape(n, groups, c // groups, *spatial, *kernel)
    perm = [0, 1, 2] + list(range(3 + nd, 3 + 2 * nd)) + list(range(3, 3 + nd))
    return x.permute(perm).reshape(n, groups, (c // groups) * math.prod(kernel), math.prod(spatial))


def _conv_pad(module) -> list[int]:
    return list(module._reversed_padding_repeated_twice)


def positions_last(d: torch.Tensor, groups: int) -> torch.Tensor:
    """Cotangents (O', n, C, *L) as (O', n, S, G, C/G), a view for both memory formats."""
    o, n, c = d.shape[:3]
    s = math.prod(d.shape[3:])
    try:
        return d.movedim(2, -1).view(o, n, s, groups, c // groups)  # channels-last memory
    except RuntimeError:
        return d.reshape(o, n, groups, c // groups, s).permute(0, 1, 4, 2, 3)


# Below this many inputs per output channel (C_in·K: a first layer on RGB images) PyTorch's
# weight backward leaves oneDNN for a slower path and the patch matmuls win.
CONV_BACKWARD_MIN_IN = 64
# Its time per formation FLOP (units of ntkit.rules.contract.formation_weight), and the fixed
# cost of one per-sample call (~65 us on 2 threads, as FLOPs at the 186 GFLOP/s matmul peak).
# Fitted, with ntkit.engine.cost.CAPTURE_WEIGHT, by least squares on the times of Jacobian
# contraction and structured derivatives measured side by side on 12 convolution nets x 3 outputs
# (benchmarks/cost_model.py: widths 16-64, 8-32 px, N 16-64, plain and residual, O' = 10 and 1).
CONV_FORMATION_WEIGHT = 2.7
CONV_CALL_FLOPS = 1.2e7
# With at most this many rows per sample (O'·C_out) ONE weight backward with the samples as
# groups (input (1, n·C_in, ...), cotangents (1, n·O'·C_out, ...), groups = n) beats n calls:
# grouped/loop time 0.09-0.6 at O'·C_out = 16-64, 0.5-1.4 at 128-160, up to 2.7 at 320 (C_out
# 16-64, 8-32 px, n 16-64, 2 threads).
GROUPED_MAX_ROWS = 96


@dataclass(eq=False)
class ConvFactor(LinearFactor):
    """A convolution weight's `LinearFactor` that forms per-sample gradients by the convolution's
    own weight backward, one sample at a time, with the O' outputs as O'·C_out output channels
    (or, with few of them, all samples in one call as groups: see GROUPED_MAX_ROWS).

    On CPU oneDNN's weight backward (implicit im2col) runs ~2x the rate of unfolding patches and
    one (O'·out, S) @ (S, in) matmul per sample. Only for groups = 1: with G > 1 the O'·C_out
    channels would not split into the layer's groups.
    """

    own_formation_weight: ClassVar[float | None] = CONV_FORMATION_WEIGHT

    cot: torch.Tensor | None = None  # (O', n, C_out, *L_out)
    input: torch.Tensor | None = None  # (n, C_in, *L_in), not padded
    module: nn.Module | None = None

    def tensors(self) -> list[torch.Tensor]:
        return [*super().tensors(), self.cot, self.input]

    @property
    def grouped(self) -> bool:
        """All samples in one grouped weight backward (few rows per sample), else one call each."""
        return self.cot.shape[0] * self.cot.shape[2] <= GROUPED_MAX_ROWS

    @property
    def call_flops(self) -> float:  # type: ignore[override]
        return 0.0 if self.grouped else CONV_CALL_FLOPS

    def grads(self, rows: slice | None = None, natural: bool = True, into: torch.Tensor | None = None,
              outs: slice | None = None) -> torch.Tensor:
        rows = slice(None) if rows is None else rows
        m = self.module
        d = self.cot[:, rows] if outs is None else self.cot[:, rows, outs]
        x = self.input[rows]
        o, n, c_out = d.shape[:3]
        nd = len(m.kernel_size)
        padding = list(m.padding) if not isinstance(m.padding, str) else None
        if m.padding_mode != "zeros" or padding is None:
            pad = _conv_pad(m)
            x = F.pad(x, pad, mode="constant" if m.padding_mode == "zeros" else m.padding_mode)
            padding = [0] * nd
        w = m.weight.detach() if outs is None else m.weight.detach()[outs]
        mask = [False, True, False]
        if self.grouped and n > 1:
            # (O', n, C_out, ...) -> (1, n·O'·C_out, ...): a view for sample-major cotangents.
            go = d.transpose(0, 1).reshape(1, n * o * c_out, *d.shape[3:])
            xi = x.reshape(1, n * x.shape[1], *x.shape[2:])
            weight = w.new_empty(()).expand(n * o * c_out, *w.shape[1:])
            gw = torch.ops.aten.convolution_backward(go, xi, weight, None, list(m.stride), padding,
                                                     list(m.dilation), False, [0] * nd, n, mask)[1]
            return gw.view(n, o, w.numel()) if into is None else into.copy_(gw.view(n, o, w.numel()))
        shape = (o * c_out, *w.shape[1:])
        weight = w.new_empty(()).expand(shape)  # only its shape is read
        res = scratch.empty((n, o, w.numel()), d.dtype, d.device) if into is None else into
        for i in range(n):
            go = d[:, i].reshape(1, o * c_out, *d.shape[3:])  # a view for sample-major cotangents
            gw = torch.ops.aten.convolution_backward(go, x[i : i + 1], weight, None, list(m.stride), padding,
                                                     list(m.dilation), False, [0] * nd, 1, mask)[1]
            res[i] = gw.view(o, -1)
        return res


@register_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)
class ConvRule(Rule):
    """Convolutions via lazily unfolded patches (see the module docstring)."""

    def supports(self, module):
        return None

    def save(self, module, args, kwargs, output):
        x = args[0] if args else kwargs["input"]
        nd = len(module.kernel_size)
        if x.ndim != nd + 2:
            raise ValueError(f"{type(module).__name__} got an unbatched input of shape {tuple(x.shape)}")
        return x.detach()

    def factors(self, module, x, cots, names):
        (d,) = cots  # (O', n, C_out, *L_out)
        n = d.shape[1]
        s = math.prod(d.shape[3:])
        g = module.groups
        k = module.kernel_size
        in_g = (x.shape[1] // g) * math.prod(k)
        d5 = positions_last(d, g)  # (O', n, S, G, out)
        res = {}
        if "weight" in names:
            pad, mode = _conv_pad(module), module.padding_mode
            st, dl = module.stride, module.dilation

            def rows(sl, x=x):
                return unfold(x[sl], k, st, dl, pad, mode, g).permute(0, 3, 1, 2)  # (n, S, G, in)

            lazy = Lazy((n, s, g, in_g), rows, source=x)
            if g == 1 and d.device.type == "cpu" and in_g >= CONV_BACKWARD_MIN_IN:
                res["weight"] = ConvFactor(d5, module.weight.shape, x=lazy, cot=d, input=x, module=module)
            else:
                res["weight"] = LinearFactor(d5, module.weight.shape, x=lazy)
        if "bias" in names and module.bias is not None:
            res["bias"] = LinearFactor(d5, module.bias.shape)
        return res


@register_rule(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
class ConvTransposeRule(Rule):
    """Transposed convolutions: unfold the cotangents over the input positions."""

    def supports(self, module):
        if module.padding_mode != "zeros":
            return f"{type(module).__name__} with padding_mode={module.padding_mode!r}"
        return None

    def save(self, module, args, kwargs, output):
        x = args[0] if args else kwargs["input"]
        if x.ndim != len(module.kernel_size) + 2:
            raise ValueError(f"{type(module).__name__} got an unbatched input of shape {tuple(x.shape)}")
        return x.detach()

    def factors(self, module, x, cots, names):
        (d,) = cots  # (O', n, C_out, *L_out)
        o, n, c_out = d.shape[:3]
        g = module.groups
        c_in = x.shape[1]
        l_in = x.shape[2:]
        s_in = math.prod(l_in)
        res = {}
        if "weight" in names:
            k = module.kernel_size
            pad = [p for p in reversed(module.padding) for _ in range(2)]
            du = unfold(d.reshape(o * n, c_out, *d.shape[3:]), k, module.stride, module.dilation, pad, "zeros", g,
                        positions=tuple(l_in))  # (O'·n, G, C_out/G · K, S_in)
            du = du.reshape(o, n, g, du.shape[2], s_in).permute(0, 1, 4, 2, 3)  # (O', n, S, G, out·K)
            xs = x.reshape(n, g, c_in // g, s_in).permute(0, 3, 1, 2)  # (n, S, G, C_in/G)
            res["weight"] = LinearFactor(du, module.weight.shape, x=xs, transposed=True)
        if "bias" in names and module.bias is not None:
            res["bias"] = LinearFactor(positions_last(d, 1), module.bias.shape)
        return res
