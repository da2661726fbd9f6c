"""Test accuracy of a trained MNIST HNN after a NIR round trip (issue 35).

For each training state given (``*.state.pt`` of `hnn-bridge recipe/train`, its best
epoch's weights), on the test split of the run (6:2:2, the run's split seed):

- ``original``: the `HybridNet` itself (eval mode);
- ``exact``: ``export_nir(model)`` -> ``nir.write`` -> ``import_nir(path)``;
- ``lif/snntorch`` and ``lif/spikingjelly``: ``export_nir(model, mode="lif")`` written
  and read by snnTorch's and SpikingJelly's own NIR importers, run one step at a time.

Prints one JSON object per state: accuracy (strict: ties wrong; argmax: lowest index),
tie rate, and the share of output spike slots [T, N, 10] that differ from the original.
Usage: ``python benchmarks/nir_mnist.py --data-dir ../shared/datasets STATE.pt ...``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import nir
import torch

from hnn_bridge import build, export_nir, import_nir
from hnn_bridge.data import load_dataset, split_622
from hnn_bridge.nir_export import nir_input
from hnn_bridge.training.checkpoint import load_state

BUILD_KEYS = ("steps", "input_mode", "neuron", "dropout", "activation", "norm", "bias_placement", "backend")


def metrics(spikes: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor | None) -> dict[str, float]:
    counts = spikes.sum(0)
    top = counts.max(dim=1, keepdim=True).values
    tied = (counts == top).sum(1) > 1
    hit = counts.argmax(1) == labels
    out = {
        "acc": float((hit & ~tied).float().mean()),
        "acc_argmax": float(hit.float().mean()),
        "tie_rate": float(tied.float().mean()),
    }
    if reference is not None:
        out["slot_mismatch"] = float((spikes != reference).float().mean())
        out["count_mismatch_images"] = int((counts != reference.sum(0)).any(1).sum())
    return out


def stepwise(net, train: torch.Tensor) -> torch.Tensor:
    """One step at a time from zero state: SpikingJelly's module takes its state
    explicitly; snnTorch's neurons (init_hidden=True) keep theirs, reset here."""
    import snntorch.utils

    snntorch.utils.reset(net)
    state, outs = None, []
    for step in train:
        out, state = net(step, state)
        outs.append(out)
    return torch.stack(outs)


def output_spikes(model, x: torch.Tensor) -> torch.Tensor:
    last = max(model.neurons)
    got: list[torch.Tensor] = []
    hook = model.neurons[last].register_forward_hook(lambda m, i, o: got.append(o))
    model(x)
    hook.remove()
    return got[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("states", nargs="+", type=Path)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--limit", type=int, default=0, help="first N test images only (0: all)")
    ap.add_argument("--batch", type=int, default=500)
    args = ap.parse_args()
    from snntorch.import_nir import import_from_nir as snntorch_import
    from spikingjelly.activation_based.nir_exchange.from_nir import (
        import_from_nir as spikingjelly_import,
    )

    for state_path in args.states:
        state = load_state(state_path)
        fp = state["fingerprint"]
        s = fp["settings"]
        model = build(
            fp["arch"], coder=fp["coder"], training=fp["training"], **{k: s[k] for k in BUILD_KEYS if k in s}
        )
        model.load_state_dict(state["best_model"])
        model.eval()
        ds = load_dataset(s["dataset"], args.data_dir, download=False)
        test = split_622(ds.labels, seed=s["split_seed"]).test
        if args.limit:
            test = test[: args.limit]
        with tempfile.TemporaryDirectory() as tmp:
            exact_path, lif_path = Path(tmp) / "exact.nir", Path(tmp) / "lif.nir"
            nir.write(str(exact_path), export_nir(model))
            nir.write(str(lif_path), export_nir(model, mode="lif"))
            exact = import_nir(exact_path)
            lif_nets = {
                "lif/snntorch": snntorch_import(nir.read(str(lif_path))),
                "lif/spikingjelly": spikingjelly_import(str(lif_path)),
            }
        runs: dict[str, list[torch.Tensor]] = {k: [] for k in ("original", "exact", *lif_nets)}
        with torch.no_grad():
            for start in range(0, len(test), args.batch):
                idx = torch.as_tensor(test[start : start + args.batch])
                x = ds.images[idx].float() / 255
                train = nir_input(model, x)
                runs["original"].append(output_spikes(model, x))
                runs["exact"].append(exact(train))
                for name, net in lif_nets.items():
                    runs[name].append(stepwise(net, train))
        labels = ds.labels[torch.as_tensor(test)]
        ref = torch.cat(runs["original"], 1)
        report = {
            "state": str(state_path),
            "arch": fp["arch"],
            "best_epoch": state["best_epoch"],
            "n": len(test),
        }
        for name, parts in runs.items():
            spikes = torch.cat(parts, 1)
            report[name] = metrics(spikes, labels, None if name == "original" else ref)
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
