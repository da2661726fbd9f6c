"""Running the neuron's many small ops on the calling thread only (values unchanged).

ATen runs an element-wise op on several OpenMP threads from `GRAIN` elements on, but exp
(like its other vectorised-math ops) already from 2048 on. On a busy CPU every parallel
op can wait a scheduler time slice for a thread: on 2 loaded cores one exp over 64 x 500
values took 7.9 ms on two threads and 0.036 ms on one. So the neuron's small ops run on
the calling thread only (`one_thread`); the values are the same either way.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor

__all__ = ["GRAIN", "one_thread", "one_thread_per_step"]

GRAIN = 32768

_OPENMP: list[bool] = []


def _openmp() -> bool:
    """ATen runs its intra-op threads on OpenMP (then set_num_threads is per thread and
    cheap; the native and TBB pools warn when it changes after use)."""
    if not _OPENMP:
        _OPENMP.append("parallel backend: OpenMP" in torch.__config__.parallel_info())
    return _OPENMP[0]


@contextmanager
def one_thread(like: Tensor, per_step: int | None = None) -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(1)`` when ``like`` is on the CPU and one
    step of it (``per_step`` elements, default all of it) is below `GRAIN` and ATen uses
    OpenMP, so that no op inside opens a parallel region; restores the thread count
    after. Elsewhere: no-op.

    ``torch.set_num_threads`` sets the calling thread's OpenMP and MKL thread counts (and
    costs about half a microsecond a pair)."""
    threads = torch.get_num_threads()
    n = like.numel() if per_step is None else per_step
    if like.device.type != "cpu" or threads == 1 or n >= GRAIN or not _openmp():
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def one_thread_per_step(seq: Tensor):
    """`one_thread` judged by one time step of ``seq`` [T, ...]: the recurrences run one
    step per op, so on the CPU below ATen's grain they are single-threaded anyway; this
    keeps the few ops over all steps (and exp, whose grain is smaller) there too."""
    return one_thread(seq, seq[0].numel() if seq.dim() > 0 and seq.shape[0] > 0 else 0)
