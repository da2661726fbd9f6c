"""tools/mnist_reconstruction.py: its imitation of the PNG rendering behind our MNIST
train images is matplotlib's own, and its round trip reproduces the README's measurement."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from matplotlib import pyplot as plt

REPO = Path(__file__).resolve().parent.parent
SHARED = next(
    (p for p in (REPO.parent / "shared" / "datasets", Path("/work/shared/datasets")) if p.is_dir()), None
)


@pytest.fixture(scope="module")
def recon():
    spec = importlib.util.spec_from_file_location(
        "mnist_reconstruction", REPO / "tools" / "mnist_reconstruction.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_imsave_grey_is_what_plt_imsave_writes(recon, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    images[1] = images[1] // 2 + 40  # neither 0 nor 255 inside: imsave stretches min..max
    images[2, :14] = 0
    got = recon.imsave_grey(images)
    for img, grey in zip(images, got):
        plt.imsave(tmp_path / "x.png", img, cmap="Greys")
        png = (plt.imread(tmp_path / "x.png") * 255).round().astype(np.uint8)
        assert (png[..., 0] == png[..., 1]).all() and (png[..., 0] == png[..., 2]).all()
        np.testing.assert_array_equal(grey, png[..., 0])


@pytest.mark.skipif(SHARED is None, reason="needs ../shared/datasets")
def test_round_trip_of_the_original_test_images_matches_the_readme(recon) -> None:
    from hnn_bridge.data import load_dataset

    ds = load_dataset("mnist", SHARED)
    original = ds.images[ds.train_size :].numpy()
    diff = np.abs(recon.round_trip(original).astype(int) - original.astype(int))
    # ../shared/datasets/README.md: 97.2% of pixels exact, largest error 1, mean 0.028 levels
    assert round(float((diff == 0).mean()), 3) == 0.972
    assert diff.max() == 1
    assert round(float(diff.mean()), 3) == 0.028
