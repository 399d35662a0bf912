"""The ImageNet-style ResNets (resnet-18/34/50): torchvision's state-dict layout, its weights files
(--weights and the torch hub cache) and the empirical-ntks head, without torchvision."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ntkit.models import (
    ModelSpecError,
    ModelWeightsError,
    PretrainedWeightsNotFoundError,
    build_model,
    hub_weights_path,
    model_fingerprint,
    parameter_count,
    parse_model_spec,
    seed_matters,
)


def _bn(name: str, c: int) -> list[tuple[str, tuple[int, ...]]]:
    # torch's BatchNorm2d state: affine weight and bias, running stats, the batch counter
    return [(f"{name}.weight", (c,)), (f"{name}.bias", (c,)), (f"{name}.running_mean", (c,)),
            (f"{name}.running_var", (c,)), (f"{name}.num_batches_tracked", ())]


# torchvision.models.resnet18().state_dict(): every key in order, with its shape, written out from
# torchvision's architecture (conv1 7x7/2, bn1, layer1..4 of two BasicBlocks, 1x1 downsample in
# the first block of layers 2-4, fc 512 -> 1000).
TORCHVISION_RESNET18 = [
    ("conv1.weight", (64, 3, 7, 7)), *_bn("bn1", 64),
    ("layer1.0.conv1.weight", (64, 64, 3, 3)), *_bn("layer1.0.bn1", 64),
    ("layer1.0.conv2.weight", (64, 64, 3, 3)), *_bn("layer1.0.bn2", 64),
    ("layer1.1.conv1.weight", (64, 64, 3, 3)), *_bn("layer1.1.bn1", 64),
    ("layer1.1.conv2.weight", (64, 64, 3, 3)), *_bn("layer1.1.bn2", 64),
    ("layer2.0.conv1.weight", (128, 64, 3, 3)), *_bn("layer2.0.bn1", 128),
    ("layer2.0.conv2.weight", (128, 128, 3, 3)), *_bn("layer2.0.bn2", 128),
    ("layer2.0.downsample.0.weight", (128, 64, 1, 1)), *_bn("layer2.0.downsample.1", 128),
    ("layer2.1.conv1.weight", (128, 128, 3, 3)), *_bn("layer2.1.bn1", 128),
    ("layer2.1.conv2.weight", (128, 128, 3, 3)), *_bn("layer2.1.bn2", 128),
    ("layer3.0.conv1.weight", (256, 128, 3, 3)), *_bn("layer3.0.bn1", 256),
    ("layer3.0.conv2.weight", (256, 256, 3, 3)), *_bn("layer3.0.bn2", 256),
    ("layer3.0.downsample.0.weight", (256, 128, 1, 1)), *_bn("layer3.0.downsample.1", 256),
    ("layer3.1.conv1.weight", (256, 256, 3, 3)), *_bn("layer3.1.bn1", 256),
    ("layer3.1.conv2.weight", (256, 256, 3, 3)), *_bn("layer3.1.bn2", 256),
    ("layer4.0.conv1.weight", (512, 256, 3, 3)), *_bn("layer4.0.bn1", 512),
    ("layer4.0.conv2.weight", (512, 512, 3, 3)), *_bn("layer4.0.bn2", 512),
    ("layer4.0.downsample.0.weight", (512, 256, 1, 1)), *_bn("layer4.0.downsample.1", 512),
    ("layer4.1.conv1.weight", (512, 512, 3, 3)), *_bn("layer4.1.bn1", 512),
    ("layer4.1.conv2.weight", (512, 512, 3, 3)), *_bn("layer4.1.bn2", 512),
    ("fc.weight", (1000, 512)), ("fc.bias", (1000,)),
]


def test_resnet18_state_dict_is_torchvisions_key_by_key():
    model = build_model("resnet-18", (3, 32, 32), 1000)
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert len(got) == len(TORCHVISION_RESNET18) == 122
    for (k, shape), (want_k, want_shape) in zip(got, TORCHVISION_RESNET18):
        assert (k, shape) == (want_k, want_shape)


@pytest.mark.parametrize("depth,count,keys", [(18, 11_689_512, 122), (34, 21_797_672, 218), (50, 25_557_032, 320)])
def test_parameter_counts_are_torchvisions(depth, count, keys):
    model = build_model(f"resnet-{depth}", (3, 64, 64), 1000)
    assert parameter_count(model) == count
    sd = model.state_dict()
    assert len(sd) == keys
    if depth == 50:  # Bottleneck: 1x1 -> 3x3 (the stride) -> 1x1 x4, projection in every first block
        assert sd["layer1.0.conv3.weight"].shape == (256, 64, 1, 1)
        assert sd["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
        assert sd["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)
        assert sd["fc.weight"].shape == (1000, 2048)
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 1000)


def test_cifar_resnet18_keeps_its_meaning():
    assert str(parse_model_spec("resnet18")) == "resnet18:width=64,norm=bn"
    assert parameter_count(build_model("resnet18", (3, 32, 32), 10)) == 11_173_962


def test_empirical_ntks_names_and_canonical_text():
    assert str(parse_model_spec("resnet-18_pretrained")) == "resnet-18:pretrained=true,head=1,seed=438"
    assert str(parse_model_spec("ResNet-50_pretrained:head=none")) == "resnet-50:pretrained=true,seed=438"
    assert str(parse_model_spec("resnet-34")) == "resnet-34:pretrained=false"
    for text in ("resnet-18_pretrained", "resnet-34:head=3,seed=7"):
        canonical = str(parse_model_spec(text))
        assert str(parse_model_spec(canonical)) == canonical
    with pytest.raises(ModelSpecError, match="expected a positive integer"):
        parse_model_spec("resnet-18:head=0")
    with pytest.raises(ModelSpecError, match="did you mean 'resnet-18_pretrained'"):
        parse_model_spec("resnet-18_pretraned")


def test_weights_file_loads_strictly_and_a_foreign_key_is_refused(tmp_path):
    src = build_model("resnet-18", (3, 32, 32), 1000, seed=5)
    path = tmp_path / "tv.pth"
    torch.save(src.state_dict(), path)
    loaded = build_model("resnet-18", (3, 32, 32), 1000, seed=0, weights=path)
    assert model_fingerprint(loaded) == model_fingerprint(src)
    bad = dict(src.state_dict(), **{"fc.extra": torch.zeros(1)})
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ModelWeightsError, match="unexpected keys \\(1\\): fc.extra"):
        build_model("resnet-18", (3, 32, 32), 1000, weights=tmp_path / "bad.pth")
    # a 1000-class file into a 10-class model: the fix (head=N) is for replacing fc
    with pytest.raises(ModelWeightsError, match=r"fc.weight: file \(1000, 512\) vs model \(10, 512\)"):
        build_model("resnet-18", (3, 32, 32), 10, weights=path)


def test_head_replaces_fc_after_the_weights_load(tmp_path):
    src = build_model("resnet-18", (3, 32, 32), 1000, seed=5)
    torch.save(src.state_dict(), tmp_path / "tv.pth")
    m = build_model("resnet-18:head=1", (3, 32, 32), 10, seed=3, weights=tmp_path / "tv.pth")
    sd, ref = m.state_dict(), src.state_dict()
    assert isinstance(m.fc, nn.Linear) and m.fc.weight.shape == (1, 512) and m.fc.bias.shape == (1,)
    assert all(torch.equal(sd[k], ref[k]) for k in ref if not k.startswith("fc."))
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 1)
    again = build_model("resnet-18:head=1", (3, 32, 32), 10, seed=3, weights=tmp_path / "tv.pth")
    other = build_model("resnet-18:head=1", (3, 32, 32), 10, seed=4, weights=tmp_path / "tv.pth")
    assert torch.equal(again.fc.weight, m.fc.weight) and not torch.equal(other.fc.weight, m.fc.weight)
    # drawn where the seeded construction left the generator, as torch.manual_seed(s); m = resnet18();
    # m.fc = nn.Linear(512, 1) does: the next draw of that generator after the full build
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        from ntkit.models.imagenet_resnet import ImageNetResNet

        ImageNetResNet(18)
        want = nn.Linear(512, 1)
    assert torch.equal(want.weight, m.fc.weight) and torch.equal(want.bias, m.fc.bias)
    assert seed_matters("resnet-18:head=1", tmp_path / "tv.pth")
    assert not seed_matters("resnet-18", tmp_path / "tv.pth") and seed_matters("resnet-18", None)
    assert not seed_matters("resnet-18_pretrained", None)  # its own seed, 438


def test_spec_seed_replaces_the_cli_seed(tmp_path):
    a = build_model("resnet-18:head=1,seed=438", (3, 32, 32), 10, seed=0)
    b = build_model("resnet-18:head=1,seed=438", (3, 32, 32), 10, seed=9)
    c = build_model("resnet-18:head=1", (3, 32, 32), 10, seed=438)
    assert model_fingerprint(a) == model_fingerprint(b) == model_fingerprint(c)


def test_pretrained_reads_the_hub_cache_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    expected = tmp_path / "th" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert hub_weights_path(18) == expected
    with pytest.raises(PretrainedWeightsNotFoundError) as err:
        build_model("resnet-18_pretrained", (3, 32, 32), 10)
    message = str(err.value)
    assert "\n" not in message and str(expected) in message and "--weights" in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    src = build_model("resnet-18", (3, 32, 32), 1000, seed=5)
    expected.parent.mkdir(parents=True)
    torch.save(src.state_dict(), expected)
    m = build_model("resnet-18_pretrained", (3, 32, 32), 10)
    assert torch.equal(m.conv1.weight, src.conv1.weight) and m.fc.weight.shape == (1, 512)
    # torchvision < 0.13's file name is found too
    legacy = expected.with_name("resnet18-5c106cde.pth")
    expected.rename(legacy)
    assert hub_weights_path(18) == legacy
    assert model_fingerprint(build_model("resnet-18_pretrained", (3, 32, 32), 10)) == model_fingerprint(m)
    # without head, the pretrained model keeps ImageNet's 1000 logits
    assert build_model("resnet-18:pretrained=true", (3, 32, 32), 10).fc.weight.shape == (1000, 512)
    # --weights wins over the cache
    other = build_model("resnet-18", (3, 32, 32), 1000, seed=6)
    torch.save(other.state_dict(), tmp_path / "mine.pth")
    mine = build_model("resnet-18_pretrained", (3, 32, 32), 10, weights=tmp_path / "mine.pth")
    assert torch.equal(mine.conv1.weight, other.conv1.weight)


def test_pretrained_needs_colour_images():
    with pytest.raises(ModelSpecError, match="3-channel images, the data has 1 channel"):
        build_model("resnet-18:pretrained=true", (1, 28, 28), 10)
