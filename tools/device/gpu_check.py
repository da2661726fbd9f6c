"""GPU check of the IIR neuron backends: CuPy parity against the reference, and timings.

    python tools/device/gpu_check.py --out results.json [--budget 150] [--repeats 20] [--quick]

Runs in phases, most wanted first, and rewrites the JSON at --out after every phase (so a
run cut short keeps what it finished); a phase or row that would start after --budget
seconds is recorded as skipped instead:

1. ``cupy_parity_mlp``: for an MLP-shaped [T, 64, 800] current, T in {1, 8, 25}, every
   synapse filter and detach_reset on and off, the CuPy kernels
   (`IIRNode(backend="cupy")`) against the torch core on the same GPU and on the CPU:
   spikes and membrane potentials equal bit for bit, input gradients within 1e-5
   relative (max |difference| / max |reference|).
2. ``half_parity``: float16/bfloat16 input gives the float32 kernel's spikes.
3. ``timing``: forward + backward (CUDA events, median over repeats, after warm-up) of
   the cupy and torch paths of `IIRNode` against SpikingJelly's stock `LIFNode`
   (multi-step; SpikingJelly 2.0 picks its own fused CUDA path) and snnTorch's `Leaky`
   (looped over T), and our `IIRLeaky`, on both shapes.
4. ``cupy_parity_cnn``: phase 1 for a CNN-shaped [T, 16, 16, 28, 28] current.
5. ``flexsn``: the experimental FlexSN/Triton path (`hnn_bridge.adapters.triton_flexsn`)
   against the CPU reference (reported, not gated) and its timing; last, since every
   FlexSN node compiles its own Triton kernels.

Prints a table. Exit status: 0 when every CuPy parity row that ran passes, 1 when one
fails (or none ran), 2 without CUDA (with a message saying so).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

SHAPES = {"mlp": (64, 800), "cnn": (16, 16, 28, 28)}
STEPS = (1, 8, 25)
SYNAPSES = ("dual_exp", "first_order", "none")
GRAD_TOL = 1e-5
SKIPPED = dict(skipped="budget")


class Deadline:
    """The time left of --budget; `over` once it is spent (``clock`` for tests)."""

    def __init__(self, budget_s: float, clock=time.monotonic) -> None:
        self.clock = clock
        self.end = clock() + budget_s

    @property
    def over(self) -> bool:
        return self.clock() >= self.end


def write_json(path: Path, result: dict) -> None:
    """Replace ``path`` atomically, so that a run killed while writing keeps the last copy."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    os.replace(tmp, path)


def run_phases(out: Path, result: dict, phases, deadline: Deadline) -> dict:
    """Run each ``(name, fn)`` of ``phases`` in order: ``result[name] = fn(deadline)``, a
    traceback on error, `SKIPPED` once the deadline has passed; the JSON is rewritten
    after every phase. Returns ``result``."""
    started = deadline.clock()
    result.setdefault("phases", {})
    for name, fn in phases:
        t0 = deadline.clock()
        if deadline.over:
            result[name] = dict(SKIPPED)
            result["phases"][name] = "skipped (budget)"
        else:
            try:
                result[name] = fn(deadline)
                result["phases"][name] = f"done in {deadline.clock() - t0:.1f} s"
            except Exception:  # report, go on with the next phase
                result[name] = dict(error=traceback.format_exc())
                result["phases"][name] = f"error after {deadline.clock() - t0:.1f} s"
                print(result[name]["error"], file=sys.stderr, flush=True)
        result["seconds"] = round(deadline.clock() - started, 1)
        write_json(out, result)
        print(f"phase {name}: {result['phases'][name]}", flush=True)
    return result


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def currents(T, shape, seed, device):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, *shape, generator=gen) * 1.5 + 0.4
    g = torch.randn(T, *shape, generator=gen)
    return x.to(device), g.to(device)


def run_node(make, x, g):
    """Spikes, V (when the path keeps it) and the input gradient of one fresh node."""
    node = make()
    xi = x.clone().requires_grad_()
    out = node(xi)
    (out * g).sum().backward()
    v_seq = getattr(node, "v_seq", None)
    return out.detach(), None if v_seq is None else v_seq.detach(), xi.grad


