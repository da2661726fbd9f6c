"""Property-based tests (Hypothesis) of the IIR LIF neuron (eq. 1a-1f, 6): random valid
settings (lambda and theta at 0, 1 and just below 1, each synapse kind, any V_th, sigma,
tau), random T and shapes, and inputs bent by ulps so that V lands exactly on V_th. Every
path must equal the independent reference of `iir_reference` (which does not import the
library): spikes and V bit for bit in the path's dtype, gradients to float64 rounding.

Paths: the fused ATen Function (float64; float32 with ``HNN_BRIDGE_NATIVE=0``), the native
C loop (float32 on the CPU), the CUDA kernel source's C build, the per-step autograd loop,
the SpikingJelly node (multi- and single-step) and the snnTorch neuron.

Budget: about 15 s on one idle core (``max_examples`` below); run with
``--hypothesis-seed=N`` or ``HYPOTHESIS_PROFILE=thorough`` to search further.
"""

from __future__ import annotations

import math
import os
import shutil
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from hnn_bridge.adapters.cupy_kernels import compile_c_kernels
from hnn_bridge.adapters.snntorch import IIRLeaky
from hnn_bridge.adapters.spikingjelly import IIRNode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from iir_reference import Neuron, exact_hits, hit_threshold, random_hits, run

from hnn_bridge import IIRNeuron, IIRParams
from hnn_bridge.functional import Coefficients, IIRState, iir_multistep, iir_multistep_reference, iir_spikes

settings.register_profile(
    "ci", max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "mutation", max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)  # tools/mutate.py
settings.register_profile(
    "thorough", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

BELOW_ONE = math.nextafter(1.0, 0.0)
decays = st.one_of(st.none(), st.sampled_from([0.0, 1.0, 0.5, BELOW_ONE, 0.999]), st.floats(0.0, 1.0))
taus = st.one_of(st.sampled_from([0.5, 1.0, 4.0, 20.0]), st.floats(0.2, 50.0))


@st.composite
def neurons(draw) -> Neuron:
    synapse = draw(st.sampled_from(["dual_exp", "first_order", "none"]))
    tau_m, tau_s = draw(taus), draw(taus)
    if synapse == "dual_exp" and tau_m == tau_s:
        tau_s = tau_m * 2.0
    return Neuron(
        synapse=synapse,
        tau_m=tau_m,
        tau_s=tau_s,
        lam=draw(decays),
        theta=draw(decays),
        v_threshold=draw(st.one_of(st.sampled_from([1.0, 0.9, 0.25]), st.floats(0.05, 4.0))),
        sigma=draw(st.floats(0.05, 2.0)),
        detach_reset=draw(st.booleans()),
    )


@st.composite
def inputs(draw, dtype: torch.dtype):
    """(neuron, x [T, ...] with exact threshold hits, seed) for one example."""
    n = draw(neurons())
    steps = draw(st.integers(1, 10))
    shape = draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))
    seed = draw(st.integers(0, 2**31 - 1))
    scale, shift = draw(st.sampled_from([(1.0, 0.3), (3.0, 0.5), (0.5, 0.9)]))
    gen = torch.Generator().manual_seed(seed)
    x = (
        torch.randn(steps, *shape, generator=gen, dtype=torch.float64) * scale * n.v_threshold
        + shift * n.v_threshold
    ).to(dtype)
    x = hit_threshold(x, n, random_hits(x.shape, draw(st.sampled_from([0.0, 0.2, 0.5])), gen))
    return n, x, seed


def _leaky_loop(n: Neuron, x: torch.Tensor) -> torch.Tensor:
    lif = IIRLeaky(**n.kwargs)
    state = lif.init_iirleaky()
    spikes = []
    for x_t in x:
        spk, state = lif(x_t, state)
        spikes.append(spk)
    return torch.stack(spikes)


def _node(n: Neuron, x: torch.Tensor, step_mode: str) -> torch.Tensor:
    node = IIRNode(**n.kwargs, step_mode=step_mode)
    if step_mode == "m":
        return node(x)
    return torch.stack([node(x_t) for x_t in x])


def _assert_paths(n: Neuron, x: torch.Tensor, *, with_volts: bool = True) -> None:
    params = IIRParams(**n.kwargs)
    spikes, volts, final = run(x, n)
    paths = {
        "iir_multistep": iir_multistep(x, params)[0],
        "iir_spikes": iir_spikes(x, params),
        "IIRNeuron": IIRNeuron.from_params(params)(x),
        "iir_multistep_reference": iir_multistep_reference(x, params)[0],
        "IIRNode-m": _node(n, x, "m"),
        "IIRNode-s": _node(n, x, "s"),
        "IIRLeaky": _leaky_loop(n, x),
    }
    xg = x.clone().requires_grad_()
    paths["iir_multistep+grad"] = iir_multistep(xg, params)[0].detach()
    paths["iir_spikes+grad"] = iir_spikes(xg, params).detach()
    for name, out in paths.items():
        assert out.dtype == x.dtype, name
        assert torch.equal(out.detach(), spikes), name
    if with_volts:
        c_spikes, c_volts, c_final = iir_multistep(x, params)
        assert torch.equal(c_volts, volts)
        for c, r in zip(c_final, final):
            assert torch.equal(c, r)


@contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


@given(inputs(torch.float64))
def test_float64_paths_equal_the_reference(case):
    n, x, _ = case
    _assert_paths(n, x)


@given(inputs(torch.float32))
def test_float32_native_loop_and_adapters_equal_the_reference(case):
    n, x, _ = case
    _assert_paths(n, x)


@given(inputs(torch.float32))
def test_float32_aten_path_equals_the_reference(case):
    n, x, _ = case
    with _env("HNN_BRIDGE_NATIVE", "0"):
        params = IIRParams(**n.kwargs)
        spikes, volts, _ = run(x, n)
        out, c_volts, _ = iir_multistep(x, params)
        assert torch.equal(out, spikes) and torch.equal(c_volts, volts)
        assert torch.equal(iir_spikes(x, params), spikes)
        assert torch.equal(iir_spikes(x.clone().requires_grad_(), params).detach(), spikes)


@pytest.fixture(scope="module")
def c_kernels(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build the kernel source as C")
    return compile_c_kernels(str(tmp_path_factory.mktemp("iir_c_properties")))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(case=inputs(torch.float32))
def test_c_build_of_the_cuda_kernel_equals_the_reference(c_kernels, case):
    n, x, seed = case
    gen = torch.Generator().manual_seed(seed)
    state = [torch.randn(x.shape[1:], generator=gen) for _ in range(4)]
    state.append((torch.rand(x.shape[1:], generator=gen) < 0.5).float())
    k = Coefficients.of(IIRParams(**n.kwargs))
    for start in (None, state):
        spikes, volts, final = run(x, n, start)
        c_out = c_kernels.forward(
            np.ascontiguousarray(x.numpy()),
            k,
            (None,) * 5 if start is None else tuple(s.numpy() for s in start),
        )
        np.testing.assert_array_equal(c_out[0], spikes.numpy())
        np.testing.assert_array_equal(c_out[1], volts.numpy())
        for c, r in zip(c_out[2:], final[:3]):
            np.testing.assert_array_equal(c, r.numpy())


@given(inputs(torch.float64), st.booleans())
def test_float64_gradients_equal_the_reference(case, with_state):
    """BPTT of the fused Function (eq. 6 surrogate) against autograd through the reference."""
    n, x, seed = case
    gen = torch.Generator().manual_seed(seed)
    init = None
    if with_state:
        init = [torch.randn(x.shape[1:], generator=gen, dtype=torch.float64) for _ in range(4)]
        init.append((torch.rand(x.shape[1:], generator=gen) < 0.5).double())
    xr, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    sr = None if init is None else [s.clone().requires_grad_() for s in init]
    sc = None if init is None else [s.clone().requires_grad_() for s in init]
    spikes, volts, final = run(xr, n, sr)
    c_spikes, c_volts, c_final = iir_multistep(
        xc, IIRParams(**n.kwargs), None if sc is None else IIRState(*sc)
    )
    assert torch.equal(c_spikes, spikes.detach()) and torch.equal(c_volts, volts.detach())
    outs_r, outs_c = (spikes, volts, *final[:3]), (c_spikes, c_volts, *c_final[:3])
    weights = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in outs_r]
    loss_r = sum((w * o).sum() for w, o in zip(weights, outs_r))
    loss_c = sum((w * o).sum() for w, o in zip(weights, outs_c))
    leaves_r, leaves_c = [xr, *(sr or [])], [xc, *(sc or [])]
    grads_r = torch.autograd.grad(loss_r, leaves_r, allow_unused=True)
    grads_c = torch.autograd.grad(loss_c, leaves_c, allow_unused=True)
    for i, (gc, gr) in enumerate(zip(grads_c, grads_r)):
        gc, gr = (torch.zeros_like(leaves_r[i]) if g is None else g for g in (gc, gr))
        scale = max(1.0, float(gr.abs().max()))
        assert float((gc - gr).abs().max()) <= 1e-9 * scale, i


def test_the_generated_inputs_hit_the_threshold_exactly():
    """The strategy does what the properties rely on: V == V_th exactly at many places."""
    hits = []

    @settings(max_examples=40, derandomize=True, deadline=None)
    @given(inputs(torch.float32))
    def collect(case):
        n, x, _ = case
        hits.append(int(exact_hits(x, n).sum()))

    collect()
    assert sum(h > 0 for h in hits) >= 8 and sum(hits) >= 40
