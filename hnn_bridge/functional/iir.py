"""The IIR LIF neuron as pure functions over tensors (paper eq. 1a-1f, 5, 6).

Per element and time step t, with x[t] the weighted input of eq. 1b:

    p[t] = a1*p[t-1] + a2*p[t-2] + b*x[t]     synapse filter (eq. 1d generalised)
    R[t] = theta*R[t-1] + O[t-1]              reset filter (eq. 1c)
    V[t] = lam*V[t-1] + p[t] - V_th*R[t]      membrane (eq. 1a)
    O[t] = U(V[t] - V_th)                     spike (eq. 1e, 1f); surrogate eq. 6

Three entry points share one arithmetic (`charge`), so they agree bit for bit:

- `iir_step`: one differentiable time step (autograd through `ErfcSpike`); used by the
  single-step adapters and by `iir_multistep_reference`, the per-step autograd loop;
- `iir_multistep`: the whole sequence as one `torch.autograd.Function` whose backward
  is hand-written BPTT (no autograd graph per step; it saves only V[t]).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from ..params import IIRParams
from .surrogate import firing_probability, heaviside, spike, surrogate_grad


class IIRState(NamedTuple):
    """State after step t-1: p[t-1], p[t-2], R[t-1], V[t-1], O[t-1]."""

    p1: Tensor
    p2: Tensor
    r: Tensor
    v: Tensor
    o: Tensor

    @classmethod
    def zeros_like(cls, x: Tensor) -> "IIRState":
        z = torch.zeros_like(x)
        return cls(z, z, z, z, z)


class Coefficients(NamedTuple):
    a1: float
    a2: float
    b: float
    theta: float
    lam: float
    v_threshold: float
    sigma: float

    @classmethod
    def of(cls, params: IIRParams) -> "Coefficients":
        a1, a2, b = params.synapse_coefficients
        return cls(a1, a2, b, params.theta, params.lam, params.v_threshold, params.sigma)


def _scaled(c: float, t: Tensor) -> Optional[Tensor]:
    """c*t, skipping the multiply for c == 1 and the term for c == 0 (exact either way)."""
    if c == 0.0:
        return None
    return t if c == 1.0 else c * t


def _sum(*terms: Optional[Tensor]) -> Tensor:
    """Left-to-right sum of the terms that are not None (the fixed order keeps paths bit-equal)."""
    present = [t for t in terms if t is not None]
    out = present[0]
    for t in present[1:]:
        out = out + t
    return out


def charge(x: Tensor, p1: Tensor, p2: Tensor, r: Tensor, v: Tensor, o: Tensor, k: Coefficients):
    """One step of eq. 1d, 1c, 1a: returns (p[t], R[t], V[t]) before firing.

    The single arithmetic of the neuron: every path (autograd step, fused Function, and,
    mirrored operation by operation, the CuPy kernel) evaluates exactly these products
    and sums in this order.
    """
    p = _sum(_scaled(k.a1, p1), _scaled(k.a2, p2), _scaled(k.b, x))
    r_new = _sum(_scaled(k.theta, r), o)
    v_new = _sum(_scaled(k.lam, v), p, _scaled(-k.v_threshold, r_new))
    return p, r_new, v_new


def iir_step(x: Tensor, state: IIRState, params: IIRParams) -> tuple[Tensor, IIRState]:
    """One differentiable time step; returns (O[t], state after t)."""
    k = Coefficients.of(params)
    o_prev = state.o.detach() if params.detach_reset else state.o
    p, r, v = charge(x, state.p1, state.p2, state.r, state.v, o_prev, k)
    o = spike(v, k.v_threshold, k.sigma)
    return o, IIRState(p, state.p1, r, v, o)


def iir_multistep_reference(
    x_seq: Tensor, params: IIRParams, state: Optional[IIRState] = None
) -> tuple[Tensor, Tensor, IIRState]:
    """The straightforward per-step autograd loop over x_seq [T, ...].

    Returns (spikes [T, ...], membrane V [T, ...], final state). Kept as the reference
    the fused `iir_multistep` is tested against.
    """
    state = IIRState.zeros_like(x_seq[0]) if state is None else state
    spikes, volts = [], []
    for x in x_seq:
        o, state = iir_step(x, state, params)
        spikes.append(o)
        volts.append(state.v)
    return torch.stack(spikes), torch.stack(volts), state


def _owned(t: Tensor, inputs: tuple[Tensor, ...]) -> Tensor:
    return t.clone() if t._base is not None or any(t is i for i in inputs) else t


class IIRMultiStep(torch.autograd.Function):
    """Fused multistep forward and hand-written BPTT backward.

    Inputs: x_seq [T, ...], the initial state (p1, p2, r, v, o; each a tensor or None
    for zeros), the `Coefficients`, detach_reset, and smooth (fire with P(V) of eq. 5
    instead of U, making the forward differentiable so that gradcheck can verify this
    backward exactly). Outputs: spikes [T, ...], V [T, ...], p[T-1], p[T-2], R[T-1].
    Only V is saved; the surrogate of eq. 6 is recomputed from it in backward.
    """

    @staticmethod
    def forward(ctx, x_seq, p1, p2, r, v, o, k: Coefficients, detach_reset: bool, smooth: bool):  # type: ignore[override]
        zero = x_seq.new_zeros(x_seq.shape[1:])
        p1, p2, r, v, o = (zero if s is None else s for s in (p1, p2, r, v, o))
        given = (p1, p2, r, v, o)
        spikes = torch.empty_like(x_seq)
        volts = torch.empty_like(x_seq)
        for t in range(x_seq.shape[0]):
            p_new, r, v = charge(x_seq[t], p1, p2, r, v, o, k)
            p1, p2 = p_new, p1
            o = firing_probability(v, k.v_threshold, k.sigma) if smooth else heaviside(v, k.v_threshold)
            spikes[t] = o
            volts[t] = v
        ctx.save_for_backward(volts)
        ctx.k, ctx.detach_reset = k, detach_reset
        ctx.set_materialize_grads(False)
        # p[T-1], p[T-2] and R[T-1] can be an input or a slice of x_seq (T = 1, synapse
        # "none", theta = 0); an output of a Function must own its memory.
        p_last, p_prev, r = (_owned(t, given) for t in (p1, p2, r))
        return spikes, volts, p_last, p_prev, r

    @staticmethod
    def backward(ctx, g_spikes, g_volts, g_p1, g_p2, g_r):  # type: ignore[override]
        (volts,) = ctx.saved_tensors
        k: Coefficients = ctx.k
        steps = volts.shape[0]
        zero = volts.new_zeros(volts.shape[1:])
        c_v = c_r = c_o = zero
        cp0 = zero if g_p1 is None else g_p1  # adjoint of p[t]
        cp1 = zero if g_p2 is None else g_p2  # adjoint of p[t-1]
        if g_r is not None:
            c_r = g_r
        grad_x = torch.empty_like(volts)
        for t in range(steps - 1, -1, -1):
            g_o = c_o if g_spikes is None else g_spikes[t] + c_o
            g_v = g_o * surrogate_grad(volts[t], k.v_threshold, k.sigma) + c_v
            if g_volts is not None:
                g_v = g_v + g_volts[t]
            g_r_t = c_r - k.v_threshold * g_v
            g_p = cp0 + g_v
            grad_x[t] = g_p if k.b == 1.0 else k.b * g_p
            c_v = k.lam * g_v
            c_r = k.theta * g_r_t
            c_o = zero if ctx.detach_reset else g_r_t
            cp0 = _sum(cp1, _scaled(k.a1, g_p)) if k.a1 != 0.0 else cp1
            cp1 = k.a2 * g_p if k.a2 != 0.0 else zero
        needs = ctx.needs_input_grad
        return (
            grad_x,
            cp0 if needs[1] else None,
            cp1 if needs[2] else None,
            c_r if needs[3] else None,
            c_v if needs[4] else None,
            c_o if needs[5] else None,
            None,
            None,
            None,
        )


def iir_multistep(
    x_seq: Tensor, params: IIRParams, state: Optional[IIRState] = None, *, smooth: bool = False
) -> tuple[Tensor, Tensor, IIRState]:
    """The fused multistep neuron over x_seq [T, ...].

    Returns (spikes [T, ...], membrane V [T, ...], final state); `state=None` starts from
    zeros. Same values as `iir_multistep_reference`, gradients equal to float rounding.
    """
    if x_seq.dim() < 1 or x_seq.shape[0] < 1:
        raise ValueError(f"IIR neuron: expected a time-first tensor [T, ...] with T >= 1, got shape {tuple(x_seq.shape)}")
    given = (None,) * 5 if state is None else tuple(state)
    spikes, volts, p1, p2, r = IIRMultiStep.apply(
        x_seq, *given, Coefficients.of(params), params.detach_reset, smooth
    )
    return spikes, volts, IIRState(p1, p2, r, volts[-1], spikes[-1])
