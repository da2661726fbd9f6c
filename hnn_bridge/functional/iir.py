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
- `iir_multistep`: the whole sequence as one `torch.autograd.Function` whose backward
  is hand-written BPTT (no autograd graph per step; it saves only V[t], or nothing but
  the input for an input constant over time); `iir_spikes` is its spikes-only form
  (`IIRNeuron`), which without a graph to record keeps no membrane sequence at all.

Half precision (``torch.autocast`` with bfloat16 or float16): every entry point widens a
float16/bfloat16 input to float32 and keeps the state (p, R, V) and the surrogate in
float32; the spikes, exactly 0 or 1, come back in the input's dtype. So the neuron of a
bf16 network is bit for bit the float32 neuron on the upcast currents
(`tests/test_precision.py`); only the weight ops run in the low precision.

Performance notes (how the fused path executes, same arithmetic): see the comment above
`_scalar_maker` and docs/notes/performance-notebook.md. On the CPU in float32 the recurrences of
`_fused_forward` and `_bptt` run as one compiled C loop nest (`native`), the same
operations in the same order, bit for bit; the ATen ops below are the path elsewhere
(CUDA, float64, no C compiler, ``HNN_BRIDGE_NATIVE=0``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from ..params import IIRParams
from ..kernels.native import native_backward, native_enabled, native_forward, native_surrogate_exp
from ..kernels.denormals import flushed_exp_
from ..kernels.threads import one_thread
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
    duplicate-coded fast path of `IIRSpikes` / `IIRMultiStep` keeps working)."""
    if x.dtype not in _HALF:
        return x
    if x.dim() > 0 and _constant_over_time(x):
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
    x: Tensor, p1: Tensor, p2: Tensor, r: Tensor, v: Tensor, o: Tensor, k: Coefficients,
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
    x: Tensor, p1: Tensor, p2: Tensor, r: Tensor, v: Tensor, o: Tensor, k: Coefficients,
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
    """
    _check_seq(x_seq)
    k = Coefficients.of(params)
    x_seq = widened(x_seq)
    if k.a1 == 0.0 and k.a2 == 0.0 and k.b == 1.0:
        return x_seq
    out = []
    for x in x_seq:
        # a zero initial state (None) contributes no term: a*0 + y == y
        p = _sum(None if p1 is None else _scaled(k.a1, p1), None if p2 is None else _scaled(k.a2, p2),
                 _scaled(k.b, x))
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
    out_dtype, x_seq = x_seq.dtype, widened(x_seq)
    state = IIRState.zeros_like(x_seq[0]) if state is None else state
    spikes, volts = [], []
    for x in x_seq:
        o, state = iir_step(x, state, params, surrogate=surrogate, bias=bias)
        spikes.append(o)
        volts.append(state.v)
    return torch.stack(spikes).to(out_dtype), torch.stack(volts), state


def _owned(t: Tensor, inputs: tuple[Tensor, ...]) -> Tensor:
    return t.clone() if t._base is not None or any(t is i for i in inputs) else t


# -- execution of the fused path ---------------------------------------------------------
#
# The fused forward and backward below evaluate exactly the products and sums of `charge`
# and of the BPTT recurrences, in the same order, but execute them with `out=` arguments
# into preallocated buffers, with each coefficient held in a 0-dim tensor (a Python float
# operand costs a wrapped-number conversion per op), and with element-wise work that does
# not depend on the recurrence done in one op over all T steps (b*x[t], the surrogate of
# eq. 6, b*g_p[t]): an element-wise op gives the same bits on one step or on all. On the
# CPU, layers whose step is below ATen's parallel grain run on one thread (`_one_thread`).
# Two rewrites are exact in IEEE arithmetic and skip a multiply: 1*a == a, and
# a + (-1*b) == a - b (negation is exact), used when V_th == 1.