def parity(shape_name: str, deadline: Deadline) -> list[dict]:
    """CuPy against the torch core on the CPU (the reference) and on this GPU."""
    from hnn_bridge.adapters.spikingjelly import IIRNode

    rows = []
    shape = SHAPES[shape_name]
    for T, synapse, detach_reset in ((T, syn, dr) for T in STEPS for syn in SYNAPSES for dr in (False, True)):
        row = dict(shape=shape_name, dims=list(shape), T=T, synapse=synapse, detach_reset=detach_reset)
        if deadline.over:
            rows.append({**row, **SKIPPED})
            continue
        kw = dict(synapse=synapse, detach_reset=detach_reset)
        x, g = currents(T, shape, seed=T, device="cuda")
        ref_s, ref_v, ref_g = run_node(lambda: IIRNode(**kw, backend="torch", store_v_seq=True), x, g)
        cpu_s, cpu_v, cpu_g = run_node(
            lambda: IIRNode(**kw, backend="torch", store_v_seq=True), x.cpu(), g.cpu()
        )
        row.update(spike_rate=ref_s.mean().item(), torch_gpu_equals_cpu=bool(torch.equal(ref_s.cpu(), cpu_s)))
        try:
            s, v, gr = run_node(lambda: IIRNode(**kw, backend="cupy", store_v_seq=True), x, g)
            row.update(
                spikes_equal=bool(torch.equal(s.cpu(), cpu_s)),  # the CPU core is the reference
                volts_equal=bool(torch.equal(v.cpu(), cpu_v)),
                grad_rel_err=rel_err(gr.cpu(), cpu_g),
                spikes_equal_torch_gpu=bool(torch.equal(s, ref_s)),
                grad_rel_err_torch_gpu=rel_err(gr, ref_g),
            )
            row["passed"] = row["spikes_equal"] and row["volts_equal"] and row["grad_rel_err"] <= GRAD_TOL
        except Exception as error:  # report, do not stop the check
            row.update(passed=False, error=f"{type(error).__name__}: {error}")
        rows.append(row)
        print(
            f"parity {shape_name:3s} T={T:2d} {synapse:11s} detach_reset={detach_reset!s:5s} "
            f"cupy {'ok' if row['passed'] else 'FAIL'} (grad {row.get('grad_rel_err', float('nan')):.2e})",
            flush=True,
        )
    return rows


def half_parity(deadline: Deadline) -> list[dict]:
    """CuPy kernel on float16/bfloat16 input (--precision 16/bf16): it widens to float32, so
    its spikes must equal the float32 kernel's on the upcast currents, bit for bit."""
    from hnn_bridge.adapters.spikingjelly import IIRNode

    rows = []
    x, _ = currents(8, SHAPES["cnn"], seed=5, device="cuda")
    for dtype in (torch.float16, torch.bfloat16):
        half = x.to(dtype)
        row = dict(dtype=str(dtype))
        try:
            spikes = IIRNode(backend="cupy")(half)
            want = IIRNode(backend="cupy")(half.float())
            same = spikes.dtype == dtype and bool(torch.equal(spikes.float(), want))
            row.update(out_dtype=str(spikes.dtype), passed=same)
        except Exception as error:  # report, do not stop the check
            row.update(passed=False, error=f"{type(error).__name__}: {error}")
        print(f"half input {dtype}: {'ok' if row['passed'] else 'FAIL'}", flush=True)
        rows.append(row)
    return rows


