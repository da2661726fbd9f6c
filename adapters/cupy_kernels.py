"""CuPy kernels of the IIR LIF neuron: multistep forward and BPTT, one thread per neuron.

The kernel source `KERNEL_SOURCE` (the file ``hnn_bridge/kernels/iir_kernels.cu``) is one
C text that compiles two ways:

- as CUDA for the ``"cupy"`` backend of `hnn_bridge.adapters.spikingjelly.IIRNode`: NVRTC
  builds it with exactly `nvrtc_options` (`compile_kernel_source`, which needs no GPU) and
  ``cupy.RawModule(path=...)`` loads the cubin or PTX; each thread owns one neuron and
  loops over T;
- as plain C (``gcc -O2 -ffp-contract=off``, by the package's one build helper,
  `hnn_bridge.kernels.build`) through `compile_c_kernels`, which is how the
  kernel arithmetic is verified on machines without a GPU: the test suite runs the C
  build on random data through ctypes and checks spikes bit for bit and gradients within
  1e-5 relative against the torch core (`hnn_bridge.functional.iir`).

Both builds evaluate exactly the arithmetic of `hnn_bridge.functional.iir.charge` and
of its BPTT (`hnn_bridge.kernels.fused`; eq. 1a, 1c, 1d forward; eq. 6 backward): the same
products and sums in the same order, in float32, with the coefficients rounded to float32
once (as torch does for ``python_float * float32_tensor``), without fused multiply-adds
(``__fmul_rn``/``__fadd_rn`` and ``--fmad=false`` on CUDA, ``-ffp-contract=off`` in C)
and without flushing subnormal values to zero (``--ftz=false``; CuPy's own compile path,
``RawModule(code=...)``, would append ``-ftz=true``, so it is not used). Spikes and
membrane potentials therefore equal the torch backend bit for bit, tiny values included;
gradients differ from it only through ``exp`` (CUDA ``expf`` / libm ``expf`` versus
torch's vectorised ``exp``), a few ulp. Like
`hnn_bridge.functional.surrogate.surrogate_grad`, the surrogate is exactly 0 where its
exponent is below ``EXP_FLOOR`` (`hnn_bridge.kernels.denormals`).

Only V is saved for backward; the surrogate of eq. 6 is recomputed from it. Only float32
is supported. ``cupy`` is imported lazily, on the first launch, and kept.
"""

from __future__ import annotations

import ctypes
import os
import tempfile
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from hnn_bridge.functional.iir import Coefficients, IIRState, widened, widened_state
from hnn_bridge.kernels.build import build_library, source_text
from hnn_bridge.kernels.denormals import EXP_FLOOR
from hnn_bridge.kernels.native import term_kinds
from hnn_bridge.params import IIRParams

__all__ = [
    "KERNEL_SOURCE",
    "NVRTC_OPTIONS",
    "C_COMPILE_FLAGS",
    "CupyIIRMultiStep",
    "CKernels",
    "compile_c_kernels",
    "compile_kernel_source",
    "cupy_multistep",
    "cupy_package",
    "cupy_stream",
    "cupy_unavailable_reason",
    "nvrtc_binding",
    "nvrtc_options",
    "require_cupy",
    "state_on",
    "target_arch",
    "term_kinds",
]

#: The kernel source, ``hnn_bridge/kernels/iir_kernels.cu``.
KERNEL_SOURCE = source_text("iir_kernels.cu")

