"""Data-spec transforms: ``:resize=S`` (torchvision's Resize(S) on uint8 images) and
``normalize=dataset|imagenet|none``, applied per batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntkit.data import DataSpecError, load_data, parse_spec, resolve_kernel_data
from ntkit.data.datasets import ArrayDataset, Normalization
from helpers.fakes import write_fake_cifar10, write_fake_mnist

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def _bilinear_up(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Half-pixel bilinear upsampling (C, H, W) -> (C, out_h, out_w) in float64, edges clamped:
    PIL's and torchvision's bilinear when enlarging (antialiasing only acts when shrinking)."""

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, None)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    c, h, w = img.shape
    y0, y1, fy = axis(h, out_h)
    x0, x1, fx = axis(w, out_w)
    a = img.astype(np.float64)
    rows = a[:, y0, :] * (1 - fy)[None, :, None] + a[:, y1, :] * fy[None, :, None]
    return rows[:, :, x0] * (1 - fx)[None, None, :] + rows[:, :, x1] * fx[None, None, :]


def test_parse_transforms_and_canonical_specs():
    p = parse_spec("cifar10[train:0:4,test]:resize=224,normalize=imagenet")
    assert [r.text() for r in p.rows] == ["train:0:4", "test"]
    assert (p.transform.resize, p.transform.normalize) == (224, "imagenet")
    e = parse_spec("CIFAR-10_0_2500_0_1000:resize=224")
    assert e.cols is not None and e.transform.text() == "resize=224"
    assert parse_spec("npz:/x/a=b.npz").transform is None and parse_spec("npz:/x/a=b.npz").path == "/x/a=b.npz"
    assert parse_spec("npz:a.npz:normalize=none").path == "a.npz"
    assert parse_spec("cifar10").transform is None


@pytest.mark.parametrize("spec,phrase", [
    ("cifar10:size=224", "unknown transform option 'size' in 'cifar10:size=224' (did you mean 'resize'?)"),
    ("cifar10:resize=0", "expected the shorter image side in pixels"),
    ("cifar10:normalize=imagnet", "(did you mean 'imagenet'?)"),
    ("cifar10:resize=8,resize=9", "given twice"),
    ("cifar10[0:4]:resize=8:resize=9", "two ':' option lists"),
])
def test_transform_errors_name_the_fix(spec, phrase):
    with pytest.raises(DataSpecError) as err:
        parse_spec(spec)
    assert phrase in err.value.reason and "\n" not in err.value.reason


def test_resize_224_and_imagenet_normalization_match_an_independent_computation(tmp_path):
    fake = write_fake_cifar10(tmp_path)
    ds = load_data("cifar10[test:0:3]:resize=224,normalize=imagenet", tmp_path)
    assert ds.input_shape == (3, 224, 224) and ds.spec == "cifar10[test:0:3]:resize=224,normalize=imagenet"
    assert ds.raw[0].shape == (3, 3, 32, 32) and ds.raw[0].dtype == np.uint8  # resized per batch only
    x = ds[0:3][0].double().numpy()
    for i in range(3):
        up = np.clip(np.round(_bilinear_up(fake.x_test[i], 224, 224)), 0, 255)  # uint8 image, as PIL/torchvision
        want = (up / 255 - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]
        diff = np.abs(x[i] - want)
        # float32 vs float64 can round a value within 1e-4 of .5 the other way: one grey level at most
        assert diff.max() <= 1 / 255 / IMAGENET_STD.min() + 1e-5
        assert (diff > 1e-5).mean() < 1e-3
    # and torch's own interpolate in float64 as a second reference
    ref = torch.nn.functional.interpolate(torch.from_numpy(fake.x_test[:3]).double(), size=(224, 224),
                                          mode="bilinear", align_corners=False, antialias=True)
    ref = (ref.round().clamp(0, 255) / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD).view(1, 3, 1, 1)
    assert (torch.from_numpy(x) - ref).abs().max() <= 1 / 255 / IMAGENET_STD.min() + 1e-5


def test_shrinking_is_antialiased_and_the_shorter_side_is_resized():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(2, 3, 40, 60), dtype=np.uint8)
    ds = ArrayDataset(raw, normalization=Normalization(255.0, resize=20))
    assert ds.input_shape == (3, 20, 30)  # torchvision's Resize(20): shorter side 20, ratio kept
    got = ds[0:2][0].double()
    ref = torch.nn.functional.interpolate(torch.from_numpy(raw).double(), size=(20, 30), mode="bilinear",
                                          align_corners=False, antialias=True).round().clamp(0, 255) / 255
    assert (got - ref).abs().max() <= 1 / 255 + 1e-6
    plain = torch.nn.functional.interpolate(torch.from_numpy(raw).double(), size=(20, 30), mode="bilinear",
                                            align_corners=False).round() / 255
    assert (got - plain).abs().max() > 5 / 255  # antialiasing is on: not the aliased bilinear


def test_normalize_choices_and_fingerprints(tmp_path):
    write_fake_cifar10(tmp_path)
    own = load_data("cifar10[0:4]", tmp_path)
    same = load_data("cifar10[0:4]:normalize=dataset", tmp_path)
    none = load_data("cifar10[0:4]:normalize=none", tmp_path)
    resized = load_data("cifar10[0:4]:resize=32", tmp_path)  # the same size: values unchanged
    assert torch.equal(own[0:4][0], same[0:4][0]) and own.fingerprint() == same.fingerprint()
    assert torch.equal(none[0:4][0], torch.tensor(own.raw[0]).float() / 255)
    assert torch.equal(resized[0:4][0], own[0:4][0])
    fps = {d.fingerprint() for d in (own, none, resized, load_data("cifar10[0:4]:resize=64", tmp_path))}
    assert len(fps) == 4
    # the spec a dataset prints loads the same samples again
    ds = load_data("cifar10[0:4]:resize=40,normalize=imagenet", tmp_path)
    again = load_data(ds.spec, tmp_path)
    assert again.fingerprint() == ds.fingerprint() and torch.equal(again[0:4][0], ds[0:4][0])


def test_empirical_form_with_transforms_gives_rows_and_cols(tmp_path):
    write_fake_cifar10(tmp_path)
    rows, cols = resolve_kernel_data("CIFAR-10_0_4_0_2:resize=48,normalize=imagenet", tmp_path)
    assert rows.spec == "cifar10[train:0:4,test:0:2]:resize=48,normalize=imagenet"
    assert cols.spec == "cifar10[train:0:4]:resize=48,normalize=imagenet"
    assert rows[0:6][0].shape == (6, 3, 48, 48) and torch.equal(rows[0:4][0], cols[0:4][0])


def test_transforms_that_do_not_fit_the_data(tmp_path):
    write_fake_mnist(tmp_path)
    with pytest.raises(DataSpecError, match="normalize=imagenet needs colour images"):
        load_data("mnist[test]:normalize=imagenet", tmp_path)
    assert load_data("mnist[test]:resize=56", tmp_path).input_shape == (1, 56, 56)
    np.savez(tmp_path / "flat.npz", x=np.zeros((3, 5), np.float32))
    with pytest.raises(DataSpecError, match="resize=8 needs images"):
        load_data(f"npz:{tmp_path / 'flat.npz'}:resize=8")
