"""The native CPU loop nest (`hnn_bridge.kernels.native`) against the ATen path of the
fused neuron (``HNN_BRIDGE_NATIVE=0``): spikes, V, final state and every gradient bit for
bit, over the coefficient kinds (absent, unscaled, scaled), initial states, inputs
constant over time, incoming gradients of V and of the state, and the threaded split."""

import math

import pytest
import torch
from helpers import currents

from hnn_bridge.functional import IIRState, iir_multistep, iir_spikes
from hnn_bridge.kernels import native
from hnn_bridge.params import IIRParams

pytestmark = pytest.mark.skipif(
    native.native_unavailable_reason() is not None,
    reason=f"native neuron unavailable: {native.native_unavailable_reason()}",
)

PARAMS = {
    "default": IIRParams(),
    "cifar": IIRParams(membrane_decay=0.0, reset_decay=math.exp(-0.25)),
    "no_synapse": IIRParams(synapse="none", v_threshold=0.8, reset_decay=0.0),
    "detach": IIRParams(tau_s=2.0, membrane_decay=1.0, detach_reset=True, sigma=0.7),
}


def _both(fn, monkeypatch):
    """fn() with the native path, then with the ATen path."""
    assert native.native_enabled(torch.zeros(1))
    got = fn()
    monkeypatch.setenv("HNN_BRIDGE_NATIVE", "0")
    assert not native.native_enabled(torch.zeros(1))
    want = fn()
    monkeypatch.delenv("HNN_BRIDGE_NATIVE")
    return got, want


def _equal(a, b) -> bool:
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if a is None or b is None:
        return a is None and b is None
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.float32:  # bit patterns: NaN equals NaN, -0.0 differs from 0.0
        return torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))
    return torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(PARAMS))
@pytest.mark.parametrize("with_state", [False, True])
def test_multistep_values_and_gradients_equal_the_aten_path(name, with_state, monkeypatch):
    params = PARAMS[name]
    x0 = currents(7, 3, 50, seed=11)
    s0 = [currents(1, 3, 50, seed=20 + i, scale=0.5)[0] for i in range(5)]
    s0[4] = (s0[4] > 0).float()  # O[-1] is a spike
    gens = [currents(7, 3, 50, seed=30 + i) for i in range(2)] + [
        currents(1, 3, 50, seed=40 + i)[0] for i in range(3)
    ]

    def run():
        x = x0.clone().requires_grad_()
        state = IIRState(*(s.clone().requires_grad_() for s in s0)) if with_state else None
        spikes, volts, final = iir_multistep(x, params, state)
        loss = (spikes * gens[0]).sum() + (volts * gens[1]).sum()
        loss = loss + sum((t * g).sum() for t, g in zip((final.p1, final.p2, final.r), gens[2:]))
        loss.backward()
        grads = [x.grad] + ([s.grad for s in state] if with_state else [])
        return spikes, volts, tuple(final), grads

    got, want = _both(run, monkeypatch)
    assert _equal(got, want)
    assert got[0].sum() > 0 and got[3][0].abs().sum() > 0


@pytest.mark.parametrize("name", sorted(PARAMS))
@pytest.mark.parametrize("constant", [False, True])
def test_spikes_path_equals_the_aten_path(name, constant, monkeypatch):
    params = PARAMS[name]
    base = currents(6, 4, 33, seed=5)
    g = currents(6, 4, 33, seed=6)

    def run():
        leaf = (base[0] if constant else base).clone().requires_grad_()
        x = leaf.unsqueeze(0).expand(6, 4, 33) if constant else leaf
        spikes = iir_spikes(x, params)
        (spikes * g).sum().backward()
        with torch.no_grad():
            eval_spikes = iir_spikes(x, params)
        return spikes, leaf.grad, eval_spikes

    got, want = _both(run, monkeypatch)
    assert _equal(got, want) and torch.equal(got[0], got[2])


