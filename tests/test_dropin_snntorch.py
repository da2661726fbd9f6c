"""`IIRLeaky` as a drop-in for `snntorch.Leaky`: snnTorch's tutorial patterns with only the
constructor swapped, snnTorch's keyword names checked numerically against the core,
snnTorch's losses, accuracy and plots on its records, and clear errors for what the IIR
neuron cannot honour."""

import math
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import snntorch as snn  # noqa: E402
import snntorch.functional as SF  # noqa: E402
import snntorch.spikeplot as splt  # noqa: E402
import torch  # noqa: E402
from helpers import currents, rel_err  # noqa: E402
from hnn_bridge.adapters.snntorch import IIRLeaky, erfc_surrogate  # noqa: E402
from snntorch import surrogate, utils  # noqa: E402
from torch import nn  # noqa: E402

from hnn_bridge import IIRNeuron  # noqa: E402
from hnn_bridge.functional import iir_multistep  # noqa: E402
from hnn_bridge.params import IIRParams  # noqa: E402

NUM_INPUTS, NUM_HIDDEN, NUM_OUTPUTS, NUM_STEPS = 20, 30, 5, 12


class TutorialNet(nn.Module):
    """snnTorch tutorial 5's network, with the neuron class as the only choice."""

    def __init__(self, make_neuron):
        super().__init__()
        self.fc1 = nn.Linear(NUM_INPUTS, NUM_HIDDEN)
        self.lif1 = make_neuron()
        self.fc2 = nn.Linear(NUM_HIDDEN, NUM_OUTPUTS)
        self.lif2 = make_neuron()
        for fc in (self.fc1, self.fc2):
            nn.init.normal_(fc.weight, std=0.8)

    def forward(self, x):
        mem1 = self.lif1.init_leaky()
        mem2 = self.lif2.init_leaky()
        spk2_rec, mem2_rec, spk1_rec = [], [], []
        for step in range(NUM_STEPS):
            cur1 = self.fc1(x[step])
            spk1, mem1 = self.lif1(cur1, mem1)
            cur2 = self.fc2(spk1)
            spk2, mem2 = self.lif2(cur2, mem2)
            spk1_rec.append(spk1)
            spk2_rec.append(spk2)
            mem2_rec.append(mem2)
        return torch.stack(spk2_rec, dim=0), torch.stack(mem2_rec, dim=0), torch.stack(spk1_rec)


def core_forward(net, x, params=IIRParams()):
    """The same network on the torch core: hb.IIRNeuron over the whole sequence."""
    s1 = IIRNeuron.from_params(params)(net.fc1(x))
    spk2, volts2, _ = iir_multistep(net.fc2(s1), params)
    return spk2, volts2, s1


