"""Model spec strings: the grammar, the registry of model families, the parser and its errors.

A model spec names an architecture and its options, e.g. ``mlp:depth=10,width=256``, ``cnn``,
``wrn:16-4``, ``torchvision:resnet18`` or ``file:nets/mine.py:make``. Each family is a builder
function registered with :func:`register_model`; its keyword-only parameters *are* its options,
so the valid keys, their types, choices (``typing.Literal``) and defaults all come from the
signature, and adding a family adds one decorated function, not parser code.

Parsing is pure: it checks the syntax, the names, the keys and the values but builds nothing and
reads no file (``file:`` paths and torchvision names are checked when the model is built).
"""

from __future__ import annotations

import difflib
import inspect
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

__all__ = [
    "MODEL_GRAMMAR",
    "ModelSpec",
    "ModelSpecError",
    "list_aliases",
    "list_models",
    "parse_model_spec",
    "register_alias",
    "register_model",
]

MODEL_GRAMMAR = """\
Model spec grammar:
  SPEC    := NAME [':' OPTION (',' OPTION)*]
           | 'torchvision:' TVNAME [':' OPTION (',' OPTION)*]
           | 'file:' PATH.py ':' FACTORY
  OPTION  := KEY '=' VALUE        VALUE: integer, float, true/false or text; integers are > 0
  NAME, its keys and defaults (a|b|c: the choices, the first is the default):
    mlp       flatten, then `depth` Linear layers (the last one to the classes)
              depth=3, width=512, act=relu|tanh|gelu|erf, bias=true, init=torch|normal
    cnn       depth x [conv3x3 `channels`, pad 1, act], global average pool, Linear
              depth=3, channels=32, act=relu|tanh|gelu|erf, bias=true, init=torch|normal
    myrtle    Myrtle CNN (Shankar et al. 2020), conv3x3+ReLU stacks, 2x2 average pools,
              global pool, Linear; also myrtle:5          depth=5|7|10, width=64, bias=true
    resnet18  CIFAR-style ResNet-18 (3x3 stem, no max-pool), widths width*(1,2,4,8)
              width=64, norm=bn|gn|none
    wrn       WideResNet-DEPTH-WIDEN (Zagoruyko & Komodakis 2016), DEPTH = 6n+4;
              also wrn:16-4                                depth=16, widen=4, norm=bn|gn|none
    resnet-18 ImageNet-style ResNet-18 (BasicBlocks 2,2,2,2), 7x7 stride-2 stem, max-pool,
    resnet-34 ... ResNet-34 (BasicBlocks 3,4,6,3)     torchvision's parameter names and
    resnet-50 ... ResNet-50 (Bottlenecks 3,4,6,3)     shapes: its state dicts load (--weights)
              pretrained=false, head=none, seed=none
              pretrained=true: torchvision's ImageNet weights from the torch hub cache
              (TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth, ...; never downloaded) unless
              --weights is given; head=N: fc replaced by a fresh Linear(features, N) after the
              weights load; seed=S: draw with S instead of --seed
    resnet-18_pretrained (also -34, -50)  empirical-ntks' name for
              resnet-18:pretrained=true,head=1,seed=438; with it, data written without
              options gets resize=224,normalize=imagenet (see the data spec grammar)
    torchvision  torchvision.models.get_model(TVNAME, num_classes=..., **OPTIONS)
              (needs torchvision)
    file      FACTORY from a Python file, called with input_shape=... ({name: shape} for
              keyword inputs) and num_classes=...
              when its signature accepts them; it must return a torch.nn.Module
  init=normal: weights N(0, 2/fan_in) (readout N(0, 1/fan_in)), biases N(0, 0.01).
  Examples: mlp:depth=10,width=256, cnn, myrtle:depth=7,width=32, resnet18:width=16,norm=gn,
    wrn:16-4, wrn:depth=28,widen=10, resnet-50:head=10, resnet-18_pretrained,
    torchvision:resnet18, file:nets/mine.py:make"""


