"""`ntkit compute ... -o K.zarr` (tiled, resumable), `ntkit info STORE`, `ntkit verify STORE`."""

from __future__ import annotations

import contextlib
import inspect
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import typer

from ntkit.cli.app import UserError, app, err, out
from ntkit.cli.progress import WorkBar


class _TileBar(WorkBar):
    """Progress in kernel entries (so the rate is entries/s) with the tile count beside it, moving
    inside a tile with the engine's steps. `on_start(store)` runs once the store is checked or
    created, before its first tile (the plan, a resume, a complete store are said then)."""

    def __init__(self, description: str, enabled: bool, delay: float = 2.0, on_start=None) -> None:
        super().__init__(description, err, delay=delay, enabled=enabled, in_entries=True)
        self.on_start = on_start
        self.before: tuple[int, int] | None = None  # the store's (tiles done, tiles) when this run began

    def __call__(self, done: int, total: int, tiles: tuple[int, int] | None = None, detail: str = "",
                 current: tuple[int, int] | None = None, store: Any = None) -> None:
        first = store is not None and self.before is None
        if first:
            self.before = store.progress
        super().__call__(done, total, tiles=tiles, detail=detail, current=current)  # the first tile begins
        if first and self.on_start is not None:
            self.on_start(store)


@contextlib.contextmanager
def _repair_notices(seen: list[str] | None = None):
    """Print the store's repair and lock warnings as one line each when they happen (others as
    usual); `seen` collects their messages."""
    from ntkit.store import StoreLockWarning, StoreRepairWarning

    show = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, (StoreRepairWarning, StoreLockWarning)):
            if seen is not None:
                seen.append(str(message))
            err.print("[yellow]warning:[/yellow] ", end="")
            err.print(str(message), markup=False, highlight=False, soft_wrap=True)
        else:
            show(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", StoreRepairWarning)
        warnings.showwarning = showwarning
        yield


def compute_store(*, net, rows, cols, output_path: Path, model_spec: str, weights, seed: int, data_dir,
                  method: str, output: str, params, memory, device, workers, scheduler, tile,
                  precision: str, overwrite: bool, quiet: bool, explain: bool, timings: dict[str, float],
                  command: str, features: str = "auto") -> int:
    """The store branch of `ntkit compute` (called by it after data and model are built)."""
    import ntkit
    from ntkit.store import StoreError
    from ntkit.store.lock import holds_lock, store_lock

    if not holds_lock(output_path):
        # Locked before the store is looked at: the loser of two simultaneous starts is told who
        # is writing, not that a half-created store "exists".
        args = dict(locals())
        with _repair_notices(), store_lock(output_path, command=command):
            return compute_store(**{k: args[k] for k in inspect.signature(compute_store).parameters})
    resuming = output_path.exists() and not overwrite
    if resuming and not (output_path / "zarr.json").exists():
        raise UserError(f"{output_path} exists and is not a kernel store; pass --overwrite or choose another path")
    metadata = {
        "data": {"rows": rows.spec, "cols": None if cols is None else cols.spec,
                 "data_dir": None if data_dir is None else str(Path(data_dir).resolve()),
                 "input_shape": list(rows.input_shape), "num_classes": rows.num_classes},
        "model": {"spec": model_spec, "seed": None if weights else seed,
                  "weights": None if weights is None else str(Path(weights).resolve())},
        "command": command,
    }
    client = None
    if scheduler:
        from distributed import Client

        try:
            client = Client(scheduler, timeout="20s")
        except OSError as e:
            raise UserError(f"cannot reach the Dask scheduler at {scheduler} ({e}); start one with "
                            "`dask scheduler` or use --workers N for a local cluster") from None

    def on_start(ks) -> None:
        # Said once the store is checked (a refused resume says nothing about resuming) and
        # before any tile is computed (the plan from the first second, not after the run).
        done, total = ks.progress
        if explain:
            _print_store_plan(ks.metadata)
        if 0 < done < total and not quiet:
            out.print(f"resuming {output_path}: {done}/{total} tiles already done", highlight=False, markup=False,
                      soft_wrap=True)

    from rich.markup import escape

    from ntkit.cli.interrupts import mark_reported
    from ntkit.engine.progress import Interrupt

    bar = _TileBar(f"eNTK {rows.spec} x {cols.spec if cols is not None else 'same'}", enabled=not quiet,
                   on_start=on_start)
    bar.distributed = bool(workers or scheduler or client)
    t = time.perf_counter()
    def stuck() -> None:  # a second Ctrl-C inside one long torch operation: the process ends now
        done, total = bar.tiles or (None, None)
        kept = f"the {done}/{total} finished tiles" if done is not None else "the finished tiles"
        err.print(f"[red]interrupted[/red]: stopped now, during a tile; {kept} in {escape(str(output_path))} are "
                  "kept; run the same command again to resume")

    # Dask: the main thread waits on futures in Python, so a second Ctrl-C acts without a hard stop
    stop = Interrupt(on_first=bar.ack_store, on_stuck=None if bar.distributed else stuck)
    try:
        with stop:
            ks = ntkit.compute(net, rows, cols, store=output_path, method=method, output=output,
                               params=params or None, memory=memory, device=device, client=client,
                               workers=workers, tile=tile, overwrite=overwrite, precision=precision,
                               features=features, progress=bar, metadata=metadata)
    except KeyboardInterrupt as e:  # ComputeInterrupted (the first Ctrl-C) or the second Ctrl-C
        bar.close()
        mark_reported()
        return _say_interrupted(output_path, bar, e, workers=workers, scheduler=scheduler)
    except StoreError as e:
        raise UserError(str(e)) from None
    finally:
        bar.close()
        if client is not None:
            client.close()
    seconds = time.perf_counter() - t
    meta = ks.metadata
    before = bar.before
    if before and before[0] == before[1]:
        if not quiet:
            out.print(f"{output_path} is already complete ({before[1]} tiles); nothing computed", highlight=False,
                      markup=False, soft_wrap=True)
        return 0
    if resuming and not quiet and (memory is not None or tile is not None):
        _print_kept_plan(meta, memory, tile)
    if not quiet:
        rate = ks.throughput()
        out.print(f"wrote {output_path} {ks.shape} {ks.dtype} ({meta['method_used']}, {seconds:.2f} s this run"
                  + (f", {rate:,.0f} entries/s" if rate else "") + ")", highlight=False, markup=False)
    if stop.requested:
        mark_reported()
        err.print(f"{output_path} is complete ({ks.progress[1]} tiles): Ctrl-C came during its last tile, which "
                  "was finished", highlight=False, markup=False, soft_wrap=True)
    return 0


def _print_store_plan(meta: dict[str, Any]) -> None:
    """--explain for a store: its tiles, memory plan, method and how tiles get their Jacobian rows."""
    p = meta["plan"]
    f = p.get("features") or {}
    # tiles met per input; with the disk cache each input's rows are computed once
    passes = "once (cached on disk)" if f.get("strategy") == "disk" else f"{p['jacobian_passes']}x"
    out.print(f"plan: tiles {p['tile_rows']} x {p['tile_cols']} ({p['n_tiles']} to compute), engine memory "
              f"{p['engine_memory'] / 2**20:.0f} MiB, planned peak {p['planned_peak'] / 2**20:.0f} MiB of "
              f"{p['budget'] / 2**20:.0f} MiB over the process's start"
              + (f" (of which {p['process_held'] / 2**20:.0f} MiB already held: code loaded on first use, "
                 f"data, model; {p['allocator_reserve'] / 2**20:.0f} MiB reserved for the allocator)"
                 if p.get("process_held") is not None else "")
              + f", each input's Jacobian computed {passes}; "
              f"method {meta['method_used']} (asked: {meta['method_requested']})", highlight=False,
              markup=False)
    if f:
        out.print(f"Jacobian rows: {f['strategy']}"
                  + (f" ({f['disk_bytes'] / 1e9:.3g} GB of features, chunks of {f['chunk']} parameters)"
                     if f["strategy"] == "disk" else "")
                  + (f": {f['reason']}" if f.get("reason") else ""), highlight=False, markup=False)


def _say_interrupted(path: Path, bar: _TileBar, e: BaseException, *, workers, scheduler) -> int:
    """The last word on a Ctrl-C of a store's computation, from the store as it is now: exit
    status 130, or 0 when the store got complete anyway."""
    from ntkit.store import KernelStore, StoreError

    cluster = (" (the local Dask cluster was shut down)" if workers else
               "; tiles still running on the Dask cluster may finish and be kept" if scheduler else "")
    if bar.before is None:  # stopped while planning: no tile was computed
        err.print("[yellow]interrupted[/yellow]: ", end="")
        err.print("before any tile was computed; " + (f"{path} is as it was" if path.exists() else
                  "nothing was written") + cluster, highlight=False, markup=False, soft_wrap=True)
        return 130
    try:
        ks = KernelStore(path)
        done, total = ks.progress
    except (StoreError, OSError, KeyError, ValueError):
        err.print("[yellow]interrupted[/yellow]: ", end="")
        err.print(str(e) or "stopped", highlight=False, markup=False, soft_wrap=True)
        return 130
    if done == total:
        err.print(f"{path} is complete ({total} tiles): Ctrl-C came during its last tile, which was finished; "
                  "run the same command again to record it as complete" if not ks.metadata.get("complete")
                  else f"{path} is complete ({total} tiles)", highlight=False, markup=False, soft_wrap=True)
        return 0
    err.print("[yellow]interrupted[/yellow]: ", end="")
    err.print(f"{done}/{total} tiles done in {path}, run the same command again to resume" + cluster,
              highlight=False, markup=False, soft_wrap=True)
    return 130


def _print_kept_plan(meta: dict[str, Any], memory: str | None, tile: int | None) -> None:
    """Say that a resume kept the store's plan under the --memory / --tile it was given (a plan
    that did not fit, or another tile, was refused by ntkit.compute)."""
    p = meta["plan"]
    given = " and ".join(x for x in (f"--memory {memory}" if memory is not None else "",
                                     f"--tile {tile}" if tile is not None else "") if x)
    out.print(f"resumed with the store's own plan (fixed when it was created, so the result stays bit-identical): "
              f"tiles {p['tile_rows']} x {p['tile_cols']}, engine memory {p['engine_memory'] / 2**20:.0f} MiB, "
              f"planned peak {p['planned_peak'] / 2**20:.0f} MiB, which {given} allows", highlight=False)


def store_info(path: Path) -> int:
    """`ntkit info STORE`: shape, progress, throughput and metadata."""
    from ntkit.store import StoreError, open_store

    try:
        ks = open_store(path)
    except StoreError as e:
        raise UserError(str(e)) from None
    done, total = ks.progress
    meta = ks.metadata
    rate = ks.throughput()
    out.print(f"{path}: kernel {ks.shape} {ks.dtype}, output {meta.get('output')}, "
              f"{'symmetric' if ks.symmetric else 'rectangular'}", highlight=False, markup=False)
    out.print(f"progress: {done}/{total} tiles ({100 * done / max(total, 1):.1f}%)"
              + (f", {rate:,.0f} entries/s of compute" if rate else "")
              + ("" if done == total else "; run the same compute command again to resume"), highlight=False,
              markup=False)
    out.print_json(data=meta)
    return 0


def _stored_num_classes(rows, stored: Any, num_classes: int | None) -> int:
    """The model's outputs for `verify`: --num-classes, else the store's count when its labels
    make it plausible (the metadata is read from a file: a count of 10**9 must not size a model)."""
    from ntkit.data.labels import class_bound

    if num_classes is not None:
        return num_classes  # checked against the labels when the data was loaded
    labels = rows.labels.numpy()
    top = int(labels.max()) if len(labels) else -1
    if isinstance(stored, int) and not isinstance(stored, bool) and stored > top:
        bound = class_bound(labels)
        if stored > bound:
            raise UserError(f"the store's metadata says {stored:,} classes, more than ntkit infers from its "
                            f"labels without being told (at most {bound:,}): if that is right, pass "
                            f"--num-classes {stored} (or --sample 0 to skip recomputing tiles)")
        return stored
    return rows.num_classes


def _rebuild_from_store(ks, trust_code: Any, num_classes: int | None, no_specs: str) -> tuple[Any, Any, Any, Any]:
    """(model, rows, cols, dtype) rebuilt from a store's metadata (its data and model specs).

    The model spec is read from the store, so it runs no code unless `trust_code` names it
    (`--trust-code`, see `ntkit.models.trust`). `no_specs`: what to do when the store was
    written by the Python API and has no specs."""
    import torch

    from ntkit.data import resolve_kernel_data
    from ntkit.models import build_model, untrusted_source

    meta = ks.metadata
    d, m, ident = meta.get("data") or {}, meta.get("model") or {}, meta.get("identity") or {}
    if not isinstance(d, dict) or not isinstance(m, dict) or not isinstance(ident, dict) or "method" not in ident:
        raise UserError(f"{ks.path}'s metadata are damaged, so its model cannot be rebuilt; check its tiles with "
                        "--sample 0, or compute it again with --overwrite")
    if not d.get("rows") or not m.get("spec"):
        raise UserError(f"{ks.path} was written by the Python API without data and model specs; {no_specs}")
    dtype = getattr(torch, str(ident.get("dtype")), None)
    if not isinstance(dtype, torch.dtype):
        raise UserError(f"{ks.path}'s metadata are damaged (dtype {ident.get('dtype')!r}); compute it again with "
                        "--overwrite")
    rows, cols = resolve_kernel_data(d["rows"], d.get("data_dir"), cols=d.get("cols"), num_classes=num_classes)
    n_classes = _stored_num_classes(rows, d.get("num_classes"), num_classes)
    with untrusted_source(f"the store {ks.path}", trust_code):
        net = build_model(m["spec"], rows.input_shape, n_classes, seed=m.get("seed") or 0,
                          weights=m.get("weights")).to(dtype)
    return net, rows, cols, dtype


def _recompute_fn(ks, trust_code: Any = False, num_classes: int | None = None) -> Any:
    """A `tile -> array` recomputation from the store's metadata (data and model specs; see
    `_rebuild_from_store`)."""
    import torch

    from ntkit.tiled.sources import DataSource, tile_inputs
    from ntkit.models import model_fingerprint
    from ntkit.store.kernel_store import PRECISION_RTOL
    from ntkit.tiled.worker import TileJob, compute_tile

    net, rows, cols, dtype = _rebuild_from_store(
        ks, trust_code, num_classes, "tiles cannot be recomputed here; use --sample 0, or "
        "KernelStore.verify(recompute=...)")
    meta = ks.metadata
    ident = meta["identity"]
    if model_fingerprint(net) != ident["model"]:
        raise UserError("the model rebuilt from the store's metadata has other weights than the one that "
                        "computed it (changed --weights file or code?); use --sample 0")
    precision, work = ident.get("precision", "float32"), dtype
    if precision in PRECISION_RTOL and dtype == torch.float32:
        # Reduced-precision products are checked against float64 (see KernelStore.verify): a
        # float64 copy of the float32 model and inputs the store was computed from.
        work, net, precision = torch.float64, net.to(torch.float64), "float32"
    src_r = DataSource(rows, "rows")
    src_c = None if ks.symmetric else DataSource(cols, "cols")
    job = TileJob(model=net, method=meta["method_used"], output=meta["output"],
                  params=tuple(ident["params"]) if ident.get("params") else None,
                  engine_memory=int(meta["plan"]["engine_memory"]), precision=precision)

    def prep(x):
        return x.to(dtype).to(work) if x.is_floating_point() else x

    def recompute(tile):
        xr, xc = tile_inputs(tile, src_r, src_c, prep)
        return compute_tile(job, tile, xr, xc)

    return recompute


def _repair(ks, device: str | None, trust_code: Any = False, num_classes: int | None = None) -> list[str]:
    """Recompute the store's damaged and missing tiles through `ntkit.compute` (resume: under
    the store's lock, bad records dropped, the same method and plan); returns its notices.
    The model is rebuilt from the store's metadata (`_rebuild_from_store`)."""
    import ntkit
    from ntkit.store import StoreError

    net, rows, cols, _ = _rebuild_from_store(
        ks, trust_code, num_classes, "it cannot be repaired here; call ntkit.compute again with the same "
        "model, data and options: it recomputes the damaged tiles")
    ident = ks.metadata["identity"]
    if device is not None:
        net = net.to(device)
    seen: list[str] = []
    try:
        with _repair_notices(seen):
            ntkit.compute(net, rows, None if ks.symmetric else cols, store=ks.path, method=ident["method"],
                          output=ident.get("output", "trace"), params=ident.get("params") or None, device=device,
                          precision=ident.get("precision", "float32"))
    except StoreError as e:
        raise UserError(f"cannot repair {ks.path}: {e}") from None
    return seen


@app.command()
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

    try:
        ks = open_store(store)
    except StoreError as e:
        raise UserError(str(e)) from None
    try:
        recompute = _recompute_fn(ks, trust_code or False, num_classes) if sample > 0 else None
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