def _scalar_maker(like: Tensor):
    """c -> the operand to multiply tensors like `like` by c with the rounding of ``c * t``.

    float32 and float64 get a 0-dim CPU tensor holding c in that dtype (``c * t`` rounds
    c to t's dtype first; a CPU scalar operand is read the same way on every device);
    other dtypes keep the Python float.
    """
    if like.dtype in (torch.float32, torch.float64):
        cache: dict[float, Tensor] = {}

        def make(c: float):
            if c not in cache:
                cache[c] = torch.tensor(c, dtype=like.dtype)
            return cache[c]

        return make
    return lambda c: c


class _Lazy:
    """Scratch tensors of one step's shape, allocated on first use."""

    def __init__(self, shape, opts) -> None:
        self.shape, self.opts = shape, opts
        self._tmp: Optional[Tensor] = None

    def new(self) -> Tensor:
        return torch.empty(self.shape, **self.opts)

    def tmp(self) -> Tensor:
        if self._tmp is None:
            self._tmp = self.new()
        return self._tmp


def _lincomb(out: Tensor, scratch: _Lazy, terms, scalar) -> Tensor:
    """``_sum(*(_scaled(c, t) for c, t in terms))`` computed into `out` (scaled terms after
    the first go through ``scratch.tmp()``); returns `out`, or the single unscaled term
    itself. `out` may be the first term (element-wise in place) but no other term."""
    c, t = terms[0]
    if c == 1.0:
        acc = t
    else:
        torch.mul(t, scalar(c), out=out)
        acc = out
    for c, t in terms[1:]:
        if c != 1.0:
            tmp = scratch.tmp()
            torch.mul(t, scalar(c), out=tmp)
            t = tmp
        torch.add(acc, t, out=out)
        acc = out
    return acc


def _free(buffers, *used) -> Tensor:
    """The first buffer that is none of `used` (identity)."""
    return next(b for b in buffers if all(b is not u for u in used))


def _constant_over_time(x_seq: Tensor) -> bool:
    """x[t] is one and the same memory for every t (e.g. a duplicate-coded current,
    ``current.unsqueeze(0).expand(T, ...)``)."""
    return x_seq.shape[0] > 1 and x_seq.stride(0) == 0


