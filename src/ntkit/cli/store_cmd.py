"""`ntkit compute ... -o K.zarr` (tiled, resumable), `ntkit info STORE`, `ntkit verify STORE`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer

from ntkit.cli.app import UserError, app, err, out


class _TileBar:
    """Progress in kernel entries (so the rate is entries/s) with the tile count beside it."""

    def __init__(self, description: str, enabled: bool, delay: float = 2.0) -> None:
        self.description, self.enabled, self.delay = description, enabled, delay
        self.t0 = time.perf_counter()
        self.first: int | None = None
        self.progress = None
        self.task = None

    def __call__(self, done: int, total: int, tiles: tuple[int, int] = (0, 0)) -> None:
        if self.first is None:
            self.first = done  # entries already in the store when resuming: not this run's rate
            return
        if not self.enabled:
            return
        if self.progress is None:
            if time.perf_counter() - self.t0 < self.delay and done < total:
                return
            from rich.progress import (BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                                     TextColumn("{task.fields[tiles]}"), TextColumn("{task.fields[rate]}"),
                                     TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                     console=err, transient=False)
            self.progress.start()
            self.task = self.progress.add_task(self.description, total=total, completed=self.first,
                                               tiles="", rate="")
        rate = (done - self.first) / max(time.perf_counter() - self.t0, 1e-9)
        self.progress.update(self.task, completed=done, total=total, rate=f"{rate:,.0f} entries/s",
                             tiles=f"tiles {tiles[0]}/{tiles[1]}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def compute_store(*, net, rows, cols, output_path: Path, model_spec: str, weights, seed: int, data_dir,
                  method: str, output: str, params, memory, device, workers, scheduler, tile,
                  precision: str, overwrite: bool, quiet: bool, explain: bool, timings: dict[str, float],
                  command: str, features: str = "auto") -> int:
    """The store branch of `ntkit compute` (called by it after data and model are built)."""
    import ntkit
    from ntkit.distributed import ComputeInterrupted
    from ntkit.store import KernelStore, StoreError

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
    before = KernelStore(output_path).progress if resuming else None
    if before and not quiet:
        out.print(f"resuming {output_path}: {before[0]}/{before[1]} tiles already done", highlight=False)
    bar = _TileBar(f"eNTK {rows.spec} x {cols.spec if cols is not None else 'same'}", enabled=not quiet)
    t = time.perf_counter()
    try:
        ks = ntkit.compute(net, rows, cols, store=output_path, method=method, output=output,
                           params=params or None, memory=memory, device=device, client=client,
                           workers=workers, tile=tile, overwrite=overwrite, precision=precision,
                           features=features, progress=bar, metadata=metadata)
    except ComputeInterrupted as e:
        bar.close()
        err.print(f"[yellow]interrupted[/yellow]: {e}", highlight=False)
        return 130
    except StoreError as e:
        raise UserError(str(e)) from None
    finally:
        bar.close()
        if client is not None:
            client.close()
    seconds = time.perf_counter() - t
    meta = ks.metadata
    if explain:
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
                  f"method {meta['method_used']} (asked: {meta['method_requested']})", highlight=False)
        if f:
            out.print(f"Jacobian rows: {f['strategy']}"
                      + (f" ({f['disk_bytes'] / 1e9:.3g} GB of features, chunks of {f['chunk']} parameters)"
                         if f["strategy"] == "disk" else "")
                      + (f": {f['reason']}" if f.get("reason") else ""), highlight=False)
    if not quiet:
        rate = ks.throughput()
        out.print(f"wrote {output_path} {ks.shape} {ks.dtype} ({meta['method_used']}, {seconds:.2f} s this run"
                  + (f", {rate:,.0f} entries/s" if rate else "") + ")", highlight=False)
    return 0


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
              f"{'symmetric' if ks.symmetric else 'rectangular'}", highlight=False)
    out.print(f"progress: {done}/{total} tiles ({100 * done / max(total, 1):.1f}%)"
              + (f", {rate:,.0f} entries/s of compute" if rate else "")
              + ("" if done == total else "; run the same compute command again to resume"), highlight=False)
    out.print_json(data=meta)
    return 0


def _recompute_fn(ks) -> Any:
    """A `tile -> array` recomputation from the store's metadata (data and model specs)."""
    import torch

    from ntkit.data import resolve_kernel_data
    from ntkit.distributed.compute import DataSource, _tile_inputs
    from ntkit.models import build_model, model_fingerprint
    from ntkit.store.kernel_store import PRECISION_RTOL
    from ntkit.store.worker import TileJob, compute_tile

    meta = ks.metadata
    d, m, ident = meta.get("data") or {}, meta.get("model") or {}, meta["identity"]
    if not d.get("rows") or not m.get("spec"):
        raise UserError(f"{ks.path} was written by the Python API without data and model specs, so "
                        "tiles cannot be recomputed here; use --sample 0, or KernelStore.verify(recompute=...)")
    rows, cols = resolve_kernel_data(d["rows"], d.get("data_dir"), cols=d.get("cols"))
    dtype = getattr(torch, ident["dtype"])
    net = build_model(m["spec"], rows.input_shape, rows.num_classes, seed=m.get("seed") or 0,
                      weights=m.get("weights")).to(dtype)
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
        xr, xc = _tile_inputs(tile, src_r, src_c, prep)
        return compute_tile(job, tile, xr, xc)

    return recompute


@app.command()
def verify(
    store: Path = typer.Argument(..., help="A kernel store written by `ntkit compute ... -o K.zarr`."),
    sample: int = typer.Option(2, "--sample", help="Tiles to recompute from the stored data and model "
                                                   "specs and compare (0: checks only)."),
    rtol: Optional[float] = typer.Option(None, "--rtol", help="Tolerance for recomputed tiles (default: "
                                                              "1e-4 float32, 1e-10 float64; stores computed "
                                                              "with --precision tf32x3 / tf32 are recomputed "
                                                              "in float64 and compared within 1e-5 / 3e-3)."),
) -> int:
    """Check a kernel store: complete, every tile matches its checksum, finite, symmetric, and
    a sample of tiles recomputed equal to the stored ones. Exit status 1 when anything is wrong."""
    from ntkit.store import StoreError, open_store

    try:
        ks = open_store(store)
    except StoreError as e:
        raise UserError(str(e)) from None
    recompute = _recompute_fn(ks) if sample > 0 else None
    report = ks.verify(recompute=recompute, sample=sample, rtol=rtol)
    (out if report.ok else err).print(str(report), highlight=False)
    return 0 if report.ok else 1
