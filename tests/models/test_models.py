"""Tests for ntkit.models: specs, shapes, seeded weights, state dicts, torch.func transforms.

Settings are data: a model is an entry of SPECS (tiny widths, the checks are structural), an
input shape an entry of INPUT_SHAPES, a spec error an entry of BAD_SPECS.
"""

from __future__ import annotations

import subprocess
import sys
import typing

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vmap

from ntkit.models import (
    MODEL_GRAMMAR,
    ModelSpecError,
    ModelWeightsError,
    build_model,
    list_models,
    model_fingerprint,
    parameter_count,
    parse_model_spec,
    register_model,
)
from ntkit.models import spec as spec_module

SPECS = {
    "mlp": "mlp:depth=3,width=16",
    "mlp-linear": "mlp:depth=1",
    "mlp-tanh-nobias": "mlp:depth=2,width=8,act=tanh,bias=false",
    "mlp-gelu": "mlp:depth=2,width=8,act=gelu",
    "mlp-erf-normal": "mlp:depth=3,width=8,act=erf,init=normal",
    "cnn": "cnn:depth=2,channels=4",
    "cnn-tanh-normal": "cnn:depth=1,channels=3,act=tanh,init=normal",
    "myrtle5": "myrtle:depth=5,width=4",
    "myrtle7": "myrtle:7,width=3",
    "myrtle10": "myrtle:depth=10,width=2",
    "resnet18-bn": "resnet18:width=2",
    "resnet18-gn": "resnet18:width=2,norm=gn",
    "resnet18-none": "resnet18:width=2,norm=none",
    "wrn-bn": "wrn:10-1",
    "wrn-gn": "wrn:depth=10,widen=1,norm=gn",
    "wrn-none": "wrn:depth=10,widen=1,norm=none",
}

INPUT_SHAPES = {"digits": (1, 8, 8), "cifar": (3, 32, 32), "mnist": (1, 28, 28)}

# (spec, input_shape, num_classes, P): the benchmark workloads and the published architectures.
PARAMETER_COUNTS = [
    ("cnn", (3, 32, 32), 10, 19_722),  # PEERS W2-CNN
    ("mlp:depth=10,width=256", (3,), 10, 529_930),  # PEERS W1-FCN-w256
    ("resnet18", (3, 32, 32), 10, 11_173_962),  # CIFAR ResNet-18 (3x3 stem), ≈ 11.17M
    ("wrn:16-4", (3, 32, 32), 10, 2_748_890),  # WRN-16-4, 2.7M in Zagoruyko & Komodakis
]

ids = list(SPECS)
specs = [SPECS[k] for k in ids]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The models here are tiny: OpenMP threads only add synchronization, which costs 100x on a
    # loaded two-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _build(spec: str, shape=(1, 8, 8), num_classes: int = 3, **kw) -> nn.Module:
    return build_model(spec, input_shape=shape, num_classes=num_classes, **kw)


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------------------------
# Shapes, mode, dtype


@pytest.mark.parametrize("shape", INPUT_SHAPES.values(), ids=INPUT_SHAPES.keys())
@pytest.mark.parametrize("spec", specs, ids=ids)
def test_output_shape_eval_float32_cpu(spec, shape):
    model = _build(spec, shape, num_classes=10)
    assert not any(m.training for m in model.modules())
    assert all(
        t.dtype == torch.float32 and t.device.type == "cpu"
        for t in model.state_dict().values()
        if t.is_floating_point()
    )
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_mlp_takes_flat_inputs_and_conv_families_refuse_them():
    assert _build("mlp:width=4", (64,), 5)(torch.randn(3, 64)).shape == (3, 5)
    for name in ("cnn", "myrtle", "resnet18", "wrn"):
        with pytest.raises(ValueError, match=r"needs input_shape \(C, H, W\)"):
            _build(name, (64,))


@pytest.mark.parametrize(
    "shape, pools",
    [((3, 32, 32), 2), ((1, 8, 8), 2), ((1, 3, 3), 1), ((1, 2, 5), 1), ((1, 1, 1), 0)],
)
def test_myrtle_drops_pools_that_would_shrink_below_one(shape, pools):
    model = _build("myrtle:depth=5,width=2", shape)
    assert sum(isinstance(m, nn.AvgPool2d) for m in model.modules()) == pools
    assert model(torch.randn(2, *shape)).shape == (2, 3)


@pytest.mark.parametrize("spec, shape, num_classes, count", PARAMETER_COUNTS)
def test_parameter_counts(spec, shape, num_classes, count):
    model = _build(spec, shape, num_classes)
    assert parameter_count(model) == count


