"""The IIR neuron core against an independent float64 reference (eq. 1a-1f, 5, 6)."""

import math

import numpy as np
import pytest
import torch
from helpers import SYNAPSES

from hnn_bridge import IIRNeuron, IIRParams
from hnn_bridge.functional import (
    Coefficients,
    IIRMultiStep,
    IIRState,
    iir_multistep,
    iir_multistep_reference,
    iir_step,
)


def numpy_reference(x, *, synapse, tau_m=4.0, tau_s=1.0, lam=None, theta=None, v_th=1.0):
    """Step-by-step float64 simulation written from the design's equations alone."""
    em, es = math.exp(-1 / tau_m), math.exp(-1 / tau_s)
    if synapse == "dual_exp":
        a1, a2, b = em + es, -math.exp(-(tau_m + tau_s) / (tau_m * tau_s)), em - es
    elif synapse == "first_order":
        a1, a2, b = es, 0.0, 1.0
    else:
        a1, a2, b = 0.0, 0.0, 1.0
    lam = em if lam is None else lam
    theta = em if theta is None else theta
    x = np.asarray(x, dtype=np.float64)
    p1 = np.zeros(x.shape[1:])
    p2 = np.zeros(x.shape[1:])
    r = np.zeros(x.shape[1:])
    v = np.zeros(x.shape[1:])
    o = np.zeros(x.shape[1:])
    spikes, volts = [], []
    for t in range(x.shape[0]):
        p = a1 * p1 + a2 * p2 + b * x[t]
        r = theta * r + o
        v = lam * v + p - v_th * r
        o = (v >= v_th).astype(np.float64)
        p2, p1 = p1, p
        spikes.append(o)
        volts.append(v)
    return np.stack(spikes), np.stack(volts)


@pytest.mark.parametrize("synapse", SYNAPSES)
@pytest.mark.parametrize("lam", [0.0, None, 0.5])
def test_spikes_equal_float64_reference(synapse, lam):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(25, 16, 40, generator=gen, dtype=torch.float64) * 1.2 + 0.6
    neuron = IIRNeuron(synapse=synapse, membrane_decay=lam)
    out = neuron(x)
    ref_spikes, ref_volts = numpy_reference(x.numpy(), synapse=synapse, lam=lam)
    assert out.dtype == torch.float64 and out.shape == x.shape
    np.testing.assert_array_equal(out.numpy(), ref_spikes)
    _, volts, _ = iir_multistep(x, neuron.params)
    np.testing.assert_allclose(volts.numpy(), ref_volts, rtol=0, atol=1e-12)
    assert 0.05 < ref_spikes.mean() < 0.6  # the test exercises firing and resets


def test_float32_matches_reference_and_keeps_dtype():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(25, 8, 30, generator=gen) + 0.5
    out = IIRNeuron()(x)
    assert out.dtype == torch.float32
    ref, volts = numpy_reference(x.double().numpy(), synapse="dual_exp")
    # float32 rounding may flip a spike only where V lies within float32 eps of V_th
    flips = out.numpy() != ref
    assert np.all(np.abs(volts[flips] - 1.0) < 1e-5)


def test_fires_at_exactly_threshold():
    # synapse 'none', no leak: V[0] = x[0]; x = V_th exactly must fire (U(0) = 1, eq. 1f)
    x = torch.tensor([[1.0, 0.999999, 1.5]])
    out = IIRNeuron(synapse="none", membrane_decay=0.0)(x)
    assert out.tolist() == [[1.0, 0.0, 1.0]]
    p = IIRParams(v_threshold=0.25, synapse="none", membrane_decay=0.0)
    o, _ = iir_step(torch.tensor([0.25, 0.2499]), IIRState.zeros_like(torch.zeros(2)), p)
    assert o.tolist() == [1.0, 0.0]


def test_reset_filter_lowers_membrane_after_a_spike():
    # constant input 1.0, synapse none, lam 0: V[0]=1 fires, V[1] = 1 - V_th*R[1] = 1 - 1 = 0
    x = torch.ones(3, 1)
    spikes, volts, _ = iir_multistep(x, IIRParams(synapse="none", membrane_decay=0.0, reset_decay=0.5))
    assert spikes.flatten().tolist() == [1.0, 0.0, 0.0]
    assert volts.flatten().tolist() == [1.0, 0.0, 0.5]  # R[2] = 0.5*1 + 0 = 0.5


