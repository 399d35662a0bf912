"""The `ntkit` command line. `main(args)` is the entry point (tests call it with `args=`)."""

from ntkit.cli.app import app, main

__all__ = ["app", "main"]
