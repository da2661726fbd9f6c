"""The spike function and its erfc-derived surrogate gradient (paper eq. 1e, 1f, 5, 6).

Forward: O = U(V - V_th), a Heaviside step with U(0) = 1 (eq. 1f), so a neuron fires at
exactly V = V_th. Backward: dO/dV is replaced by the derivative of the firing probability
P(V) = erfc((V_th - V) / (sqrt(2) sigma)) / 2 of a noisy LIF neuron (eq. 5), which is the
Gaussian density of eq. 6.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable

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


# ATen runs an element-wise op on several OpenMP threads from GRAIN elements on, but exp
# (like its other vectorised-math ops) already from 2048 on. On a busy CPU every parallel
# op can wait a scheduler time slice for a thread: on 2 loaded cores one exp over 64 x 500
# values took 7.9 ms on two threads and 0.036 ms on one. So the neuron's small ops run on
# the calling thread only (`one_thread`); the values are the same either way.
GRAIN = 32768


_OPENMP: list[bool] = []


def _openmp() -> bool:
    """ATen runs its intra-op threads on OpenMP (then set_num_threads is per thread and
    cheap; the native and TBB pools warn when it changes after use)."""
    if not _OPENMP:
        _OPENMP.append("parallel backend: OpenMP" in torch.__config__.parallel_info())
    return _OPENMP[0]


@contextmanager
def one_thread(like: Tensor, per_step: int | None = None):
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


_FLOOR_CONSTANTS: dict[tuple[torch.dtype, torch.device], tuple[float, float]] = {}


def _below_floor(like: Tensor) -> tuple[float, float]:
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
        below, exp_below = _below_floor(arg)
        arg.clamp_(min=below).exp_()
        return torch.threshold_(arg, exp_below, 0.0)
    flushed = arg < EXP_FLOOR
    return arg.clamp_(min=EXP_FLOOR).exp_().masked_fill_(flushed, 0.0)


def surrogate_grad(v: Tensor, v_threshold: float, sigma: float) -> Tensor:
    """Eq. 6: dP/dv = exp(-(V_th - v)^2 / (2 sigma^2)) / (sqrt(2 pi) sigma).

    Values whose exponent is below `EXP_FLOOR` are flushed to 0 (see there). Evaluated as
    ``d = v - V_th; exp(d * d * (-1 / (2 sigma^2))) * (1 / (sqrt(2 pi) sigma))``.
    """
    with one_thread(v):
        d = v - v_threshold
        arg = d * d * (-0.5 / (sigma * sigma))
        return flushed_exp_(arg).mul_(_INV_SQRT_2PI / sigma)


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
