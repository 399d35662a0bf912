"""The README's command-line synopsis, generated from the commands themselves.

`python -m ntkit.cli.synopsis` prints one usage block per sub-command: its arguments, the
required options, then every other option with its default value (and, where an option's help
starts with its choices, `a | b | c`, the default first and the other choices after it). The
README's "Command line" block is this output, and a test compares the two, so a default changed
in the code cannot leave the README stale.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"\s*([\w:.\-]+)(?:\s*\((?:[^()]|\([^()]*\))*\))?\s*")
_SCOPE = re.compile(r"^\s*[\w ,]+ only:\s*")  # "Store only: auto | recompute | disk: ..."
WIDTH = 100
#: Value names where the parameter's own name would not say what to write.
_METAVARS = {"output_path": "OUT", "output_dir": "DIR", "cols": "DATA", "test": "DATA",
             "data_dir": "DIR", "weights": "STATE_DICT.pt", "memory": "BYTES", "trust_code": "PATH.py",
             "params": "GLOB", "scheduler": "ADDRESS", "workers": "N", "tile": "T", "model": "MODEL",
             "labels": "DATA"}


def _choices(help_text: str) -> list[str]:
    """`a | b (note) | c: ...` at the start of a help text -> [a, b, c]; [] when it has none."""
    pos = _SCOPE.match(help_text).end() if _SCOPE.match(help_text) else 0
    found: list[str] = []
    while True:
        m = _WORD.match(help_text, pos)
        if not m:
            break
        found.append(m.group(1).rstrip(":.,"))
        pos = m.end()
        if help_text[pos:pos + 1] != "|":
            break
        pos += 1
    return found if len(found) > 1 else []


def _value(param) -> str:
    """How an option's value is written in the synopsis: its default (first of its choices)."""
    choices = _choices(getattr(param, "help", None) or "")
    default = param.default
    if choices:
        if default is not None and str(default) in choices:
            choices.remove(str(default))
            choices.insert(0, str(default))
        return "|".join(choices)
    if default is not None and default != () and not callable(default):
        return str(default)
    return _METAVARS.get(param.name, param.name.upper())


def _option(param) -> str:
    # the long form, but `-o` for outputs: the one short option every example uses
    name = "-o" if "-o" in param.opts else max(param.opts, key=len)
    if getattr(param, "is_flag", False):
        return f"[{'/'.join([name, *param.secondary_opts])}]"
    text = f"{name} {_value(param)}"
    if getattr(param, "multiple", False):
        return f"[{text}]..."
    return text if param.required else f"[{text}]"


def command_synopsis(name: str, command) -> str:
    """One sub-command's usage line(s): `ntkit NAME ARGS -o OUT [--opt default] ...`."""
    words = [f"ntkit {name}"]
    for p in command.params:
        if p.param_type_name == "argument":
            meta = (p.metavar or p.name).upper()
            words.append(meta if p.required else f"[{meta}]")
    options = [p for p in command.params if p.param_type_name == "option" and p.name != "help"]
    words += [_option(p) for p in options if p.required]
    words += [_option(p) for p in options if not p.required]
    lines, indent = [words[0]], " " * (len(name) + 7)
    for w in words[1:]:  # an option and its value are never split over two lines
        if len(lines[-1]) + 1 + len(w) > WIDTH:
            lines.append(indent + w)
        else:
            lines[-1] += " " + w
    return "\n".join(lines)


def synopsis() -> str:
    """Every sub-command's synopsis, in the order of `ntkit --help`."""
    import typer.main

    from ntkit.cli.app import app

    group = typer.main.get_command(app)
    return "\n".join(command_synopsis(n, c) for n, c in group.commands.items()) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(synopsis(), end="")
