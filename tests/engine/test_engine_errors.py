"""Every documented bad input fails early with a message that names the problem and the fix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ntkit

D = torch.float64


def mlp(o: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, o)).to(D).eval()


class Weird(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.lin = nn.Linear(4, 6).to(D)

    def forward(self, x):
        y = self.lin(x)
        if self.kind == "3d":
            return y.reshape(x.shape[0], 2, 3)
        if self.kind == "tuple":
            return y, y
        if self.kind == "scalar":
            return y.sum()
        if self.kind == "int":
            return y.long()
        return y


X = torch.randn(3, 4, dtype=D)

CASES = [
    # (description, call, exception, message fragments)
    ("unknown method", lambda: ntkit.ntk(mlp(), X, method="jacobain"), ValueError,
     ["unknown method 'jacobain'", "did you mean 'jacobian'", "auto, jacobian, ntk-vp, structured"]),
    ("near-miss method", lambda: ntkit.ntk(mlp(), X, method="structure"), ValueError,
     ["unknown method 'structure'", "did you mean 'structured'", "auto, jacobian, ntk-vp, structured"]),
    ("unknown output", lambda: ntkit.ntk(mlp(), X, output="traces"), ValueError,
     ["unknown output 'traces'", "did you mean 'trace'", "logit:K"]),
    ("bad logit index", lambda: ntkit.ntk(mlp(), X, output="logit:x"), ValueError, ["integer logit index"]),
    ("logit out of range", lambda: ntkit.ntk(mlp(3), X, output="logit:3"), ValueError,
     ["out of range", "O = 3", "0..2"]),
    ("input shape rejected", lambda: ntkit.ntk(mlp(), torch.randn(3, 5, dtype=D)), ValueError,
     ["rejected inputs of shape (3, 5)", "input shape"]),
    ("NaN input", lambda: ntkit.ntk(mlp(), torch.tensor([[0.0, float("nan"), 1, 2]] * 2, dtype=D)),
     ValueError, ["x1 contains 2 NaN or Inf"]),
    ("Inf in x2", lambda: ntkit.ntk(mlp(), X, torch.full((2, 4), float("inf"), dtype=D)), ValueError,
     ["x2 contains 8 NaN or Inf"]),
    ("tuple output", lambda: ntkit.ntk(Weird("tuple"), X), ValueError,
     ["returned a tuple with 2 tensors", "(3, 6), 1: (3, 6)", "output_fn=lambda out: out[0]"]),
    ("scalar output", lambda: ntkit.ntk(Weird("scalar"), X), ValueError, ["shape ()", "batch first"]),
    ("axes out of range", lambda: ntkit.ntk(Weird("3d"), X, trace_axes=3), ValueError,
     ["trace_axes=(3,)", "(N, 2, 3) has output axes 1..2"]),
    ("batch axis reduced", lambda: ntkit.ntk(Weird("3d"), X, diagonal_axes=0), ValueError, ["axis 0 is the batch axis"]),
    ("axes with trace", lambda: ntkit.ntk(Weird("3d"), X, output="trace", trace_axes=1), ValueError,
     ["output='trace'", "one of them"]),
    ("axis traced and kept", lambda: ntkit.ntk(Weird("3d"), X, trace_axes=1, diagonal_axes=-2), ValueError,
     ["axis 1 is in both"]),
    ("ntk_vp with axes", lambda: ntkit.ntk_vp(mlp(), X, X, torch.randn(3, 3, dtype=D), output="axes:trace=1"),
     ValueError, ["trace/diagonal axes are not supported here"]),
    ("ntk_vp with a tuple v", lambda: ntkit.ntk_vp(mlp(), X, X, (torch.randn(3, 3, dtype=D),)), TypeError,
     ["v must be a tensor"]),
    ("bad axes string", lambda: ntkit.ntk(mlp(), X, output="axes:trace=x"), ValueError, ["axes:trace=A"]),
    ("output_fn fails", lambda: ntkit.ntk(mlp(), X, output_fn=lambda out: out["logits"]), ValueError,
     ["output_fn failed", "IndexError"]),
    ("dict x1 batch sizes", lambda: ntkit.ntk(mlp(), {"x": X, "m": torch.ones(2)}), ValueError,
     ["different batch sizes", "x: 3, m: 2"]),
    ("dict and tensor", lambda: ntkit.ntk(mlp(), (X,), X), ValueError, ["different structures", "(0: (3, 4) float64)"]),
    ("dict wrong names", lambda: ntkit.ntk(mlp(), {"inputs": X}), ValueError,
     ["rejected inputs {inputs: (3, 4) float64}", "argument names"]),
    ("integer output", lambda: ntkit.ntk(Weird("int"), X), ValueError, ["must be floating"]),
    ("pattern matches nothing", lambda: ntkit.ntk(mlp(), X, params="fc.*"), ValueError,
     ["'fc.*' matches no parameter", "0.weight, 0.bias, 2.weight, 2.bias"]),
    ("dtype mismatch", lambda: ntkit.ntk(mlp(), X.float()), ValueError,
     ["x1 has dtype torch.float32", "torch.float64", "convert"]),
    ("x1/x2 shapes differ", lambda: ntkit.ntk(mlp(), X, torch.randn(2, 5, dtype=D)), ValueError,
     ["different input shapes (4,) and (5,)"]),
    ("device mismatch", lambda: ntkit.ntk(mlp(), X.to("meta")), ValueError,
     ["x1 is on meta but the model is on cpu", "device="]),
    ("empty input", lambda: ntkit.ntk(mlp(), X[:0]), ValueError, ["x1 is empty"]),
    ("not a tensor", lambda: ntkit.ntk(mlp(), [[1.0, 2.0, 3.0, 4.0]]), TypeError, ["x1 must be a torch.Tensor", "list of list", "torch.tensor"]),
    ("not a module", lambda: ntkit.ntk(lambda x: x, X), TypeError, ["torch.nn.Module"]),
    ("bad batch_size", lambda: ntkit.ntk(mlp(), X, batch_size=0), ValueError, ["batch_size must be a positive"]),
    ("bad memory", lambda: ntkit.ntk(mlp(), X, memory="lots"), ValueError, ["cannot read memory budget 'lots'"]),
    ("bad ntk_fn option", lambda: ntkit.ntk_fn(mlp(), output="ful"), ValueError, ["did you mean 'full'"]),
    ("ntk_vp bad v", lambda: ntkit.ntk_vp(mlp(), X, X, torch.randn(3, 2, dtype=D)), ValueError,
     ["v has shape (3, 2)", "(3, 3)"]),
]


@pytest.mark.parametrize("call,exc,fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_messages(call, exc, fragments):
    with pytest.raises(exc) as info:
        call()
    for frag in fragments:
        assert frag in str(info.value), (frag, str(info.value))


def test_frozen_only_selection():
    model = mlp()
    model[2].requires_grad_(False)
    with pytest.raises(ValueError, match="matches only frozen parameters"):
        ntkit.ntk(model, X, params="2.*")
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="every parameter of the model is frozen"):
        ntkit.ntk(model, X)


def test_mixed_parameter_dtypes():
    model = mlp()
    model[2].float()
    with pytest.raises(ValueError, match="mixes parameter dtypes"):
        ntkit.ntk(model, X)


@pytest.mark.parametrize("layer", [nn.BatchNorm1d(5), nn.Dropout(0.5)], ids=["batchnorm", "dropout"])
def test_training_mode_that_mixes_samples_is_an_error(layer):
    model = nn.Sequential(nn.Linear(4, 5), layer, nn.Tanh(), nn.Linear(5, 2)).to(D).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"training mode.*call model\.eval\(\)"):
        ntkit.ntk(model, torch.randn(6, 4, dtype=D))
    # the check must not leave BatchNorm's running statistics updated
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.isfinite(ntkit.ntk(model.eval(), torch.randn(6, 4, dtype=D))).all()
