"""`ntkit.kernels`: every kernel against an independent float64 definition.

Radial kernels against scipy's pairwise distances; `NtkRelu` against a per-pair numpy
implementation of the arc-cosine recursion and against the empirical NTK of very wide ReLU MLPs
(within a Monte-Carlo tolerance estimated from independent networks); `EmpiricalNTK` against
`ntkit.ntk`; `Precomputed` against numpy indexing.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from torch import nn

import ntkit
from ntkit.kernels import (KERNEL_GRAMMAR, EmpiricalNTK, Gaussian, Kernel, KernelInputError, KernelSpecError,
                           Laplacian, NtkRelu, Precomputed, kernel_config, kernel_from_config, parse_kernel)

D = torch.float64



def _data(n=23, m=17, shape=(2, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=D), torch.randn(m, *shape, generator=g, dtype=D)


# -- radial kernels ------------------------------------------------------------------------------
RADIAL = [
    (Laplacian(bandwidth=1.7), lambda d: np.exp(-d / 1.7)),
    (Gaussian(bandwidth=1.3), lambda d: np.exp(-(d**2) / (2 * 1.3**2))),
]


@pytest.mark.parametrize("kernel,ref", RADIAL, ids=["laplacian", "gaussian"])
@pytest.mark.parametrize("block_size", [None, 1, 5])
def test_radial_kernels_match_pairwise_distance_definition(kernel, ref, block_size):
    kernel.block_size = block_size
    x, z = _data()
    xf, zf = x.reshape(len(x), -1).numpy(), z.reshape(len(z), -1).numpy()
    np.testing.assert_allclose(kernel(x, z).numpy(), ref(cdist(xf, zf)), rtol=0, atol=1e-13)
    sym = kernel(x).numpy()
    np.testing.assert_allclose(sym, ref(cdist(xf, xf)), rtol=0, atol=1e-13)
    assert np.array_equal(sym, sym.T)  # mirrored, exactly symmetric
    np.testing.assert_array_equal(np.diagonal(sym), 1.0)  # the diagonal distance is exactly 0
    np.testing.assert_allclose(kernel.diag(x).numpy(), 1.0)
    v = torch.randn(len(z), 3, dtype=D)
    np.testing.assert_allclose(kernel.mv(x, z, v).numpy(), ref(cdist(xf, zf)) @ v.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(kernel.mv(x, z, v[:, 0]).numpy(), ref(cdist(xf, zf)) @ v[:, 0].numpy(), atol=1e-12)


def test_dtypes_devices_and_inputs():
    x, z = _data()
    k = Laplacian(2.0)
    assert k(x, z).dtype == torch.float64
    assert k(x.float(), z.float()).dtype == torch.float32
    assert k(x.float(), z).dtype == torch.float64  # mixed: promoted
    assert k(x.numpy(), z.numpy()).dtype == torch.float64  # numpy in, torch out
    ints = torch.randint(0, 5, (4, 3))
    assert k(ints).dtype == torch.get_default_dtype()
    ro = x.numpy().copy()
    ro.flags.writeable = False
    np.testing.assert_array_equal(k(ro, z).numpy(), k(x, z).numpy())
    with pytest.raises(KernelInputError, match="same input space"):
        k(x, torch.randn(3, 5, dtype=D))
    with pytest.raises(KernelInputError, match="one row per z"):
        k.mv(x, z, torch.ones(len(z) + 1))
    for bad in (0, -1.0, float("nan"), "wide"):
        with pytest.raises(ValueError, match="bandwidth"):
            Laplacian(bad)


class _Spy(Laplacian):
    """Records the size of every block the base class asks for."""

    def __init__(self, **kw):
        super().__init__(2.0, **kw)
        self.sizes = []

    def _block(self, x, z, same):
        self.sizes.append(x.shape[0] * z.shape[0])
        return super()._block(x, z, same)


@pytest.mark.parametrize("budget", [8 * 2**10, 64 * 2**10])
def test_blocks_stay_under_the_scratch_budget(budget):
    k = _Spy(block_bytes=budget)
    x, z = torch.randn(300, 4, dtype=D), torch.randn(200, 4, dtype=D)
    full = k(x, z)
    limit = budget // (k._temporaries * 8)
    assert k.sizes and max(k.sizes) <= limit
    k.sizes.clear()
    np.testing.assert_allclose(k.mv(x, z, torch.ones(200, 1, dtype=D)).numpy(), full.sum(1, keepdim=True).numpy(),
                               rtol=1e-12)
    assert max(k.sizes) <= limit


# -- NtkRelu -------------------------------------------------------------------------------------
def _ntk_relu_pair(x: np.ndarray, z: np.ndarray, depth: int, bias: float) -> float:
    """The recursion for one pair, written out with the arc-cosine kernel J₁ of Cho & Saul:
    E[relu(u) relu(v)] = √(ab)/(2π)·(sin θ + (π − θ) cos θ), E[relu'(u) relu'(v)] = (π − θ)/(2π),
    each doubled by the network's √2."""
    d = x.size
    sxz, sxx, szz = x @ z / d + bias**2, x @ x / d + bias**2, z @ z / d + bias**2
    ntk = sxz
    for _ in range(depth):
        cos = min(1.0, max(-1.0, sxz / math.sqrt(sxx * szz)))
        th = math.acos(cos)
        expect = math.sqrt(sxx * szz) / (2 * math.pi) * (math.sin(th) + (math.pi - th) * cos)
        deriv = (math.pi - th) / (2 * math.pi)
        sxz_new = 2 * expect + bias**2
        ntk = ntk * 2 * deriv + sxz_new
        sxx, szz, sxz = 2 * sxx / 2 + bias**2, 2 * szz / 2 + bias**2, sxz_new
    return ntk


