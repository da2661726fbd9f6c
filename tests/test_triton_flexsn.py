"""The experimental FlexSN core (`hnn_bridge.adapters.triton_flexsn`): its Python-float
arithmetic against `charge`, and the trace that SpikingJelly turns into Triton kernels,
run on the CPU (the Triton build itself needs CUDA)."""

import itertools

import pytest
import torch
from functorch.compile import aot_function, make_boxed_func
from helpers import currents, rel_err
from hnn_bridge.adapters.triton_flexsn import flexsn_iir_node, iir_flexsn_core, traceable_charge
from spikingjelly.activation_based.neuron.flexsn_trace import _trace_core

from hnn_bridge import IIRParams
from hnn_bridge.functional.iir import Coefficients, charge

# every skip of charge: synapse 'none' (a1 = a2 = 0, b = 1), lam 0 or 1, theta 0 or 1, V_th 1 (-1 * R)
KINDS = list(itertools.product(["dual_exp", "first_order", "none"], [None, 0.0, 1.0], [None, 0.0, 1.0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_traceable_charge_is_charge_bit_for_bit(dtype):
    gen = torch.Generator().manual_seed(0)
    for synapse, lam, theta in KINDS:
        for v_th in (1.0, 0.7):
            k = Coefficients.of(
                IIRParams(
                    synapse=synapse,
                    membrane_decay=lam,
                    reset_decay=theta,
                    v_threshold=v_th,
                    tau_m=3.0,
                    tau_s=1.5,
                )
            )
            args = [torch.randn(4, 33, generator=gen, dtype=dtype) for _ in range(5)]
            args.append((torch.randn(4, 33, generator=gen) > 0).to(dtype))
            for got, want in zip(traceable_charge(*args, k), charge(*args, k)):
                assert got.dtype == dtype and torch.equal(got, want), (synapse, lam, theta, v_th)


def _wrapped(params: IIRParams):
    node = flexsn_iir_node(params)
    return node._wrapped_core(node._num_inputs, node._num_outputs), node._num_outputs


@pytest.mark.parametrize(
    "synapse,detach_reset", [("dual_exp", False), ("first_order", False), ("none", True)]
)
def test_core_traces_on_fake_tensors_as_the_triton_lowering_does(synapse, detach_reset):
    """SpikingJelly 2.0's `_trace_core` (make_fx, then AOT autograd on fake tensors) is the
    step before its Triton code generation; a core multiplying by real 0-dim tensors fails
    it with 'Please convert all Tensors to FakeTensors'."""
    wrapped, num_outputs = _wrapped(IIRParams(synapse=synapse, detach_reset=detach_reset))
    inference, forward, backward, differentiable = _trace_core(
        wrapped, tuple(torch.zeros(1) for _ in range(6)), num_outputs, 5
    )
    assert len(differentiable) == 6
    for graph in (inference, forward, backward):
        assert not [n for n in graph.nodes if n.op == "get_attr"]  # no captured tensor constants
    # eq. 6 is in the backward graph: exp of the scaled squared distance to V_th
    assert any(n.target == torch.ops.aten.exp.default for n in backward.nodes)


@pytest.mark.parametrize("synapse,detach_reset", [("dual_exp", False), ("none", True)])
def test_traced_forward_and_backward_graphs_compute_the_core(synapse, detach_reset):
    """The AOT forward and backward graphs (the ones the Triton kernels are generated
    from), run on the CPU, give the eager core's outputs bit for bit and its gradients."""
    params = IIRParams(synapse=synapse, detach_reset=detach_reset)
    core = iir_flexsn_core(params)
    boxed = lambda module, _inputs: make_boxed_func(module)  # noqa: E731
    traced = aot_function(core, fw_compiler=boxed, bw_compiler=boxed)
    gen = torch.Generator().manual_seed(4)
    base = [currents(1, 50, seed=i)[0] for i in range(5)] + [(torch.randn(50, generator=gen) > 0).float()]
    tangents = [torch.randn(50, generator=gen) for _ in range(6)]
    results = []
    for fn in (core, traced):
        inputs = [t.clone().requires_grad_() for t in base]
        outs = fn(*inputs)
        used = [(o, g) for o, g in zip(outs, tangents) if o.requires_grad]
        grads = torch.autograd.grad([o for o, _ in used], inputs, [g for _, g in used], allow_unused=True)
        results.append(([o.detach() for o in outs], grads))
    (eager_out, eager_grads), (traced_out, traced_grads) = results
    assert eager_out[0].sum() > 0 and eager_out[0].sum() < 50  # some neurons fire, not all
    for a, b in zip(traced_out, eager_out):
        assert torch.equal(a, b)
    for a, b in zip(traced_grads, eager_grads):
        assert (a is None) == (b is None)
        if b is not None:
            assert rel_err(a, b) < 1e-6


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device: FlexSN builds Triton kernels on CUDA only"
)
def test_flexsn_node_lowers_to_triton_on_cuda():
    """On CUDA the node runs the Triton kernels (not the fallback scan); whether they equal
    the reference bit for bit is reported by tools/device/gpu_check.py, not asserted here."""
    node = flexsn_iir_node(IIRParams())
    x = currents(8, 4, 64, seed=1).cuda().requires_grad_()
    out = node(x)
    out.sum().backward()
    assert node._triton_capability[(x.device, torch.float32)] is True
    assert out.shape == x.shape and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
