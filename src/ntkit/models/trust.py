"""Whether a model spec may run code: specs the user typed may, specs read from a file may not.

A ``file:PATH.py:FACTORY`` spec imports and runs ``PATH.py``; a ``torchvision:`` spec with a
``weights=``-like option downloads pretrained weights and unpickles them from torch's hub cache.
That is what the user asked for when they typed the spec (on the command line or in Python), but
not when the spec comes from a file someone else may have written: the JSON inside a saved
``.npz`` model (``ntkit.solvers.load``, ``ntkit predict``) or a kernel store's metadata
(``ntkit verify``). Code that rebuilds a model from such a file does it inside
:func:`untrusted_source`; the builders of the two families above call :func:`require_trust`
before they import or fetch anything, so this is the one place the decision is made.

The opt-in names what is trusted (``trust_code=``, CLI ``--trust-code``): a ``.py`` file (a
``file:`` spec whose path resolves to it may run it) or a model spec (that exact spec may be
built); ``trust_code=True`` (Python only) trusts whatever the file names.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Union

__all__ = ["TrustCode", "UntrustedModelError", "require_trust", "trust_policy", "untrusted_source"]

#: ``False`` (nothing), ``True`` (anything), or the ``.py`` files / model specs that are trusted.
TrustCode = Union[bool, str, "os.PathLike[str]", Iterable[Union[str, "os.PathLike[str]"]]]


class UntrustedModelError(ValueError):
    """A model spec read from a file would run code the user has not said they trust."""


@dataclass(frozen=True)
class TrustPolicy:
    """What may run while building a model whose spec came from ``source`` (a file)."""

    source: str
    trust_all: bool = False
    files: frozenset[Path] = frozenset()
    specs: frozenset[str] = frozenset()


# None: the spec was given by the caller (typed on the command line or passed in Python).
_POLICY: ContextVar[TrustPolicy | None] = ContextVar("ntkit_model_trust", default=None)


def trust_policy(trust_code: TrustCode, source: str) -> TrustPolicy:
    """Parse ``trust_code`` (see the module docstring) for models rebuilt from ``source``.

    Raises :class:`ValueError` for an entry that is neither an existing ``.py`` file nor a
    model spec, so a typo is not silently a refusal later.
    """
    if trust_code is True or trust_code is False:
        return TrustPolicy(source=source, trust_all=bool(trust_code))
    if trust_code is None:
        return TrustPolicy(source=source)
    entries = [trust_code] if isinstance(trust_code, (str, os.PathLike)) else list(trust_code)
    files: set[Path] = set()
    specs: set[str] = set()
    for entry in entries:
        text = os.fspath(entry)
        if text.endswith(".py"):
            path = Path(text).expanduser().resolve()
            if not path.is_file():
                raise ValueError(f"trust_code / --trust-code names {text!r}, which is not a file "
                                 f"(resolved to {path}): name the .py file the model spec points to")
            files.add(path)
            continue
        from ntkit.models.spec import ModelSpecError, parse_model_spec

        try:
            specs.add(str(parse_model_spec(text)))
        except ModelSpecError as e:
            raise ValueError(f"trust_code / --trust-code entry {text!r} is neither a .py file nor a model "
                             f"spec ({e.reason})") from None
    return TrustPolicy(source=source, files=frozenset(files), specs=frozenset(specs))


@contextmanager
def untrusted_source(source: str, trust_code: TrustCode = False) -> Iterator[TrustPolicy]:
    """Build models inside this block as coming from the file ``source``, trusting ``trust_code``."""
    policy = trust_policy(trust_code, source)
    token = _POLICY.set(policy)
    try:
        yield policy
    finally:
        _POLICY.reset(token)


def require_trust(spec: str, action: str, file: Path | None = None) -> None:
    """Raise :class:`UntrustedModelError` unless building ``spec`` (which ``action``) is trusted.

    Called by a model family's builder before it runs or fetches anything. ``file``: the resolved
    ``.py`` file a ``file:`` spec runs (trusted when named in ``trust_code``).
    """
    policy = _POLICY.get()
    if policy is None or policy.trust_all:
        return
    if file is not None and file in policy.files:
        return
    from ntkit.models.spec import parse_model_spec

    if str(parse_model_spec(spec)) in policy.specs:
        return
    named = str(file) if file is not None else spec
    raise UntrustedModelError(
        f"refusing to run code named in {policy.source}: its model spec {spec!r} {action}. ntkit runs no "
        f"code from a saved model or store unless you trust it: if you do, pass --trust-code "
        f"{shlex.quote(named)} (Python: trust_code=[{named!r}])")
