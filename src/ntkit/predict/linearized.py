"""The linearized network f_lin(x) = f(x; θ0) + J(x)(θ − θ0) as a trainable `nn.Module`.

Lee et al. 2019 ("Wide Neural Networks of Any Depth Evolve as Linear Models Under Gradient
Descent"): wide networks trained by gradient descent stay close to their first-order Taylor
expansion in the parameters, whose training has a closed form in the eNTK at initialization
(`ntkit.predict.gradient_descent_mse`). `linearize` builds that model in PyTorch: one forward-mode
product (`torch.func.jvp` through `torch.func.functional_call`) per call, no Jacobian formed.
`taylor_expand(model, 2)` adds the second-order term ½ (θ − θ0)ᵀ H(x) (θ − θ0) by a nested jvp.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, jvp

from ntkit.engine.functional import OutputFn, ParamSelection, select_parameters
from ntkit.engine.inputs import Batch, Inputs, as_inputs
from ntkit.engine.returns import pick_output

__all__ = ["Linearized", "linearize", "taylor_expand"]


class Linearized(nn.Module):
    """f(x; θ0) + J(x) δ (+ ½ δᵀ H(x) δ for degree 2), δ = θ − θ0, for a copy of `model`.

    `parameters()` are the copy's parameters: the selected ones are θ (trainable, initialised to
    θ0); frozen and unselected ones are constants (requires_grad=False). θ0 is kept in buffers
    (`theta0_0`, `theta0_1`, ... in the order of `names`), so `state_dict()` saves both. The
    copy is kept in eval mode whatever `train()` says: BatchNorm uses its running statistics
    (the model's buffers, as constants) and dropout is off, because the linearization is taken
    at one fixed function f(·; θ0). The user's model is never modified.

    forward(x): x as for `ntkit.ntk` (a tensor (N, *input), a tuple of tensors passed as
    positional arguments, or a mapping passed as keyword arguments) -> the model's differentiated
    output (N, *S), picked by `output_fn` (default: `ntkit.engine.returns.pick_output`).
    """

    def __init__(self, model: nn.Module, params: ParamSelection = None, degree: int = 1,
                 output_fn: OutputFn | None = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if degree not in (1, 2):
            raise ValueError(f"degree must be 1 (linearize) or 2 (second-order Taylor model), got {degree!r}")
        if output_fn is not None and not callable(output_fn):
            raise TypeError(f"output_fn must be a callable taking the model's return value, got {output_fn!r}")
        self.names: list[str] = select_parameters(model, params)
        self.degree = degree
        self.output_fn = output_fn
        self.model = copy.deepcopy(model).eval()
        for name, p in self.model.named_parameters():
            if name not in self.names:
                p.requires_grad_(False)
        for i, name in enumerate(self.names):
            self.register_buffer(f"theta0_{i}", self.model.get_parameter(name).detach().clone())

    def train(self, mode: bool = True) -> Linearized:
        """Sets `self.training` only: the linearized function does not change with the mode."""
        self.training = mode
        return self

    def theta0(self) -> dict[str, torch.Tensor]:
        """θ0: {parameter name: tensor}, the point of the expansion."""
        return {n: getattr(self, f"theta0_{i}") for i, n in enumerate(self.names)}

    def delta(self) -> dict[str, torch.Tensor]:
        """θ − θ0 per selected parameter (differentiable in θ)."""
        return {n: self.model.get_parameter(n) - t0 for n, t0 in self.theta0().items()}

    def _function(self, x: Any):
        def f(theta: dict[str, torch.Tensor]) -> torch.Tensor:
            if isinstance(x, Batch):
                out = functional_call(self.model, theta, x.args, x.kwargs)
            else:
                out = functional_call(self.model, theta, (x,))
            return self.output_fn(out) if self.output_fn is not None else pick_output(out)
        return f

    def forward(self, x: Inputs) -> torch.Tensor:
        x = as_inputs(x, "x")
        f = self._function(x)
        theta0, delta = self.theta0(), self.delta()
        if self.degree == 1:
            f0, jd = jvp(f, (theta0,), (delta,))
            return f0 + jd
        # d/dε [f(θ0 + εδ), J(θ0 + εδ)δ] at ε = 0 = [Jδ, δᵀHδ]: one nested forward-mode product
        def first(theta):
            return jvp(f, (theta,), (delta,))
        (f0, jd), (_, hdd) = jvp(first, (theta0,), (delta,))
        return f0 + jd + 0.5 * hdd

    def extra_repr(self) -> str:
        size = sum(self.model.get_parameter(n).numel() for n in self.names)
        return f"degree={self.degree}, parameters={len(self.names)} tensors ({size:,} values)"


def linearize(model: nn.Module, params: ParamSelection = None, *, output_fn: OutputFn | None = None) -> Linearized:
    """The linearized network f_lin(x) = f(x; θ0) + J(x)(θ − θ0) as a trainable `nn.Module`.

    Args:
        model: any nn.Module (copied; the original is never changed). Its buffers are used as
            constants and it is evaluated in eval mode (BatchNorm running statistics, no
            dropout): the expansion is around one fixed function.
        params: which parameters are θ, as in `ntkit.ntk` (names, globs, module prefixes;
            default: all trainable ones). The others stay at their values as constants.
        output_fn: picks the tensor from the model's return value, as in `ntkit.ntk`.

    Returns:
        A `Linearized` module: `lin(x)` -> (N, *S), the same shape as the model's output;
        `lin.parameters()` train like any module's (optimizers, `.backward()`, `.to()`).
        Training it by gradient descent on MSE follows `ntkit.predict.gradient_descent_mse`
        with the eNTK of `model` (on `params`) exactly.

    Each call costs about two forward passes (one jvp); memory holds θ, θ0 and the copy.

    >>> import torch, ntkit
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    >>> lin = ntkit.linearize(net)
    >>> x = torch.randn(4, 3)
    >>> torch.allclose(lin(x), net(x))  # θ = θ0 at first
    True
    """
    return Linearized(model, params, 1, output_fn)


def taylor_expand(model: nn.Module, degree: int, params: ParamSelection = None, *,
                  output_fn: OutputFn | None = None) -> Linearized:
    """The Taylor expansion of `model` in its parameters around θ0, of degree 1 or 2.

    degree 1 is `linearize`; degree 2 adds ½ (θ − θ0)ᵀ H(x) (θ − θ0) (H the Hessian of each output
    in θ), computed by a nested forward-mode product: about twice the cost of degree 1. Other
    arguments and the returned module as for `linearize`.
    """
    if not isinstance(degree, int) or isinstance(degree, bool) or degree not in (1, 2):
        raise ValueError(f"taylor_expand supports degree 1 (linearize) or 2, got {degree!r}; "
                         "higher orders are not implemented")
    return Linearized(model, params, degree, output_fn)
