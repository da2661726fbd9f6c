"""A batch norm folded into the IIR neuron that follows it, on the CPU native path.

In a spiking layer built with ``norm="batch"`` a ``BatchNorm1d/2d`` over all T x B rows
feeds an `IIRNeuron` directly. Run apart, the norm reads its input twice (statistics,
then the transform x = y * alpha[c] + beta[c]) and writes x, and the neuron reads x
again. Here the statistics are ATen's two passes, run for 8 channels at a time, and the
neuron's C loop (``iir_native.c``, ``iir_native_bn_forward``) computes x on the fly as it
reads y, so x is never materialised; the neuron itself (eq. 1a-1f, Heaviside firing) is
`native.native_forward`'s loop, operation by operation.

Exactness: the spikes, V, gradients and running statistics equal the plain path's bit for
bit. The batch statistics are ATen's own arithmetic for a contiguous input (per channel, a
sequential sum in double, then the sum of float squares; ``iir_native_bn_stats`` runs 8
channels' chains side by side, each in ATen's order), alpha = invstd * weight, beta = bias
- mean * alpha and the transform are computed as ATen's CPU kernel computes them, with or
without fused multiply-adds as this torch build does, and the running statistics are
updated with ATen's roundings. `transform_mode` checks all of it against ATen at first
use; where the transform differs the fusion stays off, and where only the statistics
differ (another torch version) it runs in evaluation mode only. A norm whose statistics
ATen computes another way (one value per channel and row: ``BatchNorm1d`` on [T, B, F])
runs the plain path in training mode.

The backward is the neuron's BPTT (`fused.bptt`, eq. 6 surrogate) followed by ATen's own
``native_batch_norm_backward`` given the saved mean and invstd: the plain path's gradient
chain. The running statistics are updated as ``nn.BatchNorm`` decides (momentum, or
momentum None: the cumulative average; ``num_batches_tracked`` counted).

`hnn_bridge.builder.HybridNet` uses it where it applies (`fusable`); ``HNN_BRIDGE_FUSE_BN=0``
turns it off (`fuse_bn_enabled`). It pays in training (statistics in ATen's order but 8
chains at a time, and no normalised tensor): on the CIFAR-10 CNN rows a step took
0.91-0.98x the plain path's time (``benchmarks/bn_fusion.py``); the forward alone in
evaluation mode, where the norm is one cheap pass, did not change measurably.
"""

from __future__ import annotations

import os
import threading
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from .fused import bptt
from .native import _library, _ptr, _run, native_unavailable_reason, term_kinds
from .threads import one_thread_per_step

__all__ = [
    "BNSpikes",
    "Mode",
    "batch_stats",
    "bn_iir_spikes",
    "bn_neuron_forward",
    "bn_terms",
    "fusable",
    "fuse_bn_enabled",
    "fusion_unavailable_reason",
    "transform_mode",
]

#: whether the fused pair runs where ``HNN_BRIDGE_FUSE_BN`` is unset
DEFAULT_ON = True
ENV = "HNN_BRIDGE_FUSE_BN"

_lock = threading.Lock()
_mode: dict[str, object] = {}


def fuse_bn_enabled() -> bool:
    """``HNN_BRIDGE_FUSE_BN``: ``"1"`` on, ``"0"`` off, unset: `DEFAULT_ON`."""
    value = os.environ.get(ENV)
    return DEFAULT_ON if value is None else value != "0"


def bn_terms(
    mean: Tensor,
    invstd_or_var: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    *,
    eps: float = 0.0,
    from_var: bool = False,
    fma: Optional[bool] = None,
) -> tuple[Tensor, Tensor]:
    """(alpha, beta) per channel as ATen's CPU batch norm collects them: alpha = invstd *
    weight, beta = bias - mean * alpha; invstd given, or with ``from_var`` 1 / sqrt(var +
    eps) in float (evaluation). ``fma``: beta in one rounding (None: as `transform_mode`)."""
    lib = _library()
    if fma is None:
        fma = _checked_mode().fma_terms
    c = mean.numel()
    mean, inv = mean.detach().float().contiguous(), invstd_or_var.detach().float().contiguous()
    w = None if weight is None else weight.detach().contiguous()
    b = None if bias is None else bias.detach().contiguous()
    alpha, beta = torch.empty(c), torch.empty(c)
    lib.iir_native_bn_terms(
        _ptr(mean), _ptr(inv), _ptr(w), _ptr(b), c, eps, int(from_var), int(fma), _ptr(alpha), _ptr(beta)
    )
    return alpha, beta


