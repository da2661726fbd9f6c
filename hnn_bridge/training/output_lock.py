"""One run at a time per output folder: ``OUT/.lock``, held for the whole run."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["OutputBusy", "exclusive"]


class OutputBusy(RuntimeError):
    """Another process is running into the same output folder."""


@contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """Hold ``OUT/.lock`` for the run: two runs writing the same checkpoints would corrupt
    each other's results (POSIX only; elsewhere no lock is taken).

    Raises:
        OutputBusy: another process holds the lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(out / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise OutputBusy(
                f"another hnn-bridge run is writing to {out}; wait for it or choose another --out"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
