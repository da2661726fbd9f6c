"""A 3x3 convolution of spikes that visits only the ones (CPU, float32): a measured study.

A spiking layer's convolution reads a binary input, of which the trained CIFAR-10 nets
set 3-4% to one. `spike_conv2d` computes ``F.conv2d(x, weight, bias, padding=1)`` for
such an ``x`` [N, Cin, H, W] by adding, for every output pixel, the kernel columns of the
active inputs around it (no multiplications); `spike_conv2d_weight` computes
``torch.nn.grad.conv2d_weight`` from the same active inputs. The C source is
``spike_conv.c``, compiled at first use by `build.build_library` with the flags of
`native.FLAGS`. Images are split over ``torch.get_num_threads()`` Python threads.

``docs/notes/2026-12-06-sparse-spike-conv.md`` compares it with torch's dense
convolution. `SpikeConv2d` is it as an autograd Function; `hnn_bridge.builder.HybridNet`
runs its spike-fed 3x3 convolutions through it where ``HNN_BRIDGE_SPARSE_CONV=1``
(`sparse_conv_enabled`, off by default) and `applies` says so. The sums run in another order than oneDNN's, so
results differ from ``F.conv2d`` by rounding (`tests/test_spike_conv.py` bounds it); they
do not depend on the number of threads.
"""

from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .build import build_library, source_text
from .native import FLAGS

__all__ = [
    "METHODS",
    "SpikeConv2d",
    "applies",
    "seq_spike_conv",
    "sparse_conv_enabled",
    "spike_conv2d",
    "spike_conv2d_weight",
    "spike_conv_unavailable_reason",
]

ENV = "HNN_BRIDGE_SPARSE_CONV"

#: Forward methods of ``spike_conv.c``: per output pixel from per-pixel lists of the
#: active inputs (``gather``, the default), or per active input into a channels-last
#: buffer (``scatter``: within 10-20% of gather, either way, up to a rate of about 0.04 on
#: 32 x 32 images, slower above it and on the 16 x 16 layer: 1.1-2x at its trained rates).
METHODS = {"gather": 0, "scatter": 1}
#: Images per partial sum of the weight gradient (partials are added in order, so the
#: result is the same on any number of threads).
BLOCK = 8
_I32 = 2**31 - 1

_lock = threading.Lock()
_state: dict[str, object] = {}
_pool: list[ThreadPoolExecutor] = []


def load(path) -> ctypes.CDLL:
    """The compiled ``spike_conv.c`` at ``path``, its functions' signatures declared."""
    lib = ctypes.CDLL(str(path))
    P, i64 = ctypes.c_void_p, ctypes.c_longlong
    lib.spike_conv_forward.argtypes = [P] * 4 + [i64] * 5 + [ctypes.c_int]
    lib.spike_conv_forward.restype = i64
    lib.spike_conv_weight_grad.argtypes = [P] * 3 + [i64] * 6
    lib.spike_conv_weight_grad.restype = i64
    return lib


def _library() -> Optional[ctypes.CDLL]:
    with _lock:
        if "lib" not in _state:
            try:
                lib = load(build_library(source_text("spike_conv.c"), FLAGS, "spike_conv"))
                _state["lib"], _state["why"] = lib, None
            except (RuntimeError, OSError) as err:
                _state["lib"], _state["why"] = None, str(err)
        return _state["lib"]  # type: ignore[return-value]


def spike_conv_unavailable_reason() -> Optional[str]:
    """Why the kernel cannot run here (no C compiler, compiling failed), or None."""
    return None if _library() is not None else str(_state["why"])


