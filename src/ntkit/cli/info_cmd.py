"""`ntkit info`: versions, devices, data sets and models; or a kernel's metadata (a K.npy's
sidecar, or a store's shape, progress and throughput)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Optional

import typer

from ntkit.cli._ui import UserError, err, out, sidecar_path


def info(
    path: Optional[Path] = typer.Argument(None, help="A kernel written by `ntkit compute` (.npy, its .json, "
                                          "or a .zarr store)."),
    specs: bool = typer.Option(False, "--specs", help="Print the grammars of data, model and kernel specs."),
) -> int:
    """Show versions, devices, data sets and models; or, given a kernel, its metadata (and for a
    store: shape, progress, throughput)."""
    if specs:
        from ntkit.data.spec import DATA_GRAMMAR
        from ntkit.kernels.spec import KERNEL_GRAMMAR
        from ntkit.models.spec import MODEL_GRAMMAR

        for text in (DATA_GRAMMAR, MODEL_GRAMMAR, "Kernel specs (ntkit fit --kernel):\n" + KERNEL_GRAMMAR):
            out.print(text + "\n", markup=False, highlight=False, soft_wrap=True)
        return 0
    if path is not None:
        if (path / "zarr.json").exists():
            return store_info(path)
        if path.suffix == ".zarr" and not path.exists():
            raise UserError(f"no kernel store at {path}: compute one with `ntkit compute DATA MODEL -o {path}`")
        if not path.exists():
            raise UserError(f"no such file: {path}; give a K.npy, its .json or a K.zarr written by `ntkit compute`")
        if path.is_dir():
            raise UserError(f"{path} is a directory but not a kernel store (no zarr.json): give a K.npy, "
                            "its .json or a K.zarr written by `ntkit compute`")
        if path.exists() and path.suffix not in (".npy", ".json"):
            raise UserError(f"{path} is not a kernel: `ntkit info` reads a K.npy (with its .json sidecar) or "
                            "a K.zarr store written by `ntkit compute`")
        sidecar = sidecar_path(path) if path.suffix == ".npy" else path
        if not sidecar.exists():
            if path.suffix == ".npy":
                return _bare_npy_info(path, sidecar)
            raise UserError(f"no such file: {sidecar}; give a K.npy, its .json or a K.zarr written by "
                            "`ntkit compute`")
        try:
            meta = json.loads(sidecar.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"{sidecar} is not the JSON metadata `ntkit compute` writes ({e}); compute the "
                            "kernel again") from None
        out.print_json(data=meta)
        return 0
    import torch

    import ntkit
    from ntkit.data import list_datasets, resolve_data_dir
    from ntkit.engine.memory import default_budget
    from ntkit.models import list_models

    out.print(f"ntkit {ntkit.__version__}  torch {torch.__version__}  python {platform.python_version()}")
    out.print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"{torch.get_num_threads()} torch threads")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            out.print(f"cuda:{i}: {torch.cuda.get_device_name(i)}")
    else:
        out.print("CUDA: not available")
    out.print(f"methods: {', '.join(ntkit.METHODS)};  outputs: {', '.join(ntkit.OUTPUTS)}")
    out.print(f"data sets: {', '.join(list_datasets())};  data dir: {resolve_data_dir(None) or 'unset ($NTKIT_DATA)'}")
    out.print(f"models: {', '.join(list_models())}")
    out.print(f"default memory budget on cpu: {default_budget(torch.device('cpu')) / 2**30:.1f} GiB")
    return 0



def _bare_npy_info(path: Path, sidecar: Path) -> int:
    """`ntkit info K.npy` without its sidecar: what the array header says, and that nothing else is known."""
    import numpy as np

    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError):
        # numpy's own words suggest allow_pickle=True, which would run the file's code
        raise UserError(f"{path} is not a readable .npy array (damaged, or another format) and has no "
                        "metadata sidecar; compute the kernel again") from None
    out.print_json(data={"path": str(path), "shape": list(arr.shape), "dtype": str(arr.dtype),
                         "metadata": None})
    err.print(f"note: no metadata sidecar {sidecar}: {path} was not written by `ntkit compute` (or its "
              "sidecar was moved), so its data, model and method are unknown", markup=False, highlight=False)
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
              f"{'symmetric' if ks.symmetric else 'rectangular'}", highlight=False, markup=False)
    out.print(f"progress: {done}/{total} tiles ({100 * done / max(total, 1):.1f}%)"
              + (f", {rate:,.0f} entries/s of compute" if rate else "")
              + ("" if done == total else "; run the same compute command again to resume"), highlight=False,
              markup=False)
    out.print_json(data=meta)
    return 0
