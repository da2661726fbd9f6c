"""`IIRNode` inside SpikingJelly's own code: the keyword arguments SpikingJelly passes to
every ``spiking_neuron``, its surrogates (Erf mapped exactly onto eq. 6, the others on the
per-step path), clear errors, and the model zoo built with ``spiking_neuron=IIRNode``."""

import math
import re

import pytest
import torch
from helpers import currents, rel_err
from hnn_bridge.adapters.spikingjelly import IIRNode, erf_sigma
from spikingjelly.activation_based import functional, monitor, surrogate
from spikingjelly.activation_based.model import sew_resnet, spiking_resnet, spiking_vgg

from hnn_bridge import IIRNeuron


def grad_of(module, x, g):
    x = x.clone().requires_grad_()
    out = module(x)
    (gx,) = torch.autograd.grad((out * g).sum(), x)
    return out, gx


def test_accepts_the_keyword_arguments_spikingjelly_passes_to_every_neuron():
    node = IIRNode(
        surrogate_function=surrogate.ATan(),
        detach_reset=True,
        v_threshold=0.9,
        v_reset=None,
        step_mode="s",
        backend="torch",
        store_v_seq=True,
    )
    assert node.params.detach_reset and node.params.v_threshold == 0.9 and node.v_threshold == 0.9
    assert node.step_mode == "s" and node.store_v_seq and node.v_reset is None
    assert isinstance(node.surrogate_function, surrogate.ATan) and node.path == "per-step"
    assert "surrogate_function=ATan" in repr(node)
    assert IIRNode().path == "fused" and IIRNode().params.sigma == 0.4


