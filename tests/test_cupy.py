"""The CuPy backend: its kernel source checked on the CPU through a plain-C build, the
error without CUDA/cupy, and (where CUDA and cupy exist) the kernels themselves."""

import contextlib
import importlib.util
import itertools
import re
import shutil
import types

import numpy as np
import pytest
import torch
from helpers import currents, rel_err
from hnn_bridge.adapters import cupy_kernels
from hnn_bridge.adapters.cupy_kernels import (
    CupyIIRMultiStep,
    compile_c_kernels,
    compile_kernel_source,
    cupy_multistep,
    cupy_package,
    nvrtc_options,
    target_arch,
    term_kinds,
)
from hnn_bridge.adapters.spikingjelly import IIRNode

from hnn_bridge import IIRNeuron, IIRParams, build
from hnn_bridge.backends import make_neuron
from hnn_bridge.functional import Coefficients, IIRMultiStep, iir_multistep

HAVE_CUDA_CUPY = torch.cuda.is_available() and importlib.util.find_spec("cupy") is not None
needs_gpu = pytest.mark.skipif(
    not HAVE_CUDA_CUPY,
    reason=f"needs a CUDA device and cupy (pip install {cupy_package(torch.version.cuda) or 'cupy-cuda13x'})",
)
needs_gcc = pytest.mark.skipif(
    shutil.which("gcc") is None, reason="needs gcc to build the kernel source as C"
)


def _nvrtc_missing() -> str | None:
    try:
        cupy_kernels.nvrtc_binding()
    except ImportError as error:
        return str(error)
    return None


