"""The architecture notation of the paper's Tables 1-3 (e.g. ``A32C3-A32C3-S64C3-P2-S512-S10``).

Tokens, joined by ``-``: ``An``/``Sn`` a dense artificial/spiking layer of n units,
``AnCk``/``SnCk`` a k x k convolution with n channels (stride 1, padding k//2), ``Pk`` a
k x k max pooling. In an all-dense (MLP) spec the first token is the input layer: it has
no weights and its width must equal the flattened input (``A784-A500-A10`` is the MLP
784 -> 500 -> 10). In a spec with convolutions every token is a layer. Artificial layers
come first, spiking layers last; the coder sits between them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal, Sequence

from .errors import ArchError

_LAYER = re.compile(r"^([AS])(\d+)(?:C(\d+))?$")
_POOL = re.compile(r"^P(\d+)$")


@dataclass(frozen=True)
class LayerSpec:
    """One token of an architecture string.

    ``op`` is ``"input"`` (the weightless first token of an MLP), ``"dense"``, ``"conv"``
    or ``"pool"``; ``kind`` is ``"A"`` or ``"S"`` (pooling inherits the kind of the
    layer before it); ``width`` is units, channels, or the pooling size.
    """

    token: str
    kind: Literal["A", "S"]
    op: Literal["input", "dense", "conv", "pool"]
    width: int
    kernel: int | None = None

    @property
    def spiking(self) -> bool:
        return self.kind == "S"

    @property
    def has_weights(self) -> bool:
        return self.op in ("dense", "conv")


def _token(raw: str, text: str) -> tuple[str | None, str, int, int | None]:
    if raw == "":
        raise ArchError(f"empty layer token in {text!r}: two '-' in a row, or a '-' at an end")
    pool = _POOL.match(raw)
    if pool:
        size = int(pool.group(1))
        if size < 1:
            raise ArchError(f"pooling token {raw!r} has size 0; use e.g. 'P2'")
        return None, "pool", size, None
    m = _LAYER.match(raw)
    if not m:
        if re.match(r"^[AS]\d+C$", raw):
            raise ArchError(f"layer token {raw!r} has no kernel size after 'C' (write e.g. {raw + '3'!r})")
        raise ArchError(
            f"unknown layer token {raw!r}: expected An or Sn (dense), AnCk or SnCk (convolution) or Pk "
            "(pooling)"
        )
    kind, width, kernel = m.group(1), int(m.group(2)), m.group(3)
    if width < 1:
        raise ArchError(f"layer token {raw!r} has width 0; widths must be at least 1")
    if kernel is None:
        return kind, "dense", width, None
    k = int(kernel)
    if k < 1 or k % 2 == 0:
        raise ArchError(
            f"layer token {raw!r}: the kernel size must be odd (padding k//2 keeps the image size)"
        )
    return kind, "conv", width, k


def parse_arch(text: str, input_shape: Sequence[int] | None = None) -> list[LayerSpec]:
    """Parse an architecture string into layer specs.

    With ``input_shape`` (C, H, W) the MLP input width is checked against the data.
    Malformed text raises `ArchError` quoting the offending token.
    """
    if not isinstance(text, str) or not text.strip():
        raise ArchError(f"empty architecture string {text!r}; write e.g. 'A784-A500-S10'")
    text = text.strip()
    parsed = [(raw, *_token(raw, text)) for raw in text.split("-")]
    is_mlp = all(op == "dense" for _, _, op, _, _ in parsed if op != "pool")
    specs: list[LayerSpec] = []
    seen_spiking = seen_dense = False
    for i, (raw, kind, op, width, kernel) in enumerate(parsed):
        if op == "pool":
            if not specs:
                raise ArchError(f"pooling token {raw!r} cannot come first: it needs a convolution before it")
            if is_mlp or seen_dense:
                raise ArchError(
                    f"pooling token {raw!r} follows a dense layer: pooling is only for convolutions"
                )
            specs.append(LayerSpec(raw, specs[-1].kind, "pool", width))
            continue
        if kind == "A" and seen_spiking:
            raise ArchError(
                f"{raw!r} follows a spiking layer: artificial layers must all come before the "
                "spiking layers (ALs, then the coder, then SLs)"
            )
        if op == "conv" and seen_dense:
            raise ArchError(f"convolution {raw!r} follows a dense layer: convolutions must come first")
        seen_spiking |= kind == "S"
        if op == "dense":
            if is_mlp and i == 0:
                op = "input"
            else:
                seen_dense = True
        specs.append(LayerSpec(raw, kind, op, width, kernel))  # type: ignore[arg-type]
    if is_mlp and len(specs) < 2:
        raise ArchError(f"MLP spec {text!r} needs an input layer and an output layer, e.g. 'A784-S10'")
    if specs[-1].op != "dense":
        raise ArchError(f"the last token {specs[-1].token!r} must be a dense layer giving the class scores")
    if input_shape is not None and is_mlp:
        flat = math.prod(input_shape)
        if specs[0].width != flat:
            shape = "x".join(str(s) for s in input_shape)
            raise ArchError(
                f"input layer {specs[0].token!r} has {specs[0].width} units but the input {shape} "
                f"has {flat} values; write {specs[0].kind}{flat}"
            )
    return specs


def is_mlp(specs: Sequence[LayerSpec]) -> bool:
    return specs[0].op == "input"


def last_al(specs: Sequence[LayerSpec]) -> int:
    """Index of the last AL (an A token that is not a pooling), the one that feeds the coder; -1 if none."""
    return max((i for i, s in enumerate(specs) if s.kind == "A" and s.op != "pool"), default=-1)


def format_arch(specs: Sequence[LayerSpec]) -> str:
    return "-".join(s.token for s in specs)


def ann_twin(specs: Sequence[LayerSpec]) -> str:
    """The pure ANN of the same widths (every S made A): the network pre-trained for
    separate learning (§3.1)."""
    return "-".join("A" + s.token[1:] if s.kind == "S" and s.op != "pool" else s.token for s in specs)
