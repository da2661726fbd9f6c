"""Tests aimed at the mutants that survived the suite (issue 32), each against the
independent reference of `iir_reference` (which does not import the library).

- the spike rule U(0) = 1 (eq. 1f) on the fused ATen path (float64, and float32 with
  ``HNN_BRIDGE_NATIVE=0``), in the native C loop and in the CUDA kernel source's C build,
  with inputs that put V *exactly* on V_th;
- snnTorch's ``beta`` reports lambda (eq. 1a), not theta (eq. 1c);
- ``init_leaky()`` / ``init_iirleaky()`` / ``reset_mem()`` clear the held state;
- Gaussian coding (eq. 7) draws its noise independently per sample, unit and step;
- the core (values, V and gradients) against the float64 reference.
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from helpers import SYNAPSES
from hnn_bridge.adapters.cupy_kernels import compile_c_kernels
from hnn_bridge.adapters.snntorch import IIRLeaky
from iir_reference import Neuron, exact_hits, hit_threshold, random_hits, run

from hnn_bridge import GaussianCoder, IIRNeuron, IIRParams
from hnn_bridge.functional import Coefficients, iir_multistep, iir_spikes
from hnn_bridge.kernels import native

pytestmark = pytest.mark.usefixtures("one_thread_here")


@pytest.fixture(scope="module")
def one_thread_here():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _dyadic_case() -> tuple[Neuron, torch.Tensor, list[tuple[int, int]]]:
    """Synapse 'none', lam = theta = 1/2, V_th = 1, inputs in eighths: every product and
    sum is exact in any float format, and V lands on V_th exactly at the listed (t, i)."""
    n = Neuron(synapse="none", lam=0.5, theta=0.5, v_threshold=1.0)
    x = torch.tensor(
        [
            [1.0, 0.875, 0.5, 1.125],  # V = 1 (hit), 0.875, 0.5, 1.125
            [0.5, 0.5625, 0.75, 0.25],  # V = 0.5 + 0.5 - 1 = 0 ; 0.4375 + 0.5625 = 1 (hit) ; 1.0 (hit); ...
            [1.5, 0.0, 0.0, 0.0],  # R = 0.5*R + O: V = 0 + 1.5 - 0.5 = 1 (hit), ...
        ],
        dtype=torch.float64,
    )
    return n, x, [(0, 0), (1, 1), (1, 2), (2, 0)]


def test_the_dyadic_case_puts_v_exactly_on_the_threshold():
    n, x, hits = _dyadic_case()
    spikes, volts, _ = run(x, n)
    assert [tuple(i) for i in torch.nonzero(volts == 1.0).tolist()] == hits
    assert all(spikes[t, i] == 1.0 for t, i in hits)


def _aten_paths(x: torch.Tensor, params: IIRParams) -> dict[str, torch.Tensor]:
    """Spikes of every entry point of the fused ATen path (and V where it returns it)."""
    out = {
        "iir_multistep": iir_multistep(x, params)[0],
        "iir_spikes": iir_spikes(x, params),
        "IIRNeuron": IIRNeuron(**_kwargs(params))(x),
    }
    xg = x.clone().requires_grad_()
    out["iir_multistep+grad"] = iir_multistep(xg, params)[0].detach()
    out["iir_spikes+grad"] = iir_spikes(xg, params).detach()
    const = x[0].unsqueeze(0).expand(x.shape)  # duplicate-coded input: its own branch
    out["constant"] = iir_spikes(const, params)
    out["constant+grad"] = iir_spikes(
        const.clone().requires_grad_()[0].unsqueeze(0).expand(x.shape), params
    ).detach()
    return out


def _kwargs(params: IIRParams) -> dict:
    return params.as_dict()


def test_aten_path_fires_at_exactly_the_threshold_in_float64():
    n, x, hits = _dyadic_case()
    params = IIRParams(**n.kwargs)
    ref = run(x, n)[0]
    ref_const = run(x[0].unsqueeze(0).expand(x.shape), n)[0]
    assert exact_hits(x[0].unsqueeze(0).expand(x.shape), n).any()
    for name, spikes in _aten_paths(x, params).items():
        assert spikes.dtype == torch.float64
        expected = ref_const if name.startswith("constant") else ref
        assert torch.equal(spikes, expected), name
    assert torch.equal(iir_multistep(x, params)[1], run(x, n)[1])


def test_aten_path_fires_at_exactly_the_threshold_in_float32_without_the_native_loop(monkeypatch):
    monkeypatch.setenv("HNN_BRIDGE_NATIVE", "0")
    assert native.native_unavailable_reason() == "disabled by HNN_BRIDGE_NATIVE=0"
    n, x, _ = _dyadic_case()
    x = x.float()
    params = IIRParams(**n.kwargs)
    ref, ref_const = run(x, n)[0], run(x[0].unsqueeze(0).expand(x.shape), n)[0]
    for name, spikes in _aten_paths(x, params).items():
        assert torch.equal(spikes, ref_const if name.startswith("constant") else ref), name


@pytest.mark.parametrize("synapse", SYNAPSES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("native_loop", ["1", "0"])
def test_fused_path_fires_on_inputs_bent_onto_the_threshold(monkeypatch, synapse, dtype, native_loop):
    """Non-dyadic coefficients: inputs moved by ulps until the reference V == V_th."""
    monkeypatch.setenv("HNN_BRIDGE_NATIVE", native_loop)
    n = Neuron(synapse=synapse, tau_m=3.0, tau_s=1.5, v_threshold=0.9)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(9, 64, generator=gen, dtype=dtype) + 0.4
    x = hit_threshold(x, n, random_hits(x.shape, 0.3, gen))
    assert int(exact_hits(x, n).sum()) >= 20
    spikes, volts, _ = run(x, n)
    params = IIRParams(**n.kwargs)
    for name, out in _aten_paths(x, params).items():
        if not name.startswith("constant"):
            assert torch.equal(out, spikes), name
    assert torch.equal(iir_multistep(x, params)[1], volts)


@pytest.fixture(scope="module")
def c_kernels(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build the kernel source as C")
    return compile_c_kernels(str(tmp_path_factory.mktemp("iir_c_mutants")))


@pytest.mark.parametrize("synapse", SYNAPSES)
def test_c_build_of_the_cuda_kernel_fires_at_exactly_the_threshold(c_kernels, synapse):
    n = Neuron(synapse=synapse, tau_m=3.0, tau_s=1.5, v_threshold=0.9, theta=0.5)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(8, 3, 21, generator=gen) + 0.4
    x = hit_threshold(x, n, random_hits(x.shape, 0.3, gen))
    assert int(exact_hits(x, n).sum()) >= 20
    spikes, volts, state = run(x, n)
    k = Coefficients.of(IIRParams(**n.kwargs))
    c_spikes, c_volts, p_last, p_prev, r_last = c_kernels.forward(x.numpy(), k)
    np.testing.assert_array_equal(c_spikes, spikes.numpy())
    np.testing.assert_array_equal(c_volts, volts.numpy())
    for c, r in zip((p_last, p_prev, r_last), state[:3]):
        np.testing.assert_array_equal(c, r.numpy())


def test_c_build_of_the_cuda_kernel_on_the_dyadic_case(c_kernels):
    n, x, hits = _dyadic_case()
    x = x.float()
    c_spikes = c_kernels.forward(np.ascontiguousarray(x.numpy()), Coefficients.of(IIRParams(**n.kwargs)))[0]
    np.testing.assert_array_equal(c_spikes, run(x, n)[0].numpy())
    assert all(c_spikes[t, i] == 1.0 for t, i in hits)


# ------------------------------------------------------------------ snnTorch adapter


def test_snntorch_beta_reports_lambda_not_theta():
    lif = IIRLeaky(beta=0.8, synapse="none", reset_decay=0.0)
    assert lif.beta.item() == pytest.approx(0.8) and lif.params.lam == 0.8 and lif.params.theta == 0.0
    lif = IIRLeaky(membrane_decay=0.3, reset_decay=0.7, threshold=1.25)
    assert lif.beta.item() == pytest.approx(0.3) and lif.threshold.item() == 1.25
    lif = IIRLeaky(tau_m=2.0, reset_decay=1.0)  # lambda from tau_m
    assert lif.beta.item() == pytest.approx(math.exp(-0.5))


def _drive(lif: IIRLeaky, x: torch.Tensor) -> None:
    for x_t in x:
        lif(x_t)


@pytest.mark.parametrize("clear", ["init_leaky", "init_iirleaky", "reset_mem"])
def test_snntorch_init_clears_the_held_state(clear):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, 5, generator=gen) + 0.8
    lif = IIRLeaky(synapse="dual_exp", reset_decay=0.5)
    _drive(lif, x)
    assert all(bool(s.abs().sum() > 0) for s in lif.state)  # the held state is not zero
    returned = getattr(lif, clear)()
    for s in lif.state:
        assert torch.equal(s, torch.zeros(4, 5))
    if clear == "init_iirleaky":
        assert all(torch.equal(s, torch.zeros(4, 5)) for s in returned)
    else:
        assert torch.equal(returned, torch.zeros(4, 5))
    # lif(x) without mem continues from the held state, which must be the fresh one
    spikes = torch.stack([lif(x_t)[0] for x_t in x])
    fresh = IIRLeaky(synapse="dual_exp", reset_decay=0.5)
    assert torch.equal(spikes, torch.stack([fresh(x_t)[0] for x_t in x]))
    ref = run(x.double(), Neuron(synapse="dual_exp", theta=0.5))[0]
    assert torch.equal(spikes.double(), ref)


def test_snntorch_init_leaky_then_explicit_mem_restarts_from_zero():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, 7, generator=gen) + 0.8
    lif = IIRLeaky()
    _drive(lif, x)
    mem = lif.init_leaky()
    out = []
    for x_t in x:
        spk, mem = lif(x_t, mem)
        out.append(spk)
    assert torch.equal(torch.stack(out).double(), run(x.double(), Neuron())[0])


# ------------------------------------------------------------------ Gaussian coding (eq. 7)


def test_gaussian_noise_is_independent_per_sample_unit_and_step():
    torch.manual_seed(1)
    batch, units, steps = 6, 3, 4000
    mu = torch.tensor([0.5, -1.0, 2.0]).expand(batch, units)
    log_sigma = torch.log(torch.tensor([0.2, 1.5, 1.0])).expand(batch, units)
    seq = GaussianCoder(steps)(torch.cat([mu, log_sigma], dim=1))
    assert seq.shape == (steps, batch, units)
    eps = (seq - mu) / log_sigma.exp()  # the standard normal draws
    # every sample of the batch has its own noise, with the statistics of N(0, 1)
    assert torch.allclose(eps.mean(0), torch.zeros(batch, units), atol=0.06)
    assert torch.allclose(eps.std(0), torch.ones(batch, units), atol=0.05)
    flat = eps.reshape(steps, batch * units).T  # one row per (sample, unit)
    corr = torch.corrcoef(flat)
    off = corr - torch.diag(torch.diag(corr))
    assert off.abs().max() < 0.08  # 4000 draws: |r| of independent rows is ~0.016
    # and per step: consecutive steps are not correlated either
    lag = torch.corrcoef(torch.stack([eps[:-1].flatten(), eps[1:].flatten()]))[0, 1]
    assert abs(lag) < 0.03


# ------------------------------------------------------------------ the core against float64


@pytest.mark.parametrize("synapse", SYNAPSES)
@pytest.mark.parametrize("lam,theta", [(None, None), (0.0, 0.5), (1.0, 0.0), (0.7, 1.0)])
@pytest.mark.parametrize("detach_reset", [False, True])
def test_core_values_and_gradients_equal_the_independent_float64_reference(synapse, lam, theta, detach_reset):
    n = Neuron(
        synapse=synapse,
        lam=lam,
        theta=theta,
        v_threshold=1.1,
        sigma=0.5,
        tau_m=5.0,
        tau_s=2.0,
        detach_reset=detach_reset,
    )
    gen = torch.Generator().manual_seed(17)
    x = torch.randn(12, 3, 8, generator=gen, dtype=torch.float64) * 1.2 + 0.6
    x = hit_threshold(x, n, random_hits(x.shape, 0.1, gen))
    init = [torch.randn(3, 8, generator=gen, dtype=torch.float64) for _ in range(4)]
    init.append((torch.rand(3, 8, generator=gen, dtype=torch.float64) < 0.5).double())
    xr, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    sr = [s.clone().requires_grad_() for s in init]
    sc = [s.clone().requires_grad_() for s in init]
    spikes, volts, final = run(xr, n, sr)
    from hnn_bridge.functional import IIRState

    c_spikes, c_volts, c_final = iir_multistep(xc, IIRParams(**n.kwargs), IIRState(*sc))
    assert torch.equal(c_spikes, spikes) and torch.equal(c_volts, volts)
    assert 0.05 < spikes.mean() < 0.9
    for c, r in zip(c_final, final):
        assert torch.equal(c, r)
    gen_g = torch.Generator().manual_seed(2)
    weights = [torch.randn(o.shape, generator=gen_g, dtype=torch.float64) for o in (spikes, volts, *final)]
    loss_r = sum((w * o).sum() for w, o in zip(weights, (spikes, volts, *final)))
    loss_c = sum((w * o).sum() for w, o in zip(weights, (c_spikes, c_volts, *c_final)))
    grads_r = torch.autograd.grad(loss_r, [xr, *sr], allow_unused=True)  # O[-1] unused with detach_reset
    grads_c = torch.autograd.grad(loss_c, [xc, *sc], allow_unused=True)
    for name, gc, gr in zip(("x", "p1", "p2", "r", "v", "o"), grads_c, grads_r):
        gc, gr = (torch.zeros_like(x[0]) if g is None else g for g in (gc, gr))
        assert torch.allclose(gc, gr, rtol=1e-9, atol=1e-12), name
    assert grads_r[0].abs().sum() > 0


def test_gaussian_coder_is_mu_plus_sigma_times_one_standard_normal_draw():
    """Eq. 7 as drawn: eps [T, B, units] from the global generator, a = mu + sigma * eps
    (replaying the generator gives the same bits; recorded runs depend on it)."""
    from hnn_bridge.coders import DuplicateCoder, PoissonCoder

    a = torch.tensor([[0.5, -1.0, math.log(0.2), math.log(1.5)], [2.0, 0.0, 0.0, math.log(0.5)]])
    torch.manual_seed(3)
    seq = GaussianCoder(5)(a)
    torch.manual_seed(3)
    eps = torch.randn(5, 2, 2)
    assert torch.equal(seq, a[:, :2] + torch.exp(a[:, 2:]) * eps)
    assert DuplicateCoder.width_factor == PoissonCoder.width_factor == 1 and GaussianCoder.width_factor == 2


def test_coder_steps_must_be_a_positive_int():
    from hnn_bridge.coders import DuplicateCoder

    assert DuplicateCoder(1)(torch.ones(2, 3)).shape == (1, 2, 3)
    for bad in (True, 2.0, 0, -1):
        with pytest.raises(ValueError, match=r"coder: steps \(T\) must be an integer >= 1, got "):
            DuplicateCoder(bad)


def test_mu_activation_acts_on_mu_only():
    from hnn_bridge.coders import MuActivation

    a = torch.tensor([[-1.0, 2.0, -0.5, -3.0, -4.0, 0.5], [5.0, -6.0, 0.25, 7.0, -8.0, -0.25]])
    out = MuActivation(torch.nn.ReLU())(a)
    assert torch.equal(
        out, torch.tensor([[0.0, 2.0, 0.0, -3.0, -4.0, 0.5], [5.0, 0.0, 0.25, 7.0, -8.0, -0.25]])
    )


# ------------------------------------------------------------------ survivors of the mutation run


@pytest.mark.parametrize("synapse", SYNAPSES)
@pytest.mark.parametrize(
    "lam,theta,vth", [(1.0, 1.0, 1.0), (0.0, 0.0, 1.0), (0.5, 1.0, 0.75), (1.0, 0.5, 0.0)]
)
@pytest.mark.parametrize("native_loop", ["1", "0"])
def test_every_term_kind_of_the_float32_paths_equals_the_reference(
    monkeypatch, synapse, lam, theta, vth, native_loop
):
    """Each coefficient absent (0), unscaled (1) or scaled: the C loop and the ATen path
    branch on these (native.term_kinds); V_th = 0 drops the reset term altogether."""
    monkeypatch.setenv("HNN_BRIDGE_NATIVE", native_loop)
    n = Neuron(synapse=synapse, lam=lam, theta=theta, v_threshold=vth, tau_m=3.0, tau_s=1.5)
    gen = torch.Generator().manual_seed(23)
    x = torch.randn(10, 2, 33, generator=gen) * 0.8 + 0.1
    x = hit_threshold(x, n, random_hits(x.shape, 0.2, gen))
    spikes, volts, final = run(x, n)
    assert 0.02 < spikes.mean() < 0.98
    out, c_volts, c_final = iir_multistep(x, IIRParams(**n.kwargs))
    assert torch.equal(out, spikes) and torch.equal(c_volts, volts)
    for c, r in zip(c_final, final):
        assert torch.equal(c, r)
    assert torch.equal(iir_spikes(x, IIRParams(**n.kwargs)), spikes)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_surrogate_is_exactly_zero_far_from_threshold_in_every_dtype(dtype):
    from hnn_bridge.functional.surrogate import surrogate_grad

    v = torch.tensor([1.0, 1.2, 9.0, -40.0], dtype=dtype)
    g = surrogate_grad(v, 1.0, 0.4)
    assert g.dtype == dtype and g[2] == 0 and g[3] == 0
    expected = torch.exp(-((v.double() - 1.0) ** 2) / 0.32) / (math.sqrt(2 * math.pi) * 0.4)
    assert torch.allclose(g[:2].double(), expected[:2], rtol=1e-2)


def test_evaluate_counts_ties_silence_and_the_mean_loss():
    from hnn_bridge.training.loop import evaluate

    outs = torch.tensor(
        [
            [3.0, 1.0, 0.0],  # right
            [2.0, 2.0, 0.0],  # tie: argmax right (0), strict wrong
            [0.0, 0.0, 0.0],  # silent: a tie of three, argmax 0 wrong
            [0.0, 1.0, 4.0],
        ]
    )  # wrong
    labels = torch.tensor([0, 0, 1, 1])

    class Fixed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return outs[idx] + self.w

    batches = [(torch.tensor([0, 1]), labels[:2]), (torch.tensor([2, 3]), labels[2:])]
    m = evaluate(Fixed(), batches)
    expected_loss = float(torch.nn.functional.cross_entropy(outs.double(), labels, reduction="mean"))
    assert (m.acc, m.acc_argmax, m.tie_rate, m.silent_rate, m.n) == (0.25, 0.5, 0.5, 0.25, 4)
    assert m.loss == pytest.approx(expected_loss, rel=1e-6)
    empty = evaluate(Fixed(), [])
    assert (empty.acc, empty.acc_argmax, empty.tie_rate, empty.silent_rate, empty.n) == (
        0.0,
        0.0,
        0.0,
        0.0,
        0,
    )
    assert math.isnan(empty.loss)


def test_spike_with_another_surrogate_keeps_the_heaviside_value_and_takes_its_gradient():
    """`spike_with` (the per-step path of a foreign surrogate): value exactly eq. 1f, gradient
    d/dv of surrogate(v - V_th)."""
    from hnn_bridge.functional.surrogate import spike_with

    v = torch.tensor([0.2, 0.7, 0.7 + 1e-7, 1.5], dtype=torch.float64, requires_grad=True)
    out = spike_with(v, 0.7, lambda d: torch.atan(3.0 * d))
    assert out.tolist() == [0.0, 1.0, 1.0, 1.0]
    (g,) = torch.autograd.grad(out.sum(), v)
    d = v.detach() - 0.7
    assert torch.allclose(g, 3.0 / (1.0 + (3.0 * d) ** 2), rtol=1e-12)
