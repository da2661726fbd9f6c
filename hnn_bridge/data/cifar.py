"""Reader for CIFAR-10's "python version" batches (``cifar-10-batches-py``)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DatasetFormatError

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR_TRAIN_BATCHES",
    "CIFAR_TEST_BATCH",
    "is_cifar_batches_dir",
    "read_cifar_batches",
]

#: CIFAR-10 class names in label order.
CIFAR10_CLASSES: list[str] = [
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
CIFAR_TRAIN_BATCHES: list[str] = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST_BATCH = "test_batch"


def is_cifar_batches_dir(folder: Path) -> bool:
    """True when ``folder`` holds all five ``data_batch_*`` files and ``test_batch``."""
    return all((folder / name).is_file() for name in [*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH])


def _load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            entry: Any = pickle.load(fh, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DatasetFormatError(
            f"CIFAR batch {path} cannot be unpickled ({exc}); the file is corrupt"
        ) from exc
    if not isinstance(entry, dict) or "data" not in entry or not ({"labels", "fine_labels"} & entry.keys()):
        raise DatasetFormatError(f"CIFAR batch {path} is not a dict with 'data' and 'labels'")
    data = np.asarray(entry["data"], dtype=np.uint8)
    labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise DatasetFormatError(
            f"CIFAR batch {path} has data of shape {data.shape} and {labels.shape[0]} labels; "
            "expected [n, 3072] and n labels"
        )
    return data.reshape(-1, 3, 32, 32), labels


def _read_classes(folder: Path) -> list[str]:
    meta = folder / "batches.meta"
    if meta.is_file():
        try:
            with open(meta, "rb") as fh:
                names = pickle.load(fh, encoding="latin1").get("label_names")
            if names:
                return [str(n) for n in names]
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError):
            pass
    return list(CIFAR10_CLASSES)


def read_cifar_batches(folder: str | os.PathLike[str]) -> tuple[torch.Tensor, torch.Tensor, list[str], int]:
    """Read ``data_batch_1..5`` then ``test_batch`` from ``folder`` and pool them.

    Returns ``(images uint8 [N, 3, 32, 32], labels int64 [N], classes, train_count)``.
    """
    folder = Path(folder)
    missing = [n for n in [*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH] if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks the CIFAR-10 batch files: {', '.join(missing)}")
    parts = [_load_batch(folder / n) for n in [*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH]]
    classes = _read_classes(folder)
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DatasetFormatError(f"CIFAR batches in {folder} have labels outside 0..{len(classes) - 1}")
    train_count = sum(p[0].shape[0] for p in parts[:-1])
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels), classes, train_count
