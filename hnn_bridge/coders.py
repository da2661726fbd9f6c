"""Coders (§3.2): add the time axis between the last artificial and the first spiking layer.

Each maps the last AL's output a [B, ...] to a time-first train [T, B, ...] and declares
whether gradients pass through it (simultaneous training needs that, §3.1).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn


class Coder(nn.Module):
    """Base class: ``steps`` is T; ``width_factor`` is how many values per coded unit the
    last AL must produce (2 for Gaussian: mu and ln sigma)."""

    name: ClassVar[str]
    differentiable: ClassVar[bool]
    binary: ClassVar[bool] = False  # emits spikes (0/1) rather than real values
    width_factor: ClassVar[int] = 1

    def __init__(self, steps: int) -> None:
        super().__init__()
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"coder: steps (T) must be an integer >= 1, got {steps!r}")
        self.steps = steps

    def extra_repr(self) -> str:
        return f"steps={self.steps}"


class DuplicateCoder(Coder):
    """§3.2.1: a[t] = a for every t. Returns a broadcast view (no copy)."""

    name, differentiable = "duplicate", True

    def forward(self, a: Tensor) -> Tensor:
        return a.unsqueeze(0).expand(self.steps, *a.shape)


class GaussianCoder(Coder):
    """§3.2.2, eq. 7: a[t] = mu + sigma * eps_t, eps_t ~ N(0, 1) drawn per step.

    The input holds (mu, ln sigma) stacked along dim 1 (features or channels), so the
    last AL has twice the units; the reparameterization keeps it differentiable.
    """

    name, differentiable, width_factor = "gaussian", True, 2

    def forward(self, a: Tensor) -> Tensor:
        if a.shape[1] % 2:
            raise ValueError(
                f"gaussian coder: dim 1 of its input must hold (mu, ln sigma), an even size; got {a.shape[1]}"
            )
        mu, log_sigma = a.chunk(2, dim=1)
        eps = torch.randn((self.steps, *mu.shape), dtype=mu.dtype, device=mu.device)
        return mu + torch.exp(log_sigma) * eps


class MuActivation(nn.Module):
    """The ALs' activation (and dropout, where the recipe has it) on mu of a (mu, ln sigma)
    stack along dim 1; ln sigma stays linear (it must be free to go negative) and is never
    dropped (a zeroed ln sigma is sigma = 1, and inverted dropout's 1 / (1 - p) would raise
    sigma to that power).

    mu plays the part that the AL output a plays for duplicate coding (eq. 7 against
    §3.2.1), so it is an activation like every other AL output. Without it the last AL
    is linear: A784-A500-S10 with Gaussian coding then collapses to a linear map into the
    output neurons and stops near a linear classifier (about 92% on MNIST).
    """

    def __init__(self, activation: nn.Module) -> None:
        super().__init__()
        self.activation = activation

    def forward(self, a: Tensor) -> Tensor:
        mu, log_sigma = a.chunk(2, dim=1)
        return torch.cat([self.activation(mu), log_sigma], dim=1)


class PoissonCoder(Coder):
    """§3.2.3: a[t] ~ Bernoulli(rate) per step and element; rates must lie in [0, 1]."""

    name, differentiable, binary = "poisson", False, True

    def forward(self, rates: Tensor) -> Tensor:
        lo, hi = torch.aminmax(rates.detach())
        if lo < 0 or hi > 1:
            raise ValueError(
                f"poisson coder: rates must lie in [0, 1], got values in [{lo.item():.4g}, {hi.item():.4g}]; "
                "use sigmoid artificial layers or raw pixels in [0, 1]"
            )
        draws = torch.rand((self.steps, *rates.shape), dtype=rates.dtype, device=rates.device)
        return (draws < rates.detach()).to(rates.dtype)


#: the coders by name (§3.2), each defined once, as its class
_CLASSES: dict[str, type[Coder]] = {c.name: c for c in (DuplicateCoder, GaussianCoder, PoissonCoder)}
#: the coder names that `hnn_bridge.build`, recipes and the command line accept
CODERS: tuple[str, ...] = tuple(_CLASSES)


def make_coder(name: str, steps: int) -> Coder:
    """The coder called ``name`` (one of `CODERS`) for T = ``steps``."""
    if name not in _CLASSES:
        raise ValueError(f"unknown coder {name!r}; choose one of {', '.join(CODERS)}")
    return _CLASSES[name](steps)
