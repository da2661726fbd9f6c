"""The SpikingJelly node `IIRNode` against the torch core: spikes bit-equal, gradients,
state semantics (continuation, reset_net, detach_net, step modes, store_v_seq)."""

import pytest
import torch
from helpers import SYNAPSES, currents, rel_err
from hnn_bridge.adapters.spikingjelly import IIRNode
from spikingjelly.activation_based import functional, layer
from spikingjelly.activation_based.base import MemoryModule
from spikingjelly.activation_based.neuron import BaseNode
from torch import nn

from hnn_bridge import IIRNeuron, IIRParams
from hnn_bridge.functional import iir_multistep, iir_multistep_reference


def test_is_a_spikingjelly_node_with_five_memories():
    node = IIRNode()
    assert isinstance(node, BaseNode) and isinstance(node, MemoryModule)
    assert [name for name, _ in node.named_memories()] == ["v", "p1", "p2", "r", "o"]
    assert node.step_mode == "m" and node.backend == "torch"
    assert node.params == IIRParams()
    assert list(node.state_dict()) == []
    assert "tau_m=2.0" in repr(IIRNode(tau_m=2.0)) and "step_mode='s'" in repr(IIRNode(step_mode="s"))


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="backend must be one of 'torch', 'cupy', got 'jax'"):
        IIRNode(backend="jax")
    with pytest.raises(ValueError, match="tau_m != tau_s"):
        IIRNode(tau_m=2.0, tau_s=2.0)
    with pytest.raises(ValueError, match="step_mode"):
        IIRNode(step_mode="x")
    with pytest.raises(TypeError, match="floating-point"):
        IIRNode()(torch.ones(3, 2, dtype=torch.long))


@pytest.mark.parametrize("synapse", SYNAPSES)
@pytest.mark.parametrize("T", [1, 5, 25])
@pytest.mark.parametrize("detach_reset", [False, True])
def test_multi_and_single_step_equal_reference(synapse, T, detach_reset):
    kw = dict(synapse=synapse, detach_reset=detach_reset, v_threshold=0.8)
    x = currents(T, 6, 40, seed=T).requires_grad_()
    g = torch.randn(T, 6, 40)

    ref = IIRNeuron(**kw)(x)
    (gx_ref,) = torch.autograd.grad((ref * g).sum(), x)
    assert 0 < ref.mean() < 0.9  # the test exercises firing and silence

    multi = IIRNode(**kw, step_mode="m")
    out_m = multi(x)
    (gx_m,) = torch.autograd.grad((out_m * g).sum(), x)

    single = IIRNode(**kw, step_mode="s")
    out_s = torch.stack([single(x_t) for x_t in x])
    (gx_s,) = torch.autograd.grad((out_s * g).sum(), x)

    assert torch.equal(out_m, ref) and torch.equal(out_s, ref)
    assert torch.equal(gx_m, gx_ref)  # the same fused Function
    assert rel_err(gx_s, gx_ref) < 1e-6  # per-step autograd vs hand-written BPTT


def test_two_calls_continue_the_state_and_reset_net_repeats():
    x = currents(20, 4, 30, seed=1)
    ref = IIRNeuron()(x)
    node = IIRNode()
    first = node(x[:7])
    second = node(x[7:])
    assert torch.equal(torch.cat([first, second]), ref)
    assert not torch.equal(second, IIRNeuron()(x[7:]))  # the state mattered
    functional.reset_net(node)
    assert all(isinstance(m, float) and m == 0.0 for m in node.memories())
    assert torch.equal(node(x[:7]), first)


def test_single_step_mode_continues_across_calls_and_modes():
    x = currents(12, 3, 20, seed=2)
    ref = IIRNeuron()(x)
    node = IIRNode(step_mode="s")
    outs = [node(x_t) for x_t in x[:5]]
    functional.set_step_mode(node, "m")
    outs.append(node(x[5:]))  # multi-step call continues the single-step state
    assert torch.equal(torch.cat([torch.stack(outs[:5]), outs[5]]), ref)


def test_state_gradient_flows_across_calls():
    x = currents(16, 3, 25, seed=3).requires_grad_()
    g = torch.randn(16, 3, 25)
    (gx_ref,) = torch.autograd.grad((IIRNeuron()(x) * g).sum(), x)
    node = IIRNode()
    out = torch.cat([node(x[:6]), node(x[6:11]), node(x[11:])])
    (gx,) = torch.autograd.grad((out * g).sum(), x)
    assert rel_err(gx, gx_ref) < 1e-6


def test_detach_net_cuts_the_graph_between_chunks():
    x = currents(10, 2, 15, seed=4).requires_grad_()
    node = IIRNode()
    node(x[:5])
    functional.detach_net(node)  # states include views of V and spikes: must not raise
    out = node(x[5:])
    (gx,) = torch.autograd.grad(out.sum() + node.v.sum(), x)
    assert torch.count_nonzero(gx[:5]) == 0 and torch.count_nonzero(gx[5:]) > 0