def flexsn(deadline: Deadline, repeats: int) -> dict:
    """The FlexSN/Triton node against the CPU reference (dual_exp, MLP shape, T = 8 and 25),
    then its timing: reported, not gated."""
    from hnn_bridge.adapters.spikingjelly import IIRNode
    from hnn_bridge.adapters.triton_flexsn import flexsn_iir_node

    from hnn_bridge import IIRParams

    rows = []
    for T in (8, 25):
        row = dict(shape="mlp", T=T, synapse="dual_exp", detach_reset=False)
        if deadline.over:
            rows.append({**row, **SKIPPED})
            continue
        x, g = currents(T, SHAPES["mlp"], seed=T, device="cuda")
        cpu_s, _, cpu_g = run_node(lambda: IIRNode(backend="torch"), x.cpu(), g.cpu())
        try:
            s, _, gr = run_node(lambda: flexsn_iir_node(IIRParams()).cuda(), x, g)
            row.update(
                spikes_equal=bool(torch.equal(s.cpu(), cpu_s)),
                spikes_differing=int((s.cpu() != cpu_s).sum()),
                grad_rel_err=rel_err(gr.cpu(), cpu_g),
            )
            row["passed"] = row["spikes_equal"] and row["grad_rel_err"] <= GRAD_TOL
        except Exception as error:  # report, do not stop the check
            row.update(passed=False, error=f"{type(error).__name__}: {error}")
        print(f"flexsn parity T={T:2d}: {row}", flush=True)
        rows.append(row)
    timings = timing(deadline, repeats, shapes=("mlp",), impls=("IIR FlexSN (triton)",))
    return dict(
        parity=rows, timing=timings, reproduces_reference=bool(rows) and all(r.get("passed") for r in rows)
    )


def time_cuda(fn, repeats: int, warmup: int = 3) -> dict:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return dict(median_ms=statistics.median(times), min_ms=min(times), max_ms=max(times), repeats=repeats)


def implementations():
    """name -> factory() returning a callable x -> spikes [T, ...] from zero state."""
    import snntorch
    from hnn_bridge.adapters.snntorch import IIRLeaky
    from hnn_bridge.adapters.spikingjelly import IIRNode
    from hnn_bridge.adapters.triton_flexsn import flexsn_iir_node
    from spikingjelly.activation_based import functional, neuron

    from hnn_bridge import IIRParams

    def sj_module(module):
        module = module.cuda()

        def run(x):
            functional.reset_net(module)
            return module(x)

        return run

    def snn_loop(lif):
        lif = lif.cuda()

        def run(x):
            state = None
            out = []
            for x_t in x:
                if isinstance(lif, IIRLeaky):
                    spk, state = lif(x_t, state if state is not None else lif.init_iirleaky())
                else:
                    spk, state = lif(x_t, state if state is not None else torch.zeros_like(x_t))
                out.append(spk)
            return torch.stack(out)

        return run

    return {
        "IIRNode cupy": lambda: sj_module(IIRNode(backend="cupy")),
        "IIRNode torch": lambda: sj_module(IIRNode(backend="torch")),
        "IIRLeaky snntorch loop": lambda: snn_loop(IIRLeaky()),
        "SJ LIFNode (stock)": lambda: sj_module(neuron.LIFNode(tau=2.0, step_mode="m")),
        "snntorch Leaky (stock) loop": lambda: snn_loop(snntorch.Leaky(beta=0.9)),
        "IIR FlexSN (triton)": lambda: sj_module(flexsn_iir_node(IIRParams())),
    }


MAIN_IMPLS = (
    "IIRNode cupy",
    "IIRNode torch",
    "IIRLeaky snntorch loop",
    "SJ LIFNode (stock)",
    "snntorch Leaky (stock) loop",
)


def timing(deadline: Deadline, repeats: int, shapes=tuple(SHAPES), impls=MAIN_IMPLS) -> list[dict]:
    rows = []
    factories = implementations()
    for name in shapes:
        shape = SHAPES[name]
        for T in STEPS:
            x, g = currents(T, shape, seed=0, device="cuda")
            x.requires_grad_()
            for impl in impls:
                row = dict(shape=name, dims=list(shape), T=T, impl=impl)
                if deadline.over:
                    rows.append({**row, **SKIPPED})
                    continue
                try:
                    run = factories[impl]()

                    def step():
                        x.grad = None
                        run(x).backward(g)

                    row.update(time_cuda(step, repeats))
                except Exception as error:
                    row["error"] = f"{type(error).__name__}: {error}"
                rows.append(row)
                print(
                    f"timing {name:3s} T={T:2d} {impl:28s} "
                    + (f"{row['median_ms']:9.3f} ms" if "median_ms" in row else row["error"][:90]),
                    flush=True,
                )
    return rows


