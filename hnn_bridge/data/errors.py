"""Exceptions raised by the data layer."""

from __future__ import annotations

__all__ = ["DatasetNotFound", "DatasetFormatError"]


class DatasetNotFound(FileNotFoundError):
    """A dataset is neither on disk nor downloadable.

    The message names the folder that was searched, the layout that was expected,
    the ``--data-dir`` option and the embedded ``mnist-5k`` fallback.
    """


class DatasetFormatError(ValueError):
    """A dataset file exists but its contents are not what its format promises.

    The message always names the offending file.
    """
