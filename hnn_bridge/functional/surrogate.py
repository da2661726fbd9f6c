"""The spike function and its erfc-derived surrogate gradient (paper eq. 1e, 1f, 5, 6).

Forward: O = U(V - V_th), a Heaviside step with U(0) = 1 (eq. 1f), so a neuron fires at
exactly V = V_th. Backward: dO/dV is replaced by the derivative of the firing probability
P(V) = erfc((V_th - V) / (sqrt(2) sigma)) / 2 of a noisy LIF neuron (eq. 5), which is the
Gaussian density of eq. 6.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def heaviside(v: Tensor, v_threshold: float) -> Tensor:
    """Eq. 1e-1f: 1 where v >= v_threshold, else 0, in v's dtype."""
    return (v >= v_threshold).to(v.dtype)


def firing_probability(v: Tensor, v_threshold: float, sigma: float) -> Tensor:
    """Eq. 5: P(v) = erfc((V_th - v) / (sqrt(2) sigma)) / 2, the smooth twin of `heaviside`."""
    return 0.5 * torch.erfc((v_threshold - v) / (math.sqrt(2.0) * sigma))


# e^-87 is about float32's smallest normal number. CPUs compute exp 100x slower when the
# result is denormal, which is common here (a membrane far below threshold after a reset),
# so exponents below the floor give exactly 0: a change below 1.7e-38 in absolute value.
EXP_FLOOR = -87.0


# ATen runs exp (like its other vectorised-math ops) on several OpenMP threads from 2048
# elements on. On a busy CPU each such op can wait a scheduler time slice for a thread:
# on 2 loaded cores one exp over 64 x 500 values took 7.9 ms on two threads and 0.04 ms
# in pieces below that grain. The values are the same either way (element-wise).
EXP_GRAIN = 2048


def exp_(t: Tensor) -> Tensor:
    """``t.exp_()``; on the CPU with several threads, in pieces of fewer than `EXP_GRAIN`
    elements (each on one thread)."""
    if (t.device.type == "cpu" and t.numel() >= EXP_GRAIN and t.is_contiguous() and not t.requires_grad
            and torch.get_num_threads() > 1):
        for piece in t.view(-1).split(EXP_GRAIN - 1):
            piece.exp_()
        return t
    return t.exp_()


def surrogate_grad(v: Tensor, v_threshold: float, sigma: float) -> Tensor:
    """Eq. 6: dP/dv = exp(-(V_th - v)^2 / (2 sigma^2)) / (sqrt(2 pi) sigma).

    Values whose exponent is below `EXP_FLOOR` are flushed to 0 (see there).
    """
    d = v - v_threshold
    arg = d * d * (-0.5 / (sigma * sigma))
    out = exp_(arg.clamp(min=EXP_FLOOR)) * (_INV_SQRT_2PI / sigma)
    return out.masked_fill_(arg < EXP_FLOOR, 0.0)


class ErfcSpike(torch.autograd.Function):
    """Heaviside forward, eq. 6 backward. ``ErfcSpike.apply(v, v_threshold, sigma)``."""

    @staticmethod
    def forward(ctx, v: Tensor, v_threshold: float, sigma: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(v)
        ctx.v_threshold, ctx.sigma = v_threshold, sigma
        return heaviside(v, v_threshold)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (v,) = ctx.saved_tensors
        return grad_out * surrogate_grad(v, ctx.v_threshold, ctx.sigma), None, None


def spike(v: Tensor, v_threshold: float, sigma: float) -> Tensor:
    """Differentiable spike function: Heaviside forward, erfc surrogate backward."""
    return ErfcSpike.apply(v, v_threshold, sigma)
