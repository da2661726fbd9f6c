"""An independent reference of the IIR LIF neuron, written from the equations only.

Nothing here imports `hnn_bridge`: the coefficients come from the paper's formulas
(design.md, Fang et al. 2020) and the recurrences are the plain equations, one op per
term, evaluated left to right:

    p[t] = a1*p[t-1] + a2*p[t-2] + b*x[t]          synapse filter (eq. 1d generalised)
    R[t] = theta*R[t-1] + O[t-1]                   reset filter (eq. 1c)
    V[t] = lam*V[t-1] + p[t] - V_th*R[t]           membrane (eq. 1a)
    O[t] = 1 if V[t] >= V_th else 0                spike, U(0) = 1 (eq. 1e, 1f)
    dO/dV = exp(-(V - V_th)^2 / (2 sigma^2)) / (sqrt(2 pi) sigma)     surrogate (eq. 6)

In float64 (or float32, with every coefficient rounded to float32 once, as a compiled
float kernel holds it) each product and sum rounds once, so the value of every path of
the library that evaluates the same terms in the same order is equal bit for bit; the
backward is plain autograd through these ops with the surrogate of eq. 6.

`hit_threshold` bends chosen inputs by a few ulps so that the reference membrane lands
*exactly* on V_th there: the one place where ``>=`` and ``>`` differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class Neuron:
    """The constants of one layer (the keyword arguments of ``IIRParams`` by value)."""

    synapse: str = "dual_exp"
    tau_m: float = 4.0
    tau_s: float = 1.0
    lam: Optional[float] = None  # None: e^(-1/tau_m)
    theta: Optional[float] = None  # None: e^(-1/tau_m)
    v_threshold: float = 1.0
    sigma: float = 0.4
    detach_reset: bool = False

    @property
    def kwargs(self) -> dict:
        """Keyword arguments of IIRNeuron / IIRParams / IIRNode / IIRLeaky."""
        return dict(
            synapse=self.synapse,
            tau_m=self.tau_m,
            tau_s=self.tau_s,
            membrane_decay=self.lam,
            reset_decay=self.theta,
            v_threshold=self.v_threshold,
            sigma=self.sigma,
            detach_reset=self.detach_reset,
        )

    @property
    def decays(self) -> tuple[float, float]:
        """(lam, theta) of eq. 1a, 1c."""
        default = math.exp(-1.0 / self.tau_m)
        return (default if self.lam is None else self.lam), (default if self.theta is None else self.theta)

    @property
    def synapse_coefficients(self) -> tuple[float, float, float]:
        """(a1, a2, b) from the synapse's own formulas (design.md)."""
        if self.synapse == "none":
            return 0.0, 0.0, 1.0
        if self.synapse == "first_order":
            return math.exp(-1.0 / self.tau_s), 0.0, 1.0
        em, es = math.exp(-1.0 / self.tau_m), math.exp(-1.0 / self.tau_s)
        return em + es, -math.exp(-(self.tau_m + self.tau_s) / (self.tau_m * self.tau_s)), em - es


