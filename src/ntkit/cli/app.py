"""`ntkit compute`, `ntkit info`: the command line over the Python API.

Each sub-command's help is its docstring. Errors in user input (a malformed data or model spec,
a missing file, an unknown option value) print one message that names the fix and exit with
status 2; nothing half-written is left behind (results are written to a temporary name and
renamed into place, the `.npy` first and its JSON sidecar last).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ntkit.cli.progress import WorkBar

app = typer.Typer(
    name="ntkit",
    help="Fast finite-width neural tangent kernels and kernel machines for PyTorch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# emoji=False: ':a:' in a user's path or spec is text, not an emoji; user text is also printed
# with markup=False or escaped (rich.markup.escape), so '[bold]' in a path stays as typed.
err = Console(stderr=True, emoji=False)
out = Console(emoji=False)

DTYPES = {"float32": "float32", "float64": "float64", "fp32": "float32", "fp64": "float64"}


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("ntkit")
        except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
            from ntkit import __version__ as v
        out.print(f"ntkit {v}", highlight=False)
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print ntkit's version and exit."),
) -> None:
    """Fast finite-width neural tangent kernels and kernel machines for PyTorch."""


class UserError(Exception):
    """A problem with the command's input: printed without a traceback, exit status 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from ntkit.data import DataFormatError, DataNotFoundError, DataSpecError
    from ntkit.models import ModelSpecError

    return (UserError, DataSpecError, DataNotFoundError, DataFormatError, ModelSpecError,
            FileNotFoundError, ValueError)


def _spec_errors() -> tuple[type[BaseException], ...]:
    from ntkit.data import DataSpecError
    from ntkit.kernels.spec import KernelSpecError
    from ntkit.models import ModelSpecError

    return (DataSpecError, ModelSpecError, KernelSpecError)


_ARGV: list[str] = []


def main(args: list[str] | None = None) -> int:
    """Run the CLI with `args` (default: sys.argv[1:]) and return the exit status."""
    from ntkit.cli.interrupts import SigintSeen, reported

    # typer turns KeyboardInterrupt into a silent exit status 130 (its vendored click: Exit(130);
    # click itself: Abort): a Ctrl-C is recorded here, so that one that no command reported is
    # still said.
    with SigintSeen() as seen:
        code = _main(args)
    if seen.count and code == 130 and not reported():
        _print_interrupted()
    return code


def _print_interrupted() -> None:
    """The last word on a Ctrl-C that no command reported itself."""
    if _ARGV[:1] == ["compute"]:  # compute reports its own once it computes; before that, nothing was written
        err.print("[red]interrupted[/red]: nothing was written")
    else:
        err.print("[red]interrupted[/red]")


def _main(args: list[str] | None = None) -> int:
    from ntkit import _rss

    _ARGV[:] = list(sys.argv[1:] if args is None else args)
    if _ARGV[:1] == ["compute"] and not {"-h", "--help"} & set(_ARGV):
        # --memory counts from the import baseline (numpy, torch, zarr loaded), not torch's import
        import numpy  # noqa: F401
        import torch  # noqa: F401
        import zarr  # noqa: F401
    try:
        with _rss.origin():  # --memory counts from here: the data and model loaded count too
            result = app(args=args, standalone_mode=False, prog_name="ntkit")
    except typer.Exit as e:  # pragma: no cover - typer raises Exit for --help in some versions
        return e.exit_code
    except KeyboardInterrupt:
        return 130  # said by main (with what was kept)
    except Exception as e:  # noqa: BLE001
        import click

        from ntkit.cli.errors import abort_types, known_error_message, usage_error_types, usage_message

        if isinstance(e, click.exceptions.Exit):
            return e.exit_code
        if type(e).__name__ == "NoArgsIsHelpError":
            e.show()  # type: ignore[attr-defined]  # the help text itself
            return e.exit_code  # type: ignore[attr-defined]
        if isinstance(e, usage_error_types()):
            _print_error(usage_message(e))
            return e.exit_code  # type: ignore[attr-defined]
        if isinstance(e, abort_types()):
            from ntkit.cli.interrupts import sigint_seen

            if not sigint_seen():  # a Ctrl-C is said by main
                err.print("[red]aborted[/red]")
            return 130
        message = known_error_message(e)
        if message is None and isinstance(e, _spec_errors()):
            # one line: the problem and its did-you-mean; the grammar is one command away
            message = f"{e.reason} (spec grammars: `ntkit info --specs`)"  # type: ignore[attr-defined]
        if message is None and isinstance(e, _user_errors()):
            message = str(e)
        if message is not None:
            _print_error(message)
            return 2
        if hasattr(e, "add_note"):  # Python >= 3.11: printed under the traceback
            e.add_note("This looks like a bug in ntkit: please report it with the command and this traceback.")
        raise
    return result if isinstance(result, int) else 0


