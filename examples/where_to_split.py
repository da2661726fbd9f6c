"""Where to split a network between artificial and spiking layers: accuracy against
energy, the code of docs/tutorials/where-to-split.md.

Run it from the repository root (it reads the committed runs under docs/ and
benchmarks/energy_tradeoff.py, and writes my-splits.toml, plots/ and runs/my-splits):

    python examples/where_to_split.py
"""

from __future__ import annotations

import shlex
import subprocess
import sys

#: The commands that the page shows, as a shell runs them.
DESCRIBE = (
    "hnn-bridge describe A32C3-S32C3-S64C3-P2-S64C3-P2-S512-S10 --input-shape 3x32x32 --steps 16 "
    "--rate 0.1 --energy-model lemaire"
)
COMMITTED = "python benchmarks/energy_tradeoff.py docs/cpu/table1b-t16 --plots plots"
RUN = "hnn-bridge recipe my-splits.toml --quick --out runs/my-splits"
REPORT = "hnn-bridge report runs/my-splits --energy-model lemaire"


def run(command: str) -> str:
    """Run an ``hnn-bridge ...`` or ``python ...`` command line with this Python; its output."""
    argv = shlex.split(command)
    argv = [sys.executable, *(["-m", "hnn_bridge"] if argv[0] == "hnn-bridge" else []), *argv[1:]]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{command} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


describe = run(DESCRIBE)
print(describe)

# --8<-- [start:estimate]
import hnn_bridge as hb
from hnn_bridge.energy import ENERGY_MODELS, energy_pj
from hnn_bridge.ops import assumed_counts
from hnn_bridge.recipe import al_share

LAYERS = ["C32C3", "C32C3", "C64C3", "P2", "C64C3", "P2", "C512", "C10"]


def split(n_als: int) -> str:
    """The CIFAR-10 CNN of the paper with its first ``n_als`` weight layers artificial."""
    tokens, weights = [], 0
    for token in LAYERS:
        if token == "P2":
            tokens.append(token)
            continue
        tokens.append(("A" if weights < n_als else "S") + token[1:])
        weights += 1
    return "-".join(tokens)


estimate = {}
for n_als in (0, 1, 3, 4, 6):
    arch = split(n_als)
    model = hb.build(arch, coder="duplicate" if n_als < 6 else None, steps=16, input_shape=(3, 32, 32))
    counts = assumed_counts(model, rate=0.1)  # every spiking layer's inputs fire 10% of steps
    estimate[arch] = {name: energy_pj(name, counts) / 1e6 for name in ENERGY_MODELS}  # uJ per image
    print(
        f"{arch:40} ALs {al_share(arch):4.0%}  "
        + "  ".join(f"{name} {uj:8.1f} uJ" for name, uj in estimate[arch].items())
    )
# --8<-- [end:estimate]

committed = run(COMMITTED)
print(committed)

# --8<-- [start:recipe]
from pathlib import Path

Path("my-splits.toml").write_text("""
[recipe]
name = "my-splits"
title = "Every split of A784-A500-A10"
dataset = "mnist"

[defaults]
epochs = 100
lr = 1e-3
lr_milestones = [50]
steps = 25

[defaults.neuron]
membrane_decay = 0.0          # Fang et al.'s MNIST setting

[quick]
dataset = "mnist-5k"
epochs = 2
steps = 8
lr_milestones = []

[[rows]]
arch = "S784-S500-S10"
coder = "duplicate"
training = "simultaneous"

[[rows]]
arch = "A784-S500-S10"
coder = "duplicate"
training = "simultaneous"

[[rows]]
arch = "A784-A500-S10"
coder = "duplicate"
training = "simultaneous"

[[rows]]
arch = "A784-A500-A10"
coder = "none"
training = "simultaneous"
""")
# --8<-- [end:recipe]

print(run(RUN))
print(run(REPORT))

# --8<-- [start:front]
from hnn_bridge.report import load_results, pareto_front

rows = load_results("runs/my-splits")["rows"]
fronts = {}
for name in ENERGY_MODELS:
    points = {}
    for row in rows:
        seed = row["seeds"][0]  # measured on the test set: exact counts, every model
        points[row["arch"]] = (seed["energy"][name], 100 * seed["test_acc_argmax"])
    front = pareto_front(list(points.values()))
    best = [arch for arch, point in points.items() if point in front]
    fronts[name] = best
    print(
        f"{name:8} Pareto front: "
        + ", ".join(f"{arch} ({points[arch][0]:.3g} uJ, {points[arch][1]:.1f}%)" for arch in best)
    )
# --8<-- [end:front]
