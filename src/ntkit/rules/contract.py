"""Contracting factors of two batches into a kernel block, with the output reduction pushed in.

Parameters are grouped into *terms*. A `LinearTerm` holds parameters whose factors are all
`LinearFactor`s sharing the same cotangents call by call (a layer's weight and bias, over every
call of the layer — weight sharing adds positions, so cross terms between calls come for free);
any other parameter is a `GradTerm`. Each term is contracted in one of two modes, chosen by FLOPs:

- "direct" (LinearTerm, G = 1): K[n,s,m,t] = Σ_p x1_p[n,s]·x2_p[m,t] (a bias adds 1, a one-hot
  input adds [tok1 = tok2]), then Θ[n,m,a,b] += Σ_{s,t} (d1[n,a,s]·d2[m,b,t]) K[n,s,m,t].
  Per pair of samples, with O' outputs, S and T positions, `in` summed input widths:
      K:            2·S·T·in
      full:         S = T = 1: 2·O'²·out                 else 2·S·T·O'·out + 2·S·O'²·out
      trace:        2·S·T·O'·out      diagonal: 2·S·T·O'·out (+ S·T·O')
  (for `full` with S > 1 the cotangents of one side are first contracted with K over t, then
  with the other side's cotangents over (s, out): O' times fewer FLOPs than forming d1·d2.)
- "grads": per-sample gradients g (n, O', P) are formed once per block of samples, then
  contracted by one matmul per parameter:
      per sample: Σ over calls 2·O'·S·G·out·in      per pair: 2·O'²·P (full), 2·O'·P (trace, diag)
  (forming them is timed at 1/`formation_weight(O'·out)` of the matmul rate: see below).

With S = 1 (dense layers) "direct" is cheaper by a factor ~in·out/(out + in/O'²); for
convolutions (S = output positions ≫ 1) "grads" wins; Linear layers on short sequences and
embeddings (where K is an equality test and P = V·dim is large) usually go "direct".

Block layouts (`acc` arguments, views into the caller's kernel): "full" (n, O', m, O'), "trace"
(n, m), "diagonal" (O', n, m). `logit:K` and `pntk` are "trace" with O' = 1.

Reference: Novak, Sohl-Dickstein & Schoenholz, "Fast Finite Width Neural Tangent Kernel",
ICML 2022, section 3.3 and appendix on structured derivatives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ntkit.rules.factors import Factor, LinearFactor

KINDS = ("full", "trace", "diagonal")
# Forming per-sample gradients (unfolding patches, then per sample one (O'·out, S) @ (S, in)
# matmul) runs well below the large-matmul rate of the contractions, and below the rate of the
# vmapped backward passes of Jacobian contraction that compute the same gradients (AUTODIFF_RATE
# = 1/4 in ntkit.engine.cost): on CPU, with O'·out ≥ FORMATION_ROWS rows, at about 1/6 of it
# (2/3 of the vmapped backward's rate: structured derivatives took 1.1-1.4x Jacobian contraction's
# time on the convolution nets of benchmarks/workloads.py and a 64-channel variant, 2 threads),
# and proportionally slower with fewer rows (O' = 1 and 32 channels: 1.7-2.3x). Their FLOPs
# count `formation_weight(rows)` times in `Term.costs`.
FORMATION_WEIGHT = 6.0
FORMATION_ROWS = 64
# Largest temporary (elements) a direct contraction with S > 1 may create; rows are chunked.
CHUNK_ELEMENTS = 1 << 23
# A direct contraction over S > 1 positions is bound by memory traffic, not FLOPs: the full
# kind builds E (S·O'·out elements per pair of samples) by batched products with an inner size
# of only S and permutes it into the final product; trace and diagonal multiply and sum an
# (S·T[·O']) block per pair elementwise. Each element of those temporaries costs this many
# FLOPs at the matmul rate (a permuting copy ran at 1/275 of the float32 matmul FLOP rate per
# element on this 2-core CPU; the whole full-kind contraction of a 16-token LayerNorm/GELU block
# ran at ~15% of the matmul rate, 0.175 s where its FLOPs at the peak take 0.026 s), so that a
# sequence layer whose direct contraction is slow goes to per-sample gradients instead.
DIRECT_PERMUTE_WEIGHT = 150.0
DIRECT_ELEMENTWISE_WEIGHT = 8.0


# ------------------------------------------------------------------------------------------ terms
def _cat(tensors, dim):
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim)


def _sum(tensors):
    """Sum without writing into the first tensor (it may be a factor's own storage)."""
    total = None
    for t in tensors:
        total = t if total is None else total + t
    return total


def _fill(g: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    return buf.copy_(g)


def _into(names, facs, out, form) -> list[torch.Tensor]:
    """[Σ_calls form(factor, buffer)] per parameter; a parameter of one call is formed straight
    into its `out` buffer (no copy), several calls are summed and then copied."""
    res = []
    for i, name in enumerate(names):
        buf = None if out is None else out[i]
        fl = facs[name]
        if len(fl) == 1:
            res.append(form(fl[0], buf))
        else:
            total = _sum(form(f, None) for f in fl)
            res.append(total if buf is None else buf.copy_(total))
    return res


def formation_weight(rows: int) -> float:
    """Time per FLOP of forming per-sample gradients by matmuls with `rows` rows (O'·out), in
    units of the matmul peak (see FORMATION_WEIGHT)."""
    return FORMATION_WEIGHT * max(1.0, FORMATION_ROWS / max(1, rows))


@dataclass(eq=False)
class Term:
    """Parameters contracted together; `mode` is "direct" or "grads"."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]
    mode: str = "grads"
    # mode -> (formation FLOPs, contraction FLOPs) for the whole kernel; the mode with the
    # smaller weight·formation + contraction is chosen
    parts: dict[str, tuple[float, float]] = field(default_factory=dict)
    weight: float = FORMATION_WEIGHT  # time per formation FLOP (see formation_weight)

    @property
    def costs(self) -> dict[str, float]:
        """mode -> estimated time (matmul-peak FLOPs) of the whole kernel's part of this term."""
        return {m: self.weight * f + c for m, (f, c) in self.parts.items()}

    @property
    def formation_time(self) -> float:
        """Time of forming this term's gradients in its chosen mode (matmul-peak FLOPs)."""
        return self.weight * self.parts[self.mode][0]

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def grads(self, facs: dict[str, list[Factor]], rows: slice,
              out: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Per-sample gradients of each parameter of the term, summed over calls: [(n, O', P)],
        written into `out` (one buffer per parameter) when given."""
        return _into(self.names, facs, out, lambda f, buf: f.grads(rows) if buf is None else _fill(f.grads(rows), buf))


@dataclass(eq=False)
class LinearTerm(Term):
    """Parameters whose factors are LinearFactors sharing cotangents call by call."""

    o: int = 1
    positions: int = 1  # S, summed over calls
    groups: int = 1
    out: int = 1
    dense_in: int = 0  # Σ in over dense inputs
    ones: int = 0  # number of bias-like parameters
    onehot: int = 0  # number of one-hot (embedding) parameters
    grad_flops: float = 0.0  # per sample, all calls and parameters

    def grads(self, facs, rows, out=None, outs: slice | None = None):
        """As `Term.grads`, in the (G, out, in) order; `outs`: only those output features of
        each group (`LinearFactor.grads`), `part_sizes(outs)` parameters per name."""
        return _into(self.names, facs, out, lambda f, buf: f.grads(rows, natural=False, into=buf, outs=outs))

    def part_sizes(self, outs: slice) -> tuple[int, ...]:
        """Parameters per name in output features `outs` of each group."""
        width = len(range(self.out)[outs])
        return tuple(size // self.out * width for size in self.sizes)

    def direct_flops(self, kind: str) -> float:
        """FLOPs of the direct contraction for one pair of samples (inf if not available)."""
        if self.groups != 1:
            return float("inf")
        s = t = self.positions
        o, out = self.o, self.out
        k = 2.0 * s * t * self.dense_in + s * t * (self.ones + 3 * self.onehot)
        if s == 1:
            con = {"full": 2.0 * o * o * out + 2 * o * o, "trace": 2.0 * o * out + 2,
                   "diagonal": 2.0 * o * out + 2 * o}[kind]
        else:
            con = {"full": 2.0 * s * t * o * out + 2.0 * s * o * o * out + 2 * s * t,
                   "trace": 2.0 * s * t * o * out + 2 * s * t,
                   "diagonal": 2.0 * s * t * o * out + 2 * s * t * o}[kind]
            con += {"full": DIRECT_PERMUTE_WEIGHT * s * o * out + DIRECT_ELEMENTWISE_WEIGHT * s * t,
                    "trace": DIRECT_ELEMENTWISE_WEIGHT * s * t,
                    "diagonal": DIRECT_ELEMENTWISE_WEIGHT * s * t * o}[kind]
        return k + con

    def prepare(self, facs: dict[str, list[Factor]]) -> Operands:
        """Direct-mode operands of one batch: cotangents (n, S, O', out), inputs for K."""
        first = facs[self.names[0]]
        d = _cat([f.d[:, :, :, 0] for f in first], 2)  # (O', n, S, out)
        d = d.permute(1, 2, 0, 3).contiguous()  # (n, S, O', out)
        dense, ones, onehot = [], 0, []
        for name in self.names:
            fl = facs[name]
            kind = fl[0].x_kind
            if kind == "ones":
                ones += 1
            elif kind == "index":
                onehot.append(_cat([f.index for f in fl], 1))
            else:
                dense.append(_cat([f.x_rows(slice(None))[:, :, 0] for f in fl], 1))
        x = None if not dense else (dense[0] if len(dense) == 1 else torch.cat(dense, 2))
        return Operands(d, x, ones, onehot)


def build_terms(facs: dict[str, list[Factor]], names: Sequence[str], kind: str, n1: int, n2: int,
                symmetric: bool) -> list[Term]:
    """Group parameters into terms and choose each term's mode by total FLOPs for the kernel.

    facs: {name: [factor per call]} from one capture; n1, n2: samples on each side. Parameters
    without factors (their layer was not called) contribute nothing and get no term.
    """
    pairs = n1 * n2 * (0.5 if symmetric and n1 > 1 else 1.0)
    sides = n1 + (0 if symmetric else n2)
    o_factor = {"full": None, "trace": 1, "diagonal": 1}
    groups: dict[tuple, list[str]] = {}
    singles: list[str] = []
    for name in names:
        fl = facs.get(name, [])
        if not fl:
            continue
        if all(isinstance(f, LinearFactor) for f in fl):
            kinds = {f.x_kind for f in fl}
            dims = {(f.groups, f.out_features, f.transposed) for f in fl}
            if len(kinds) == 1 and len(dims) == 1:
                key = tuple(id(f.d) for f in fl) + (fl[0].groups, fl[0].out_features)
                groups.setdefault(key, []).append(name)
                continue
        singles.append(name)
    terms: list[Term] = []
    for members in groups.values():
        fl0 = facs[members[0]]
        o = fl0[0].n_out
        t = LinearTerm(tuple(members), tuple(facs[m][0].shape.numel() for m in members), o=o,
                       positions=sum(f.positions for f in fl0), groups=fl0[0].groups, out=fl0[0].out_features)
        for m in members:
            f = facs[m][0]
            if f.x_kind == "ones":
                t.ones += 1
            elif f.x_kind == "index":
                t.onehot += 1
            else:
                t.dense_in += f.in_features
            t.grad_flops += sum(g.grad_flops() for g in facs[m])
        of = o_factor[kind] or o
        t.weight = formation_weight(o * t.out) if t.dense_in else FORMATION_WEIGHT
        own = [f.own_formation_weight for m in members for f in facs[m] if f.x_kind == "dense"]
        if own and None not in own:  # e.g. convolution weights formed by their own backward
            t.weight = max(own)
        # Per-sample calls' fixed cost, as formation FLOPs at this term's rate.
        calls = sum(f.call_flops for m in members for f in facs[m]) / t.weight
        t.parts = {"grads": (sides * (t.grad_flops + calls), pairs * 2.0 * o * of * t.size),
                   "direct": (0.0, pairs * t.direct_flops(kind))}
        costs = t.costs
        t.mode = min(costs, key=costs.get)
        terms.append(t)
    for name in singles:
        fl = facs[name]
        size = fl[0].shape.numel()
        o = fl[0].n_out
        of = o_factor[kind] or o
        t = Term((name,), (size,), "grads")
        t.parts = {"grads": (sides * sum(f.grad_flops() for f in fl), pairs * 2.0 * o * of * size)}
        terms.append(t)
    return terms


# ------------------------------------------------------------------------------ direct contraction
@dataclass(eq=False)
class Operands:
    """Direct-mode operands of one batch: d (n, S, O', out); K inputs: x (n, S, in) dense,
    `ones` bias count, one-hot index tensors (n, S)."""

    d: torch.Tensor
    x: torch.Tensor | None
    ones: int
    onehot: list[torch.Tensor]

    def rows(self, sl: slice) -> Operands:
        return Operands(self.d[sl], None if self.x is None else self.x[sl], self.ones, [i[sl] for i in self.onehot])

    @property
    def n(self) -> int:
        return self.d.shape[0]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [self.d, self.x, *self.onehot] if t is not None)


def _k(a: Operands, b: Operands) -> torch.Tensor:
    """K[n, s, m, t] = Σ_p x1_p[n, s]·x2_p[m, t] over dense, bias and one-hot inputs."""
    n, s = a.d.shape[:2]
    m, t = b.d.shape[:2]
    k = None
    if a.x is not None:
        k = (a.x.reshape(n * s, -1) @ b.x.reshape(m * t, -1).T).view(n, s, m, t)
    for i1, i2 in zip(a.onehot, b.onehot):
        eq = (i1[:, :, None, None] == i2[None, None]) & (i1 >= 0)[:, :, None, None]
        k = eq.to(a.d.dtype) if k is None else k.add_(eq.to(k.dtype))
    if a.ones:
        k = torch.full((n, s, m, t), float(a.ones), dtype=a.d.dtype, device=a.d.device) if k is None else k.add_(a.ones)
    return k


def contract_direct(a: Operands, b: Operands, kind: str, acc: torch.Tensor) -> None:
    """acc += the kernel block of one direct-mode term between batches a (rows) and b (cols)."""
    n, s, o, out = a.d.shape
    m, t = b.d.shape[:2]
    if s == 1 and t == 1:
        k = _k(a, b).view(n, m)
        if kind == "full":
            dd = (a.d.view(n * o, out) @ b.d.view(m * o, out).T).view(n, o, m, o)
            acc.addcmul_(dd, k.view(n, 1, m, 1))
        elif kind == "trace":
            acc.addcmul_(a.d.view(n, o * out) @ b.d.view(m, o * out).T, k)
        else:
            dd = torch.bmm(a.d.view(n, o, out).transpose(0, 1), b.d.view(m, o, out).permute(1, 2, 0))
            acc.addcmul_(dd, k.unsqueeze(0))
        return
    per_row = m * max(s * t * (o if kind == "diagonal" else 1), s * o * out if kind == "full" else 0) * 2
    step = max(1, CHUNK_ELEMENTS // max(1, per_row))
    for r0 in range(0, n, step):
        sl = slice(r0, min(n, r0 + step))
        ar = a.rows(sl)
        nr = ar.n
        k = _k(ar, b)  # (nr, S, m, T)
        if kind == "trace":
            dd = (ar.d.view(nr * s, o * out) @ b.d.view(m * t, o * out).T).view(nr, s, m, t)
            acc[sl] += (dd * k).sum((1, 3))
        elif kind == "diagonal":
            dd = torch.bmm(ar.d.view(nr * s, o, out).transpose(0, 1), b.d.view(m * t, o, out).permute(1, 2, 0))
            acc[:, sl] += (dd.view(o, nr, s, m, t) * k.unsqueeze(0)).sum((2, 4))
        else:
            # E[m, n, s, b, :] = Σ_t K[n, s, m, t] d2[m, t, b, :], then Σ_{s, out} d1[n, s, a, :] E
            e = torch.bmm(k.permute(2, 0, 1, 3).reshape(m, nr * s, t), b.d.view(m, t, o * out))
            e = e.view(m, nr, s, o, out).permute(1, 2, 4, 0, 3).reshape(nr, s * out, m * o)
            d1 = ar.d.permute(0, 2, 1, 3).reshape(nr, o, s * out)
            acc[sl] += torch.bmm(d1, e).view(nr, o, m, o)


# ------------------------------------------------------------------------------- grads contraction
def contract_grads(g1: torch.Tensor, g2: torch.Tensor, kind: str, acc: torch.Tensor) -> None:
    """acc += the kernel block from per-sample gradients g1: (n, O', P), g2: (m, O', P).

    These are Gram products like Jacobian contraction's, so `gram_precision("tf32x3")` splits
    them the same way (`ntkit._runtime.precision`); direct-mode contractions stay plain float32.
    """
    from ntkit._runtime import precision

    n, o, p = g1.shape
    m = g2.shape[0]
    if kind == "full":
        acc.add_(precision.mm(g1.reshape(n * o, p), g2.reshape(m * o, p).T).view(n, o, m, o))
    elif kind == "trace":
        precision.addmm_(acc, g1.reshape(n, o * p), g2.reshape(m, o * p).T)
    else:
        precision.baddbmm_(acc, g1.transpose(0, 1), g2.permute(1, 2, 0))