def test_mlp_depth_counts_linear_layers():
    model = _build("mlp:depth=4,width=7", (2, 3))
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [7, 7, 7, 3]


# ---------------------------------------------------------------------------------------------
# Seeded weights


@pytest.mark.parametrize("spec", specs, ids=ids)
def test_same_seed_same_weights_other_seed_other_weights(spec):
    a, b = _build(spec, seed=7), _build(spec, seed=7)
    assert _same_state(a, b)
    assert model_fingerprint(a) == model_fingerprint(b)
    c = _build(spec, seed=8)
    assert not _same_state(a, c)
    assert model_fingerprint(a) != model_fingerprint(c)


def test_global_rng_untouched_and_ignored():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = _build("resnet18:width=2")
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(456)  # another global state must not change the weights
    b = _build("resnet18:width=2")
    assert _same_state(a, b)


def test_weights_do_not_depend_on_default_dtype():
    reference = model_fingerprint(_build("cnn:channels=4"))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = _build("cnn:channels=4")
        assert torch.get_default_dtype() == torch.float64  # restored after the build
    finally:
        torch.set_default_dtype(previous)
    assert model.state_dict()["0.weight"].dtype == torch.float32
    assert model_fingerprint(model) == reference


def test_weights_and_fingerprint_are_the_same_in_another_process():
    code = (
        "from ntkit.models import build_model, model_fingerprint;"
        "print(model_fingerprint(build_model('resnet18:width=2,norm=gn', (3, 8, 8), 10, seed=3)))"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    here = model_fingerprint(build_model("resnet18:width=2,norm=gn", (3, 8, 8), 10, seed=3))
    assert other.stdout.strip() == here


def test_fingerprint_sees_every_change():
    model = _build("mlp:depth=2,width=4")
    base = model_fingerprint(model)
    assert len(base) == 64 and base == model_fingerprint(model)
    with torch.no_grad():
        model[1].weight[0, 0] += 1e-7
    assert model_fingerprint(model) != base
    assert model_fingerprint(model.double()) != model_fingerprint(model.float())


def test_normal_init_has_the_stated_scales():
    model = _build("mlp:depth=3,width=4000,init=normal", (500,), 10)
    hidden, readout = model[3], model[5]
    assert hidden.weight.var().item() == pytest.approx(2 / 4000, rel=0.02)
    assert readout.weight.var().item() == pytest.approx(1 / 4000, rel=0.05)
    assert hidden.bias.std().item() == pytest.approx(0.1, rel=0.1)


# ---------------------------------------------------------------------------------------------
# torch.func per sample, as the NTK engine uses the models


def _per_sample(model: nn.Module):
    def f(params, x):
        return functional_call(model, params, (x.unsqueeze(0),)).squeeze(0)

    return f


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")  # torch's own jvp decomps
@pytest.mark.parametrize("spec", specs, ids=ids)
def test_vmap_jacrev_and_jvp_agree_with_autograd(spec):
    # float64, so the comparison checks the transforms, not float32 rounding (GroupNorm over two
    # values at 1x1 resolution amplifies it).
    shape, n, num_classes = (2, 6, 6), 2, 3
    model = _build(spec, shape, num_classes).double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    f = _per_sample(model)

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, x)  # {name: (N, O, *param_shape)}
    jac_rows = torch.cat([j.reshape(n, num_classes, -1) for j in jac.values()], dim=-1)

    loop_rows = torch.empty_like(jac_rows)
    for i in range(n):
        out = model(x[i : i + 1]).squeeze(0)
        for a in range(num_classes):
            grads = torch.autograd.grad(out[a], list(model.parameters()), retain_graph=True)
            loop_rows[i, a] = torch.cat([g.reshape(-1) for g in grads])
    torch.testing.assert_close(jac_rows, loop_rows, rtol=1e-10, atol=1e-12)

    tangent = {k: torch.randn_like(v) for k, v in params.items()}
    _, jv = vmap(lambda xi: jvp(lambda p: f(p, xi), (params,), (tangent,)))(x)
    v = torch.cat([t.reshape(-1) for t in tangent.values()])
    torch.testing.assert_close(jv, jac_rows @ v, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# State dicts


def test_weights_round_trip(tmp_path):
    source = _build("resnet18:width=2", seed=0)
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    loaded = _build("resnet18:width=2", seed=1, weights=path)
    assert _same_state(source, loaded)
    assert model_fingerprint(loaded) == model_fingerprint(source)
    assert not loaded.training


def test_weights_mismatch_lists_missing_unexpected_and_shapes(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(_build("mlp:depth=2,width=8").state_dict(), path)  # keys 1.*, 3.*
    with pytest.raises(ModelWeightsError) as err:
        _build("mlp:depth=3,width=8", weights=path)  # keys 1.*, 3.*, 5.*; 3 is 8x8, not 3x8
    message = str(err.value)
    assert "missing keys (2): 5.weight, 5.bias" in message
    assert "3.weight: file (3, 8) vs model (8, 8)" in message

    torch.save(_build("mlp:depth=3,width=8").state_dict(), path)
    with pytest.raises(ModelWeightsError, match=r"unexpected keys \(2\): 5.weight, 5.bias"):
        _build("mlp:depth=2,width=8", weights=path)


def test_weights_file_must_hold_a_state_dict(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": _build("mlp:depth=1").state_dict(), "epoch": 3}, path)
    with pytest.raises(ModelWeightsError, match=r"training checkpoint"):
        _build("mlp:depth=1", weights=path)


# ---------------------------------------------------------------------------------------------
# file: and torchvision:

FACTORIES = """
import torch
from torch import nn

def with_kwargs(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), num_classes))

def with_var_kwargs(**kwargs):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, kwargs["num_classes"]))

def without_kwargs():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 4))

class Net(nn.Module):
    def __init__(self, num_classes=2):
        super().__init__()
        self.fc = nn.Linear(64, num_classes)
    def forward(self, x):
        return self.fc(x.flatten(1))

def not_a_module(input_shape):
    return 42
"""


@pytest.fixture
def factory_file(tmp_path):
    path = tmp_path / "my_nets.py"
    path.write_text(FACTORIES)
    return path


@pytest.mark.parametrize(
    "factory, out", [("with_kwargs", 5), ("with_var_kwargs", 5), ("without_kwargs", 4), ("Net", 5)]
)
def test_file_factory(factory_file, factory, out):
    spec = f"file:{factory_file}:{factory}"
    model = _build(spec, (1, 8, 8), num_classes=5)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, out)
    assert not model.training
    assert _same_state(model, _build(spec, (1, 8, 8), num_classes=5))  # seeded like the rest


def test_file_factory_errors(factory_file, tmp_path):
    with pytest.raises(TypeError, match="must return a torch.nn.Module"):
        _build(f"file:{factory_file}:not_a_module")
    with pytest.raises(
        ModelSpecError, match=r"has no 'with_kwarg' \(did you mean 'with_kwargs'\?\)"
    ):
        _build(f"file:{factory_file}:with_kwarg")
    with pytest.raises(ModelSpecError, match="model file not found"):
        _build(f"file:{tmp_path / 'nope.py'}:make")


def _torchvision_error() -> Exception | None:
    try:
        import torchvision  # noqa: F401
    except Exception as err:  # noqa: BLE001 - absent, or a build that does not load with this torch
        return err
    return None


def test_torchvision_models_or_a_clear_error():
    if _torchvision_error() is None:
        model = _build("torchvision:resnet18", (3, 32, 32), 10)
        assert parameter_count(model) == 11_181_642
        assert not any(getattr(m, "inplace", False) for m in model.modules())
        with pytest.raises(ModelSpecError, match=r"did you mean 'resnet18'"):
            _build("torchvision:resnet19", (3, 32, 32))
    else:
        parse_model_spec("torchvision:resnet18")  # the spec itself is fine
        with pytest.raises(ImportError, match="torchvision is .*pip install torchvision"):
            _build("torchvision:resnet18", (3, 32, 32))


# ---------------------------------------------------------------------------------------------
# Spec parsing

BAD_SPECS = [
    ("", "empty model spec"),
    ("resnet", "unknown model 'resnet' (did you mean 'resnet18'?)"),
    ("torchvison:resnet18", "(did you mean 'torchvision'?)"),
    ("mpl:depth=3", "(did you mean 'mlp'?)"),
    ("mlp depth=3", "malformed model name"),
    ("mlp:", "expected key=value"),
    ("mlp:depth", "malformed option 'depth'"),
    ("mlp:depth=3,,width=4", "stray ','"),
    ("mlp:depth=3,depth=4", "given twice"),
    (
        "mlp:widht=4",
        "unknown option 'widht' for model 'mlp' in 'mlp:widht=4' (did you mean 'width'?)",
    ),
    ("mlp:widht=4", "valid keys: depth, width, act, bias, init"),
    ("mlp:depth=three", "expected an integer"),
    ("mlp:depth=0", "expected a positive integer"),
    ("mlp:width=", "has no value"),
    ("mlp:=3", "has no key"),
    ("mlp:act=relux", "is not one of relu|tanh|gelu|erf (did you mean 'relu'?)"),
    ("mlp:bias=maybe", "expected true or false"),
    ("myrtle:depth=6", "is not one of 5|7|10"),
    ("resnet18:norm=batchnorm", "is not one of bn|gn|none"),
    ("resnet18:norm=gm", "(did you mean 'gn'?)"),
    ("wrn:16", "expected key=value or DEPTH-WIDEN as in wrn:16-4"),
    ("wrn:16x4", "malformed option '16x4'"),
    ("wrn:20-4", "wrn depth must be 6n+4"),
    ("myrtle:five", "expected key=value or a depth as in myrtle:5"),
    ("wrn:depth=15", "wrn depth must be 6n+4"),
    ("wrn:widen=4,16-4", "malformed option '16-4'"),
    ("torchvision", "needs a model name"),
    ("mlp:Width=4", "(did you mean 'width'?)"),
    ("file:model.py", "needs a factory"),
    ("file:model.txt:make", "ending in .py"),
    ("file:model.py:not-a-name", "is not a Python name"),
]


@pytest.mark.parametrize("spec, expected", BAD_SPECS, ids=[s or "<empty>" for s, _ in BAD_SPECS])
def test_spec_errors_show_the_grammar_and_a_hint(spec, expected):
    with pytest.raises(ModelSpecError) as err:
        build_model(spec, input_shape=(1, 8, 8), num_classes=3)
    assert isinstance(err.value, ValueError)
    assert expected in str(err.value)
    assert str(err.value).endswith(MODEL_GRAMMAR)
    assert expected in err.value.reason


@pytest.mark.parametrize(
    "a, b",
    [
        ("wrn:16-4", "wrn:depth=16,widen=4"),
        ("wrn", "wrn:16-4,norm=bn"),
        ("myrtle:7", "myrtle:depth=7"),
        ("MLP", "mlp:depth=3,width=512,act=relu,bias=true,init=torch"),
        ("mlp: depth = 10 , act=ReLU", "mlp:depth=10"),
        ("ResNet18:norm=GN", "resnet18:norm=gn"),
    ],
)
def test_equivalent_spellings_parse_alike(a, b):
    assert parse_model_spec(a) == parse_model_spec(b)
    assert str(parse_model_spec(a)) == str(parse_model_spec(b))


@pytest.mark.parametrize(
    "spec", [*specs, "torchvision:vit_b_16:image_size=32,dropout=0.1", "file:C:/nets/a.py:make"]
)
def test_canonical_text_round_trips(spec):
    parsed = parse_model_spec(spec)
    assert parse_model_spec(str(parsed)) == parsed


def test_torchvision_and_file_specs_split_their_arguments():
    tv = parse_model_spec("torchvision:vit_b_16:image_size=32,dropout=0.1")
    assert tv.args == ("vit_b_16",) and tv.options == {"image_size": 32, "dropout": 0.1}
    f = parse_model_spec("file:C:/nets/a.py:make")
    assert f.args == ("C:/nets/a.py", "make") and f.options == {}


def test_grammar_lists_every_model_key_and_choice():
    assert list_models() == ["cnn", "file", "mlp", "myrtle", "resnet-18", "resnet-34", "resnet-50", "resnet18",
                             "torchvision", "wrn"]
    for name in list_models():
        assert f"\n    {name} " in MODEL_GRAMMAR
        fam = spec_module.get_family(name)
        for key, param in fam.options.items():
            hint = fam.hints[key]
            if typing.get_origin(hint) is typing.Literal:
                choices = "|".join(str(c) for c in typing.get_args(hint))
                assert f"{key}={choices}" in MODEL_GRAMMAR
                assert typing.get_args(hint)[0] == param.default  # the first choice is the default
            else:
                default = str(param.default).lower()
                assert f"{key}={default}" in MODEL_GRAMMAR


def test_register_model_adds_a_family(monkeypatch):
    monkeypatch.setattr(spec_module, "_REGISTRY", dict(spec_module._REGISTRY))

    @register_model("tiny")
    def tiny(input_shape, num_classes, *, bias: bool = True, scale: float = 1.0) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes, bias=bias))

    parsed = parse_model_spec("tiny:bias=false,scale=2")
    assert parsed.options == {"bias": False, "scale": 2.0}
    assert parameter_count(build_model(parsed, (1, 8, 8), 3)) == 64 * 3
    assert "tiny" in list_models()