@pytest.mark.parametrize("synapse", SYNAPSES)
@pytest.mark.parametrize("lam", [0.0, None])
@pytest.mark.parametrize("detach_reset", [False, True])
def test_fused_gradients_match_autograd_loop(synapse, lam, detach_reset):
    gen = torch.Generator().manual_seed(11)
    params = IIRParams(synapse=synapse, membrane_decay=lam, detach_reset=detach_reset)
    x = (torch.randn(25, 6, 20, generator=gen) + 0.6).requires_grad_()
    weights = torch.randn(25, 6, 20, generator=gen)
    fused, _, _ = iir_multistep(x, params)
    loop, _, _ = iir_multistep_reference(x, params)
    assert torch.equal(fused, loop)
    (g_fused,) = torch.autograd.grad((fused * weights).sum(), x)
    (g_loop,) = torch.autograd.grad((loop * weights).sum(), x)
    rel = (g_fused - g_loop).abs().max() / g_loop.abs().max()
    assert g_loop.abs().max() > 0
    assert rel < 1e-6


def test_detach_reset_changes_the_gradient():
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(10, 4, 8, generator=gen) + 0.8).requires_grad_()
    grads = []
    for detach in (False, True):
        out, _, _ = iir_multistep(x, IIRParams(detach_reset=detach))
        grads.append(torch.autograd.grad(out.sum(), x)[0])
    assert not torch.allclose(grads[0], grads[1])


def test_gradients_through_initial_state_and_outputs():
    """Continuing a sequence (adapters keep state between calls) is differentiable."""
    gen = torch.Generator().manual_seed(2)
    params = IIRParams(membrane_decay=0.3)
    x = (torch.randn(7, 3, 5, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    state = IIRState(
        *(torch.randn(3, 5, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(5))
    )
    outs = [iir_multistep(x, params, state), iir_multistep_reference(x, params, state)]
    assert torch.equal(outs[0][0], outs[1][0])
    grads = []
    for spikes, volts, final in outs:
        loss = spikes.sum() + (volts**2).sum() + sum((s * (k + 1)).sum() for k, s in enumerate(final))
        grads.append(torch.autograd.grad(loss, [x, *state], allow_unused=True))
    for a, b in zip(*grads):
        b = torch.zeros_like(a) if b is None else b
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gradcheck_on_smooth_variant():
    """With P(V) (eq. 5) as the forward, eq. 6 is the true derivative: gradcheck applies."""
    for synapse in SYNAPSES:
        k = Coefficients.of(IIRParams(synapse=synapse, membrane_decay=0.4))
        x = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
        v0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)

        def f(x, v0):
            return IIRMultiStep.apply(x, None, None, None, v0, None, k, False, True)[:2]

        assert torch.autograd.gradcheck(f, (x, v0))


def test_surrogate_is_eq6():
    v = torch.tensor([0.2, 1.0, 1.7], dtype=torch.float64, requires_grad=True)
    out, _ = iir_step(v, IIRState.zeros_like(v), IIRParams(synapse="none", membrane_decay=0.0, sigma=0.4))
    out.sum().backward()
    sigma = 0.4
    expected = [
        math.exp(-((1.0 - u) ** 2) / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma)
        for u in (0.2, 1.0, 1.7)
    ]
    assert v.grad.tolist() == pytest.approx(expected, rel=1e-12)


def test_zero_state_on_every_call():
    x = torch.rand(5, 2, 3) * 2
    neuron = IIRNeuron()
    assert torch.equal(neuron(x), neuron(x))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sigma": 0.0}, "IIR neuron: sigma must be > 0, got 0.0"),
        (
            {"synapse": "alpha"},
            "IIR neuron: synapse must be one of 'dual_exp', 'first_order', 'none', got 'alpha'",
        ),
        (
            {"membrane_decay": 1.5},
            "IIR neuron: membrane_decay must be in [0, 1] or None (meaning e^(-1/tau_m)), got 1.5",
        ),
        ({"tau_s": 4.0}, "IIR neuron: the dual_exp synapse needs tau_m != tau_s"),
    ],
)
def test_bad_settings_name_the_setting(kwargs, message):
    with pytest.raises(ValueError) as err:
        IIRNeuron(**kwargs)
    assert str(err.value).startswith(message)


