"""The one way ntkit turns a tensor into the bytes its fingerprints hash.

Every identity check hashes tensors through `tensor_bytes`:
- a kernel store's model (`ntkit.models.build.model_fingerprint`);
- its inputs (`ntkit.engine.inputs.fingerprint_update`, for `ntkit.tiled.sources.DataSource`);
- a saved solver's probe of its precomputed kernel (`ntkit.solvers.base.kernel_probe`).

The bytes are the raw, row-major storage on the CPU, whatever the device, layout, strides or dtype
(bfloat16 included, which numpy cannot represent). The framing around them (names, dtypes,
shapes, N, length prefixes) belongs to each record's format. It stays exactly as those records
were first written, so stores and saved models made before keep their identity. A change of
framing is a change of format, with its version.
"""

from __future__ import annotations

import torch

__all__ = ["tensor_bytes"]


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of `t` (any shape, dtype, device or strides) in row-major order; b"" when empty."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
