"""Recomputing a store's tiles from its own metadata, for `KernelStore.verify(recompute=...)` and
repairs: the data and model are rebuilt from the specs the command line stored with it.

>>> from ntkit.store import open_store
>>> from ntkit.tiled.recompute import recompute_fn
>>> ks = open_store("K.zarr")                                  # doctest: +SKIP
>>> report = ks.verify(recompute=recompute_fn(ks), sample=2)   # doctest: +SKIP

The tile work itself (inputs of a tile, `compute_tile`) belongs to the tiled pipeline; it is
imported when a recomputation is asked for, so that storing never needs it.
"""

from __future__ import annotations

from typing import Any, Callable

from ntkit.store.errors import StoreError


def stored_num_classes(rows: Any, stored: Any, num_classes: int | None) -> int:
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
            raise StoreError(f"the store's metadata says {stored:,} classes, more than ntkit infers from its "
                             f"labels without being told (at most {bound:,}): if that is right, pass "
                             f"--num-classes {stored} (or --sample 0 to skip recomputing tiles)")
        return stored
    return rows.num_classes


def rebuild_from_store(ks: Any, trust_code: Any = False, num_classes: int | None = None,
                       no_specs: str = "its tiles cannot be recomputed from it") -> tuple[Any, Any, Any, Any]:
    """(model, rows, cols, dtype) rebuilt from the store `ks`'s metadata (its data and model specs).

    The model spec is read from the store, so it runs no code unless `trust_code` names it
    (`--trust-code`, see `ntkit.models.trust`). `no_specs`: what to do when the store was
    written by the Python API and has no specs."""
    import torch

    from ntkit.data import resolve_kernel_data
    from ntkit.models import build_model, untrusted_source

    meta = ks.metadata
    d, m, ident = meta.get("data") or {}, meta.get("model") or {}, meta.get("identity") or {}
    if not isinstance(d, dict) or not isinstance(m, dict) or not isinstance(ident, dict) or "method" not in ident:
        raise StoreError(f"{ks.path}'s metadata are damaged, so its model cannot be rebuilt; check its tiles with "
                         "--sample 0, or compute it again with --overwrite")
    if not d.get("rows") or not m.get("spec"):
        raise StoreError(f"{ks.path} was written by the Python API without data and model specs; {no_specs}")
    dtype = getattr(torch, str(ident.get("dtype")), None)
    if not isinstance(dtype, torch.dtype):
        raise StoreError(f"{ks.path}'s metadata are damaged (dtype {ident.get('dtype')!r}); compute it again with "
                         "--overwrite")
    rows, cols = resolve_kernel_data(d["rows"], d.get("data_dir"), cols=d.get("cols"), num_classes=num_classes)
    n_classes = stored_num_classes(rows, d.get("num_classes"), num_classes)
    with untrusted_source(f"the store {ks.path}", trust_code):
        net = build_model(m["spec"], rows.input_shape, n_classes, seed=m.get("seed") or 0,
                          weights=m.get("weights")).to(dtype)
    return net, rows, cols, dtype


def recompute_fn(ks: Any, trust_code: Any = False, num_classes: int | None = None) -> Callable[[Any], Any]:
    """A `tile -> array` recomputation from the store `ks`'s metadata (data and model specs; see
    `rebuild_from_store`): the tile's (rows, cols[, O[, O]]) block as the store's method computes
    it, in float64 for a store computed with reduced precision (tf32, tf32x3). Raises `StoreError`
    (with the fix) when the metadata cannot rebuild the model that computed the store."""
    import torch

    from ntkit.tiled.sources import DataSource, tile_inputs
    from ntkit.models import model_fingerprint
    from ntkit.store.records import PRECISION_RTOL
    from ntkit.tiled.worker import TileJob, compute_tile

    net, rows, cols, dtype = rebuild_from_store(
        ks, trust_code, num_classes, "tiles cannot be recomputed here; use --sample 0, or "
        "KernelStore.verify(recompute=...)")
    meta = ks.metadata
    ident = meta["identity"]
    if model_fingerprint(net) != ident["model"]:
        raise StoreError("the model rebuilt from the store's metadata has other weights than the one that "
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