def test_non_float_input_is_rejected():
    with pytest.raises(TypeError, match="IIRNeuron expects a floating-point tensor"):
        IIRNeuron()(torch.ones(3, 2, dtype=torch.long))


# ----------------------------------------------------------------------------- the synapse filter
# An independent check of the filter coefficients: the tests above share their (a1, a2, b)
# with hnn_bridge/params.py (the same formulas typed twice), so a mistake made in both would
# pass. Here the expected response comes from the closed form of the kernel instead.
#
# Eq. 1 (Fang et al. 2020, quoted as eq. 1b/1d in the paper) weighs the presynaptic spike train
# with the dual-exponential PSP kernel of unit amplitude (the scale is the weight w, nothing
# else): eps(s) = e^(-s/tau_m) - e^(-s/tau_s), s in time steps. A spike at step t0 enters the
# filter in its own step, i.e. it is seen one step old at the end of step t0:
#     p[t] = eps(t - t0 + 1) for t >= t0, and 0 before.
# This is what p[t] = a1 p[t-1] + a2 p[t-2] + b x[t] does with a1 = e^(-1/tau_m) + e^(-1/tau_s),
# a2 = -e^(-1/tau_m) e^(-1/tau_s), b = e^(-1/tau_m) - e^(-1/tau_s): both exponentials
# e^(-(n+1)/tau) obey the recursion whose characteristic roots are e^(-1/tau_m), e^(-1/tau_s),
# and n = 0 gives eps(1) = b. The test below knows none of this: it compares the neuron with
# eps() evaluated directly.


def _synaptic_current(x: torch.Tensor, synapse: str, tau_m: float, tau_s: float) -> torch.Tensor:
    """p[t] of the core for input x[t]: no membrane filter and a threshold no input reaches, so
    the membrane potential V[t] = p[t] (R stays 0 without spikes)."""
    params = IIRParams(v_threshold=1e9, tau_m=tau_m, tau_s=tau_s, membrane_decay=0.0, synapse=synapse)
    spikes, volts, _ = iir_multistep(x, params)
    assert not spikes.any()
    return volts


def _eps(s: float, tau_m: float, tau_s: float) -> float:
    return math.exp(-s / tau_m) - math.exp(-s / tau_s)


@pytest.mark.parametrize("tau_m,tau_s", [(4.0, 1.0), (10.0, 2.5), (2.0, 5.0), (1.5, 0.7)])
def test_dual_exp_impulse_response_is_the_closed_form_kernel(tau_m: float, tau_s: float) -> None:
    T, t0 = 40, 3
    x = torch.zeros(T, 1, dtype=torch.float64)
    x[t0] = 1.0  # one input spike (weight 1)
    p = _synaptic_current(x, "dual_exp", tau_m, tau_s)[:, 0]
    expected = [0.0 if t < t0 else _eps(t - t0 + 1, tau_m, tau_s) for t in range(T)]
    np.testing.assert_allclose(p.numpy(), expected, rtol=1e-12, atol=1e-15)
    # the kernel's peak is where the continuous eps peaks: ln(tau_m / tau_s) / (1/tau_s - 1/tau_m)
    s_peak = math.log(tau_m / tau_s) / (1 / tau_s - 1 / tau_m)
    lag = int(torch.argmax(p.abs())) - t0 + 1
    assert lag in (math.floor(s_peak), math.ceil(s_peak)) or (s_peak < 1 and lag == 1)