@pytest.mark.parametrize("depth,bias", [(0, 0.0), (1, 0.0), (2, 0.5), (4, 1.0)])
def test_ntk_relu_matches_direct_recursion(depth, bias):
    x, z = _data(7, 5, (6,))
    k = NtkRelu(depth, bias, block_size=3)
    want = np.array([[_ntk_relu_pair(a, b, depth, bias) for b in z.numpy()] for a in x.numpy()])
    np.testing.assert_allclose(k(x, z).numpy(), want, rtol=1e-12)
    want_sym = np.array([[_ntk_relu_pair(a, b, depth, bias) for b in x.numpy()] for a in x.numpy()])
    np.testing.assert_allclose(k(x).numpy(), want_sym, rtol=1e-12)
    np.testing.assert_allclose(k.diag(x).numpy(), np.diagonal(want_sym), rtol=1e-12)
    # PSD, as the NTK of a network must be
    assert np.linalg.eigvalsh(want_sym).min() > -1e-10 * np.abs(want_sym).max()


class WideReluMLP(nn.Module):
    """NTK parametrization: N(0, 1) weights and biases, 1/√fan_in and the ReLU's √2 in the forward."""

    def __init__(self, d: int, width: int, depth: int, bias: float, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        dims = [d] + [width] * depth + [1]
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.randn(o, i, generator=g, dtype=D)) for i, o in zip(dims[:-1], dims[1:])])
        self.biases = nn.ParameterList([nn.Parameter(torch.randn(o, generator=g, dtype=D)) for o in dims[1:]])
        self.bias = bias

    def forward(self, x):
        h = x
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if i:
                h = math.sqrt(2.0) * torch.relu(h)
            h = h @ w.T / math.sqrt(w.shape[1]) + self.bias * b
        return h


