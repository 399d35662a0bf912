"""Counting a forward pass's FLOPs for the cost model, at a fraction of FlopCounterMode's cost.

`torch.utils.flop_counter.FlopCounterMode` attributes every operator to the module that ran it
(hooks on every module, a dict per module), which `ntkit` does not need: it takes 0.65-5.5 ms
for a 2-sample probe forward that takes 0.33-2.8 ms with this mode (an MLP to a BERT on this
CPU), a saving of 0.3-2.7 ms per first call: about 3% of a dense net's 12 ms first call, under
1% of a BERT's, within timing noise at the level of whole calls. This mode counts the same
operators by the same formulas (`flop_registry`, the table FlopCounterMode reads), so the totals
are identical, and only the total is kept.
"""

from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["FlopCount"]

try:
    from torch.utils.flop_counter import flop_registry as _REGISTRY
except ImportError:  # pragma: no cover - older torch without the public table
    _REGISTRY = None


class FlopCount(TorchDispatchMode):
    """`with FlopCount() as c: ...` then `c.total`: the FLOPs FlopCounterMode would report."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self._fallback = None

    def __enter__(self):
        if _REGISTRY is None:
            from torch.utils.flop_counter import FlopCounterMode

            self._fallback = FlopCounterMode(display=False)
            self._fallback.__enter__()
            return self
        return super().__enter__()

    def __exit__(self, *exc):
        if self._fallback is not None:
            self._fallback.__exit__(*exc)
            self.total = self._fallback.get_total_flops()
            return None
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = _REGISTRY.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out