def table(rows: list[dict]) -> str:
    rows = [r for r in rows if "skipped" not in r]
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    keys = list(dict.fromkeys((r["shape"], r["T"]) for r in rows))
    head = f"{'shape':5s} {'T':>3s} " + " ".join(f"{i[:22]:>22s}" for i in impls)
    lines = [head, "-" * len(head)]
    for shape, T in keys:
        cells = []
        for impl in impls:
            r = next((r for r in rows if (r["shape"], r["T"], r["impl"]) == (shape, T, impl)), {})
            cells.append(f"{r['median_ms']:>19.3f} ms" if "median_ms" in r else f"{'-':>22s}")
        lines.append(f"{shape:5s} {T:>3d} " + " ".join(cells))
    return "\n".join(lines)


def versions() -> dict:
    out = dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda)
    for mod in ("cupy", "spikingjelly", "snntorch", "triton"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "unknown")
        except Exception as error:  # noqa: BLE001 - report whatever is missing
            out[mod] = f"unavailable ({type(error).__name__})"
    return out


def cupy_rows(result: dict) -> list[dict]:
    """The CuPy parity rows that ran (parity and half-precision phases)."""
    rows = []
    for name in ("cupy_parity_mlp", "cupy_parity_cnn", "half_parity"):
        value = result.get(name)
        if isinstance(value, list):
            rows += [r for r in value if "skipped" not in r]
        elif isinstance(value, dict) and "error" in value:
            rows.append(dict(passed=False, error=value["error"]))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="path of the JSON results (rewritten after every phase)")
    parser.add_argument(
        "--budget", type=float, default=150.0, help="seconds: no phase or row starts after this (default 150)"
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats per case (median reported)")
    parser.add_argument("--quick", action="store_true", help="MLP shape only (a fast smoke run)")
    parser.add_argument("--skip-timing", action="store_true", help="parity only")
    parser.add_argument("--no-flexsn", action="store_true", help="leave out the FlexSN/Triton phase")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device (torch.cuda.is_available() is False); this check needs a GPU. "
            "The CPU test suite checks the kernel source through its C build (tests/test_cupy.py).",
            file=sys.stderr,
        )
        return 2
    from hnn_bridge.adapters.cupy_kernels import cupy_unavailable_reason

    deadline = Deadline(args.budget)
    out = Path(args.out)
    result = dict(
        device=torch.cuda.get_device_name(),
        versions=versions(),
        budget_s=args.budget,
        cupy_unavailable=cupy_unavailable_reason(),
        grad_tolerance=GRAD_TOL,
    )
    shapes = ("mlp",) if args.quick else tuple(SHAPES)
    phases = [("cupy_parity_mlp", lambda d: parity("mlp", d)), ("half_parity", half_parity)]
    if not args.skip_timing:
        phases.append(("timing", lambda d: timing(d, args.repeats, shapes=shapes)))
    if not args.quick:
        phases.append(("cupy_parity_cnn", lambda d: parity("cnn", d)))
    if not args.no_flexsn:
        phases.append(("flexsn", lambda d: flexsn(d, args.repeats)))
    run_phases(out, result, phases, deadline)

    if isinstance(result.get("timing"), list):
        print()
        print(table(result["timing"]))
    rows = cupy_rows(result)
    result["passed"] = bool(rows) and all(r["passed"] for r in rows)
    write_json(out, result)
    skipped = [name for name, state in result["phases"].items() if state.startswith("skipped")]
    print(
        f"\ncupy parity: {'PASSED' if result['passed'] else 'FAILED'} "
        f"({sum(bool(r['passed']) for r in rows)}/{len(rows)} rows that ran)"
        + (f"; phases skipped for the budget: {', '.join(skipped)}" if skipped else "")
        + f"; results in {out} ({result['seconds']} s)"
    )
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
