"""A batch norm folded into the IIR neuron that follows it, on the CPU native path.

In a spiking layer built with ``norm="batch"`` a ``BatchNorm1d/2d`` over all T x B rows
feeds an `IIRNeuron` directly. Run apart, the norm reads its input twice (statistics,
then the transform x = y * alpha[c] + beta[c]) and writes x, and the neuron reads x
again. Here the statistics take one pass, and the neuron's C loop (``iir_native.c``,
``iir_native_bn_forward``) computes x on the fly as it reads y, so x is never
materialised; the neuron itself (eq. 1a-1f, Heaviside firing) is `native.native_forward`'s
loop, operation by operation.

Exactness. Given the same per-channel mean and invstd the input of the neuron equals
ATen's batch norm output bit for bit: alpha = invstd * weight and beta = bias - mean *
alpha and the transform are computed as ATen's CPU kernel computes them, with or without
fused multiply-adds as this torch build does (`transform_mode` checks it against ATen at
first use; where nothing matches, the plain path runs). In evaluation mode (running
statistics) the spikes therefore equal the plain path's. In training mode the batch
statistics come from one pass of double-precision sums in eight lanes (``iir_native_bn_stats``)
where ATen sums sequentially in double and rounds the variance's terms to float: mean
and invstd may differ from ATen's in the last float bits (a different summation order
and fewer roundings), and so V by a bounded amount (``tests/test_bn_fusion.py``).

The backward is the neuron's BPTT (`fused.bptt`, eq. 6 surrogate) followed by ATen's own
``native_batch_norm_backward`` given the saved mean and invstd: the plain path's gradient
chain, given the statistics. The running statistics are updated as ``nn.BatchNorm`` does
(momentum, or momentum None: the cumulative average; unbiased variance).

``HNN_BRIDGE_FUSE_BN=1`` turns the fusion on (`fuse_bn_enabled`); `hnn_bridge.builder.HybridNet`
uses it where it applies (`fusable`).
"""

from __future__ import annotations

import os
import threading
from typing import Optional

import torch
from torch import Tensor, nn

from .fused import bptt
from .native import _library, _ptr, _run, native_unavailable_reason, term_kinds
from .threads import one_thread_per_step

__all__ = [
    "BNSpikes",
    "batch_stats",
    "bn_iir_spikes",
    "bn_neuron_forward",
    "bn_terms",
    "fusable",
    "fuse_bn_enabled",
    "fusion_unavailable_reason",
    "transform_mode",
]

#: the fused pair runs unless ``HNN_BRIDGE_FUSE_BN`` is ``"0"`` (on) / is ``"1"`` (off)
DEFAULT_ON = False
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
        fma = _checked_mode()[0]
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


def transform_mode() -> Optional[tuple[bool, bool]]:
    """(fma in beta, fma in the transform): how this torch build's CPU batch norm rounds,
    found at first use by comparing with ATen's output in evaluation and training mode,
    for a conv-like and a dense-like shape; None when no combination we can compute
    exactly reproduces it (the fusion then stays off)."""
    with _lock:
        if "mode" not in _mode:
            _mode["mode"] = _probe()
        return _mode["mode"]  # type: ignore[return-value]


def _probe() -> Optional[tuple[bool, bool]]:
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
                return fma_terms, fma_apply
    return None


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


def _checked_mode() -> tuple[bool, bool]:
    mode = transform_mode()
    if mode is None:
        raise RuntimeError("bn_neuron: " + str(fusion_unavailable_reason()))
    return mode


def batch_stats(y3: Tensor) -> tuple[Tensor, Tensor]:
    """(mean, biased variance) per channel of y3 [rows, C, plane] (float32, contiguous),
    in float64: one pass of double sums in eight lanes, shifted by each channel's first
    value (``iir_native_bn_stats``), channels split over the torch threads."""
    lib = _library()
    rows, c, plane = y3.shape
    mean = torch.empty(c, dtype=torch.float64)
    var = torch.empty(c, dtype=torch.float64)

    def call(c0: int, count: int) -> None:
        lib.iir_native_bn_stats(_ptr(y3), rows, c, plane, c0, count, mean.data_ptr(), var.data_ptr())

    if y3.numel() > 0:
        _run(call, c, item_size=rows * plane, align=1)
    return mean, var


def bn_neuron_forward(
    y: Tensor, alpha: Tensor, beta: Tensor, k, *, keep_volts: bool
) -> tuple[Tensor, Optional[Tensor]]:
    """(spikes, V or None) of the neuron with coefficients ``k`` (`Coefficients`, eq.
    1a-1f) from zero state over x = y * alpha[c] + beta[c], y [T, B, C, *spatial]
    contiguous float32, computed as the neuron's C loop reads y."""
    lib = _library()
    fma = _checked_mode()[1]
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
    mean64, var64 = batch_stats(y3)
    count = y3.shape[0] * y3.shape[2]
    total = var64 + bn.eps
    # ATen's InvStd: 1 / sqrt(var + eps) in double, 0 where that is 1 / 0
    invstd = torch.where(total > 0, 1.0 / total.sqrt(), torch.zeros_like(total)).float()
    mean = mean64.float()
    if update:
        with torch.no_grad():
            rm.copy_(factor * mean.double() + (1.0 - factor) * rm.double())
            rv.copy_(factor * (var64 * count / (count - 1)) + (1.0 - factor) * rv.double())
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
        fma_terms, _ = _checked_mode()
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
    compiling, more than one value per channel when the norm uses batch statistics."""
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
    batch = bn.training or (bn.running_mean is None and bn.running_var is None)
    if batch and y.numel() // y.shape[2] <= 1:
        return False  # ATen raises its own error on the plain path
    for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        if t is not None and (t.dtype != torch.float32 or t.device.type != "cpu"):
            return False
    return fusion_unavailable_reason() is None


def bn_iir_spikes(y: Tensor, bn: nn.Module, k, *, detach_reset: bool) -> Tensor:
    """The spikes of the neuron with coefficients ``k`` on ``bn`` applied to all T x B rows
    of y (where `fusable`): `BNSpikes` when autograd records a graph, else the same
    forward keeping nothing."""
    needs = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (y, bn.weight, bn.bias)
    )
    if needs:
        return BNSpikes.apply(y, bn.weight, bn.bias, bn, k, detach_reset)
    fma_terms, _ = _checked_mode()
    with torch.no_grad(), one_thread_per_step(y):
        alpha, beta, *_ = _statistics(_rows(y), bn, fma_terms)
        return bn_neuron_forward(y, alpha, beta, k, keep_volts=False)[0]