#: NVRTC options, and the only ones the CUDA build gets (`nvrtc_options` adds the target):
#: no FMA contraction (the source also uses the _rn intrinsics), subnormals kept
#: (``--ftz=false``, as on the CPU), IEEE division and square root.
NVRTC_OPTIONS = ("--fmad=false", "--ftz=false", "--prec-div=true", "--prec-sqrt=true", "-std=c++11")
#: gcc flags for the CPU build of the same source (see `compile_c_kernels`).
C_COMPILE_FLAGS = ("-O2", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC", "-std=c99")

THREADS_PER_BLOCK = 256
_KERNEL_NAMES = ("iir_forward_f32", "iir_backward_f32")


def _f32(c: float) -> np.float32:
    return np.float32(c)


def _forward_scalars(k: Coefficients):
    return (
        _f32(k.a1),
        _f32(k.a2),
        _f32(k.b),
        _f32(k.theta),
        _f32(k.lam),
        _f32(-k.v_threshold),
        _f32(k.v_threshold),
    )


def _backward_scalars(k: Coefficients):
    return (
        _f32(k.a1),
        _f32(k.a2),
        _f32(k.b),
        _f32(k.theta),
        _f32(k.lam),
        _f32(k.v_threshold),
        _f32(-0.5 / (k.sigma * k.sigma)),
        _f32(k.surrogate_gain),
        _f32(EXP_FLOOR),
    )


def _check_b(k: Coefficients) -> None:
    if k.b == 0.0:  # IIRParams never yields this; the core's _sum would fail the same way
        raise ValueError("IIR neuron: the synapse gain b must not be zero")


# --------------------------------------------------------------------------- NVRTC


def nvrtc_options(arch: str) -> tuple[str, ...]:
    """The complete NVRTC option list for one target: `NVRTC_OPTIONS` plus
    ``--gpu-architecture=ARCH`` (``compute_XY`` gives PTX, ``sm_XY`` a cubin)."""
    return (*NVRTC_OPTIONS, f"--gpu-architecture={arch}")


def target_arch(capability: tuple[int, int], supported: Sequence[int]) -> str:
    """The NVRTC target for a device of compute ``capability`` (major, minor): a cubin
    (``sm_XY``) where this NVRTC can build for the device itself, else PTX of the newest
    architecture it can build below it (``compute_XY``), which the driver compiles on load."""
    wanted = 10 * capability[0] + capability[1]
    if wanted in supported:
        return f"sm_{wanted}"
    below = [a for a in supported if a < wanted]
    if not below:
        raise RuntimeError(
            f"IIRNode backend 'cupy': NVRTC builds for compute capabilities {sorted(supported)}, "
            f"none at or below this device's {capability[0]}.{capability[1]}"
        )
    return f"compute_{max(below)}"


class _CudaPythonNVRTC:
    """NVRTC through cuda-python (``cuda.bindings``, a dependency of torch's CUDA wheels)."""

    def __init__(self) -> None:
        from cuda.bindings import nvrtc

        self._nvrtc = nvrtc

    def _check(self, result, prog=None):
        err, *values = result
        if err != self._nvrtc.nvrtcResult.NVRTC_SUCCESS:
            log = ""
            if prog is not None:
                _, size = self._nvrtc.nvrtcGetProgramLogSize(prog)
                buf = b" " * size
                self._nvrtc.nvrtcGetProgramLog(prog, buf)
                log = buf.rstrip(b"\0").decode(errors="replace")
            raise RuntimeError(f"NVRTC failed ({err.name}) compiling the IIR kernels:\n{log}")
        return values[0] if len(values) == 1 else values

    def supported_archs(self) -> list[int]:
        return list(self._check(self._nvrtc.nvrtcGetSupportedArchs()))

    def compile(self, source: str, options: Sequence[str], cubin: bool) -> bytes:
        nv = self._nvrtc
        prog = self._check(nv.nvrtcCreateProgram(source.encode(), b"iir_kernels.cu", 0, [], []))
        try:
            self._check(nv.nvrtcCompileProgram(prog, len(options), [o.encode() for o in options]), prog)
            size_of, read = (
                (nv.nvrtcGetCUBINSize, nv.nvrtcGetCUBIN) if cubin else (nv.nvrtcGetPTXSize, nv.nvrtcGetPTX)
            )
            buf = b" " * self._check(size_of(prog))
            self._check(read(prog, buf))
            return buf if cubin else buf.rstrip(b"\0")
        finally:
            nv.nvrtcDestroyProgram(prog)


class _CupyNVRTC:
    """NVRTC through CuPy's own binding (for a torch without cuda-python)."""

    def __init__(self) -> None:
        from cupy.cuda import nvrtc

        self._nvrtc = nvrtc

    def supported_archs(self) -> list[int]:
        return list(self._nvrtc.getSupportedArchs())

    def compile(self, source: str, options: Sequence[str], cubin: bool) -> bytes:
        nv = self._nvrtc
        prog = nv.createProgram(source, "iir_kernels.cu", (), ())
        try:
            try:
                nv.compileProgram(prog, list(options))
            except nv.NVRTCError as error:
                log = nv.getProgramLog(prog)
                raise RuntimeError(f"NVRTC failed ({error}) compiling the IIR kernels:\n{log}") from error
            return nv.getCUBIN(prog) if cubin else nv.getPTX(prog)
        finally:
            nv.destroyProgram(prog)


def nvrtc_binding():
    """The NVRTC binding used to build the kernels: cuda-python's where it imports and
    finds the NVRTC library, else CuPy's. Raises ImportError naming both failures."""
    failures = []
    for make, name in ((_CudaPythonNVRTC, "cuda-python (cuda.bindings)"), (_CupyNVRTC, "cupy")):
        try:
            binding = make()
            binding.supported_archs()  # loads the library
            return binding
        except Exception as error:  # noqa: BLE001 - try the next binding, report both
            failures.append(f"{name}: {type(error).__name__}: {error}")
    raise ImportError("NVRTC is reachable through neither binding (" + "; ".join(failures) + ")")


def compile_kernel_source(arch: str, nvrtc=None) -> bytes:
    """`KERNEL_SOURCE` compiled by NVRTC with exactly ``nvrtc_options(arch)``: PTX text for
    ``compute_XY``, a cubin for ``sm_XY``. Needs no GPU.

    The kernels are built here rather than by ``cupy.RawModule(code=...)`` because CuPy
    (13 and 14) appends ``-ftz=true`` after the caller's options, and the later flag wins:
    every float add, multiply and compare would then flush subnormal values to zero, which
    the torch core and the C build do not do.
    """
    nvrtc = nvrtc or nvrtc_binding()
    return nvrtc.compile(KERNEL_SOURCE, nvrtc_options(arch), cubin=arch.startswith("sm_"))


# --------------------------------------------------------------------------- CuPy (CUDA)


def cupy_package(cuda_version: Optional[str]) -> Optional[str]:
    """The CuPy wheel for the CUDA that torch was built with (``torch.version.cuda``):
    ``cupy-cuda12x`` for 12.x, ``cupy-cuda13x`` for 13.x; None for a torch without CUDA."""
    if not cuda_version:
        return None
    return f"cupy-cuda{cuda_version.split('.')[0]}x"


def _install_hint() -> str:
    package = cupy_package(torch.version.cuda)
    if package is None:
        return "a CUDA build of torch, then pip install cupy-cuda12x or cupy-cuda13x to match its CUDA"
    return f"pip install {package}, for torch's CUDA {torch.version.cuda}"


def _cupy_error(reason: str) -> RuntimeError:
    return RuntimeError(
        f"IIRNode backend 'cupy' needs a CUDA device and the cupy package ({_install_hint()}), "
        f"but {reason}; use backend='torch' on CPU"
    )


def cupy_unavailable_reason() -> Optional[str]:
    """None when the cupy backend can run here, else what is missing (no import of cupy
    beyond a spec lookup)."""
    import importlib.util

    missing = []
    if not torch.cuda.is_available():
        missing.append("torch sees no CUDA device")
    if importlib.util.find_spec("cupy") is None:
        missing.append("cupy is not installed")
    return " and ".join(missing) if missing else None


_CUPY = None


def require_cupy():
    """Import and return cupy (once per process), or raise the RuntimeError that names
    the 'torch' backend."""
    global _CUPY
    if _CUPY is not None:
        return _CUPY
    reason = cupy_unavailable_reason()
    if reason is not None:
        raise _cupy_error(reason)
    try:
        import cupy
    except Exception as error:  # installed but broken (driver/toolkit mismatch)
        raise _cupy_error(f"importing cupy failed ({error})") from error
    _CUPY = cupy
    return cupy


class _DeviceKernels(NamedTuple):
    cupy: object
    device: object  # cupy.cuda.Device
    forward: object  # cupy.RawKernel
    backward: object
    arch: str


_KERNELS: dict[int, _DeviceKernels] = {}


def _kernels(device_index: int) -> _DeviceKernels:
    """The kernels for one device, compiled once per process (see `compile_kernel_source`)
    and loaded with ``cupy.RawModule(path=...)``, so that CuPy adds no option."""
    found = _KERNELS.get(device_index)
    if found is None:
        cupy = require_cupy()
        nvrtc = nvrtc_binding()
        arch = target_arch(torch.cuda.get_device_capability(device_index), nvrtc.supported_archs())
        image = compile_kernel_source(arch, nvrtc)
        device = cupy.cuda.Device(device_index)
        with tempfile.TemporaryDirectory(prefix="hnn_bridge_iir_") as folder, device:
            path = os.path.join(folder, "iir_kernels." + ("cubin" if arch.startswith("sm_") else "ptx"))
            with open(path, "wb") as f:
                f.write(image)
            module = cupy.RawModule(path=path)
            forward, backward = (module.get_function(name) for name in _KERNEL_NAMES)  # loads the file
        found = _KERNELS[device_index] = _DeviceKernels(cupy, device, forward, backward, arch)
    return found


def cupy_stream(cupy, stream: "torch.cuda.Stream"):
    """A CuPy view of a torch CUDA stream: ``cupy.cuda.Stream.from_external`` (CuPy 14,
    through the CUDA stream protocol), ``cupy.cuda.ExternalStream`` before it (deprecated
    in CuPy 14, where it warns on every call)."""
    from_external = getattr(cupy.cuda.Stream, "from_external", None)
    if from_external is not None and hasattr(stream, "__cuda_stream__"):
        return from_external(stream)
    return cupy.cuda.ExternalStream(stream.cuda_stream, stream.device_index)


def _launch(kernels: _DeviceKernels, kernel, device: torch.device, n: int, args: tuple) -> None:
    """Launch on the current PyTorch stream of `device` (so no extra synchronisation)."""
    blocks = (n + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK
    stream = cupy_stream(kernels.cupy, torch.cuda.current_stream(device))
    with kernels.device:
        kernel((blocks,), (THREADS_PER_BLOCK,), args, stream=stream)


def _prepare(t: Optional[Tensor], like: Tensor) -> Optional[Tensor]:
    if t is None:
        return None
    if t.shape != like.shape:
        raise ValueError(f"IIR neuron state has shape {tuple(t.shape)}, expected {tuple(like.shape)}")
    return t.to(device=like.device, dtype=like.dtype).contiguous()


def _check_tensor(x_seq: Tensor) -> None:
    if not x_seq.is_cuda:
        raise _cupy_error(f"the input is on {x_seq.device}")
    if x_seq.dtype != torch.float32:
        raise TypeError(
            f"IIRNode backend 'cupy' computes in float32 (float16 and bfloat16 inputs are widened to "
            f"float32 first), got {x_seq.dtype}; convert the input to float32 or use backend='torch'"
        )


class CupyIIRMultiStep(torch.autograd.Function):
    """The CuPy twin of `hnn_bridge.kernels.fused.IIRMultiStep` (same inputs and outputs,
    without the ``smooth`` option): x_seq [T, ...] float32 on CUDA, the initial state
    (p1, p2, r, v, o; each a tensor on x_seq's device or None for zeros), the
    `Coefficients` and detach_reset. Returns spikes, V, p[T-1], p[T-2], R[T-1]; saves
    only V. Its backward is not itself differentiable (a double backward raises)."""

    @staticmethod
    def forward(ctx, x_seq, p1, p2, r, v, o, k: Coefficients, detach_reset: bool):  # type: ignore[override]
        _check_tensor(x_seq)
        _check_b(k)
        x = x_seq.contiguous()
        steps, n = x.shape[0], x[0].numel()
        state = tuple(_prepare(s, x[0]) for s in (p1, p2, r, v, o))
        spikes = torch.empty_like(x)
        volts = torch.empty_like(x)
        p_last, p_prev, r_last = (torch.empty_like(x[0]) for _ in range(3))
        if n > 0:
            kernels = _kernels(x.device.index)
            _launch(
                kernels,
                kernels.forward,
                x.device,
                n,
                (
                    x.data_ptr(),
                    *(_ptr(s) for s in state),
                    spikes.data_ptr(),
                    volts.data_ptr(),
                    p_last.data_ptr(),
                    p_prev.data_ptr(),
                    r_last.data_ptr(),
                    np.int64(n),
                    np.int32(steps),
                    np.int32(term_kinds(k)),
                    *_forward_scalars(k),
                ),
            )
        ctx.save_for_backward(volts)
        ctx.k, ctx.detach_reset = k, detach_reset
        ctx.set_materialize_grads(False)
        return spikes, volts, p_last, p_prev, r_last

    @staticmethod
    @once_differentiable
    def backward(ctx, g_spikes, g_volts, g_p1, g_p2, g_r):  # type: ignore[override]
        (volts,) = ctx.saved_tensors
        k: Coefficients = ctx.k
        steps, n = volts.shape[0], volts[0].numel()
        grads = tuple(None if g is None else g.contiguous() for g in (g_spikes, g_volts, g_p1, g_p2, g_r))
        needs = ctx.needs_input_grad
        grad_x = torch.empty_like(volts)
        outs = tuple(torch.empty_like(volts[0]) if needs[i] else None for i in range(1, 6))
        if n > 0:
            kernels = _kernels(volts.device.index)
            _launch(
                kernels,
                kernels.backward,
                volts.device,
                n,
                (
                    volts.data_ptr(),
                    *(_ptr(g) for g in grads),
                    grad_x.data_ptr(),
                    *(_ptr(g) for g in outs),
                    np.int64(n),
                    np.int32(steps),
                    np.int32(term_kinds(k)),
                    np.int32(bool(ctx.detach_reset)),
                    *_backward_scalars(k),
                ),
            )
        return (grad_x, *outs, None, None)


def _ptr(t: Optional[Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def state_on(like: Tensor, state: Optional[IIRState]) -> tuple[Optional[Tensor], ...]:
    """The five state tensors (None for a zero start) moved onto ``like``'s device outside
    the autograd Function, so that a state on another device (the CPU) gets its gradient
    on its own device, through the copy."""
    if state is None:
        return (None,) * 5
    return tuple(None if s is None else s.to(device=like.device) for s in state)


def cupy_multistep(
    x_seq: Tensor, params: IIRParams, state: Optional[IIRState] = None
) -> tuple[Tensor, Tensor, IIRState]:
    """`hnn_bridge.functional.iir_multistep` on the CuPy kernels (float32, CUDA).

    A float16/bfloat16 input (autocast) is widened to float32 as in `iir_multistep`; the
    spikes come back in its dtype, V and the state in float32 on the input's device.

    Returns (spikes [T, ...], V [T, ...], final state); `state=None` (or None entries)
    starts from zeros. Raises RuntimeError naming backend='torch' without CUDA or cupy.
    """
    if x_seq.dim() < 1 or x_seq.shape[0] < 1:
        raise ValueError(
            f"IIR neuron: expected a time-first tensor [T, ...] with T >= 1, got shape {tuple(x_seq.shape)}"
        )
    require_cupy()
    out_dtype, x_seq, state = x_seq.dtype, widened(x_seq), widened_state(state)
    given = state_on(x_seq, state)
    spikes, volts, p1, p2, r = CupyIIRMultiStep.apply(
        x_seq, *given, Coefficients.of(params), params.detach_reset
    )
    return spikes.to(out_dtype), volts, IIRState(p1, p2, r, volts[-1], spikes[-1])


# --------------------------------------------------------------------------- plain C build


class CKernels:
    """The kernel source compiled as plain C and called through ctypes on numpy arrays.

    Exists to verify the kernel arithmetic without a GPU (see `compile_c_kernels`).
    Arrays are float32, C-contiguous, time first ``[T, n]`` (states ``[n]``).
    """

    def __init__(self, library_path: str) -> None:
        self.path = library_path
        self._lib = ctypes.CDLL(library_path)
        ptr, i64, i32, f32 = ctypes.c_void_p, ctypes.c_longlong, ctypes.c_int, ctypes.c_float
        self._lib.iir_forward_f32.argtypes = [ptr] * 11 + [i64, i32, i32] + [f32] * 7
        self._lib.iir_forward_f32.restype = None
        self._lib.iir_backward_f32.argtypes = [ptr] * 12 + [i64, i32, i32, i32] + [f32] * 9
        self._lib.iir_backward_f32.restype = None

    @staticmethod
    def _p(a: Optional[np.ndarray]):
        if a is None:
            return None
        assert a.dtype == np.float32 and a.flags["C_CONTIGUOUS"], "float32 C-contiguous arrays only"
        return a.ctypes.data_as(ctypes.c_void_p)

    def forward(self, x: np.ndarray, k: Coefficients, state=(None,) * 5):
        """Returns (spikes, volts, p_last, p_prev, r_last) as numpy arrays."""
        _check_b(k)
        steps, n = x.shape[0], int(np.prod(x.shape[1:], dtype=np.int64))
        spikes, volts = np.empty_like(x), np.empty_like(x)
        finals = [np.empty(x.shape[1:], np.float32) for _ in range(3)]
        self._lib.iir_forward_f32(
            self._p(x),
            *(self._p(s) for s in state),
            self._p(spikes),
            self._p(volts),
            *(self._p(f) for f in finals),
            n,
            steps,
            term_kinds(k),
            *_forward_scalars(k),
        )
        return (spikes, volts, *finals)

    def backward(
        self,
        volts: np.ndarray,
        k: Coefficients,
        detach_reset: bool,
        g_spikes=None,
        g_volts=None,
        g_p1=None,
        g_p2=None,
        g_r=None,
    ):
        """Returns (grad_x, grad_p1, grad_p2, grad_r, grad_v, grad_o) of the initial state."""
        steps, n = volts.shape[0], int(np.prod(volts.shape[1:], dtype=np.int64))
        grad_x = np.empty_like(volts)
        outs = [np.empty(volts.shape[1:], np.float32) for _ in range(5)]
        self._lib.iir_backward_f32(
            self._p(volts),
            *(self._p(g) for g in (g_spikes, g_volts, g_p1, g_p2, g_r)),
            self._p(grad_x),
            *(self._p(o) for o in outs),
            n,
            steps,
            term_kinds(k),
            int(bool(detach_reset)),
            *_backward_scalars(k),
        )
        return (grad_x, *outs)


def compile_c_kernels(workdir: Optional[str] = None, compiler: Optional[str] = None) -> CKernels:
    """Compile `KERNEL_SOURCE` as plain C into a shared library and load it.

    ``gcc -O2 -ffp-contract=off -fno-fast-math -shared -fPIC`` with the CUDA-only macros
    switched off: the per-neuron loop is the same text the CUDA kernel runs, so checking
    this build against the torch core on the CPU checks the kernel's arithmetic (the
    CUDA build differs only in ``expf``). Built by `hnn_bridge.kernels.build.build_library`
    in ``workdir`` (default: its cache folder) with ``compiler`` (default: ``$CC``, gcc or
    cc). Raises FileNotFoundError (`CompilerNotFound`) without a C compiler.
    """
    library = build_library(
        KERNEL_SOURCE, C_COMPILE_FLAGS, "iir_kernels", libs=("-lm",), folder=workdir, compiler=compiler
    )
    return CKernels(str(library))
