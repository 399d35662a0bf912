"""`ntkit compute`: the empirical NTK of a model on data, as K.npy (in memory, a .json sidecar
with the metadata) or a tiled, resumable store K.zarr.

Errors in user input print one message that names the fix and exit with status 2; nothing
half-written is left behind (results are written to a temporary name and renamed into place,
the `.npy` first and its JSON sidecar last).
"""

from __future__ import annotations

import inspect
import json
import platform
import shlex
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import typer

from ntkit.cli._ui import (ARGV, DTYPES, Bar, UserError, atomic_save_npy, atomic_write_text, err, out,
                           repair_notices, sidecar_path)
from ntkit.cli.progress import WorkBar


def compute(
    data: str = typer.Argument(..., help="Data spec for the rows, e.g. digits, 'cifar10\\[train:0:1000]', "
                                          "CIFAR-10_0_2500_0_1000, npz:PATH."),
    model: str = typer.Argument(..., help="Model spec, e.g. cnn, 'mlp:depth=3,width=512', resnet18, "
                                           "file:net.py:make."),
    output_path: Path = typer.Option(..., "-o", "--out", help="Where to write the kernel: K.npy (in memory, "
                                     "a .json sidecar with the metadata next to it) or a resumable tiled "
                                     "store K.zarr (any kernel size; rerun the command to resume)."),
    cols: Optional[str] = typer.Option(None, "--cols", help="Data spec for the columns (default: the rows, "
                                                             "a symmetric kernel; the empirical-ntks form sets its own)."),
    method: str = typer.Option("auto", "--method", "-m", help="auto | jacobian | ntk-vp | structured"),
    output: str = typer.Option("trace", "--output", help="full | trace | diagonal | logit:K | pntk"),
    params: Optional[list[str]] = typer.Option(None, "--params", help="Parameter names or globs to "
                                                                      "differentiate (repeatable), e.g. 'fc.*'."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Inputs per block (default: the "
                                                                        "largest under --memory); .npy only."),
    memory: Optional[str] = typer.Option(None, "--memory", help="Working-memory budget, e.g. 2GB "
                                                                "(default: a quarter of free memory)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: cpu)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | float64"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder with CIFAR/MNIST files "
                                                                     "(default: $NTKIT_DATA)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="A state dict to load "
                                                                   "(torch.load with weights_only=True)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the model's initial weights (without --weights)."),
    explain: bool = typer.Option(False, "--explain", help="Print the cost model's estimates and the plan."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file or store."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Store only: tiles on a local Dask "
                                          "cluster of N processes (one per GPU with --device cuda)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Store only: address of a running "
                                            "Dask scheduler (dask-jobqueue, Kubernetes, ...)."),
    tile: Optional[int] = typer.Option(None, "--tile", help="Store only: tile side (default: the largest "
                                       "under --memory, at most 4096)."),
    precision: str = typer.Option("float32", "--precision", help="float32 (TF32 off on CUDA) | tf32 (~1e-3) | "
                                  "tf32x3 (Gram step as three TF32 products, float32-level accuracy; "
                                  "not with --method ntk-vp)."),
    features: str = typer.Option("auto", "--features", help="Store only: auto | recompute | disk: "
                                 "Jacobian rows recomputed by every tile, or computed once into the "
                                 "store and read back (auto: decided from measured rates)."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", min=1, help="Number of classes (model outputs) when the labels do not say it, e.g. a subset of ImageNet-21k by class id (default: the data set's own, or max(y) + 1 of an npz file when that is under max(2 x distinct labels, 1024))."),
) -> int:
    """Compute the empirical NTK of MODEL on DATA: K.npy (+ .json sidecar) or a tiled store K.zarr.

    The result has shape (N1, N2[, O[, O]]) by --output. A .npy kernel is computed in memory; a
    .zarr store is filled tile by tile under --memory, survives crashes and Ctrl-C (run the same
    command again to resume), and can use Dask workers. Examples:
    ntkit compute digits cnn -o K.npy;  ntkit compute CIFAR-10_0_2500_0_1000 resnet18 -o K.zarr
    """
    import torch

    import ntkit
    from ntkit.cli.errors import check_device, check_free_space, check_seed, check_writable
    from ntkit.data import resolve_kernel_data
    from ntkit.engine.api import parse_method
    from ntkit.engine.outputs import parse_output
    from ntkit.models import build_model, parse_model_spec

    timings: dict[str, float] = {}
    t = time.perf_counter()
    to_store = output_path.suffix == ".zarr" or (output_path / "zarr.json").exists()
    if output_path.suffix != ".npy" and not to_store:
        raise UserError(f"output {output_path} must end in .npy (computed in memory, metadata in a .json "
                        "sidecar) or .zarr (a tiled, resumable store for kernels of any size)")
    if not to_store and (workers or scheduler or tile or features != "auto"):
        raise UserError("--workers, --scheduler, --tile and --features need a store: write to K.zarr "
                        "instead of .npy")
    if workers and scheduler:
        raise UserError("give --workers N (a local cluster) or --scheduler ADDRESS, not both")
    if output_path.exists() and not overwrite and not to_store:
        raise UserError(f"{output_path} exists; pass --overwrite to replace it")
    if dtype not in DTYPES:
        raise UserError(f"unknown --dtype {dtype!r}; use float32 or float64")
    method = parse_method(method)
    _check_compute_options(method, precision, batch_size, to_store)
    parse_output(output)
    torch_dtype = getattr(torch, DTYPES[dtype])
    check_seed(seed)
    check_device(device)
    check_writable(output_path, "store" if to_store else "kernel", directory=to_store)

    from ntkit.cli.implied import implied_data

    (data, cols), note = implied_data(model, data, cols)  # resnet-18_pretrained: 224 px, ImageNet's mean/std
    if note and (explain or not quiet):
        (out if explain else err).print(note, highlight=False, markup=False, soft_wrap=True)
    rows, col_ds = resolve_kernel_data(data, data_dir, cols=cols, num_classes=num_classes)
    # A store streams its inputs tile by tile; the in-memory path takes them all at once.
    from ntkit.engine.inputs import as_inputs  # keyword inputs (an npz of input_ids, ...) as one batch

    x1 = as_inputs(rows[0:1][0] if to_store else rows.tensors()[0], "rows")
    x2 = None if col_ds is None else as_inputs(col_ds[0:1][0] if to_store else col_ds.tensors()[0], "cols")
    timings["load_data_s"] = time.perf_counter() - t

    t = time.perf_counter()
    if rows.num_classes <= 0:
        raise UserError(f"data {rows.spec} has no labels, so the number of model outputs is unknown: give it "
                        "with --num-classes N (or add labels y to the file)")
    net = build_model(model, rows.input_shape, rows.num_classes, seed=seed, weights=weights).to(torch_dtype)
    if x1.is_floating_point():
        x1 = x1.to(torch_dtype)
        x2 = None if x2 is None else x2.to(torch_dtype)
    if device is not None:
        net = net.to(device)
        x1 = x1.to(device)
        x2 = None if x2 is None else x2.to(device)
    timings["build_model_s"] = time.perf_counter() - t

    if to_store:
        return compute_store(
            net=net, rows=rows, cols=col_ds, output_path=output_path, model_spec=str(parse_model_spec(model)),
            weights=weights, seed=seed, data_dir=data_dir, method=method, output=output, params=params,
            memory=memory, device=device, workers=workers, scheduler=scheduler, tile=tile,
            precision=precision, features=features, overwrite=overwrite, quiet=quiet, explain=explain,
            timings=timings,
            command=shlex.join(["ntkit", *ARGV]))
    kw = dict(output=output, params=params or None, batch_size=batch_size, memory=memory)
    from ntkit.cli.interrupts import mark_reported
    from ntkit.engine.progress import Interrupt
    from ntkit._runtime.precision import matmul_precision

    # Ctrl-C from here on: the first stops at the next step of the engine (said at once, with
    # how long that step still needs), the second at once; nothing is written either way.
    bars: list[Bar] = []
    written: list[Path] = []

    def stuck() -> None:  # a second Ctrl-C inside one long torch operation: the process ends now
        from ntkit._runtime.files import temporary_prefix

        temporaries = [f for p in (output_path, sidecar_path(output_path))
                       for f in p.parent.glob(f"{temporary_prefix(p)}*.tmp")]
        for f in (*written, *temporaries):
            f.unlink(missing_ok=True)
        err.print("[red]interrupted[/red]: stopped now; nothing was written")

    stop = Interrupt(on_first=lambda: bars[0].ack_npy() if bars else Bar("", enabled=False).ack_npy(),
                     on_stuck=stuck)
    try:
        with stop:
            plan = ntkit.plan(net, x1, x2, **kw)
            chosen = plan.method if method == "auto" else method
            if explain:
                out.print(str(plan), highlight=False, markup=False)
            # the whole kernel must fit on the disk: found out now, not after computing it
            k_shape = plan.shape
            check_free_space(output_path, 128 + int(torch.empty((), dtype=torch_dtype).element_size())
                             * int(torch.Size(k_shape).numel()), "kernel")
            bar = Bar(f"eNTK {rows.spec} x {col_ds.spec if col_ds is not None else 'same'} [{chosen}]",
                       enabled=not quiet, entries=plan.n1 * plan.n2)
            bars.append(bar)

            def progress(done: int, total: int, detail: str = "") -> None:
                bar(done, total, detail=detail)
                if stop.requested:  # the first Ctrl-C: stop at this step's end
                    raise KeyboardInterrupt

            if stop.requested:
                raise KeyboardInterrupt
            t = time.perf_counter()
            try:
                # --precision is honoured here as by a store's tiles (see ntkit.tiled.worker).
                with matmul_precision(next(net.parameters()).device, precision):
                    K = ntkit.ntk(net, x1, x2, method=chosen, progress=progress, **kw)
                if K.is_cuda:
                    torch.cuda.synchronize()
            finally:
                bar.close()
            timings["compute_s"] = time.perf_counter() - t
            late = stop.requested  # Ctrl-C after the last step: the kernel is whole, so it is written

            bar.saving = True  # a first Ctrl-C now lets the save finish; a second stops it
            t = time.perf_counter()
            output_path.parent.mkdir(parents=True, exist_ok=True)
            sidecar = sidecar_path(output_path)
            if sidecar.exists():
                sidecar.unlink()  # a stale sidecar must never describe the new array
            atomic_save_npy(output_path, K.cpu().numpy())
            written.append(output_path)
            timings["save_s"] = time.perf_counter() - t
            _write_npy_sidecar(sidecar, rows, col_ds, model, weights, seed, net, plan, params, method, chosen,
                               output, dtype, precision, K, x2, timings)
            written.clear()
    except KeyboardInterrupt:
        for f in written:  # the array without its sidecar would look whole: removed
            f.unlink(missing_ok=True)
        err.print("[red]interrupted[/red]: nothing was written")
        mark_reported()
        return 130
    if not quiet:
        n_entries = K.shape[0] * K.shape[1]
        out.print(
            f"wrote {output_path} {tuple(K.shape)} {DTYPES[dtype]} ({chosen}, "
            + ("" if precision == "float32" else f"precision {precision}, ")
            + f"{timings['compute_s']:.2f} s, "
            f"{n_entries / max(timings['compute_s'], 1e-9):,.0f} entries/s) and {sidecar}",
            highlight=False, markup=False,
        )
    if late:
        err.print("Ctrl-C came after the kernel was computed, so it was written", highlight=False, markup=False,
                  soft_wrap=True)
    return 0


def _write_npy_sidecar(sidecar: Path, rows, col_ds, model: str, weights, seed: int, net, plan, params, method: str,
                       chosen: str, output: str, dtype: str, precision: str, K, x2, timings: dict[str, float]) -> None:
    """The .json metadata written next to a computed K.npy (last, so that it marks the array whole)."""
    import torch

    import ntkit
    from ntkit.models import model_fingerprint, parse_model_spec, seed_matters

    meta = {
        "format": "ntkit.kernel.v1",
        "ntkit_version": ntkit.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["ntkit", *ARGV]),
        "data": {"rows": rows.spec, "cols": col_ds.spec if col_ds is not None else None,
                 "rows_fingerprint": rows.fingerprint(),
                 "cols_fingerprint": col_ds.fingerprint() if col_ds is not None else None,
                 "input_shape": list(rows.input_shape), "num_classes": rows.num_classes},
        "model": {"spec": str(parse_model_spec(model)), "seed": seed if seed_matters(model, weights) else None,
                  "weights": str(weights) if weights else None, "fingerprint": model_fingerprint(net),
                  "n_params": plan.n_params, "params": params or None},
        "method": {"requested": method, "used": chosen, "estimates": plan.estimates},
        "output": plan.output,
        "dtype": DTYPES[dtype],
        "precision": precision,
        "device": str(K.device),
        "shape": list(K.shape),
        "symmetric": x2 is None,
        "n_logits": plan.n_logits,
        "timings": {k: round(v, 4) for k, v in timings.items()},
    }
    atomic_write_text(sidecar, json.dumps(meta, indent=2) + "\n")




def _check_compute_options(method: str, precision: str, batch_size: int | None, to_store: bool) -> None:
    """Options `ntkit compute` would otherwise ignore: refused here, each with the fix."""
    from ntkit._runtime.precision import PRECISIONS

    if precision not in PRECISIONS:
        raise UserError(f"unknown --precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "tf32x3" and method == "ntk-vp":
        raise UserError("--precision tf32x3 splits the Gram step J1·J2ᵀ, which --method ntk-vp does not have; "
                        "use --method jacobian or structured, or --precision float32")
    if batch_size is not None and to_store:
        raise UserError("--batch-size sets the blocks of an in-memory .npy kernel; a store plans its tiles and "
                        "blocks under --memory and keeps them fixed (so a resume is bit-identical): drop "
                        "--batch-size and use --memory (or --tile for the tile side)")
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size must be a positive number of inputs, got {batch_size}")



# ---------------------------------------------------------------------------------------------
# The store branch: -o K.zarr


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

def compute_store(*, net, rows, cols, output_path: Path, model_spec: str, weights, seed: int, data_dir,
                  method: str, output: str, params, memory, device, workers, scheduler, tile,
                  precision: str, overwrite: bool, quiet: bool, explain: bool, timings: dict[str, float],
                  command: str, features: str = "auto") -> int:
    """The store branch of `ntkit compute` (called by it after data and model are built)."""
    import ntkit
    from ntkit.models import seed_matters
    from ntkit.store import StoreError
    from ntkit.store.lock import holds_lock, store_lock

    if not holds_lock(output_path):
        # Locked before the store is looked at: the loser of two simultaneous starts is told who
        # is writing, not that a half-created store "exists".
        args = dict(locals())
        with repair_notices(), store_lock(output_path, command=command):
            return compute_store(**{k: args[k] for k in inspect.signature(compute_store).parameters})
    resuming = output_path.exists() and not overwrite
    if resuming and not (output_path / "zarr.json").exists():
        raise UserError(f"{output_path} exists and is not a kernel store; pass --overwrite or choose another path")
    metadata = {
        "data": {"rows": rows.spec, "cols": None if cols is None else cols.spec,
                 "data_dir": None if data_dir is None else str(Path(data_dir).resolve()),
                 "input_shape": list(rows.input_shape), "num_classes": rows.num_classes},
        "model": {"spec": model_spec, "seed": seed if seed_matters(model_spec, weights) else None,
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

