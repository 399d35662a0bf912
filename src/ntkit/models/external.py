"""Models from outside ntkit: ``torchvision:NAME[:key=value,...]`` and ``file:PATH.py:FACTORY``.

torchvision is optional and never imported unless a ``torchvision:`` spec is built. Its models
use ``ReLU(inplace=True)``; those flags are switched off so the engine's vmap/jacrev see no
in-place update of an activation they still need.

A ``file:`` spec runs the Python file, like ``python PATH.py`` would, as a fresh module each time
it is built, then calls ``FACTORY``, passing ``input_shape`` and ``num_classes`` only where its
signature accepts them (by name or through ``**kwargs``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from ntkit.models.spec import ModelSpecError, did_you_mean, register_model
from ntkit.models.trust import require_trust

TORCHVISION_INSTALL = (
    "install the torchvision build that matches your torch "
    "(https://pytorch.org/get-started/locally/), e.g. for the CPU wheel: "
    "pip install torchvision --index-url https://download.pytorch.org/whl/cpu"
)


def _import_torchvision() -> ModuleType:
    try:
        import torchvision
    except ModuleNotFoundError as err:
        if err.name != "torchvision":  # installed, but one of its own imports is missing
            raise ImportError(
                f"torchvision could not be imported: {err}. {TORCHVISION_INSTALL}"
            ) from err
        raise ModuleNotFoundError(
            f"torchvision is not installed, so 'torchvision:' model specs are unavailable; "
            f"{TORCHVISION_INSTALL}"
        ) from err
    except Exception as err:  # a build for another torch or CUDA fails while loading its ops
        raise ImportError(
            f"torchvision is installed but could not be imported ({type(err).__name__}: {err}); "
            f"it is probably built for another torch version. {TORCHVISION_INSTALL}"
        ) from err
    return torchvision


def _split_torchvision(rest: str) -> tuple[tuple[str, ...], str]:
    name, _, options = rest.partition(":")
    if not name.strip():
        raise ModelSpecError("'torchvision:' needs a model name, as in 'torchvision:resnet18'")
    return (name.strip(),), options


@register_model("torchvision", split=_split_torchvision)
def torchvision_model(
    input_shape: tuple[int, ...], num_classes: int, name: str, **options: Any
) -> nn.Module:
    """``torchvision.models.get_model(name, num_classes=num_classes, **options)``, no in-place ops."""
    # Pretrained weights are fetched and unpickled (torch.hub, weights_only=False) from a cache
    # file: from a spec read out of someone else's file that needs the user's say-so.
    fetched = [k for k in options if "weights" in k.lower() or "pretrained" in k.lower()]
    if fetched:
        opts = ",".join(f"{k}={v}" for k, v in options.items())
        require_trust(f"torchvision:{name}" + (f":{opts}" if opts else ""),
                      f"downloads torchvision's pretrained weights ({', '.join(fetched)}) and unpickles them")
    tv = _import_torchvision()
    available = tv.models.list_models()
    if name not in available:
        raise ModelSpecError(f"unknown torchvision model '{name}'{did_you_mean(name, available)}")
    if "num_classes" in options:
        raise ModelSpecError("'num_classes' comes from the data; leave it out of the spec")
    model = tv.models.get_model(name, num_classes=num_classes, **options)
    for module in model.modules():
        if getattr(module, "inplace", None) is True:
            module.inplace = False
    return model


def _split_file(rest: str) -> tuple[tuple[str, ...], str]:
    # rsplit: the path itself may hold ':' (C:\nets\mine.py), the factory name cannot.
    path, colon, factory = rest.rpartition(":")
    if not colon or not path.strip():
        raise ModelSpecError(f"'file:{rest}' needs a factory: file:PATH.py:FACTORY")
    path, factory = path.strip(), factory.strip()
    if not path.endswith(".py"):
        raise ModelSpecError(f"'file:' needs a Python file ending in .py, got '{path}'")
    if not factory.isidentifier():
        raise ModelSpecError(f"factory '{factory}' in 'file:{rest}' is not a Python name")
    return (path, factory), ""


class ModelFileError(ModelSpecError):
    """A ``file:`` model whose code fails (syntax error, exception on import or in the factory).

    The spec itself is fine, so the message names the file and line, without the spec grammar.
    """

    def __init__(self, message: str) -> None:
        ValueError.__init__(self, message)
        self.reason = message


def _load_file(file: Path) -> ModuleType:
    # A unique module name per file: registered in sys.modules while it runs, so that
    # dataclasses, pickling and relative lookups inside the file work as in a normal import.
    digest = hashlib.sha1(str(file).encode()).hexdigest()[:12]
    name = f"ntkit_model_file_{file.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ModelSpecError(f"cannot import '{file}' as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        sys.modules.pop(name, None)
        raise ModelFileError(
            f"cannot load model file {file}: {type(e).__name__} at line {e.lineno}: {e.msg}"
        ) from None
    except Exception as e:  # noqa: BLE001 - the user's code failed, not ntkit: one line naming where
        sys.modules.pop(name, None)
        raise ModelFileError(
            f"cannot load model file {file}: {_raised_at(e, file)}; run `python {file}` to see the traceback"
        ) from e
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _raised_at(e: BaseException, file: Path) -> str:
    """``"RuntimeError at line 3: boom"``: the exception and the last line of ``file`` it passed."""
    line = None
    tb = e.__traceback__
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename) == file:
            line = tb.tb_lineno
        tb = tb.tb_next
    where = f" at line {line}" if line is not None else ""
    return f"{type(e).__name__}{where}: {e}"


@register_model("file", split=_split_file)
def file_model(
    input_shape: tuple[int, ...], num_classes: int, path: str, factory: str
) -> nn.Module:
    """``FACTORY([input_shape=...], [num_classes=...])`` from the file at ``path``."""
    file = Path(path).expanduser().resolve()
    # Before the file is even looked at: a spec read from a saved model or store runs nothing
    # unless the user named this file (see ntkit.models.trust).
    require_trust(f"file:{path}:{factory}", f"would import and run {file}", file=file)
    if not file.is_file():
        raise ModelSpecError(f"model file not found: '{path}' (resolved to {file})")
    module = _load_file(file)
    fn = getattr(module, factory, None)
    if fn is None:
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise ModelSpecError(
            f"'{path}' has no '{factory}'{did_you_mean(factory, names)}; "
            f"callables there: {', '.join(names) or 'none'}"
        )
    if not callable(fn):
        raise ModelSpecError(f"'{factory}' in '{path}' is a {type(fn).__name__}, not a callable")
    offered = {"input_shape": dict(input_shape) if isinstance(input_shape, dict) else tuple(input_shape),
               "num_classes": num_classes}
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # some builtins have no signature: offer nothing
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {
        k: v
        for k, v in offered.items()
        if takes_any or (k in params and params[k].kind is not inspect.Parameter.POSITIONAL_ONLY)
    }
    try:
        model = fn(**kwargs)
    except Exception as e:  # noqa: BLE001 - the user's factory failed: one line naming where
        raise ModelFileError(
            f"file:{path}:{factory}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) raised "
            f"{_raised_at(e, file)}"
        ) from e
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"file:{path}:{factory} returned a {type(model).__name__}; it must return a "
            "torch.nn.Module"
        )
    return model
