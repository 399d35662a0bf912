"""`ntkit.linearize` / `ntkit.taylor_expand` against Taylor expansions built from the float64
reference Jacobian (ntkit.reference) and an autograd Hessian, at θ ≠ θ0."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

import ntkit
from ntkit.reference import jacobian_reference

D = torch.float64


def _mlp(seed=0, d=3, width=8, out=2):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, width), nn.Tanh(), nn.Linear(width, out)).double()


def _perturb(lin, scale=0.1, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lin.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _flat_delta(lin, model, names):
    now = dict(lin.model.named_parameters())
    start = dict(model.named_parameters())
    return torch.cat([(now[n] - start[n]).reshape(-1) for n in names])


def test_outputs_and_gradients_equal_the_first_order_expansion():
    model = _mlp()
    x = torch.randn(5, 3, dtype=D)
    lin = ntkit.linearize(model)
    assert torch.allclose(lin(x), model(x), atol=1e-12, rtol=0)
    _perturb(lin)
    names = [n for n, _ in model.named_parameters()]
    J = jacobian_reference(model, x)  # (N, O, P) at θ0
    expected = model(x).detach() + torch.einsum("nop,p->no", J, _flat_delta(lin, model, names).detach())
    out = lin(x)
    assert (out - expected).abs().max() < 1e-8
    w = torch.randn_like(out)
    (out * w).sum().backward()
    grad = torch.cat([p.grad.reshape(-1) for p in lin.parameters()])
    assert (grad - torch.einsum("nop,no->p", J, w)).abs().max() < 1e-8


def test_params_selects_theta_and_the_rest_stays_constant():
    model = _mlp(seed=2)
    x = torch.randn(4, 3, dtype=D)
    lin = ntkit.linearize(model, params="2")
    trainable = [n for n, p in lin.model.named_parameters() if p.requires_grad]
    assert trainable == ["2.weight", "2.bias"]
    _perturb(lin)
    J = jacobian_reference(model, x, params="2")
    expected = model(x).detach() + torch.einsum("nop,p->no", J, _flat_delta(lin, model, trainable).detach())
    assert (lin(x) - expected).abs().max() < 1e-8
    assert torch.equal(lin.model[0].weight, model[0].weight)  # unselected: at θ0, not trained


def test_mapping_and_tuple_inputs_and_output_fn():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 6), nn.Linear(2, 6)
            self.head = nn.Linear(6, 2)

        def forward(self, a, b):
            return {"logits": self.head(torch.tanh(self.a(a) + self.b(b))), "aux": a.sum(1)}

    torch.manual_seed(3)
    model = Two().double()
    x = {"a": torch.randn(4, 3, dtype=D), "b": torch.randn(4, 2, dtype=D)}
    lin = ntkit.linearize(model)
    _perturb(lin)
    names = [n for n, _ in model.named_parameters()]
    J = jacobian_reference(model, x)
    f0 = model(**x)["logits"].detach()
    expected = f0 + torch.einsum("nop,p->no", J, _flat_delta(lin, model, names).detach())
    assert (lin(x) - expected).abs().max() < 1e-8
    assert (lin((x["a"], x["b"])) - expected).abs().max() < 1e-8
    picked = ntkit.linearize(model, output_fn=lambda out: out["logits"][:, :1])
    assert picked(x).shape == (4, 1)


def test_second_order_term_equals_the_hessian_quadratic_form():
    model = _mlp(seed=4, width=6)
    x = torch.randn(3, 3, dtype=D)
    quad = ntkit.taylor_expand(model, 2)
    _perturb(quad, scale=0.2)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    theta0 = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])
    delta = _flat_delta(quad, model, names).detach()

    def f(v, i, a):
        parts = dict(zip(names, (c.reshape(s) for c, s in zip(v.split(sizes), shapes))))
        return functional_call(model, parts, (x[i : i + 1],))[0, a]

    J = jacobian_reference(model, x)
    expected = model(x).detach() + torch.einsum("nop,p->no", J, delta)
    for i in range(3):
        for a in range(2):
            H = torch.autograd.functional.hessian(lambda v: f(v, i, a), theta0)
            expected[i, a] += 0.5 * delta @ H @ delta
    assert (quad(x) - expected).abs().max() < 1e-8
    assert ntkit.taylor_expand(model, 1)(x).shape == (3, 2)


def test_buffers_are_constants_in_eval_mode_and_the_model_is_untouched():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)).double()
    model.train()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(6, 3, dtype=D)
    lin = ntkit.linearize(model).train()
    assert torch.allclose(lin(x), model.eval()(x), atol=1e-12, rtol=0)  # running statistics
    assert torch.allclose(lin(x[:1]), lin(x)[:1], atol=1e-12, rtol=0)  # samples do not interact
    model.train()
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        lin(x).pow(2).mean().backward()
        opt.step()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert "theta0_0" in lin.state_dict()


def test_refusals_are_one_line():
    model = _mlp()
    with pytest.raises(ValueError, match="degree 1 .* or 2"):
        ntkit.taylor_expand(model, 3)
    with pytest.raises(ValueError, match="matches no parameter"):
        ntkit.linearize(model, params="nope")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        ntkit.linearize(lambda x: x)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        ntkit.linearize(model)([[1.0, 2.0, 3.0]])
