"""How the adapters take a state handed to them (docs/notes/2026-12-06-mutation-testing.md,
"The last real gaps"): a state of another dtype than the input's is converted to the
neuron's state dtype (`state_dtype`: float32 for half-precision input, else the input's),
an snnTorch ``mem`` that is not the held membrane starts p[t-1], p[t-2], R[t-1] and
O[t-1] from zero (eq. 1a-1d from a fresh neuron at V = mem), the membrane returned in the
degenerate case V[t] = x[t] is not the caller's input tensor, `detach` leaves an snnTorch
neuron's None buffer alone, and a deep copy of a neuron in the middle of a graph holds
its state without the graph.

Every value is compared bit for bit with the independent reference `iir_reference.run`
(float64) or with the neuron run on the state converted by hand."""

from __future__ import annotations

import copy

import pytest
import snntorch
import torch
from hnn_bridge.adapters.snntorch import IIRLeaky, detach
from hnn_bridge.adapters.spikingjelly import IIRNode
from iir_reference import Neuron, run
from torch import nn

from hnn_bridge.functional import IIRState, iir_multistep, iir_multistep_reference, state_dtype
from hnn_bridge.params import IIRParams

NEURON = Neuron(synapse="dual_exp", tau_m=3.0, tau_s=1.5, theta=0.5, v_threshold=0.6)

# (input dtype, dtype of the state handed in): the state must come back in state_dtype(input)
DTYPE_PAIRS = [
    (torch.float32, torch.float64),
    (torch.float64, torch.float32),
    (torch.float16, torch.float64),
    (torch.bfloat16, torch.float64),
]


