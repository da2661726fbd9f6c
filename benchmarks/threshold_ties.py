"""How often does a trained network's membrane land exactly on the threshold?

Our spike rule is the paper's eq. 1f, V >= V_th (U(0) = 1); Fang et al.'s code fires at
V > V_th (max(0, sign(V - 1))). The two differ only at V == V_th exactly. This script
takes a finished run folder, rebuilds each job's best-validation network from its
weights file, runs the test images and counts, per spiking layer, the neuron-steps with
V == V_th and the test images on which any occurs:

    python benchmarks/threshold_ties.py --data-dir ../shared/datasets runs/table1a

V is recomputed from each neuron's input with the functional core (`iir_multistep`),
the same arithmetic the network ran. It then runs the network again with every
threshold one float step above V_th (V >= nextafter(V_th) is V > V_th; the reset
subtracts that threshold too, one ulp more) and counts the test images whose output
counts or argmax prediction change: an upper bound on what Fang et al.'s rule would do.
"""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import replace
from pathlib import Path

import torch

import hnn_bridge as hb
from hnn_bridge.data import load_dataset, split_622
from hnn_bridge.functional import iir_multistep
from hnn_bridge.training.trained import load_trained


def count(model: hb.HybridNet, images: torch.Tensor, batch: int = 500) -> dict[int, tuple[int, int, int]]:
    """SL index -> (neuron-steps with V == V_th, all neuron-steps, images with any)."""
    ties: dict[int, list[int]] = {k: [0, 0, 0] for k in model.neurons}
    captured: dict[int, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda _m, args, k=k: captured.__setitem__(k, args[0].detach()))
        for k, m in model.neurons.items()
    ]
    try:
        with torch.no_grad():
            for i in range(0, len(images), batch):
                model(images[i : i + batch])
                for k, x in captured.items():
                    params = model.neurons[k].params
                    _, volts, _ = iir_multistep(x, params)
                    hit = volts == params.v_threshold
                    ties[k][0] += int(hit.sum())
                    ties[k][1] += hit.numel()
                    ties[k][2] += int(hit.flatten(2).any(2).any(0).sum())
    finally:
        for h in hooks:
            h.remove()
    return {k: tuple(v) for k, v in ties.items()}


def strict_rule_changes(model: hb.HybridNet, images: torch.Tensor, batch: int = 500) -> tuple[int, int]:
    """(images whose output counts change, images whose argmax changes) when every
    neuron fires at V > V_th instead (emulated by a threshold one ulp higher)."""
    strict = copy.deepcopy(model)
    for m in strict.neurons.values():
        up = float(torch.nextafter(torch.tensor(m.params.v_threshold), torch.tensor(float("inf"))))
        m.params = replace(m.params, v_threshold=up)
    counts_changed = argmax_changed = 0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            a, b = model(images[i : i + batch]), strict(images[i : i + batch])
            counts_changed += int((a != b).any(1).sum())
            argmax_changed += int((a.argmax(1) != b.argmax(1)).sum())
    return counts_changed, argmax_changed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, nargs="+", help="run folders (with results.json and checkpoints/)")
    p.add_argument("--data-dir", required=True)
    a = p.parse_args()
    torch.set_num_threads(1)
    data = {}
    for run in a.run:
        results = json.loads((run / "results.json").read_text())
        for row in results["rows"]:
            for seed in row.get("seeds", []):
                if not seed.get("checkpoint") or not row.get("coder"):
                    continue
                model = load_trained(run, row["row"], seed.get("seed_index", 0))
                s = row["settings"]
                key = (s["dataset"], s["split_seed"])
                if key not in data:
                    ds = load_dataset(s["dataset"], a.data_dir)
                    test = split_622(ds.labels, seed=s["split_seed"]).test
                    data[key] = ds.images[test].float() / 255
                for k, (hits, total, images) in count(model, data[key]).items():
                    print(
                        f"{run.name} row {row['row']} {row['arch']} seed {seed.get('seed_index', 0)} "
                        f"layer {model.layers[k].token}: V == V_th in {hits} of {total:,} neuron-steps, "
                        f"on {images} of {len(data[key])} test images"
                    )
                changed, flipped = strict_rule_changes(model, data[key])
                print(
                    f"{run.name} row {row['row']} {row['arch']} seed {seed.get('seed_index', 0)}: firing at "
                    f"V > V_th changes the output counts of {changed} and the argmax of {flipped} test images"
                )


if __name__ == "__main__":
    main()
