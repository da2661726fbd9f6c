"""Data-parallel training across processes (PyTorch DDP), launched by ``torchrun``.

Launch (one machine, N processes; ``--nnodes``/``--rdzv-endpoint`` for several)::

    torchrun --nproc_per_node N -m hnn_bridge recipe table1a --out runs/t1a
    torchrun --nproc_per_node N -m hnn_bridge train A784-A500-S10 --quick

``torchrun`` sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` for every process; `from_env` reads them and joins the process group
(``nccl`` when training on CUDA, each process on ``cuda:LOCAL_RANK``; ``gloo`` on the CPU).
Without them (or with ``WORLD_SIZE=1``) it returns the single-process context and makes no
``torch.distributed`` call at all.

What is split: every global training batch of B rows is cut into ``WORLD_SIZE`` parts of
B / WORLD_SIZE rows (`TensorBatches` with ``rank``/``world_size``); DDP averages the
gradients, so the update equals one process's update on the whole global batch up to
floating-point reduction order. Validation and test sets are split across the processes
too and their counts summed (`all_reduce_sum`). Rank 0 alone writes files and prints.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch

__all__ = [
    "DistContext",
    "SINGLE",
    "all_gather_objects",
    "all_reduce_sum",
    "barrier",
    "env_world_size",
    "from_env",
    "rank_seed",
    "teardown",
]

_ENV = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a data-parallel run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = DistContext()


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when absent or not a number)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def env_rank() -> int:
    """``RANK`` as torchrun sets it (0 when absent)."""
    try:
        return int(os.environ.get("RANK", "0")) if env_world_size() > 1 else 0
    except ValueError:
        return 0


def from_env(device: str | torch.device = "cpu") -> DistContext:
    """The context of this process; joins the process group when launched by torchrun.

    ``device`` is where training runs: ``cuda`` uses ``nccl`` and binds this process to
    ``cuda:LOCAL_RANK``; the CPU uses ``gloo``. Calling it again in a process that has
    already joined returns the same context.

    Raises:
        RuntimeError: ``WORLD_SIZE`` > 1 but torchrun's other variables are missing.
    """
    world = env_world_size()
    if world == 1:
        return SINGLE
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set; launch with "
            "`torchrun --nproc_per_node N -m hnn_bridge ...`"
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    import torch.distributed as dist

    if not dist.is_available():  # pragma: no cover - torch built without distributed
        raise RuntimeError("this PyTorch build has no torch.distributed")
    if not dist.is_initialized():
        if torch.device(device).type == "cuda":
            torch.cuda.set_device(local_rank)
            dist.init_process_group("nccl", rank=rank, world_size=world)
        else:
            dist.init_process_group("gloo", rank=rank, world_size=world)
    return DistContext(rank, world, local_rank)


def _reduce_device() -> torch.device:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: Sequence[float], ctx: DistContext) -> list[float]:
    """Element-wise sums of ``values`` over all processes (float64; no-op for one process)."""
    if not ctx.distributed:
        return [float(v) for v in values]
    import torch.distributed as dist

    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(t)
    return t.tolist()


def all_gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """``obj`` of every process, in rank order (``[obj]`` for one process)."""
    if not ctx.distributed:
        return [obj]
    import torch.distributed as dist

    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(ctx: DistContext) -> None:
    """Wait for every process (no-op for one process)."""
    if ctx.distributed:
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def teardown(ctx: DistContext, *, wait: bool = False) -> None:
    """Leave the process group (no-op for one process or when never joined).

    ``wait``: first wait until every process is here (a run that ended normally), so that
    no process destroys its group while another still writes its results or runs a
    collective; not after an error, where the others may never arrive."""
    if ctx.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            if wait:
                barrier(ctx)
            dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """The 63-bit seed of ``rank``'s random stream (dropout, coder noise) after the
    weights, built from ``seed`` on every rank, are in place."""
    text = f"hnn-bridge-rank:{int(seed)}:{int(rank)}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)