NVRTC_MISSING = _nvrtc_missing()
needs_nvrtc = pytest.mark.skipif(
    NVRTC_MISSING is not None,
    reason=f"needs NVRTC, through cuda-python (installed with torch's CUDA wheels) or cupy: {NVRTC_MISSING}",
)
TINY = torch.finfo(torch.float32).tiny  # the smallest normal float32; below it: subnormal


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
    params = IIRParams(
        synapse=synapse,
        membrane_decay=lam,
        reset_decay=theta,
        detach_reset=detach_reset,
        v_threshold=0.9,
        tau_m=3.0,
        tau_s=1.5,
    )
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

        c_outs = c_kernels.forward(
            x.detach().numpy(), k, tuple(None if s is None else s.detach().numpy() for s in state)
        )
        for c, t in zip(c_outs, outs):
            np.testing.assert_array_equal(c, t.detach().numpy())

        c_grads = c_kernels.backward(
            outs[1].detach().numpy(),
            k,
            detach_reset,
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
    x = torch.tensor(
        [[1.0, 0.5, -2.0, -4.0, -5.0, -6.0, 3.0, 5.0, 7.0]]
    ).requires_grad_()  # V - V_th far from 0
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


@needs_gcc
def test_c_build_keeps_subnormal_values_as_the_torch_core_does(c_kernels):
    """Currents around 1e-39 (float32 subnormals): the C build gives the torch core's V and
    final state bit for bit, subnormals included, and the input gradient of a tiny
    incoming gradient; a build that flushed them (CuPy's ``-ftz=true``) would not."""
    k = Coefficients.of(IIRParams(tau_s=2.0, membrane_decay=0.8))
    gen = torch.Generator().manual_seed(11)
    tiny = torch.randn(25, 4, 64, generator=gen) * 3e-39
    normal = torch.randn(25, 4, 64, generator=gen) * 1.5 + 0.4
    x = torch.where(torch.rand(25, 4, 64, generator=gen) < 0.5, tiny, normal).requires_grad_()
    outs = IIRMultiStep.apply(x, None, None, None, None, None, k, False, False)
    volts = outs[1].detach()
    subnormal = (volts != 0) & (volts.abs() < TINY)
    assert subnormal.sum() > 100 and outs[0].sum() > 0
    flushed = torch.where(subnormal, torch.zeros_like(volts), volts)
    assert not torch.equal(flushed.view(torch.int32), volts.view(torch.int32))  # the check can tell

    c_outs = c_kernels.forward(x.detach().numpy(), k)
    for c, t in zip(c_outs, outs):
        np.testing.assert_array_equal(c.view(np.int32), t.detach().numpy().view(np.int32))

    g = torch.randn(25, 4, 64, generator=gen) * 1e-36  # V near V_th: grad_x = b * g * sg, partly subnormal
    (gx,) = torch.autograd.grad(outs[0], x, g)
    c_gx = c_kernels.backward(volts.numpy(), k, False, g.numpy())[0]
    assert ((gx != 0) & (gx.abs() < TINY)).sum() > 0
    assert rel_err(c_gx, gx) < 1e-5 and ((c_gx == 0) == (gx == 0).numpy()).all()


# --------------------------------------------------- the CUDA build, compiled here by NVRTC

FTZ_FREE_LIBRARY_OPS = {"ex2.approx.ftz.f32"}  # inside CUDA's expf (range-reduced argument, scaled after)


def _float_ops(ptx: str) -> set[str]:
    return set(re.findall(r"\b(?:add|sub|mul|fma|neg|setp\.\w+)\.[\w.]*f32\b", ptx))


def _ftz_ops(ptx: str) -> set[str]:
    return set(re.findall(r"\b[\w.]+\.ftz[\w.]*f32\b", ptx))


def test_nvrtc_options_keep_subnormals_and_forbid_contraction():
    options = nvrtc_options("sm_90")
    assert options == (
        "--fmad=false",
        "--ftz=false",
        "--prec-div=true",
        "--prec-sqrt=true",
        "-std=c++11",
        "--gpu-architecture=sm_90",
    )
    assert not [o for o in options if "ftz=true" in o or "fast-math" in o]


def test_target_arch_prefers_a_cubin_for_the_device():
    nvrtc13 = [75, 80, 86, 87, 88, 89, 90, 100, 103, 110, 120, 121]
    assert target_arch((9, 0), nvrtc13) == "sm_90"  # H100, H200
    assert target_arch((8, 0), nvrtc13) == "sm_80"
    assert target_arch((9, 5), nvrtc13) == "compute_90"  # newer than this NVRTC knows: PTX below it
    with pytest.raises(RuntimeError, match=re.escape("none at or below this device's 7.0")):
        target_arch((7, 0), nvrtc13)


@needs_nvrtc
def test_nvrtc_build_keeps_subnormals_in_every_add_multiply_and_compare():
    """The PTX that the cupy backend runs (compiled here, no GPU needed): adds, multiplies
    and compares are the IEEE round-to-nearest forms without ``.ftz``, and there is no FMA of
    the kernel's own; with CuPy's appended ``-ftz=true`` the same source flushes them."""
    ptx = compile_kernel_source("compute_90").decode()
    assert {"add.rn.f32", "mul.rn.f32", "sub.rn.f32", "setp.ge.f32", "setp.lt.f32"} <= _float_ops(ptx)
    assert _ftz_ops(ptx) <= FTZ_FREE_LIBRARY_OPS
    assert ".entry iir_forward_f32" in ptx and ".entry iir_backward_f32" in ptx

    binding = cupy_kernels.nvrtc_binding()
    as_cupy_compiles = binding.compile(
        cupy_kernels.KERNEL_SOURCE, (*nvrtc_options("compute_90"), "-ftz=true"), cubin=False
    ).decode()
    assert {"add.rn.ftz.f32", "mul.rn.ftz.f32", "setp.ge.ftz.f32"} <= _ftz_ops(as_cupy_compiles)


@needs_nvrtc
def test_kernels_load_from_our_own_nvrtc_build_not_cupys(monkeypatch):
    """`_kernels` hands CuPy a cubin by path (``RawModule(path=...)``, no source, no
    options for CuPy to extend), built for the device's architecture, once per device."""
    loads = []

    class RawModule:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

        def get_function(self, name):
            with open(self.kwargs["path"], "rb") as f:  # the file exists while CuPy loads it
                loads.append((dict(self.kwargs), name, f.read()))
            return name

    fake_cuda = types.SimpleNamespace(Device=lambda index: contextlib.nullcontext())
    fake = types.SimpleNamespace(RawModule=RawModule, cuda=fake_cuda)
    monkeypatch.setattr(cupy_kernels, "require_cupy", lambda: fake)
    monkeypatch.setattr(cupy_kernels, "_KERNELS", {})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (9, 0))
    first = cupy_kernels._kernels(0)
    assert cupy_kernels._kernels(0) is first and len(loads) == 2
    assert (first.forward, first.backward, first.arch) == ("iir_forward_f32", "iir_backward_f32", "sm_90")
    for kwargs, _, image in loads:
        assert list(kwargs) == ["path"] and kwargs["path"].endswith("iir_kernels.cubin")
        assert image[:4] == b"\x7fELF" and image == compile_kernel_source("sm_90")


