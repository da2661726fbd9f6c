"""The 6:2:2 split (§4.1) against an independent computation, on class counts where the
greedy rounding leaves a class short and the repair step (augmenting paths that un-bump a
cell) has to run: the global sizes are the largest-remainder rounding of ``N * ratio``,
each class's share of each part is the floor or ceiling of ``count * ratio`` (exact
fractions), and the parts are each class's members permuted by one seeded generator.

`_valid_allocations` enumerates every per-class allocation that meets those rules by brute
force; the split's allocation must be one of them. Where several are valid, the one the
split picks is pinned: every recorded split depends on it."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest
import torch

from hnn_bridge.data.split import split_622, split_sizes

Allocation = list[list[int]]


def _shares(ratios: tuple[str, str, str]) -> list[Fraction]:
    parts = [Fraction(r) for r in ratios]
    return [p / sum(parts) for p in parts]


def _largest_remainder(n: int, shares: list[Fraction]) -> list[int]:
    """Floors of ``n * share``; the parts with the largest fractional parts (then the
    lower index) get the samples left over."""
    exact = [n * s for s in shares]
    sizes = [e.numerator // e.denominator for e in exact]
    left = n - sum(sizes)
    ranked = sorted(range(len(shares)), key=lambda k: (sizes[k] - exact[k], k))
    for k in ranked[:left]:
        sizes[k] += 1
    return sizes


def _valid_allocations(counts: list[int], ratios: tuple[str, str, str]) -> list[Allocation]:
    """Every table with cell (class c, part k) the floor or ceiling of ``counts[c] * share_k``,
    rows summing to the class counts and columns to the largest-remainder sizes."""
    shares = _shares(ratios)
    targets = _largest_remainder(sum(counts), shares)
    rows = []
    for c in counts:
        options = [
            sorted({(c * s).numerator // (c * s).denominator, -(-(c * s).numerator // (c * s).denominator)})
            for s in shares
        ]
        rows.append([list(r) for r in itertools.product(*options) if sum(r) == c])
    return [
        list(table)
        for table in itertools.product(*rows)
        if all(sum(row[k] for row in table) == targets[k] for k in range(3))
    ]


def _labels(counts: list[int], seed: int = 0) -> torch.Tensor:
    y = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]


def _allocation(labels: torch.Tensor, split, classes: int) -> Allocation:
    per_part = [torch.bincount(labels[part], minlength=classes).tolist() for part in split]
    return [[per_part[k][c] for k in range(3)] for c in range(classes)]


SIX_TWO_TWO = ("0.6", "0.2", "0.2")
FIVE_THREE_TWO = ("0.5", "0.3", "0.2")

# (ratios, class counts, the allocation the split picks): in every case the greedy pass
# (largest fractional parts first) leaves a class short and the repair step runs an
# augmenting path through an un-bump; 5:3:2 also has classes with integral cells (counts
# that are multiples of 10 or of 5), which only a fractional cell may round up.
CASES = [
    (SIX_TWO_TWO, [3, 4, 4], [[2, 1, 0], [3, 0, 1], [2, 1, 1]]),
    (SIX_TWO_TWO, [8, 9, 4], [[5, 2, 1], [6, 1, 2], [2, 1, 1]]),
    (SIX_TWO_TWO, [8, 8, 3, 5], [[4, 2, 2], [5, 2, 1], [2, 0, 1], [3, 1, 1]]),
    (SIX_TWO_TWO, [4, 4, 9, 9], [[3, 0, 1], [2, 1, 1], [5, 2, 2], [6, 2, 1]]),
    (FIVE_THREE_TWO, [5, 6, 2], [[2, 2, 1], [3, 1, 2], [1, 1, 0]]),
    (FIVE_THREE_TWO, [9, 10, 8], [[5, 2, 2], [5, 3, 2], [4, 3, 1]]),
    (FIVE_THREE_TWO, [8, 9], [[4, 3, 1], [5, 2, 2]]),
    (FIVE_THREE_TWO, [2, 3, 3], [[1, 1, 0], [2, 0, 1], [1, 1, 1]]),
    (FIVE_THREE_TWO, [3, 12, 13], [[2, 0, 1], [6, 4, 2], [6, 4, 3]]),
    (FIVE_THREE_TWO, [12, 6, 5, 5], [[6, 3, 3], [3, 2, 1], [3, 1, 1], [2, 2, 1]]),
]


@pytest.mark.parametrize(("ratios", "counts", "picked"), CASES, ids=lambda v: str(v))
def test_awkward_class_counts_get_a_valid_allocation_and_the_pinned_one(
    ratios: tuple[str, str, str], counts: list[int], picked: Allocation
) -> None:
    valid = _valid_allocations(counts, ratios)
    assert picked in valid  # the pin itself obeys the rules
    labels = _labels(counts)
    split = split_622(labels, seed=0, ratios=tuple(float(r) for r in ratios))
    assert tuple(len(p) for p in split) == tuple(_largest_remainder(len(labels), _shares(ratios)))
    assert _allocation(labels, split, len(counts)) == picked


@pytest.mark.parametrize(("ratios", "counts", "picked"), CASES[:2] + CASES[4:6], ids=lambda v: str(v))
@pytest.mark.parametrize("seed", [0, 5])
def test_parts_are_each_class_permuted_by_one_seeded_generator(
    ratios: tuple[str, str, str], counts: list[int], picked: Allocation, seed: int
) -> None:
    """The indices themselves: classes in ascending label order, each class's indices
    (ascending) permuted by ``torch.randperm`` of one generator seeded with ``seed``, then
    cut into train, val, test of the allocated sizes."""
    labels = _labels(counts, seed=3)
    generator = torch.Generator().manual_seed(seed)
    parts: list[list[int]] = [[], [], []]
    for c, sizes in enumerate(picked):
        members = torch.nonzero(labels == c).flatten()
        shuffled = members[torch.randperm(len(members), generator=generator)].tolist()
        start = 0
        for k, size in enumerate(sizes):
            parts[k] += shuffled[start : start + size]
            start += size
    split = split_622(labels, seed=seed, ratios=tuple(float(r) for r in ratios))
    for got, want in zip(split, parts):
        assert got.dtype == torch.int64 and got.tolist() == sorted(want)


@pytest.mark.parametrize("ratios", [SIX_TWO_TWO, FIVE_THREE_TWO, ("0.7", "0.2", "0.1"), ("1", "1", "1")])
def test_global_sizes_are_the_largest_remainder_rounding(ratios: tuple[str, str, str]) -> None:
    floats = tuple(float(r) for r in ratios)
    for n in range(0, 61):
        assert list(split_sizes(n, floats)) == _largest_remainder(n, _shares(ratios)), n


def test_ratios_need_not_sum_to_one() -> None:
    """Ratios are normalised: 6:2:2 written as (6, 2, 2) or (3, 1, 1) is the same split."""
    assert split_sizes(10, (3, 1, 1)) == (6, 2, 2) and split_sizes(7, (5, 3, 2)) == split_sizes(
        7, (0.5, 0.3, 0.2)
    )
    labels = _labels([8, 9, 4])
    for scaled, unit in (
        ((6, 2, 2), (0.6, 0.2, 0.2)),
        ((5, 3, 2), (0.5, 0.3, 0.2)),
        ((1, 1, 1), (0.5, 0.5, 0.5)),
    ):
        a, b = split_622(labels, seed=1, ratios=scaled), split_622(labels, seed=1, ratios=unit)
        assert all(torch.equal(x, y) for x, y in zip(a, b)), scaled
