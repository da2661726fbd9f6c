"""Atomic files and per-epoch training state, so that an interrupted run resumes exactly.

Every file is written to a temporary name in the same folder, flushed to disk and then
renamed over the target (``os.replace`` is atomic on POSIX and Windows): a run killed at
any moment leaves either the old file or the new one, never a torn one.

A training state (`save_state` / `load_state`) holds everything the next epoch depends
on: the model and optimizer (and LR scheduler) state, the RNG states of torch's CPU
generator and of every CUDA device in use (the Gaussian and Poisson coders and dropout
draw from them), the best-validation weights and metrics so far, the per-epoch log and
the wall time spent. Data order needs no state: `TensorBatches` derives it from
(seed, epoch).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

__all__ = [
    "STATE_FORMAT",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "load_state",
    "read_json",
    "rng_state",
    "save_state",
    "set_rng_state",
    "torch_load",
    "torch_save",
]

STATE_FORMAT = "hnn-bridge-train-state/1"


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """`torch.save` made atomic."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def torch_load(path: str | os.PathLike[str]) -> Any:
    """Load a file written by `torch_save` (tensors, dicts, lists and numbers only)."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def rng_state(device: torch.device | str | None = None) -> dict[str, Any]:
    """The RNG states a training epoch consumes: torch's CPU generator and, when
    ``device`` is a CUDA device, every CUDA generator."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """Atomically save a training state (see `hnn_bridge.training.loop.TrainState`)."""
    return torch_save({"format": STATE_FORMAT, **state}, path)


def load_state(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The training state saved at ``path``, or None when there is none or it is from
    another format version."""
    path = Path(path)
    if not path.is_file():
        return None
    state = torch_load(path)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        return None
    return state