def _fused_forward(
    x_seq: Tensor,
    p1,
    p2,
    r,
    v,
    o,
    k: Coefficients,
    smooth: bool,
    keep_volts: bool,
    *,
    volts_out: Optional[Tensor] = None,
    keep_spikes: bool = True,
):
    """The multistep forward (eq. 1d, 1c, 1a, 1e per step, `charge`'s arithmetic).

    Returns spikes [T, ...] (None unless keep_spikes), V [T, ...] (None unless keep_volts;
    written into ``volts_out`` when given) and the final p[T-1], p[T-2], R[T-1], V[T-1],
    O[T-1]. The final p and R may be views of the input or of the spikes, or inputs
    themselves. Without keep_spikes the spikes live in two step-sized buffers (for the
    recomputation of V in backward; x must then be constant over time).
    """
    if not smooth and native_enabled(x_seq):
        return native_forward(x_seq, (p1, p2, r, v, o), k, keep_spikes=keep_spikes, keep_volts=keep_volts,
                              volts_out=volts_out)
    steps = x_seq.shape[0]
    shape, opts = x_seq.shape[1:], dict(dtype=x_seq.dtype, device=x_seq.device)
    scalar = _scalar_maker(x_seq)
    scratch = _Lazy(shape, opts)
    constant = _constant_over_time(x_seq)
    if any(s is None for s in (p1, p2, r, v, o)):
        zero = x_seq.new_zeros(shape)
        p1, p2, r, v, o = (zero if s is None else s for s in (p1, p2, r, v, o))
    if keep_spikes:
        spikes = torch.empty_like(x_seq, memory_format=torch.contiguous_format)
        s_out = spikes.unbind(0)
    else:
        spikes, ring = None, (scratch.new(), scratch.new())
        s_out = [ring[t % 2] for t in range(steps)]
    volts = None
    if keep_volts:
        volts = volts_out if volts_out is not None else torch.empty_like(x_seq, memory_format=torch.contiguous_format)
        v_out = volts.unbind(0)
    else:
        v_buf = scratch.new()  # V[t] overwrites V[t-1] in place
    # The input term b*x[t] of the synapse filter: x itself for b == 1; b*x[0] once when x
    # is constant; else, when p[t] has other terms, b*x for all steps in one op into the
    # spike buffer (step t reads it before writing O[t]); else per step.
    recurrent = k.a1 != 0.0 or k.a2 != 0.0
    x_steps, x_coef = x_seq.unbind(0), k.b
    pre_scale = False
    if k.b not in (0.0, 1.0) and recurrent:
        if constant:
            x_steps, x_coef = (torch.mul(x_seq[0], scalar(k.b)),) * steps, 1.0
        else:
            if not keep_spikes:
                raise ValueError("_fused_forward: keep_spikes=False needs an input constant over time")
            x_steps, x_coef, pre_scale = s_out, 1.0, True
    if pre_scale:
        torch.mul(x_seq, scalar(k.b), out=spikes)
    # Buffers of p: one for p[t] plus one per older p still read (p[t-1] for a1, p[t-2] for a2).
    single = x_coef == 1.0 and not recurrent
    p_bufs = [] if single else [scratch.new() for _ in range(1 + (k.a1 != 0.0) + (k.a2 != 0.0))]
    r_buf = scratch.new() if k.theta != 0.0 else None
    vth, neg_vth = scalar(k.v_threshold), -k.v_threshold
    for t in range(steps):
        # p[t] = a1*p[t-1] + a2*p[t-2] + b*x[t]
        terms, live = [], []
        if k.a1 != 0.0:
            terms.append((k.a1, p1))
            live.append(p1)
        if k.a2 != 0.0:
            terms.append((k.a2, p2))
            live.append(p2)
        if x_coef != 0.0:
            terms.append((x_coef, x_steps[t]))
        if not terms:
            p = x_seq.new_zeros(shape)
        elif single:
            p = terms[0][1]
        else:
            p = _lincomb(_free(p_bufs, *live), scratch, terms, scalar)
        # R[t] = theta*R[t-1] + O[t-1]
        if r_buf is not None:
            r = _lincomb(r_buf, scratch, [(k.theta, r), (1.0, o)], scalar)
        else:
            r = o
        # V[t] = lam*V[t-1] + p[t] - V_th*R[t]
        v_new = v_out[t] if keep_volts else v_buf
        terms = [(k.lam, v)] if k.lam != 0.0 else []
        terms.append((1.0, p))
        if neg_vth == -1.0:
            acc = _lincomb(v_new, scratch, terms, scalar)
            torch.sub(acc, r, out=v_new)  # == acc + (-1*r), bit for bit
        else:
            if neg_vth != 0.0:
                terms.append((neg_vth, r))
            acc = _lincomb(v_new, scratch, terms, scalar)
            if acc is not v_new:
                v_new.copy_(acc)
        v = v_new
        # O[t] = U(V[t] - V_th)
        if smooth:
            s_out[t].copy_(firing_probability(v, k.v_threshold, k.sigma))
        else:
            torch.ge(v, vth, out=s_out[t])
        o = s_out[t]
        p1, p2 = p, p1
    return spikes, volts, p1, p2, r, v, o


def _one_thread(seq: Tensor):
    """`surrogate.one_thread` judged by one time step of ``seq`` [T, ...]: the recurrences
    run one step per op, so on the CPU below ATen's grain they are single-threaded anyway;
    this keeps the few ops over all steps (and exp, whose grain is smaller) there too."""
    return one_thread(seq, seq[0].numel() if seq.dim() > 0 and seq.shape[0] > 0 else 0)