def test_erf_alpha_is_eq6_with_sigma_one_over_sqrt2_alpha():
    # Erf's gradient alpha/sqrt(pi) exp(-alpha^2 x^2) equals eq. 6 at sigma = 1/(sqrt(2) alpha).
    alpha = 2.5
    sigma = erf_sigma(alpha)
    assert sigma == 1.0 / (math.sqrt(2.0) * alpha)
    x = torch.linspace(-3, 3, 601, dtype=torch.float64, requires_grad=True)
    (g_sj,) = torch.autograd.grad(surrogate.Erf(alpha)(x).sum(), x)  # SpikingJelly's own backward
    eq6 = torch.exp(-(x.detach() ** 2) / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma)
    torch.testing.assert_close(g_sj, eq6, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_erf_runs_the_fused_path_bit_equal_to_the_core(step_mode):
    alpha = 3.0
    node = IIRNode(surrogate_function=surrogate.Erf(alpha=alpha), v_threshold=0.8, step_mode=step_mode)
    assert node.path == "fused" and node.params.sigma == erf_sigma(alpha)
    x, g = currents(12, 4, 30, seed=1), torch.randn(12, 4, 30)
    ref, gx_ref = grad_of(IIRNeuron(sigma=1.0 / (math.sqrt(2.0) * alpha), v_threshold=0.8), x, g)
    if step_mode == "m":
        out, gx = grad_of(node, x, g)
        assert torch.equal(gx, gx_ref)  # the same fused Function
    else:
        out, gx = grad_of(lambda s: torch.stack([node(s_t) for s_t in s]), x, g)
        assert rel_err(gx, gx_ref) < 1e-6
    assert torch.equal(out, ref) and 0 < ref.mean() < 0.9


def test_erf_mapping_agrees_with_spikingjelly_erf_through_time_in_float64():
    # The per-step path calling SpikingJelly's own Erf on V - V_th vs the fused eq. 6 path.
    alpha = 1.7
    x, g = currents(15, 3, 20, seed=2).double(), torch.randn(15, 3, 20, dtype=torch.float64)
    fused, gx_fused = grad_of(IIRNode(surrogate_function=surrogate.Erf(alpha)), x, g)
    erf = surrogate.Erf(alpha)
    stepped = IIRNode(surrogate_function=lambda v: erf(v))  # not an Erf instance: per-step path
    assert stepped.path == "per-step"
    out, gx = grad_of(stepped, x, g)
    assert torch.equal(out, fused)
    assert rel_err(gx, gx_fused) < 1e-12


def test_other_surrogates_give_the_same_spikes_and_their_own_gradient():
    alpha = 2.0
    node = IIRNode(surrogate_function=surrogate.ATan(alpha=alpha), synapse="none")
    x = torch.tensor([[[-0.5, 0.3, 1.0, 1.4]]], requires_grad=True)  # T = 1: V = x
    out = node(x)
    (gx,) = torch.autograd.grad(out.sum(), x)
    assert out.tolist() == [[[0.0, 0.0, 1.0, 1.0]]]  # Heaviside with U(0) = 1 (eq. 1f)
    d = x.detach().double() - 1.0
    atan_grad = alpha / 2 / (1 + (math.pi / 2 * alpha * d) ** 2)  # ATan's g'(x)
    torch.testing.assert_close(gx.double(), atan_grad, rtol=1e-6, atol=0)


@pytest.mark.parametrize("detach_reset", [False, True])
def test_per_step_path_spikes_equal_the_core_and_modes_agree(detach_reset):
    kw = dict(surrogate_function=surrogate.Sigmoid(alpha=4.0), detach_reset=detach_reset)
    x, g = currents(10, 3, 25, seed=3), torch.randn(10, 3, 25)
    ref = IIRNeuron(detach_reset=detach_reset)(x)
    multi, gx_m = grad_of(IIRNode(**kw, store_v_seq=True), x, g)
    single = IIRNode(**kw, step_mode="s")
    out_s, gx_s = grad_of(lambda s: torch.stack([single(s_t) for s_t in s]), x, g)
    assert torch.equal(multi, ref) and torch.equal(out_s, ref)
    assert rel_err(gx_s, gx_m) < 1e-6 and torch.count_nonzero(gx_m) > 0
    node = IIRNode(**kw, store_v_seq=True)
    node(x)
    first_half = IIRNode(**kw)
    first_half(x[:4])
    assert torch.equal(first_half(x[4:]), ref[4:])  # the state continues across calls
    assert node.v_seq.shape == x.shape


def test_v_reset_other_than_none_is_a_clear_error():
    msg = (
        "IIRNode: v_reset=0.0 cannot be honoured: the IIR neuron resets through its reset filter "
        "(R[t] = theta*R[t-1] + O[t-1], V[t] -= V_th*R[t], eq. 1c), never to a fixed value; "
        "use v_reset=None, and reset_decay to shape the reset"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        IIRNode(v_reset=0.0)
    with pytest.raises(ValueError, match=r"^IIRNode: v_reset=-0\.5 cannot be honoured"):
        IIRNode(v_reset=-0.5)


def test_surrogate_errors():
    with pytest.raises(
        ValueError,
        match=re.escape(
            "IIRNode: surrogate_function=ATan(spiking=False) cannot be honoured: the IIR neuron always fires "
            "Heaviside spikes (eq. 1f); use ATan(spiking=True)"
        ),
    ):
        IIRNode(surrogate_function=surrogate.ATan(spiking=False))
    with pytest.raises(
        ValueError,
        match=re.escape(
            "IIRNode: sigma=0.4 disagrees with surrogate_function=Erf(alpha=2.0), which means "
            f"sigma = 1 / (sqrt(2) alpha) = {1 / (math.sqrt(2) * 2.0)!r}; pass one of them"
        ),
    ):
        IIRNode(sigma=0.4, surrogate_function=surrogate.Erf(alpha=2.0))
    with pytest.raises(
        ValueError,
        match=re.escape(
            "IIRNode: sigma=0.3 has no effect with surrogate_function=ATan: sigma is the width of eq. 6, "
            "which ATan replaces; pass one of them"
        ),
    ):
        IIRNode(sigma=0.3, surrogate_function=surrogate.ATan())
    with pytest.raises(ValueError, match="surrogate.Erf needs alpha > 0"):
        IIRNode(surrogate_function=surrogate.Erf(alpha=0.0))
    with pytest.raises(TypeError, match="surrogate_function must be callable"):
        IIRNode(surrogate_function="atan")
    # the Erf that means sigma = 0.4 exactly is fine beside sigma=0.4
    assert IIRNode(sigma=erf_sigma(2.0), surrogate_function=surrogate.Erf(alpha=2.0)).path == "fused"


# -- SpikingJelly's model zoo ---------------------------------------------------------------

ZOO = {
    "spiking_resnet18": lambda: spiking_resnet.spiking_resnet18(
        spiking_neuron=IIRNode, surrogate_function=surrogate.ATan(), detach_reset=True, num_classes=10
    ),
    "spiking_vgg11_bn": lambda: spiking_vgg.spiking_vgg11_bn(
        spiking_neuron=IIRNode, surrogate_function=surrogate.Erf(), detach_reset=True, num_classes=10
    ),
    "sew_resnet18": lambda: sew_resnet.sew_resnet18(
        spiking_neuron=IIRNode,
        surrogate_function=surrogate.Erf(),
        detach_reset=True,
        cnf="ADD",
        num_classes=10,
    ),
}


@pytest.mark.parametrize("name", list(ZOO))
def test_model_zoo_builds_runs_multistep_and_backward(name):
    torch.manual_seed(0)
    net = ZOO[name]()
    nodes = [m for m in net.modules() if isinstance(m, IIRNode)]
    assert len(nodes) >= 10
    assert all(n.params.detach_reset for n in nodes)
    assert {n.path for n in nodes} == {"per-step" if name == "spiking_resnet18" else "fused"}
    functional.set_step_mode(net, "m")
    assert all(n.step_mode == "m" for n in nodes)
    mon = monitor.OutputMonitor(net, IIRNode)
    x = torch.rand(2, 2, 3, 32, 32)  # [T, B, C, H, W]
    out = net(x)
    assert out.shape == (2, 2, 10)
    assert len(mon.records) == len(nodes)  # one record per IIRNode call
    assert all(set(r.unique().tolist()) <= {0.0, 1.0} for r in mon.records)
    assert sum(r.sum() for r in mon.records) > 0  # the network spikes
    out.sum().backward()
    first_conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.weight.grad is not None and torch.count_nonzero(first_conv.weight.grad) > 0
    mon.remove_hooks()

    functional.detach_net(net)
    assert all(not m.requires_grad for n in nodes for m in n.memories() if isinstance(m, torch.Tensor))
    functional.reset_net(net)
    assert all(isinstance(m, float) and m == 0.0 for n in nodes for m in n.memories())
    with torch.no_grad():
        again = net(x)
        functional.reset_net(net)
        assert torch.equal(net(x), again)  # from zero state: the same (BatchNorm uses batch statistics)
