"""Where datasets and decoded-image caches live on disk."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_ENV", "user_cache_dir", "default_data_dir", "default_cache_dir", "resolve_data_dir"]

#: Environment variable naming the data folder when ``--data-dir`` is not given.
DATA_ENV = "HNN_BRIDGE_DATA"


def user_cache_dir() -> Path:
    """The per-user cache folder: ``$XDG_CACHE_HOME/hnn-bridge``, else ``~/.cache/hnn-bridge``."""
    base = os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base else Path.home() / ".cache"
    return root / "hnn-bridge"


def default_data_dir() -> Path:
    """Where datasets are looked for and downloaded when no folder is given: ``<user cache>/datasets``."""
    return user_cache_dir() / "datasets"


def default_cache_dir() -> Path:
    """Where decoded image tensors are cached: ``<user cache>/decoded``."""
    return user_cache_dir() / "decoded"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data folder to use: the argument, else ``$HNN_BRIDGE_DATA``, else :func:`default_data_dir`.

    ``~`` is expanded; the folder need not exist.
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return default_data_dir()
