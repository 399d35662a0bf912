"""`ntkit.compute`: a kernel of any size, tile by tile under a memory budget, into a resumable
store, in this process or on a Dask cluster.

One call:
1. probes the model on two inputs (logits, parameter sizes, activations per sample);
2. plans tiles with `ntkit.schedule.plan_tiles` so that one worker's peak memory (model, engine
   working memory, tile buffers, inputs) stays under the budget;
3. picks the method once for the whole kernel and fixes the engine's budget, so every tile — this
   run's or a resumed run's — is computed the same way. auto: the cost model on a full tile; when
   the budget splits a tile into blocks, both methods' per-sample work is timed on the tile's
   inputs and counted as the engine loops instead (`ntkit.tiled.choice`);
4. creates the store, or reopens it and checks that model, data and options are the same;
5. decides whether the tiles recompute their Jacobian rows or read them back from a cache of
   each input's rows on disk, in the store, shared by Dask workers (`ntkit.schedule.features`:
   the estimates are measured on this machine);
6. computes the tiles not yet recorded as done (upper triangle only for a symmetric kernel; each
   off-diagonal tile also fills its mirror), writes each durably and records it.
Ctrl-C stops at the next tile boundary (a second Ctrl-C stops at once); either way every tile
recorded is complete and the same call resumes. When the command line has installed its own
two-stage handler (`ntkit.engine.progress.Interrupt`), that one decides, and prints what happens.
"""

from __future__ import annotations

import inspect
import os
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ntkit._runtime.precision import PRECISIONS
from ntkit.engine.memory import acc_entry_bytes, engine_minimum, host_overhead
from ntkit.schedule import Tile, plan_tiles
from ntkit.schedule.features import STRATEGIES as FEATURE_STRATEGIES
from ntkit.schedule.features import FeaturePlan
from ntkit.store.errors import StoreError, StoreMismatchError
from ntkit.store.kernel_store import KernelStore
from ntkit.store.lock import holds_lock, store_lock
from ntkit.tiled.features import DIR as FEATURES_DIR
from ntkit.tiled.choice import _auto_method, _auto_reason, _budget_bound, _plan_features
from ntkit.tiled.features import FeatureCache, FeatureSpec, tile_keys
from ntkit.tiled.metadata import (_check_identity, _check_resume_plan, _features_from_meta, _features_meta, _identity,
                                  _plan_from_meta, _plan_meta, _repair_on_resume, _versions)
from ntkit.tiled.sources import DataSource, _shared_prefix, tile_inputs
from ntkit.tiled.worker import TileJob, compute_tile, features_tile

__all__ = ["compute", "ComputeInterrupted"]

# Parameters, their functional copy, and the gradients of one backward pass.
MODEL_COPIES = 3
# Slack for the engine's forward pass on one input beyond the activations it plans for.
ENGINE_SLACK = 4 * 2**20


class ComputeInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped `compute` at a tile boundary; every recorded tile is complete."""


def compute(
    model: nn.Module,
    rows: Any,
    cols: Any = None,
    *,
    store: str | os.PathLike[str] | None = None,
    method: str = "auto",
    output: str | None = None,
    params: Sequence[str] | str | None = None,
    memory: int | str | None = None,
    device: torch.device | str | None = None,
    client: Any = None,
    workers: int | None = None,
    tile: int | None = None,
    overwrite: bool = False,
    precision: str = "float32",
    features: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    metadata: dict[str, Any] | None = None,
    output_fn: Callable[[Any], torch.Tensor] | None = None,
    trace_axes: int | tuple[int, ...] | None = None,
    diagonal_axes: int | tuple[int, ...] | None = None,
) -> KernelStore | torch.Tensor:
    """The eNTK of `model` between `rows` and `cols`, tile by tile under a memory budget.

    Args:
        model: any nn.Module (see `ntkit.ntk`).
        rows: (N1, *input) tensor/array, a tuple or mapping of tensors (the model's positional /
            keyword arguments, batched on dim 0, as in `ntkit.ntk`), or a Dataset (items `x` or
            `(x, y)`; `x` may be a tuple or mapping of tensors, a mapping's "label(s)" are left out).
        cols: (N2, *input) likewise, or None for the symmetric kernel of `rows` (upper tiles only).
        store: path of a zarr kernel store (created, or resumed when it exists); None returns
            the kernel as a tensor (it must fit in memory; tiles still bound the working set).
        method: "auto" | "jacobian" | "ntk-vp" | "structured", fixed once for every tile.
        output: "trace" (the default here without trace/diagonal axes: big kernels) | "full" |
            "diagonal" | "logit:K" | "pntk".
        memory: bytes or "8GB" for one worker's peak (default: a quarter of free memory).
        device: where tiles are computed (default: the model's device); "cuda" with several
            Dask workers puts one worker on each GPU.
        client: a `distributed.Client` (any Dask cluster); `workers=N` starts a LocalCluster
            of N processes for this call. Needs `store`.
        tile: force the tile side (checked against the budget).
        overwrite: replace an existing store instead of resuming it.
        precision: "float32" (TF32 off on CUDA), "tf32" (faster tensor-core products, ~1e-3)
            or "tf32x3" (the Gram step as three TF32 products on a hi/lo split summed in float64
            chunks, ≤ 1e-5 of float64; everything else float32 with TF32 off; see
            `ntkit._runtime.precision`). It splits the Gram products of Jacobian contraction and
            structured derivatives' per-sample-gradient terms; NTK-vector products have no
            Gram step and are refused with it (an "auto" choice of them runs plain float32).
        features: "auto" | "recompute" | "disk": whether each tile recomputes the Jacobian rows
            of its inputs, or every input's rows are computed once into the store's
            `features/` directory and read back by the tiles (Jacobian contraction; removed when
            the kernel is complete). "auto" decides from measured rates (see
            `ntkit.schedule.features`); a resumed store keeps its first run's choice.
        progress: `callback(entries_done, entries_total)` after every tile and, for tiles
            computed in this process, after every engine step inside a tile (entries then count
            the tile's finished fraction). A callback that takes keywords also gets
            `tiles=(done, total)`, `detail=` (the engine's counts, "rows 512/2500 · blocks 3/8"),
            `current=(steps done, steps)` within the running tile, and `store=` (the
            `KernelStore`, once checked or created, before any tile is computed).
        metadata: extra JSON-able facts to keep with the store (e.g. the data and model specs).
        output_fn, trace_axes, diagonal_axes: as in `ntkit.ntk` (structured outputs, per-token
            or per-pixel kernels). A store records output_fn's qualified name, so a resume
            with another one is refused (a lambda is named "<lambda>": prefer a named function).

    Returns:
        The `KernelStore` (complete) when `store` is given, else a tensor of shape
        (N1, N2[, O[, O]]) on the host, in the model's dtype.

    Raises:
        StoreMismatchError: resuming with another model, data or options.
        BudgetTooSmallError: the budget cannot hold the model plus one tile.
        ComputeInterrupted: Ctrl-C (the store keeps every finished tile; call again to resume).
        StoreLockedError: another process is writing the store (named, with the fix).
    """
    if store is not None and not holds_lock(store):
        # One writer per store, for the whole call: resume, --overwrite and repair alike.
        args = dict(locals())
        with store_lock(store):
            return compute(**{k: args[k] for k in inspect.signature(compute).parameters})
    from ntkit._runtime import rss as _rss
    from ntkit.engine.api import parse_method
    from ntkit.engine.call import prepare
    from ntkit.engine.memory import parse_memory
    from ntkit.engine.inputs import input_signature, iter_leaves
    from ntkit.engine.outputs import output_spec

    start = _rss.mark()  # the budget counts from here (the command line: from its start)
    method = parse_method(method)
    if output is None:
        output = "trace" if trace_axes is None and diagonal_axes is None else "full"
    output = str(output_spec(output, trace_axes, diagonal_axes))  # one string for jobs, workers, metadata
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "tf32x3" and method == "ntk-vp":
        raise ValueError("precision='tf32x3' splits the Gram step J1·J2ᵀ, which method='ntk-vp' does not have; "
                         "use method='jacobian' or 'structured' (--method), or precision='float32'")
    if isinstance(params, str):
        params = [params]
    if (client is not None or workers) and store is None:
        raise ValueError("distributed computation writes to a store: pass store=PATH with client/workers")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if features not in FEATURE_STRATEGIES:
        raise ValueError(f"unknown features strategy {features!r}; use one of {', '.join(FEATURE_STRATEGIES)}")
    if features == "disk":
        if store is None:
            raise ValueError("features='disk' caches Jacobian rows inside the store: pass store=PATH")
        if method not in ("auto", "jacobian"):
            raise ValueError(f"features='disk' caches Jacobian rows, which method={method!r} does not "
                             "use; use method='jacobian' (or 'auto') or features='recompute'")
    src_rows = DataSource(rows, "rows")
    src_cols = None if cols is None else DataSource(cols, "cols")
    param = next(iter(model.parameters()), None)
    if param is None:
        raise ValueError(f"{type(model).__name__} has no parameters: its eNTK is empty")
    dtype = param.dtype
    if dtype == torch.bfloat16:
        # refused before anything is created: tiles go through numpy, and numpy and zarr have no bfloat16
        raise ValueError("the model is bfloat16, which ntkit.compute cannot hold (its tiles and stores are numpy "
                         "and zarr arrays, which have no bfloat16): convert it first with model.float() "
                         "(--dtype float32 on the command line), or use ntkit.ntk, which returns bfloat16 kernels")
    dev = torch.device(device) if device is not None else param.device

    def prep(x: torch.Tensor) -> torch.Tensor:
        return x.to(dtype) if x.is_floating_point() else x

    # -- probe: sizes the planner needs ---------------------------------------------------------
    probe = prepare(model, prep(src_rows.take(0, min(2, src_rows.n))).to(dev), None, output, params, None,
                     device, 2**40, output_fn=output_fn)
    fm, spec = probe.fm, probe.spec  # spec: the plain mode the engine computes (see KernelCall)
    n_logits = probe.n_logits
    n1, n2 = src_rows.n, (src_rows.n if src_cols is None else src_cols.n)
    if src_cols is not None:
        sample_c = prep(src_cols.take(0, 1))
        sample_r = prep(src_rows.take(0, 1))
        if input_signature(sample_c) != input_signature(sample_r):
            raise ValueError(f"rows have inputs {_inputs_text(sample_r)} but cols have {_inputs_text(sample_c)}: "
                             "both sides must be the model's input")
    shape = probe.out_shape(n1, n2)
    itemsize = torch.empty((), dtype=dtype).element_size()
    entry_bytes = int(np.prod(shape[2:], dtype=np.int64)) * itemsize
    x0 = src_rows.take(0, 1)
    input_bytes = sum(int(t[0].numel() * t.element_size()) for _, t in iter_leaves(x0))
    symmetric = src_cols is None
    if probe.final.kind == "axes" and features == "disk":
        raise ValueError("features='disk' caches Jacobian rows for the plain outputs; with trace_axes/diagonal_axes "
                         "use features='recompute' (or auto)")
    identity = _identity(model, src_rows, src_cols, str(probe.final), params, method, dtype, precision, shape)
    if output_fn is not None:  # only then: stores without output_fn keep their identity
        # Its name only: the same function run as a script (__main__) or imported must resume.
        identity["output_fn"] = str(getattr(output_fn, "__qualname__", type(output_fn).__qualname__))

    # -- the store: resume or create ------------------------------------------------------------
    ks: KernelStore | None = None
    if store is not None and Path(store).exists() and not overwrite:
        try:
            ks = KernelStore(store, mode="r+")
        except StoreError as e:
            raise StoreError(f"{e}; pass overwrite=True (--overwrite) to replace it") from None
        _check_identity(ks, identity)
        meta = ks.metadata
        try:
            tplan = _plan_from_meta(meta, n1, n2, symmetric, entry_bytes, input_bytes)
            used = str(meta["method_used"])
            fplan = _features_from_meta(meta)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise StoreError(f"cannot resume {ks.path}: its metadata are damaged ({type(e).__name__}: {e}); "
                             "pass overwrite=True (--overwrite) to compute it again") from None
        _check_resume_plan(ks, meta, tile, memory, dev, n1, n2)
        if features != "auto" and features != fplan.strategy:
            raise StoreMismatchError(
                f"cannot resume {ks.path}: it was computed with features={fplan.strategy!r}, not "
                f"{features!r}; resume with --features {fplan.strategy} (or auto), or pass "
                "overwrite=True (--overwrite) to start again")
        _repair_on_resume(ks, tplan, src_rows, src_cols, prep)
    else:
        budget = parse_memory(memory, dev)
        held, reserve = host_overhead(budget, start) if dev.type == "cpu" else (0, 0)
        fixed = held + reserve
        n_out = spec.n_out(n_logits)
        row_bytes = n_out * itemsize
        p_max = max(fm.sizes.values())
        acts = probe.profile.activations
        min_engine = engine_minimum(row_bytes, p_max, acts, acc_entry_bytes(spec.kind, n_logits, itemsize))
        buffers = sum(b.numel() * b.element_size() for b in model.buffers())
        fixed += MODEL_COPIES * fm.n_params * itemsize + buffers
        n_workers = workers or (1 if client is None else _cluster_workers(client))
        shared = 0 if symmetric else _shared_prefix(src_rows, src_cols, prep)
        tplan = plan_tiles(n1, n2, symmetric=symmetric, entry_bytes=entry_bytes, input_bytes=input_bytes,
                           budget=budget, fixed=fixed, min_engine=min_engine, tile=tile,
                           min_tiles=2 * n_workers if n_workers > 1 else 1, shared=shared)
        used = method
        choice_meta: dict[str, Any] = {}
        fplan = FeaturePlan("recompute", reason="in memory" if store is None else "asked for")
        disk_ok = features != "recompute" and probe.final.kind != "axes"
        if method == "auto" or (store is not None and disk_ok and method == "jacobian"):
            t0 = next(iter(tplan.tiles()))
            xr = prep(src_rows.take(t0.r0, t0.r1)).to(dev)
            xc = None if t0.diagonal else prep((src_cols or src_rows).take(t0.c0, t0.c1)).to(dev)
            tile_call = prepare(model, xr, xc, output, params, None, device, tplan.engine, output_fn=output_fn)
            if method == "auto":
                # features="disk" makes auto's method Jacobian contraction; "auto" only caches
                # the rows of the method auto picks (structured derivatives have none to cache).
                used = "jacobian" if features == "disk" else tile_call.choose(
                    scale=n1 * n2 / max(1, (t0.r1 - t0.r0) * (t0.c1 - t0.c0)))
            if store is not None and method == "auto" and features != "disk" and disk_ok and _budget_bound(tile_call):
                # The cost model does not see what the budget makes each method recompute: time
                # both methods' per-sample work and count it as the engine loops.
                fplan, rates, scale = _plan_features(model, tile_call, tplan, symmetric, features, Path(store),
                                                     output, params, device)
                used, struct_s = _auto_method(tile_call, tplan, fplan, rates, scale)
                choice_meta = {"structured_s": None if struct_s == float("inf") else round(struct_s, 4),
                               "jacobian_s": round(fplan.disk_s if fplan.strategy == "disk" else fplan.recompute_s, 4)}
                if used != "jacobian":
                    fplan = FeaturePlan("recompute", 0, 0, 0, fplan.recompute_s, fplan.disk_s,
                                        "structured derivatives are estimated faster")
            elif store is not None and disk_ok and used == "jacobian":
                fplan = _plan_features(model, tile_call, tplan, symmetric, features, Path(store),
                                       output, params, device)[0]
        if features == "auto":
            fplan = _auto_reason(fplan, used)
        _release_between_tiles()  # what the timing probes above freed goes back before the tiles
        if store is not None:
            ks = KernelStore.create(
                store, shape=shape, dtype=str(dtype).replace("torch.", ""), tile_rows=tplan.tile_rows,
                tile_cols=tplan.tile_cols, symmetric=symmetric, overwrite=overwrite,
                metadata={"identity": identity, "store_id": uuid.uuid4().hex, "output": str(probe.final),
                          "n_logits": n_logits, "output_shape": list(fm.out_shape), "method_requested": method, "method_used": used,
                          "plan": {**_plan_meta(tplan), "features": _features_meta(fplan),
                                   "process_held": held, "allocator_reserve": reserve,
                                   **({"auto_seconds": choice_meta} if choice_meta else {})},
                          **_versions(), **(metadata or {})})

    fspec = None
    if fplan.strategy == "disk":
        fspec = FeatureSpec(chunk=fplan.chunk, sub=fplan.sub or max(tplan.tile_rows, tplan.tile_cols),
                            n_params=fm.n_params, n_out=spec.n_out(n_logits),
                            n_logits=n_logits, symmetric=symmetric, shared=tplan.shared)
    job = TileJob(model=model, method=used, output=output, params=tuple(params) if params else None,
                  engine_memory=tplan.engine, device=None if device is None else str(device),
                  precision=precision, features=fspec, output_fn=output_fn)
    tiles = tplan.tiles()
    total_entries = n1 * n2
    t_start = time.perf_counter()
    if ks is None:
        return _compute_in_memory(job, tiles, src_rows, src_cols, prep, shape, dtype, progress, total_entries,
                                  probe.final.mirror_perm(len(shape)) if probe.final.kind == "axes" else None)
    done = ks.done()
    todo = [t for t in tiles if t.key not in done]
    entries_done = sum(t.n_entries for t in tiles if t.key in done)
    progress = _Reporter(progress, len(tiles), len(tiles) - len(todo), store=ks) if progress is not None else None
    if progress is not None:
        progress(entries_done, total_entries)
    cache = None
    if fspec is not None:
        cache = FeatureCache(ks.path / FEATURES_DIR, n_params=fspec.n_params, n_out=fspec.n_out,
                             chunk=fspec.chunk, dtype=dtype)
    if todo:
        runner = _run_dask if (client is not None or workers) else _run_local
        runner(job, ks, todo, src_rows, src_cols, prep, progress, entries_done, total_entries,
               client=client, workers=workers, cache=cache)
    elapsed = time.perf_counter() - t_start
    if ks.complete and (todo or not ks.metadata.get("complete")):  # a rerun of a complete store changes nothing
        meta = ks.metadata
        timings = meta.get("timings", {})
        timings["last_run_s"] = round(elapsed, 3)
        if cache is not None:
            # Features computed by Dask workers are counted in their tiles' times, not here.
            timings["features_s"] = round(timings.get("features_s", 0.0) + cache.seconds, 3)
            timings["features_bytes"] = int(timings.get("features_bytes", 0) + cache.bytes_written)
            cache.remove()
        ks.update_metadata(complete=True, timings=timings,
                           entries_per_s=round(ks.throughput() or 0.0, 1))
    return KernelStore(ks.path, mode="r")


def _release_between_tiles() -> None:
    """Give back what the last tile freed (pooled scratch buffers, the heap's free pages), so
    the allocator does not keep one tile's memory while the next allocates its own."""
    from ntkit._runtime import malloc as _malloc, scratch

    scratch.release()
    _malloc.trim()


def _cluster_workers(client: Any) -> int:
    from ntkit.distributed.run import n_workers  # Dask is imported only when asked for

    return n_workers(client)


class _StopFlag:
    """First Ctrl-C: finish the current tile, then stop. Second: stop at once. An active
    `Interrupt` of the caller (the command line's, which says so when Ctrl-C comes) is used
    instead of installing another handler."""

    def __enter__(self) -> _StopFlag:
        from ntkit.engine.progress import Interrupt

        self._own = None
        self._flag = Interrupt.active()
        if self._flag is None:
            self._own = self._flag = Interrupt().__enter__()
        return self

    @property
    def stop(self) -> bool:
        return self._flag.requested

    def __exit__(self, *exc) -> None:
        if self._own is not None:
            self._own.__exit__(*exc)


def _interrupted(ks: KernelStore) -> ComputeInterrupted:
    done, total = ks.progress
    return ComputeInterrupted(f"stopped at a tile boundary with {done}/{total} tiles done in {ks.path}; "
                              "run the same command again to resume")


class _Reporter:
    """Calls `callback(entries_done, entries_total)`, adding the keywords the callback takes:
    `tiles=(done, total)`, `detail=` (the engine's counts within the running tile),
    `current=(steps done, steps)` within that tile, `store=` (see `compute`)."""

    def __init__(self, callback: Callable[..., None], n_tiles: int, tiles_done: int, store: Any = None) -> None:
        from ntkit.engine.progress import accepts

        self.callback, self.n_tiles, self.tiles_done = callback, n_tiles, tiles_done - 1
        self.with_tiles = accepts(callback, "tiles")
        self.with_detail = accepts(callback, "detail")
        self.with_current = accepts(callback, "current")
        self.store = store if accepts(callback, "store") else None
        self.base = 0  # entries of the tiles finished

    def __call__(self, done: int, total: int) -> None:
        """After a tile (and once before the first)."""
        self.tiles_done += 1
        self.base = done
        self._send(done, total, "", None)

    def tile(self, t: Tile, total: int) -> Callable[..., None]:
        """The engine's callback within tile `t`: entries count its finished fraction."""

        def step(done: int, steps: int, detail: str = "") -> None:
            if steps > 0 and done < steps:  # the tile's last step: reported once it is written
                self._send(self.base + t.n_entries * done // steps, total, detail, (done, steps))

        return step

    def _send(self, done: int, total: int, detail: str, current: tuple[int, int] | None) -> None:
        kw: dict[str, Any] = {}
        if self.with_tiles:
            kw["tiles"] = (self.tiles_done, self.n_tiles)
        if self.with_detail:
            kw["detail"] = detail
        if self.with_current:
            kw["current"] = current
        if self.store is not None:
            kw["store"] = self.store
        self.callback(done, total, **kw)


def _run_local(job, ks, todo, rows, cols, prep, progress, entries_done, total_entries, *, cache=None,
               **_) -> None:
    with _StopFlag() as flag:
        for t in todo:
            if flag.stop:
                raise _interrupted(ks)
            t0 = time.perf_counter()
            if cache is None:
                xr, xc = tile_inputs(t, rows, cols, prep)
                data = compute_tile(job, t, xr, xc, progress=None if progress is None else
                                    progress.tile(t, total_entries))
            else:
                data = _features_tile(job, cache, t, rows, cols, prep)
            ks.write_tile(t, data, time.perf_counter() - t0, worker=f"local:{os.getpid()}")
            del data
            _release_between_tiles()
            entries_done += t.n_entries
            if progress is not None:
                progress(entries_done, total_entries)
        if flag.stop and not ks.complete:  # Ctrl-C during the last tile, which finished: not interrupted
            raise _interrupted(ks)


def _run_dask(job, ks, todo, rows, cols, prep, progress, entries_done, total_entries, *, client, workers,
              **_) -> None:
    from ntkit.distributed.run import dask_client, submit_tiles

    def done(rec: dict) -> None:
        nonlocal entries_done
        entries_done += int(rec["entries"])
        if progress is not None:
            progress(entries_done, total_entries)

    with dask_client(client, workers) as (client, threads):
        with _StopFlag() as flag:
            left = submit_tiles(client, threads, job, str(ks.path), ks.metadata["store_id"], todo,
                                lambda t: tile_inputs(t, rows, cols, prep), done, lambda: flag.stop)
            if flag.stop and left:
                raise _interrupted(ks)


def _features_tile(job: TileJob, cache: FeatureCache, t: Tile, rows: DataSource, cols: DataSource | None,
                   prep) -> np.ndarray:
    """A tile from the feature cache; the inputs of a block already cached are not even read."""
    rk, ck = tile_keys(t, job.features.symmetric, job.features.shared)
    if cache.done(rk) and cache.done(ck):
        xr = xc = None
    else:
        xr, xc = tile_inputs(t, rows, cols, prep)
    empty = torch.empty(0)
    return features_tile(job, t, empty if xr is None else xr, None if t.diagonal else (empty if xc is None else xc),
                         cache.root, cache=cache)


def _inputs_text(x: Any) -> str:
    return f"{tuple(x.shape[1:])} {x.dtype}" if isinstance(x, torch.Tensor) else x.describe()


def _compute_in_memory(job, tiles, rows, cols, prep, shape, dtype, progress, total_entries, perm=None) -> torch.Tensor:
    from ntkit.store.records import mirror_tile

    out = np.full(shape, np.nan, dtype=str(dtype).replace("torch.", ""))
    done = 0
    progress = _Reporter(progress, len(tiles), 1) if progress is not None else None
    for t in tiles:
        xr, xc = tile_inputs(t, rows, cols, prep)
        data = compute_tile(job, t, xr, xc, progress=None if progress is None else progress.tile(t, total_entries))
        out[t.r0:t.r1, t.c0:t.c1] = data
        if t.mirror:
            out[t.c0:t.c1, t.r0:t.r1] = mirror_tile(data, perm)
        del data
        _release_between_tiles()
        done += t.n_entries
        if progress is not None:
            progress(done, total_entries)
    return torch.from_numpy(out)