def test_cupy_stream_wraps_torchs_stream_the_cupy_14_way():
    class TorchStream:
        cuda_stream, device_index = 0x1234, 1

        def __cuda_stream__(self):
            return (0, self.cuda_stream)

    made = []

    class Stream:
        @staticmethod
        def from_external(obj):
            made.append(("from_external", obj.__cuda_stream__()))
            return obj

    def external_stream(ptr, device_id=-1):
        made.append(("ExternalStream", ptr, device_id))

    cupy14 = types.SimpleNamespace(cuda=types.SimpleNamespace(Stream=Stream, ExternalStream=external_stream))
    cupy13 = types.SimpleNamespace(cuda=types.SimpleNamespace(Stream=object, ExternalStream=external_stream))
    cupy_kernels.cupy_stream(cupy14, TorchStream())
    cupy_kernels.cupy_stream(cupy13, TorchStream())
    assert made == [("from_external", (0, 0x1234)), ("ExternalStream", 0x1234, 1)]


def test_cupy_backward_is_once_differentiable():
    """A double backward must raise rather than silently treat the kernel as linear; on a
    GPU `test_cupy_double_backward_raises` checks it end to end."""
    backward = CupyIIRMultiStep.backward
    assert backward.__code__.co_filename.endswith(
        "torch/autograd/function.py"
    )  # once_differentiable's wrapper
    assert backward.__wrapped__.__qualname__ == "CupyIIRMultiStep.backward"


def test_a_state_on_another_device_is_moved_outside_the_function():
    like = torch.empty(3, 4, device="meta")
    state = [torch.randn(3, 4, requires_grad=True) for _ in range(5)]
    moved = cupy_kernels.state_on(like, cupy_kernels.IIRState(*state[:4], None))
    assert [m is None for m in moved] == [False] * 4 + [True]
    assert all(m.device.type == "meta" and m.grad_fn is not None for m in moved[:4])  # autograd sees the copy
    assert cupy_kernels.state_on(like, None) == (None,) * 5


# ---------------------------------------------------------------- without CUDA or cupy


def _expected_hint() -> str:
    if torch.version.cuda is None:
        return "a CUDA build of torch, then pip install cupy-cuda12x or cupy-cuda13x to match its CUDA"
    return f"pip install cupy-cuda{torch.version.cuda.split('.')[0]}x, for torch's CUDA {torch.version.cuda}"


EXPECTED_ERROR = (
    f"IIRNode backend 'cupy' needs a CUDA device and the cupy package ({_expected_hint()}), "
    "but torch sees no CUDA device and cupy is not installed; use backend='torch' on CPU"
)


def test_the_cupy_package_is_named_for_torchs_cuda():
    assert cupy_package("12.8") == "cupy-cuda12x"
    assert cupy_package("13.0") == "cupy-cuda13x"
    assert cupy_package(None) is None


@pytest.mark.skipif(
    torch.cuda.is_available() or importlib.util.find_spec("cupy") is not None,
    reason="this machine has CUDA or cupy; the message names only what is missing",
)
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
    with pytest.raises(
        TypeError,
        match=re.escape(
            "computes in float32 (float16 and bfloat16 inputs are widened to "
            "float32 first), got torch.float64"
        ),
    ):
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
def test_cupy_runs_forward_and_backward_on_the_current_torch_stream(monkeypatch):
    """Input and gradient are written on a side stream held busy by ``torch.cuda._sleep``;
    forward and backward launch there. A launch on any other stream would read the
    buffers before the copies land (-5 everywhere: no spikes) and fail the comparison,
    and every launch must name the side stream."""
    x_cpu, g_cpu = currents(8, 16, 64, seed=2), currents(8, 16, 64, seed=3)
    xr = x_cpu.clone().requires_grad_()
    want = IIRNeuron()(xr)
    (want_grad,) = torch.autograd.grad((want * g_cpu).sum(), xr)
    used = []
    wrap = cupy_kernels.cupy_stream
    monkeypatch.setattr(
        cupy_kernels,
        "cupy_stream",
        lambda cupy, stream: used.append(stream.cuda_stream) or wrap(cupy, stream),
    )
    x_src, g_src = x_cpu.cuda(), g_cpu.cuda()
    x_buf, g_buf = torch.full_like(x_src, -5.0), torch.zeros_like(g_src)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # about 0.1 s of a busy side stream
        x_buf.copy_(x_src)
        g_buf.copy_(g_src)
        xi = x_buf.requires_grad_()
        out = IIRNode(backend="cupy")(xi)
        torch.cuda._sleep(200_000_000)
        (out * g_buf).sum().backward()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    assert used == [side.cuda_stream, side.cuda_stream]
    assert torch.equal(out.cpu(), want) and want.sum() > 0
    assert rel_err(xi.grad.cpu(), want_grad) < 1e-5


