"""The IIR LIF neuron as pure functions over tensors (paper eq. 1a-1f, 5, 6).

Per element and time step t, with x[t] the weighted input of eq. 1b:

    p[t] = a1*p[t-1] + a2*p[t-2] + b*x[t]     synapse filter (eq. 1d generalised)
    R[t] = theta*R[t-1] + O[t-1]              reset filter (eq. 1c)
    V[t] = lam*V[t-1] + (p[t] + c) - V_th*R[t]   membrane (eq. 1a); c: optional bias
    O[t] = U(V[t] - V_th)                     spike (eq. 1e, 1f); surrogate eq. 6

The bias c, when given (``bias=``), is added after the synapse filter, where Fang et
al.'s layers add it (their I = W F + b: the weights and the bias act on the filtered
presynaptic signal). A bias inside x instead passes through the filter with x.

Three entry points share one arithmetic (`charge`), so they agree bit for bit:

- `iir_step`: one differentiable time step (autograd through `ErfcSpike`); used by the
  single-step adapters and by `iir_multistep_reference`, the per-step autograd loop;
- `iir_multistep`: the whole sequence through the fused executor
  (`hnn_bridge.kernels.fused`: one `torch.autograd.Function` whose backward is
  hand-written BPTT; no autograd graph per step; it saves only V[t], or nothing but the
  input for an input constant over time); `iir_spikes` is its spikes-only form
  (`IIRNeuron`), which without a graph to record keeps no membrane sequence at all.

Half precision (``torch.autocast`` with bfloat16 or float16): every entry point widens a
float16/bfloat16 input to float32 and keeps the state (p, R, V) and the surrogate in
float32; the spikes, exactly 0 or 1, come back in the input's dtype. So the neuron of a
bf16 network is bit for bit the float32 neuron on the upcast currents
(`tests/test_precision.py`); only the weight ops run in the low precision.

How the fused path executes the same arithmetic (preallocated ATen ops, or on the CPU in
float32 one compiled C loop nest): `hnn_bridge.kernels`, and
docs/notes/performance-notebook.md.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from ..kernels.fused import constant_over_time, run_multistep, run_spikes
from ..kernels.synapse_filter import native_filter, native_filter_applies
from ..params import IIRParams
from .surrogate import INV_SQRT_2PI, firing_probability, spike, spike_with


class IIRState(NamedTuple):
    """State after step t-1: p[t-1], p[t-2], R[t-1], V[t-1], O[t-1]."""

    p1: Tensor
    p2: Tensor
    r: Tensor
    v: Tensor
    o: Tensor

    @classmethod
    def zeros_like(cls, x: Tensor) -> "IIRState":
        """Zero state for an input like ``x``, in `state_dtype` of its dtype."""
        z = torch.zeros_like(x, dtype=state_dtype(x.dtype))
        return cls(z, z, z, z, z)


_HALF = (torch.float16, torch.bfloat16)


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the neuron computes and keeps its state in for an input of ``dtype``:
    float32 for float16/bfloat16 (autocast currents), else ``dtype`` itself."""
    return torch.float32 if dtype in _HALF else dtype


def widened(x: Tensor) -> Tensor:
    """``x`` in `state_dtype`; a sequence constant over time stays a stride-0 view (the
    duplicate-coded fast path of the fused executor keeps working)."""
    if x.dtype not in _HALF:
        return x
    if x.dim() > 0 and constant_over_time(x):
        return x[0].float().unsqueeze(0).expand(x.shape)
    return x.float()


def widened_state(state: Optional["IIRState"]) -> Optional["IIRState"]:
    """``state`` with half-precision entries widened (itself when it has none)."""
    if state is None or all(s is None or s.dtype not in _HALF for s in state):
        return state
    return IIRState(*(s if s is None else widened(s) for s in state))


