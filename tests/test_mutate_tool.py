"""`tools/mutate.py`, the repeatable mutation run (docs/notes/2026-12-06-mutation-testing.md):
what it selects without running a test. The runs themselves take tens of minutes and are
not part of the suite."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGETS = (
    "coders",
    "core",
    "native",
    "kernels",
    "snntorch",
    "spikingjelly",
    "ops",
    "split",
    "tie-rule",
    "resume",
)


def listing(*args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "mutate.py"), "--list", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.splitlines()


def test_the_default_run_is_a_dated_sample_of_25_mutants_per_target() -> None:
    lines = listing("--seed", "7")
    assert lines[0] == "sample: 25 mutants per target, seed 7 (the same draw: --seed 7)"
    assert lines[-1] == "250 mutants"
    assert Counter(line.split()[0] for line in lines[1:-1]) == {t: 25 for t in TARGETS}
    assert listing("--seed", "7") == lines  # the seed names the draw
    assert listing("--seed", "8")[1:-1] != lines[1:-1]
    day = time.strftime("%Y%m%d")  # without --seed, the date: a fresh draw every day
    assert listing()[0] == f"sample: 25 mutants per target, seed {day} (the same draw: --seed {day})"


def test_all_planted_and_only_take_every_mutant_they_name() -> None:
    every = listing("--all")
    assert not every[0].startswith("sample") and int(every[-1].split()[0]) > 1000
    assert listing("--planted")[-1] == "16 mutants"
    place = every[0].split()[1]  # FILE:LINE:COL of the first mutant
    only = listing("--only", place)
    assert only[-1] == "1 mutants" and only[0] == every[0]


@pytest.mark.parametrize("killed, n", [(221, 250), (0, 10), (10, 10), (45, 50)])
def test_wilson_interval_of_a_sampled_score(killed: int, n: int) -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from mutate import wilson_interval
    finally:
        sys.path.pop(0)
    lo, hi = wilson_interval(killed, n)
    # the interval's ends are the roots in p of (k/n - p)^2 = z^2 p (1 - p) / n, z = 1.96
    z, p_hat = 1.96, killed / n
    a, b, c = 1 + z * z / n, -(2 * p_hat + z * z / n), p_hat * p_hat
    disc = math.sqrt(b * b - 4 * a * c)
    assert lo == pytest.approx(max(0.0, (-b - disc) / (2 * a)), abs=1e-12)
    assert hi == pytest.approx(min(1.0, (-b + disc) / (2 * a)), abs=1e-12)
    assert lo <= p_hat <= hi
