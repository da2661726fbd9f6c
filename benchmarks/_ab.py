"""The command line shared by the A/B benchmarks of the CNN step (bn_fusion.py,
synapse_filter.py, spike_conv_step.py): each defines ``measure(rows, *, steps, batch,
repeats, warmup)`` (its two paths interleaved in one process) and ``render(results)``."""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable


def run_ab(
    doc: str, measure: Callable[..., Any], render: Callable[[Any], str], *, json_out: bool = True
) -> None:
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--rows", default="pure SNN,1 AL", help="labels of CNN_ARCHS, comma-separated")
    parser.add_argument("--steps", type=int, default=8, help="time steps T of the CNN rows")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads first")
    if json_out:
        parser.add_argument("--json", default=None, help="write the samples to this file")
    args = parser.parse_args()

    import torch

    from hnn_bridge.bench.timing import machine_info
    from hnn_bridge.kernels.heap import reuse_freed_memory

    reuse_freed_memory()  # as every hnn-bridge command does
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    results = measure(rows, steps=args.steps, batch=args.batch, repeats=args.repeats, warmup=args.warmup)
    info = machine_info("cpu")
    print(
        f"T = {args.steps}, batch {args.batch}, {torch.get_num_threads()} thread(s), "
        f"{args.repeats} interleaved repeats after {args.warmup} warm-up rounds; {info.get('cpu', '')}\n"
    )
    print(render(results))
    if json_out and args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": info, "threads": torch.get_num_threads(), "rows": results}, f, indent=1)