def _surrogate_into(out: Tensor, volts: Tensor, k: Coefficients) -> Tensor:
    """`surrogate_grad(volts)` computed in place in `out` (same ops, same order; `out`
    may be `volts` itself)."""
    torch.sub(volts, k.v_threshold, out=out)
    out.mul_(out)
    out.mul_(-0.5 / (k.sigma * k.sigma))
    flushed_exp_(out)
    return out.mul_(k.surrogate_gain)


_STATE_NAMES = ("p1", "p2", "r", "v", "o")


def _save(ctx, x_seq: Tensor, volts: Optional[Tensor], state, k: Coefficients, detach_reset: bool, smooth: bool):
    """Save what backward needs: V, or, for an input constant over time, the input (one
    step's memory) and the initial state, from which backward recomputes V."""
    ctx.k, ctx.detach_reset, ctx.smooth = k, detach_reset, smooth
    ctx.recompute = volts is None
    if ctx.recompute:
        ctx.given = tuple(s is not None for s in state)
        ctx.save_for_backward(x_seq, *(s for s in state if s is not None))
    else:
        ctx.save_for_backward(volts)
    ctx.set_materialize_grads(False)


def _bptt(ctx, saved_tensors, g_spikes, g_volts, g_p1, g_p2, g_r):
    """Hand-written BPTT: returns (grad_x, grads of p1, p2, r, v, o of the initial state)."""
    k: Coefficients = ctx.k
    if ctx.recompute:
        x_seq, *saved = saved_tensors
        it = iter(saved)
        state = [next(it) if g else None for g in ctx.given]
        # V is recomputed into grad_x, where the surrogate and then g_p overwrite it.
        grad_x = torch.empty(x_seq.shape, dtype=x_seq.dtype, device=x_seq.device)
        _fused_forward(x_seq, *state, k, ctx.smooth, True, volts_out=grad_x, keep_spikes=False)
        volts = grad_x
    else:
        (volts,) = saved_tensors
        grad_x = torch.empty_like(volts)
    steps, shape = volts.shape[0], volts.shape[1:]
    scalar = _scalar_maker(volts)
    zero = volts.new_zeros(())  # broadcast: every op it enters has a full operand
    scratch = _Lazy(shape, dict(dtype=volts.dtype, device=volts.device))
    c_v = c_r = c_o = zero
    cp0 = zero if g_p1 is None else g_p1  # adjoint of p[t]
    cp1 = zero if g_p2 is None else g_p2  # adjoint of p[t-1]
    if g_r is not None:
        c_r = g_r
    # grad_x holds dO/dV of every step until step t overwrites it with g_p[t].
    if native_enabled(grad_x):
        native_surrogate_exp(volts, grad_x, k)
        return (grad_x, *native_backward(grad_x, g_spikes, g_volts, g_p1, g_p2, g_r, k, ctx.detach_reset))
    _surrogate_into(grad_x, volts, k)
    gx_steps = grad_x.unbind(0)
    gs_steps = None if g_spikes is None else g_spikes.unbind(0)
    gv_steps = None if g_volts is None else g_volts.unbind(0)
    buf_grt, buf_cv, buf_cr = scratch.new(), scratch.new(), scratch.new()
    cp_bufs = [scratch.new() for _ in range(2 if k.a2 != 0.0 else 1 if k.a1 != 0.0 else 0)]
    vth, lam, theta = scalar(k.v_threshold), scalar(k.lam), scalar(k.theta)
    a1, a2 = scalar(k.a1), scalar(k.a2)
    for t in range(steps - 1, -1, -1):
        g = gx_steps[t]  # dO/dV[t], then g_v, then g_p
        # g_v = (g_spikes[t] + c_o) * dO/dV + c_v (+ g_volts[t])   (x*y == y*x, x+y == y+x)
        if gs_steps is None:
            g.mul_(c_o)
        else:
            g.mul_(torch.add(gs_steps[t], c_o, out=buf_grt))  # c_o (if not zero) is buf_grt
        g.add_(c_v)
        if gv_steps is not None:
            g.add_(gv_steps[t])
        # g_r_t = c_r - V_th*g_v
        if k.v_threshold == 1.0:
            torch.sub(c_r, g, out=buf_grt)
        else:
            tmp = scratch.tmp()
            torch.mul(g, vth, out=tmp)
            torch.sub(c_r, tmp, out=buf_grt)
        g_r_t = buf_grt
        torch.mul(g, lam, out=buf_cv)
        c_v = buf_cv
        g.add_(cp0)  # g_p = cp0 + g_v
        g_p = g
        torch.mul(g_r_t, theta, out=buf_cr)
        c_r = buf_cr
        c_o = zero if ctx.detach_reset else g_r_t
        if k.a1 != 0.0:
            out = _free(cp_bufs, cp1)
            if k.a1 == 1.0:
                torch.add(cp1, g_p, out=out)
            else:
                tmp = scratch.tmp()
                torch.mul(g_p, a1, out=tmp)
                torch.add(cp1, tmp, out=out)
            cp0 = out
        else:
            cp0 = cp1
        if k.a2 != 0.0:
            cp1 = torch.mul(g_p, a2, out=_free(cp_bufs, cp0))
        else:
            cp1 = zero
    if k.b != 1.0:
        grad_x.mul_(scalar(k.b))

    def full(t: Tensor) -> Tensor:
        return volts.new_zeros(shape) if t is zero else t

    return grad_x, full(cp0), full(cp1), full(c_r), full(c_v), full(c_o)