class Coefficients(NamedTuple):
    """The neuron's constants as the executors use them: the synapse filter's a1, a2, b
    (eq. 1d generalised), theta (eq. 1c), lam (eq. 1a), V_th and sigma (eq. 5, 6)."""

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

    @property
    def surrogate_gain(self) -> float:
        """1 / (sqrt(2 pi) sigma), the last factor of eq. 6 (its value at V = V_th)."""
        return INV_SQRT_2PI / self.sigma

    def firing_probability(self, v: Tensor) -> Tensor:
        """Eq. 5 at these coefficients: P(v), the smooth firing of the gradcheck variant."""
        return firing_probability(v, self.v_threshold, self.sigma)


_CONSTANTS: dict[tuple[float, torch.dtype], Tensor] = {}


def _scaled(c: float, t: Tensor) -> Optional[Tensor]:
    """c*t, skipping the multiply for c == 1 and the term for c == 0 (exact either way).

    For float32/float64 the multiply takes c as a cached 0-dim CPU tensor of t's dtype:
    the same product as with the Python float (which is rounded to t's dtype too), without
    a wrapped-number conversion per op."""
    if c == 0.0:
        return None
    if c == 1.0:
        return t
    if t.dtype in (torch.float32, torch.float64):
        key = (c, t.dtype)
        const = _CONSTANTS.get(key)
        if const is None:
            const = _CONSTANTS[key] = torch.tensor(c, dtype=t.dtype)
        return t * const
    return c * t


def _sum(*terms: Optional[Tensor]) -> Tensor:
    """Left-to-right sum of the terms that are not None (the fixed order keeps paths bit-equal)."""
    present = [t for t in terms if t is not None]
    out = present[0]
    for t in present[1:]:
        out = out + t
    return out


def _python_scaled(c: float, t: Tensor) -> Optional[Tensor]:
    """`_scaled` with c as a Python float (the same product: c is rounded to t's dtype
    either way), for tracers that reject real tensors among fake ones."""
    if c == 0.0:
        return None
    return t if c == 1.0 else t * c


def _charge(x, p1, p2, r, v, o, k: Coefficients, bias: Optional[Tensor], scaled):
    p = _sum(scaled(k.a1, p1), scaled(k.a2, p2), scaled(k.b, x))
    r_new = _sum(scaled(k.theta, r), o)
    current = p if bias is None else p + bias
    v_new = _sum(scaled(k.lam, v), current, scaled(-k.v_threshold, r_new))
    return p, r_new, v_new


def charge(
    x: Tensor,
    p1: Tensor,
    p2: Tensor,
    r: Tensor,
    v: Tensor,
    o: Tensor,
    k: Coefficients,
    bias: Optional[Tensor] = None,
):
    """One step of eq. 1d, 1c, 1a: returns (p[t], R[t], V[t]) before firing.

    The single arithmetic of the neuron: every path (autograd step, fused Function, and,
    mirrored operation by operation, the CuPy kernel) evaluates exactly these products
    and sums in this order. ``bias`` (broadcast to one step) enters the membrane as
    p[t] + bias, after the synapse filter; p[t] itself, the filter's state, excludes it.
    """
    return _charge(x, p1, p2, r, v, o, k, bias, _scaled)


def traceable_charge(
    x: Tensor,
    p1: Tensor,
    p2: Tensor,
    r: Tensor,
    v: Tensor,
    o: Tensor,
    k: Coefficients,
    bias: Optional[Tensor] = None,
):
    """`charge`, bit for bit, with the coefficients as Python floats instead of cached
    0-dim tensors: for tracers that run on fake tensors (SpikingJelly's FlexSN)."""
    return _charge(x, p1, p2, r, v, o, k, bias, _python_scaled)


