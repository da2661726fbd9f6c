"""Mixed precision: ``--precision 32|bf16|16`` as `torch.autocast` plus, for fp16 on CUDA,
a `torch.amp.GradScaler`.

Under autocast the weight ops (convolutions, linear layers) run in the low precision;
batch norm and the loss stay in float32 (autocast's own lists), and the IIR neuron
computes its state (P, R, V) and its surrogate gradient in float32 whatever its input
dtype (`hnn_bridge.functional.iir`: a half-precision input is widened, the spikes,
exactly 0 or 1, are returned in the input's dtype). So low precision only enters through
the currents that the weight ops deliver; what that does to the spikes is bounded by
`tests/test_precision.py`.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, Optional

import torch

from .errors import ConfigError

__all__ = ["PRECISIONS", "autocast", "check_precision", "grad_scaler", "low_precision_dtype"]

#: ``32``: float32 throughout; ``bf16``: bfloat16 autocast (CPU with AVX-512 BF16 or AMX,
#: or CUDA); ``16``: float16 autocast with a GradScaler (CUDA only).
PRECISIONS = ("32", "bf16", "16")
_DTYPES = {"bf16": torch.bfloat16, "16": torch.float16}


def low_precision_dtype(precision: str) -> Optional[torch.dtype]:
    """The autocast dtype of ``precision`` (None for ``32``)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return _DTYPES.get(precision)


def cpu_has_bf16() -> bool:
    """The processor has native bfloat16 arithmetic (AVX-512 BF16 or AMX), which oneDNN
    uses for bf16 convolutions and matrix products; without it they are emulated, slower
    than float32."""
    probes = (
        getattr(torch.cpu, "_is_avx512_bf16_supported", None),
        getattr(torch.cpu, "_is_amx_tile_supported", None),
    )
    return any(p is not None and bool(p()) for p in probes)


def check_precision(precision: str, device: torch.device | str) -> None:
    """Raise a `ConfigError` naming what works when ``device`` cannot do ``precision``."""
    dtype = low_precision_dtype(precision)
    if dtype is None:
        return
    dev = torch.device(device)
    if dev.type == "cpu":
        if precision == "16":
            raise ConfigError(
                "precision 16 (float16 with a GradScaler) is for CUDA devices; "
                "on the CPU use --precision bf16 (where the processor supports it) or 32"
            )
        if not cpu_has_bf16():
            raise ConfigError(
                "precision bf16 needs a CPU with AVX-512 BF16 or AMX instructions, which this one "
                "lacks (bf16 would be emulated, slower than float32); use --precision 32, or bf16 "
                "or 16 on a CUDA device"
            )
    elif dev.type == "cuda":
        if precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            raise ConfigError(
                f"precision bf16: {torch.cuda.get_device_name(dev)} has no bfloat16 support; "
                "use --precision 16 or 32"
            )
    else:
        raise ConfigError(f"precision {precision} is not supported on {dev.type} devices; use --precision 32")


def autocast(precision: str, device: torch.device | str) -> ContextManager[object]:
    """`torch.autocast` for ``precision`` on ``device`` (a no-op context for ``32``)."""
    dtype = low_precision_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device | str) -> Optional["torch.amp.GradScaler"]:
    """A GradScaler for float16 on CUDA (its small exponent range underflows gradients),
    None otherwise (bfloat16 has float32's exponent range and needs none)."""
    if precision == "16" and torch.device(device).type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None
