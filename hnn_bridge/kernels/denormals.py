"""``exp`` without subnormal results, for the surrogate of eq. 6 (`surrogate_grad`).

e^-87 is about float32's smallest normal number. CPUs compute exp 100x slower when the
result is denormal, which is common here (a membrane far below threshold after a reset),
so exponents below the floor give exactly 0: a change below 1.7e-38 in absolute value.
Every executor of eq. 6 (ATen, the C loop, the CUDA kernel) flushes at `EXP_FLOOR`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["EXP_FLOOR", "below_floor", "flushed_exp_"]

EXP_FLOOR = -87.0

_FLOOR_CONSTANTS: dict[tuple[torch.dtype, torch.device], tuple[float, float]] = {}


def below_floor(like: Tensor) -> tuple[float, float]:
    """(L, exp(L)) for L the value just below `EXP_FLOOR` in like's dtype, exp as torch
    computes it on like's device (cached)."""
    key = (like.dtype, like.device)
    if key not in _FLOOR_CONSTANTS:
        floor = torch.tensor(EXP_FLOOR, dtype=like.dtype, device=like.device)
        below = torch.nextafter(floor, torch.tensor(-math.inf, dtype=like.dtype, device=like.device))
        _FLOOR_CONSTANTS[key] = (float(below), float(torch.exp(below)))
    return _FLOOR_CONSTANTS[key]


def flushed_exp_(arg: Tensor) -> Tensor:
    """In place: ``exp(max(arg, EXP_FLOOR))``, then exactly 0 where ``arg < EXP_FLOOR``.

    For float32/float64 without a mask: arguments below the floor are clamped to L, the
    value just below it, instead, so that afterwards exactly they hold exp(L) (a normal
    number, some ulps below exp(EXP_FLOOR)) and one ``threshold_`` zeroes them. (Clamping
    to -inf or below about -104 would also give 0, but exp is 4x to 15x slower there.)
    Other dtypes: ``arg < EXP_FLOOR`` mask, clamp, exp, ``masked_fill_``.
    """
    if arg.dtype in (torch.float32, torch.float64):
        below, exp_below = below_floor(arg)
        arg.clamp_(min=below).exp_()
        return torch.threshold_(arg, exp_below, 0.0)
    flushed = arg < EXP_FLOOR
    return arg.clamp_(min=EXP_FLOOR).exp_().masked_fill_(flushed, 0.0)
