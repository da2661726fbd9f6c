"""Probe one CIFAR-10 recipe row outside the runner: hb.build, Adam, cross entropy on the
spike counts; after every epoch the held-out strict / argmax accuracy, tie and silent
rates and the mean output rate. The measurements behind the CIFAR recipes' settings
(docs/notes/2026-12-02-cifar-normalisation.md).

    python benchmarks/cifar_probe.py --data-dir ../shared/datasets --row 1 --steps 4 --dropout 0
    python benchmarks/cifar_probe.py --data-dir ../shared/datasets --dropout 0.3 --bn-eval batch

``--bn-eval batch`` evaluates with batch statistics instead of the running ones, which
separates "the network has not learned" from "its BN running statistics do not fit the
evaluation" (dropout's train/eval variance shift).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

import hnn_bridge as hb
from hnn_bridge.data import describe_dataset, load_dataset, split_622
from hnn_bridge.params import SYNAPSES
from hnn_bridge.recipe import load_recipe
from hnn_bridge.training.checkpoint import torch_load
from hnn_bridge.training.loop import score_batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--table", default="table1b")
    p.add_argument("--row", type=int, default=1, help="1-based row of the recipe")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--subset", type=int, default=2000, help="stratified subset, split 6:2:2")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--milestones", type=int, nargs="*", default=[], help="lr x0.1 after these epochs")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--sigma", type=float, default=0.4, help="surrogate width (eq. 6)")
    p.add_argument("--v-threshold", type=float, default=1.0)
    p.add_argument(
        "--tau-m",
        type=float,
        default=None,
        help="membrane time constant (eq. 1; the recipe's 4); the reset decay follows, e^(-1/tau_m)",
    )
    p.add_argument(
        "--gaussian-sigma0",
        type=float,
        default=0.0,
        help="Gaussian coder: initial sigma (build's gaussian_sigma0; 0: default init, sigma ~ 1)",
    )
    p.add_argument("--norm", default="batch", choices=["none", "batch"])
    p.add_argument("--bn-eval", default="running", choices=["running", "batch"])
    p.add_argument(
        "--tau-s", type=float, default=None, help="synaptic time constant (eq. 1d; the recipe's 1)"
    )
    p.add_argument(
        "--synapse",
        choices=SYNAPSES,
        default=None,
        help="the SLs' input filter (eq. 1d; the recipe's dual_exp)",
    )
    p.add_argument("--no-output-norm", action="store_true", help="no batch norm before the output neurons")
    p.add_argument(
        "--logit-scale",
        type=float,
        default=1.0,
        help="cross entropy on scale x counts (eq. 2b has 1); < 1 asks for wider count margins",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--seed", type=int, default=0, help="weights, dropout and coder noise (the data and its order stay)"
    )
    p.add_argument(
        "--init-from",
        default=None,
        metavar="WEIGHTS",
        help="start from a runner's weights file (checkpoints/<row>.pt, its best epoch) instead of a "
        "fresh initialisation, e.g. to measure what more epochs at a lower lr do; Adam starts afresh",
    )
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    row = load_recipe(a.table).rows[a.row - 1]
    dataset = load_recipe(a.table).dataset
    ds = load_dataset(dataset, a.data_dir)
    pick = split_622(ds.labels, seed=0, ratios=(a.subset, len(ds) - a.subset, 0)).train
    images, labels = ds.images[pick], ds.labels[pick]
    split = split_622(labels, seed=0)
    neuron = replace(row.settings.neuron, sigma=a.sigma, v_threshold=a.v_threshold)
    if a.tau_m is not None:
        neuron = replace(neuron, tau_m=a.tau_m, reset_decay=math.exp(-1 / a.tau_m))
    if a.synapse is not None or a.tau_s is not None:
        neuron = replace(neuron, synapse=a.synapse or neuron.synapse, tau_s=a.tau_s or neuron.tau_s)
    net = hb.build(
        row.arch,
        coder=row.coder,
        steps=a.steps,
        input_shape=describe_dataset(dataset)[0],
        neuron=neuron,
        dropout=a.dropout,
        norm=a.norm,
        training="simultaneous",
        gaussian_sigma0=a.gaussian_sigma0,
    )
    if a.no_output_norm:  # the last batch norm of the spiking part feeds the output neurons
        last = max(
            i
            for i, m in enumerate(net.sl)
            if isinstance(getattr(m, "module", None), nn.modules.batchnorm._BatchNorm)
        )
        net.sl[last] = nn.Identity()
    opt = torch.optim.Adam(net.parameters(), a.lr)
    schedule = torch.optim.lr_scheduler.MultiStepLR(opt, a.milestones, 0.1)

    @torch.no_grad()
    def held_out() -> dict[str, float]:
        net.eval()
        if a.bn_eval == "batch":
            for m in net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()
        sums, rate = [0, 0, 0, 0], 0.0
        for i in range(0, len(split.val), 200):
            j = split.val[i : i + 200]
            out = net(images[j].float() / 255)
            sums = [s + v for s, v in zip(sums, score_batch(out, labels[j]))]
            rate += float(out.sum()) / (a.steps * out.shape[1])
        net.train()
        n = len(split.val)
        return {
            "strict": sums[0] / n,
            "argmax": sums[1] / n,
            "ties": sums[2] / n,
            "silent": sums[3] / n,
            "out_rate": rate / n,
        }

    if a.init_from is not None:
        saved = torch_load(a.init_from)
        if saved["arch"] != row.arch:
            raise SystemExit(f"{a.init_from} holds {saved['arch']}, not row {a.row}'s {row.arch}")
        net.load_state_dict(saved["model"])
        print(json.dumps({"epoch": 0, **held_out(), "init_from": a.init_from}), flush=True)
    start = time.perf_counter()
    for epoch in range(a.epochs):
        order = split.train[torch.randperm(len(split.train), generator=torch.Generator().manual_seed(epoch))]
        losses = []
        for i in range(0, len(order) - a.batch_size + 1, a.batch_size):
            j = order[i : i + a.batch_size]
            loss = F.cross_entropy(a.logit_scale * net(images[j].float() / 255), labels[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        schedule.step()
        record = {
            "epoch": epoch + 1,
            "train_loss": sum(losses) / len(losses),
            **held_out(),
            "seconds": time.perf_counter() - start,
        }
        print(
            json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}), flush=True
        )


if __name__ == "__main__":
    main()