def train_steps(net, x, y, loss_fn, steps=3):
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    losses = []
    for _ in range(steps):
        spk_rec, mem_rec, _ = net(x)
        loss = loss_fn(spk_rec, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("neuron", ["Leaky", "IIRLeaky"])
def test_tutorial_explicit_state_loop_runs_with_either_neuron(neuron):
    make = (lambda: snn.Leaky(beta=0.9)) if neuron == "Leaky" else (lambda: IIRLeaky())
    torch.manual_seed(0)
    net = TutorialNet(make)
    x = torch.rand(NUM_STEPS, 8, NUM_INPUTS)
    y = torch.randint(0, NUM_OUTPUTS, (8,))
    spk_rec, mem_rec, _ = net(x)
    assert spk_rec.shape == mem_rec.shape == (NUM_STEPS, 8, NUM_OUTPUTS)
    assert spk_rec.sum() > 0
    losses = train_steps(net, x, y, SF.ce_rate_loss())
    assert all(math.isfinite(v) for v in losses)
    assert 0.0 <= SF.accuracy_rate(spk_rec, y) <= 1.0


def test_tutorial_loop_with_iirleaky_equals_the_core_bit_for_bit():
    torch.manual_seed(0)
    net = TutorialNet(lambda: IIRLeaky())
    x = currents(NUM_STEPS, 6, NUM_INPUTS, seed=1, scale=1.0, shift=0.2).requires_grad_()
    spk2, mem2, spk1 = net(x)
    ref2, volts2, ref1 = core_forward(net, x)
    assert 0 < ref1.mean() < 0.9 and ref2.sum() > 0
    assert torch.equal(spk1, ref1) and torch.equal(spk2, ref2) and torch.equal(mem2, volts2)
    (gx,) = torch.autograd.grad(spk2.sum() + mem2.sum(), x)
    (gx_ref,) = torch.autograd.grad(ref2.sum() + volts2.sum(), x)
    assert rel_err(gx, gx_ref) < 1e-5
    again, _, _ = net(x)  # init_leaky() at the start of forward resets all five states
    assert torch.equal(again, spk2)


def test_mem_continues_when_detached_and_restarts_from_a_new_tensor():
    x = currents(10, 3, 9, seed=2).requires_grad_()
    ref = IIRNeuron()(x.detach())
    lif = IIRLeaky()
    mem = lif.init_leaky()
    spikes = []
    for t, x_t in enumerate(x):
        if t == 5:
            mem = mem.detach()  # truncated BPTT: the held p1, p2, r, o continue, detached
        spk, mem = lif(x_t, mem)
        spikes.append(spk)
    assert torch.equal(torch.stack(spikes), ref)
    (gx,) = torch.autograd.grad(mem.sum(), x)
    assert torch.count_nonzero(gx[:5]) == 0 and torch.count_nonzero(gx[5:]) > 0
    # any other tensor is a new starting potential with the other states at zero
    spk, _ = lif(x[0].detach(), torch.zeros(3, 9))
    assert torch.equal(spk, ref[0])


def test_hidden_state_sequential_with_utils_reset_output_losses_and_plots():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(NUM_INPUTS, NUM_HIDDEN),
        IIRLeaky(init_hidden=True),
        nn.Linear(NUM_HIDDEN, NUM_OUTPUTS),
        IIRLeaky(init_hidden=True, output=True),
    )
    for m in net:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.8)
    data = torch.rand(8, NUM_INPUTS)
    y = torch.randint(0, NUM_OUTPUTS, (8,))

    def forward_pass(num_steps):  # snnTorch tutorial 7's loop
        spk_rec, mem_rec = [], []
        utils.reset(net)
        for _ in range(num_steps):
            spk_out, mem_out = net(data)
            spk_rec.append(spk_out)
            mem_rec.append(mem_out)
        return torch.stack(spk_rec), torch.stack(mem_rec)

    spk_rec, mem_rec = forward_pass(NUM_STEPS)
    cur = net[0](data).unsqueeze(0).expand(NUM_STEPS, -1, -1)
    ref, volts, _ = iir_multistep(net[2](IIRNeuron()(cur)), IIRParams())
    assert torch.equal(spk_rec, ref) and torch.equal(mem_rec, volts) and ref.sum() > 0
    assert torch.equal(forward_pass(NUM_STEPS)[0], spk_rec)  # utils.reset cleared all states

    for loss_fn in (
        SF.ce_rate_loss(),
        SF.ce_count_loss(),
        SF.mse_count_loss(correct_rate=0.8, incorrect_rate=0.2),
    ):
        loss = loss_fn(spk_rec, y)
        (g,) = torch.autograd.grad(loss, net[0].weight, retain_graph=True)
        assert math.isfinite(loss.item()) and torch.isfinite(g).all() and torch.count_nonzero(g) > 0
    acc = SF.accuracy_rate(spk_rec, y)
    assert acc == (spk_rec.sum(0).argmax(1) == y).float().mean().item()

    fig, ax = plt.subplots()
    splt.raster(spk_rec[:, 0], ax, s=1.5, c="black")
    assert len(ax.collections) == 1
    plt.close(fig)
    splt.traces(mem_rec[:, 0, :4].detach(), spk=spk_rec[:, 0, :4].detach(), dim=(2, 2))
    plt.close("all")


# -- snnTorch's keyword names, numerically ---------------------------------------------------


def explicit(lif, x):
    mem = lif.init_leaky()
    spikes, volts = [], []
    for x_t in x:
        spk, mem = lif(x_t, mem)
        spikes.append(spk)
        volts.append(mem)
    return torch.stack(spikes), torch.stack(volts)


@pytest.mark.parametrize(
    "snn_kw, core_kw",
    [
        (dict(beta=0.8), dict(membrane_decay=0.8)),
        (dict(beta=torch.tensor(0.6)), dict(membrane_decay=0.6000000238418579)),  # float32 0.6
        (dict(threshold=0.7), dict(v_threshold=0.7)),
        (
            dict(beta=0.5, threshold=1.3, spike_grad=erfc_surrogate(0.3)),
            dict(membrane_decay=0.5, v_threshold=1.3, sigma=0.3),
        ),
    ],
    ids=["beta", "beta-tensor", "threshold", "beta-threshold-erfc"],
)
def test_snntorch_names_map_onto_the_core(snn_kw, core_kw):
    lif = IIRLeaky(**snn_kw)
    assert lif.params == IIRParams(**core_kw)
    x, g = currents(14, 4, 25, seed=3), torch.randn(14, 4, 25)
    x.requires_grad_()
    spikes, volts = explicit(lif, x)
    ref, ref_volts, _ = iir_multistep(x, IIRParams(**core_kw))
    assert torch.equal(spikes, ref) and torch.equal(volts, ref_volts)
    assert 0 < ref.mean() < 0.9
    (gx,) = torch.autograd.grad((spikes * g).sum(), x)
    (gx_ref,) = torch.autograd.grad((ref * g).sum(), x)
    assert rel_err(gx, gx_ref) < 1e-6


