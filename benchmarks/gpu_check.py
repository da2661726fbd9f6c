"""GPU check of the IIR neuron backends: CuPy parity against the reference, and timings.

    python benchmarks/gpu_check.py --out results.json [--repeats 20] [--quick]

1. Parity (float32): for an MLP-shaped [T, 64, 800] and a CNN-shaped [T, 16, 16, 28, 28]
   current, T in {1, 8, 25}, every synapse filter and detach_reset on and off, the CuPy
   kernels (`IIRNode(backend="cupy")`) against the torch core on the same GPU and on the
   CPU: spikes and membrane potentials equal bit for bit, input gradients within 1e-5
   relative (max |difference| / max |reference|). The experimental FlexSN/Triton path
   (`hnn_bridge.adapters.triton_flexsn`) is checked the same way and reported, not gated.
2. Timing: forward + backward (CUDA events, median over repeats, after warm-up) of the
   cupy, torch and FlexSN paths of the IIR neuron, against SpikingJelly's stock
   `LIFNode` (multi-step) and snnTorch's `Leaky` (looped over T), and our `IIRLeaky`.

Prints a table and writes everything as JSON to --out. Exit status: 0 when every CuPy
parity check passes, 1 when one fails, 2 without CUDA (with a message saying so).
"""

from __future__ import annotations

import argparse
import json
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


def check_flexsn(kw, x, g, cpu_s, cpu_g) -> dict:
    from hnn_bridge import IIRParams
    from hnn_bridge.adapters.triton_flexsn import flexsn_iir_node

    try:
        s, _, gr = run_node(lambda: flexsn_iir_node(IIRParams(**kw)).cuda(), x, g)
    except Exception as error:  # report, do not stop the check
        return dict(passed=False, error=f"{type(error).__name__}: {error}")
    row = dict(spikes_equal=bool(torch.equal(s.cpu(), cpu_s)), grad_rel_err=rel_err(gr.cpu(), cpu_g))
    row["passed"] = row["spikes_equal"] and row["grad_rel_err"] <= GRAD_TOL
    return row


def parity(args) -> tuple[list[dict], list[dict]]:
    from hnn_bridge.adapters.spikingjelly import IIRNode

    cupy_rows, flex_rows = [], []
    shapes = {"mlp": SHAPES["mlp"]} if args.quick else SHAPES
    for (name, shape), T, synapse, detach_reset in (
        (s, T, syn, dr) for s in shapes.items() for T in STEPS for syn in SYNAPSES for dr in (False, True)
    ):
        kw = dict(synapse=synapse, detach_reset=detach_reset)
        x, g = currents(T, shape, seed=T, device="cuda")
        # torch core on the GPU (for FlexSN and as a cross-check) and on the CPU (the reference)
        ref_s, ref_v, ref_g = run_node(lambda: IIRNode(**kw, backend="torch", store_v_seq=True), x, g)
        cpu_s, cpu_v, cpu_g = run_node(lambda: IIRNode(**kw, backend="torch", store_v_seq=True), x.cpu(), g.cpu())
        row = dict(shape=name, dims=list(shape), T=T, synapse=synapse, detach_reset=detach_reset,
                   spike_rate=ref_s.mean().item(), torch_gpu_equals_cpu=bool(torch.equal(ref_s.cpu(), cpu_s)))
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
        cupy_rows.append(row)

        frow = dict(shape=name, T=T, synapse=synapse, detach_reset=detach_reset)
        if args.no_flexsn or detach_reset:  # each FlexSN node compiles its own Triton kernels: keep it short
            frow.update(passed=None, skipped=True)
        else:
            frow.update(check_flexsn(kw, x, g, cpu_s, cpu_g))
        flex_rows.append(frow)
        status = "ok" if row["passed"] else "FAIL"
        print(f"parity {name:3s} T={T:2d} {synapse:11s} detach_reset={detach_reset!s:5s} cupy {status}"
              f" (grad {row.get('grad_rel_err', float('nan')):.2e})  flexsn "
              f"{'skipped' if frow.get('skipped') else 'ok' if frow['passed'] else 'error' if 'error' in frow else 'differs'}",
              flush=True)
    return cupy_rows, flex_rows