def _apply(y3: Tensor, alpha: Tensor, beta: Tensor, fma: bool) -> Tensor:
    """The transform alone: y3 [rows, C, plane] -> y3 * alpha[c] + beta[c]."""
    x = torch.empty_like(y3)
    rows, c, plane = y3.shape
    _library().iir_native_bn_apply(_ptr(y3), _ptr(alpha), _ptr(beta), _ptr(x), rows, c, plane, int(fma))
    return x


class Mode(NamedTuple):
    """How this torch build's CPU batch norm rounds (`transform_mode`)."""

    #: beta = bias - mean * alpha in one rounding
    fma_terms: bool
    #: y * alpha + beta in one rounding
    fma_apply: bool
    #: `batch_stats` and `_update_running` give ATen's batch statistics, bit for bit
    exact_stats: bool


def transform_mode() -> Optional[Mode]:
    """How this torch build's CPU batch norm rounds, found at first use by comparing with
    ATen's output in evaluation and training mode, for a conv-like and a dense-like shape;
    None when no combination we can compute exactly reproduces its transform (the fusion
    then stays off)."""
    with _lock:
        if "mode" not in _mode:
            _mode["mode"] = _probe()
        return _mode["mode"]  # type: ignore[return-value]


def _probe() -> Optional[Mode]:
    lib = _library()
    gen = torch.Generator().manual_seed(1234)
    cases = []
    for shape in ((3, 48, 5, 7), (40, 48)):
        c = shape[1]
        y = torch.randn(shape, generator=gen) * 3 + 1
        rm, rv = torch.randn(c, generator=gen), torch.rand(c, generator=gen) * 2 + 1e-3
        w, b = torch.randn(c, generator=gen), torch.randn(c, generator=gen)
        y3 = y.reshape(shape[0], c, -1)
        with torch.no_grad():
            out = torch.nn.functional.batch_norm(y, rm, rv, w, b, False, 0.1, 1e-5).reshape(y3.shape)
            cases.append((y3, out, rm, rv, w, b, True))
            out, mean, invstd = torch.native_batch_norm(y, w, b, rm.clone(), rv.clone(), True, 0.1, 1e-5)
            cases.append((y3, out.reshape(y3.shape), mean, invstd, w, b, False))
    exact_fma = bool(lib.iir_native_bn_fma_exact())
    for fma_terms in (True, False) if exact_fma else (False,):
        for fma_apply in (True, False) if exact_fma else (False,):
            if all(
                torch.equal(
                    _apply(y3, *bn_terms(m, s, w, b, eps=1e-5, from_var=ev, fma=fma_terms), fma_apply), out
                )
                for y3, out, m, s, w, b, ev in cases
            ):
                return Mode(fma_terms, fma_apply, _stats_match_aten(gen))
    return None


def _stats_match_aten(gen: torch.Generator) -> bool:
    """`batch_stats` and `_update_running` against ATen's save_mean, save_invstd and
    running statistics on a conv-like input."""
    y = torch.randn(6, 24, 9, 11, generator=gen) * torch.rand(1, 24, 1, 1, generator=gen) * 4 + 2
    rm, rv = torch.randn(24, generator=gen), torch.rand(24, generator=gen) + 0.5
    want_rm, want_rv = rm.clone(), rv.clone()
    with torch.no_grad():
        _, want_mean, want_invstd = torch.native_batch_norm(y, None, None, want_rm, want_rv, True, 0.3, 1e-5)
    mean, var_sum, invstd = batch_stats(y.view(6, 24, -1), 1e-5)
    _update_running(rm, rv, mean, var_sum, 0.3, 6 * 9 * 11)
    got = (mean, invstd, rm, rv)
    return all(torch.equal(a, b) for a, b in zip(got, (want_mean, want_invstd, want_rm, want_rv)))


def fusion_unavailable_reason() -> Optional[str]:
    """Why the fused batch norm + neuron does not run here (None when it can)."""
    if not fuse_bn_enabled():
        return f"off ({ENV}=1 turns it on)" if os.environ.get(ENV) is None else f"disabled by {ENV}=0"
    why = native_unavailable_reason()
    if why is not None:
        return why
    if transform_mode() is None:
        return "this torch build's batch norm transform could not be reproduced bit for bit"
    return None


