"""What every suite of `hnn-bridge bench` shares: the contenders (our backends next to
SpikingJelly's and snnTorch's stock neurons), their result rows with the ratio columns,
the seed, and the training step that the epoch and CNN suites time."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backends import BACKENDS

__all__ = [
    "FUSED",
    "SJ",
    "SNNTORCH",
    "TARGETS",
    "add_ratios",
    "available",
    "contender_names",
    "ratio_targets",
    "result_row",
    "seed_all",
    "train_step",
]

#: The baseline tags: SpikingJelly's stock ``LIFNode`` and snnTorch's stock ``Leaky``.
SJ = "sj"
SNNTORCH = "snntorch"
#: Our backends that run the fused torch Function (the targets are about these).
FUSED = ("reference", "spikingjelly")


def result_row(name: str, group: str, **extra: Any) -> dict[str, Any]:
    """One contender's row: ``group`` is ``"ours"``, ``"ablation"`` or ``"baseline"``."""
    return {"name": name, "group": group, **extra}


def available(backend: str, device: torch.device) -> Optional[str]:
    """Why ``backend`` cannot run here, or None."""
    if backend == "spikingjelly-cupy":
        if device.type != "cuda":
            return "needs CUDA"
        try:
            from hnn_bridge.adapters.cupy_kernels import cupy_unavailable_reason

            return cupy_unavailable_reason()
        except Exception as err:  # noqa: BLE001 - reported, not raised
            return str(err)
    return None


def contender_names(backends: Sequence[str], device: torch.device) -> tuple[list[str], list[dict[str, Any]]]:
    """The backends that can run on ``device``, and ``{"backend", "reason"}`` for the others.

    Raises:
        ValueError: a backend not in `hnn_bridge.backends.BACKENDS`.
    """
    keep, skipped = [], []
    for b in backends:
        if b not in BACKENDS:
            raise ValueError(f"unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
        why = available(b, device)
        if why:
            skipped.append({"backend": b, "reason": why})
        else:
            keep.append(b)
    return keep, skipped


def add_ratios(rows: list[dict[str, Any]], key: str, suffix: str = "") -> None:
    """Add ``ratio_sj`` / ``ratio_snntorch`` (this row's ``key`` over the baseline's) to our
    rows; with ``suffix``, ``ratio_sj_<suffix>`` / ``ratio_snntorch_<suffix>``. None where
    there is no such baseline, its value is 0, or either value is None (not measured)."""
    base = {r["baseline"]: r for r in rows if r["group"] == "baseline"}
    name = f"_{suffix}" if suffix else ""
    for r in rows:
        if r["group"] == "baseline":
            continue
        for tag in (SJ, SNNTORCH):
            mine, theirs = _get(r, key), None if tag not in base else _get(base[tag], key)
            r[f"ratio_{tag}{name}"] = mine / theirs if mine is not None and theirs else None


def _get(row: dict[str, Any], key: str) -> Optional[float]:
    value = row
    for part in key.split("."):
        value = value[part]
    return None if value is None else float(value)


def seed_all(seed: int) -> None:
    """Seed torch's CPU generator and, where there is one, every CUDA device's."""
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor) -> tuple[float, int]:
    """One step of `hnn_bridge.training.loop.train_model`'s epoch loop (same calls):
    forward, cross entropy, zero_grad, backward, Adam step; returns (loss, strict hits)."""
    from ..training.loop import score_batch

    out = model(x)
    loss = F.cross_entropy(out, y)
    value = float(loss.detach())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return value, score_batch(out.detach(), y)[0]


#: The targets of issue 5 (ours / theirs, medians, same run): suite -> [(baseline, limit)].
TARGETS = {
    "neuron": [(SJ, 1.0), (SNNTORCH, 0.7)],
    "epoch": [(SNNTORCH, 1.0 / 3.0)],
}


def ratio_targets(suite: str, rows: list[dict[str, Any]], shape_note: str) -> list[dict[str, Any]]:
    """Each of our fused rows' ratio against each `TARGETS` limit of ``suite``, met or not."""
    out = []
    for tag, limit in TARGETS.get(suite, []):
        for r in rows:
            if r["group"] != "ours" or r.get("backend") not in FUSED or r.get(f"ratio_{tag}") is None:
                continue
            out.append(
                {
                    "contender": r["name"],
                    "versus": tag,
                    "ratio": r[f"ratio_{tag}"],
                    "limit": limit,
                    "met": r[f"ratio_{tag}"] <= limit,
                    "at": shape_note,
                }
            )
    return out
