"""Freed tensor memory kept in the process heap, so that the next training step reuses it.

A training step of the CIFAR-10 networks allocates and frees the same large tensors every
step (activations of 10-40 MB: T x batch x channels x 32 x 32 floats). glibc's malloc
serves a request above its mmap threshold (128 kB, raised on its own up to at most 32 MB)
with a fresh ``mmap`` and returns it with ``munmap`` when the tensor is freed, so every
step faults every page of those tensors in again: on a 2-core CPU, a third of a spiking
CNN's training step was the kernel zeroing and mapping pages
(`docs/performance.md`). `reuse_freed_memory` raises the mmap threshold and the trim
threshold to 1 GiB, so that freed blocks stay in the heap and the next step's tensors
reuse them.

Only where the memory comes from changes, never a value: results are the same bits. The
price is that the process keeps its peak heap until it exits (the pages are reused, not
handed back). `hnn-bridge` turns it on for its commands (training, bench) and its worker
processes; ``HNN_BRIDGE_HEAP=0`` leaves glibc's defaults. It does nothing where the C
library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["HEAP_ENV", "KEEP_BYTES", "reuse_freed_memory"]

#: ``HNN_BRIDGE_HEAP=0`` keeps glibc's default mmap and trim thresholds
HEAP_ENV = "HNN_BRIDGE_HEAP"
#: the mmap and trim thresholds set: blocks up to this size come from the heap and stay
KEEP_BYTES = 1 << 30

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_applied: bool | None = None


def reuse_freed_memory() -> bool:
    """Keep freed memory in this process's heap (glibc ``mallopt``); True when set.

    Idempotent; False where ``$HNN_BRIDGE_HEAP`` is ``0``, off Linux, or where the C
    library has no ``mallopt`` (not glibc). Call it once at the start of a process that
    trains; the setting holds for every thread of the process.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(HEAP_ENV, "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # the trim threshold first: setting either fixes both (glibc stops adjusting them)
    _applied = bool(mallopt(_M_TRIM_THRESHOLD, KEEP_BYTES)) and bool(mallopt(_M_MMAP_THRESHOLD, KEEP_BYTES))
    return _applied
