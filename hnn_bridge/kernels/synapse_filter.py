"""The synapse filter of eq. 1d alone on the CPU in float32 as one compiled pass (issue 36).

`hnn_bridge.functional.synapse_filter` (the `SynapseFilter` of a spiking layer built with
``bias_placement="after_filter"``) runs p[t] = a1*p[t-1] + a2*p[t-2] + b*x[t] as a Python
loop of ATen multiplies and adds, one step at a time, then ``torch.stack``, with autograd
through every step. Here the filter from zero state is one C loop nest
(``synapse_filter.c``, built like ``iir_native.c`` with ``-ffp-contract=off`` and no fast
math): blocks of neurons stay in cache over all T steps, the inner loops over a block are
vectorised, and large layers are split into chunks on ``torch.get_num_threads()`` threads
(`native._run`). `NativeSynapseFilter` wraps it as one autograd Function with a
hand-written backward, the transposed filter run backwards in time:

    c[t] = (g[t] + a2*c[t+2]) + a1*c[t+1],    grad_x[t] = b*c[t]

Both directions equal the ATen loop bit for bit: the forward evaluates `_scaled`/`_sum`'s
products and sums in their order (skipping the terms of the zero initial state and of a
zero coefficient, and the multiply by a coefficient 1), and the backward adds in the order
in which autograd's engine accumulates the gradient of p[t] through that loop: the slice of
the stack's gradient first, then the product from p[t+2], then the one from p[t+1] (found
empirically and checked in ``tests/test_synapse_filter_native.py``, float32 and float64).
It saves no tensor for the backward. Its backward is itself a Function whose backward is the
forward filter, so double backward works (not bit-equal to autograd's there).

`native_filter_applies` says where it runs: float32 on the CPU, the C library built, neither
``HNN_BRIDGE_NATIVE=0`` nor ``HNN_BRIDGE_NATIVE_FILTER=0`` set, no tracing or compiling, and
coefficients with b != 0 that filter at all; elsewhere the ATen loop runs as before.
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Optional

import torch
from torch import Tensor

from .build import build_library, source_text
from .native import FLAGS, _ptr, _run

__all__ = [
    "ENV",
    "NativeSynapseFilter",
    "filter_unavailable_reason",
    "native_filter_applies",
    "native_filter",
]

#: ``HNN_BRIDGE_NATIVE_FILTER=0`` keeps the synapse filter on the ATen loop (the rest of the
#: native path unchanged); ``HNN_BRIDGE_NATIVE=0`` turns it off with every native path.
ENV = "HNN_BRIDGE_NATIVE_FILTER"

_lock = threading.Lock()
_state: dict[str, object] = {}


def _library() -> Optional[ctypes.CDLL]:
    with _lock:
        if "lib" not in _state:
            try:
                path = build_library(source_text("synapse_filter.c"), FLAGS, "synapse_filter")
                lib = ctypes.CDLL(str(path))
                P, i64, i32, f32 = ctypes.c_void_p, ctypes.c_longlong, ctypes.c_int, ctypes.c_float
                lib.iir_synapse_forward.argtypes = [P, i64, P, i64, i64, i32, i32, f32, f32, f32]
                lib.iir_synapse_forward.restype = None
                lib.iir_synapse_backward.argtypes = [P, P, i64, i64, i32, i32, f32, f32, f32]
                lib.iir_synapse_backward.restype = None
                _state["lib"], _state["why"] = lib, None
            except (RuntimeError, OSError) as err:
                _state["lib"], _state["why"] = None, str(err)
        return _state["lib"]  # type: ignore[return-value]


def filter_unavailable_reason() -> Optional[str]:
    """Why the compiled synapse filter does not run here (None when it does)."""
    if os.environ.get("HNN_BRIDGE_NATIVE", "1") == "0":
        return "disabled by HNN_BRIDGE_NATIVE=0"
    if os.environ.get(ENV, "1") == "0":
        return f"disabled by {ENV}=0"
    return None if _library() is not None else str(_state["why"])


def _kind(c: float) -> int:
    return 0 if c == 0.0 else 1 if c == 1.0 else 2


def _kinds(k) -> int:
    """2 bits per coefficient a1, a2, b (0 absent, 1 unscaled, 2 scaled), decided on the
    double-precision coefficients as `_scaled` decides."""
    return _kind(k.a1) | _kind(k.a2) << 2 | _kind(k.b) << 4


def native_filter_applies(x_seq: Tensor, k) -> bool:
    """The compiled filter runs x_seq [T, ...] with the `Coefficients` ``k`` (from zero state)."""
    if x_seq.dtype != torch.float32 or x_seq.device.type != "cpu" or x_seq.dim() < 1:
        return False
    if k.b == 0.0 or (k.a1 == 0.0 and k.a2 == 0.0 and k.b == 1.0):
        return False  # no filter (x itself), or none the ATen loop can run
    if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return filter_unavailable_reason() is None


def _scalars(k) -> tuple[int, float, float, float]:
    return _kinds(k), k.a1, k.a2, k.b  # ctypes rounds the coefficients to float32


def filter_forward(x_seq: Tensor, k) -> Tensor:
    """p [T, ...] (contiguous) of the filter from zero state on x_seq [T, ...] (float32, CPU)."""
    lib = _library()
    steps = x_seq.shape[0]
    n = x_seq[0].numel()
    constant = steps > 1 and x_seq.stride(0) == 0  # the same x[t] for every t: read it once
    x = x_seq[0].contiguous() if constant else x_seq.contiguous()
    x_step = 0 if constant else n
    out = torch.empty(x_seq.shape, dtype=torch.float32)
    scalars = _scalars(k)

    def call(i: int, m: int) -> None:
        lib.iir_synapse_forward(_ptr(x, i), x_step, _ptr(out, i), n, m, steps, *scalars)

    if n > 0:
        _run(call, n)
    return out


def filter_backward(g: Tensor, k) -> Tensor:
    """grad_x [T, ...] of `filter_forward` for the output gradient ``g`` [T, ...]."""
    lib = _library()
    steps = g.shape[0]
    n = g[0].numel()
    g = g.contiguous()
    gx = torch.empty(g.shape, dtype=torch.float32)
    scalars = _scalars(k)

    def call(i: int, m: int) -> None:
        lib.iir_synapse_backward(_ptr(g, i), _ptr(gx, i), n, m, steps, *scalars)

    if n > 0:
        _run(call, n)
    return gx


class NativeSynapseFilter(torch.autograd.Function):
    """The filter from zero state as one Function: `filter_forward`, backward `filter_backward`."""

    @staticmethod
    def forward(ctx, x_seq: Tensor, k) -> Tensor:
        ctx.k = k
        return filter_forward(x_seq, k)

    @staticmethod
    def backward(ctx, g: Tensor):
        return _FilterTranspose.apply(g, ctx.k), None


class _FilterTranspose(torch.autograd.Function):
    """`filter_backward` as a Function (linear; its own backward is the forward filter)."""

    @staticmethod
    def forward(ctx, g: Tensor, k) -> Tensor:
        ctx.k = k
        return filter_backward(g, k)

    @staticmethod
    def backward(ctx, gg: Tensor):
        return NativeSynapseFilter.apply(gg, ctx.k), None


def native_filter(x_seq: Tensor, k) -> Tensor:
    """The synapse filter from zero state on x_seq [T, ...] where `native_filter_applies`:
    `NativeSynapseFilter` (differentiable in x_seq), the same bits as the ATen loop."""
    if torch.is_grad_enabled() and x_seq.requires_grad:
        return NativeSynapseFilter.apply(x_seq, k)
    return filter_forward(x_seq, k)
