"""Reader for ``torchvision.datasets.ImageFolder`` trees (``root/<class>/**/<image>``).

All images are decoded once with :func:`torchvision.io.decode_image` (JPEGs in batches
through :func:`torchvision.io.decode_jpeg`; a thread pool spreads the work over the cores)
into one uint8 tensor ``[N, C, H, W]``. The result is
cached on disk as a single ``.pt`` file, written atomically, whose name is keyed by the
tree's resolved path and the relative path, size and mtime of every image file, so a
changed tree is decoded again and an unchanged one is loaded in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

# torchvision.io is imported where images are decoded: importing it costs about a second,
# and `hnn_bridge.data` is imported by every command (the augmentation names)
if TYPE_CHECKING:
    from torchvision.io import ImageReadMode

from .errors import DatasetFormatError
from .paths import default_cache_dir

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderInfo",
    "describe_image_folder",
    "image_folder_parts",
    "list_image_folder",
    "image_folder_cache_path",
    "read_image_folder",
]

log = logging.getLogger(__name__)

#: File suffixes (lower case) taken as images; others are ignored, as ImageFolder does.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp"})

_CACHE_FORMAT = 1
_CHUNK = 512
_TV_DEPRECATION = r"The image decoding and encoding capabilities of TorchVision are deprecated"


def list_image_folder(root: str | os.PathLike[str]) -> tuple[list[str], list[int], list[str]]:
    """The image file paths, their labels and the class names of an ImageFolder tree.

    Order matches ``torchvision.datasets.ImageFolder``: classes are the sorted
    sub-folder names (label = position), files are walked recursively in sorted order.
    Raises :class:`FileNotFoundError` naming ``root`` when it has no class folder or no image.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise FileNotFoundError(
            f"image folder {root} has no class sub-folders (expected {root}/<class>/<image>)"
        )
    files: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        for dirpath, _dirnames, filenames in sorted(os.walk(os.path.join(root, name), followlinks=True)):
            for filename in sorted(filenames):
                if os.path.splitext(filename)[1].lower() in IMAGE_EXTENSIONS:
                    files.append(os.path.join(dirpath, filename))
                    labels.append(label)
    if not files:
        suffixes = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise FileNotFoundError(f"image folder {root} has no image files ({suffixes}) in its class folders")
    return files, labels, classes


def _tree_key(root: Path, files: list[str]) -> tuple[str, str]:
    """``(root digest, content digest)``: the content digest covers every file's path, size, mtime."""
    resolved = str(root.resolve())
    root_digest = hashlib.sha256(resolved.encode()).hexdigest()[:8]
    content = hashlib.sha256(f"v{_CACHE_FORMAT}\0{resolved}\0{len(files)}\0".encode())
    skip = len(os.path.join(str(root), ""))
    stat = os.stat
    content.update(
        "".join(
            f"{path[skip:]}\0{st.st_size}\0{st.st_mtime_ns}\n" for path in files for st in (stat(path),)
        ).encode()
    )
    return root_digest, content.hexdigest()[:16]


def _cache_prefix(root: Path, root_digest: str) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in root.resolve().name) or "root"
    return f"imagefolder-{stem}-{root_digest}-"


