"""Page faults, kernel time, CPU time and peak memory of a CIFAR-10 CNN training step, with
freed memory kept in the heap (`hnn_bridge.kernels.heap`) or with glibc's defaults.

Usage: ``python benchmarks/heap_reuse.py [--steps N]``; it runs itself once per setting in a
fresh process (``HNN_BRIDGE_HEAP=0`` for the defaults), one thread, the pure spiking row
at T = 8, batch 32, and prints one line per setting (per-step means after 2 warm-up steps).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def measure(steps: int) -> dict:
    import torch

    from hnn_bridge.bench import cnn
    from hnn_bridge.builder import build
    from hnn_bridge.kernels.heap import reuse_freed_memory

    applied = reuse_freed_memory()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build(
        cnn.CNN_ARCHS["pure SNN"],
        coder="duplicate",
        steps=8,
        input_shape=(3, 32, 32),
        neuron=cnn._recipe_neuron(),
        norm="batch",
    )
    x, y = torch.rand(32, 3, 32, 32), torch.randint(0, 10, (32,))
    call = cnn._step_call(model, x, y, "32", torch.device("cpu"))
    for _ in range(2):
        call()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
    for _ in range(steps):
        call()
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
    return {
        "heap_kept": applied,
        "page_faults_per_step": (r1.ru_minflt - r0.ru_minflt) / steps,
        "kernel_s_per_step": (r1.ru_stime - r0.ru_stime) / steps,
        "cpu_s_per_step": (t1 - t0) / steps,
        "peak_rss_mib": r1.ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.steps)))
        return
    for heap in ("0", "1"):
        env = dict(os.environ, HNN_BRIDGE_HEAP=heap, OMP_NUM_THREADS="1")
        out = subprocess.run(
            [sys.executable, __file__, "--child", "--steps", str(args.steps)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        print(out.stdout.strip())


if __name__ == "__main__":
    main()
