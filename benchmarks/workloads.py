"""Benchmark workloads shared by the benchmark drivers: one set of weights, two frameworks.

Each workload is a small, fixed architecture (see shared/PEERS.md) whose weights and inputs are
drawn once with NumPy from a fixed seed and saved to an ``.npz``, so that PyTorch and JAX
(neural-tangents ``stax``) evaluate the *same* function on the *same* inputs.

Layouts in the ``.npz`` are PyTorch's: ``Linear`` weights ``(out, in)``, ``Conv2d`` weights OIHW,
inputs NCHW. :func:`stax_model` converts them for ``stax`` (Dense ``(in, out)``, conv HWIO, inputs
NHWC), which is ``stax``'s default layout and the one XLA prefers on CPU.

Initialisation: weights ``N(0, g / fan_in)`` with ``g = 2`` for a layer followed by a ReLU (``g = 1``
otherwise), biases ``0.1 * N(0, 1)``, inputs ``N(0, 1)``.

This module imports only NumPy at the top, so that it loads both in the project environment
(torch) and in ``benchmarks/.venv-nt`` (JAX, no torch).

>>> arrays = make_arrays("W2-CNN")            # dict of float32 arrays, PyTorch layout
>>> model = torch_model("W2-CNN", arrays)     # torch.nn.Module, float32
>>> apply_fn, params, x = stax_model("W2-CNN", arrays)   # in the JAX venv
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

O = 10  # outputs (logits) of every workload


@dataclass(frozen=True)
class Workload:
    """One benchmark workload: an architecture, its input shape and its batch size."""

    id: str
    kind: str  # "fcn" | "cnn" | "resnet"
    n: int  # N1 = N2
    input_shape: tuple[int, ...]  # per sample, PyTorch layout (C, H, W) for images
    width: int  # hidden width (FCN) or channels (CNN / ResNet)
    depth: int = 0  # number of dense layers (FCN) or conv layers (CNN)
    description: str = ""


WORKLOADS: dict[str, Workload] = {
    w.id: w
    for w in [
        Workload("W1-FCN-w256", "fcn", 64, (3,), 256, depth=10,
                 description="10 dense layers 3→256→…→256→10, ReLU, bias"),
        Workload("W1-FCN-w1024", "fcn", 64, (3,), 1024, depth=10,
                 description="10 dense layers 3→1024→…→1024→10, ReLU, bias"),
        Workload("W2-CNN", "cnn", 32, (3, 32, 32), 32, depth=3,
                 description="3×[conv3×3 32ch pad 1 + bias, ReLU], global avg pool, dense 32→10"),
        Workload("W3-ResNet", "resnet", 16, (3, 16, 16), 32,
                 description="conv3×3(3→32)+ReLU, 2×[h ← ReLU(h + conv(ReLU(conv h)))], "
                             "global avg pool, dense 32→10"),
    ]
}


def layer_shapes(wid: str) -> list[tuple[str, tuple[int, ...], tuple[int, ...], float]]:
    """The parameters of workload ``wid`` in forward order: ``(name, weight shape, bias shape, g)``.

    Shapes are PyTorch's (``Linear``: ``(out, in)``; ``Conv2d``: ``(out, in, 3, 3)``); names are
    the ``torch_model`` parameter prefixes (``name + ".weight"``, ``name + ".bias"``).
    """
    w = WORKLOADS[wid]
    out: list[tuple[str, tuple[int, ...], tuple[int, ...], float]] = []
    if w.kind == "fcn":
        dims = [w.input_shape[0]] + [w.width] * (w.depth - 1) + [O]
        for i in range(w.depth):
            g = 2.0 if i < w.depth - 1 else 1.0
            out.append((f"layers.{2 * i}", (dims[i + 1], dims[i]), (dims[i + 1],), g))
    elif w.kind == "cnn":
        c = w.input_shape[0]
        for i in range(w.depth):
            out.append((f"layers.{2 * i}", (w.width, c, 3, 3), (w.width,), 2.0))
            c = w.width
        out.append(("head", (O, w.width), (O,), 1.0))
    elif w.kind == "resnet":
        c = w.width
        out.append(("stem", (c, w.input_shape[0], 3, 3), (c,), 2.0))
        for b in range(2):
            out.append((f"blocks.{b}.conv1", (c, c, 3, 3), (c,), 2.0))
            out.append((f"blocks.{b}.conv2", (c, c, 3, 3), (c,), 2.0))  # ReLU after the sum
        out.append(("head", (O, c), (O,), 1.0))
    else:
        raise ValueError(w.kind)
    return out


def num_params(wid: str) -> int:
    """P, the number of parameters of workload ``wid``."""
    return sum(int(np.prod(ws)) + int(np.prod(bs)) for _, ws, bs, _ in layer_shapes(wid))


def jc_flops(wid: str, output: str) -> float:
    """FLOPs of the Jacobian-contraction Gram step for ``output`` ("full" or "trace").

    full: ``2 (N O)^2 P``; trace: ``2 N^2 O P`` (N1 = N2 = N; symmetry not exploited).
    """
    n, p = WORKLOADS[wid].n, num_params(wid)
    if output == "full":
        return 2.0 * (n * O) ** 2 * p
    if output == "trace":
        return 2.0 * n * n * O * p
    raise ValueError(output)


def make_arrays(wid: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights (PyTorch layout, keys ``<name>.weight`` / ``<name>.bias``) and inputs ``x``."""
    w = WORKLOADS[wid]
    rng = np.random.default_rng([seed, sum(map(ord, wid))])
    arrays: dict[str, np.ndarray] = {}
    for name, ws, bs, g in layer_shapes(wid):
        fan_in = int(np.prod(ws[1:]))
        arrays[name + ".weight"] = (rng.standard_normal(ws) * np.sqrt(g / fan_in)).astype(np.float32)
        arrays[name + ".bias"] = (0.1 * rng.standard_normal(bs)).astype(np.float32)
    arrays["x"] = rng.standard_normal((w.n, *w.input_shape)).astype(np.float32)
    return arrays