def one_line(message: str) -> str:
    """A message written over several lines (a heading, then indented items) as one line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    text = lines[0] if lines else ""
    for line in lines[1:]:
        text += (" " if text.endswith((":", ".", ";", ",", "?", "!")) else "; ") + line
    return text


def _print_error(message: str) -> None:
    """`error: MESSAGE` on stderr, on one line; printed as is (no rich markup, no emoji codes)."""
    err.print("[bold red]error:[/bold red] ", end="")
    err.print(one_line(message), markup=False, highlight=False, emoji=False, soft_wrap=True)


class _Bar(WorkBar):
    """A rich progress bar (rate, ETA) that only appears once the work has run for `delay` s
    (`ntkit.cli.progress.WorkBar` on stderr)."""

    def __init__(self, description: str, delay: float = 2.0, enabled: bool = True,
                 entries: int | None = None) -> None:
        super().__init__(description, err, delay=delay, enabled=enabled, entries=entries)


def _atomic_save_npy(path: Path, array) -> None:
    import numpy as np

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            np.save(fh, array)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        from ntkit.cli.errors import write_failed

        tmp.unlink(missing_ok=True)  # never a half-written file left behind
        raise write_failed(path, int(getattr(array, "nbytes", 0)) + 128, e) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        from ntkit.cli.errors import write_failed

        tmp.unlink(missing_ok=True)
        raise write_failed(path, len(text.encode()), e) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sidecar_path(path: Path) -> Path:
    """`K.npy` -> `K.json`: the metadata written next to a computed kernel."""
    return path.with_suffix(".json")


@app.command()
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
    from ntkit.models import build_model, model_fingerprint, parse_model_spec

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

    rows, col_ds = resolve_kernel_data(data, data_dir, cols=cols, num_classes=num_classes)
    # A store streams its inputs tile by tile; the in-memory path takes them all at once.
    x1 = rows[0:1][0] if to_store else rows.tensors()[0]
    x2 = None if col_ds is None else (col_ds[0:1][0] if to_store else col_ds.tensors()[0])
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
        from ntkit.cli.store_cmd import compute_store

        return compute_store(
            net=net, rows=rows, cols=col_ds, output_path=output_path, model_spec=str(parse_model_spec(model)),
            weights=weights, seed=seed, data_dir=data_dir, method=method, output=output, params=params,
            memory=memory, device=device, workers=workers, scheduler=scheduler, tile=tile,
            precision=precision, features=features, overwrite=overwrite, quiet=quiet, explain=explain,
            timings=timings,
            command=shlex.join(["ntkit", *_ARGV]))
    kw = dict(output=output, params=params or None, batch_size=batch_size, memory=memory)
    from ntkit.cli.interrupts import mark_reported
    from ntkit.engine.progress import Interrupt
    from ntkit.tiled.worker import matmul_precision

    # Ctrl-C from here on: the first stops at the next step of the engine (said at once, with
    # how long that step still needs), the second at once; nothing is written either way.
    bars: list[_Bar] = []
    written: list[Path] = []

    def stuck() -> None:  # a second Ctrl-C inside one long torch operation: the process ends now
        for f in (*written, output_path.with_name(f".{output_path.name}.{os.getpid()}.tmp"),
                  sidecar_path(output_path).with_name(f".{sidecar_path(output_path).name}.{os.getpid()}.tmp")):
            f.unlink(missing_ok=True)
        err.print("[red]interrupted[/red]: stopped now; nothing was written")

    stop = Interrupt(on_first=lambda: bars[0].ack_npy() if bars else _Bar("", enabled=False).ack_npy(),
                     on_stuck=stuck)
    try:
        with stop:
            plan = ntkit.plan(net, x1, x2, **kw)
            chosen = plan.method if method == "auto" else method
            if explain:
                out.print(str(plan), highlight=False, markup=False)
            # the whole kernel must fit on the disk: found out now, not after computing it
            k_shape = parse_output(output).resolve(plan.n_logits).shape(plan.n1, plan.n2, plan.n_logits)
            check_free_space(output_path, 128 + int(torch.empty((), dtype=torch_dtype).element_size())
                             * int(torch.Size(k_shape).numel()), "kernel")
            bar = _Bar(f"eNTK {rows.spec} x {col_ds.spec if col_ds is not None else 'same'} [{chosen}]",
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
            _atomic_save_npy(output_path, K.cpu().numpy())
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
    from ntkit.models import model_fingerprint, parse_model_spec

    meta = {
        "format": "ntkit.kernel.v1",
        "ntkit_version": ntkit.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["ntkit", *_ARGV]),
        "data": {"rows": rows.spec, "cols": col_ds.spec if col_ds is not None else None,
                 "rows_fingerprint": rows.fingerprint(),
                 "cols_fingerprint": col_ds.fingerprint() if col_ds is not None else None,
                 "input_shape": list(rows.input_shape), "num_classes": rows.num_classes},
        "model": {"spec": str(parse_model_spec(model)), "seed": None if weights else seed,
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
    _atomic_write_text(sidecar, json.dumps(meta, indent=2) + "\n")


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


def _check_compute_options(method: str, precision: str, batch_size: int | None, to_store: bool) -> None:
    """Options `ntkit compute` would otherwise ignore: refused here, each with the fix."""
    from ntkit.tiled.worker import PRECISIONS

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


@app.command()
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
            from ntkit.cli.store_cmd import store_info

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


# Sub-commands that live in their own modules register themselves on `app` when imported.
from ntkit.cli import analyze_cmd, fit_cmd, store_cmd  # noqa: E402,F401


def _name_arguments() -> None:
    """Show positional arguments as DATA MODEL in usage lines and errors: typer 0.29 writes
    `{data}` and "Missing argument 'data'" for an Argument without a metavar."""
    import inspect

    from typer.models import ArgumentInfo

    for command in app.registered_commands:
        for name, p in inspect.signature(command.callback).parameters.items():
            if isinstance(p.default, ArgumentInfo) and p.default.metavar is None:
                p.default.metavar = name.upper()


_name_arguments()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
