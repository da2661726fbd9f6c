"""Reader for the IDX format of MNIST and Fashion-MNIST (plain or gzipped files).

An IDX file starts with a 4-byte magic number ``0x00 0x00 <type> <ndim>`` followed by
``ndim`` big-endian uint32 dimension sizes and the data, big-endian, row-major. MNIST
images are ``0x00000803`` (uint8, 3 dimensions), labels ``0x00000801`` (uint8, 1 dim).
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from .errors import DatasetFormatError

__all__ = ["read_idx", "find_idx_file", "idx_split_files", "read_idx_dataset", "IDX_STEMS"]

# IDX type code -> big-endian numpy dtype
_IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

#: File stems of torchvision's raw layout, per split and kind.
IDX_STEMS: dict[tuple[str, str], str] = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


def _read_bytes(path: Path) -> bytes:
    """The decompressed contents of ``path`` (gzip detected by its magic bytes, not its name)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetFormatError(f"cannot read IDX file {path}: {exc}") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetFormatError(
                f"IDX file {path} is a corrupt or truncated gzip file ({exc}); "
                "delete it and download or copy it again"
            ) from exc
    if path.suffix == ".gz":
        raise DatasetFormatError(f"IDX file {path} is named .gz but is not gzip-compressed")
    return raw


def read_idx(path: str | os.PathLike[str], *, expect_ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (plain or ``.gz``) into a numpy array of its native dtype and shape.

    The magic number, dimension count and data length are validated;
    :class:`DatasetFormatError` names the file and what is wrong.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DatasetFormatError(f"IDX file {path} is too short ({len(data)} bytes) to hold a header")
    zero, type_code, ndim = int.from_bytes(data[0:2], "big"), data[2], data[3]
    magic = int.from_bytes(data[0:4], "big")
    if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise DatasetFormatError(
            f"IDX file {path} has a bad magic number 0x{magic:08X} "
            "(expected 0x000008NN: two zero bytes, a type code, a dimension count); "
            "the file is corrupt or not an IDX file"
        )
    if expect_ndim is not None and ndim != expect_ndim:
        raise DatasetFormatError(
            f"IDX file {path} has magic number 0x{magic:08X} with {ndim} dimension(s), "
            f"expected {expect_ndim} (0x{0x800 | expect_ndim:08X})"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetFormatError(f"IDX file {path} is truncated inside its header")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetFormatError(
            f"IDX file {path} holds {len(data) - header} data bytes but its header "
            f"{'x'.join(map(str, dims))} promises {expected}; the file is truncated or corrupt"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=False)


def find_idx_file(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` or ``folder/stem.gz``, whichever exists (plain first), else ``None``."""
    for name in (stem, stem + ".gz"):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def idx_split_files(folder: Path) -> tuple[dict[tuple[str, str], Path], list[str]]:
    """The four torchvision raw files found in ``folder`` and the stems that are missing."""
    found: dict[tuple[str, str], Path] = {}
    missing: list[str] = []
    for key, stem in IDX_STEMS.items():
        hit = find_idx_file(folder, stem)
        if hit is None:
            missing.append(stem + "[.gz]")
        else:
            found[key] = hit
    return found, missing


def _read_pair(images_path: Path, labels_path: Path, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(images_path, expect_ndim=3)
    labels = read_idx(labels_path, expect_ndim=1)
    if images.dtype != np.uint8:
        raise DatasetFormatError(f"IDX image file {images_path} holds {images.dtype}, expected uint8 pixels")
    if images.shape[0] != labels.shape[0]:
        raise DatasetFormatError(
            f"{images_path} has {images.shape[0]} images but {labels_path} has {labels.shape[0]} labels"
        )
    labels64 = labels.astype(np.int64)
    if labels64.size and (labels64.min() < 0 or labels64.max() >= num_classes):
        raise DatasetFormatError(
            f"IDX label file {labels_path} has labels outside 0..{num_classes - 1} "
            f"(min {labels64.min()}, max {labels64.max()})"
        )
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels64)


def read_idx_dataset(
    folder: str | os.PathLike[str], classes: list[str]
) -> tuple[torch.Tensor, torch.Tensor, list[str], int]:
    """Read torchvision's raw MNIST-style layout in ``folder`` and pool train then test.

    Returns ``(images uint8 [N, 1, H, W], labels int64 [N], classes, train_count)``.
    Raises :class:`FileNotFoundError` listing the missing files when the set is incomplete.
    """
    folder = Path(folder)
    found, missing = idx_split_files(folder)
    if missing:
        raise FileNotFoundError(f"{folder} lacks the IDX files: {', '.join(missing)}")
    train_x, train_y = _read_pair(found["train", "images"], found["train", "labels"], len(classes))
    test_x, test_y = _read_pair(found["test", "images"], found["test", "labels"], len(classes))
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DatasetFormatError(
            f"train images in {found['train', 'images']} are {tuple(train_x.shape[2:])} but test images in "
            f"{found['test', 'images']} are {tuple(test_x.shape[2:])}"
        )
    return torch.cat([train_x, test_x]), torch.cat([train_y, test_y]), list(classes), int(train_x.shape[0])
