"""Output modes of the eNTK and how each one reduces the logit axes.

Θ[n, m, a, b] = ⟨∂f_a(x1_n)/∂θ, ∂f_b(x2_m)/∂θ⟩. The reduction is decided *before* differentiating
where possible: `logit:K` and `pntk` differentiate one scalar per sample (O times cheaper), and
`trace`/`diagonal` never form the O×O blocks.

Models whose outputs are (N, *S) (per-token logits (N, T, C), per-pixel maps (N, C, H, W)) have
O = prod(S) outputs, flattened in S's order, for the modes above. `trace_axes` / `diagonal_axes`
(as in neural-tangents) instead keep S's structure: the kernel has, after (N1, N2), for every
output axis in order two axes (x1's, x2's) if it is free, one if it is a diagonal axis, none if
it is traced, e.g. (N, T, C) with `diagonal_axes=(1,), trace_axes=(2,)` gives the per-token
kernel (N1, N2, T). That is `OutputSpec("axes", ...)`; the methods compute the smallest of the
plain modes that contains it (`inner()`: trace, diagonal, or full when some axis stays free) and
`finish()` reduces it.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import torch

OUTPUTS: tuple[str, ...] = ("full", "trace", "diagonal", "logit:K", "pntk", "axes:trace=A,diagonal=B")


@dataclass(frozen=True)
class OutputSpec:
    """A parsed `output=` string.

    kind: "full" | "trace" | "diagonal" | "logit" | "pntk"; logit: the K of `logit:K` (may be
    negative, Python-style, until :meth:`resolve` fixes it against O).
    """

    kind: str
    logit: int | None = None
    trace_axes: tuple[int, ...] = ()  # kind "axes" only: output axes (1..k, or negative) summed over
    diagonal_axes: tuple[int, ...] = ()  # kind "axes" only: output axes kept once (x1's = x2's)
    out_shape: tuple[int, ...] | None = None  # kind "axes": S, set by resolve()

    @property
    def scalar(self) -> bool:
        """True when one scalar per sample is differentiated (O' = 1)."""
        return self.kind in ("logit", "pntk")

    def n_out(self, n_logits: int) -> int:
        """O', the number of per-sample outputs that are differentiated."""
        return 1 if self.scalar else n_logits

    def resolve(self, n_logits: int, out_shape: tuple[int, ...] | None = None) -> OutputSpec:
        """Check `logit:K` against the model's O and make K non-negative; check the axes of an
        "axes" spec against the output shape S (`out_shape`, default (O,)) and make them positive."""
        if self.kind == "axes":
            return self._resolve_axes(tuple(out_shape) if out_shape is not None else (n_logits,))
        if self.kind != "logit":
            return self
        k = self.logit if self.logit is not None else 0
        if not -n_logits <= k < n_logits:
            raise ValueError(
                f"output='logit:{k}' is out of range: the model has O = {n_logits} logits, "
                f"so K must be in 0..{n_logits - 1}"
            )
        return OutputSpec("logit", k % n_logits)

    def _resolve_axes(self, shape: tuple[int, ...]) -> OutputSpec:
        k = len(shape)
        out = {}
        for what, axes in (("trace_axes", self.trace_axes), ("diagonal_axes", self.diagonal_axes)):
            fixed = []
            for a in axes:
                if a == 0 or not -k <= a <= k:
                    why = ("axis 0 is the batch axis, which is never reduced" if a == 0 else
                           f"the model's output (N, {', '.join(map(str, shape))}) has output axes 1..{k}"
                           if k else "the model's output is (N,): it has no output axis to reduce")
                    raise ValueError(f"{what}={tuple(axes)}: {why}; name output axes as 1..{k} or -1..-{k}"
                                     if k else f"{what}={tuple(axes)}: {why}; leave trace_axes and diagonal_axes out")
                fixed.append(a % (k + 1) if a < 0 else a)
            out[what] = tuple(sorted(set(fixed)))
        both = set(out["trace_axes"]) & set(out["diagonal_axes"])
        if both:
            raise ValueError(f"output axis {min(both)} is in both trace_axes and diagonal_axes; an axis is "
                             "either summed over (trace) or kept once (diagonal)")
        return OutputSpec("axes", None, out["trace_axes"], out["diagonal_axes"], shape)

    def _role(self, axis: int) -> str:
        return "t" if axis in self.trace_axes else "d" if axis in self.diagonal_axes else "f"

    def inner(self) -> OutputSpec:
        """The plain mode the methods compute for a resolved "axes" spec (itself otherwise):
        full when an axis stays free, else diagonal when one is kept, else trace."""
        if self.kind != "axes":
            return self
        roles = {self._role(i + 1) for i in range(len(self.out_shape or ()))}
        return OutputSpec("full" if "f" in roles else "diagonal" if "d" in roles else "trace")

    def finish(self, k: torch.Tensor) -> torch.Tensor:
        """The kernel in this spec's layout from the `inner()` mode's kernel `k` (any leading
        (n, m) block). Identity for the plain modes."""
        if self.kind != "axes":
            return k
        s = self.out_shape
        inner = self.inner().kind
        if inner == "trace":
            return k
        n, m = k.shape[:2]
        if inner == "diagonal":
            traced = tuple(2 + i for i in range(len(s)) if self._role(i + 1) == "t")
            v = k.reshape(n, m, *s)
            return v.sum(traced) if traced else v
        letters = "abcdefghijklopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"  # without n and m
        one, two, res = [], [], []
        for i in range(len(s)):
            p, q = letters[2 * i], letters[2 * i + 1]
            role = self._role(i + 1)
            one.append(p)
            two.append(p if role != "f" else q)
            res += [p, q] if role == "f" else [p] if role == "d" else []
        expr = f"nm{''.join(one)}{''.join(two)}->nm{''.join(res)}"
        return torch.einsum(expr, k.reshape(n, m, *s, *s))

    def mirror_perm(self, ndim: int) -> tuple[int, ...]:
        """The permutation taking a block Θ[n, m, ...] to Θ[m, n, ...] in this layout (`ndim`
        axes in all): n and m swap, and so do x1's and x2's axis of every free output axis."""
        if self.kind != "axes":
            return (1, 0, 3, 2) if ndim == 4 else (1, 0) + tuple(range(2, ndim))
        perm, at = [1, 0], 2
        for i in range(len(self.out_shape or ())):
            role = self._role(i + 1)
            if role == "f":
                perm += [at + 1, at]
                at += 2
            elif role == "d":
                perm.append(at)
                at += 1
        return tuple(perm)

    def shape(self, n1: int, n2: int, n_logits: int) -> tuple[int, ...]:
        """The returned kernel's shape for N1 × N2 inputs and O logits."""
        if self.kind == "axes":
            dims: list[int] = []
            for i, size in enumerate(self.out_shape or ()):
                role = self._role(i + 1)
                dims += [size, size] if role == "f" else [size] if role == "d" else []
            return (n1, n2, *dims)
        if self.kind == "full":
            return (n1, n2, n_logits, n_logits)
        if self.kind == "diagonal":
            return (n1, n2, n_logits)
        return (n1, n2)

    def __str__(self) -> str:
        if self.kind == "axes":
            parts = [f"{w}={'+'.join(map(str, a))}" for w, a in (("trace", self.trace_axes),
                                                              ("diagonal", self.diagonal_axes)) if a]
            return "axes:" + (",".join(parts) or "none")
        return f"logit:{self.logit}" if self.kind == "logit" else self.kind


def _axes(value, name: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    try:
        axes = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of ints (output axes), got {value!r}") from None
    if not all(isinstance(a, int) and not isinstance(a, bool) for a in axes):
        raise TypeError(f"{name} must be an int or a sequence of ints (output axes), got {value!r}")
    return axes


def output_spec(output: str | OutputSpec = "full", trace_axes=None, diagonal_axes=None) -> OutputSpec:
    """The spec of a call's `output=`, `trace_axes=` and `diagonal_axes=` (see the module
    docstring). Axes refine `output="full"`; with another output they are an error."""
    spec = parse_output(output)
    if trace_axes is None and diagonal_axes is None:
        return spec
    if spec.kind != "full":
        raise ValueError(f"trace_axes/diagonal_axes choose the kernel's layout themselves; output={str(spec)!r} "
                         "does too. Pass one of them: e.g. output='trace' alone, or trace_axes=(-1,) alone")
    return OutputSpec("axes", None, _axes(() if trace_axes is None else trace_axes, "trace_axes"),
                      _axes(() if diagonal_axes is None else diagonal_axes, "diagonal_axes"))


def parse_output(output: str | OutputSpec) -> OutputSpec:
    """Parse `"full" | "trace" | "diagonal" | "logit:K" | "pntk"` into an :class:`OutputSpec`."""
    if isinstance(output, OutputSpec):
        return output
    if not isinstance(output, str):
        raise TypeError(f"output must be a string, one of {', '.join(OUTPUTS)}; got {output!r}")
    text = output.strip().lower()
    if text in ("full", "trace", "diagonal", "pntk"):
        return OutputSpec(text)
    if text.startswith("axes:"):
        return _parse_axes(output, text[len("axes:"):])
    if text.startswith("logit:"):
        rest = text[len("logit:") :]
        try:
            return OutputSpec("logit", int(rest))
        except ValueError:
            raise ValueError(
                f"output={output!r}: K in 'logit:K' must be an integer logit index, e.g. 'logit:0'"
            ) from None
    near = difflib.get_close_matches(text, ["full", "trace", "diagonal", "pntk", "logit:0"], n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    raise ValueError(f"unknown output {output!r}{hint}; valid outputs: {', '.join(OUTPUTS)}")


def _parse_axes(output: str, rest: str) -> OutputSpec:
    """`axes:trace=2,diagonal=1` (several axes joined by '+', e.g. trace=2+3; `axes:none` keeps all)."""
    got = {"trace": (), "diagonal": ()}
    rest = rest.strip()
    if rest not in ("", "none"):
        for part in rest.split(","):
            key, _, val = part.partition("=")
            key = key.strip()
            if key not in got or not re.fullmatch(r"\s*-?\d+(\s*\+\s*-?\d+)*\s*", val):
                raise ValueError(f"output={output!r}: write axes as 'axes:trace=A[+B...],diagonal=C[+D...]' with "
                                 "integer output axes (1..k or negative from the end), e.g. 'axes:trace=-1,diagonal=1'")
            got[key] = tuple(int(v) for v in val.split("+"))
    return OutputSpec("axes", None, got["trace"], got["diagonal"])
