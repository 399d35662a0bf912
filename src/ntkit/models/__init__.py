"""Architectures by name: ``build_model("mlp:depth=3,width=512", input_shape, num_classes)``.

A leaf of ntkit (it imports nothing else from the package). Specs are parsed by
:func:`parse_model_spec` (grammar in :data:`MODEL_GRAMMAR`); every family is a builder function
in its own module, registered with :func:`register_model`. Models come back in eval mode,
float32, on the CPU, with weights drawn from a fixed seed, and every built-in model can be
transformed per sample by ``torch.func.vmap`` / ``jacrev`` / ``jvp``.

>>> import torch
>>> from ntkit.models import build_model
>>> model = build_model("cnn", input_shape=(3, 32, 32), num_classes=10, seed=0)
>>> sum(p.numel() for p in model.parameters())
19722
"""

from __future__ import annotations

# Imported for their side effect: each family module registers its builders.
from ntkit.models import cnn, external, imagenet_resnet, mlp, myrtle, resnet, wrn  # noqa: F401
from ntkit.models.build import (
    ModelWeightsError,
    build_model,
    load_weights,
    model_fingerprint,
    parameter_count,
    seed_matters,
)
from ntkit.models.imagenet_resnet import PretrainedWeightsNotFoundError, hub_weights_path
from ntkit.models.spec import (
    MODEL_GRAMMAR,
    ModelSpec,
    ModelSpecError,
    list_aliases,
    list_models,
    parse_model_spec,
    register_alias,
    register_model,
)
from ntkit.models.trust import UntrustedModelError, untrusted_source

__all__ = [
    "MODEL_GRAMMAR",
    "ModelSpec",
    "ModelSpecError",
    "ModelWeightsError",
    "build_model",
    "hub_weights_path",
    "list_aliases",
    "list_models",
    "load_weights",
    "model_fingerprint",
    "parameter_count",
    "PretrainedWeightsNotFoundError",
    "parse_model_spec",
    "register_alias",
    "register_model",
    "seed_matters",
    "UntrustedModelError",
    "untrusted_source",
]