def synapse_filter(
    x_seq: Tensor, params: IIRParams, p1: Optional[Tensor] = None, p2: Optional[Tensor] = None
) -> Tensor:
    """The synapse filter alone over x_seq [T, ...] (eq. 1d generalised): p [T, ...].

    p[t] = a1*p[t-1] + a2*p[t-2] + b*x[t] from p[-1] = ``p1`` and p[-2] = ``p2`` (None:
    zero), with `charge`'s products and sums in `charge`'s order, so p equals the
    neuron's own p[t] bit for bit (up to the sign of a zero). Differentiable by autograd.
    Fang et al.'s axon layer (``dual_exp_iir_layer``) filters presynaptic spikes this way
    before their weights; by linearity, filtering the weighted sum instead is the same.
    For ``synapse="none"`` it returns ``x_seq`` itself.

    From zero state in float32 on the CPU it runs as one compiled pass with a hand-written
    backward (`hnn_bridge.kernels.synapse_filter`), with the same values and the same
    gradients as autograd through this loop, bit for bit; ``HNN_BRIDGE_NATIVE_FILTER=0``
    (or ``HNN_BRIDGE_NATIVE=0``) keeps the loop.
    """
    _check_seq(x_seq)
    k = Coefficients.of(params)
    x_seq = widened(x_seq)
    if k.a1 == 0.0 and k.a2 == 0.0 and k.b == 1.0:
        return x_seq
    if p1 is None and p2 is None and native_filter_applies(x_seq, k):
        return native_filter(x_seq, k)
    out = []
    for x in x_seq:
        # a zero initial state (None) contributes no term: a*0 + y == y
        p = _sum(
            None if p1 is None else _scaled(k.a1, p1),
            None if p2 is None else _scaled(k.a2, p2),
            _scaled(k.b, x),
        )
        out.append(p)
        p1, p2 = p, p1
    return torch.stack(out)


def iir_step(
    x: Tensor,
    state: IIRState,
    params: IIRParams,
    *,
    surrogate: Optional[Callable[[Tensor], Tensor]] = None,
    bias: Optional[Tensor] = None,
) -> tuple[Tensor, IIRState]:
    """One differentiable time step; returns (O[t], state after t).

    ``surrogate``: a function of V - V_th whose gradient replaces eq. 6 (`spike_with`;
    the spikes stay the same); None means eq. 6 with ``params.sigma``. ``bias``: added
    after the synapse filter (see `charge`); None: none.
    """
    k = Coefficients.of(params)
    out_dtype, x, state = x.dtype, widened(x), widened_state(state)
    o_prev = state.o.detach() if params.detach_reset else state.o
    p, r, v = charge(x, state.p1, state.p2, state.r, state.v, o_prev, k, bias)
    o = spike(v, k.v_threshold, k.sigma) if surrogate is None else spike_with(v, k.v_threshold, surrogate)
    return o.to(out_dtype), IIRState(p, state.p1, r, v, o)


def iir_multistep_reference(
    x_seq: Tensor,
    params: IIRParams,
    state: Optional[IIRState] = None,
    *,
    surrogate: Optional[Callable[[Tensor], Tensor]] = None,
    bias: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, IIRState]:
    """The straightforward per-step autograd loop over x_seq [T, ...].

    Returns (spikes [T, ...], membrane V [T, ...], final state). Kept as the reference
    the fused `iir_multistep` is tested against, and the path for another surrogate
    gradient (``surrogate``, see `iir_step`). ``bias``: added after the synapse filter.
    """
    _check_seq(x_seq)
    out_dtype, x_seq = x_seq.dtype, widened(x_seq)
    state = IIRState.zeros_like(x_seq[0]) if state is None else state
    spikes, volts = [], []
    for x in x_seq:
        o, state = iir_step(x, state, params, surrogate=surrogate, bias=bias)
        spikes.append(o)
        volts.append(state.v)
    return torch.stack(spikes).to(out_dtype), torch.stack(volts), state


def _check_seq(x_seq: Tensor) -> None:
    if x_seq.dim() < 1 or x_seq.shape[0] < 1:
        raise ValueError(
            f"IIR neuron: expected a time-first tensor [T, ...] with T >= 1, got shape {tuple(x_seq.shape)}"
        )