def test_dual_exp_spike_train_is_the_sum_of_kernels() -> None:
    """A train of weighted spikes gives the superposition sum_k w_k eps(t - t_k + 1) (eq. 1b)."""
    tau_m, tau_s, T = 4.0, 1.0, 30
    spikes = {0: 0.7, 2: -1.3, 3: 2.0, 11: 0.25}
    x = torch.zeros(T, 1, dtype=torch.float64)
    for t, w in spikes.items():
        x[t] = w
    p = _synaptic_current(x, "dual_exp", tau_m, tau_s)[:, 0]
    expected = [
        sum(w * _eps(t - tk + 1, tau_m, tau_s) for tk, w in spikes.items() if tk <= t) for t in range(T)
    ]
    np.testing.assert_allclose(p.numpy(), expected, rtol=1e-12, atol=1e-15)


def test_first_order_and_no_synapse_impulse_responses() -> None:
    """first_order: p[t] = e^(-(t - t0)/tau_s) (gain 1 at the spike's own step); none: p = x."""
    T, t0, tau_s = 20, 2, 2.5
    x = torch.zeros(T, 1, dtype=torch.float64)
    x[t0] = 1.0
    p = _synaptic_current(x, "first_order", 4.0, tau_s)[:, 0]
    np.testing.assert_allclose(
        p.numpy(), [0.0 if t < t0 else math.exp(-(t - t0) / tau_s) for t in range(T)], rtol=1e-12, atol=1e-15
    )
    assert torch.equal(_synaptic_current(x, "none", 4.0, tau_s), x)


def test_module_applies_the_closed_form_kernel_before_the_threshold() -> None:
    """IIRNeuron (the module every backend is compared with) fires when the summed kernels cross
    V_th: with lam = 0 and no earlier spike, the first spike is at the first t where
    sum_k w eps(t - t_k + 1) >= V_th."""
    tau_m, tau_s, w = 4.0, 1.0, 1.5
    x = torch.zeros(20, 1, dtype=torch.float64)
    x[[0, 1, 2]] = w
    out = IIRNeuron(tau_m=tau_m, tau_s=tau_s, membrane_decay=0.0)(x)[:, 0]
    p = [sum(w * _eps(t - tk + 1, tau_m, tau_s) for tk in (0, 1, 2) if tk <= t) for t in range(20)]
    first = next(t for t, v in enumerate(p) if v >= 1.0)
    assert int(torch.nonzero(out)[0]) == first


# A non-default value for every field of IIRParams (dual_exp needs tau_m != tau_s).
_NON_DEFAULT = {
    "v_threshold": 0.8,
    "sigma": 0.3,
    "tau_m": 5.0,
    "tau_s": 2.0,
    "membrane_decay": 0.5,
    "reset_decay": 0.25,
    "synapse": "first_order",
    "detach_reset": True,
}


def _modules():
    from hnn_bridge.adapters.snntorch import IIRLeaky
    from hnn_bridge.adapters.spikingjelly import IIRNode

    return {"IIRNeuron": IIRNeuron, "IIRNode": IIRNode, "IIRLeaky": IIRLeaky}


@pytest.mark.parametrize("name", ["IIRNeuron", "IIRNode", "IIRLeaky"])
def test_every_module_takes_params_and_each_field_as_a_keyword(name: str) -> None:
    """The neuron's keywords are the fields of IIRParams, once: each module takes every
    field as an override, an IIRParams (with overrides on top), and nothing else."""
    from hnn_bridge.params import NEURON_KEYS

    cls = _modules()[name]
    assert set(_NON_DEFAULT) == set(NEURON_KEYS)
    for key, value in _NON_DEFAULT.items():
        assert getattr(cls(**{key: value}).params, key) == value, key
        assert f"{key}={value!r}" in repr(cls(**{key: value}))
    params = IIRParams(**_NON_DEFAULT)
    # positional where the framework allows it (snnTorch's first positional argument is beta)
    assert (cls(params=params) if name == "IIRLeaky" else cls(params)).params == params
    assert cls.from_params(params).params == params
    with_override = cls(params=params, tau_m=6.0)
    assert with_override.params == IIRParams(**{**_NON_DEFAULT, "tau_m": 6.0})
    with pytest.raises(TypeError, match=f"{name}.__init__\\(\\) got an unexpected keyword argument 'tau'"):
        cls(tau=4.0)
    with pytest.raises(ValueError, match="IIR neuron: tau_s must be > 0, got -1.0"):
        cls(params=params, tau_s=-1.0)