def test_beta_and_threshold_follow_stock_leaky_without_the_iir_filters():
    # synapse "none" and reset_decay 0 leave snnTorch's Leaky equations: V = beta*V + x - thr*O[t-1]
    x = currents(20, 4, 30, seed=4)
    stock = snn.Leaky(beta=0.8, threshold=0.7)
    ours = IIRLeaky(beta=0.8, threshold=0.7, synapse="none", reset_decay=0.0)
    s_stock, v_stock = explicit(stock, x)
    s_ours, v_ours = explicit(ours, x)
    assert not torch.any(v_ours == 0.7)  # no exact tie: the firing rules (> vs >=) agree here
    assert torch.equal(v_ours, v_stock) and torch.equal(s_ours, s_stock) and s_ours.sum() > 0


def _atan_grad(d: torch.Tensor, alpha: float) -> torch.Tensor:
    return alpha / 2 / (1 + (math.pi / 2 * alpha * d) ** 2)


class _AtanSpike(torch.autograd.Function):
    """Independent float64 spike: Heaviside (>= 0) forward, closed-form arctan backward."""

    @staticmethod
    def forward(ctx, d, alpha):
        ctx.save_for_backward(d)
        ctx.alpha = alpha
        return (d >= 0).to(d.dtype)

    @staticmethod
    def backward(ctx, g):
        (d,) = ctx.saved_tensors
        return g * _atan_grad(d, ctx.alpha), None


def float64_reference(x, alpha, tau_m=4.0, tau_s=1.0, v_th=1.0):
    """The IIR neuron (eq. 1a-1f) written out in float64 with an arctan surrogate."""
    em, es = math.exp(-1 / tau_m), math.exp(-1 / tau_s)
    a1, a2, b = em + es, -math.exp(-(tau_m + tau_s) / (tau_m * tau_s)), em - es
    lam = theta = em
    p1 = p2 = r = v = o = torch.zeros_like(x[0])
    out = []
    for x_t in x:
        p = a1 * p1 + a2 * p2 + b * x_t
        r = theta * r + o
        v = lam * v + p - v_th * r
        o = _AtanSpike.apply(v - v_th, alpha)
        p1, p2 = p, p1
        out.append(o)
    return torch.stack(out)


def test_snntorch_spike_grad_replaces_eq6_and_keeps_the_spikes():
    alpha = 2.0
    lif = IIRLeaky(spike_grad=surrogate.atan(alpha=alpha))
    assert lif.custom_grad is lif.spike_grad and "spike_grad='inner'" in repr(lif)
    x = currents(12, 3, 20, seed=5).double().requires_grad_()
    g = torch.randn(12, 3, 20, dtype=torch.float64)
    spikes, _ = explicit(lif, x)
    assert torch.equal(spikes, IIRNeuron()(x.detach()))  # fires at V >= V_th, not snnTorch's V > V_th
    ref = float64_reference(x, alpha)
    assert torch.equal(spikes, ref)
    (gx,) = torch.autograd.grad((spikes * g).sum(), x)
    (gx_ref,) = torch.autograd.grad((ref * g).sum(), x)
    # snnTorch's surrogates return float32 (`.float()`), so the gradient passes float32
    assert rel_err(gx, gx_ref) < 1e-6
    # one step, synapse "none" (V = x): dO/dx is exactly the arctan surrogate
    x1 = torch.tensor([0.2, 1.0, 1.6], dtype=torch.float64, requires_grad=True)
    spk, _ = IIRLeaky(spike_grad=surrogate.fast_sigmoid(slope=25), synapse="none")(x1, None)
    (g1,) = torch.autograd.grad(spk.sum(), x1)
    assert spk.tolist() == [0.0, 1.0, 1.0]
    torch.testing.assert_close(g1, 1 / (25 * (x1.detach() - 1).abs() + 1) ** 2, rtol=1e-12, atol=0)


# -- what the IIR neuron cannot honour --------------------------------------------------------


def _fn(x):
    return x