def test_input_of_another_shape_starts_from_zero():
    node = IIRNode()
    node(currents(5, 2, 10))
    y = currents(5, 3, 10, seed=9)
    assert torch.equal(node(y), IIRNeuron()(y))


@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_store_v_seq(step_mode):
    x = currents(8, 2, 12, seed=5)
    _, volts, _ = iir_multistep(x, IIRParams())
    node = IIRNode(step_mode=step_mode, store_v_seq=True)
    if step_mode == "m":
        node(x)
    else:
        for x_t in x:
            node(x_t)
    assert torch.equal(node.v_seq, volts)
    assert torch.equal(node.v, volts[-1])
    functional.reset_net(node)
    assert node.v_seq is None


def test_functional_forward_with_explicit_states():
    x = currents(6, 2, 8, seed=6)
    _, volts, state = iir_multistep_reference(x, IIRParams())
    node = IIRNode()
    (spikes,), states = node.functional_forward((x,), tuple(node.memories()))
    assert torch.equal(spikes, IIRNeuron()(x))
    assert torch.equal(states[0], state.v) and torch.equal(states[4], state.o)
    assert all(isinstance(m, float) for m in node.memories())  # functional: module untouched


def make_cnn(node_kw, seed):
    torch.manual_seed(seed)
    net = nn.Sequential(
        layer.SeqToANNContainer(nn.Conv2d(1, 6, 3, padding=1), nn.MaxPool2d(2)),
        IIRNode(**node_kw),
        layer.SeqToANNContainer(nn.Conv2d(6, 8, 3, padding=1), nn.MaxPool2d(2)),
        IIRNode(**node_kw),
        layer.SeqToANNContainer(nn.Flatten(), nn.Linear(8 * 3 * 3, 10)),
        IIRNode(**node_kw),
    )
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, std=0.9)
    return net


def test_cnn_with_seq_to_ann_containers_matches_reference_and_resets():
    sj = make_cnn({}, seed=0)
    ref = make_cnn({}, seed=0)
    for i in (1, 3, 5):
        ref[i] = IIRNeuron()
    x = torch.rand(6, 4, 1, 12, 12)
    out = sj(x)
    assert out.shape == (6, 4, 10) and out.sum() > 0
    assert torch.equal(out, ref(x))
    second = sj(x)
    functional.reset_net(sj)
    assert torch.equal(sj(x), out) and not torch.equal(second, out)


def test_cnn_of_spikingjelly_layers_in_single_and_multi_step_mode():
    torch.manual_seed(1)
    net = nn.Sequential(
        layer.Conv2d(1, 6, 3, padding=1),
        layer.MaxPool2d(2),
        IIRNode(),
        layer.Flatten(),
        layer.Linear(6 * 6 * 6, 10),
        IIRNode(),
    )
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, std=0.9)
    x = torch.rand(5, 3, 1, 12, 12)
    functional.set_step_mode(net, "m")
    out = net(x)
    assert out.sum() > 0
    functional.reset_net(net)
    functional.set_step_mode(net, "s")
    assert torch.equal(torch.stack([net(x_t) for x_t in x]), out)


def test_training_step_on_mnist_shaped_data_reduces_loss():
    torch.manual_seed(0)
    net = nn.Sequential(
        layer.Flatten(step_mode="m"),
        layer.Linear(784, 64, step_mode="m"),
        IIRNode(),
        layer.Linear(64, 10, step_mode="m"),
        IIRNode(),
    )
    x = torch.rand(16, 1, 28, 28)
    y = torch.randint(0, 10, (16,))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        counts = net(x.unsqueeze(0).expand(8, *x.shape)).sum(0)
        loss = nn.functional.cross_entropy(counts, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        functional.reset_net(net)
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("synapse", SYNAPSES)
def test_experimental_flexsn_node_matches_reference_on_cpu(synapse):
    from hnn_bridge.adapters.triton_flexsn import flexsn_iir_node

    params = IIRParams(synapse=synapse, detach_reset=synapse == "none")
    x = currents(12, 3, 20, seed=7).requires_grad_()
    g = torch.randn(12, 3, 20)
    ref = IIRNeuron.from_params(params)(x)
    (gx_ref,) = torch.autograd.grad((ref * g).sum(), x)
    node = flexsn_iir_node(params)
    out = node(x)
    (gx,) = torch.autograd.grad((out * g).sum(), x)
    assert torch.equal(out, ref) and rel_err(gx, gx_ref) < 1e-6
    assert not torch.equal(node(x), ref)  # the state persists ...
    functional.reset_net(node)
    assert torch.equal(node(x), ref)  # ... until reset_net
