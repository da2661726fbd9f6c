"""Training-image augmentation (`hnn_bridge.data.augment`): the crop and the rotation
against torchvision's, the order of the chained steps, torchvision's crop-box rule, and
batches that do not depend on the rank, the world size or a resume."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from hnn_bridge.data import TensorBatches
from hnn_bridge.data.augment import _CROP_DRAWS, _CROP_TRIES, CropRotate, augmentation
from hnn_bridge.recipe import Settings

BILINEAR = InterpolationMode.BILINEAR
CROP = _CROP_DRAWS  # draws per crop: the tries, then the corner


def _draws(
    aug: CropRotate, crops: list[list[float]], angles: list[float], apply: float = 0.0
) -> torch.Tensor:
    """One image's draws: ``crops[k]`` fills pass k's crop columns, ``angles[k]`` its angle."""
    u = torch.zeros(1, aug.width, dtype=torch.float64)
    u[0, 0] = apply
    for k in range(aug.passes):
        base = 1 + k * (CROP + 1)
        u[0, base : base + CROP] = torch.tensor(crops[k], dtype=torch.float64)
        u[0, base + CROP] = (angles[k] / aug.degrees + 1) / 2 if aug.degrees else 0.5
    return u


def _whole_image_crop() -> list[float]:
    """Crop draws whose first try is the whole image (with scale 1 and the image's own ratio)."""
    return [1.0, 0.0] * _CROP_TRIES + [0.0, 0.0]


def test_none_adds_nothing_and_an_unknown_name_is_named() -> None:
    assert augmentation("none") is None and augmentation("crop-rotate") == CropRotate()
    with pytest.raises(ValueError, match=r"unknown augmentation 'flip'; known: 'none', 'crop-rotate'"):
        augmentation("flip")
    assert "augment" not in Settings().identity()  # runs made before the setting still resume
    assert Settings(augment="crop-rotate").identity()["augment"] == "crop-rotate"


@pytest.mark.parametrize("angle", [10.0, -7.5])
def test_rotation_is_torchvision_rotate_on_a_non_square_image(angle: float) -> None:
    x = torch.rand(2, 3, 28, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    aug = CropRotate(p=1.0, scale=(1.0, 1.0), ratio=(20 / 28, 20 / 28), degrees=15.0, passes=1)
    u = _draws(aug, [_whole_image_crop()], [angle]).expand(2, -1)
    torch.testing.assert_close(
        aug.apply(x, u), TF.rotate(x, angle, interpolation=BILINEAR), rtol=0, atol=1e-12
    )


def test_crop_is_torchvision_resized_crop_inside_the_box() -> None:
    x = torch.rand(1, 1, 28, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    aug = CropRotate(p=1.0, scale=(0.5, 0.5), ratio=(1.0, 1.0), degrees=0.0, passes=1)
    crop = [0.0, 0.0] * _CROP_TRIES + [0.3, 0.7]
    ours = aug.apply(x, _draws(aug, [crop], [0.0]))
    side = round(math.sqrt(28 * 20 * 0.5))  # 17
    top, left = math.floor(0.3 * (28 - side + 1)), math.floor(0.7 * (20 - side + 1))
    ref = TF.resized_crop(x, top, left, side, side, [28, 20], interpolation=BILINEAR, antialias=False)
    # torchvision clamps at the cut edge; the composed map reads the neighbours outside the box
    torch.testing.assert_close(ours[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], rtol=0, atol=1e-12)
    assert (ours - ref).abs()[..., 1:-1, 1:-1].max() < 1e-12 < (ours - ref).abs().max()


def test_two_passes_chain_crop_rotate_crop_rotate_in_that_order() -> None:
    # bilinear resampling of a linear ramp is exact, so four torchvision steps in a row and
    # the one composed map must agree wherever no step reads outside the image
    h = w = 28
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    x = (0.02 * xx + 0.01 * yy + 0.1)[None, None]
    aug = CropRotate(p=1.0, scale=(0.6, 0.6), ratio=(0.8, 0.8), degrees=15.0, passes=2)
    crops = [[0.0, 0.0] * _CROP_TRIES + [0.9, 0.2], [0.0, 0.0] * _CROP_TRIES + [0.1, 0.6]]
    angles = [12.0, -5.0]
    ours = aug.apply(x, _draws(aug, crops, angles))
    ref = x
    for crop, angle in zip(crops, angles):
        area = h * w * 0.6
        bw, bh = round(math.sqrt(area * 0.8)), round(math.sqrt(area / 0.8))
        top, left = math.floor(crop[-2] * (h - bh + 1)), math.floor(crop[-1] * (w - bw + 1))
        ref = TF.resized_crop(ref, top, left, bh, bw, [h, w], interpolation=BILINEAR, antialias=False)
        ref = TF.rotate(ref, angle, interpolation=BILINEAR)
    centre = (slice(None), slice(None), slice(10, 18), slice(10, 18))
    torch.testing.assert_close(ours[centre], ref[centre], rtol=0, atol=1e-9)
    swapped = aug.apply(x, _draws(aug, crops[::-1], angles[::-1]))
    assert (swapped[centre] - ref[centre]).abs().max() > 1e-3  # the order is seen


def _torchvision_box(
    h: int,
    w: int,
    tries: list[tuple[float, float]],
    corner: tuple[float, float],
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[int, int, int, int]:
    """RandomResizedCrop.get_params's rule, written out with the given uniform draws."""
    area = h * w
    for a, r in tries:
        target = area * (scale[0] + (scale[1] - scale[0]) * a)
        aspect = math.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * r)
        bw, bh = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < bw <= w and 0 < bh <= h:
            return math.floor(corner[0] * (h - bh + 1)), math.floor(corner[1] * (w - bw + 1)), bh, bw
    own = w / h
    if own < ratio[0]:
        bw, bh = w, int(round(w / ratio[0]))
    elif own > ratio[1]:
        bh, bw = h, int(round(h * ratio[1]))
    else:
        bw, bh = w, h
    return (h - bh) // 2, (w - bw) // 2, bh, bw


@pytest.mark.parametrize(
    "shape, scale, ratio", [((28, 28), (0.85, 1.0), (3 / 4, 4 / 3)), ((32, 24), (0.3, 1.0), (1.5, 2.0))]
)
def test_crop_box_follows_torchvision_rule_including_the_fallback(shape, scale, ratio) -> None:
    h, w = shape
    aug = CropRotate(scale=scale, ratio=ratio)
    rng = random.Random(3)
    rows, expected = [], []
    for k in range(400):
        tries = [(rng.random(), rng.random()) for _ in range(_CROP_TRIES)]
        if k % 50 == 0:  # force the fallback: largest area at the widest ratio never fits
            tries = [(1.0, 1.0)] * _CROP_TRIES
        corner = (rng.random(), rng.random())
        rows.append([v for t in tries for v in t] + list(corner))
        expected.append(_torchvision_box(h, w, tries, corner, scale, ratio))
    m = aug._crop(torch.tensor(rows, dtype=torch.float64), h, w)
    bw, bh = m[:, 0, 0] * w, m[:, 1, 1] * h
    left, top = (m[:, 0, 2] + 1) * w / 2 - bw / 2, (m[:, 1, 2] + 1) * h / 2 - bh / 2
    got = [tuple(int(round(float(v))) for v in box) for box in zip(top, left, bh, bw)]
    assert got == expected


def test_unaugmented_images_pass_bit_for_bit_and_p_sets_the_share() -> None:
    x = torch.rand(4000, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    aug = CropRotate()
    u = aug.draw(4000, torch.Generator().manual_seed(4))
    out = aug.apply(x, u)
    kept = u[:, 0] >= aug.p
    assert torch.equal(out[kept], x[kept])
    changed = (out != x).flatten(1).any(1)
    assert torch.equal(changed, ~kept)
    assert abs(float(changed.double().mean()) - 0.5) < 4 * math.sqrt(0.25 / 4000)
    assert torch.equal(CropRotate(p=0.0).apply(x, u), x)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match=r"CropRotate: p must be in \[0, 1\], got 1.5"):
        CropRotate(p=1.5)
    with pytest.raises(ValueError, match=r"scale must satisfy 0 < low <= high <= 1, got \(0.9, 0.5\)"):
        CropRotate(scale=(0.9, 0.5))
    with pytest.raises(ValueError, match=r"need degrees >= 0 and passes >= 1, got 15.0, 0"):
        CropRotate(passes=0)


def _images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return torch.randint(0, 256, (n, 1, 12, 12), generator=g, dtype=torch.uint8), torch.arange(n) % 10


def test_augmented_batches_repeat_per_epoch_and_do_not_depend_on_the_world_size() -> None:
    images, labels = _images(48)
    aug = CropRotate()
    single = TensorBatches(images, labels, batch_size=12, seed=7, augment=aug)
    epoch0 = [x for x, _ in single.epoch_batches(0)]
    assert all(torch.equal(a, b) for a, b in zip(epoch0, [x for x, _ in single.epoch_batches(0)]))
    epoch1 = [x for x, _ in single.epoch_batches(1)]
    assert not all(torch.equal(a, b) for a, b in zip(epoch0, epoch1))
    plain = [x for x, _ in TensorBatches(images, labels, batch_size=12, seed=7).epoch_batches(0)]
    same_rows = [(a == b).flatten(1).all(1) for a, b in zip(epoch0, plain)]
    share = float(torch.cat(same_rows).double().mean())
    assert 0.2 < share < 0.8  # about half the images augmented, in the unaugmented order
    world = 3
    shards = [
        TensorBatches(images, labels, batch_size=4, seed=7, rank=r, world_size=world, augment=aug)
        for r in range(world)
    ]
    per_rank = [[x for x, _ in s.epoch_batches(0)] for s in shards]
    for g, full in enumerate(epoch0):  # each global batch = the ranks' batches side by side
        assert torch.equal(torch.cat([per_rank[r][g] for r in range(world)]), full)


def test_a_recipe_augments_the_training_images_only(tmp_path, monkeypatch) -> None:
    from helpers import TINY_RECIPE

    from hnn_bridge.recipe import load_recipe
    from hnn_bridge.training.runner import RunOptions, run_recipe

    calls: list[int] = []
    real = CropRotate.apply

    def spy(self, x, u):
        calls.append(x.shape[0])
        return real(self, x, u)

    monkeypatch.setattr(CropRotate, "apply", spy)
    text = TINY_RECIPE.replace("epochs = 2", 'epochs = 1\naugment = "crop-rotate"')
    (tmp_path / "tiny.toml").write_text(text)
    recipe = load_recipe(tmp_path / "tiny.toml").configure().select([1])  # separate: the ANN, then the HNN
    results = run_recipe(recipe, RunOptions(out=tmp_path / "out"))
    assert results["rows"][0]["status"] == "ok"
    assert results["rows"][0]["settings"]["augment"] == "crop-rotate"
    # 500 images -> 300 for training in batches of 50: 6 training batches for each of the two
    # jobs, and no call from the validation and test passes
    assert calls == [50] * 12


def test_a_network_learns_from_augmented_images() -> None:
    from hnn_bridge import build
    from hnn_bridge.data import load_dataset, split_622
    from hnn_bridge.training.loop import TrainOptions, train_model

    ds = load_dataset("mnist-5k")
    pick = split_622(ds.labels, seed=0, ratios=(1000, len(ds) - 1000, 0)).train
    images, labels = ds.images[pick], ds.labels[pick]
    split = split_622(labels, seed=0)
    train = TensorBatches(images, labels, split.train, batch_size=40, seed=1, augment=CropRotate())
    val = TensorBatches(images, labels, split.val, batch_size=200, shuffle=False)
    torch.manual_seed(0)
    model = build("A784-A64-S10", steps=4, dropout=0.0)
    log = train_model(model, list(model.parameters()), train, val, TrainOptions(epochs=3, lr=2e-3))["log"]
    # 600 real digits, 3 epochs: measured 0.79 argmax on the 200 held out (0.83 unaugmented); chance is 0.1
    assert log[-1]["train_loss"] < log[0]["train_loss"] < math.log(10)
    assert log[-1]["val_acc_argmax"] > 0.6


def test_the_command_line_starts_without_torchvision() -> None:
    """The recipe reads the augmentation names from hnn_bridge.data, so importing the data
    package must stay light: torchvision (about a second) loads only when images are decoded."""
    import subprocess
    import sys

    code = "import sys, hnn_bridge.cli, hnn_bridge.recipe; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
