"""Data layer: dataset readers, the 6:2:2 stratified split and tensor mini-batches.

Typical use::

    from hnn_bridge.data import load_dataset, split_622, TensorBatches
    ds = load_dataset("mnist", data_dir="../shared/datasets")   # or "mnist-5k", offline
    split = split_622(ds.labels, seed=0)                        # 42,000 / 14,000 / 14,000
    train = TensorBatches(ds.images, ds.labels, split.train, batch_size=64, seed=0)
    for x, y in train:                                          # x float32 [64, 1, 28, 28] in [0, 1]
        ...
"""

from .augment import AUGMENTS, CropRotate, augmentation
from .cifar import CIFAR10_CLASSES, read_cifar_batches
from .embedded import MNIST_CLASSES, read_mnist_5k
from .errors import DatasetFormatError, DatasetNotFound
from .idx import read_idx, read_idx_dataset
from .imagefolder import (
    ImageFolderInfo,
    describe_image_folder,
    image_folder_cache_path,
    list_image_folder,
    read_image_folder,
)
from .loader import TensorBatches, epoch_generator
from .paths import DATA_ENV, default_cache_dir, default_data_dir, resolve_data_dir, user_cache_dir
from .registry import (
    DATASET_NAMES,
    DATASET_SHAPES,
    FASHION_MNIST_CLASSES,
    IMAGE_FOLDER_PREFIX,
    Dataset,
    describe_dataset,
    image_folder_path,
    load_dataset,
)
from .split import Split, split_622, split_sizes

__all__ = [
    "AUGMENTS",
    "CIFAR10_CLASSES",
    "CropRotate",
    "DATASET_NAMES",
    "DATASET_SHAPES",
    "DATA_ENV",
    "Dataset",
    "DatasetFormatError",
    "DatasetNotFound",
    "FASHION_MNIST_CLASSES",
    "IMAGE_FOLDER_PREFIX",
    "ImageFolderInfo",
    "MNIST_CLASSES",
    "Split",
    "TensorBatches",
    "augmentation",
    "default_cache_dir",
    "default_data_dir",
    "describe_dataset",
    "describe_image_folder",
    "epoch_generator",
    "image_folder_cache_path",
    "image_folder_path",
    "list_image_folder",
    "load_dataset",
    "read_cifar_batches",
    "read_idx",
    "read_idx_dataset",
    "read_image_folder",
    "read_mnist_5k",
    "resolve_data_dir",
    "split_622",
    "split_sizes",
    "user_cache_dir",
]