def image_folder_cache_path(
    root: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """The cache file that :func:`read_image_folder` uses for the tree at ``root`` as it is now."""
    root = Path(root)
    files, _, _ = list_image_folder(root)
    root_digest, content_digest = _tree_key(root, files)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / f"{_cache_prefix(root, root_digest)}{content_digest}.pt"


def _decode(path: str, mode: ImageReadMode) -> torch.Tensor:
    from torchvision.io import decode_image, read_file

    try:
        return decode_image(read_file(path), mode=mode)
    except (RuntimeError, ValueError, OSError) as exc:
        raise DatasetFormatError(f"cannot decode image {path}: {exc}") from exc


def _decode_chunk(paths: list[str], mode: ImageReadMode) -> list[torch.Tensor]:
    """Decode ``paths``; all-JPEG chunks go through one batched ``decode_jpeg`` call (GIL released)."""
    from torchvision.io import decode_jpeg, read_file

    if all(os.path.splitext(p)[1].lower() in (".jpg", ".jpeg") for p in paths):
        try:
            datas = [read_file(p) for p in paths]
            return list(decode_jpeg(datas, mode=mode))
        except (RuntimeError, ValueError, OSError):
            pass  # decode one by one below to name the bad file
    return [_decode(p, mode) for p in paths]


def _first_image(files: list[str]) -> tuple[ImageReadMode, tuple[int, ...]]:
    """The colour mode of a tree (grey when its first image is grey, else RGB) and the
    ``(C, H, W)`` of its first image in that mode."""
    from torchvision.io import ImageReadMode

    first = _decode(files[0], ImageReadMode.UNCHANGED)
    mode = ImageReadMode.GRAY if first.shape[0] in (1, 2) else ImageReadMode.RGB
    return mode, tuple(_decode(files[0], mode).shape)


def _decode_all(files: list[str], workers: int | None) -> torch.Tensor:
    with warnings.catch_warnings():
        # torchvision 0.29 warns on every decode call that TorchCodec will take over image decoding
        warnings.filterwarnings("ignore", message=_TV_DEPRECATION, category=DeprecationWarning)
        mode, shape = _first_image(files)
        out = torch.empty((len(files), *shape), dtype=torch.uint8)

        def work(start: int) -> None:
            paths = files[start : start + _CHUNK]
            for offset, image in enumerate(_decode_chunk(paths, mode)):
                if tuple(image.shape) != shape:
                    raise DatasetFormatError(
                        f"image {paths[offset]} has shape {tuple(image.shape)} (C, H, W) but {files[0]} has "
                        f"{shape}; all images of a tree must have one size"
                    )
                out[start + offset] = image

        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            for future in [pool.submit(work, s) for s in range(0, len(files), _CHUNK)]:
                future.result()
    return out


def _load_cache(path: Path, count: int) -> tuple[torch.Tensor, torch.Tensor, list[str]] | None:
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        images, labels, classes = entry["images"], entry["labels"], list(entry["classes"])
        if entry.get("format") != _CACHE_FORMAT or images.dtype != torch.uint8 or images.shape[0] != count:
            raise ValueError("unexpected contents")
        if labels.dtype != torch.int64 or labels.shape != (count,):
            raise ValueError("unexpected labels")
        return images, labels, classes
    except Exception as exc:  # a damaged cache is never fatal: decode again
        warnings.warn(
            f"ignoring unreadable image cache {path} ({exc}); decoding the images again", stacklevel=3
        )
        return None


def _save_cache(path: Path, entry: dict[str, object]) -> None:
    tmp_name: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            torch.save(entry, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as exc:
        warnings.warn(
            f"could not write the image cache {path} ({exc}); images will be decoded again next time",
            stacklevel=3,
        )
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass


def _remove_stale(path: Path, prefix: str) -> None:
    """Delete older caches of the same tree (same root, other contents)."""
    for old in path.parent.glob(prefix + "*.pt"):
        if old != path:
            try:
                old.unlink()
            except OSError:
                pass


def read_image_folder(
    root: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    cache: bool = True,
    workers: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode an ImageFolder tree into ``(images uint8 [N, C, H, W], labels int64 [N], classes)``.

    Colour mode: grey (C = 1) when the first image is grey (with or without alpha),
    otherwise RGB (C = 3, alpha dropped); every image is converted to that mode and all
    must share one size. ``cache_dir`` defaults to ``$XDG_CACHE_HOME/hnn-bridge/decoded``;
    ``cache=False`` neither reads nor writes a cache. ``workers`` threads decode
    (default: the number of cores, at most 8).
    """
    root = Path(root)
    files, labels_list, classes = list_image_folder(root)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_path: Path | None = None
    prefix = ""
    if cache:
        root_digest, content_digest = _tree_key(root, files)
        prefix = _cache_prefix(root, root_digest)
        cache_path = folder / f"{prefix}{content_digest}.pt"
        if cache_path.is_file():
            hit = _load_cache(cache_path, len(files))
            if hit is not None and hit[2] == classes:
                log.debug("loaded %d decoded images of %s from %s", len(files), root, cache_path)
                return hit
    log.info("decoding %d images under %s", len(files), root)
    images = _decode_all(files, workers)
    labels = torch.tensor(labels_list, dtype=torch.int64)
    if cache_path is not None:
        entry = {
            "format": _CACHE_FORMAT,
            "root": str(root.resolve()),
            "count": len(files),
            "images": images,
            "labels": labels,
            "classes": classes,
        }
        _save_cache(cache_path, entry)
        if cache_path.is_file():
            _remove_stale(cache_path, prefix)
    return images, labels, classes


def image_folder_parts(root: str | os.PathLike[str]) -> list[Path]:
    """The trees that make up the dataset at ``root``: ``[root]`` for ``root/<class>/<image>``,
    or ``[root/train, root/test]`` when ``root`` holds exactly those two folders (each an
    ImageFolder tree of the same classes; they are pooled, train first, as the named
    datasets are)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    subfolders = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if subfolders == ["test", "train"]:
        return [root / "train", root / "test"]
    return [root]


@dataclass(frozen=True)
class ImageFolderInfo:
    """What a recipe needs to know about an image folder before it is decoded.

    ``input_shape`` is ``(C, H, W)`` of its first image (C = 1 for grey images, else 3),
    ``classes`` the class folder names in label order, ``count`` the number of image
    files, ``parts`` the trees pooled (`image_folder_parts`)."""

    input_shape: tuple[int, int, int]
    classes: tuple[str, ...]
    count: int
    parts: tuple[Path, ...]


_INFO_CACHE: dict[tuple[str, ...], ImageFolderInfo] = {}


def _folder_stamp(parts: list[Path]) -> tuple[str, ...]:
    """Resolved paths and modification times of the trees and their class folders: a new
    or removed class folder or image changes one of them."""
    stamp = []
    for part in parts:
        for folder in (part, *sorted(p for p in part.iterdir() if p.is_dir())):
            stamp.append(f"{folder.resolve()}\0{folder.stat().st_mtime_ns}")
    return tuple(stamp)


def describe_image_folder(root: str | os.PathLike[str]) -> ImageFolderInfo:
    """`ImageFolderInfo` of the dataset at ``root``, decoding one image only (cached while
    the folders are unchanged). Raises :class:`FileNotFoundError` naming the folder when it
    does not exist or has no class folder or no image, and :class:`DatasetFormatError`
    when the first image cannot be decoded or ``train/`` and ``test/`` hold other classes."""
    parts = image_folder_parts(root)
    stamp = _folder_stamp(parts)
    if stamp in _INFO_CACHE:
        return _INFO_CACHE[stamp]
    listed = [list_image_folder(part) for part in parts]
    classes = listed[0][2]
    for part, (_, _, other) in zip(parts[1:], listed[1:]):
        if other != classes:
            raise DatasetFormatError(
                f"the class folders of {parts[0]} ({classes}) and {part} ({other}) "
                "differ; both must hold the same classes"
            )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TV_DEPRECATION, category=DeprecationWarning)
        _, shape = _first_image(listed[0][0])
    c, h, w = shape
    info = ImageFolderInfo((c, h, w), tuple(classes), sum(len(files) for files, _, _ in listed), tuple(parts))
    _INFO_CACHE[stamp] = info
    return info
