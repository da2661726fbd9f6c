"""The compiled synapse filter (`hnn_bridge.kernels.synapse_filter`, issue 36) against the ATen
loop of `synapse_filter` it replaces (``HNN_BRIDGE_NATIVE_FILTER=0``): values and gradients bit
for bit (every synapse kind and coefficient kind, T = 1, 2, 3, 8, sizes around the block
size, the threaded split, non-contiguous and time-constant inputs), against a float64
reference, the order in which autograd accumulates the loop's gradient, where the loop still
runs, and a whole pure spiking CIFAR-10 CNN's loss and gradients with the filter on and off.
"""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from hnn_bridge.builder import build
from hnn_bridge.functional.iir import IIRState, synapse_filter
from hnn_bridge.kernels import native
from hnn_bridge.kernels import synapse_filter as sf
from hnn_bridge.params import IIRParams

pytestmark = pytest.mark.skipif(
    sf.filter_unavailable_reason() is not None,
    reason=f"compiled synapse filter unavailable: {sf.filter_unavailable_reason()}",
)

#: every synapse kind that filters: first order, and dual exponential (the CIFAR recipes'
#: tau_m = 4, tau_s = 1, and another pair)
PARAMS = {
    "first_order": IIRParams(tau_s=2.0),
    "dual_exp": IIRParams(synapse="dual_exp", tau_m=4.0, tau_s=1.0),
    "dual_exp_slow": IIRParams(synapse="dual_exp", tau_m=8.0, tau_s=2.0),
}
NATIVE = "NativeSynapseFilterBackward"


@pytest.fixture(autouse=True)
def _filter_on(monkeypatch):
    monkeypatch.delenv("HNN_BRIDGE_NATIVE", raising=False)
    monkeypatch.setenv(sf.ENV, "1")


def _bits(a, b) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    view = torch.int32 if a.dtype == torch.float32 else torch.int64
    return torch.equal(a.contiguous().view(view), b.contiguous().view(view))


def _coeffs(a1, a2, b):
    """A stand-in for `IIRParams` with the filter coefficients (a1, a2, b) chosen freely."""
    return SimpleNamespace(synapse_coefficients=(a1, a2, b), theta=0.0, lam=0.0, v_threshold=1.0, sigma=0.4)


def _run(x, params, g, monkeypatch, native_on, **kwargs):
    """(p, grad_x, grad_fn name) of `synapse_filter` with the compiled filter on or off."""
    monkeypatch.setenv(sf.ENV, "1" if native_on else "0")
    x = x.detach().requires_grad_()
    p = synapse_filter(x, params, **kwargs)
    (gx,) = torch.autograd.grad(p, x, g)
    return p.detach(), gx, type(p.grad_fn).__name__


def _compare(x, params, monkeypatch, seed=0):
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    p0, g0, fn0 = _run(x, params, g, monkeypatch, False)
    p1, g1, fn1 = _run(x, params, g, monkeypatch, True)
    assert fn0 == "StackBackward0" and fn1 == NATIVE
    assert _bits(p1, p0)
    assert _bits(g1, g0)
    return p1, g1, g


def _reference64(x, a1, a2, b, g):
    """The filter and its gradient in float64 from the equations (eq. 1d generalised)."""
    x, g = x.double(), g.double()
    steps = x.shape[0]
    p = torch.zeros_like(x)
    for t in range(steps):
        p[t] = b * x[t] + (a1 * p[t - 1] if t >= 1 else 0) + (a2 * p[t - 2] if t >= 2 else 0)
    c = torch.zeros_like(g)
    for t in reversed(range(steps)):
        c[t] = g[t] + (a1 * c[t + 1] if t + 1 < steps else 0) + (a2 * c[t + 2] if t + 2 < steps else 0)
    return p, b * c


def _autograd_order(g, a1, a2, b):
    """grad_x in the order claimed for autograd's engine: c[t] = (g[t] + a2*c[t+2]) +
    a1*c[t+1] (absent terms and multiplies by 1 skipped), grad_x[t] = b*c[t]."""
    const = {c: torch.tensor(c, dtype=g.dtype) for c in (a1, a2, b)}

    def scaled(c, t):
        return None if c == 0.0 else t if c == 1.0 else t * const[c]

    steps, c = g.shape[0], [None] * g.shape[0]
    for t in reversed(range(steps)):
        acc = g[t]
        for term in (
            scaled(a2, c[t + 2]) if t + 2 < steps else None,
            scaled(a1, c[t + 1]) if t + 1 < steps else None,
        ):
            acc = acc if term is None else acc + term
        c[t] = acc
    return torch.stack([scaled(b, ct) for ct in c])


