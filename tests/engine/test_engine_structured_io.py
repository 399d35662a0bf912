"""Models as researchers write them: tuple and mapping inputs (with a per-sample attention mask),
tuple / mapping / dataclass outputs, and (N, *S) outputs with trace and diagonal axes, by every
method, against the float64 brute-force reference (`ntkit.reference`, which has its own copy of
the input/output contract).

Tolerance 1e-8 relative to the kernel's largest entry: float64 sums of a few hundred products
differ from the reference's summation order by ~1e-15, so 1e-8 leaves room only for real errors
(a mask applied to the wrong sample, a transposed axis, a wrong reduction)."""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import ntkit
from ntkit.reference import ntk_reference
from zoo import RTOL64, ZOO, reference, rel_err

D = torch.float64
METHODS = ["jacobian", "ntk-vp", "structured", "auto"]


class MaskedEncoder(nn.Module):
    """Token ids + attention mask -> a mapping with per-token logits (N, T, C), pooled ones (N, C)."""

    def __init__(self, vocab: int = 13, d: int = 6, c: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.norm = nn.LayerNorm(d)
        self.mix = nn.Linear(d, d)
        self.head = nn.Linear(d, c)

    def forward(self, input_ids, attention_mask, scale: float = 1.0):
        h = self.norm(self.emb(input_ids)) * attention_mask[..., None]
        pooled = h.sum(1) / attention_mask.sum(1, keepdim=True)
        h = torch.tanh(self.mix(h) + pooled[:, None, :]) * scale
        return {"hidden": h, "token_logits": self.head(h), "logits": self.head(pooled)}


@dataclass
class Out:
    """Like transformers' ModelOutput: a dataclass with optional fields."""

    logits: torch.Tensor | None = None
    hidden: torch.Tensor | None = None


class TwoInputs(nn.Module):
    """model(a, b): two inputs of different shapes; returns a dataclass."""

    def __init__(self) -> None:
        super().__init__()
        self.fa = nn.Linear(4, 5)
        self.fb = nn.Conv1d(2, 5, 3)
        self.out = nn.Linear(5, 3)

    def forward(self, a, b):
        h = torch.tanh(self.fa(a) + self.fb(b).mean(-1))
        return Out(logits=self.out(h), hidden=h)


class Segmenter(nn.Module):
    """A U-Net-style per-pixel classifier: (N, 2, 6, 6) -> (N, 3, 6, 6) logits."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.mid = nn.Conv2d(4, 4, 3, padding=1)
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)
        self.head = nn.Conv2d(4 + 2, 3, 1)

    def forward(self, x):
        h = torch.relu(self.mid(torch.relu(self.down(x))))
        return self.head(torch.cat([self.up(h), x], 1))


def _tokens(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 13, (n, 5), generator=g)
    mask = torch.ones(n, 5, dtype=torch.long)
    mask[0, 3:] = 0
    mask[n - 1, 1:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _close(k, r):
    assert k.shape == r.shape
    assert float((k - r).abs().max()) <= 1e-8 * float(r.abs().max())


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return MaskedEncoder().to(D).eval()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("output", ["full", "trace", "diagonal", "logit:2", "pntk"])
def test_mapping_inputs_with_mask_match_reference(encoder, method, output):
    x1, x2 = _tokens(4, 1), _tokens(3, 2)
    for a, b in ((x1, None), (x1, x2)):
        _close(ntkit.ntk(encoder, a, b, method=method, output=output), ntk_reference(encoder, a, b, output=output))


def test_the_mask_changes_the_kernel(encoder):
    x = _tokens(3, 1)
    other = dict(x, attention_mask=x["attention_mask"].clone())
    other["attention_mask"][1, 2:] = 0
    k1, k2 = ntkit.ntk(encoder, x, output="trace"), ntkit.ntk(encoder, other, output="trace")
    _close(k2, ntk_reference(encoder, other, output="trace"))
    assert float((k1[1] - k2[1]).abs().max()) > 1e-3 * float(k1.abs().max())  # sample 1 changed
    _close(k1[0, 0], k2[0, 0])  # sample 0 alone did not (samples never mix)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("axes", [dict(trace_axes=-1), dict(diagonal_axes=1, trace_axes=2), dict(diagonal_axes=(1, 2)),
                                  dict(trace_axes=(), diagonal_axes=()), dict(diagonal_axes=-1), dict(trace_axes=(1, 2))])
def test_per_token_kernels_match_reference(encoder, method, axes):
    pick = lambda out: out["token_logits"]  # noqa: E731 - (N, T=5, C=3)
    x1, x2 = _tokens(3, 3), _tokens(2, 4)
    for a, b in ((x1, None), (x1, x2)):
        k = ntkit.ntk(encoder, a, b, method=method, output_fn=pick, **axes)
        _close(k, ntk_reference(encoder, a, b, output_fn=pick, **axes))
    assert ntkit.ntk(encoder, x1, output_fn=pick, diagonal_axes=1, trace_axes=2).shape == (3, 3, 5)


def test_flattened_outputs_by_default(encoder):
    """(N, *S) without axes: O = prod(S) logits, flattened in order, every output mode."""
    pick = lambda out: out["token_logits"]  # noqa: E731
    x = _tokens(3, 5)
    assert ntkit.ntk(encoder, x, output_fn=pick).shape == (3, 3, 15, 15)
    _close(ntkit.ntk(encoder, x, output_fn=pick, output="logit:7"), ntk_reference(encoder, x, output="logit:7", output_fn=pick))


def test_constants_pass_through(encoder):
    pick = lambda out: out["token_logits"]  # noqa: E731 - depends on scale (the pooled logits do not)
    x = dict(_tokens(3, 6), scale=0.5)
    k = ntkit.ntk(encoder, x, output="trace", output_fn=pick)
    _close(k, ntk_reference(encoder, x, output="trace", output_fn=pick))
    assert not torch.allclose(k, ntkit.ntk(encoder, _tokens(3, 6), output="trace", output_fn=pick))


@pytest.mark.parametrize("method", METHODS)
def test_tuple_inputs_and_dataclass_output(method):
    torch.manual_seed(1)
    model = TwoInputs().to(D)
    g = torch.Generator().manual_seed(0)
    x1 = (torch.randn(4, 4, generator=g, dtype=D), torch.randn(4, 2, 7, generator=g, dtype=D))
    x2 = (torch.randn(2, 4, generator=g, dtype=D), torch.randn(2, 2, 7, generator=g, dtype=D))
    for output in ("full", "trace", "logit:1"):
        _close(ntkit.ntk(model, x1, x2, method=method, output=output), ntk_reference(model, x1, x2, output=output))
    hidden = ntkit.ntk(model, x1, method=method, output_fn=lambda o: o.hidden)
    _close(hidden, ntk_reference(model, x1, output_fn=lambda o: o.hidden))
    assert hidden.shape == (4, 4, 5, 5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("axes", [dict(trace_axes=1), dict(trace_axes=1, diagonal_axes=(2, 3)), dict(diagonal_axes=(1, 2, 3))])
def test_per_pixel_kernels_match_reference(method, axes):
    torch.manual_seed(2)
    model = Segmenter().to(D).eval()
    x = torch.randn(3, 2, 6, 6, dtype=D)
    k = ntkit.ntk(model, x, x[:2], method=method, **axes)
    _close(k, ntk_reference(model, x, x[:2], **axes))


def test_plan_and_ntk_fn_take_the_same_contract(encoder):
    x = _tokens(3, 7)
    fn = ntkit.ntk_fn(encoder, output_fn=lambda o: o["token_logits"], diagonal_axes=1, trace_axes=-1)
    _close(fn(x), ntk_reference(encoder, x, output_fn=lambda o: o["token_logits"], diagonal_axes=1, trace_axes=-1))
    p = ntkit.plan(encoder, x, output_fn=lambda o: o["token_logits"], diagonal_axes=1, trace_axes=-1)
    assert p.output == "axes:trace=2,diagonal=1" and p.n_logits == 15


def test_ntk_vp_takes_mapping_inputs(encoder):
    x1, x2 = _tokens(3, 8), _tokens(2, 9)
    v = torch.randn(2, 3, dtype=D)
    ref = torch.einsum("nmab,mb->na", ntk_reference(encoder, x1, x2), v)
    _close(ntkit.ntk_vp(encoder, x1, x2, v), ref)


@pytest.mark.parametrize("case", ZOO, ids=[c.name for c in ZOO])
@pytest.mark.parametrize("method", ["jacobian", "ntk-vp", "structured"])
def test_zoo_as_tuple_and_mapping_inputs(case, method):
    """Every zoo model fed its input as a 1-tuple and as a keyword argument: the same kernel."""
    model = case.model()
    x1, x2 = case.inputs()
    name = next(iter(inspect.signature(model.forward).parameters))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the zoo's vmap and rule fallbacks warn, as they should
        for a, b in (((x1,), (x2,)), ({name: x1}, {name: x2})):
            assert rel_err(ntkit.ntk(model, a, b, method=method), reference(case, False, "full")) <= RTOL64