class IIRMultiStep(torch.autograd.Function):
    """Fused multistep forward and hand-written BPTT backward.

    Inputs: x_seq [T, ...], the initial state (p1, p2, r, v, o; each a tensor or None
    for zeros), the `Coefficients`, detach_reset, and smooth (fire with P(V) of eq. 5
    instead of U, making the forward differentiable so that gradcheck can verify this
    backward exactly). Outputs: spikes [T, ...], V [T, ...], p[T-1], p[T-2], R[T-1].
    Saved: V only; the surrogate of eq. 6 is recomputed from it in backward. For an input
    constant over time (a duplicate-coded current, stride 0 along T) not even V: the
    input (one step's memory) and the initial state, from which backward recomputes V.
    """

    @staticmethod
    def forward(ctx, x_seq, p1, p2, r, v, o, k: Coefficients, detach_reset: bool, smooth: bool):  # type: ignore[override]
        state = (p1, p2, r, v, o)
        given = tuple(s for s in state if s is not None)
        with _one_thread(x_seq):
            spikes, volts, p1, p2, r, _, _ = _fused_forward(x_seq, *state, k, smooth, True)
        _save(ctx, x_seq, None if _constant_over_time(x_seq) else volts, state, k, detach_reset, smooth)
        # p[T-1], p[T-2] and R[T-1] can be an input or a view of x_seq or of the spikes
        # (T = 1, synapse "none", theta = 0); an output of a Function must own its memory.
        p_last, p_prev, r = (_owned(t, (x_seq, *given)) for t in (p1, p2, r))
        return spikes, volts, p_last, p_prev, r

    @staticmethod
    def backward(ctx, g_spikes, g_volts, g_p1, g_p2, g_r):  # type: ignore[override]
        saved = ctx.saved_tensors
        with _one_thread(saved[0]):
            grads = _bptt(ctx, saved, g_spikes, g_volts, g_p1, g_p2, g_r)
        needs = ctx.needs_input_grad
        return (grads[0], *(g if n else None for g, n in zip(grads[1:], needs[1:6])), None, None, None)