@pytest.mark.parametrize("name", sorted(PARAMS))
@pytest.mark.parametrize("steps", [1, 2, 3, 8])
@pytest.mark.parametrize("size", [1, 255, 256, 257, 1000])
def test_equals_the_aten_loop_bit_for_bit(name, steps, size, monkeypatch):
    x = torch.randn(steps, size, generator=torch.Generator().manual_seed(steps * 1000 + size))
    _compare(x, PARAMS[name], monkeypatch)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_equals_the_float64_reference(name, monkeypatch):
    params = PARAMS[name]
    x = torch.randn(8, 4, 6, 5, 7, generator=torch.Generator().manual_seed(1)) * 3
    p, gx, g = _compare(x, params, monkeypatch)
    p64, gx64 = _reference64(x, *params.synapse_coefficients, g)
    # a handful of float32 roundings per step, amplified at most by sum |impulse response|
    assert (p.double() - p64).abs().max() <= 64 * 2**-24 * p64.abs().max()
    assert (gx.double() - gx64).abs().max() <= 64 * 2**-24 * gx64.abs().max()
    assert (p.double() - p64).abs().max() > 0  # the tolerance is not vacuous: float32 rounds


@pytest.mark.parametrize("name", sorted(PARAMS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_autograd_accumulates_in_the_kernels_order(name, dtype, monkeypatch):
    """The ATen loop's gradient (float32 and float64) is exactly the documented order, which
    the C backward follows; another order (a1's term before a2's) differs."""
    monkeypatch.setenv(sf.ENV, "0")
    a1, a2, b = PARAMS[name].synapse_coefficients
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(8, 3000, generator=gen, dtype=dtype, requires_grad=True)
    g = torch.randn(8, 3000, generator=gen, dtype=dtype)
    (gx,) = torch.autograd.grad(synapse_filter(x, PARAMS[name]), x, g)
    assert _bits(gx, _autograd_order(g, a1, a2, b))
    if a2 != 0.0:
        assert not _bits(gx, _swapped(g, a1, a2, b))


def _swapped(g, a1, a2, b):
    """grad_x with c[t] = (g[t] + a1*c[t+1]) + a2*c[t+2] instead."""
    steps, c = g.shape[0], [None] * g.shape[0]
    for t in reversed(range(steps)):
        acc = g[t]
        if t + 1 < steps:
            acc = acc + c[t + 1] * a1
        if t + 2 < steps:
            acc = acc + c[t + 2] * a2
        c[t] = acc
    return torch.stack(c) * b


@pytest.mark.parametrize(
    "coeffs",
    [(1.0, 0.0, 0.5), (1.0, -0.25, 1.0), (0.5, 1.0, 0.75), (0.0, 0.5, 2.0), (0.9, 0.0, 1.0), (0.0, 0.0, 3.0)],
)
def test_every_coefficient_kind(coeffs, monkeypatch):
    """Coefficients 0 (term left out), 1 (not multiplied) and others in every slot."""
    x = torch.randn(8, 3, 301, generator=torch.Generator().manual_seed(3))
    _compare(x, _coeffs(*coeffs), monkeypatch)


def test_threaded_chunks(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        n = 3 * native.CHUNK + 1000 + 17  # not a multiple of the chunk's alignment
        assert len(native._chunks(n)) == 3
        x = torch.randn(8, n, generator=torch.Generator().manual_seed(4))
        _compare(x, PARAMS["dual_exp"], monkeypatch)
    finally:
        torch.set_num_threads(threads)


def test_non_contiguous_and_constant_inputs(monkeypatch):
    params = PARAMS["dual_exp"]
    base = torch.randn(6, 8, 37, generator=torch.Generator().manual_seed(5))
    x = base.transpose(0, 1)  # [8, 6, 37], not contiguous
    assert not x.is_contiguous()
    _compare(x, params, monkeypatch)
    _compare(base[:, ::2].transpose(0, 1)[:, :, 3:], params, monkeypatch)
    # duplicate coding: one x[t] for every t (stride 0 over time); its gradient sums over T
    const = base[0].unsqueeze(0).expand(8, 8, 37)
    g = torch.randn(const.shape, generator=torch.Generator().manual_seed(6))
    results = []
    for on in (False, True):
        monkeypatch.setenv(sf.ENV, "1" if on else "0")
        leaf = base[0].clone().requires_grad_()
        p = synapse_filter(leaf.unsqueeze(0).expand(8, 8, 37), params)
        (gl,) = torch.autograd.grad(p, leaf, g)
        results.append((p.detach(), gl))
    assert _bits(results[1][0], results[0][0]) and _bits(results[1][1], results[0][1])
    assert _bits(results[1][0], synapse_filter(const.contiguous(), params))


def test_without_grad(monkeypatch):
    params = PARAMS["dual_exp"]
    x = torch.randn(8, 2, 300, generator=torch.Generator().manual_seed(7))
    monkeypatch.setenv(sf.ENV, "0")
    ref = synapse_filter(x, params)
    monkeypatch.setenv(sf.ENV, "1")
    out = synapse_filter(x, params)
    assert out.grad_fn is None and _bits(out, ref)
    with torch.no_grad():
        out = synapse_filter(x.requires_grad_(), params)
    assert out.grad_fn is None and _bits(out, ref)


def test_where_the_aten_loop_still_runs(monkeypatch):
    params = PARAMS["dual_exp"]
    x = torch.randn(4, 50, generator=torch.Generator().manual_seed(8), requires_grad=True)
    assert type(synapse_filter(x, params).grad_fn).__name__ == NATIVE
    assert type(synapse_filter(x.double(), params).grad_fn).__name__ == "StackBackward0"
    state = IIRState.zeros_like(x[0])
    p = synapse_filter(x, params, state.p1, state.p2)
    assert type(p.grad_fn).__name__ == "StackBackward0"  # an initial state given
    for env in ("HNN_BRIDGE_NATIVE", sf.ENV):
        monkeypatch.setenv(env, "0")
        assert sf.filter_unavailable_reason() == f"disabled by {env}=0"
        assert type(synapse_filter(x, params).grad_fn).__name__ == "StackBackward0"
        monkeypatch.setenv(env, "1")
    assert synapse_filter(x, IIRParams(synapse="none")) is x
    assert not sf.native_filter_applies(x, SimpleNamespace(a1=0.5, a2=0.0, b=0.0))


def test_half_inputs_are_widened_first(monkeypatch):
    params = PARAMS["dual_exp"]
    x = torch.randn(8, 500, generator=torch.Generator().manual_seed(9)).bfloat16().requires_grad_()
    g = torch.randn(8, 500, generator=torch.Generator().manual_seed(10))
    out = {}
    for on in (False, True):
        monkeypatch.setenv(sf.ENV, "1" if on else "0")
        p = synapse_filter(x, params)
        (gx,) = torch.autograd.grad(p, x, g)
        out[on] = (p.detach(), gx)
    assert out[True][0].dtype == torch.float32 and out[True][1].dtype == torch.bfloat16
    assert _bits(out[True][0], out[False][0]) and torch.equal(out[True][1], out[False][1])


def test_double_backward(monkeypatch):
    """The backward is differentiable (its own backward is the forward filter)."""
    params = PARAMS["dual_exp"]
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(8, 40, generator=gen)
    g0, w = torch.randn(8, 40, generator=gen), torch.randn(8, 40, generator=gen)
    res = []
    for on in (False, True):
        monkeypatch.setenv(sf.ENV, "1" if on else "0")
        xr, g = x.clone().requires_grad_(), g0.clone().requires_grad_()
        (gx,) = torch.autograd.grad(synapse_filter(xr, params), xr, g, create_graph=True)
        (gg,) = torch.autograd.grad((gx * w).sum(), g)
        res.append(gg)
    torch.testing.assert_close(res[1], res[0], rtol=1e-5, atol=1e-6)
    assert res[1].abs().max() > 0


@pytest.mark.parametrize(
    ("arch", "filters"),
    [("S32C3-S32C3-S64C3-P2-S64C3-P2-S512-S10", 5), ("A32C3-S32C3-S64C3-P2-S64C3-P2-S512-S10", 4)],
)
def test_cifar_cnn_loss_and_gradients_on_and_off(arch, filters, monkeypatch):
    """The pure SNN and 1 AL rows of the CIFAR-10 CNN (recipe neuron: dual exponential
    synapse, the filter apart after each weight op), T = 8: the same loss and gradients."""
    neuron = IIRParams(synapse="dual_exp", tau_m=4.0, tau_s=1.0, reset_decay=math.exp(-0.25))
    torch.manual_seed(12)
    net = build(arch, coder="duplicate", steps=8, input_shape=(3, 32, 32), neuron=neuron, norm="batch")
    assert len(net.filters) == filters  # the first SL of a duplicate-coded train filters in its neuron
    gen = torch.Generator().manual_seed(13)
    x, y = torch.rand(3, 3, 32, 32, generator=gen), torch.randint(0, 10, (3,), generator=gen)
    seen: list[str] = []
    hooks = [
        f.register_forward_hook(lambda m, i, o: seen.append(type(o.grad_fn).__name__))
        for f in net.filters.values()
    ]
    results = []
    for on in (False, True):
        monkeypatch.setenv(sf.ENV, "1" if on else "0")
        seen.clear()
        net.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in net.parameters()]))
        assert set(seen) == {NATIVE if on else "StackBackward0"}
    for h in hooks:
        h.remove()
    (l0, g0), (l1, g1) = results
    assert _bits(l1, l0)
    assert all(_bits(a, b) for a, b in zip(g1, g0))
    assert any(a.abs().max() > 0 for a in g1)