def half_parity() -> list[dict]:
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
    """name -> factory(T) returning a callable x -> spikes [T, ...] from zero state."""
    import snntorch
    from spikingjelly.activation_based import functional, neuron

    from hnn_bridge import IIRParams
    from hnn_bridge.adapters.snntorch import IIRLeaky
    from hnn_bridge.adapters.spikingjelly import IIRNode
    from hnn_bridge.adapters.triton_flexsn import flexsn_iir_node

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
        "IIR FlexSN (triton)": lambda: sj_module(flexsn_iir_node(IIRParams())),
        "IIRLeaky snntorch loop": lambda: snn_loop(IIRLeaky()),
        "SJ LIFNode (stock)": lambda: sj_module(neuron.LIFNode(tau=2.0, step_mode="m")),
        "snntorch Leaky (stock) loop": lambda: snn_loop(snntorch.Leaky(beta=0.9)),
    }


def timing(args) -> list[dict]:
    rows = []
    shapes = {"mlp": SHAPES["mlp"]} if args.quick else SHAPES
    for name, shape in shapes.items():
        for T in STEPS:
            x, g = currents(T, shape, seed=0, device="cuda")
            x.requires_grad_()
            for impl, factory in implementations().items():
                row = dict(shape=name, dims=list(shape), T=T, impl=impl)
                try:
                    run = factory()

                    def step():
                        x.grad = None
                        run(x).backward(g)

                    row.update(time_cuda(step, args.repeats))
                except Exception as error:
                    row["error"] = f"{type(error).__name__}: {error}"
                rows.append(row)
                print(f"timing {name:3s} T={T:2d} {impl:28s} "
                      + (f"{row['median_ms']:9.3f} ms" if "median_ms" in row else row["error"][:90]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    keys = list(dict.fromkeys((r["shape"], r["T"]) for r in rows))
    head = f"{'shape':5s} {'T':>3s} " + " ".join(f"{i[:22]:>22s}" for i in impls)
    lines = [head, "-" * len(head)]
    for shape, T in keys:
        cells = []
        for impl in impls:
            r = next(r for r in rows if (r["shape"], r["T"], r["impl"]) == (shape, T, impl))
            cells.append(f"{r['median_ms']:>19.3f} ms" if "median_ms" in r else f"{'error':>22s}")
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="path of the JSON results")
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats per case (median reported)")
    parser.add_argument("--quick", action="store_true", help="MLP shape only (a fast smoke run)")
    parser.add_argument("--skip-timing", action="store_true", help="parity only")
    parser.add_argument("--no-flexsn", action="store_true", help="leave out the FlexSN/Triton parity checks")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); this check needs a GPU. "
              "The CPU test suite checks the kernel source through its C build (tests/test_cupy.py).",
              file=sys.stderr)
        return 2
    from hnn_bridge.adapters.cupy_kernels import cupy_unavailable_reason

    started = time.time()
    result = dict(device=torch.cuda.get_device_name(), versions=versions(),
                  cupy_unavailable=cupy_unavailable_reason(), grad_tolerance=GRAD_TOL)
    try:
        result["cupy_parity"], result["flexsn_parity"] = parity(args)
    except Exception:
        result["cupy_parity"], result["flexsn_parity"] = [], []
        result["parity_error"] = traceback.format_exc()
        print(result["parity_error"], file=sys.stderr)
    result["half_parity"] = half_parity()
    if not args.skip_timing:
        result["timing"] = timing(args)
        print()
        print(table(result["timing"]))
    passed = bool(result["cupy_parity"]) and all(r["passed"] for r in result["cupy_parity"] + result["half_parity"])
    result["passed"] = passed
    checked = [r for r in result["flexsn_parity"] if not r.get("skipped")]
    result["flexsn_reproduces_reference"] = bool(checked) and all(r["passed"] for r in checked)
    result["seconds"] = round(time.time() - started, 1)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print(f"\ncupy parity: {'PASSED' if passed else 'FAILED'} "
          f"({sum(r['passed'] for r in result['cupy_parity'])}/{len(result['cupy_parity'])}); "
          f"flexsn reproduces the reference: {result['flexsn_reproduces_reference']}; "
          f"results in {args.out} ({result['seconds']} s)")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
