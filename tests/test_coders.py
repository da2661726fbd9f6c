"""Coders (§3.2): duplicate, Gaussian (eq. 7), Poisson."""

import pytest
import torch

from hnn_bridge import DuplicateCoder, GaussianCoder, PoissonCoder, make_coder


def test_flags():
    assert DuplicateCoder.differentiable and GaussianCoder.differentiable and not PoissonCoder.differentiable
    assert PoissonCoder.binary and not DuplicateCoder.binary
    assert GaussianCoder.width_factor == 2


def test_duplicate_repeats_the_values_without_copying():
    a = torch.randn(3, 5, requires_grad=True)
    seq = DuplicateCoder(7)(a)
    assert seq.shape == (7, 3, 5) and all(torch.equal(s, a) for s in seq)
    assert seq.stride(0) == 0  # a broadcast view
    seq.sum().backward()
    assert torch.equal(a.grad, torch.full_like(a, 7.0))


def test_gaussian_reparameterization_statistics_and_gradients():
    torch.manual_seed(0)
    mu = torch.tensor([[0.5, -1.0]])
    log_sigma = torch.log(torch.tensor([[0.2, 1.5]]))
    a = torch.cat([mu, log_sigma], dim=1).requires_grad_()
    seq = GaussianCoder(20000)(a)
    assert seq.shape == (20000, 1, 2)
    assert torch.allclose(seq.mean(0), mu, atol=0.03)
    assert torch.allclose(seq.std(0), torch.tensor([[0.2, 1.5]]), rtol=0.03)
    assert not torch.equal(seq[0], seq[1])  # eps drawn per step
    seq.mean().backward()
    assert torch.allclose(a.grad[0, :2], torch.full((2,), 0.5))  # d mean / d mu
    assert a.grad[0, 2:].abs().sum() > 0  # gradient reaches ln sigma


def test_gaussian_needs_an_even_width():
    with pytest.raises(
        ValueError,
        match=r"gaussian coder: dim 1 of its input must hold \(mu, ln sigma\), an even size; got 3",
    ):
        GaussianCoder(2)(torch.zeros(1, 3))


def test_poisson_firing_rate_matches_the_rate():
    torch.manual_seed(0)
    rates = torch.tensor([[0.0, 0.05, 0.3, 0.77, 1.0]])
    seq = PoissonCoder(40000)(rates)
    assert set(seq.unique().tolist()) <= {0.0, 1.0}
    empirical = seq.mean(0)
    # binomial std for n = 40000 is at most 0.0025; allow 4 standard deviations
    assert torch.allclose(empirical, rates, atol=0.01)
    assert empirical[0, 0] == 0.0 and empirical[0, -1] == 1.0


def test_poisson_rejects_rates_outside_unit_interval():
    with pytest.raises(ValueError) as err:
        PoissonCoder(3)(torch.tensor([0.2, 1.5]))
    assert str(err.value) == (
        "poisson coder: rates must lie in [0, 1], got values in [0.2, 1.5]; "
        "use sigmoid artificial layers or raw pixels in [0, 1]"
    )


def test_make_coder_and_steps_validation():
    assert isinstance(make_coder("gaussian", 3), GaussianCoder)
    with pytest.raises(ValueError, match="unknown coder 'rank'; choose one of duplicate, gaussian, poisson"):
        make_coder("rank", 3)
    with pytest.raises(ValueError, match=r"coder: steps \(T\) must be an integer >= 1, got 0"):
        DuplicateCoder(0)