@needs_gpu
def test_cupy_keeps_subnormal_values_on_the_gpu():
    """Built without CuPy's ``-ftz=true``: V equals the CPU core's bit for bit where it is
    a float32 subnormal."""
    gen = torch.Generator().manual_seed(11)
    x = torch.where(
        torch.rand(25, 4, 64, generator=gen) < 0.5,
        torch.randn(25, 4, 64, generator=gen) * 3e-39,
        torch.randn(25, 4, 64, generator=gen) * 1.5 + 0.4,
    )
    ref = IIRNode(backend="torch", store_v_seq=True, membrane_decay=0.8, tau_s=2.0)
    node = IIRNode(backend="cupy", store_v_seq=True, membrane_decay=0.8, tau_s=2.0)
    spikes_ref, spikes = ref(x), node(x.cuda())
    v_ref, v = ref.v_seq, node.v_seq.cpu()
    assert ((v_ref != 0) & (v_ref.abs() < TINY)).sum() > 100
    assert torch.equal(spikes.cpu(), spikes_ref) and torch.equal(v.view(torch.int32), v_ref.view(torch.int32))


@needs_gpu
def test_cupy_double_backward_raises():
    x = currents(8, 4, 32, seed=5).cuda().requires_grad_()
    spikes, _, _ = cupy_multistep(x, IIRParams())
    (gx,) = torch.autograd.grad(spikes.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="marked with @once_differentiable"):
        gx.sum().backward()


@needs_gpu
def test_cupy_state_on_the_cpu_gets_its_gradient_on_the_cpu():
    x = currents(6, 4, 32, seed=6).cuda().requires_grad_()
    state = [torch.randn(4, 32, requires_grad=True) for _ in range(3)]
    start = cupy_kernels.IIRState(*state, None, None)
    spikes, _, _ = cupy_multistep(x, IIRParams(), start)
    spikes.sum().backward()
    assert all(s.grad is not None and s.grad.device.type == "cpu" for s in state)
    ref_state = [s.detach().clone().requires_grad_() for s in state]
    ref, _, _ = iir_multistep(x.detach().cpu(), IIRParams(), cupy_kernels.IIRState(*ref_state, None, None))
    ref.sum().backward()
    assert torch.equal(spikes.cpu(), ref)
    assert all(rel_err(s.grad, r.grad) < 1e-5 for s, r in zip(state, ref_state))


def _load_device_tool(name: str):
    from pathlib import Path

    path = Path(__file__).parent.parent / "tools" / "device" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_check_script_exits_with_a_message_without_cuda(tmp_path, capsys):
    gpu_check = _load_device_tool("gpu_check")
    assert gpu_check.main(["--out", str(tmp_path / "r.json")]) == 2
    assert "gpu_check: no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_gpu_check_writes_its_json_after_every_phase_and_stops_at_the_budget(tmp_path):
    """A run cut short keeps the phases it finished: each phase finds the earlier ones on
    disk; an error is recorded and the run goes on; past the budget phases are skipped."""
    import json

    gpu_check = _load_device_tool("gpu_check")
    out = tmp_path / "r.json"
    now = [0.0]
    seen = []

    def phase(rows, seconds):
        def run(deadline):
            seen.append(sorted(json.loads(out.read_text())) if out.exists() else [])
            now[0] += seconds
            return rows

        return run

    def broken(deadline):
        now[0] += 1.0
        raise ValueError("kernel exploded")

    result = gpu_check.run_phases(
        out,
        dict(device="test"),
        [
            ("first", phase([dict(passed=True)], 10.0)),
            ("second", broken),
            ("third", phase([1], 95.0)),
            ("fourth", phase([2], 1.0)),
        ],
        gpu_check.Deadline(100.0, clock=lambda: now[0]),
    )
    assert seen == [[], ["device", "first", "phases", "second", "seconds"]]
    on_disk = json.loads(out.read_text())
    assert on_disk == result and not (tmp_path / "r.json.tmp").exists()
    assert on_disk["first"] == [dict(passed=True)] and on_disk["third"] == [1]
    assert "ValueError: kernel exploded" in on_disk["second"]["error"]
    assert on_disk["fourth"] == {"skipped": "budget"}
    assert on_disk["phases"] == {
        "first": "done in 10.0 s",
        "second": "error after 1.0 s",
        "third": "done in 95.0 s",
        "fourth": "skipped (budget)",
    }
    assert gpu_check.cupy_rows(
        dict(cupy_parity_mlp=[dict(passed=True), dict(skipped="budget")], half_parity=dict(error="x"))
    ) == [dict(passed=True), dict(passed=False, error="x")]


