"""The spike function and its erfc-derived surrogate gradient (paper eq. 1e, 1f, 5, 6).

Forward: O = U(V - V_th), a Heaviside step with U(0) = 1 (eq. 1f), so a neuron fires at
exactly V = V_th. Backward: dO/dV is replaced by the derivative of the firing probability
P(V) = erfc((V_th - V) / (sqrt(2) sigma)) / 2 of a noisy LIF neuron (eq. 5), which is the
Gaussian density of eq. 6.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ..kernels.denormals import flushed_exp_
from ..kernels.threads import one_thread

#: 1 / sqrt(2 pi): the Gaussian density's factor in eq. 6.
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def heaviside(v: Tensor, v_threshold: float) -> Tensor:
    """Eq. 1e-1f: 1 where v >= v_threshold, else 0, in v's dtype."""
    return (v >= v_threshold).to(v.dtype)


def firing_probability(v: Tensor, v_threshold: float, sigma: float) -> Tensor:
    """Eq. 5: P(v) = erfc((V_th - v) / (sqrt(2) sigma)) / 2, the smooth twin of `heaviside`."""
    return 0.5 * torch.erfc((v_threshold - v) / (math.sqrt(2.0) * sigma))


def surrogate_grad(v: Tensor, v_threshold: float, sigma: float) -> Tensor:
    """Eq. 6: dP/dv = exp(-(V_th - v)^2 / (2 sigma^2)) / (sqrt(2 pi) sigma).

    Values whose exponent is below ``EXP_FLOOR`` are flushed to 0
    (`hnn_bridge.kernels.denormals`: a change below 1.7e-38). Evaluated as
    ``d = v - V_th; exp(d * d * (-1 / (2 sigma^2))) * (1 / (sqrt(2 pi) sigma))``.
    """
    with one_thread(v):
        d = v - v_threshold
        arg = d * d * (-0.5 / (sigma * sigma))
        return flushed_exp_(arg).mul_(INV_SQRT_2PI / sigma)


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


def spike_with(v: Tensor, v_threshold: float, surrogate: Callable[[Tensor], Tensor]) -> Tensor:
    """Spike function with another surrogate gradient in place of eq. 6.

    Forward: exactly `heaviside` (eq. 1f, U(0) = 1), whatever ``surrogate`` returns.
    Backward: the gradient of ``surrogate(v - v_threshold)``, e.g. a SpikingJelly
    surrogate module or an snnTorch ``spike_grad``. Written as ``H + (s - s.detach())``:
    ``s - s`` is exactly 0 for finite ``s``, so the value is H bit for bit and the gradient
    is ds/dv (parameters of the surrogate, if any, get gradients too).
    """
    s = surrogate(v - v_threshold)
    return heaviside(v, v_threshold) + (s - s.detach()).to(v.dtype)