REJECTED = [
    (
        dict(reset_mechanism="zero"),
        "IIRLeaky: reset_mechanism='zero' cannot be honoured: the IIR neuron resets by subtraction "
        "through its "
        "reset filter (R[t] = theta*R[t-1] + O[t-1], V[t] -= V_th*R[t], eq. 1c); use "
        "reset_mechanism='subtract' "
        "(the default), with reset_decay=0.0 for snnTorch's one-step subtraction",
    ),
    (
        dict(reset_mechanism="none"),
        "IIRLeaky: reset_mechanism='none' cannot be honoured: the IIR neuron resets",
    ),
    (
        dict(inhibition=True),
        "IIRLeaky: inhibition=True cannot be honoured: the IIR neuron has no lateral inhibition; use "
        "inhibition=False and apply winner-take-all to the spikes after the layer",
    ),
    (
        dict(state_quant=_fn),
        f"IIRLeaky: state_quant={_fn!r} cannot be honoured: the IIR states are not quantized; use "
        "state_quant=False, and quantize the layer before the neuron (its weights or output) instead",
    ),
    (
        dict(learn_beta=True),
        "IIRLeaky: learn_beta=True cannot be honoured: the membrane decay is a constant of the IIR filter "
        "(eq. 1a); use learn_beta=False with beta (or membrane_decay) a fixed number",
    ),
    (
        dict(learn_threshold=True),
        "IIRLeaky: learn_threshold=True cannot be honoured: the threshold V_th is a constant of the IIR "
        "neuron "
        "(eq. 1a, 1e); use learn_threshold=False with threshold (or v_threshold) a fixed number",
    ),
    (
        dict(graded_spikes_factor=2.0),
        "IIRLeaky: graded_spikes_factor=2.0 cannot be honoured: the IIR neuron fires spikes of 1 (eq. "
        "1f); use "
        "graded_spikes_factor=1.0 and scale the spikes after the layer",
    ),
    (
        dict(learn_graded_spikes_factor=True),
        "IIRLeaky: learn_graded_spikes_factor=True cannot be honoured: the IIR neuron fires spikes of 1 "
        "(eq. 1f); "
        "use learn_graded_spikes_factor=False and scale the spikes after the layer with a parameter",
    ),
    (
        dict(reset_delay=False),
        "IIRLeaky: reset_delay=False cannot be honoured: the IIR reset acts from the next step on "
        "(R[t] = theta*R[t-1] + O[t-1], eq. 1c); use reset_delay=True (the default)",
    ),
    (
        dict(surrogate_disable=True),
        "IIRLeaky: surrogate_disable=True cannot be honoured: the spike function always carries a surrogate "
        "gradient; use surrogate_disable=False (choose the gradient with spike_grad; run inference under "
        "torch.no_grad())",
    ),
    (dict(beta=1.5), "IIRLeaky: beta (the membrane decay, eq. 1a) must be in [0, 1], got 1.5"),
    (
        dict(beta=torch.full((3,), 0.9)),
        "IIRLeaky: beta must be one number, got a tensor of shape (3,): the IIR neuron has one beta per "
        "layer; "
        "use a float",
    ),
    (
        dict(beta=0.9, membrane_decay=0.8),
        "IIRLeaky: beta=0.9 and membrane_decay=0.8 name the same setting; pass one of them",
    ),
    (
        dict(threshold=0.5, v_threshold=0.8),
        "IIRLeaky: threshold=0.5 and v_threshold=0.8 name the same setting; pass one of them",
    ),
    (
        dict(spike_grad=erfc_surrogate(0.3), sigma=0.4),
        "IIRLeaky: sigma=0.4 disagrees with spike_grad=erfc_surrogate(0.3); pass one of them",
    ),
    (
        dict(spike_grad=surrogate.atan(), sigma=0.4),
        "IIRLeaky: sigma=0.4 has no effect with spike_grad='inner': sigma is the width of eq. 6, which "
        "spike_grad replaces; pass one of them (spike_grad=erfc_surrogate(sigma) is eq. 6)",
    ),
]


@pytest.mark.parametrize(
    "kwargs, message", REJECTED, ids=[next(iter(k)) + str(i) for i, (k, _) in enumerate(REJECTED)]
)
def test_arguments_it_cannot_honour_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        IIRLeaky(**kwargs)


def test_snntorch_defaults_and_agreeing_aliases_are_accepted():
    lif = IIRLeaky(
        0.9,
        threshold=1.0,
        spike_grad=None,
        surrogate_disable=False,
        init_hidden=False,
        inhibition=False,
        learn_beta=False,
        learn_threshold=False,
        reset_mechanism="subtract",
        state_quant=False,
        output=False,
        graded_spikes_factor=torch.tensor(1.0),
        learn_graded_spikes_factor=False,
        reset_delay=True,
        membrane_decay=0.9,
        v_threshold=1.0,
    )
    assert lif.params == IIRParams(membrane_decay=0.9)
    assert list(lif.state_dict()) == [] and not list(lif.parameters())