class _Spike(torch.autograd.Function):
    """Heaviside with U(0) = 1 forward (eq. 1f), Gaussian density of eq. 6 backward."""

    @staticmethod
    def forward(ctx, v: Tensor, vth: Tensor, sigma: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(v, vth)
        ctx.sigma = sigma
        return (v >= vth).to(v.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        v, vth = ctx.saved_tensors
        s = ctx.sigma
        return (
            grad * torch.exp(-((v - vth) ** 2) / (2.0 * s * s)) / (math.sqrt(2.0 * math.pi) * s),
            None,
            None,
        )


class Constants:
    """The coefficients as 0-dim tensors of one dtype (rounded to it once)."""

    def __init__(self, n: Neuron, dtype: torch.dtype) -> None:
        a1, a2, b = n.synapse_coefficients
        lam, theta = n.decays
        c = lambda value: torch.tensor(value, dtype=dtype)  # noqa: E731
        self.a1, self.a2, self.b, self.lam, self.theta, self.vth = map(
            c, (a1, a2, b, lam, theta, n.v_threshold)
        )
        self.sigma, self.detach_reset = n.sigma, n.detach_reset


def step(x: Tensor, state: Sequence[Tensor], k: Constants) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(p[t], R[t], V[t]) from x[t] and (p[t-1], p[t-2], R[t-1], V[t-1], O[t-1])."""
    p1, p2, r, v, o = state
    if k.detach_reset:
        o = o.detach()
    p = k.a1 * p1 + k.a2 * p2 + k.b * x
    r_new = k.theta * r + o
    v_new = k.lam * v + p - k.vth * r_new
    return p, r_new, v_new


def run(x: Tensor, n: Neuron, state: Optional[Sequence[Tensor]] = None):
    """Spikes [T, ...], V [T, ...] and the final state (p1, p2, r, v, o) for x [T, ...]
    (its dtype; autograd through eq. 6 where x or the state needs gradients)."""
    k = Constants(n, x.dtype)
    if state is None:
        zero = torch.zeros_like(x[0])
        state = (zero,) * 5
    spikes, volts = [], []
    for x_t in x:
        p, r, v = step(x_t, state, k)
        o = _Spike.apply(v, k.vth, k.sigma)
        state = (p, state[0], r, v, o)
        spikes.append(o)
        volts.append(v)
    return torch.stack(spikes), torch.stack(volts), state


def hit_threshold(
    x: Tensor, n: Neuron, where: Tensor, *, state: Optional[Sequence[Tensor]] = None, max_ulps: int = 400
) -> Tensor:
    """A copy of x [T, ...] in which x[t] is moved, where ``where`` [T, ...] is True, to the
    float (of x's dtype) nearest its start value for which the reference V[t] == V_th
    exactly. Returns the new x; where no float hits exactly (V jumps over V_th between two
    neighbouring inputs) the closest one below is kept. See `exact_hits`."""
    x = x.detach().clone()
    k = Constants(n, x.dtype)
    with torch.no_grad():
        if state is None:
            zero = torch.zeros_like(x[0])
            state = (zero,) * 5
        up = torch.full_like(x[0], math.inf)
        down = torch.full_like(x[0], -math.inf)
        for t in range(x.shape[0]):
            mask = where[t]
            if bool(mask.any()):
                # solve V = V_th for x (b > 0), then walk by ulps; V is monotone in x
                p_part = k.a1 * state[0] + k.a2 * state[1]
                r_new = k.theta * state[2] + state[4]
                guess = (k.vth - k.lam * state[3] + k.vth * r_new - p_part) / k.b
                xt = torch.where(mask, guess, x[t])
                for _ in range(max_ulps):
                    v = step(xt, state, k)[2]
                    low, high = mask & (v < k.vth), mask & (v > k.vth)
                    if not bool((low | high).any()):
                        break
                    xt = torch.where(
                        low, torch.nextafter(xt, up), torch.where(high, torch.nextafter(xt, down), xt)
                    )
                v = step(xt, state, k)[2]
                # where V overshoots, keep the last input below the threshold
                xt = torch.where(mask & (v > k.vth), torch.nextafter(xt, down), xt)
                x[t] = xt
            p, r, v = step(x[t], state, k)
            state = (p, state[0], r, v, (v >= k.vth).to(x.dtype))
    return x


def exact_hits(x: Tensor, n: Neuron) -> Tensor:
    """Where the reference membrane of x equals V_th exactly (a bool tensor like x)."""
    with torch.no_grad():
        volts = run(x, n)[1]
    return volts == Constants(n, x.dtype).vth


def random_hits(shape: Iterable[int], fraction: float, gen: torch.Generator) -> Tensor:
    """A random bool mask [T, ...] with about ``fraction`` of it True."""
    return torch.rand(tuple(shape), generator=gen) < fraction