def test_ntk_relu_is_the_infinite_width_limit_of_wide_mlps():
    depth, bias, width, seeds = 2, 0.4, 512, 160
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1), dtype=D)
    want = NtkRelu(depth, bias)(x).numpy()
    samples = np.stack([ntkit.ntk(WideReluMLP(4, width, depth, bias, s), x, output="trace", method="jacobian").numpy()
                        for s in range(seeds)])
    mean = samples.mean(0)
    # Monte-Carlo error of the mean over independent networks. The eNTK of a width-n network
    # fluctuates by O(1/√n) around the limit and its mean is off by O(1/n) (the deeper
    # pre-activations are only nearly Gaussian); averaging many moderately wide networks makes
    # the standard error the tolerance. With 160 samples the mean is nearly normal, so 5 standard
    # errors make a false alarm on any of the 15 entries improbable (< 1e-5), plus 0.5% of the
    # scale for the O(1/n) bias.
    se = samples.std(0, ddof=1) / math.sqrt(seeds)
    scale = np.abs(want).max()
    assert np.all(np.abs(mean - want) <= 5 * se + 0.005 * scale)
    # ... and the test has power: 5 standard errors are < 8% of the scale, while one layer less
    # (or a missing √2) changes the kernel by more than 20%.
    assert 5 * se.max() < 0.08 * scale
    assert np.abs(NtkRelu(depth - 1, bias)(x).numpy() - want).max() > 0.2 * scale


def test_ntk_relu_argument_checks():
    with pytest.raises(ValueError, match="depth"):
        NtkRelu(-1)
    with pytest.raises(ValueError, match="depth"):
        NtkRelu(1.5)
    with pytest.raises(ValueError, match="bias"):
        NtkRelu(1, float("inf"))


# -- EmpiricalNTK ----------------------------------------------------------------------------------
def _small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 4)).double().eval()