class IIRSpikes(torch.autograd.Function):
    """`IIRMultiStep` from zero state with the spikes as the only output (`IIRNeuron`):
    ``IIRSpikes.apply(x_seq, k, detach_reset)``. For an input constant over time the
    forward keeps no membrane sequence at all (V is recomputed in backward)."""

    @staticmethod
    def forward(ctx, x_seq, k: Coefficients, detach_reset: bool):  # type: ignore[override]
        constant = _constant_over_time(x_seq)
        with _one_thread(x_seq):
            spikes, volts, *_ = _fused_forward(x_seq, None, None, None, None, None, k, False, not constant)
        _save(ctx, x_seq, volts, (None,) * 5, k, detach_reset, False)
        return spikes

    @staticmethod
    def backward(ctx, g_spikes):  # type: ignore[override]
        saved = ctx.saved_tensors
        with _one_thread(saved[0]):
            return _bptt(ctx, saved, g_spikes, None, None, None, None)[0], None, None


def _needs_graph(*tensors: Optional[Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _check_seq(x_seq: Tensor) -> None:
    if x_seq.dim() < 1 or x_seq.shape[0] < 1:
        raise ValueError(f"IIR neuron: expected a time-first tensor [T, ...] with T >= 1, got shape {tuple(x_seq.shape)}")


def iir_multistep(
    x_seq: Tensor,
    params: IIRParams,
    state: Optional[IIRState] = None,
    *,
    smooth: bool = False,
    bias: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, IIRState]:
    """The fused multistep neuron over x_seq [T, ...].

    Returns (spikes [T, ...], membrane V [T, ...], final state); `state=None` starts from
    zeros. Same values as `iir_multistep_reference`, gradients equal to float rounding.
    Without a graph to record (no grad mode, or no input requiring grad) it runs the same
    forward and saves nothing. ``bias``: added after the synapse filter (see
    `with_post_filter_bias`, the same spikes as the reference with that bias).
    """
    _check_seq(x_seq)
    if bias is not None:
        return with_post_filter_bias(x_seq, params, state, bias, iir_multistep)
    out_dtype, x_seq, state = x_seq.dtype, widened(x_seq), widened_state(state)
    given = (None,) * 5 if state is None else tuple(state)
    k = Coefficients.of(params)
    if _needs_graph(x_seq, *given):
        spikes, volts, p1, p2, r = IIRMultiStep.apply(x_seq, *given, k, params.detach_reset, smooth)
        return spikes.to(out_dtype), volts, IIRState(p1, p2, r, volts[-1], spikes[-1])
    with _one_thread(x_seq):
        spikes, volts, p1, p2, r, v, o = _fused_forward(x_seq, *given, k, smooth, True)
    inputs = (x_seq, *(s for s in given if s is not None))
    p1, p2, r = (_owned(t, inputs) for t in (p1, p2, r))
    return spikes.to(out_dtype), volts, IIRState(p1, p2, r, volts[-1], spikes[-1])


def iir_spikes(x_seq: Tensor, params: IIRParams, *, bias: Optional[Tensor] = None) -> Tensor:
    """The spikes of `iir_multistep` from zero state (what `IIRNeuron` returns).

    Runs `IIRSpikes`; without a graph to record it keeps no membrane sequence: V lives in
    one step-sized buffer instead of a [T, ...] one (the evaluation path). ``bias``: added
    after the synapse filter (`with_post_filter_bias`).
    """
    _check_seq(x_seq)
    if bias is not None:
        current, inner = post_filter_current(x_seq, params, None, bias)
        return iir_spikes(current, inner).to(x_seq.dtype)
    k = Coefficients.of(params)
    out_dtype, x_seq = x_seq.dtype, widened(x_seq)
    if _needs_graph(x_seq):
        return IIRSpikes.apply(x_seq, k, params.detach_reset).to(out_dtype)
    with _one_thread(x_seq):
        return _fused_forward(x_seq, None, None, None, None, None, k, False, False)[0].to(out_dtype)


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
