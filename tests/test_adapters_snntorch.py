"""The snnTorch neuron `IIRLeaky` and the snnTorch-style erfc surrogate: spikes bit-equal
to the torch core, gradients, explicit and hidden state, snnTorch's reset/detach helpers."""

import math

import pytest
import snntorch
import torch
from helpers import SYNAPSES, currents, rel_err
from hnn_bridge.adapters.snntorch import IIRLeaky, detach, erfc_surrogate, reset
from snntorch import utils
from torch import nn

from hnn_bridge import IIRNeuron, IIRParams
from hnn_bridge.functional import IIRState, iir_multistep


def run_explicit(lif, x):
    state = lif.init_iirleaky()
    spikes = []
    for x_t in x:
        spk, state = lif(x_t, state)
        spikes.append(spk)
    return torch.stack(spikes), state


def run_hidden(net, x):
    return torch.stack([net(x_t) for x_t in x])


def test_is_an_snntorch_leaky_without_saved_state():
    lif = IIRLeaky(tau_m=2.0)
    assert isinstance(lif, snntorch.Leaky) and lif in snntorch.SpikingNeuron.instances
    assert list(lif.state_dict()) == []
    assert lif.params == IIRParams(tau_m=2.0)
    assert torch.isclose(lif.beta, torch.tensor(math.exp(-0.5)))
    assert "tau_m=2.0" in repr(lif)


@pytest.mark.parametrize("synapse", SYNAPSES)
@pytest.mark.parametrize("T", [1, 5, 25])
@pytest.mark.parametrize("detach_reset", [False, True])
def test_explicit_state_loop_equals_reference(synapse, T, detach_reset):
    kw = dict(synapse=synapse, detach_reset=detach_reset, v_threshold=0.8)
    x = currents(T, 6, 40, seed=T).requires_grad_()
    g = torch.randn(T, 6, 40)
    ref = IIRNeuron(**kw)(x)
    (gx_ref,) = torch.autograd.grad((ref * g).sum(), x)
    assert 0 < ref.mean() < 0.9
    out, state = run_explicit(IIRLeaky(**kw), x)
    (gx,) = torch.autograd.grad((out * g).sum(), x)
    assert torch.equal(out, ref)
    assert rel_err(gx, gx_ref) < 1e-6
    _, volts, final = iir_multistep(x.detach(), IIRParams(**kw))
    assert isinstance(state, IIRState) and torch.equal(state.v, volts[-1]) and torch.equal(state.p1, final.p1)


def test_fires_at_exactly_the_threshold_unlike_stock_leaky():
    x = torch.tensor([[1.0, 0.999]])  # synapse 'none', first step: V = x
    spk, mem = IIRLeaky(synapse="none")(x, None)
    assert spk.tolist() == [[1.0, 0.0]] and mem.tolist() == x.tolist()
    stock_spk, _ = snntorch.Leaky(beta=0.5)(x)
    assert stock_spk.tolist() == [[0.0, 0.0]]  # snnTorch fires at V > V_th


def test_hidden_state_in_sequential_continues_and_utils_reset_repeats():
    x = currents(20, 4, 30, seed=1)
    ref = IIRNeuron()(x)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Identity(), IIRLeaky(init_hidden=True))
    first = run_hidden(net, x[:7])
    second = run_hidden(net, x[7:])
    assert torch.equal(torch.cat([first, second]), ref)
    utils.reset(net)
    lif = net[1]
    assert all(torch.count_nonzero(s) == 0 for s in lif.state)
    assert torch.equal(run_hidden(net, x[:7]), first)


def test_output_flag_and_explicit_state_errors():
    x = currents(3, 2, 5)
    lif = IIRLeaky(init_hidden=True, output=True)
    spk, mem = lif(x[0])
    assert mem is lif.mem and torch.equal(mem, lif.state.v)
    with pytest.raises(TypeError, match=r"`mem` \(or `state`\) should not be passed"):
        lif(x[1], lif.state)
    with pytest.raises(TypeError, match=r"`mem` \(or `state`\) should not be passed"):
        lif(x[1], lif.mem)
    plain = IIRLeaky(output=True)
    _, mem = plain(x[0])  # explicit mode without a state returns mem, as snnTorch does
    assert isinstance(mem, torch.Tensor) and mem is plain.mem
    _, state = plain(x[1], plain.state)  # ... and the whole state when given one
    assert isinstance(state, IIRState)


def test_state_none_continues_the_held_state_like_snntorch():
    x = currents(6, 2, 9, seed=3)
    ref = IIRNeuron()(x)
    lif = IIRLeaky()
    assert torch.equal(torch.stack([lif(x_t)[0] for x_t in x]), ref)


def test_stock_reset_hidden_and_detach_hidden_reach_all_five_states():
    x = currents(6, 2, 9, seed=4).requires_grad_()
    lif = IIRLeaky(init_hidden=True)
    run_hidden(lif, x)
    assert all(s.requires_grad for s in lif.state)
    snntorch.Leaky.detach_hidden()  # snnTorch detaches `mem` in place only ...
    assert all(not s.requires_grad for s in lif.state)  # ... IIRLeaky follows for the rest
    out = lif(x[0])
    (gx,) = torch.autograd.grad(out.sum() + lif.mem.sum(), x)
    assert torch.count_nonzero(gx[1:]) == 0
    snntorch.Leaky.reset_hidden()  # snnTorch zeroes `mem` only ...
    assert all(torch.count_nonzero(s) == 0 for s in lif.state)  # ... and IIRLeaky the rest
    assert torch.equal(run_hidden(lif, x.detach()), IIRNeuron()(x.detach()))