@pytest.mark.parametrize("output", ["trace", "pntk", "logit:1"])
def test_empirical_ntk_equals_ntkit_ntk(output):
    net = _small_cnn()
    x, z = torch.randn(9, 1, 4, 4, dtype=D), torch.randn(6, 1, 4, 4, dtype=D)
    k = EmpiricalNTK(net, output=output, cache=True)
    want = ntkit.ntk(net, x, z, output=output, method="jacobian")
    np.testing.assert_allclose(k(x, z).numpy(), want.numpy(), rtol=1e-10, atol=1e-12)
    assert k._cached is not None  # the features of z are kept ...
    x2 = torch.randn(4, 1, 4, 4, dtype=D)
    np.testing.assert_allclose(k(x2, z).numpy(), ntkit.ntk(net, x2, z, output=output).numpy(), rtol=1e-10, atol=1e-12)
    sym = ntkit.ntk(net, x, output=output)
    np.testing.assert_allclose(k(x).numpy(), sym.numpy(), rtol=1e-12)
    np.testing.assert_allclose(k.diag(x).numpy(), torch.diagonal(sym).numpy(), rtol=1e-10)
    v = torch.randn(6, 2, dtype=D)
    np.testing.assert_allclose(k.mv(x, z, v).numpy(), (want @ v).numpy(), rtol=1e-10, atol=1e-12)
    uncached = EmpiricalNTK(net, output=output, cache=False)
    np.testing.assert_allclose(uncached(x, z).numpy(), want.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(uncached.mv(x, z, v).numpy(), (want @ v).numpy(), rtol=1e-10, atol=1e-12)


def test_empirical_ntk_cache_follows_the_model_and_inputs():
    net = _small_cnn()
    x, z = torch.randn(5, 1, 4, 4, dtype=D), torch.randn(6, 1, 4, 4, dtype=D)
    k = EmpiricalNTK(net, cache=True)
    k(x, z)
    with torch.no_grad():  # training the network changes its eNTK
        net[0].weight.mul_(1.5)
    np.testing.assert_allclose(k(x, z).numpy(), ntkit.ntk(net, x, z, output="trace").numpy(), rtol=1e-10)
    with torch.no_grad():
        z.add_(0.1)  # an in-place change of the centers too
    np.testing.assert_allclose(k(x, z).numpy(), ntkit.ntk(net, x, z, output="trace").numpy(), rtol=1e-10)
    # float32 inputs are cast to the model's dtype
    np.testing.assert_allclose(k(x.float(), z).numpy(), ntkit.ntk(net, x.float().double(), z, output="trace").numpy(),
                               rtol=1e-10)
    with pytest.raises(ValueError, match="scalar kernel"):
        EmpiricalNTK(net, output="full")
    with pytest.raises(ValueError, match="valid outputs"):
        EmpiricalNTK(net, output="tracee")
    with pytest.raises(TypeError, match="cannot be saved"):
        k.to_config()


def test_empirical_ntk_from_spec_round_trips_through_its_config():
    k = parse_kernel("ntk:mlp:depth=2,width=8@pntk", input_shape=(1, 3, 3), num_classes=3, seed=5, dtype=D)
    assert isinstance(k, EmpiricalNTK) and k.output == "pntk" and k.seed == 5 and k.model_spec == "mlp:depth=2,width=8"
    with torch.no_grad():
        for p in k.model.parameters():
            p.add_(0.01)  # "trained": the saved state dict, not the seed, must come back
    cfg, arrays = kernel_config(k)
    back = kernel_from_config(cfg, arrays)
    x = torch.randn(4, 1, 3, 3, dtype=D)
    np.testing.assert_array_equal(back(x).numpy(), k(x).numpy())
    k2 = parse_kernel("ntk:cnn@output=logit:2,seed=3", input_shape=(1, 8, 8), num_classes=10)
    assert k2.output == "logit:2" and k2.seed == 3
    with pytest.raises(KernelSpecError, match="input_shape"):
        parse_kernel("ntk:cnn")


# -- Precomputed -----------------------------------------------------------------------------------
class FakeStore:
    """What the kernel store offers: .shape, .dtype, .get(rows, cols) with orthogonal indexing."""

    def __init__(self, a):
        self.a, self.shape, self.dtype = a, a.shape, a.dtype
        self.calls = 0

    def get(self, rows, cols):
        self.calls += 1
        return self.a[np.ix_(np.asarray(rows), np.asarray(cols))]


@pytest.mark.parametrize("kind", ["numpy", "torch", "store"])
def test_precomputed_indexes_the_stored_matrix(kind):
    a = np.random.default_rng(0).normal(size=(12, 9))
    src = {"numpy": a, "torch": torch.from_numpy(a), "store": FakeStore(a)}[kind]
    k = Precomputed(src)
    rows, cols = np.array([3, 0, 11, -1]), np.array([8, 2, 2])
    np.testing.assert_array_equal(k(rows, cols).numpy(), a[np.ix_([3, 0, 11, 11], [8, 2, 2])])
    np.testing.assert_array_equal(k(torch.tensor(rows), cols.astype(float)).numpy(), a[np.ix_([3, 0, 11, 11], [8, 2, 2])])
    v = torch.randn(3, 2, dtype=D)
    np.testing.assert_allclose(k.mv(rows, cols, v).numpy(), a[np.ix_([3, 0, 11, 11], [8, 2, 2])] @ v.numpy())
    sq = Precomputed(src[:9] if kind != "store" else FakeStore(a[:9]))
    np.testing.assert_array_equal(sq.diag([4, 1]).numpy(), np.diagonal(a[:9])[[4, 1]])
    if kind == "store":
        assert src.calls >= 1
    with pytest.raises(KernelInputError, match="out of range"):
        k([12], [0])
    with pytest.raises(KernelInputError, match="non-integer"):
        k(np.array([0.5]), [0])
    with pytest.raises(KernelInputError, match="1-D array of indices"):
        k(np.zeros((2, 3), dtype=int), [0])


def test_precomputed_specs_and_saving(tmp_path):
    a = np.random.default_rng(1).normal(size=(5, 5))
    np.save(tmp_path / "K.npy", a)
    k = parse_kernel(f"npy:{tmp_path / 'K.npy'}")
    np.testing.assert_array_equal(k([1, 2], [0]).numpy(), a[[1, 2]][:, [0]])
    assert kernel_from_config(k.to_config())([4], [4]).item() == a[4, 4]
    with pytest.raises(TypeError, match="in-memory matrix"):
        Precomputed(a).to_config()
    with pytest.raises(ValueError, match="2-D matrix"):
        Precomputed(np.zeros(3))
    with pytest.raises(FileNotFoundError, match="ntkit compute"):
        parse_kernel(f"npy:{tmp_path / 'missing.npy'}")


def test_store_spec_opens_a_kernel_store(tmp_path):
    store_mod = pytest.importorskip("ntkit.store")
    if not all(hasattr(store_mod, n) for n in ("open_store", "KernelStore")) or not hasattr(
            store_mod.KernelStore, "create"):
        pytest.skip("ntkit.store.open_store is not there yet")
    from ntkit.schedule.tiles import Tile

    a = np.random.default_rng(2).normal(size=(6, 6))
    a = a @ a.T
    st = store_mod.KernelStore.create(tmp_path / "K.zarr", shape=(6, 6), dtype="float64", tile_rows=4, tile_cols=4,
                                      symmetric=False, metadata={"identity": {"test": 1}})
    for i, (r0, r1) in enumerate(((0, 4), (4, 6))):
        for j, (c0, c1) in enumerate(((0, 4), (4, 6))):
            st.write_tile(Tile(i, j, r0, r1, c0, c1), a[r0:r1, c0:c1], seconds=0.0)
    k = parse_kernel(f"store:{tmp_path / 'K.zarr'}")
    np.testing.assert_array_equal(k([5, 0], [1, 4, 4]).numpy(), a[np.ix_([5, 0], [1, 4, 4])])
    assert k.spec == f"store:{tmp_path / 'K.zarr'}"


# -- specs -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,cls,attrs", [
    ("laplacian:bandwidth=5", Laplacian, {"bandwidth": 5.0}),
    ("Laplacian", Laplacian, {"bandwidth": 10.0}),
    ("gaussian:bw=2.5", Gaussian, {"bandwidth": 2.5}),
    ("rbf:bandwidth=3", Gaussian, {"bandwidth": 3.0}),
    ("ntk-relu:depth=3,bias=0.25", NtkRelu, {"depth": 3, "bias": 0.25}),
    ("ntk-relu", NtkRelu, {"depth": 2, "bias": 0.0}),
])
def test_parse_kernel(spec, cls, attrs):
    k = parse_kernel(spec)
    assert type(k) is cls and all(getattr(k, a) == v for a, v in attrs.items())
    assert type(parse_kernel(k.spec)) is cls and parse_kernel(k.spec).spec == k.spec  # specs round-trip


