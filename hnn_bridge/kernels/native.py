"""The fused multistep neuron on the CPU as one C loop nest (float32): same bits, fewer passes.

`fused.fused_forward` and `fused.bptt` run the recurrences of eq. 1a-1f as about ten ATen
ops per time step, each a full pass over one step's memory. On the CPU this module runs
the same recurrences as one loop nest, ``iir_native.c``, compiled at first use (``gcc -O3
-march=native -ffp-contract=off``, by `build.build_library`): blocks of neurons stay in
cache over all T steps and the inner loop over a block is vectorised. The arithmetic is
that of `hnn_bridge.functional.charge` and of `fused.bptt`, operation by operation in the
same order, in float32, without fused multiply-adds (``-ffp-contract=off``, no fast math;
a vectorised IEEE multiply or add rounds exactly as a scalar or an ATen one), so spikes,
V and gradients equal the ATen path bit for bit (`tests/test_native.py`). The surrogate
of eq. 6 (``exp``) is still computed by ATen (`fused.surrogate_into`), once over all
steps, and passed in.

Large layers are split into chunks run on ``torch.get_num_threads()`` Python threads
(ctypes releases the GIL). Without a C compiler, or with ``HNN_BRIDGE_NATIVE=0``, the
ATen path runs instead (`native_unavailable_reason` says why).
"""

from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import torch
from torch import Tensor

from .build import build_library, source_text
from .denormals import below_floor

__all__ = [
    "native_backward",
    "native_enabled",
    "native_forward",
    "native_maxpool2_backward",
    "native_maxpool2_forward",
    "native_surrogate_exp",
    "native_unavailable_reason",
    "term_kinds",
]


def _kind(c: float) -> int:
    return 0 if c == 0.0 else 1 if c == 1.0 else 2


def term_kinds(k) -> int:
    """Pack the 2-bit term kind (0 absent, 1 unscaled, 2 scaled) of a1, a2, b, theta, lam,
    -V_th of the neuron's `Coefficients` ``k``, decided on the double-precision coefficients
    exactly as `charge` and `fused.fused_forward` do (shared with the CuPy kernel)."""
    kinds = (k.a1, k.a2, k.b, k.theta, k.lam, -k.v_threshold)
    return sum(_kind(c) << (2 * slot) for slot, c in enumerate(kinds))


FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC", "-std=c99")
#: Below this many neurons per step a layer runs on the calling thread only.
CHUNK = 32768

_lock = threading.Lock()
_state: dict[str, object] = {}


def _library() -> Optional[ctypes.CDLL]:
    with _lock:
        if "lib" not in _state:
            try:
                path = build_library(source_text("iir_native.c"), FLAGS, "iir_native", libs=("-lm",))
                lib = ctypes.CDLL(str(path))
                P, i64, i32, f32 = ctypes.c_void_p, ctypes.c_longlong, ctypes.c_int, ctypes.c_float
                lib.iir_native_forward.argtypes = [P, i64] + [P] * 12 + [i64, i64, i32, i32] + [f32] * 7
                lib.iir_native_forward.restype = None
                lib.iir_native_backward.argtypes = [P] * 11 + [i64, i64, i32, i32, i32] + [f32] * 8
                lib.iir_native_surrogate_arg.argtypes = [P, P, i64, f32, f32, f32]
                lib.iir_native_surrogate_arg.restype = None
                lib.iir_native_backward.restype = None
                for name in ("iir_native_maxpool2_forward", "iir_native_maxpool2_backward"):
                    getattr(lib, name).argtypes = [P, P, P, i64, i64, i64]
                    getattr(lib, name).restype = None
                # the batch norm folded into the neuron (bn_neuron.py)
                lib.iir_native_bn_forward.argtypes = [P, P, P, i64, i64, i64, i32, P, P, i64, i64, i32, i32]
                lib.iir_native_bn_forward.argtypes += [f32] * 7
                lib.iir_native_bn_apply.argtypes = [P, P, P, P, i64, i64, i64, i32]
                lib.iir_native_bn_terms.argtypes = [P, P, P, P, i64, f32, i32, i32, P, P]
                lib.iir_native_bn_stats.argtypes = [P, i64, i64, i64, i64, i64, ctypes.c_double, P, P, P]
                for name in ("bn_forward", "bn_apply", "bn_terms", "bn_stats"):
                    getattr(lib, f"iir_native_{name}").restype = None
                lib.iir_native_bn_fma_exact.argtypes = []
                lib.iir_native_bn_fma_exact.restype = i32
                _state["lib"], _state["why"] = lib, None
            except (RuntimeError, OSError) as err:
                _state["lib"], _state["why"] = None, str(err)
        return _state["lib"]  # type: ignore[return-value]