def iir_multistep(
    x_seq: Tensor,
    params: IIRParams,
    state: Optional[IIRState] = None,
    *,
    bias: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, IIRState]:
    """The fused multistep neuron over x_seq [T, ...].

    Returns (spikes [T, ...], membrane V [T, ...], final state); `state=None` starts from
    zeros. Same values as `iir_multistep_reference`, gradients equal to float rounding.
    Runs the fused executor (`hnn_bridge.kernels.fused.IIRMultiStep`, hand-written BPTT);
    without a graph to record (no grad mode, or no input requiring grad) it runs the same
    forward and saves nothing. ``bias``: added after the synapse filter (see
    `with_post_filter_bias`, the same spikes as the reference with that bias).
    """
    _check_seq(x_seq)
    if bias is not None:
        return with_post_filter_bias(x_seq, params, state, bias, iir_multistep)
    out_dtype, x_seq, state = x_seq.dtype, widened(x_seq), widened_state(state)
    k = Coefficients.of(params)
    spikes, volts, p1, p2, r = run_multistep(x_seq, k, state, detach_reset=params.detach_reset)
    return spikes.to(out_dtype), volts, IIRState(p1, p2, r, volts[-1], spikes[-1])


def iir_spikes(x_seq: Tensor, params: IIRParams, *, bias: Optional[Tensor] = None) -> Tensor:
    """The spikes of `iir_multistep` from zero state (what `IIRNeuron` returns).

    Runs the fused executor's spikes-only Function (`hnn_bridge.kernels.fused.IIRSpikes`);
    without a graph to record it keeps no membrane sequence: V lives in one step-sized
    buffer instead of a [T, ...] one (the evaluation path). ``bias``: added after the
    synapse filter (`with_post_filter_bias`).
    """
    _check_seq(x_seq)
    if bias is not None:
        current, inner = post_filter_current(x_seq, params, None, bias)
        return iir_spikes(current, inner).to(x_seq.dtype)
    k = Coefficients.of(params)
    out_dtype, x_seq = x_seq.dtype, widened(x_seq)
    return run_spikes(x_seq, k, detach_reset=params.detach_reset).to(out_dtype)


# -- the bias after the synapse filter -----------------------------------------------------
#
# V[t] = lam*V[t-1] + (p[t] + c) - V_th*R[t] is the neuron with synapse "none" on the
# current p[t] + c: the filter runs first (`synapse_filter`), then the bias is added, then
# any multistep executor of the neuron runs unchanged. Its sums are `charge`'s with a bias,
# so every executor keeps giving the reference's spikes.


def post_filter_current(
    x_seq: Tensor, params: IIRParams, state: Optional[IIRState], bias: Tensor
) -> tuple[Tensor, IIRParams]:
    """(p + bias [T, ...], the params with synapse "none"): the input of a bias-free
    executor that gives the neuron with ``bias`` after its synapse filter."""
    p1, p2 = (None, None) if state is None else (state.p1, state.p2)
    p_seq = synapse_filter(x_seq, params, p1, p2)
    return p_seq + bias, _unfiltered(params)


def with_post_filter_bias(
    x_seq: Tensor,
    params: IIRParams,
    state: Optional[IIRState],
    bias: Tensor,
    run: Callable[..., tuple[Tensor, Tensor, IIRState]],
) -> tuple[Tensor, Tensor, IIRState]:
    """``run`` (an `iir_multistep`-like executor: (x_seq, params, state) -> (spikes, V,
    state)) with ``bias`` added after the synapse filter; the returned state holds the
    filter's own p[T-1], p[T-2] (without the bias), as `charge` does."""
    p1, p2 = (None, None) if state is None else (state.p1, state.p2)
    p_seq = synapse_filter(x_seq, params, p1, p2)
    inner = None if state is None else IIRState(None, None, state.r, state.v, state.o)
    if inner is not None and all(s is None for s in inner):
        inner = None
    spikes, volts, st = run(p_seq + bias, _unfiltered(params), inner)
    steps = p_seq.shape[0]
    p_last = p_seq[-1]
    p_prev = p_seq[-2] if steps > 1 else (p1 if p1 is not None else torch.zeros_like(p_last))
    return spikes.to(x_seq.dtype), volts, IIRState(p_last, p_prev, st.r, st.v, st.o)


def _unfiltered(params: IIRParams) -> IIRParams:
    return params if params.synapse == "none" else replace(params, synapse="none")
