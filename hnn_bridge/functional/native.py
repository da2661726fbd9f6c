"""The fused multistep neuron on the CPU as one C loop nest (float32): same bits, fewer passes.

`iir._fused_forward` and `iir._bptt` run the recurrences of eq. 1a-1f as about ten ATen
ops per time step, each a full pass over one step's memory. On the CPU this module runs
the same recurrences as one loop nest compiled from C at first use (``gcc -O3
-march=native -ffp-contract=off``): blocks of neurons stay in cache over all T steps and
the inner loop over a block is vectorised. The arithmetic is that of `iir.charge` and of
`iir._bptt`, operation by operation in the same order, in float32, without fused
multiply-adds (``-ffp-contract=off``, no fast math; a vectorised IEEE multiply or add
rounds exactly as a scalar or an ATen one), so spikes, V and gradients equal the ATen
path bit for bit (`tests/test_native.py`). The surrogate of eq. 6 (``exp``) is still
computed by ATen (`iir._surrogate_into`), once over all steps, and passed in.

Large layers are split into chunks run on ``torch.get_num_threads()`` Python threads
(ctypes releases the GIL). Without a C compiler, or with ``HNN_BRIDGE_NATIVE=0``, the
ATen path runs instead (`native_unavailable_reason` says why).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from ..kernels.denormals import below_floor

__all__ = [
    "native_backward",
    "native_enabled",
    "native_forward",
    "native_maxpool2_backward",
    "native_maxpool2_forward",
    "native_surrogate_exp",
    "native_unavailable_reason",
    "term_kinds",
]

SOURCE = r"""
#include <stddef.h>
#include <string.h>
#define BLK 256
/* Term kinds, 2 bits per coefficient (as term_kinds() in this module): 0 absent,
 * 1 unscaled, 2 coefficient * value; slots a1, a2, b, theta, lam, -V_th. */
#define KIND(slot) ((kinds >> (2 * (slot))) & 3)
/* Every branch is on a kind or a null pointer, outside the loops over a block of
 * neurons, so that each `for j` loop is straight-line code the compiler vectorises. */
#define EACH for (int j = 0; j < m; ++j)
/* dst = term (first term) or dst = dst + term, term = value or c * value by kind */
#define PUT(dst, kind, c, value, first) do { \
    if (first) { if ((kind) == 1) EACH (dst)[j] = (value)[j]; else EACH (dst)[j] = (c) * (value)[j]; } \
    else { if ((kind) == 1) EACH (dst)[j] = (dst)[j] + (value)[j]; else EACH (dst)[j] = (dst)[j] + (c) * (value)[j]; } \
} while (0)

static void load(float* dst, const float* src, long long i0, int m)
{
    if (src) memcpy(dst, src + i0, sizeof(float) * (size_t)m);
    else memset(dst, 0, sizeof(float) * (size_t)m);
}

static void store(float* dst, const float* src, long long i0, int m)
{
    if (dst) memcpy(dst + i0, src, sizeof(float) * (size_t)m);
}

/* Forward over T steps for `count` neurons of [T, stride] sequences (x_step: stride, or
 * 0 for an input constant over time). Null inputs are zeros; null outputs are skipped. */