def _split(n: int, align: int = 1) -> list[tuple[int, int]]:
    """(start, count) of ``n`` images over the torch threads, starts multiples of ``align``."""
    workers = max(1, torch.get_num_threads())
    size = -(-max(n, 1) // workers)
    size = -(-size // align) * align
    return [(i, min(size, n - i)) for i in range(0, n, size)]


def _run(call: Callable[[int, int], int], parts: list[tuple[int, int]]) -> list[int]:
    if len(parts) == 1:
        return [call(*parts[0])]
    if not _pool or _pool[0]._max_workers < len(parts):  # noqa: SLF001 - sizing our own pool
        _pool[:] = [ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="hnn_bridge-spike-conv")]
    return [f.result() for f in [_pool[0].submit(call, i, m) for i, m in parts]]


def _check_tensor(name: str, what: str, t: Tensor, dims: int) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: {what} must be a tensor, got {type(t).__name__}")
    if t.dtype != torch.float32:
        raise TypeError(f"{name}: {what} must be float32, got {t.dtype}")
    if t.device.type != "cpu":
        raise ValueError(f"{name}: {what} must be on the CPU, got {t.device}")
    if t.dim() != dims:
        raise ValueError(f"{name}: {what} must have {dims} dimensions, got shape {tuple(t.shape)}")


def _library_or_raise(name: str) -> ctypes.CDLL:
    lib = _library()
    if lib is None:
        raise RuntimeError(f"{name}: the C kernel is not available: {_state['why']}")
    return lib


def _raise_non_binary(name: str, x: Tensor, status: int) -> None:
    if status == -2:
        raise MemoryError(f"{name}: out of memory for the kernel's work space")
    n, c, h, w = x.shape
    index = (status // (c * h * w), status // (h * w) % c, status // w % h, status % w)
    value = float(x[index])
    raise ValueError(f"{name}: x must hold spikes, only 0 and 1; x[{', '.join(map(str, index))}] = {value!r}")


def _check_sizes(name: str, cin: int, h: int, w: int, cout: int) -> None:
    if cin * 9 * cout > _I32 or cin * h * w > _I32 or (h + 2) * (w + 2) * max(cout, 1) > _I32:
        raise ValueError(f"{name}: sizes too large for the kernel's 32-bit offsets")


def spike_conv2d(
    x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, method: str = "gather"
) -> Tensor:
    """``F.conv2d(x, weight, bias, stride=1, padding=1)`` for a binary ``x`` [N, Cin, H, W]
    (every value 0 or 1) and a 3x3 ``weight`` [Cout, Cin, 3, 3], float32 on the CPU.

    Adds the weights of the active inputs only (``method``: a key of `METHODS`). Raises
    TypeError for another dtype, ValueError for other shapes or kernel sizes and for an
    ``x`` holding any value other than 0 and 1 (checked as the kernel reads it, at no
    extra pass), RuntimeError without a C compiler."""
    name = "spike_conv2d"
    _check_tensor(name, "x", x, 4)
    _check_tensor(name, "weight", weight, 4)
    if tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(
            f"{name} covers 3x3 kernels (stride 1, padding 1) only; weight has shape {tuple(weight.shape)}"
        )
    n, cin, h, w = x.shape
    cout = weight.shape[0]
    if weight.shape[1] != cin:
        raise ValueError(f"{name}: weight has {weight.shape[1]} input channels, x has {cin}")
    if bias is not None:
        _check_tensor(name, "bias", bias, 1)
        if bias.shape[0] != cout:
            raise ValueError(f"{name}: bias has {bias.shape[0]} values for {cout} output channels")
    if method not in METHODS:
        raise ValueError(f"{name}: method must be one of {sorted(METHODS)}, got {method!r}")
    _check_sizes(name, cin, h, w, cout)
    lib = _library_or_raise(name)
    out = torch.empty((n, cout, h, w), dtype=torch.float32)
    if out.numel() == 0:
        return out
    if cin == 0:
        return out.copy_((bias if bias is not None else torch.zeros(cout)).view(1, cout, 1, 1).expand_as(out))
    x = x.contiguous()
    wt = weight.detach().permute(1, 2, 3, 0).contiguous()
    b = None if bias is None else bias.detach().contiguous()
    image_in, image_out = cin * h * w, cout * h * w

    def call(i: int, m: int) -> int:
        return lib.spike_conv_forward(
            x.data_ptr() + 4 * i * image_in,
            wt.data_ptr(),
            None if b is None else b.data_ptr(),
            out.data_ptr() + 4 * i * image_out,
            m,
            cin,
            h,
            w,
            cout,
            METHODS[method],
        )

    parts = _split(n)
    for (i, _), status in zip(parts, _run(call, parts)):
        if status != -1:
            _raise_non_binary(name, x, status if status < 0 else status + i * image_in)
    return out


def spike_conv2d_weight(x: Tensor, grad_output: Tensor) -> Tensor:
    """``torch.nn.grad.conv2d_weight(x, weight.shape, grad_output, padding=1)`` of a 3x3
    convolution for a binary ``x`` [N, Cin, H, W] and ``grad_output`` [N, Cout, H, W],
    float32 on the CPU: [Cout, Cin, 3, 3], summing ``grad_output`` at the active inputs
    only. Errors as `spike_conv2d`."""
    name = "spike_conv2d_weight"
    _check_tensor(name, "x", x, 4)
    _check_tensor(name, "grad_output", grad_output, 4)
    n, cin, h, w = x.shape
    cout = grad_output.shape[1]
    if grad_output.shape[0] != n or tuple(grad_output.shape[2:]) != (h, w):
        raise ValueError(
            f"{name}: grad_output of shape {tuple(grad_output.shape)} does not match x of shape "
            f"{tuple(x.shape)} (stride 1, padding 1: same N, H, W)"
        )
    _check_sizes(name, cin, h, w, cout)
    lib = _library_or_raise(name)
    if n == 0 or cin * cout * h * w == 0:
        return torch.zeros((cout, cin, 3, 3), dtype=torch.float32)
    x = x.contiguous()
    g = grad_output.detach().contiguous()
    blocks = -(-n // BLOCK)
    partial = torch.empty((blocks, cin, 3, 3, cout), dtype=torch.float32)
    image_in, image_out, wsize = cin * h * w, cout * h * w, cin * 9 * cout

    def call(i: int, m: int) -> int:
        return lib.spike_conv_weight_grad(
            x.data_ptr() + 4 * i * image_in,
            g.data_ptr() + 4 * i * image_out,
            partial.data_ptr() + 4 * (i // BLOCK) * wsize,
            m,
            cin,
            h,
            w,
            cout,
            BLOCK,
        )

    parts = _split(n, BLOCK)
    for (i, _), status in zip(parts, _run(call, parts)):
        if status != -1:
            _raise_non_binary(name, x, status if status < 0 else status + i * image_in)
    total = partial[0].clone()
    for k in range(1, blocks):
        total += partial[k]
    return total.permute(3, 0, 1, 2).contiguous()


def sparse_conv_enabled() -> bool:
    """``HNN_BRIDGE_SPARSE_CONV=1``: spike-fed 3x3 convolutions run through `SpikeConv2d`
    (off otherwise: its sums run in another order than oneDNN's, so results are not bit for
    bit the dense path's)."""
    return os.environ.get(ENV) == "1"


class SpikeConv2d(torch.autograd.Function):
    """``F.conv2d(x, weight, bias, padding=1)`` of a binary ``x`` [N, Cin, H, W] and a 3x3
    ``weight``: forward `spike_conv2d`, backward the input gradient dense
    (``torch.nn.grad.conv2d_input``, only where needed), the weight gradient
    `spike_conv2d_weight`, the bias gradient ``grad_output.sum((0, 2, 3))``."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return spike_conv2d(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.nn.grad.conv2d_input(x.shape, weight, grad, padding=1)
        if ctx.needs_input_grad[1]:
            gw = spike_conv2d_weight(x, grad)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum((0, 2, 3))
        return gx, gw, gb


def _conv_fits(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and tuple(conv.kernel_size) == (3, 3)
        and tuple(conv.stride) == (1, 1)
        and conv.padding in ((1, 1), "same")
        and tuple(conv.dilation) == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def applies(x: Tensor, conv: nn.Module) -> bool:
    """`SpikeConv2d` can stand for ``conv`` on x [T, B, Cin, H, W] (the caller knows x is
    binary): exactly ``nn.Conv2d`` 3x3, stride 1, padding 1, dilation 1, one group, zero
    padding; x, weight and bias float32 on the CPU; no autocast, tracing or compiling;
    the kernel available."""
    if not _conv_fits(conv) or x.dim() != 5 or x.shape[2] != conv.in_channels:
        return False
    for t in (x, conv.weight, conv.bias):
        if t is not None and (t.dtype != torch.float32 or t.device.type != "cpu"):
            return False
    if torch.is_autocast_enabled("cpu") or torch.jit.is_scripting() or torch.jit.is_tracing():
        return False
    if torch.compiler.is_compiling():
        return False
    return spike_conv_unavailable_reason() is None


def seq_spike_conv(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """``SeqOp(conv)(x)`` for binary spikes x [T, B, Cin, H, W], through `SpikeConv2d`."""
    steps, batch = x.shape[:2]
    y = SpikeConv2d.apply(x.reshape(steps * batch, *x.shape[2:]), conv.weight, conv.bias)
    return y.reshape(steps, batch, *y.shape[1:])