@pytest.mark.parametrize("spec,fragment", [
    ("laplace:bandwidth=5", "did you mean 'laplacian'"),
    ("laplacian:bandwith=5", "did you mean 'bandwidth'"),
    ("laplacian:bandwidth=wide", "not a valid float"),
    ("laplacian:bandwidth=-1", "positive"),
    ("ntk-relu:depth", "key=value"),
    ("ntk-relu:depth=-2", "depth"),
    ("npy:", "needs a path"),
    ("npy:K.txt", ".npy"),
    ("ntk:", "model spec"),
])
def test_bad_kernel_specs_show_the_grammar(spec, fragment):
    with pytest.raises(KernelSpecError) as e:
        parse_kernel(spec)
    assert fragment in str(e.value) and KERNEL_GRAMMAR in str(e.value)


def test_a_kernel_is_any_callable_through_the_protocol():
    from ntkit.kernels import as_kernel

    k = as_kernel(lambda a, b: (a @ b.T) ** 2)
    assert isinstance(k, Kernel)
    x = torch.randn(6, 3, dtype=D)
    np.testing.assert_allclose(k(x).numpy(), ((x @ x.T) ** 2).numpy(), rtol=1e-12)
    with pytest.raises(TypeError, match="no string spec"):
        k.to_config()
    with pytest.raises(TypeError, match="kernel must be"):
        as_kernel(3)