void iir_native_forward(
    const float* x, long long x_step,
    const float* p1_in, const float* p2_in, const float* r_in, const float* v_in, const float* o_in,
    float* spikes, float* volts,
    float* p1_out, float* p2_out, float* r_out, float* v_out, float* o_out,
    long long stride, long long count, int steps, int kinds,
    float a1, float a2, float b, float theta, float lam, float neg_vth, float vth)
{
    const int k_a1 = KIND(0), k_a2 = KIND(1), k_b = KIND(2), k_th = KIND(3), k_lam = KIND(4), k_nv = KIND(5);
    float bufs[3][BLK], R[BLK], V[BLK], O[BLK];
    for (long long i0 = 0; i0 < count; i0 += BLK) {
        const int m = (int)(count - i0 < BLK ? count - i0 : BLK);
        float *P = bufs[0], *P1 = bufs[1], *P2 = bufs[2];
        load(P1, p1_in, i0, m);
        load(P2, p2_in, i0, m);
        load(R, r_in, i0, m);
        load(V, v_in, i0, m);
        load(O, o_in, i0, m);
        for (int t = 0; t < steps; ++t) {
            const float* xt = x + (long long)t * x_step + i0;
            /* p[t] = a1*p[t-1] + a2*p[t-2] + b*x[t], left to right, absent terms skipped */
            int has = 0;
            if (k_a1) { PUT(P, k_a1, a1, P1, 1); has = 1; }
            if (k_a2) { PUT(P, k_a2, a2, P2, !has); has = 1; }
            if (k_b) { PUT(P, k_b, b, xt, !has); has = 1; }
            if (!has) EACH P[j] = 0.0f;
            /* R[t] = theta*R[t-1] + O[t-1] */
            if (k_th == 1) EACH R[j] = R[j] + O[j];
            else if (k_th) EACH R[j] = theta * R[j] + O[j];
            else EACH R[j] = O[j];
            /* V[t] = lam*V[t-1] + p[t] - V_th*R[t] */
            if (k_lam == 1) EACH V[j] = V[j] + P[j];
            else if (k_lam) EACH V[j] = lam * V[j] + P[j];
            else EACH V[j] = P[j];
            if (k_nv == 1) EACH V[j] = V[j] + R[j];
            else if (k_nv) EACH V[j] = V[j] + neg_vth * R[j];
            /* O[t] = U(V[t] - V_th), eq. 1f with U(0) = 1 */
            EACH O[j] = V[j] >= vth ? 1.0f : 0.0f;
            if (spikes) memcpy(spikes + (long long)t * stride + i0, O, sizeof(float) * (size_t)m);
            if (volts) memcpy(volts + (long long)t * stride + i0, V, sizeof(float) * (size_t)m);
            float* oldest = P2; /* p[t-2] is read no more: it becomes the next p */
            P2 = P1;
            P1 = P;
            P = oldest;
        }
        store(p1_out, P1, i0, m);
        store(p2_out, P2, i0, m);
        store(r_out, R, i0, m);
        store(v_out, V, i0, m);
        store(o_out, O, i0, m);
    }
}

/* The steps of iir._surrogate_into before exp (sub, square, scale, clamp to `below`),
 * one pass: out = max((v - vth)^2 * scale, below), NaN kept as clamp_ keeps it. */
void iir_native_surrogate_arg(const float* v, float* out, long long n, float vth, float scale, float below)
{
    for (long long j = 0; j < n; ++j) {
        const float d = v[j] - vth;
        const float a = d * d * scale;
        out[j] = a < below ? below : a;
    }
}

/* BPTT of iir._bptt: `g` holds exp of the surrogate's argument (eq. 6, see
 * iir_native_surrogate_arg) on entry and b * g_p[t] (the input gradient) on exit; dO/dV
 * is (e <= exp_below ? 0 : e) * gain, the threshold_ and mul_ of iir._surrogate_into.
 * Null incoming gradients are zeros. Writes the adjoints of the initial state
 * p[-1], p[-2], R[-1], V[-1], O[-1]. */
void iir_native_backward(
    float* g, const float* g_spikes, const float* g_volts,
    const float* g_p1, const float* g_p2, const float* g_r,
    float* cp0_out, float* cp1_out, float* cr_out, float* cv_out, float* co_out,
    long long stride, long long count, int steps, int kinds, int detach_reset,
    float a1, float a2, float b, float theta, float lam, float vth, float exp_below, float gain)
{
    const int k_a1 = KIND(0), k_a2 = KIND(1), k_b = KIND(2);
    const int unit_vth = vth == 1.0f;
    float SG[BLK], GV[BLK], GR[BLK], GP[BLK], CV[BLK], CR[BLK], CO[BLK], CP0[BLK], CP1[BLK];
    for (long long i0 = 0; i0 < count; i0 += BLK) {
        const int m = (int)(count - i0 < BLK ? count - i0 : BLK);
        memset(CV, 0, sizeof(float) * (size_t)m);
        memset(CO, 0, sizeof(float) * (size_t)m);
        load(CR, g_r, i0, m);
        load(CP0, g_p1, i0, m);
        load(CP1, g_p2, i0, m);
        for (int t = steps - 1; t >= 0; --t) {
            float* gt = g + (long long)t * stride + i0;
            const float* gst = g_spikes ? g_spikes + (long long)t * stride + i0 : NULL;
            const float* gvt = g_volts ? g_volts + (long long)t * stride + i0 : NULL;
            EACH SG[j] = (gt[j] <= exp_below ? 0.0f : gt[j]) * gain;
            /* g_v = dO/dV * (g_spikes[t] + c_o) + c_v (+ g_volts[t]) */
            if (gst) EACH GV[j] = SG[j] * (gst[j] + CO[j]);
            else EACH GV[j] = SG[j] * CO[j];
            EACH GV[j] = GV[j] + CV[j];
            if (gvt) EACH GV[j] = GV[j] + gvt[j];
            /* g_R[t] = c_r - V_th*g_v;  c_v = lam*g_v;  g_p = c_p0 + g_v */
            if (unit_vth) EACH GR[j] = CR[j] - GV[j];
            else EACH GR[j] = CR[j] - GV[j] * vth;
            EACH CV[j] = GV[j] * lam;
            EACH GP[j] = GV[j] + CP0[j];
            EACH CR[j] = GR[j] * theta;
            if (detach_reset) EACH CO[j] = 0.0f;
            else EACH CO[j] = GR[j];
            /* the adjoints of p[t-1] and p[t-2] for the next (earlier) step */
            if (k_a1 == 1) EACH CP0[j] = CP1[j] + GP[j];
            else if (k_a1) EACH CP0[j] = CP1[j] + GP[j] * a1;
            else EACH CP0[j] = CP1[j];
            if (k_a2) EACH CP1[j] = GP[j] * a2;
            else EACH CP1[j] = 0.0f;
            if (k_b == 1) EACH gt[j] = GP[j];
            else EACH gt[j] = GP[j] * b;
        }
        store(cp0_out, CP0, i0, m);
        store(cp1_out, CP1, i0, m);
        store(cr_out, CR, i0, m);
        store(cv_out, CV, i0, m);
        store(co_out, CO, i0, m);
    }
}

