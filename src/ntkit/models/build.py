"""Building a model from a spec: seeded weights, a state dict, and a fingerprint of the result.

The same spec and seed always give bit-identical weights, whatever the state of the global RNG,
the default dtype or the default device: a kernel store that resumes rebuilds the model and
checks :func:`model_fingerprint` against the one it started with.
"""

from __future__ import annotations

import hashlib
import operator
import os
import pickle
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from ntkit._runtime.digest import tensor_bytes
from ntkit.models.spec import ModelSpec, ModelSpecError, get_family, parse_model_spec

__all__ = [
    "ModelWeightsError",
    "build_model",
    "load_weights",
    "model_fingerprint",
    "parameter_count",
    "seed_matters",
]


class ModelWeightsError(ValueError):
    """A weights file that is not a state dict, or one that does not fit the model."""


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Module construction draws from a CPU generator seeded with ``seed``; nothing leaks out.

    Only the CPU generator is forked and seeded (``torch.manual_seed`` would also reseed every
    CUDA device, outside the fork). The default dtype and device are pinned because they
    change what the initializers draw.
    """
    dtype = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.default_generator.manual_seed(seed)
        torch.set_default_dtype(torch.float32)
        try:
            yield
        finally:
            torch.set_default_dtype(dtype)


def build_model(
    spec: str | ModelSpec,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    seed: int = 0,
    weights: str | os.PathLike[str] | None = None,
) -> nn.Module:
    """Build the model a spec names, for inputs ``(N, *input_shape)`` and outputs ``(N, num_classes)``.

    Returns an ``nn.Module`` in eval mode (BatchNorm uses its running statistics, so each
    output depends on its own sample only), float32, on the CPU. Its weights are drawn from
    ``seed`` without touching the global RNG, or loaded from the state dict at ``weights``
    (``torch.load(weights_only=True)``, strict: a mismatch raises :class:`ModelWeightsError`);
    a family with published weights loads them when none are passed (``resnet-18:pretrained=true``:
    torchvision's file in the torch hub cache) and may then replace a part (``head=N``: a fresh
    classifier drawn from the seed, after the weights load).
    Raises :class:`~ntkit.models.ModelSpecError` for a malformed or unknown spec.

    >>> model = build_model("mlp:depth=3,width=64", input_shape=(1, 8, 8), num_classes=10)
    >>> model(torch.zeros(5, 1, 8, 8)).shape
    torch.Size([5, 10])
    """
    parsed = spec if isinstance(spec, ModelSpec) else parse_model_spec(spec)
    if isinstance(input_shape, Mapping):  # keyword inputs (an npz of input_ids, attention_mask, ...)
        if parsed.name != "file":
            raise ModelSpecError(
                f"model {parsed} takes one input array, but the data holds keyword inputs "
                f"({', '.join(input_shape)}): use a model whose forward takes them, file:PATH.py:FACTORY "
                "(its factory gets input_shape={name: shape})")
        shape = {str(k): tuple(operator.index(d) for d in v) for k, v in input_shape.items()}
    else:
        shape = tuple(operator.index(d) for d in input_shape)
        if not shape or any(d < 1 for d in shape):
            raise ValueError(f"input_shape must be a non-empty tuple of positive sizes, got {shape}")
    num_classes = operator.index(num_classes)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    family = get_family(parsed.name)
    with _seeded(operator.index(seed)):
        try:
            model = family.build(shape, num_classes, *parsed.args, **parsed.options)
            drawn = torch.default_generator.get_state()  # where a head drawn after loading goes on
        except (MemoryError, RuntimeError) as e:
            if not isinstance(e, MemoryError) and "allocate" not in str(e):
                raise
            raise ModelSpecError(
                f"model {parsed} does not fit in memory ({str(e).splitlines()[0][:200] if str(e) else 'MemoryError'}): "
                "choose a smaller width or depth"
            ) from None
    model = model.to(device="cpu", dtype=torch.float32)
    if weights is None and family.default_weights is not None:
        weights = family.default_weights(parsed.options)  # e.g. torchvision's file in the hub cache
    if weights is not None:
        load_weights(model, weights)
    if family.after_load is not None:
        with _seeded(0):
            torch.default_generator.set_state(drawn)
            model = family.after_load(model, parsed.options).to(device="cpu", dtype=torch.float32)
    return model.eval()


def seed_matters(spec: str | ModelSpec, weights: str | os.PathLike[str] | None) -> bool:
    """Whether ``seed`` changes the model ``build_model(spec, ..., weights=weights)`` returns: never
    when the spec names its own (``seed=438``); else always without weights, and with weights
    only when a part is drawn after they load (``head=N``)."""
    parsed = spec if isinstance(spec, ModelSpec) else parse_model_spec(spec)
    if parsed.options.get("seed") is not None:  # the spec's own seed (resnet-18_pretrained: 438)
        return False
    if weights is None:
        return True
    return get_family(parsed.name).after_load is not None and parsed.options.get("head") is not None


def _listing(items: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


_SAVE_HINT = "save the weights alone with torch.save(model.state_dict(), PATH)"


def _read_state(path: str | os.PathLike[str]) -> object:
    """``torch.load(path, weights_only=True)``, its failures as one-line errors with the fix.

    torch's own messages suggest ``weights_only=False``, which would run the file's code; ours
    never do.
    """
    name = os.fspath(path)
    if not os.path.exists(name):
        raise FileNotFoundError(f"no weights file at {name}: {_SAVE_HINT}")
    if os.path.isdir(name):
        raise ModelWeightsError(f"{name} is a directory, not a weights file: {_SAVE_HINT}")
    try:
        with warnings.catch_warnings():
            # a pickle of another protocol: refused below in our words, not a warning in torch's
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(name, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f", it references {found.group(1)}" if found else ""
        raise ModelWeightsError(
            f"{name} is not a plain state dict (a safe load refused it{what}): it holds pickled Python "
            f"objects, e.g. a whole model saved with torch.save(model), or is damaged; ntkit never "
            f"unpickles code: {_SAVE_HINT}"
        ) from None
    except Exception as e:  # noqa: BLE001 - torch's safe unpickler fails on garbage in many ways
        # (IndexError, KeyError, UnicodeDecodeError, ... on a text file): all mean "not a weights file"
        first = re.split(r"\. |\n", str(e).strip())[0] if str(e).strip() else type(e).__name__
        raise ModelWeightsError(
            f"{name} is not a readable PyTorch weights file (truncated, damaged or another format: "
            f"{first[:200]}); {_SAVE_HINT}"
        ) from None


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load the state dict saved at ``path`` into ``model`` (strictly) and return ``model``.

    The file is read with ``torch.load(path, weights_only=True, map_location="cpu")``, so it may
    hold tensors and plain containers only, never code. Missing keys, unexpected keys and shape
    mismatches are all listed in one :class:`ModelWeightsError`.
    """
    state = _read_state(path)
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        hint = ""
        if isinstance(state, Mapping) and any(k in state for k in ("state_dict", "model")):
            hint = " It looks like a training checkpoint: save checkpoint['state_dict'] alone."
        raise ModelWeightsError(
            f"{os.fspath(path)} does not hold a state dict (a mapping of names to tensors) but "
            f"a {type(state).__name__}.{hint or ' ' + _SAVE_HINT[0].upper() + _SAVE_HINT[1:] + '.'}"
        )
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        lines = [f"the weights in {os.fspath(path)} do not fit the model:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_listing(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): {_listing(mismatched)}")
        lines.append(
            "  (was the state dict saved from a model built with the same spec and input shape?)"
        )
        raise ModelWeightsError("\n".join(lines))
    model.load_state_dict(state, strict=True)
    return model


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 (hex) of the state dict: every name, dtype, shape and the raw bytes, in order.

    Stable across runs and processes on the same byte order; any changed weight, buffer,
    name, shape or dtype changes it. Used to refuse resuming a kernel store with other weights.
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        header = f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode()
        data = tensor_bytes(tensor)
        # Length-prefixed, so no two different state dicts serialize to the same stream.
        for chunk in (header, data):
            digest.update(len(chunk).to_bytes(8, "little"))
            digest.update(chunk)
    return digest.hexdigest()


def parameter_count(model: nn.Module) -> int:
    """P, the number of trainable parameters (tied parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