def test_pyproject_offers_the_cupy_wheel_for_each_cuda():
    from pathlib import Path

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    extras = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert extras["gpu"] == ["cupy-cuda13x>=14"] and extras["gpu-cuda12"] == ["cupy-cuda12x>=13"]
    if torch.version.cuda is not None:  # this torch's CUDA is among them
        assert any(
            spec[0].startswith(cupy_package(torch.version.cuda) + ">=") for spec in extras.values() if spec
        )


# ------------------------------------------------------- the prepared check for a lent GPU

REPO = __import__("pathlib").Path(__file__).parent.parent


def test_device_check_fits_one_run_with_room_for_the_machines_start():
    """Every interpreter call of check.sh has a declared time limit; the limits (the CIFAR
    run counted once per backend) add up to at most CHECK_LIMIT, at most 420 s of a run
    that may last 600 s and whose machine start counts against the same time."""
    text = (REPO / "tools" / "device" / "check.sh").read_text()
    limits = {k: int(v) for k, v in re.findall(r"^(T_\w+|CHECK_LIMIT|GPU_CHECK_BUDGET)=(\d+)", text, re.M)}
    code = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    calls = [line for line in code if '"$PY"' in line or "nvidia-smi 2>&1" in line]
    assert calls and all(re.search(r'timeout "\$T_\w+"', line) for line in calls), calls
    used = [re.search(r'timeout "\$(T_\w+)"', line).group(1) for line in calls]
    backends = re.search(r"^for backend in ([^;]+);", text, re.M).group(1).split()
    total = sum(limits[name] for name in used) + limits["T_CIFAR"] * (len(backends) - 1)
    assert sorted(set(used)) == sorted(k for k in limits if k.startswith("T_"))
    assert total <= limits["CHECK_LIMIT"] <= 420, (total, limits)
    assert limits["GPU_CHECK_BUDGET"] < limits["T_GPU_CHECK"] and '--budget "$GPU_CHECK_BUDGET"' in text


def test_the_wheel_installed_into_a_target_folder_carries_the_gpu_modules(tmp_path):
    """As check.sh runs it: the hnn-bridge wheel installed with ``pip --target`` and
    imported with ``python -P`` (the source tree off sys.path) has the CuPy and FlexSN
    adapters and the recipes; gpu_check.py runs on it."""
    import subprocess
    import sys

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("hnn_bridge", "adapters", "recipes"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    built = subprocess.run(
        [
            *pip[:3],
            "wheel",
            *pip[3:],
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "wheels"),
            str(src),
        ],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    site = tmp_path / "site"
    installed = subprocess.run(
        [
            *pip[:3],
            "install",
            *pip[3:],
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--target",
            str(site),
            *map(str, (tmp_path / "wheels").glob("*.whl")),
        ],
        capture_output=True,
        text=True,
    )
    assert installed.returncode == 0, installed.stderr
    env = {**__import__("os").environ, "PYTHONPATH": str(site), "PYTHONSAFEPATH": "1"}
    probe = (
        "import hnn_bridge, hnn_bridge.adapters.cupy_kernels as ck, hnn_bridge.adapters.triton_flexsn as tf\n"
        "from importlib.resources import files\n"
        "print(hnn_bridge.__file__); print(tf.__file__)\n"
        "print((files('hnn_bridge.recipes') / 'table1b.toml').is_file())\n"
        "print(' '.join(ck.nvrtc_options('sm_90')))\n"
    )
    ran = subprocess.run(
        [sys.executable, "-P", "-c", probe], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert all(line.startswith(str(site)) for line in lines[:2]), lines
    assert lines[2:] == [
        "True",
        "--fmad=false --ftz=false --prec-div=true --prec-sqrt=true -std=c++11 --gpu-architecture=sm_90",
    ]
    if not torch.cuda.is_available():
        check = subprocess.run(
            [
                sys.executable,
                "-P",
                str(REPO / "tools" / "device" / "gpu_check.py"),
                "--out",
                str(tmp_path / "r.json"),
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        assert check.returncode == 2 and "gpu_check: no CUDA device" in check.stderr