def save_arrays(path: str, wid: str, seed: int = 0) -> None:
    np.savez(path, **make_arrays(wid, seed))


def load_arrays(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


# --------------------------------------------------------------------------------------- torch
def torch_model(wid: str, arrays: dict[str, np.ndarray]):
    """The workload as a ``torch.nn.Module`` (float32, eval mode) holding ``arrays``' weights."""
    import torch
    from torch import nn

    w = WORKLOADS[wid]

    class Block(nn.Module):
        def __init__(self, c: int):
            super().__init__()
            self.conv1 = nn.Conv2d(c, c, 3, padding=1)
            self.conv2 = nn.Conv2d(c, c, 3, padding=1)

        def forward(self, h):
            return torch.relu(h + self.conv2(torch.relu(self.conv1(h))))

    class ResNet(nn.Module):
        def __init__(self, c_in: int, c: int):
            super().__init__()
            self.stem = nn.Conv2d(c_in, c, 3, padding=1)
            self.blocks = nn.Sequential(Block(c), Block(c))
            self.head = nn.Linear(c, O)

        def forward(self, x):
            h = self.blocks(torch.relu(self.stem(x)))
            return self.head(h.mean(dim=(2, 3)))

    class CNN(nn.Module):
        def __init__(self, c_in: int, c: int, depth: int):
            super().__init__()
            mods: list[nn.Module] = []
            for i in range(depth):
                mods += [nn.Conv2d(c_in if i == 0 else c, c, 3, padding=1), nn.ReLU()]
            self.layers = nn.Sequential(*mods)
            self.head = nn.Linear(c, O)

        def forward(self, x):
            return self.head(self.layers(x).mean(dim=(2, 3)))

    class FCN(nn.Module):
        def __init__(self, dims: list[int]):
            super().__init__()
            mods: list[nn.Module] = []
            for i in range(len(dims) - 1):
                mods.append(nn.Linear(dims[i], dims[i + 1]))
                if i < len(dims) - 2:
                    mods.append(nn.ReLU())
            self.layers = nn.Sequential(*mods)

        def forward(self, x):
            return self.layers(x)

    if w.kind == "fcn":
        model = FCN([w.input_shape[0]] + [w.width] * (w.depth - 1) + [O])
    elif w.kind == "cnn":
        model = CNN(w.input_shape[0], w.width, w.depth)
    else:
        model = ResNet(w.input_shape[0], w.width)
    state = {k: torch.from_numpy(v) for k, v in arrays.items() if k != "x"}
    model.load_state_dict(state, strict=True)
    return model.eval()


# ----------------------------------------------------------------------------------------- JAX
def stax_model(wid: str, arrays: dict[str, np.ndarray]):
    """The workload in neural-tangents ``stax`` (NHWC / HWIO, standard parameterisation).

    Returns ``(apply_fn, params, x)`` with ``x`` converted to NHWC. ``stax`` in the standard
    parameterisation applies the stored weights as they are (``W_std`` only affects init).
    """
    import jax
    import jax.numpy as jnp
    from neural_tangents import stax

    w = WORKLOADS[wid]
    # standard parameterisation applies the stored weights as they are; b_std=None drops biases
    std = {"parameterization": "standard", "W_std": 1.0, "b_std": 1.0}

    def conv(c):
        return stax.Conv(c, (3, 3), padding="SAME", **std)

    if w.kind == "fcn":
        layers = []
        for i in range(w.depth):
            layers.append(stax.Dense(w.width if i < w.depth - 1 else O, **std))
            if i < w.depth - 1:
                layers.append(stax.Relu())
        net = stax.serial(*layers)
    elif w.kind == "cnn":
        layers = []
        for _ in range(w.depth):
            layers += [conv(w.width), stax.Relu()]
        net = stax.serial(*layers, stax.GlobalAvgPool(), stax.Dense(O, **std))
    else:
        block = stax.serial(
            stax.FanOut(2),
            stax.parallel(stax.Identity(), stax.serial(conv(w.width), stax.Relu(), conv(w.width))),
            stax.FanInSum(),
            stax.Relu(),
        )
        net = stax.serial(conv(w.width), stax.Relu(), block, block,
                          stax.GlobalAvgPool(), stax.Dense(O, **std))
    init_fn, apply_fn, _ = net

    x = arrays["x"]
    if x.ndim == 4:
        x = x.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    x = jnp.asarray(x)

    # stax's own parameter tree, leaves in forward order (W, b per layer); fill it with ours.
    _, params0 = init_fn(jax.random.PRNGKey(0), x.shape)
    leaves0, treedef = jax.tree_util.tree_flatten(params0)
    ours: list[np.ndarray] = []
    for name, _, _, _ in layer_shapes(wid):
        wt, b = arrays[name + ".weight"], arrays[name + ".bias"]
        wt = wt.transpose(2, 3, 1, 0) if wt.ndim == 4 else wt.T  # OIHW -> HWIO; (out,in) -> (in,out)
        ours += [wt, b]
    if len(ours) != len(leaves0):
        raise RuntimeError(f"{wid}: stax has {len(leaves0)} parameter arrays, we have {len(ours)}")
    leaves = []
    for a, l0 in zip(ours, leaves0):
        if a.size != l0.size or (a.ndim == l0.ndim and a.shape != l0.shape):
            raise RuntimeError(f"{wid}: shape {a.shape} does not fit stax's {l0.shape}")
        leaves.append(jnp.asarray(a.reshape(l0.shape), dtype=l0.dtype))
    params = jax.tree_util.tree_unflatten(treedef, leaves)
    return apply_fn, params, x
