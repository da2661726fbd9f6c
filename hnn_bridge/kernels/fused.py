"""The fused executor of the IIR LIF neuron: the multistep forward and its hand-written
BPTT as preallocated ATen ops, and the autograd Functions `IIRMultiStep` and `IIRSpikes`.

It runs the equations of `hnn_bridge.functional` (`charge`: eq. 1d, 1c, 1a; the spike of
eq. 1e, 1f; the surrogate of eq. 6 in backward) over a whole sequence x_seq [T, ...]:
exactly the products and sums of `charge` and of the BPTT recurrences, in the same order,
but executed with ``out=`` arguments into preallocated buffers, with each coefficient held
in a 0-dim tensor (a Python float operand costs a wrapped-number conversion per op), and
with element-wise work that does not depend on the recurrence done in one op over all T
steps (b*x[t], the surrogate of eq. 6, b*g_p[t]): an element-wise op gives the same bits
on one step or on all. On the CPU, layers whose step is below ATen's parallel grain run on
one thread (`threads.one_thread_per_step`). Two rewrites are exact in IEEE arithmetic and
skip a multiply: 1*a == a, and a + (-1*b) == a - b (negation is exact), used when V_th == 1.
On the CPU in float32 the recurrences run as one compiled C loop nest instead (`native`),
the same operations in the same order, bit for bit; the ATen ops here are the path
elsewhere (CUDA, float64, no C compiler, ``HNN_BRIDGE_NATIVE=0``).

Performance history: docs/notes/performance-notebook.md. The coefficients ``k`` are the
neuron's `hnn_bridge.functional.Coefficients` (with its ``surrogate_gain`` and, for the
smooth variant, ``firing_probability``); a state is an `hnn_bridge.functional.IIRState`
(p1, p2, r, v, o), each entry a tensor or None for zeros. This module does not import
`hnn_bridge.functional`, which calls it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import torch
from torch import Tensor

from .denormals import flushed_exp_
from .native import native_backward, native_enabled, native_forward, native_surrogate_exp
from .threads import one_thread_per_step

if TYPE_CHECKING:
    from ..functional.iir import Coefficients

__all__ = [
    "IIRMultiStep",
    "IIRSpikes",
    "State",
    "bptt",
    "constant_over_time",
    "fused_forward",
    "run_multistep",
    "run_spikes",
    "surrogate_into",
]

#: An initial state (p[t-1], p[t-2], R[t-1], V[t-1], O[t-1]): an `IIRState`, or five
#: tensors or None (zeros).
State = Sequence[Optional[Tensor]]


def constant_over_time(x_seq: Tensor) -> bool:
    """x[t] is one and the same memory for every t (e.g. a duplicate-coded current,
    ``current.unsqueeze(0).expand(T, ...)``)."""
    return x_seq.shape[0] > 1 and x_seq.stride(0) == 0


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
    """The left-to-right sum of ``c * t`` over ``terms`` [(c, t), ...], as `charge` sums
    its scaled terms (c == 1: t itself), computed into `out` (scaled terms after the first
    go through ``scratch.tmp()``); returns `out`, or the single unscaled term itself.
    `out` may be the first term (element-wise in place) but no other term."""
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


def fused_forward(
    x_seq: Tensor,
    k: Coefficients,
    state: Optional[State] = None,
    *,
    smooth: bool = False,
    keep_volts: bool = True,
    keep_spikes: bool = True,
    volts_out: Optional[Tensor] = None,
):
    """The multistep forward (eq. 1d, 1c, 1a, 1e per step, `charge`'s arithmetic) from
    ``state`` (None: zeros).

    Returns spikes [T, ...] (None unless keep_spikes), V [T, ...] (None unless keep_volts;
    written into ``volts_out`` when given) and the final p[T-1], p[T-2], R[T-1], V[T-1],
    O[T-1]. The final p and R may be views of the input or of the spikes, or inputs
    themselves. Without keep_spikes the spikes live in two step-sized buffers (for the
    recomputation of V in backward; x must then be constant over time). ``smooth``: fire
    with P(V) of eq. 5 (``k.firing_probability``) instead of U, a differentiable forward
    for gradcheck (ATen only).
    """
    if not smooth and native_enabled(x_seq):
        return native_forward(
            x_seq, k, state, keep_spikes=keep_spikes, keep_volts=keep_volts, volts_out=volts_out
        )
    steps = x_seq.shape[0]
    shape, opts = x_seq.shape[1:], dict(dtype=x_seq.dtype, device=x_seq.device)
    scalar = _scalar_maker(x_seq)
    scratch = _Lazy(shape, opts)
    constant = constant_over_time(x_seq)
    p1, p2, r, v, o = (None,) * 5 if state is None else state
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
        if volts_out is None:
            volts_out = torch.empty_like(x_seq, memory_format=torch.contiguous_format)
        volts = volts_out
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
                raise ValueError("fused_forward: keep_spikes=False needs an input constant over time")
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
            s_out[t].copy_(k.firing_probability(v))
        else:
            torch.ge(v, vth, out=s_out[t])
        o = s_out[t]
        p1, p2 = p, p1
    return spikes, volts, p1, p2, r, v, o


def surrogate_into(out: Tensor, volts: Tensor, k: Coefficients) -> Tensor:
    """`surrogate_grad(volts)` (eq. 6) computed in place in `out` (same ops, same order;
    `out` may be `volts` itself)."""
    torch.sub(volts, k.v_threshold, out=out)
    out.mul_(out)
    out.mul_(-0.5 / (k.sigma * k.sigma))
    flushed_exp_(out)
    return out.mul_(k.surrogate_gain)


def bptt(
    volts: Tensor,
    k: Coefficients,
    *,
    detach_reset: bool,
    g_spikes: Optional[Tensor] = None,
    g_volts: Optional[Tensor] = None,
    g_p1: Optional[Tensor] = None,
    g_p2: Optional[Tensor] = None,
    g_r: Optional[Tensor] = None,
    in_place: bool = False,
):
    """Hand-written BPTT of `fused_forward` from V [T, ...] and the incoming gradients of
    the spikes, V and the final p[T-1], p[T-2], R[T-1] (None: zero). Returns (grad_x,
    grads of p1, p2, r, v, o of the initial state). ``in_place``: ``volts`` is scratch
    (recomputed V) and becomes grad_x."""
    grad_x = volts if in_place else torch.empty_like(volts)
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
        adjoints = native_backward(
            grad_x,
            k,
            detach_reset=detach_reset,
            g_spikes=g_spikes,
            g_volts=g_volts,
            g_p1=g_p1,
            g_p2=g_p2,
            g_r=g_r,
        )
        return (grad_x, *adjoints)
    surrogate_into(grad_x, volts, k)
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
        c_o = zero if detach_reset else g_r_t
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


def _owned(t: Tensor, inputs: tuple[Tensor, ...]) -> Tensor:
    return t.clone() if t._base is not None or any(t is i for i in inputs) else t


def _save_for_backward(
    ctx,
    x_seq: Tensor,
    volts: Optional[Tensor],
    state: State,
    k: Coefficients,
    *,
    detach_reset: bool,
    smooth: bool,
) -> None:
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


def _backward(ctx, saved: tuple[Tensor, ...], **grads: Optional[Tensor]):
    """`bptt` from what `_save_for_backward` saved: V, or V recomputed (into the buffer
    that becomes grad_x)."""
    if ctx.recompute:
        x_seq, *rest = saved
        it = iter(rest)
        state = [next(it) if g else None for g in ctx.given]
        volts = torch.empty(x_seq.shape, dtype=x_seq.dtype, device=x_seq.device)
        fused_forward(x_seq, ctx.k, state, smooth=ctx.smooth, volts_out=volts, keep_spikes=False)
    else:
        (volts,) = saved
    return bptt(volts, ctx.k, detach_reset=ctx.detach_reset, in_place=ctx.recompute, **grads)


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
    def forward(  # type: ignore[override]
        ctx, x_seq, p1, p2, r, v, o, k: Coefficients, detach_reset: bool, smooth: bool
    ):
        state = (p1, p2, r, v, o)
        given = tuple(s for s in state if s is not None)
        with one_thread_per_step(x_seq):
            spikes, volts, p1, p2, r, _, _ = fused_forward(x_seq, k, state, smooth=smooth)
        _save_for_backward(
            ctx,
            x_seq,
            None if constant_over_time(x_seq) else volts,
            state,
            k,
            detach_reset=detach_reset,
            smooth=smooth,
        )
        # p[T-1], p[T-2] and R[T-1] can be an input or a view of x_seq or of the spikes
        # (T = 1, synapse "none", theta = 0); an output of a Function must own its memory.
        p_last, p_prev, r = (_owned(t, (x_seq, *given)) for t in (p1, p2, r))
        return spikes, volts, p_last, p_prev, r

    @staticmethod
    def backward(ctx, g_spikes, g_volts, g_p1, g_p2, g_r):  # type: ignore[override]
        saved = ctx.saved_tensors
        with one_thread_per_step(saved[0]):
            grads = _backward(ctx, saved, g_spikes=g_spikes, g_volts=g_volts, g_p1=g_p1, g_p2=g_p2, g_r=g_r)
        needs = ctx.needs_input_grad
        return (grads[0], *(g if n else None for g, n in zip(grads[1:], needs[1:6])), None, None, None)


class IIRSpikes(torch.autograd.Function):
    """`IIRMultiStep` from zero state with the spikes as the only output (`IIRNeuron`):
    ``IIRSpikes.apply(x_seq, k, detach_reset)``. For an input constant over time the
    forward keeps no membrane sequence at all (V is recomputed in backward)."""

    @staticmethod
    def forward(ctx, x_seq, k: Coefficients, detach_reset: bool):  # type: ignore[override]
        constant = constant_over_time(x_seq)
        with one_thread_per_step(x_seq):
            spikes, volts, *_ = fused_forward(x_seq, k, keep_volts=not constant)
        _save_for_backward(ctx, x_seq, volts, (None,) * 5, k, detach_reset=detach_reset, smooth=False)
        return spikes

    @staticmethod
    def backward(ctx, g_spikes):  # type: ignore[override]
        saved = ctx.saved_tensors
        with one_thread_per_step(saved[0]):
            return _backward(ctx, saved, g_spikes=g_spikes)[0], None, None


def _needs_graph(*tensors: Optional[Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def run_multistep(
    x_seq: Tensor, k: Coefficients, state: Optional[State] = None, *, detach_reset: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(spikes, V, p[T-1], p[T-2], R[T-1]) over x_seq [T, ...] from ``state`` (None:
    zeros): `IIRMultiStep` when autograd records a graph, else the same forward, saving
    nothing."""
    given = (None,) * 5 if state is None else tuple(state)
    if _needs_graph(x_seq, *given):
        return IIRMultiStep.apply(x_seq, *given, k, detach_reset, False)
    with one_thread_per_step(x_seq):
        spikes, volts, p1, p2, r, _, _ = fused_forward(x_seq, k, given)
    inputs = (x_seq, *(s for s in given if s is not None))
    p1, p2, r = (_owned(t, inputs) for t in (p1, p2, r))
    return spikes, volts, p1, p2, r


def run_spikes(x_seq: Tensor, k: Coefficients, *, detach_reset: bool) -> Tensor:
    """The spikes over x_seq [T, ...] from zero state: `IIRSpikes` when autograd records
    a graph, else a forward that keeps no membrane sequence (V lives in one step-sized
    buffer)."""
    if _needs_graph(x_seq):
        return IIRSpikes.apply(x_seq, k, detach_reset)
    with one_thread_per_step(x_seq):
        return fused_forward(x_seq, k, keep_volts=False)[0]
