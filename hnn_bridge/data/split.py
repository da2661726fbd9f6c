"""The paper's 6:2:2 split (§4.1): stratified, exact sizes, reproducible from a seed."""

from __future__ import annotations

from collections import deque
from fractions import Fraction
from typing import NamedTuple, Sequence

import numpy as np
import torch

__all__ = ["Split", "split_622", "split_sizes"]


class Split(NamedTuple):
    """Index tensors (int64, sorted ascending, disjoint, together covering ``0..N-1``)."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor


def _fractions(ratios: Sequence[float]) -> list[Fraction]:
    if len(ratios) != 3:
        raise ValueError(f"ratios must be three numbers (train, val, test), got {list(ratios)}")
    parts = [Fraction(r).limit_denominator(10**6) for r in ratios]
    if any(p < 0 for p in parts) or sum(parts) == 0:
        raise ValueError(f"ratios must be non-negative and not all zero, got {list(ratios)}")
    total = sum(parts)
    return [p / total for p in parts]


def _largest_remainder(n: int, shares: Sequence[Fraction]) -> list[int]:
    """Integers summing to ``n``, each ``floor`` or ``ceil`` of ``n * share``.

    The largest remainders round up.
    """
    exact = [n * s for s in shares]
    sizes = [int(e) for e in exact]  # floor: all non-negative
    order = sorted(range(len(shares)), key=lambda k: (-(exact[k] - sizes[k]), k))
    for k in order[: n - sum(sizes)]:
        sizes[k] += 1
    return sizes


def split_sizes(n: int, ratios: Sequence[float] = (0.6, 0.2, 0.2)) -> tuple[int, int, int]:
    """The global train/val/test sizes for ``n`` samples (largest-remainder rounding)."""
    a, b, c = _largest_remainder(n, _fractions(ratios))
    return a, b, c


def _allocate(counts: list[int], shares: list[Fraction], targets: list[int]) -> list[list[int]]:
    """Per-class sizes: each cell floor or ceil of ``count * share``, rows sum to ``counts``,
    columns sum to ``targets`` (a controlled rounding, found by augmenting paths)."""
    exact = [[c * s for s in shares] for c in counts]
    alloc = [[int(e) for e in row] for row in exact]
    row_need = [c - sum(row) for c, row in zip(counts, alloc)]
    col_need = [t - sum(alloc[r][k] for r in range(len(counts))) for k, t in enumerate(targets)]
    bumped = [[False] * len(shares) for _ in counts]
    # greedy: largest fractional parts first
    cells = sorted(
        ((r, k) for r in range(len(counts)) for k in range(len(shares)) if exact[r][k] != alloc[r][k]),
        key=lambda rk: (-(exact[rk[0]][rk[1]] - alloc[rk[0]][rk[1]]), rk),
    )
    for r, k in cells:
        if row_need[r] > 0 and col_need[k] > 0:
            bumped[r][k] = True
            row_need[r] -= 1
            col_need[k] -= 1
    # repair what greedy left: alternating paths row -(bump)-> col -(unbump)-> row ... -> col with need
    fractional = [[exact[r][k] != int(exact[r][k]) for k in range(len(shares))] for r in range(len(counts))]
    anywhere = [[True] * len(shares) for _ in counts]
    for start in range(len(counts)):
        while row_need[start] > 0:
            end, parent = _augmenting_path(start, fractional, bumped, col_need)
            if (
                end is None
            ):  # no path through fractional cells: allow a ceil on an integral cell (still within 1)
                end, parent = _augmenting_path(start, anywhere, bumped, col_need)
            if end is None:
                raise RuntimeError(f"cannot allocate class counts {counts} to split sizes {targets}")
            col_need[end[1]] -= 1
            row_need[start] -= 1
            node: tuple[str, int] = end
            while parent[node] is not None:
                prev = parent[node]
                assert prev is not None
                if node[0] == "c":  # edge row prev -> col node: bump
                    bumped[prev[1]][node[1]] = True
                else:  # edge col prev -> row node: un-bump
                    bumped[node[1]][prev[1]] = False
                node = prev
    return [[alloc[r][k] + int(bumped[r][k]) for k in range(len(shares))] for r in range(len(counts))]


Node = tuple[str, int]


def _augmenting_path(
    start: int, can_bump: list[list[bool]], bumped: list[list[bool]], col_need: list[int]
) -> tuple[Node | None, dict[Node, Node | None]]:
    """Breadth-first search for row ``start`` -> column with need, alternating bump/un-bump edges."""
    rows, cols = len(bumped), len(col_need)
    parent: dict[Node, Node | None] = {("r", start): None}
    queue: deque[Node] = deque([("r", start)])
    while queue:
        kind, i = queue.popleft()
        if kind == "r":
            for k in range(cols):
                if can_bump[i][k] and not bumped[i][k] and ("c", k) not in parent:
                    parent["c", k] = ("r", i)
                    if col_need[k] > 0:
                        return ("c", k), parent
                    queue.append(("c", k))
        else:
            for r in range(rows):
                if bumped[r][i] and ("r", r) not in parent:
                    parent["r", r] = ("c", i)
                    queue.append(("r", r))
    return None, parent


def split_622(
    labels: torch.Tensor | np.ndarray | Sequence[int],
    seed: int = 0,
    ratios: Sequence[float] = (0.6, 0.2, 0.2),
) -> Split:
    """Split sample indices into train/val/test by ``ratios``, stratified by label.

    Sizes are exact: the totals are the largest-remainder rounding of ``N * ratios``
    (70,000 -> 42,000/14,000/14,000; 60,000 -> 36,000/12,000/12,000; 5,000 ->
    3,000/1,000/1,000), and each class's share of each part is the floor or ceiling of
    ``class count * ratio``, the per-class sizes summing exactly to the totals. Within each
    class the samples are permuted with a ``torch.Generator`` seeded by ``seed`` (classes
    in ascending label order), so the same labels and seed give the same split bit for bit.
    """
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    y = y.detach().to("cpu").reshape(-1).to(torch.int64)
    n = int(y.numel())
    shares = _fractions(ratios)
    targets = _largest_remainder(n, shares)
    classes, counts = torch.unique(y, sorted=True, return_counts=True)
    alloc = _allocate([int(c) for c in counts], shares, targets)
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.argsort(y, stable=True)  # indices grouped by class, ascending within a class
    parts: list[list[torch.Tensor]] = [[], [], []]
    offset = 0
    for count, sizes in zip(counts.tolist(), alloc):
        members = order[offset : offset + count]
        offset += count
        shuffled = members[torch.randperm(count, generator=generator)]
        start = 0
        for k, size in enumerate(sizes):
            parts[k].append(shuffled[start : start + size])
            start += size
    empty = torch.empty(0, dtype=torch.int64)
    train, val, test = (torch.sort(torch.cat(p) if p else empty).values for p in parts)
    return Split(train, val, test)