def test_threaded_split_equals_one_chunk(monkeypatch):
    """A layer above the chunk size runs on several threads: same bits as one thread."""
    params = PARAMS["cifar"]
    x0 = currents(5, 2 * native.CHUNK + 300, seed=9)
    g = currents(5, 2 * native.CHUNK + 300, seed=10)
    threads = torch.get_num_threads()

    def run(n_threads):
        torch.set_num_threads(n_threads)
        try:
            x = x0.clone().requires_grad_()
            spikes = iir_spikes(x, params)
            (spikes * g).sum().backward()
            return spikes, x.grad
        finally:
            torch.set_num_threads(threads)

    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # force a 3-way split in native._chunks
    assert len(native._chunks(x0[0].numel())) == 3
    split = run(1)
    monkeypatch.undo()
    single = run(1)
    assert _equal(split, single)


def test_disabled_or_without_compiler_says_why(monkeypatch):
    monkeypatch.setenv("HNN_BRIDGE_NATIVE", "0")
    assert native.native_unavailable_reason() == "disabled by HNN_BRIDGE_NATIVE=0"
    assert not native.native_enabled(torch.zeros(2))
    monkeypatch.delenv("HNN_BRIDGE_NATIVE")
    assert not native.native_enabled(torch.zeros(2, dtype=torch.float64))  # float64 keeps the ATen path
    saved = dict(native._state)
    monkeypatch.setenv("CC", "/nonexistent/cc")
    native._state.clear()
    try:
        assert native.native_unavailable_reason() == "no C compiler (gcc or cc) on PATH"
        x = currents(3, 10, seed=1)
        assert torch.equal(
            iir_spikes(x, PARAMS["default"]), iir_spikes(x.double(), PARAMS["default"]).float()
        )
    finally:
        native._state.clear()
        native._state.update(saved)


@pytest.mark.parametrize("shape", [(6, 5, 8, 8), (3, 7, 9), (2, 3, 32, 32)])
@pytest.mark.parametrize("kind", ["spikes", "values"])
def test_maxpool2_equals_torch_values_and_gradients(shape, kind):
    """The native P2 pool: torch's outputs and input gradients bit for bit, including ties
    (all-zero spike windows route to their first element), odd sizes, NaN and -0.0."""
    from hnn_bridge.pooling import MaxPool2d

    gen = torch.Generator().manual_seed(3)
    x0 = (
        (torch.rand(shape, generator=gen) < 0.1).float()
        if kind == "spikes"
        else torch.randn(shape, generator=gen)
    )
    if kind == "values":
        x0.view(-1)[::17] = float("nan")
        x0.view(-1)[5::23] = x0.view(-1)[4::23][: x0.view(-1)[5::23].numel()]  # ties
    g = torch.randn(MaxPool2d(2)(x0).shape, generator=gen)
    g.view(-1)[::7] = -0.0
    pool = MaxPool2d(2)
    assert pool._native(x0)
    results = []
    for fn in (pool, torch.nn.MaxPool2d(2)):
        x = x0.clone().requires_grad_()
        out = fn(x)
        out.backward(g)
        results.append((out, x.grad))
    assert _equal(results[0], results[1])
    assert not pool._native(x0.double()) and not MaxPool2d(3)._native(x0)


def test_surrogate_floor_and_nan_match_the_aten_path(monkeypatch):
    """Far from threshold eq. 6 is flushed to exactly 0 (EXP_FLOOR); NaN propagates."""
    x0 = currents(5, 4, 64, seed=12, scale=40.0)
    x0[2, 0, :3] = float("nan")
    g = currents(5, 4, 64, seed=13)

    def run():
        x = x0.clone().requires_grad_()
        spikes, volts, _ = iir_multistep(x, PARAMS["cifar"])
        (spikes * g).sum().backward()
        return spikes, volts, x.grad

    got, want = _both(run, monkeypatch)
    assert _equal(got, want)
    assert (got[2] == 0).float().mean() > 0.3 and got[2].isnan().any()
