"""A zoo of small models for checking every method against the float64 reference.

Settings are data: each entry builds a float64 model in eval mode and its inputs. Adding an
architecture adds an entry here, not a test function. The zoo covers dense, convolutional with
BatchNorm (non-trivial running statistics), residual, tied weights (a module called twice and a
parameter shared by two modules), frozen parameters, O = 1 as (N,) and (N, 1), attention over
integer tokens, grouped/dilated/transposed convolutions with GroupNorm, and a model that vmap
cannot transform.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

D = torch.float64


class Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, c, 3, padding=1)
        self.a = nn.Conv2d(c, c, 3, padding=1)
        self.b = nn.Conv2d(c, c, 3, padding=1)
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(h + self.b(torch.relu(self.a(h))))
        return self.fc(h.mean((2, 3)))


class Tied(nn.Module):
    """One Linear called twice, and a weight shared by two modules."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 6)
        self.mid = nn.Linear(6, 6)
        self.out = nn.Linear(6, 4)
        self.out2 = nn.Linear(6, 4)
        self.out2.weight = self.out.weight  # shared parameter

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.mid(h))
        h = torch.tanh(self.mid(h))  # called twice
        return self.out(h) + 0.5 * self.out2(h * h)


class Attention(nn.Module):
    """Token embedding, multi-head self-attention, LayerNorm, mean pool, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.pos = nn.Parameter(torch.randn(5, 8) * 0.1)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens):
        h = self.emb(tokens) + self.pos
        a, _ = self.attn(h, h, h, need_weights=False)
        h = self.norm(h + a)
        return self.head(h.mean(1))


class ConvZoo(nn.Module):
    """Grouped + dilated conv, GroupNorm, transposed conv, Conv1d over rows."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=2, dilation=2)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1, groups=2, stride=2)
        self.gn = nn.GroupNorm(2, 4)
        self.up = nn.ConvTranspose2d(4, 2, 2, stride=2)
        self.c1d = nn.Conv1d(2, 3, 3, padding=1, groups=1)
        self.fc = nn.Linear(3, 5)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        h = self.gn(torch.relu(self.c2(h)))
        h = torch.tanh(self.up(h))  # (N, 2, 6, 6)
        h = self.c1d(h.mean(2))  # (N, 3, 6)
        return self.fc(torch.tanh(h).mean(2))  # no ReLU here: 3 dead channels would zero the conv terms


class NotVmappable(nn.Module):
    """Data-dependent control flow through .item(): torch.func.vmap cannot transform it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        if h.sum().item() > 1e9:  # never true, but vmap cannot know
            h = h * 2
        return self.b(h)


class Squeeze(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).squeeze(-1)


def _cnn_bn() -> nn.Module:
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
        nn.Conv2d(3, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(16, 10),
    )
    for m in net.modules():  # non-trivial running statistics and affine parameters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return net


def _frozen() -> nn.Module:
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 7), nn.Tanh(), nn.Linear(7, 3))
    net[0].weight.requires_grad_(False)
    net[2].bias.requires_grad_(False)
    return net


@dataclass
class Case:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    last: str  # a params pattern selecting a strict subset (last-layer NTK)
    tokens: int = 0  # > 0: integer inputs in range(tokens)
    n1: int = 5
    n2: int = 3

    def model(self) -> nn.Module:
        torch.manual_seed(zlib.crc32(self.name.encode()))  # str hash() varies per process
        return self.build().to(D).eval()

    def inputs(self, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        if self.tokens:
            mk = lambda n: torch.randint(0, self.tokens, (n, *self.input_shape), generator=g)  # noqa: E731
        else:
            mk = lambda n: torch.randn(n, *self.input_shape, generator=g, dtype=D)  # noqa: E731
        return mk(self.n1), mk(self.n2)


ZOO: list[Case] = [
    Case("mlp-o10", lambda: nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 10)), (5,), "2.*"),
    Case("mlp-o1-squeezed", lambda: Squeeze(nn.Sequential(nn.Linear(5, 6), nn.GELU(), nn.Linear(6, 1))), (5,), "net.2"),
    Case("mlp-o1", lambda: nn.Sequential(nn.Linear(5, 6), nn.Softplus(), nn.Linear(6, 1)), (5,), "2.weight"),
    Case("cnn-bn", _cnn_bn, (2, 6, 6), "7.*"),
    Case("residual", lambda: Residual(3), (2, 5, 5), "fc.*"),
    Case("tied", Tied, (5,), "out.*"),
    Case("frozen", _frozen, (5,), "4.*"),
    Case("attention", Attention, (5,), "head", tokens=11),
    Case("convzoo", ConvZoo, (2, 6, 6), "fc.*"),
    Case("not-vmappable", NotVmappable, (4,), "b.*"),
]


class Stateful(nn.Module):
    """Updates a buffer in place in forward (a call counter): vmap refuses, the model must not change."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return torch.sin(self.lin(x))


ZOO.append(Case("stateful", Stateful, (4,), "lin.bias"))


# -- shared by the method tests ----------------------------------------------------------------
OUTPUTS = ["full", "trace", "diagonal", "logit:-1", "pntk"]
# float64: both sides sum the same products in different orders (≤ 1e-13 here); 1e-8 still
# catches any wrong term, which changes entries by O(1) relative.
RTOL64 = 1e-8
_REF: dict = {}


def rel_err(k: torch.Tensor, r: torch.Tensor) -> float:
    """max|k - r| / max|r| (shapes must match)."""
    assert k.shape == r.shape, (k.shape, r.shape)
    return float((k.double() - r).abs().max() / r.abs().max().clamp_min(1e-300))


def reference(case: Case, symmetric: bool, output: str, params=None) -> torch.Tensor:
    """The float64 reference kernel of a zoo case, memoized per (case, N, symmetry, output, params)."""
    from ntkit.reference import ntk_reference

    key = (case.name, case.n1, case.n2, symmetric, output, params)
    if key not in _REF:
        x1, x2 = case.inputs()
        _REF[key] = ntk_reference(case.model(), x1, None if symmetric else x2, output, params)
    return _REF[key]
