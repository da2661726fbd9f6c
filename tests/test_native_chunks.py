"""The native CPU loop on layers of awkward widths, against the ATen path of the same neuron
(``HNN_BRIDGE_NATIVE=0``), bit for bit: forward (spikes, V, final state) and every
gradient, with an initial state, for a single neuron, for a layer of several 256-neuron
blocks plus a partial one, and for a layer large enough to be cut into chunks for several
threads. Each block and chunk reads and writes its own neurons' slice of the state."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import currents

from hnn_bridge.functional import IIRState, iir_multistep
from hnn_bridge.params import IIRParams

try:  # the native loop's module (moved from hnn_bridge.functional to hnn_bridge.kernels)
    from hnn_bridge.kernels import native
except ImportError:  # pragma: no cover - older layout
    from hnn_bridge.functional import native  # type: ignore[no-redef]

pytestmark = pytest.mark.skipif(
    native.native_unavailable_reason() is not None,
    reason=f"native neuron unavailable: {native.native_unavailable_reason()}",
)

PARAMS = {
    "dual_exp": IIRParams(reset_decay=math.exp(-0.25), v_threshold=0.7),
    "first_order": IIRParams(synapse="first_order", tau_s=3.0, membrane_decay=0.9, v_threshold=0.6),
}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def _run(x0: torch.Tensor, s0: list[torch.Tensor], params: IIRParams, seed: int) -> list[torch.Tensor]:
    """Spikes, V, the five final state tensors, and the gradients of x and of the five
    initial state tensors for a random weighting of every output."""
    x = x0.clone().requires_grad_()
    state = IIRState(*(s.clone().requires_grad_() for s in s0))
    spikes, volts, final = iir_multistep(x, params, state)
    weights = [
        currents(*t.shape, seed=seed + i) for i, t in enumerate((spikes, volts, final.p1, final.p2, final.r))
    ]
    loss = sum((t * w).sum() for t, w in zip((spikes, volts, final.p1, final.p2, final.r), weights))
    loss.backward()
    return [spikes, volts, *final, x.grad, *(s.grad for s in state)]


def _native_and_aten(x0, s0, params, seed, monkeypatch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    monkeypatch.delenv("HNN_BRIDGE_NATIVE", raising=False)
    assert native.native_enabled(x0)
    got = _run(x0, s0, params, seed)
    monkeypatch.setenv("HNN_BRIDGE_NATIVE", "0")
    assert not native.native_enabled(x0)
    want = _run(x0, s0, params, seed)
    monkeypatch.delenv("HNN_BRIDGE_NATIVE")
    return got, want


def _state(shape: tuple[int, ...], seed: int) -> list[torch.Tensor]:
    """A non-zero initial state that differs from neuron to neuron (O[-1] are spikes)."""
    s0 = [currents(1, *shape, seed=seed + i, scale=0.5)[0] for i in range(5)]
    s0[4] = (s0[4] > 0).float()
    return s0


def _assert_bit_equal(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    names = [
        "spikes",
        "V",
        "p1",
        "p2",
        "R",
        "V_T",
        "O_T",
        "grad x",
        "grad p1",
        "grad p2",
        "grad R",
        "grad V",
        "grad O",
    ]
    assert len(got) == len(want) == len(names)
    for name, a, b in zip(names, got, want):
        assert a is not None and b is not None, name
        assert a.shape == b.shape and torch.equal(_bits(a), _bits(b)), name


@pytest.mark.parametrize("name", sorted(PARAMS))
@pytest.mark.parametrize("shape", [(1,), (1, 1), (3 * 256 + 17,), (5, 157)], ids=str)
def test_blocks_of_neurons_equal_the_aten_path(name: str, shape: tuple[int, ...], monkeypatch) -> None:
    """One neuron, and layers of several 256-neuron blocks with a partial last block
    (785 neurons, and 5 x 157): every block starts from its own neurons' initial state."""
    x0 = currents(6, *shape, seed=3)
    s0 = _state(shape, 10)
    got, want = _native_and_aten(x0, s0, PARAMS[name], 40, monkeypatch)
    _assert_bit_equal(got, want)
    assert got[0].sum() > 0 and (got[0] == 0).any()  # some spikes, not all
    if shape[-1] > 256:  # a neuron of each block fired on its own state: the blocks differ
        assert not torch.equal(got[0][:, :256], got[0][:, 256:512])


def test_chunks_on_several_threads_equal_the_aten_path(monkeypatch) -> None:
    """A layer above the per-thread chunk size runs in chunks on three threads; each chunk
    reads its slice of the initial state and of the incoming gradients."""
    n = 2 * getattr(native, "CHUNK", 32768) + 300
    x0 = currents(3, n, seed=5)
    s0 = _state((n,), 20)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        assert torch.get_num_threads() == 3
        got, want = _native_and_aten(x0, s0, PARAMS["dual_exp"], 60, monkeypatch)
    finally:
        torch.set_num_threads(threads)
    _assert_bit_equal(got, want)
    assert got[0].sum() > 0


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_a_gradient_through_the_membrane_alone_equals_the_aten_path(name: str, monkeypatch) -> None:
    """A loss on V only (no gradient reaches the spikes: the backward's g_spikes is None):
    the native backward's branch without it gives the ATen path's input gradient bit for
    bit, and one that differs from the spikes-and-V case."""

    def grads() -> tuple[torch.Tensor, torch.Tensor]:
        x = currents(6, 3, 300, seed=11).requires_grad_()
        _, volts, _ = iir_multistep(x, PARAMS[name])
        (volts * currents(6, 3, 300, seed=12)).sum().backward()
        return x.grad, volts.detach()

    monkeypatch.delenv("HNN_BRIDGE_NATIVE", raising=False)
    got, v = grads()
    monkeypatch.setenv("HNN_BRIDGE_NATIVE", "0")
    want, v_aten = grads()
    assert torch.equal(_bits(v), _bits(v_aten))
    assert torch.equal(_bits(got), _bits(want))
    assert got.abs().sum() > 0 and not torch.equal(got, got[0].expand_as(got))
