"""`MaxPool2d`: torch's max pooling, with a native CPU path for the paper's P2 token.

A 2x2, stride-2 pool of a float32 CPU tensor runs as one C pass
(`hnn_bridge.kernels.native`): the same outputs and the same gradients as
`torch.nn.functional.max_pool2d` bit for bit (the first maximum of a window in row-major
order takes the gradient, as torch's index does; `tests/test_native.py`), but it saves a
uint8 winner per output instead of an int64 index and reads its input once. Pooling
spikes ``[T*B, C, H, W]`` was 5-8% of a spiking CNN's training step with torch's kernel.
Every other case (CUDA, other dtypes, sizes, padding, ``return_indices``) is
`torch.nn.MaxPool2d` itself.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .kernels.native import native_enabled, native_maxpool2_backward, native_maxpool2_forward

__all__ = ["MaxPool2d"]


class _MaxPool2x2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        out, idx = native_maxpool2_forward(x)
        ctx.save_for_backward(idx)
        ctx.shape = x.shape
        return out

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        (idx,) = ctx.saved_tensors
        return native_maxpool2_backward(g, idx, ctx.shape)


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


class MaxPool2d(nn.MaxPool2d):
    """`torch.nn.MaxPool2d` (same arguments and results) with the native 2x2 path."""

    def _native(self, x: Tensor) -> bool:
        return (
            _pair(self.kernel_size) == (2, 2)
            and _pair(self.stride) == (2, 2)
            and _pair(self.padding) == (0, 0)
            and _pair(self.dilation) == (1, 1)
            and not self.ceil_mode
            and not self.return_indices
            and x.dim() in (3, 4)
            and x.is_contiguous()
            and native_enabled(x)
        )

    def forward(self, x: Tensor) -> Tensor:
        if self._native(x):
            return _MaxPool2x2.apply(x)
        return super().forward(x)