def test_own_class_helpers_reset_and_detach_every_instance():
    x = currents(4, 2, 9, seed=5).requires_grad_()
    a, b = IIRLeaky(init_hidden=True), IIRLeaky(init_hidden=True)
    run_hidden(a, x), run_hidden(b, x)
    IIRLeaky.detach_hidden()
    assert all(not s.requires_grad for lif in (a, b) for s in lif.state)
    IIRLeaky.reset_hidden()
    assert all(torch.count_nonzero(s) == 0 for lif in (a, b) for s in lif.state)


class Net(nn.Module):
    """snnTorch's tutorial pattern: neurons as attributes, stepped in forward."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(20, 30)
        self.lif1 = IIRLeaky(init_hidden=True)
        self.fc2 = nn.Linear(30, 5)
        self.lif2 = IIRLeaky(init_hidden=True, tau_m=3.0)
        for fc in (self.fc1, self.fc2):
            nn.init.normal_(fc.weight, std=0.8)

    def forward(self, x_seq):
        return torch.stack([self.lif2(self.fc2(self.lif1(self.fc1(x)))) for x in x_seq])


def test_utils_reset_on_a_tutorial_style_model():
    torch.manual_seed(0)
    net = Net()
    x = torch.rand(10, 3, 20)
    first = net(x)
    assert first.sum() > 0
    assert not torch.equal(net(x), first)
    utils.reset(net)
    assert torch.equal(net(x), first)


def test_scoped_reset_in_nested_models_leaves_other_models_alone():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Sequential(Net()))  # neurons two levels down
    b = Net()
    x = torch.rand(10, 3, 20)
    first_a, first_b = a(x), b(x)
    reset(a)
    assert torch.equal(a(x), first_a)  # a repeats: all its neurons were cleared
    continued_b = b(x)  # b continues from its own state, untouched by reset(a)
    reset(b)
    b(x)
    reset(b)
    assert torch.equal(b(x), first_b) and not torch.equal(continued_b, first_b)


def test_utils_reset_is_process_wide_as_in_snntorch():
    # snnTorch's helpers act on every instance of the class: document that caveat.
    torch.manual_seed(0)
    a, b = Net(), Net()
    x = torch.rand(5, 3, 20)
    a(x), b(x)
    utils.reset(a)
    assert all(torch.count_nonzero(s) == 0 for s in b.lif1.state)


def test_scoped_detach_for_truncated_bptt():
    torch.manual_seed(0)
    net = nn.Sequential(Net())
    x = torch.rand(8, 3, 20, requires_grad=True)
    net(x[:4])
    detach(net)
    out = net(x[4:])
    (gx,) = torch.autograd.grad(out.sum() + net[0].lif2.mem.sum(), x)
    assert torch.count_nonzero(gx[:4]) == 0 and torch.count_nonzero(gx[4:]) > 0


def test_moving_the_module_keeps_the_state():
    x = currents(6, 2, 9, seed=6, scale=2.0)
    lif = IIRLeaky(init_hidden=True)
    run_hidden(lif, x[:3])
    lif.to(torch.float64)  # .to() replaces the buffers: not an outside reset
    assert lif.state.p1.dtype == torch.float64 and torch.count_nonzero(lif.state.p1) > 0
    out = run_hidden(lif, x[3:].double())
    assert torch.equal(out, IIRNeuron()(x.double())[3:])


def test_erfc_surrogate_on_a_stock_leaky():
    sigma = 0.4
    lif = snntorch.Leaky(beta=0.5, spike_grad=erfc_surrogate(sigma))
    mem0 = torch.zeros(4)
    x = torch.tensor([1.0, 0.999, 1.3, -0.2], requires_grad=True)
    spk, mem = lif(x, mem0)
    assert spk.tolist() == [1.0, 0.0, 1.0, 0.0]  # fires at mem >= threshold
    (gx,) = torch.autograd.grad(spk.sum(), x)
    d = x.detach() - 1.0
    expected = torch.exp(-(d**2) / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma)
    torch.testing.assert_close(gx, expected, rtol=1e-6, atol=0)
    for bad in (0, -0.5, True, "0.4", None, float("nan")):
        with pytest.raises(ValueError) as err:
            erfc_surrogate(bad)
        assert str(err.value) == f"erfc_surrogate: sigma must be a number > 0, got {bad!r}"


def test_training_step_on_mnist_shaped_data_reduces_loss():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 64),
        IIRLeaky(init_hidden=True),
        nn.Linear(64, 10),
        IIRLeaky(init_hidden=True),
    )
    x = torch.rand(16, 1, 28, 28)
    y = torch.randint(0, 10, (16,))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        utils.reset(net)
        counts = torch.stack([net(x) for _ in range(8)]).sum(0)
        loss = nn.functional.cross_entropy(counts, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
