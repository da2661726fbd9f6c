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

A file that cannot be read back (truncated by a full disk, damaged, or not written by
hnn-bridge) raises `CheckpointError`, whose one-line message names the file and says how to
restart the row it belongs to. `ensure_writable` checks the output folder before a run
starts (`OutputNotWritable` names the folder), and `remove_partial_writes` clears the
temporary files that a process killed in the middle of a write leaves behind.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

__all__ = [
    "MIN_FREE_BYTES",
    "STATE_FORMAT",
    "CheckpointError",
    "OutputNotWritable",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "ensure_writable",
    "load_state",
    "load_weights",
    "read_checkpoint_json",
    "read_json",
    "remove_partial_writes",
    "rng_state",
    "save_state",
    "set_rng_state",
    "torch_load",
    "torch_save",
]

STATE_FORMAT = "hnn-bridge-train-state/1"
# the least free space `ensure_writable` accepts in the output folder (checkpoints of the
# quick profiles are a few MB; a full-size CIFAR CNN's training state is about 100 MB)
MIN_FREE_BYTES = 64 * 2**20
_TMP_SUFFIX = ".tmp"


class CheckpointError(RuntimeError):
    """A saved file that cannot be used: unreadable, or from an incompatible run. The
    message is one line that names the file and how to restart its row."""


class OutputNotWritable(RuntimeError):
    """The output folder cannot be created or written, or its disk is (nearly) full."""


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
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


def _unreadable(path: Path, err: BaseException, restart: str) -> CheckpointError:
    reason = " ".join(str(err).split())[:160] or type(err).__name__
    return CheckpointError(
        f"cannot read {path} (truncated or corrupt: {type(err).__name__}: {reason}); {restart}"
    )


RESTART_ROW = (
    "delete that file to restart its row (the other rows are kept), "
    "or run without --resume to restart every row"
)


def load_state(path: str | os.PathLike[str], restart: str = RESTART_ROW) -> dict[str, Any] | None:
    """The training state saved at ``path``, or None when there is none or it is from
    another format version.

    Raises:
        CheckpointError: the file exists but cannot be read (``restart`` ends the message).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch_load(path)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for a bad file
        raise _unreadable(path, err, restart) from err
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        return None
    return state


def load_weights(path: str | os.PathLike[str], restart: str = RESTART_ROW) -> Any:
    """`torch_load` of a weights file; `CheckpointError` when it cannot be read."""
    path = Path(path)
    try:
        return torch_load(path)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise _unreadable(path, err, restart) from err


def read_checkpoint_json(path: str | os.PathLike[str], restart: str = RESTART_ROW) -> Any:
    """`read_json` of a result file; `CheckpointError` when it cannot be parsed."""
    path = Path(path)
    try:
        return read_json(path)
    except (ValueError, UnicodeDecodeError) as err:
        raise _unreadable(path, err, restart) from err


def remove_partial_writes(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files of interrupted atomic writes in ``folder`` (a process
    killed in the middle of a write leaves ``.NAME.<random>.tmp``; the file it was replacing
    is intact). Returns the removed paths."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for tmp in folder.glob(f".*{_TMP_SUFFIX}"):
            try:
                tmp.unlink()
                removed.append(tmp)
            except FileNotFoundError:
                pass
    return removed


def ensure_writable(folder: str | os.PathLike[str], min_free: int = MIN_FREE_BYTES) -> Path:
    """Create ``folder`` (and ``folder/checkpoints``) and check that files can be written
    there and that at least ``min_free`` bytes are free, before any training.

    Raises:
        OutputNotWritable: naming the folder and why (read-only, permission, full disk).
    """
    folder = Path(folder)
    where = folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
        where = folder / "checkpoints"
        where.mkdir(exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=_TMP_SUFFIX, dir=where)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(b"\0" * 4096)
                f.flush()
                os.fsync(f.fileno())
        finally:
            os.unlink(probe)
    except OSError as err:
        why = os.strerror(err.errno) if err.errno else str(err)
        if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            why += " (a read-only or foreign folder)"
        elif err.errno in (errno.ENOSPC, errno.EDQUOT):
            why += " (the disk is full)"
        raise OutputNotWritable(
            f"cannot write to the output folder {where}: {why}; free it or choose another --out"
        ) from None
    free = shutil.disk_usage(folder).free
    if free < min_free:
        raise OutputNotWritable(
            f"the output folder {folder} has only {free / 2**20:.1f} MiB free (at least "
            f"{min_free / 2**20:.0f} MiB needed for checkpoints); free some space or choose "
            "another --out"
        )
    return folder
