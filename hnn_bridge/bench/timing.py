"""Timing and memory accounting for `hnn-bridge bench`.

- `interleave`: time several contenders in one run, alternating them (ABCABC..., the
  starting contender rotating each round) after a warm-up, so that load from other
  processes hits all of them alike; CUDA events on a GPU, ``perf_counter`` on the CPU.
- `Stats`: median, quartiles and spread of the samples.
- `saved_tensor_bytes`: the bytes autograd keeps for backward, counted with
  ``torch.autograd.graph.saved_tensors_hooks`` (each storage once, parameters excluded).
- `peak_memory`: the peak of allocated memory above the start of a call:
  ``torch.cuda.max_memory_allocated`` on a GPU; on the CPU the peak of glibc's in-use heap
  (``mallinfo2``: ``uordblks + hblkhd``), sampled after every ATen op through a
  ``TorchDispatchMode`` and, for what happens inside an op (a custom op's own Python
  implementation runs outside the mode), by a thread polling it meanwhile (None where
  glibc is not available).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Mapping, Optional

import torch
from torch import nn

__all__ = [
    "Stats",
    "interleave",
    "machine_info",
    "peak_memory",
    "saved_tensor_bytes",
    "summarize",
]


@dataclass(frozen=True)
class Stats:
    """Summary of repeated timings, in seconds."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def as_dict(self) -> dict[str, float]:
        d = asdict(self)
        d["iqr"] = self.iqr
        return d


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of already sorted values."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples: Iterable[float]) -> Stats:
    values = sorted(float(s) for s in samples)
    if not values:
        raise ValueError("no samples to summarize")
    return Stats(
        median=statistics.median(values),
        q1=_quantile(values, 0.25),
        q3=_quantile(values, 0.75),
        min=values[0],
        max=values[-1],
        n=len(values),
    )


class _Clock:
    """Wall time of one call: CUDA events on a GPU (synchronised), perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def time(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1000.0
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def interleave(
    contenders: Mapping[str, Callable[[], object]],
    *,
    repeats: int,
    warmup: int = 2,
    device: torch.device | str = "cpu",
) -> dict[str, list[float]]:
    """Seconds per call of every contender, ``repeats`` samples each.

    Each round calls every contender once; the first contender of round r is the
    (r mod n)-th, so no contender always runs right after the same other one. ``warmup``
    rounds before are not recorded.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    clock = _Clock(torch.device(device))
    names = list(contenders)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            seconds = clock.time(contenders[name])
            if r >= warmup:
                samples[name].append(seconds)
    return samples


# ----------------------------------------------------------------------------- memory


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


def saved_tensor_bytes(fn: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the distinct storages that autograd saves for backward while ``fn()`` runs
    (its forward). Tensors sharing a storage count once, with the storage's full size;
    storages of ``exclude`` (e.g. the parameters, which exist anyway) are not counted.
    The result of ``fn`` is dropped before returning."""
    skip = {_storage_key(t) for t in exclude}
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in skip and key[0] != 0:
            seen[key] = key[1]
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _load_mallinfo2():
    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    fn.argtypes = []
    return fn


_MALLINFO2 = _load_mallinfo2()


def heap_in_use() -> Optional[int]:
    """Bytes glibc's malloc has handed out and not taken back (None without glibc)."""
    if _MALLINFO2 is None:
        return None
    info = _MALLINFO2()
    return int(info.uordblks + info.hblkhd)


def _heap_peak_mode():
    from torch.utils._python_dispatch import TorchDispatchMode

    class HeapPeak(TorchDispatchMode):
        """Samples the heap after every ATen op (forward and backward alike)."""

        def __init__(self) -> None:
            super().__init__()
            self.start = heap_in_use() or 0
            self.peak = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            used = heap_in_use() - self.start
            if used > self.peak:
                self.peak = used
            return out

    return HeapPeak()


_MODE_READY = False


def _ready_mode() -> None:
    """Send one op through a mode before the first measurement: a process's first dispatch
    through a Python ``TorchDispatchMode`` sets up some 28 MB of heap once (torch 2.14),
    which would otherwise count in the first call measured."""
    global _MODE_READY
    if not _MODE_READY:
        with _heap_peak_mode():
            torch.ones(1).add(1)
        _MODE_READY = True


def peak_memory(fn: Callable[[], object], device: torch.device | str = "cpu") -> Optional[int]:
    """Peak bytes allocated above the level at the start of ``fn()`` (its result dropped).

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the peak of glibc's in-use heap after
    each ATen op and as polled by a thread meanwhile (the mode's one-off setup done before,
    `_ready_mode`); None where glibc's ``mallinfo2`` is not available. Run it apart from
    the timings (the sampling slows the call down).
    """
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        torch.cuda.synchronize(device)
        del out
        return int(torch.cuda.max_memory_allocated(device) - base)
    if _MALLINFO2 is None:
        return None
    import threading

    _ready_mode()
    mode = _heap_peak_mode()
    stop = threading.Event()
    polled = [0]

    def poll() -> None:
        while not stop.is_set():
            used = heap_in_use() - mode.start
            if used > polled[0]:
                polled[0] = used
            time.sleep(0)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        with mode:
            out = fn()
            del out
    finally:
        stop.set()
        poller.join()
    return int(max(mode.peak, polled[0]))


# ----------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return platform.processor() or platform.machine()
    model = next(
        (line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), ""
    )
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
    return ", ".join(p for p in (model or platform.machine(), simd) if p)


def machine_info(device: torch.device | str = "cpu") -> dict[str, object]:
    """What the numbers were measured on."""
    device = torch.device(device)
    info: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    for name in ("spikingjelly", "snntorch"):
        try:
            from importlib.metadata import version

            info[name] = version(name)
        except Exception:  # noqa: BLE001 - informative only
            info[name] = None
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    return info


def parameters_of(*modules: nn.Module) -> list[torch.Tensor]:
    return [p for m in modules for p in m.parameters()]