def native_unavailable_reason() -> Optional[str]:
    """Why the native path does not run here (None when it does)."""
    if os.environ.get("HNN_BRIDGE_NATIVE", "1") == "0":
        return "disabled by HNN_BRIDGE_NATIVE=0"
    return None if _library() is not None else str(_state["why"])


def native_enabled(x: Tensor) -> bool:
    """The native path applies to ``x``: float32 on the CPU, and the library is built."""
    return x.dtype == torch.float32 and x.device.type == "cpu" and native_unavailable_reason() is None


def _ptr(t: Optional[Tensor], offset: int = 0) -> Optional[int]:
    return None if t is None else t.data_ptr() + 4 * offset


_pool: list[ThreadPoolExecutor] = []


def _chunks(items: int, item_size: int = 1, align: int = 256) -> list[tuple[int, int]]:
    """(start, count) of ``items`` split over the torch threads in multiples of ``align``
    (256: whole neuron blocks), or one chunk below `CHUNK` elements per thread."""
    workers = max(1, torch.get_num_threads())
    if workers == 1 or items < 2 or items * item_size < 2 * CHUNK:
        return [(0, items)]
    size = -(-items // workers)
    size = -(-size // align) * align
    return [(i, min(size, items - i)) for i in range(0, items, size)]


def _run(call, items: int, item_size: int = 1, align: int = 256) -> None:
    """``call(start, count)`` over `_chunks`, on the pool's threads when there are several."""
    parts = _chunks(items, item_size, align)
    if len(parts) == 1:
        call(*parts[0])
        return
    if not _pool or _pool[0]._max_workers < len(parts):  # noqa: SLF001 - sizing our own pool
        _pool[:] = [ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="hnn_bridge-neuron")]
    for f in [_pool[0].submit(call, i, m) for i, m in parts]:
        f.result()


def _flat(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.contiguous()


def native_forward(
    x_seq: Tensor, k, state=None, *, keep_spikes: bool, keep_volts: bool, volts_out: Optional[Tensor] = None
):
    """`fused.fused_forward` (Heaviside firing) in C: (spikes|None, volts|None, p1, p2, r,
    v, o) for x_seq [T, ...], the neuron's `Coefficients` ``k`` and the initial state
    (p1, p2, r, v, o; None, or None entries, are zeros)."""
    lib = _library()
    kinds = term_kinds(k)
    scalars = (k.a1, k.a2, k.b, k.theta, k.lam, -k.v_threshold, k.v_threshold)  # ctypes rounds to float32
    steps = x_seq.shape[0]
    shape = x_seq.shape[1:]
    n = shape.numel()
    constant = steps > 1 and x_seq.stride(0) == 0
    x = x_seq[0].contiguous() if constant else x_seq.contiguous()
    x_step = 0 if constant else n
    init = [_flat(s) for s in ((None,) * 5 if state is None else state)]
    opts = dict(dtype=torch.float32, device=x_seq.device)
    spikes = torch.empty(x_seq.shape, **opts) if keep_spikes else None
    volts = (volts_out if volts_out is not None else torch.empty(x_seq.shape, **opts)) if keep_volts else None
    finals = [torch.empty(shape, **opts) for _ in range(5)]

    def call(i: int, m: int) -> None:
        lib.iir_native_forward(
            _ptr(x, i),
            x_step,
            *(_ptr(s, i) for s in init),
            _ptr(spikes, i),
            _ptr(volts, i),
            *(_ptr(f, i) for f in finals),
            n,
            m,
            steps,
            kinds,
            *scalars,
        )

    if n > 0:
        _run(call, n)
    return (spikes, volts, *finals)


def native_surrogate_exp(volts: Tensor, out: Tensor, k) -> Tensor:
    """``out`` = exp of eq. 6's clamped argument, the first five ops of
    `fused.surrogate_into` (sub, square, scale, clamp in one C pass, then ATen's exp_);
    `native_backward` applies the last two (threshold, gain) as it reads ``out``."""
    lib = _library()
    below, _ = below_floor(volts)
    n = volts.numel()
    scale = -0.5 / (k.sigma * k.sigma)

    def call(i: int, m: int) -> None:
        lib.iir_native_surrogate_arg(_ptr(volts, i), _ptr(out, i), m, k.v_threshold, scale, below)

    if n > 0:
        _run(call, n)
    return out.exp_()


def native_backward(
    g: Tensor,
    k,
    *,
    detach_reset: bool,
    g_spikes: Optional[Tensor] = None,
    g_volts: Optional[Tensor] = None,
    g_p1: Optional[Tensor] = None,
    g_p2: Optional[Tensor] = None,
    g_r: Optional[Tensor] = None,
):
    """`fused.bptt`'s recurrence in C, in place on ``g`` (`native_surrogate_exp` of V in,
    grad_x out); returns the adjoints (cp0, cp1, c_r, c_v, c_o) of the initial state."""
    lib = _library()
    kinds = term_kinds(k)
    _, exp_below = below_floor(g)
    scalars = (k.a1, k.a2, k.b, k.theta, k.lam, k.v_threshold, exp_below, k.surrogate_gain)
    steps, shape = g.shape[0], g.shape[1:]
    n = shape.numel()
    gs, gv = _flat(g_spikes), _flat(g_volts)
    init = [_flat(t) for t in (g_p1, g_p2, g_r)]
    outs = [torch.empty(shape, dtype=g.dtype, device=g.device) for _ in range(5)]

    def call(i: int, m: int) -> None:
        lib.iir_native_backward(
            _ptr(g, i),
            _ptr(gs, i),
            _ptr(gv, i),
            *(_ptr(t, i) for t in init),
            *(_ptr(o, i) for o in outs),
            n,
            m,
            steps,
            kinds,
            int(detach_reset),
            *scalars,
        )

    if n > 0:
        _run(call, n)
    return tuple(outs)


def native_maxpool2_forward(x: Tensor) -> tuple[Tensor, Tensor]:
    """2x2/stride-2 max pooling of a contiguous float32 [..., H, W] on the CPU: (out, idx)."""
    lib = _library()
    h, w = x.shape[-2], x.shape[-1]
    planes = x[..., 0, 0].numel()
    out = torch.empty((*x.shape[:-2], h // 2, w // 2), dtype=x.dtype)
    idx = torch.empty(out.shape, dtype=torch.uint8)
    po = (h // 2) * (w // 2)

    def call(p: int, m: int) -> None:
        lib.iir_native_maxpool2_forward(
            _ptr(x, p * h * w), _ptr(out, p * po), idx.data_ptr() + p * po, m, h, w
        )

    _run(call, planes, item_size=h * w, align=1)
    return out, idx


def native_maxpool2_backward(g: Tensor, idx: Tensor, shape: torch.Size) -> Tensor:
    """The input gradient of `native_maxpool2_forward` for output gradient ``g``."""
    lib = _library()
    g = g.contiguous()
    h, w = shape[-2], shape[-1]
    planes = idx[..., 0, 0].numel() if idx.dim() >= 2 else 0
    gx = torch.empty(shape, dtype=g.dtype)
    po = (h // 2) * (w // 2)

    def call(p: int, m: int) -> None:
        lib.iir_native_maxpool2_backward(
            _ptr(g, p * po), idx.data_ptr() + p * po, _ptr(gx, p * h * w), m, h, w
        )

    _run(call, planes, item_size=h * w, align=1)
    return gx
