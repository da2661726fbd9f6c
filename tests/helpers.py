"""Small helpers shared by the parity tests."""

import torch

SYNAPSES = ["dual_exp", "first_order", "none"]


def rel_err(a, b) -> float:
    """max |a - b| / max |b| (tensors or array-likes)."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def currents(T, *shape, seed=0, scale=1.5, shift=0.3):
    """Reproducible random input currents [T, *shape] ~ N(shift, scale^2)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(T, *shape, generator=gen) * scale + shift
