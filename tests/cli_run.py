"""Run the command line as a user does: a fresh process through the console entry point.

`main(args=)` in-process skips what only a real process shows (how the installed typer/click
raise their exceptions, signals, what reaches stderr), so the command line's user-facing
behaviour is tested here, through `python -m ntkit.cli` with this checkout's `src` first on the
path (the same `main` the `ntkit` script calls).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["COLUMNS"] = env.get("NTKIT_TEST_COLUMNS", "80")
    env.update(extra or {})
    return env


def cli_argv(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "ntkit.cli", *map(str, args)]


def run_cli(args: list[str], cwd: str | os.PathLike | None = None, timeout: float = 120,
            env: dict[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    """`ntkit ARGS` in a subprocess; stdout and stderr captured as text."""
    return subprocess.run(cli_argv(args), cwd=cwd, env=cli_env(env), capture_output=True, text=True,
                          timeout=timeout, input=input)


def start_cli(args: list[str], cwd: str | os.PathLike | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen:
    """`ntkit ARGS` started in the background (for interrupts): stdout/stderr are pipes."""
    return subprocess.Popen(cli_argv(args), cwd=cwd, env=cli_env(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
