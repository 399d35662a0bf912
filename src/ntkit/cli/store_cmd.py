"""`ntkit verify STORE`: check a kernel store, recompute a sample of its tiles from the stored
data and model specs (`ntkit.tiled.recompute`), and with --repair recompute damaged tiles."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ntkit.cli._ui import UserError, err, out, repair_notices


def _repair(ks, device: str | None, trust_code: Any = False, num_classes: int | None = None) -> list[str]:
    """Recompute the store's damaged and missing tiles through `ntkit.compute` (resume: under
    the store's lock, bad records dropped, the same method and plan); returns its notices.
    The model is rebuilt from the store's metadata (`ntkit.tiled.recompute.rebuild_from_store`)."""
    import ntkit
    from ntkit.store import StoreError
    from ntkit.tiled.recompute import rebuild_from_store

    net, rows, cols, _ = rebuild_from_store(
        ks, trust_code, num_classes, "it cannot be repaired here; call ntkit.compute again with the same "
        "model, data and options: it recomputes the damaged tiles")
    ident = ks.metadata["identity"]
    if device is not None:
        net = net.to(device)
    seen: list[str] = []
    try:
        with repair_notices(seen):
            ntkit.compute(net, rows, None if ks.symmetric else cols, store=ks.path, method=ident["method"],
                          output=ident.get("output", "trace"), params=ident.get("params") or None, device=device,
                          precision=ident.get("precision", "float32"))
    except StoreError as e:
        raise UserError(f"cannot repair {ks.path}: {e}") from None
    return seen


def verify(
    store: Path = typer.Argument(..., help="A kernel store written by `ntkit compute ... -o K.zarr`."),
    sample: int = typer.Option(2, "--sample", help="Tiles to recompute from the stored data and model "
                                                   "specs and compare (0: checks only)."),
    rtol: Optional[float] = typer.Option(None, "--rtol", help="Tolerance for recomputed tiles (default: "
                                                              "1e-4 float32, 1e-10 float64; stores computed "
                                                              "with --precision tf32x3 / tf32 are recomputed "
                                                              "in float64 and compared within 1e-5 / 3e-3)."),
    trust_code: Optional[list[str]] = typer.Option(None, "--trust-code", help="Let the store's model spec run "
                                                   "this code (repeatable): the PATH.py of a file:PATH.py:FACTORY "
                                                   "spec, or an exact spec. Without it, a spec from the store "
                                                   "that would run code is refused."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", min=1, help="The number of classes the "
                                              "store was computed with, when its labels do not make it "
                                              "plausible (needed for counts above max(2 x distinct labels, "
                                              "1024))."),
    repair: bool = typer.Option(False, "--repair", help="Recompute the tiles whose data are missing or "
                                "damaged (and any not computed yet) from the stored data and model specs, "
                                "then check again."),
    device: Optional[str] = typer.Option(None, "--device", help="With --repair: where tiles are recomputed "
                                         "(default: cpu)."),
) -> int:
    """Check a kernel store: complete, every tile matches its checksum, finite, symmetric, and
    a sample of tiles recomputed equal to the stored ones. Exit status 1 when anything is wrong.
    With --repair, damaged and missing tiles are recomputed first (status 0 once all is well)."""
    from ntkit.store import StoreError, open_store
    from ntkit.tiled.recompute import recompute_fn

    try:
        ks = open_store(store)
    except StoreError as e:
        raise UserError(str(e)) from None
    try:
        recompute = recompute_fn(ks, trust_code or False, num_classes) if sample > 0 else None
    except (KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{store}'s metadata are damaged ({type(e).__name__}: {e}), so tiles cannot be recomputed; "
                        "check its tiles with --sample 0, or compute it again with --overwrite") from None
    report = ks.verify(recompute=recompute, sample=sample, rtol=rtol)
    if repair and not report.ok:
        err.print(str(report), highlight=False, markup=False)
        before = {k: r.get("finished") for k, r in ks.records().items()}
        notices = _repair(ks, device, trust_code or False, num_classes)
        ks = open_store(store)
        redone = sorted((k for k, r in ks.records().items() if before.get(k) != r.get("finished")),
                        key=lambda k: tuple(int(v) for v in k.split(".")))
        err.print(f"repaired {store}: {len(redone)} tile(s) computed again"
                  + (f" ({', '.join(redone[:20])}{', ...' if len(redone) > 20 else ''})" if redone else "")
                  + ("" if notices else "; no recorded tile was damaged"), highlight=False)
        report = ks.verify(recompute=recompute, sample=sample, rtol=rtol)
    (out if report.ok else err).print(str(report), highlight=False, markup=False)
    return 0 if report.ok else 1