def _state(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> IIRState:
    gen = torch.Generator().manual_seed(seed)
    p1, p2, r, v = (torch.rand(shape, generator=gen, dtype=torch.float64) * 0.5 for _ in range(4))
    o = (torch.rand(shape, generator=gen) > 0.5).double()
    return IIRState(*(s.to(dtype) for s in (p1, p2, r, v, o)))


def _inputs(steps: int, shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(steps, *shape, generator=gen, dtype=torch.float64) * 0.8).to(dtype)


# ----------------------------------------------------------------------------- state dtype


@pytest.mark.parametrize("x_dtype,s_dtype", DTYPE_PAIRS, ids=lambda d: str(d).split(".")[-1])
def test_snntorch_state_of_another_dtype_is_converted_to_the_state_dtype(x_dtype, s_dtype) -> None:
    """``lif(x, state)`` with an `IIRState` of another dtype: the neuron computes in
    state_dtype(x.dtype) from the state converted to it, and returns the state in it."""
    xs = _inputs(3, (2, 5), x_dtype, seed=1)
    given = _state((2, 5), s_dtype, seed=2)
    want_dtype = state_dtype(x_dtype)
    converted = IIRState(*(s.to(want_dtype) for s in given))

    lif, same = IIRLeaky(**NEURON.kwargs), IIRLeaky(**NEURON.kwargs)
    state, ref_state, spikes = given, converted, []
    for x in xs:
        spk, state = lif(x, state)
        ref_spk, ref_state = same(x, ref_state)
        assert spk.dtype == x_dtype and torch.equal(spk, ref_spk)
        assert [s.dtype for s in state] == [want_dtype] * 5
        assert [torch.equal(a, b) for a, b in zip(state, ref_state)] == [True] * 5
        spikes.append(spk)
    if x_dtype == torch.float64:  # the reference's neuron, from the converted state
        ref = run(xs, NEURON, tuple(converted))
        assert torch.equal(torch.stack(spikes), ref[0]) and ref[0].sum() > 0
        assert [torch.equal(a, b) for a, b in zip(state, ref[2])] == [True] * 5


@pytest.mark.parametrize("x_dtype,s_dtype", DTYPE_PAIRS, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_spikingjelly_memories_of_another_dtype_are_converted(x_dtype, s_dtype, step_mode: str) -> None:
    """An `IIRNode` whose memories are of another dtype than the next input (a run in
    float64, then float32 input, ...) continues from them converted to state_dtype(x)."""
    xs = _inputs(4, (2, 5), x_dtype, seed=3)
    given = _state((2, 5), s_dtype, seed=4)
    want_dtype = state_dtype(x_dtype)
    converted = IIRState(*(s.to(want_dtype) for s in given))
    node = IIRNode(step_mode=step_mode, **NEURON.kwargs)
    node.p1, node.p2, node.r, node.v, node.o = given
    if step_mode == "m":
        spikes = node(xs)
    else:
        spikes = torch.stack([node(x) for x in xs])
    params = IIRParams(**NEURON.kwargs)
    # what the node runs in each mode (the per-step loop or the fused executor), started
    # from the state converted by hand
    want = (iir_multistep if step_mode == "m" else iir_multistep_reference)(xs, params, converted)
    assert spikes.dtype == x_dtype and torch.equal(spikes, want[0]) and want[0].sum() > 0
    for name, b in zip(("p1", "p2", "r", "v", "o"), want[2]):
        a = getattr(node, name)
        assert a.dtype == want_dtype and torch.equal(a, b), name


# ----------------------------------------------------------------------------- snnTorch's mem


def test_snntorch_foreign_mem_starts_the_other_states_from_zero() -> None:
    """``lif(x, mem)`` with a tensor that is not the membrane the module returned (here on
    a neuron whose held p1, p2, R, O are not zero): a fresh neuron at V[t-1] = mem, the
    reference from the state (0, 0, 0, mem, 0)."""
    xs = _inputs(6, (3, 4), torch.float64, seed=5) + 0.3
    lif = IIRLeaky(**NEURON.kwargs)
    for x in xs[:3]:
        lif(x + 1.0)
    assert all(bool(s.abs().sum() > 0) for s in lif.state)  # held p1, p2, r, o are not zero
    mem = torch.full((3, 4), 0.25, dtype=torch.float64)
    zero = torch.zeros(3, 4, dtype=torch.float64)
    spikes, volts = [], []
    for x in xs[3:]:
        spk, mem = lif(x, mem)  # from the second step on, mem is the one returned: held
        spikes.append(spk)
        volts.append(mem)
    ref = run(xs[3:], NEURON, (zero, zero, zero, torch.full((3, 4), 0.25, dtype=torch.float64), zero))
    assert torch.equal(torch.stack(spikes), ref[0]) and ref[0].sum() > 0
    assert torch.equal(torch.stack(volts), ref[1])
    for a, b in zip(lif.state, ref[2]):
        assert torch.equal(a, b)
    # one step from a foreign mem on a fresh module, the first step alone
    fresh = IIRLeaky(**NEURON.kwargs)
    start = torch.full((3, 4), -0.1, dtype=torch.float64)
    spk, v = fresh(xs[0], start)
    ref = run(xs[:1], NEURON, (zero, zero, zero, start, zero))
    assert torch.equal(v, ref[1][0]) and torch.equal(spk, ref[0][0])
    assert [torch.equal(a, b) for a, b in zip(fresh.state, ref[2])] == [True] * 5


# ----------------------------------------------------------------------------- V[t] = x[t]

# no synapse filter, lambda = 0 and V_th = 0: V[t] = x[t] exactly (no product, no term)
DEGENERATE = dict(synapse="none", membrane_decay=0.0, v_threshold=0.0)


def test_snntorch_degenerate_membrane_is_not_the_callers_input() -> None:
    """With V[t] = x[t] the membrane the neuron returns and holds is a copy: refilling the
    input buffer for the next step (in place) does not change the held state, and
    snnTorch's ``Leaky.detach(mem)`` (``mem.detach_()``) does not cut the caller's graph."""
    xs = _inputs(4, (2, 3), torch.float64, seed=6) - 0.4
    lif = IIRLeaky(**DEGENERATE)
    buffer = torch.empty(2, 3, dtype=torch.float64)
    held = []
    for x in xs:
        buffer.copy_(x)  # one input buffer, refilled every step
        spk, mem = lif(buffer)
        assert mem.data_ptr() != buffer.data_ptr()
        held.append(mem)
    buffer.fill_(7.0)
    assert torch.equal(torch.stack(held), xs)  # V[t] = x[t], unchanged by the refills
    assert torch.equal(lif.mem, xs[-1]) and torch.equal(lif.state.v, xs[-1])
    ref = run(xs, Neuron(synapse="none", lam=0.0, v_threshold=0.0))
    assert torch.equal(torch.stack(held), ref[1])

    w = torch.full((3,), 0.5, dtype=torch.float64, requires_grad=True)
    x = xs[0] * w  # the caller's current, part of its graph
    spk, mem = IIRLeaky(**DEGENERATE)(x)
    snntorch.Leaky.detach(mem)  # snnTorch's truncated-BPTT helper: mem.detach_()
    assert x.requires_grad and x.grad_fn is not None
    x.sum().backward()
    assert torch.equal(w.grad, xs[0].sum(0))


# ----------------------------------------------------------------------------- detach, deepcopy


class LeakyWithOptionalBuffer(snntorch.Leaky):
    """An snnTorch neuron with an optional buffer left None (PyTorch's idiom, as
    ``BatchNorm``'s ``running_mean`` without running statistics)."""

    def __init__(self) -> None:
        super().__init__(beta=0.9, init_hidden=True)
        self.register_buffer("trace", None)


def test_detach_skips_none_buffers_and_detaches_every_state() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(4, 3), LeakyWithOptionalBuffer(), nn.Linear(3, 3), IIRLeaky(init_hidden=True)
    )
    x = torch.rand(2, 4)
    net(x)
    other, lif = net[1], net[3]
    assert other.mem.requires_grad and lif.mem.requires_grad and lif.p1.requires_grad
    before = other.mem.clone(), lif.state
    assert detach(net) is net
    assert other.trace is None
    assert not other.mem.requires_grad and torch.equal(other.mem, before[0])
    assert all(not s.requires_grad for s in lif.state)
    assert [torch.equal(a, b) for a, b in zip(lif.state, before[1])] == [True] * 5


def test_deepcopy_of_a_neuron_in_a_graph_holds_its_state_without_the_graph() -> None:
    """``copy.deepcopy`` (and pickling) of an IIRLeaky between forward and backward: the
    copy's five states equal the original's and carry no graph; the original keeps its."""
    xs = _inputs(3, (2, 4), torch.float32, seed=7) + 0.5
    w = torch.ones(4, requires_grad=True)
    lif = IIRLeaky(init_hidden=True, **NEURON.kwargs)
    for x in xs:
        lif(x * w)
    assert all(s.requires_grad for s in lif.state[:4])
    twin = copy.deepcopy(lif)
    assert all(not s.requires_grad and s.grad_fn is None for s in twin.state)
    assert [torch.equal(a, b) for a, b in zip(twin.state, lif.state)] == [True] * 5
    assert lif.mem.requires_grad  # the original is untouched
    spk_a, spk_b = lif(xs[0]), twin(xs[0])
    assert torch.equal(spk_a, spk_b)


# ----------------------------------------------------------------------------- edge shapes


def test_snntorch_tutorial_loop_on_a_single_neuron_carries_its_state() -> None:
    """``mem = lif.init_leaky()``, then ``spk, mem = lif(cur, mem)`` on one neuron (a
    one-element membrane): the held state carries over between steps as for any shape,
    and the spikes and membrane equal the float64 reference."""
    xs = _inputs(8, (1,), torch.float64, seed=7) * 1.5
    ref_spikes, ref_volts, _ = run(xs, NEURON)
    assert ref_spikes.sum() >= 2  # it fires, so the reset path is in play
    # the membrane handed back as returned, and as a detached view of the held one (as in
    # truncated BPTT): both are the held state
    for hand_back in (lambda m: m, lambda m: m.detach()):
        lif = IIRLeaky(**NEURON.kwargs)
        mem, spikes, volts = lif.init_leaky(), [], []
        for x in xs:
            spk, mem = lif(x, hand_back(mem))
            spikes.append(spk)
            volts.append(mem)
        assert torch.equal(torch.stack(spikes), ref_spikes)
        assert torch.equal(torch.stack(volts), ref_volts)


def test_spikingjelly_node_runs_a_single_time_step() -> None:
    """``IIRNode`` in multistep mode with T = 1: one step of the reference, and the node's
    state continues from it on the next call."""
    from spikingjelly.activation_based import functional

    node = IIRNode(step_mode="m", **NEURON.kwargs)
    xs = _inputs(3, (2, 4), torch.float64, seed=8) * 2.0
    out = torch.cat([node(xs[t : t + 1]) for t in range(3)])
    assert torch.equal(out, run(xs, NEURON)[0]) and out.sum() > 0
    functional.reset_net(node)
    assert torch.equal(node(xs[:1]), run(xs[:1], NEURON)[0])


def test_spikingjelly_node_takes_one_neuron_without_a_batch_dimension() -> None:
    """A time-first input of shape [T] (one neuron, no batch dimension) is valid: the
    reference's spikes; a 0-dim input is refused (`test_mutation_gaps.py`)."""
    node = IIRNode(step_mode="m", **NEURON.kwargs)
    xs = _inputs(8, (1,), torch.float64, seed=7).reshape(8) * 1.5
    out = node(xs)
    assert out.shape == (8,) and torch.equal(out, run(xs, NEURON)[0]) and out.sum() >= 2


def test_post_filter_bias_starts_at_zero_in_every_neuron() -> None:
    """The learnable bias after the filter starts at zero (the weight op's own bias is what
    `PostFilterBias.like` moves there), in the SpikingJelly node, the snnTorch neuron and
    `IIRNeuron`."""
    from hnn_bridge.neuron import IIRNeuron

    for module in (
        IIRNode(post_filter_bias=(3, 1, 1)),
        IIRLeaky(post_filter_bias=(3, 1, 1)),
        IIRNeuron(post_filter_bias=(3, 1, 1)),
    ):
        assert module.bias.shape == (3, 1, 1) and torch.equal(module.bias, torch.zeros(3, 1, 1))


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_snntorch_beta_at_the_ends_of_the_unit_interval(beta: float) -> None:
    """``beta`` = 0 (no membrane memory) and 1 (no leak) are valid, as ``membrane_decay``."""
    lif = IIRLeaky(beta=beta)
    assert lif.beta == beta and lif.params.membrane_decay == beta


@pytest.mark.parametrize("init_hidden", [False, True])
def test_snntorch_state_before_the_first_call_is_empty_as_in_leaky(init_hidden: bool) -> None:
    """Before its first call an IIRLeaky holds no state, as snnTorch's ``Leaky`` (``mem`` is a
    0-element tensor there): code that asks ``lif.mem.numel()`` to see whether a neuron has
    run gets the same answer. Every state buffer is empty and none enters the state_dict."""
    stock = snntorch.Leaky(beta=0.9, init_hidden=init_hidden)
    lif = IIRLeaky(beta=0.9, init_hidden=init_hidden)
    assert stock.mem.shape == lif.mem.shape == (0,)
    assert all(getattr(lif, n).shape == (0,) for n in ("p1", "p2", "r", "mem", "o"))
    assert not {"p1", "p2", "r", "mem", "o"} & set(lif.state_dict())
    x = torch.rand(3, 4)
    lif(x) if init_hidden else lif(x, lif.init_leaky())
    assert lif.mem.shape == (3, 4)
