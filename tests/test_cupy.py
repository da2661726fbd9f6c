"""The CuPy backend: its kernel source checked on the CPU through a plain-C build, the
error without CUDA/cupy, and (where CUDA and cupy exist) the kernels themselves."""

import importlib.util
import itertools
import re
import shutil

import numpy as np
import pytest
import torch

from hnn_bridge import IIRNeuron, IIRParams, build
from hnn_bridge.adapters import cupy_kernels
from hnn_bridge.adapters.cupy_kernels import compile_c_kernels, cupy_multistep, term_kinds
from hnn_bridge.adapters.spikingjelly import IIRNode
from hnn_bridge.backends import make_neuron
from hnn_bridge.functional import Coefficients, IIRMultiStep

from helpers import rel_err

HAVE_CUDA_CUPY = torch.cuda.is_available() and importlib.util.find_spec("cupy") is not None
needs_gpu = pytest.mark.skipif(not HAVE_CUDA_CUPY, reason="needs a CUDA device and cupy (pip install cupy-cuda12x)")
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the kernel source as C")


# ------------------------------------------------------------------ the kernel source as C


@pytest.fixture(scope="module")
def c_kernels(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build the kernel source as C")
    return compile_c_kernels(str(tmp_path_factory.mktemp("iir_c")))


CASES = list(
    itertools.product(
        ["dual_exp", "first_order", "none"],  # synapse
        [None, 0.0, 1.0],  # membrane decay lambda
        [None, 0.0],  # reset decay theta
        [False, True],  # detach_reset
    )
)


@needs_gcc
@pytest.mark.parametrize("case", range(len(CASES)))
def test_c_build_of_the_kernels_matches_the_torch_core(c_kernels, case):
    """Spikes, V and final states bit-equal; all gradients within 1e-5 relative."""
    synapse, lam, theta, detach_reset = CASES[case]
    params = IIRParams(synapse=synapse, membrane_decay=lam, reset_decay=theta, detach_reset=detach_reset,
                       v_threshold=0.9, tau_m=3.0, tau_s=1.5)
    k = Coefficients.of(params)
    gen = torch.Generator().manual_seed(case)
    for T, with_state in ((1, True), (8, True), (25, False), (25, True)):
        x = (torch.randn(T, 3, 37, generator=gen) * 2.0 + 0.5).requires_grad_()
        state = [torch.randn(3, 37, generator=gen).requires_grad_() if with_state else None for _ in range(5)]
        if with_state:
            state[4] = (state[4] > 0).float().requires_grad_()
        outs = IIRMultiStep.apply(x, *state, k, detach_reset, False)
        assert 0 < outs[0].mean() < 0.9
        grads_in = [torch.randn(o.shape, generator=gen) for o in outs]
        if T == 8:
            grads_in[1] = grads_in[3] = None  # the kernel reads null gradients as zeros
        used = [(o, g) for o, g in zip(outs, grads_in) if g is not None]
        torch.autograd.backward([o for o, _ in used], [g for _, g in used])

        c_outs = c_kernels.forward(x.detach().numpy(), k, tuple(None if s is None else s.detach().numpy() for s in state))
        for c, t in zip(c_outs, outs):
            np.testing.assert_array_equal(c, t.detach().numpy())

        c_grads = c_kernels.backward(
            outs[1].detach().numpy(), k, detach_reset,
            *(None if g is None else g.numpy() for g in grads_in),
        )
        assert rel_err(c_grads[0], x.grad) < 1e-5
        if with_state:
            for c, s in zip(c_grads[1:], state):
                assert rel_err(c, s.grad) < 1e-5


@needs_gcc
def test_c_build_flushes_the_surrogate_like_the_core(c_kernels):
    params = IIRParams(synapse="none")
    k = Coefficients.of(params)
    x = torch.tensor([[1.0, 0.5, -2.0, -4.0, -5.0, -6.0, 3.0, 5.0, 7.0]]).requires_grad_()  # V - V_th far from 0
    spikes, volts, *_ = IIRMultiStep.apply(x, None, None, None, None, None, k, False, False)
    g = torch.ones_like(spikes)
    (gx,) = torch.autograd.grad(spikes, x, g)
    c_gx = c_kernels.backward(volts.detach().numpy(), k, False, g.numpy())[0]
    assert ((gx == 0).numpy() == (c_gx == 0)).all() and (c_gx == 0).sum() >= 2
    assert rel_err(c_gx, gx) < 1e-6


def test_term_kinds_mirror_the_core_skips():
    # dual_exp defaults: a1, a2, b, theta, lam all scaled (2), -V_th = -1 scaled (2)
    assert term_kinds(Coefficients.of(IIRParams())) == sum(2 << (2 * s) for s in range(6))
    # synapse none, lam 0, theta 1, V_th = -1: a1, a2 absent, b plain, theta plain, lam absent, -V_th plain
    k = Coefficients.of(IIRParams(synapse="none", membrane_decay=0.0, reset_decay=1.0, v_threshold=-1.0))
    assert term_kinds(k) == (1 << 4) | (1 << 6) | (1 << 10)


def test_kernel_source_forbids_fused_multiply_add():
    src = cupy_kernels.KERNEL_SOURCE
    assert "__fmul_rn" in src and "__fadd_rn" in src and "--fmad=false" in cupy_kernels.NVRTC_OPTIONS
    assert "-ffp-contract=off" in cupy_kernels.C_COMPILE_FLAGS


# ---------------------------------------------------------------- without CUDA or cupy

EXPECTED_ERROR = (
    "IIRNode backend 'cupy' needs a CUDA device and the cupy package (pip install cupy-cuda12x), "
    "but torch sees no CUDA device and cupy is not installed; use backend='torch' on CPU"
)


@pytest.mark.skipif(torch.cuda.is_available() or importlib.util.find_spec("cupy") is not None,
                    reason="this machine has CUDA or cupy; the message names only what is missing")
def test_cupy_backend_without_cuda_and_cupy_names_the_torch_backend():
    with pytest.raises(RuntimeError) as info:
        IIRNode(backend="cupy")
    assert str(info.value) == EXPECTED_ERROR
    with pytest.raises(RuntimeError) as info:
        make_neuron("spikingjelly-cupy", IIRParams())
    assert str(info.value) == EXPECTED_ERROR
    with pytest.raises(RuntimeError) as info:
        build("A64-S10", backend="spikingjelly-cupy", input_shape=(1, 8, 8))
    assert str(info.value) == EXPECTED_ERROR
    with pytest.raises(RuntimeError) as info:
        cupy_multistep(torch.zeros(3, 2), IIRParams())
    assert str(info.value) == EXPECTED_ERROR


@pytest.mark.skipif(HAVE_CUDA_CUPY, reason="CUDA and cupy are present")
def test_reason_names_what_is_missing():
    reason = cupy_kernels.cupy_unavailable_reason()
    assert reason is not None
    assert ("torch sees no CUDA device" in reason) == (not torch.cuda.is_available())


# ------------------------------------------------------------------------ on a GPU


def _pair(shape, T, synapse, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, *shape, generator=gen) * 1.5 + 0.4
    g = torch.randn(T, *shape, generator=gen)
    return x.cuda(), g.cuda()


@needs_gpu
@pytest.mark.parametrize("shape", [(32, 500), (8, 16, 14, 14)], ids=["mlp", "cnn"])
@pytest.mark.parametrize("T", [1, 8, 25])
@pytest.mark.parametrize("synapse", ["dual_exp", "first_order", "none"])
def test_cupy_node_matches_torch_node_on_gpu(shape, T, synapse):
    x, g = _pair(shape, T, synapse, seed=T)
    results = []
    for backend in ("torch", "cupy"):
        xi = x.clone().requires_grad_()
        node = IIRNode(synapse=synapse, backend=backend, store_v_seq=True)
        out = node(xi)
        (out * g).sum().backward()
        results.append((out, node.v_seq, xi.grad))
    (s_t, v_t, g_t), (s_c, v_c, g_c) = results
    assert torch.equal(s_c, s_t) and torch.equal(v_c, v_t)
    assert rel_err(g_c, g_t) < 1e-5


@needs_gpu
def test_cupy_node_continues_state_and_propagates_state_gradients():
    x, g = _pair((4, 50), 20, "dual_exp", seed=1)
    results = []
    for backend in ("torch", "cupy"):
        xi = x.clone().requires_grad_()
        node = IIRNode(backend=backend)
        out = torch.cat([node(xi[:7]), node(xi[7:])])
        (out * g).sum().backward()
        results.append((out, xi.grad))
    assert torch.equal(results[0][0], results[1][0])
    assert rel_err(results[1][1], results[0][1]) < 1e-5
    assert torch.equal(results[1][0], IIRNeuron().cuda()(x))


@needs_gpu
def test_cupy_rejects_other_dtypes_and_cpu_tensors():
    node = IIRNode(backend="cupy")
    with pytest.raises(TypeError, match=re.escape("computes in float32 (float16 and bfloat16 inputs are widened to "
                                                  "float32 first), got torch.float64")):
        node(torch.zeros(2, 3, device="cuda", dtype=torch.float64))


@needs_gpu
def test_cupy_widens_half_inputs_and_keeps_float32_state():
    x, _ = _pair((16, 64), 8, "dual_exp", seed=3)
    for dtype in (torch.float16, torch.bfloat16):
        half = x.to(dtype)
        spikes = IIRNode(backend="cupy")(half)
        assert spikes.dtype == dtype
        assert torch.equal(spikes.float(), IIRNode(backend="cupy")(half.float()))
    with pytest.raises(RuntimeError, match="the input is on cpu; use backend='torch' on CPU"):
        IIRNode(backend="cupy")(torch.zeros(2, 3))


@needs_gpu
def test_cupy_runs_on_the_current_torch_stream():
    x, _ = _pair((16, 64), 8, "dual_exp", seed=2)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = IIRNode(backend="cupy")(x)
    torch.cuda.current_stream().wait_stream(stream)
    assert torch.equal(out, IIRNeuron()(x))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_check_script_exits_with_a_message_without_cuda(tmp_path, capsys):
    import importlib.util as iu
    from pathlib import Path

    spec = iu.spec_from_file_location("gpu_check", Path(__file__).parent.parent / "benchmarks" / "gpu_check.py")
    gpu_check = iu.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert gpu_check.main(["--out", str(tmp_path / "r.json")]) == 2
    assert "gpu_check: no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
