"""Factors: the per-sample gradients of one parameter from one layer call, kept factored.

For a batch of n samples and O' differentiated outputs, the gradient of output a of sample n with
respect to a parameter θ, restricted to one call of its layer, has the form

- `LinearFactor`: g[a, n] = Σ_s d[a, n, s, G] ⊗ x[n, s, G] — a sum of outer products of the
  output cotangents d (O', n, S, G, out) and the layer input x (n, S, G, in) over S shared
  positions and G independent groups; θ is viewed as (G, out, in), or (G, in, out) when
  `transposed`. Linear (S = 1, or the leading dims of a 3-D input), convolutions (x: the unfolded
  patches, S: output positions, G: groups), biases (x = 1, in = 1) and embeddings (x one-hot, given
  by `index`) all take this form, and two of them contract without forming g:
  ⟨g1[a, n], g2[b, m]⟩ = Σ_{s,t} (d1[a, n, s]·d2[b, m, t]) (x1[n, s]·x2[m, t]).
- `GradFactor`: g itself, (O', n, P) in the parameter's order — the general form (affine
  parameters of normalization layers, whose gradients are small).

Every factor can produce g (`grads`) and the gradient of a weighted sum of outputs
(`weighted_grad`, used to check that a rule captured everything).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

# Largest input block (elements) formed at once when computing per-sample gradients.
GRAD_CHUNK_ELEMENTS = 1 << 19


class Factor:
    """Per-sample gradients of one parameter from one layer call (see the module docstring)."""

    shape: torch.Size  # the parameter's shape

    @property
    def n_samples(self) -> int:
        raise NotImplementedError

    @property
    def n_out(self) -> int:
        raise NotImplementedError

    def grads(self, rows: slice | None = None) -> torch.Tensor:
        """g for samples `rows` (default all): (n, O', P) in the parameter's own order."""
        raise NotImplementedError

    def weighted_grad(self, r: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """Σ_{a, n} r[a, n] g[a, n] over samples `rows` (default all), r: (O', n), in the
        parameter's shape."""
        g = self.grads(rows)
        return torch.einsum("nap,an->p", g, r.to(g.dtype)).reshape(self.shape)

    def grad_flops(self) -> float:
        """FLOPs to form `grads()` for one sample."""
        return float(self.n_out * math.prod(self.shape))

    def tensors(self) -> list[torch.Tensor]:
        """The tensors this factor keeps alive (what holding it costs)."""
        return []


def held_bytes(factors) -> int:
    """Bytes the `factors` keep alive, a tensor shared by several of them counted once."""
    seen: dict[int, int] = {}
    for f in factors:
        for t in f.tensors():
            seen[t.data_ptr()] = max(seen.get(t.data_ptr(), 0), t.numel() * t.element_size())
    return sum(seen.values())


@dataclass(eq=False)
class GradFactor(Factor):
    """Explicit per-sample gradients g: (O', n, P) as computed by a rule."""

    g: torch.Tensor
    shape: torch.Size

    def __post_init__(self) -> None:
        self.shape = torch.Size(self.shape)
        if self.g.ndim != 3 or self.g.shape[2] != math.prod(self.shape):
            raise ValueError(f"GradFactor needs g of shape (O', n, {math.prod(self.shape)}), got {tuple(self.g.shape)}")

    @property
    def n_samples(self) -> int:
        return self.g.shape[1]

    @property
    def n_out(self) -> int:
        return self.g.shape[0]

    def grads(self, rows: slice | None = None) -> torch.Tensor:
        return (self.g if rows is None else self.g[:, rows]).transpose(0, 1)

    def tensors(self) -> list[torch.Tensor]:
        return [self.g]


class Lazy:
    """An input tensor built on demand, a few samples at a time (unfolded patches are large).

    shape: the logical (n, S, G, in); rows(sl) -> (len(sl), S, G, in).
    """

    def __init__(self, shape: tuple[int, ...], rows: Callable[[slice], torch.Tensor],
                 source: torch.Tensor | None = None) -> None:
        self.shape = torch.Size(shape)
        self.rows = rows
        self.source = source  # the tensor the rows are built from (what holding them costs)


@dataclass(eq=False)
class LinearFactor(Factor):
    """g[a, n] = Σ_s d[a, n, s, G] ⊗ x[n, s, G], θ viewed as (G, out, in) (see module docstring).

    d: (O', n, S, G, out) — any strides. Exactly one way of giving x:
    x: (n, S, G, in) tensor or `Lazy`; x None and index None: x = 1 (a bias, in = 1);
    index: (n, S) integer positions of a one-hot x of width `in_features` (< 0: a zero row).
    transposed: θ is (G, in, out) in memory (embeddings, transposed convolutions).
    """

    # Time per formation FLOP in units of the matmul peak when this factor forms its gradients
    # its own way (see ntkit.rules.contract.formation_weight); None: the patch-matmul default.
    own_formation_weight: ClassVar[float | None] = None
    call_flops: ClassVar[float] = 0.0  # fixed cost per sample of forming gradients one sample at a time

    d: torch.Tensor
    shape: torch.Size
    x: torch.Tensor | Lazy | None = None
    index: torch.Tensor | None = None
    in_features: int | None = None
    transposed: bool = False

    def __post_init__(self) -> None:
        self.shape = torch.Size(self.shape)
        if self.d.ndim != 5:
            raise ValueError(f"LinearFactor needs d of shape (O', n, S, G, out), got {tuple(self.d.shape)}")
        _, n, s, g, out = self.d.shape
        if self.index is not None:
            if self.in_features is None:
                raise ValueError("LinearFactor with index= needs in_features (the one-hot width)")
            inn = self.in_features
        elif self.x is None:
            inn = 1
        else:
            if tuple(self.x.shape[:3]) != (n, s, g):
                raise ValueError(f"x {tuple(self.x.shape)} does not match d {tuple(self.d.shape)} on (n, S, G)")
            inn = self.x.shape[3]
        self.in_features = inn
        if g * out * inn != math.prod(self.shape):
            raise ValueError(f"LinearFactor dims G={g}, out={out}, in={inn} do not match parameter shape {tuple(self.shape)}")

    # -- dims --------------------------------------------------------------------------------------
    @property
    def n_out(self) -> int:
        return self.d.shape[0]

    @property
    def n_samples(self) -> int:
        return self.d.shape[1]

    @property
    def positions(self) -> int:
        return self.d.shape[2]

    @property
    def groups(self) -> int:
        return self.d.shape[3]

    @property
    def out_features(self) -> int:
        return self.d.shape[4]

    @property
    def x_kind(self) -> str:
        return "index" if self.index is not None else ("ones" if self.x is None else "dense")

    def x_rows(self, rows: slice) -> torch.Tensor:
        """The dense input (n_rows, S, G, in) (ones and one-hot inputs are materialized)."""
        if isinstance(self.x, Lazy):
            return self.x.rows(rows)
        if self.x is not None:
            return self.x[rows]
        n, s, g = self.d.shape[1:4]
        if self.index is None:
            return self.d.new_ones(len(range(n))[rows], s, g, 1)
        idx = self.index[rows]
        onehot = torch.zeros(*idx.shape, self.in_features, dtype=self.d.dtype, device=self.d.device)
        onehot.scatter_(-1, idx.clamp_min(0).unsqueeze(-1), (idx >= 0).unsqueeze(-1).to(self.d.dtype))
        return onehot.unsqueeze(2)

    def tensors(self) -> list[torch.Tensor]:
        x = self.x.source if isinstance(self.x, Lazy) else self.x
        return [t for t in (self.d, x, self.index) if isinstance(t, torch.Tensor)]

    # -- gradients ---------------------------------------------------------------------------------
    def grad_flops(self) -> float:
        o, _, s, g, out = self.d.shape
        return float(2 * o * s * g * out * (self.in_features if self.x_kind == "dense" else 1))

    def grads(self, rows: slice | None = None, natural: bool = True, into: torch.Tensor | None = None,
              outs: slice | None = None) -> torch.Tensor:
        """g: (n, O', P); in the parameter's order when `natural`, else as (G, out, in); written
        into `into` (n, O', P) when given. `outs`: only the output features outs of each group
        (with natural=False), so that a large parameter's gradients can be formed a part at a time.

        Dense inputs: a few samples at a time (so that their patches stay in cache), one batched
        matmul over (sample, group) of (O'·out, S) @ (S, in).
        """
        rows = slice(None) if rows is None else rows
        d = self.d[:, rows] if outs is None else self.d[:, rows, :, :, outs]
        o, n, s, g, out = d.shape
        inn = self.in_features
        if self.x_kind == "ones":
            res = d.sum(2).transpose(0, 1).reshape(n, o, g * out)  # in = 1
        elif self.x_kind == "index":
            idx = self.index[rows]  # (n, S)
            src = d.permute(1, 0, 3, 4, 2).reshape(n, o * g * out, s)
            src = src * (idx >= 0).view(n, 1, s).to(src.dtype)
            res = torch.zeros(n, o * g * out, inn, dtype=d.dtype, device=d.device)
            res.scatter_add_(2, idx.clamp_min(0).view(n, 1, s).expand(n, o * g * out, s), src)
            res = res.view(n, o, g * out * inn)
        else:
            plain = into is not None and not (natural and self.transposed and inn > 1)
            res = into if plain else torch.empty(n, o, g * out * inn, dtype=d.dtype, device=d.device)
            step = max(1, GRAD_CHUNK_ELEMENTS // max(1, s * g * inn))
            base = range(self.n_samples)[rows]
            for c0 in range(0, n, step):
                c1 = min(n, c0 + step)
                c = c1 - c0
                x = self.x_rows(slice(base.start + c0 * base.step, base.start + c1 * base.step, base.step))
                xm = x.permute(0, 2, 1, 3).reshape(c * g, s, inn)  # (c·G, S, in)
                dm = d[:, c0:c1].permute(1, 3, 0, 4, 2).reshape(c * g, o * out, s)  # (c·G, O'·out, S)
                if g == 1:
                    torch.bmm(dm, xm, out=res[c0:c1].view(c, o * out, inn))
                else:
                    res[c0:c1] = torch.bmm(dm, xm).view(c, g, o, out * inn).transpose(1, 2).reshape(c, o, -1)
        if natural and self.transposed and inn > 1:
            res = res.view(n, o, g, out, inn).transpose(3, 4).reshape(n, o, g * out * inn)
        if into is not None and res is not into:
            return into.copy_(res)
        return res

    def weighted_grad(self, r: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        rows = slice(None) if rows is None else rows
        dr = torch.einsum("ansgo,an->nsgo", self.d[:, rows], r.to(self.d.dtype))  # (n, S, G, out)
        if self.x_kind == "ones":
            w = dr.sum((0, 1)).unsqueeze(-1)  # (G, out, 1)
        else:
            x = self.x_rows(rows)
            w = torch.einsum("nsgo,nsgi->goi", dr, x)
        if self.transposed:
            w = w.transpose(1, 2)
        return w.reshape(self.shape)