def _checked_mode() -> Mode:
    mode = transform_mode()
    if mode is None:
        raise RuntimeError("bn_neuron: " + str(fusion_unavailable_reason()))
    return mode


def batch_stats(y3: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(mean, var_sum, invstd) per channel of y3 [rows, C, plane] (float32, contiguous), as
    ATen's CPU batch norm computes them in training mode (``iir_native_bn_stats``),
    channels split over the torch threads."""
    lib = _library()
    rows, c, plane = y3.shape
    mean, var_sum, invstd = torch.empty(c), torch.empty(c), torch.empty(c)

    def call(c0: int, count: int) -> None:
        lib.iir_native_bn_stats(
            _ptr(y3), rows, c, plane, c0, count, eps, _ptr(mean), _ptr(var_sum), _ptr(invstd)
        )

    if y3.numel() > 0:
        _run(call, c, item_size=rows * plane, align=1)
    return mean, var_sum, invstd


def _update_running(rm: Tensor, rv: Tensor, mean: Tensor, var_sum: Tensor, factor: float, count: int) -> None:
    """ATen's update of the running statistics, its roundings: the momentum in float,
    the mean's average in float, the unbiased variance var_sum / (n - 1) in float and its
    average in double."""
    m = torch.tensor(factor, dtype=torch.float32)
    with torch.no_grad():
        rm.copy_(m * mean + (1 - m) * rm)
        unbiased = var_sum / torch.tensor(float(count - 1), dtype=torch.float32)
        rv.copy_(m.double() * unbiased.double() + ((1 - m) * rv).double())


def bn_neuron_forward(
    y: Tensor, alpha: Tensor, beta: Tensor, k, *, keep_volts: bool
) -> tuple[Tensor, Optional[Tensor]]:
    """(spikes, V or None) of the neuron with coefficients ``k`` (`Coefficients`, eq.
    1a-1f) from zero state over x = y * alpha[c] + beta[c], y [T, B, C, *spatial]
    contiguous float32, computed as the neuron's C loop reads y."""
    lib = _library()
    fma = _checked_mode().fma_apply
    steps, n = y.shape[0], y[0].numel()
    channels, plane = y.shape[2], y[0, 0, 0].numel()
    spikes = torch.empty(y.shape)
    volts = torch.empty(y.shape) if keep_volts else None
    # without V kept the C loop still needs no [T, ...] buffer: it writes V only where asked
    scalars = (k.a1, k.a2, k.b, k.theta, k.lam, -k.v_threshold, k.v_threshold)
    kinds = term_kinds(k)

    def call(i: int, m: int) -> None:
        lib.iir_native_bn_forward(
            _ptr(y, i),
            _ptr(alpha),
            _ptr(beta),
            i,
            plane,
            channels,
            int(fma),
            _ptr(spikes, i),
            _ptr(volts, i),
            n,
            m,
            steps,
            kinds,
            *scalars,
        )

    if n > 0:
        _run(call, n)
    return spikes, volts


def _norm_settings(bn: nn.Module) -> tuple[bool, Optional[Tensor], Optional[Tensor], float, bool]:
    """(batch statistics?, running mean, running var, average factor, update?) as
    ``nn.BatchNorm.forward`` decides them; counts the batch in ``num_batches_tracked``
    where it does."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    batch = bn.training or (bn.running_mean is None and bn.running_var is None)
    use_running = not bn.training or bn.track_running_stats
    rm = bn.running_mean if use_running else None
    rv = bn.running_var if use_running else None
    return batch, rm, rv, factor, batch and rm is not None


def _statistics(y3: Tensor, bn: nn.Module, fma_terms: bool):
    """(alpha, beta, save_mean, save_invstd, batch?, running mean, running var) for one call."""
    batch, rm, rv, factor, update = _norm_settings(bn)
    if not batch:
        alpha, beta = bn_terms(rm, rv, bn.weight, bn.bias, eps=bn.eps, from_var=True, fma=fma_terms)
        empty = torch.empty(0)
        return alpha, beta, empty, empty, False, rm, rv
    mean, var_sum, invstd = batch_stats(y3, bn.eps)
    if update:
        _update_running(rm, rv, mean, var_sum, factor, y3.shape[0] * y3.shape[2])
    alpha, beta = bn_terms(mean, invstd, bn.weight, bn.bias, fma=fma_terms)
    return alpha, beta, mean, invstd, True, rm, rv


def _rows(y: Tensor) -> Tensor:
    """y [T, B, C, *spatial] as [T*B, C, plane]."""
    return y.view(y.shape[0] * y.shape[1], y.shape[2], -1)


class BNSpikes(torch.autograd.Function):
    """``IIRNeuron(SeqOp(bn)(y))`` in one pass: ``BNSpikes.apply(y, weight, bias, bn, k,
    detach_reset)``. Saves y, V and the batch's mean and invstd."""

    @staticmethod
    def forward(ctx, y, weight, bias, bn, k, detach_reset):  # type: ignore[override]
        fma_terms = _checked_mode().fma_terms
        with one_thread_per_step(y):
            alpha, beta, mean, invstd, batch, rm, rv = _statistics(_rows(y), bn, fma_terms)
            spikes, volts = bn_neuron_forward(y, alpha, beta, k, keep_volts=True)
        ctx.k, ctx.detach_reset, ctx.batch, ctx.eps = k, detach_reset, batch, bn.eps
        ctx.running = (rm, rv)
        ctx.save_for_backward(y, volts, weight, mean, invstd)
        return spikes

    @staticmethod
    def backward(ctx, g_spikes):  # type: ignore[override]
        y, volts, weight, mean, invstd = ctx.saved_tensors
        with one_thread_per_step(y):
            grad_x = bptt(volts, ctx.k, detach_reset=ctx.detach_reset, g_spikes=g_spikes)[0]
        mask = list(ctx.needs_input_grad[:3])
        rm, rv = ctx.running
        gy, gw, gb = torch.ops.aten.native_batch_norm_backward(
            grad_x.view(-1, *y.shape[2:]),
            y.view(-1, *y.shape[2:]),
            weight,
            rm,
            rv,
            mean,
            invstd,
            ctx.batch,
            ctx.eps,
            mask,
        )
        gy = None if gy is None else gy.view(y.shape)
        return gy, gw, gb, None, None, None


def fusable(y: Tensor, bn: nn.Module) -> bool:
    """The fused pair applies to the norm ``bn`` (exactly ``nn.BatchNorm1d`` or
    ``nn.BatchNorm2d``) on y [T, B, C, ...]: the fusion on and available, y contiguous
    float32 on the CPU with the shape the norm takes, no autocast, no tracing or
    compiling; with batch statistics also more than one position per channel and row
    (ATen's in-order sums) and `Mode.exact_stats`."""
    if type(bn) is nn.BatchNorm2d:
        if y.dim() != 5:
            return False
    elif type(bn) is nn.BatchNorm1d:
        if y.dim() not in (3, 4):
            return False
    else:
        return False
    if y.dtype != torch.float32 or y.device.type != "cpu" or not y.is_contiguous():
        return False
    if y.shape[2] != bn.num_features or y.numel() == 0:
        return False
    if torch.is_autocast_enabled("cpu") or torch.jit.is_scripting() or torch.jit.is_tracing():
        return False
    if torch.compiler.is_compiling():
        return False
    for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        if t is not None and (t.dtype != torch.float32 or t.device.type != "cpu"):
            return False
    if fusion_unavailable_reason() is not None:
        return False
    if bn.training or (bn.running_mean is None and bn.running_var is None):
        # batch statistics: only where ATen sums each channel's plane in order (plane > 1;
        # with one value per row it sums otherwise) and this build's sums are ATen's
        plane = y[0, 0, 0].numel()
        ok = plane > 1 and y.numel() // y.shape[2] > 1 and bn.eps > 0  # else ATen raises its error
        return ok and _checked_mode().exact_stats
    return True


def bn_iir_spikes(y: Tensor, bn: nn.Module, k, *, detach_reset: bool) -> Tensor:
    """The spikes of the neuron with coefficients ``k`` on ``bn`` applied to all T x B rows
    of y (where `fusable`): `BNSpikes` when autograd records a graph, else the same
    forward keeping nothing."""
    needs = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (y, bn.weight, bn.bias)
    )
    if needs:
        return BNSpikes.apply(y, bn.weight, bn.bias, bn, k, detach_reset)
    fma_terms = _checked_mode().fma_terms
    with torch.no_grad(), one_thread_per_step(y):
        alpha, beta, *_ = _statistics(_rows(y), bn, fma_terms)
        return bn_neuron_forward(y, alpha, beta, k, keep_volts=False)[0]
