"""``TensorBatches``: epochs over in-memory uint8 images without per-image Python work."""

from __future__ import annotations

import hashlib
from typing import Iterator

import torch

from .augment import CropRotate

__all__ = ["TensorBatches", "epoch_generator"]


def epoch_generator(seed: int, epoch: int, stream: str = "") -> torch.Generator:
    """A CPU generator seeded from ``(seed, epoch)`` only (hashed, so nearby seeds do not correlate).

    ``stream`` names an independent sequence for the same ``(seed, epoch)`` (the default,
    "", is the epoch's order)."""
    name = f"{stream}:" if stream else ""
    digest = hashlib.sha256(f"hnn-bridge:{name}{int(seed)}:{int(epoch)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


class TensorBatches:
    """Mini-batches ``(x float32 [B, C, H, W] in [0, 1], y int64 [B])`` drawn from uint8 images.

    ``indices`` selects the samples (e.g. ``split.train``; default: all). Each epoch's order
    is ``randperm`` from :func:`epoch_generator` ``(seed, epoch)``, so the order of epoch *k*
    depends only on ``seed`` and *k*: a run resumed with ``set_epoch(k)`` sees exactly the
    batches an uninterrupted run sees. Only the gathered uint8 batch is converted to float
    (``/ 255``) on ``device``. Iterating uses the current epoch and then advances it by one;
    :meth:`epoch_batches` iterates a given epoch without touching the counter.

    Sharding for DDP (``rank``, ``world_size``): every rank draws the same permutation and
    reads it in global batches of ``batch_size * world_size`` rows; rank ``r`` takes rows
    ``r*B .. (r+1)*B`` of each global batch, so the ranks' batches are disjoint and equally
    sized and together form the global batch. A final partial global batch of ``L`` rows
    is split the same way into ``world_size`` contiguous parts of ``L / world_size`` rows;
    with ``drop_last=False`` the permutation is first padded with its own first rows to a
    multiple of ``world_size`` (as ``DistributedSampler`` does, so a few samples may be seen
    twice per epoch); with ``drop_last=True`` only full global batches are produced.

    ``augment`` (training only): each epoch draws its random parameters for every selected
    sample from the ``"augment"`` stream of ``(seed, epoch)``, indexed by the sample, so the
    augmented images do not depend on the rank, the world size or a resume.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor | None = None,
        *,
        batch_size: int = 64,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        device: torch.device | str | None = None,
        rank: int = 0,
        world_size: int = 1,
        preload: bool = False,
        augment: CropRotate | None = None,
    ) -> None:
        """``preload=True`` copies the selected uint8 images to ``device`` once (fastest on a GPU)."""
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape [{images.shape[0]}], got {tuple(labels.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.device = torch.device(device) if device is not None else images.device
        idx = (
            torch.arange(images.shape[0])
            if indices is None
            else torch.as_tensor(indices).reshape(-1).long().cpu()
        )
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= images.shape[0]):
            raise IndexError(f"indices must lie in 0..{images.shape[0] - 1}")
        if preload:
            self.images = images.index_select(0, idx.to(images.device)).to(self.device)
            self.labels = labels.index_select(0, idx.to(labels.device)).to(self.device, torch.int64)
            self.indices = torch.arange(idx.numel())
        else:
            self.images, self.labels, self.indices = images, labels.to(torch.int64), idx
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.augment = augment
        self.epoch = 0

    @property
    def num_samples(self) -> int:
        """Samples selected by ``indices`` (all ranks together)."""
        return int(self.indices.numel())

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration produce epoch ``epoch`` (for resuming)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        n, b, w = self.num_samples, self.batch_size, self.world_size
        if self.drop_last:
            return n // (b * w)
        per_rank = -(-n // w)
        return -(-per_rank // b)

    def _rank_order(self, epoch: int) -> torch.Tensor:
        """Positions into ``indices`` that this rank visits in ``epoch``, in order."""
        n, b, w = self.num_samples, self.batch_size, self.world_size
        order = (
            torch.randperm(n, generator=epoch_generator(self.seed, epoch))
            if self.shuffle
            else torch.arange(n)
        )
        if n == 0:
            return order
        if w == 1:
            return order[: (n // b) * b] if self.drop_last else order
        if self.drop_last:
            full = n // (b * w)
            return order[: full * b * w].view(full, w, b)[:, self.rank].reshape(-1)
        total = -(-n // w) * w
        if total > n:  # pad with the permutation's own first rows
            reps = -(-total // n)
            order = order.repeat(reps)[:total]
        full = total // (b * w)
        head = order[: full * b * w].view(full, w, b)[:, self.rank].reshape(-1)
        tail = order[full * b * w :]
        part = tail.numel() // w
        return torch.cat([head, tail[self.rank * part : (self.rank + 1) * part]])

    def epoch_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch`` (does not change :attr:`epoch`)."""
        positions = self._rank_order(epoch)
        rows = self.indices[positions]
        draws = None
        if self.augment is not None:
            draws = self.augment.draw(self.num_samples, epoch_generator(self.seed, epoch, "augment"))
        for start in range(0, rows.numel(), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            x = self.images.index_select(0, chunk.to(self.images.device))
            y = self.labels.index_select(0, chunk.to(self.labels.device))
            x = x.to(self.device, non_blocking=True).float().div_(255.0)
            if draws is not None:
                x = self.augment.apply(x, draws[positions[start : start + self.batch_size]])
            yield x, y.to(self.device, non_blocking=True)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        return self.epoch_batches(epoch)
