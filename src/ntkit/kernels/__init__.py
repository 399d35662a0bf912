"""Kernels for kernel machines: `k(x, z) -> (N, M)`, computed in blocks on the inputs' device.

`Laplacian`, `Gaussian` (radial, on flattened inputs), `NtkRelu` (the infinite-width ReLU MLP
NTK), `EmpiricalNTK` (a network's eNTK on raw inputs, caching the centers' Jacobian rows) and
`Precomputed` (a stored matrix; inputs are indices). Strings such as `laplacian:bandwidth=10`,
`ntk:cnn` or `npy:K.npy` are parsed by `parse_kernel` (grammar: `KERNEL_GRAMMAR`).

>>> import torch
>>> from ntkit.kernels import Laplacian
>>> Laplacian(bandwidth=10.0)(torch.randn(5, 3), torch.randn(2, 3)).shape
torch.Size([5, 2])
"""

from ntkit.kernels.base import FunctionKernel, Kernel, KernelInputError, as_kernel
from ntkit.kernels.empirical import EmpiricalNTK
from ntkit.kernels.ntk_relu import NtkRelu
from ntkit.kernels.precomputed import Precomputed
from ntkit.kernels.radial import Gaussian, Laplacian
from ntkit.kernels.spec import KERNEL_GRAMMAR, KernelSpecError, kernel_config, kernel_from_config, parse_kernel

__all__ = ["Kernel", "Laplacian", "Gaussian", "NtkRelu", "EmpiricalNTK", "Precomputed", "FunctionKernel",
           "parse_kernel", "KERNEL_GRAMMAR", "KernelSpecError", "KernelInputError", "as_kernel",
           "kernel_config", "kernel_from_config"]
