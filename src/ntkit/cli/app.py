"""The `ntkit` command line: builds the Typer app from the command modules and runs it.

Each command module (`compute_cmd`, `info_cmd`, `analyze_cmd`, `demo_cmd`, `fit_cmd`,
`dynamics_cmd`, `store_cmd`) defines its commands as plain functions and imports only
`ntkit.cli._ui` and library code; they are registered here, in the order of `ntkit --help`. `main` is the one
place that turns exceptions into `error: <message>` (exit status 2) or an interrupt's last word.
Each sub-command's help is its docstring.
"""

from __future__ import annotations

import sys

import typer

from ntkit.cli import analyze_cmd, compute_cmd, demo_cmd, dynamics_cmd, fit_cmd, info_cmd, store_cmd
from ntkit.cli._ui import ARGV as _ARGV
from ntkit.cli._ui import UserError, err, out, print_error as _print_error

app = typer.Typer(
    name="ntkit",
    help="Fast finite-width neural tangent kernels and kernel machines for PyTorch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


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
    from ntkit._runtime import rss as _rss

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


for _command in (compute_cmd.compute, info_cmd.info, analyze_cmd.analyze, demo_cmd.demo, fit_cmd.fit,
                 fit_cmd.predict, dynamics_cmd.dynamics, store_cmd.verify):
    app.command()(_command)


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