/* 2x2 max pooling, stride 2, of `planes` contiguous H x W planes (torch's max_pool2d: the
 * first maximum in row-major order wins, NaN propagates); idx keeps the winner 0..3. */
void iir_native_maxpool2_forward(const float* restrict x, float* restrict out, unsigned char* restrict idx,
                                 long long planes, long long h, long long w)
{
    const long long ho = h / 2, wo = w / 2;
    for (long long p = 0; p < planes; ++p) {
        for (long long i = 0; i < ho; ++i) {
            const float* r0 = x + p * h * w + 2 * i * w;
            const float* r1 = r0 + w;
            float* o = out + (p * ho + i) * wo;
            unsigned char* k = idx + (p * ho + i) * wo;
            for (long long j = 0; j < wo; ++j) {
                const float c[4] = {r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1]};
                float m = c[0];
                unsigned char best = 0;
                for (unsigned char q = 1; q < 4; ++q)
                    if (c[q] > m || c[q] != c[q]) { m = c[q]; best = q; }
                o[j] = m;
                k[j] = best;
            }
        }
    }
}

/* Its backward: the gradient goes to the winner (as 0 + g, like torch's accumulation into
 * zeros), the other three get 0; rows and columns beyond 2*ho, 2*wo get 0. */
void iir_native_maxpool2_backward(const float* restrict g, const unsigned char* restrict idx, float* restrict gx,
                                  long long planes, long long h, long long w)
{
    const long long ho = h / 2, wo = w / 2;
    for (long long p = 0; p < planes; ++p) {
        float* plane = gx + p * h * w;
        for (long long e = 0; e < h * w; ++e) plane[e] = 0.0f;
        for (long long i = 0; i < ho; ++i) {
            float* r0 = plane + 2 * i * w;
            float* r1 = r0 + w;
            const float* gi = g + (p * ho + i) * wo;
            const unsigned char* k = idx + (p * ho + i) * wo;
            for (long long j = 0; j < wo; ++j) {
                float* dst = k[j] < 2 ? r0 + 2 * j + k[j] : r1 + 2 * j + (k[j] - 2);
                *dst = 0.0f + gi[j];
            }
        }
    }
}
"""

def _kind(c: float) -> int:
    return 0 if c == 0.0 else 1 if c == 1.0 else 2


def term_kinds(k) -> int:
    """Pack the 2-bit term kind (0 absent, 1 unscaled, 2 scaled) of a1, a2, b, theta, lam,
    -V_th of `iir.Coefficients` ``k``, decided on the double-precision coefficients exactly
    as `iir._scaled` and `iir._lincomb` do (shared with the CuPy kernel)."""
    kinds = (k.a1, k.a2, k.b, k.theta, k.lam, -k.v_threshold)
    return sum(_kind(c) << (2 * slot) for slot, c in enumerate(kinds))


FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC", "-std=c99")
#: Below this many neurons per step a layer runs on the calling thread only.
CHUNK = 32768

_lock = threading.Lock()
_state: dict[str, object] = {}


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "hnn_bridge"


def _compile() -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None or shutil.which(cc) is None:
        raise RuntimeError("no C compiler (gcc or cc) on PATH")
    tag = hashlib.sha256((SOURCE + " ".join(FLAGS) + cc).encode()).hexdigest()[:16]
    for folder in (_cache_dir(), Path(tempfile.gettempdir()) / f"hnn_bridge-{os.getuid()}"):
        lib = folder / f"libiir_native-{tag}.so"
        if lib.exists():
            return ctypes.CDLL(str(lib))
        try:
            folder.mkdir(parents=True, exist_ok=True)
            work = tempfile.mkdtemp(dir=folder)
        except OSError:
            continue
        src, out = os.path.join(work, "iir_native.c"), os.path.join(work, "lib.so")
        Path(src).write_text(SOURCE)
        done = subprocess.run([cc, *FLAGS, "-o", out, src], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"compiling the native neuron failed: {done.stderr.strip()[:400]}")
        os.replace(out, lib)  # atomic: concurrent processes compile the same bytes
        shutil.rmtree(work, ignore_errors=True)
        return ctypes.CDLL(str(lib))
    raise RuntimeError("no writable cache folder for the compiled neuron")


def _library() -> Optional[ctypes.CDLL]:
    with _lock:
        if "lib" not in _state:
            try:
                lib = _compile()
                P, i64, i32, f32 = ctypes.c_void_p, ctypes.c_longlong, ctypes.c_int, ctypes.c_float
                lib.iir_native_forward.argtypes = [P, i64] + [P] * 12 + [i64, i64, i32, i32] + [f32] * 7
                lib.iir_native_forward.restype = None
                lib.iir_native_backward.argtypes = [P] * 11 + [i64, i64, i32, i32, i32] + [f32] * 8
                lib.iir_native_surrogate_arg.argtypes = [P, P, i64, f32, f32, f32]
                lib.iir_native_surrogate_arg.restype = None
                lib.iir_native_backward.restype = None
                for name in ("iir_native_maxpool2_forward", "iir_native_maxpool2_backward"):
                    getattr(lib, name).argtypes = [P, P, P, i64, i64, i64]
                    getattr(lib, name).restype = None
                _state["lib"], _state["why"] = lib, None
            except (RuntimeError, OSError) as err:
                _state["lib"], _state["why"] = None, str(err)
        return _state["lib"]  # type: ignore[return-value]


def native_unavailable_reason() -> Optional[str]:
    """Why the native path does not run here (None when it does)."""
    if os.environ.get("HNN_BRIDGE_NATIVE", "1") == "0":
        return "disabled by HNN_BRIDGE_NATIVE=0"
    return None if _library() is not None else str(_state["why"])


def native_enabled(x: Tensor) -> bool:
    """The native path applies to ``x``: float32 on the CPU, and the library is built."""
    return x.dtype == torch.float32 and x.device.type == "cpu" and native_unavailable_reason() is None


def _ptr(t: Optional[Tensor], offset: int = 0) -> Optional[int]:
    return None if t is None else t.data_ptr() + 4 * offset


_pool: list[ThreadPoolExecutor] = []


def _chunks(items: int, item_size: int = 1, align: int = 256) -> list[tuple[int, int]]:
    """(start, count) of ``items`` split over the torch threads in multiples of ``align``
    (256: whole neuron blocks), or one chunk below `CHUNK` elements per thread."""
    workers = max(1, torch.get_num_threads())
    if workers == 1 or items < 2 or items * item_size < 2 * CHUNK:
        return [(0, items)]
    size = -(-items // workers)
    size = -(-size // align) * align
    return [(i, min(size, items - i)) for i in range(0, items, size)]


def _run(call, items: int, item_size: int = 1, align: int = 256) -> None:
    """``call(start, count)`` over `_chunks`, on the pool's threads when there are several."""
    parts = _chunks(items, item_size, align)
    if len(parts) == 1:
        call(*parts[0])
        return
    if not _pool or _pool[0]._max_workers < len(parts):  # noqa: SLF001 - sizing our own pool
        _pool[:] = [ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="hnn_bridge-neuron")]
    for f in [_pool[0].submit(call, i, m) for i, m in parts]:
        f.result()


