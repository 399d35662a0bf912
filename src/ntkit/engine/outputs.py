"""Output modes of the eNTK and how each one reduces the logit axes.

Θ[n, m, a, b] = ⟨∂f_a(x1_n)/∂θ, ∂f_b(x2_m)/∂θ⟩. The reduction is decided *before* differentiating
where possible: `logit:K` and `pntk` differentiate one scalar per sample (O times cheaper), and
`trace`/`diagonal` never form the O×O blocks.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

OUTPUTS: tuple[str, ...] = ("full", "trace", "diagonal", "logit:K", "pntk")


@dataclass(frozen=True)
class OutputSpec:
    """A parsed `output=` string.

    kind: "full" | "trace" | "diagonal" | "logit" | "pntk"; logit: the K of `logit:K` (may be
    negative, Python-style, until :meth:`resolve` fixes it against O).
    """

    kind: str
    logit: int | None = None

    @property
    def scalar(self) -> bool:
        """True when one scalar per sample is differentiated (O' = 1)."""
        return self.kind in ("logit", "pntk")

    def n_out(self, n_logits: int) -> int:
        """O', the number of per-sample outputs that are differentiated."""
        return 1 if self.scalar else n_logits

    def resolve(self, n_logits: int) -> OutputSpec:
        """Check `logit:K` against the model's O and make K non-negative."""
        if self.kind != "logit":
            return self
        k = self.logit if self.logit is not None else 0
        if not -n_logits <= k < n_logits:
            raise ValueError(
                f"output='logit:{k}' is out of range: the model has O = {n_logits} logits, "
                f"so K must be in 0..{n_logits - 1}"
            )
        return OutputSpec("logit", k % n_logits)

    def shape(self, n1: int, n2: int, n_logits: int) -> tuple[int, ...]:
        """The returned kernel's shape for N1 × N2 inputs and O logits."""
        if self.kind == "full":
            return (n1, n2, n_logits, n_logits)
        if self.kind == "diagonal":
            return (n1, n2, n_logits)
        return (n1, n2)

    def __str__(self) -> str:
        return f"logit:{self.logit}" if self.kind == "logit" else self.kind


def parse_output(output: str | OutputSpec) -> OutputSpec:
    """Parse `"full" | "trace" | "diagonal" | "logit:K" | "pntk"` into an :class:`OutputSpec`."""
    if isinstance(output, OutputSpec):
        return output
    if not isinstance(output, str):
        raise TypeError(f"output must be a string, one of {', '.join(OUTPUTS)}; got {output!r}")
    text = output.strip().lower()
    if text in ("full", "trace", "diagonal", "pntk"):
        return OutputSpec(text)
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