class ModelSpecError(ValueError):
    """A malformed or unknown model spec; the message ends with :data:`MODEL_GRAMMAR`."""

    def __init__(self, message: str) -> None:
        super().__init__(f"{message}\n\n{MODEL_GRAMMAR}")
        self.reason = message  # the problem alone, for callers that show the grammar elsewhere


def did_you_mean(word: str, candidates: typing.Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the nearest candidate by difflib, or ``""``."""
    candidates = list(candidates)
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    if not close:  # case slips ("MLP", "ResNet18") are the commonest typo
        lowered = {c.lower(): c for c in candidates}
        close = [
            lowered[c] for c in difflib.get_close_matches(word.lower(), lowered, n=1, cutoff=0.5)
        ]
    return f" (did you mean '{close[0]}'?)" if close else ""


# --------------------------------------------------------------------------------------------
# The registry


@dataclass(frozen=True)
class Family:
    """A registered model family: its builder and how its spec text splits.

    ``build(input_shape, num_classes, *args, **options)`` returns the model. ``split(rest)``
    turns the text after ``NAME:`` into ``(args, options_text)``; ``shorthand(item)`` turns a
    leading option without ``=`` (``16-4`` in ``wrn:16-4``) into raw ``{key: text}`` or raises
    :class:`ModelSpecError`; ``check`` sees the coerced options and raises
    :class:`ModelSpecError` for combinations the types cannot express.

    Families with published weights: ``default_weights(options)`` is the state dict to load when
    no ``weights`` are passed (a path, or ``None``: keep the seeded draw); ``after_load(model,
    options)`` runs after the weights load, drawing from the seed's generator where the
    construction left it (a fresh classifier head); ``implied_data(options)`` is the data-spec
    transform the weights expect (``"resize=224,normalize=imagenet"``) for data given without one.
    """

    name: str
    build: Callable[..., nn.Module]
    split: Callable[[str], tuple[tuple[str, ...], str]] | None = None
    shorthand: Callable[[str], dict[str, str]] | None = None
    check: Callable[[dict[str, Any]], None] | None = None
    options: dict[str, inspect.Parameter] = field(default_factory=dict)
    hints: dict[str, Any] = field(default_factory=dict)
    open_options: bool = False  # the builder takes **options (torchvision): any key passes
    default_weights: Callable[[dict[str, Any]], str | None] | None = None
    after_load: Callable[[nn.Module, dict[str, Any]], nn.Module] | None = None
    implied_data: Callable[[dict[str, Any]], str | None] | None = None


_REGISTRY: dict[str, Family] = {}
#: Other projects' model names: alias -> (family, raw options it stands for).
_ALIASES: dict[str, tuple[str, dict[str, str]]] = {}


def register_model(
    name: str,
    *,
    split: Callable[[str], tuple[tuple[str, ...], str]] | None = None,
    shorthand: Callable[[str], dict[str, str]] | None = None,
    check: Callable[[dict[str, Any]], None] | None = None,
    default_weights: Callable[[dict[str, Any]], str | None] | None = None,
    after_load: Callable[[nn.Module, dict[str, Any]], nn.Module] | None = None,
    implied_data: Callable[[dict[str, Any]], str | None] | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``build(input_shape, num_classes, *, key=default, ...)`` as model family ``name``.

    The keyword-only parameters are the spec's options. Annotate them ``int``, ``float``,
    ``bool``, ``str``, ``int | None`` (``none`` or a positive integer) or ``Literal[...]``
    (choices); the default is used when the key is absent. ``default_weights``, ``after_load``
    and ``implied_data``: see :class:`Family`.
    :data:`MODEL_GRAMMAR` is hand-written: a built-in family must be added to it too (a test
    checks that it lists every key and choice).

    Example (then ``build_model("tiny:bias=false", (1, 8, 8), 10)`` works)::

        @register_model("tiny")
        def tiny(input_shape, num_classes, *, bias: bool = True) -> nn.Module:
            return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes, bias=bias))
    """

    def decorate(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        # The options are what follows (input_shape, num_classes).
        params = list(inspect.signature(build).parameters.values())[2:]
        options = {p.name: p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
        open_options = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        _REGISTRY[name] = Family(
            name=name,
            build=build,
            split=split,
            shorthand=shorthand,
            check=check,
            options=options,
            hints=typing.get_type_hints(build),
            open_options=open_options,
            default_weights=default_weights,
            after_load=after_load,
            implied_data=implied_data,
        )
        return build

    return decorate


def register_alias(alias: str, family: str, **options: str) -> None:
    """Let ``alias`` stand for ``family:key=value,...`` (options as spec text), e.g. empirical-ntks'
    ``resnet-18_pretrained``; options written after the alias (``alias:head=10``) override these."""
    _ALIASES[alias.lower()] = (family, dict(options))


def list_aliases() -> dict[str, str]:
    """``{alias: the spec it stands for}``, sorted by alias."""
    return {
        a: f"{fam}:" + ",".join(f"{k}={v}" for k, v in opts.items())
        for a, (fam, opts) in sorted(_ALIASES.items())
    }


def list_models() -> list[str]:
    """The registered model family names, sorted: ``['cnn', 'file', 'mlp', ...]``."""
    return sorted(_REGISTRY)


def get_family(name: str) -> Family:
    """The registered family called ``name``; :class:`ModelSpecError` if there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise _unknown_name(name, name) from None


# --------------------------------------------------------------------------------------------
# The parsed spec


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec, with every option of a built-in family filled in.

    ``args`` are the positional parts: ``(TVNAME,)`` for torchvision, ``(PATH, FACTORY)`` for
    ``file``, ``()`` otherwise. ``str(spec)`` is the canonical text (``mlp`` prints as
    ``mlp:depth=3,width=512,act=relu,bias=true,init=torch``), so equal models print alike.
    """

    name: str
    options: dict[str, Any]
    args: tuple[str, ...] = ()

    def __str__(self) -> str:
        parts = [self.name, *self.args]
        # an option left at None (``head`` of resnet-18) is the same spec written without it
        shown = {k: v for k, v in self.options.items() if v is not None}
        if shown:
            parts.append(",".join(f"{k}={_format_value(v)}" for k, v in shown.items()))
        return ":".join(parts)

    def __hash__(self) -> int:  # options is a dict; the canonical text identifies the spec
        return hash(str(self))


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")
_INT_RE = re.compile(r"^[+-]?\d+$")


def parse_value(text: str) -> int | float | bool | str:
    """An option value as written: ``3`` → 3, ``0.5`` → 0.5, ``true`` → True, else the text."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if _INT_RE.match(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def parse_model_spec(spec: str) -> ModelSpec:
    """Parse a model spec string (see :data:`MODEL_GRAMMAR`); raises :class:`ModelSpecError`.

    >>> str(parse_model_spec("wrn:16-4"))
    'wrn:depth=16,widen=4,norm=bn'
    >>> parse_model_spec("mlp:depth=10,width=256").options["width"]
    256
    """
    if not isinstance(spec, str):
        raise ModelSpecError(f"a model spec is a string, got {type(spec).__name__}")
    text = spec.strip()
    if not text:
        raise ModelSpecError("empty model spec")
    head, colon, rest = text.partition(":")
    name = head.strip().lower()  # names are case-insensitive: MLP, ResNet18
    if not _NAME_RE.match(name):
        raise _unknown_name(head.strip(), spec, malformed=True)
    alias = _ALIASES.get(name)
    if alias is not None:
        name = alias[0]
    fam = _REGISTRY.get(name)
    if fam is None:
        raise _unknown_name(head.strip(), spec)
    if colon and not rest.strip():
        raise ModelSpecError(f"nothing after '{head}:' in {spec!r}: expected key=value options")

    args: tuple[str, ...] = ()
    if fam.split is not None:
        args, rest = fam.split(rest.strip())
    raw = _split_options(fam, rest, spec)
    if alias is not None:
        raw = {**alias[1], **raw}
    options = _coerce_options(fam, raw, spec)
    if fam.check is not None:
        fam.check(options)
    return ModelSpec(name=name, options=options, args=args)


def _unknown_name(name: str, spec: str, *, malformed: bool = False) -> ModelSpecError:
    what = "malformed model name" if malformed else "unknown model"
    hint = did_you_mean(name, [*_REGISTRY, *_ALIASES])
    known = ", ".join(list_models())
    where = f" in {spec!r}" if spec != name else ""
    return ModelSpecError(f"{what} '{name}'{where}{hint}; known models: {known}")


def _split_options(fam: Family, text: str, spec: str) -> dict[str, str]:
    """``key=value,key=value`` (and a leading shorthand) into raw ``{key: text}``."""
    raw: dict[str, str] = {}
    if not text.strip():
        return raw
    for i, item in enumerate(part.strip() for part in text.split(",")):
        if not item:
            raise ModelSpecError(f"empty option in {spec!r} (stray ',')")
        key, eq, value = (s.strip() for s in item.partition("="))
        if not eq:
            if fam.shorthand is None or i > 0:
                raise ModelSpecError(
                    f"malformed option '{item}' in {spec!r}: expected key=value"
                    + (f" (keys of '{fam.name}': {', '.join(fam.options)})" if fam.options else "")
                )
            raw.update(fam.shorthand(item))
            continue
        if not key:
            raise ModelSpecError(f"option '{item}' in {spec!r} has no key")
        if not value:
            raise ModelSpecError(f"option '{key}' in {spec!r} has no value")
        if key in raw:
            raise ModelSpecError(f"option '{key}' is given twice in {spec!r}")
        raw[key] = value
    return raw


def _coerce_options(fam: Family, raw: Mapping[str, str], spec: str) -> dict[str, Any]:
    if fam.open_options:  # torchvision: its own builders check their keywords
        return {key: parse_value(value) for key, value in raw.items()}
    for key in raw:
        if key not in fam.options:
            valid = ", ".join(fam.options) if fam.options else "none"
            raise ModelSpecError(
                f"unknown option '{key}' for model '{fam.name}' in {spec!r}"
                f"{did_you_mean(key, fam.options)}; valid keys: {valid}"
            )
    options: dict[str, Any] = {}
    for key, param in fam.options.items():  # signature order, so str(spec) is canonical
        if key in raw:
            options[key] = _coerce(fam.name, key, raw[key], fam.hints.get(key), spec)
        else:
            options[key] = param.default
    return options


def _coerce(model: str, key: str, text: str, hint: Any, spec: str) -> Any:
    """``text`` as the type the builder declares for ``key``."""
    where = f"option '{key}' of '{model}' in {spec!r}"
    if hint == int | None:  # none, or a size or count like any integer option
        if text.lower() == "none":
            return None
        hint = int
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        for choice in choices:
            if str(choice).lower() == text.lower():
                return choice
        listed = "|".join(str(c) for c in choices)
        hint_text = did_you_mean(text, [str(c) for c in choices])
        raise ModelSpecError(f"{where}: '{text}' is not one of {listed}{hint_text}")
    if hint is bool:
        value = parse_value(text)
        if not isinstance(value, bool):
            raise ModelSpecError(f"{where}: expected true or false, got '{text}'")
        return value
    if hint is int:
        if not _INT_RE.match(text):
            raise ModelSpecError(f"{where}: expected an integer, got '{text}'")
        value = int(text)
        if value < 1:  # every integer option is a size or a count
            raise ModelSpecError(f"{where}: expected a positive integer, got {value}")
        return value
    if hint is float:
        value = parse_value(text)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ModelSpecError(f"{where}: expected a number, got '{text}'")
        return float(value)
    if hint is str:
        return text
    return parse_value(text)