def _flat(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.contiguous()


def native_forward(x_seq: Tensor, state, k, *, keep_spikes: bool, keep_volts: bool,
                   volts_out: Optional[Tensor] = None):
    """`iir._fused_forward` (smooth=False) in C: (spikes|None, volts|None, p1, p2, r, v, o)
    for x_seq [T, ...], the initial state (p1, p2, r, v, o; None entries are zeros) and
    the `iir.Coefficients` ``k``."""
    lib = _library()
    kinds = term_kinds(k)
    scalars = (k.a1, k.a2, k.b, k.theta, k.lam, -k.v_threshold, k.v_threshold)  # ctypes rounds to float32
    steps = x_seq.shape[0]
    shape = x_seq.shape[1:]
    n = shape.numel()
    constant = steps > 1 and x_seq.stride(0) == 0
    x = x_seq[0].contiguous() if constant else x_seq.contiguous()
    x_step = 0 if constant else n
    init = [_flat(s) for s in state]
    opts = dict(dtype=torch.float32, device=x_seq.device)
    spikes = torch.empty(x_seq.shape, **opts) if keep_spikes else None
    volts = (volts_out if volts_out is not None else torch.empty(x_seq.shape, **opts)) if keep_volts else None
    finals = [torch.empty(shape, **opts) for _ in range(5)]

    def call(i: int, m: int) -> None:
        lib.iir_native_forward(_ptr(x, i), x_step, *(_ptr(s, i) for s in init), _ptr(spikes, i), _ptr(volts, i),
                               *(_ptr(f, i) for f in finals), n, m, steps, kinds, *scalars)

    if n > 0:
        _run(call, n)
    return (spikes, volts, *finals)


def native_surrogate_exp(volts: Tensor, out: Tensor, k) -> Tensor:
    """``out`` = exp of eq. 6's clamped argument, the first five ops of
    `iir._surrogate_into` (sub, square, scale, clamp in one C pass, then ATen's exp_);
    `native_backward` applies the last two (threshold, gain) as it reads ``out``."""
    lib = _library()
    below, _ = below_floor(volts)
    n = volts.numel()
    scale = -0.5 / (k.sigma * k.sigma)

    def call(i: int, m: int) -> None:
        lib.iir_native_surrogate_arg(_ptr(volts, i), _ptr(out, i), m, k.v_threshold, scale, below)

    if n > 0:
        _run(call, n)
    return out.exp_()


def native_backward(g: Tensor, g_spikes: Optional[Tensor], g_volts: Optional[Tensor], g_p1, g_p2, g_r,
                    k, detach_reset: bool):
    """`iir._bptt`'s recurrence in C, in place on ``g`` (`native_surrogate_exp` of V in,
    grad_x out); returns the adjoints (cp0, cp1, c_r, c_v, c_o) of the initial state."""
    lib = _library()
    kinds = term_kinds(k)
    _, exp_below = below_floor(g)
    scalars = (k.a1, k.a2, k.b, k.theta, k.lam, k.v_threshold, exp_below, k.surrogate_gain)
    steps, shape = g.shape[0], g.shape[1:]
    n = shape.numel()
    gs, gv = _flat(g_spikes), _flat(g_volts)
    init = [_flat(t) for t in (g_p1, g_p2, g_r)]
    outs = [torch.empty(shape, dtype=g.dtype, device=g.device) for _ in range(5)]

    def call(i: int, m: int) -> None:
        lib.iir_native_backward(_ptr(g, i), _ptr(gs, i), _ptr(gv, i), *(_ptr(t, i) for t in init),
                                *(_ptr(o, i) for o in outs), n, m, steps, kinds, int(detach_reset), *scalars)

    if n > 0:
        _run(call, n)
    return tuple(outs)


def native_maxpool2_forward(x: Tensor) -> tuple[Tensor, Tensor]:
    """2x2/stride-2 max pooling of a contiguous float32 [..., H, W] on the CPU: (out, idx)."""
    lib = _library()
    h, w = x.shape[-2], x.shape[-1]
    planes = x[..., 0, 0].numel()
    out = torch.empty((*x.shape[:-2], h // 2, w // 2), dtype=x.dtype)
    idx = torch.empty(out.shape, dtype=torch.uint8)
    po = (h // 2) * (w // 2)

    def call(p: int, m: int) -> None:
        lib.iir_native_maxpool2_forward(_ptr(x, p * h * w), _ptr(out, p * po), idx.data_ptr() + p * po, m, h, w)

    _run(call, planes, item_size=h * w, align=1)
    return out, idx


def native_maxpool2_backward(g: Tensor, idx: Tensor, shape: torch.Size) -> Tensor:
    """The input gradient of `native_maxpool2_forward` for output gradient ``g``."""
    lib = _library()
    g = g.contiguous()
    h, w = shape[-2], shape[-1]
    planes = idx[..., 0, 0].numel() if idx.dim() >= 2 else 0
    gx = torch.empty(shape, dtype=g.dtype)
    po = (h // 2) * (w // 2)

    def call(p: int, m: int) -> None:
        lib.iir_native_maxpool2_backward(_ptr(g, p * po), idx.data_ptr() + p * po, _ptr(gx, p * h * w), m, h, w)

    _run(call, planes, item_size=h * w, align=1)
    return gx
