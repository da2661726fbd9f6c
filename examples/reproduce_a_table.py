"""Reproduce a table of the paper: the code of docs/tutorials/reproduce-a-table.md.

Run it from the repository root (it reads the committed runs under docs/ and writes
my-table.toml and runs/my-table):

    python examples/reproduce_a_table.py
"""

from __future__ import annotations

import shlex
import subprocess
import sys

#: The commands that the page shows, as a shell runs them.
RUN = "hnn-bridge recipe my-table.toml --quick --out runs/my-table"


def hnn_bridge(command: str) -> str:
    """Run an ``hnn-bridge ...`` command line with this Python's package; its output."""
    argv = shlex.split(command)
    done = subprocess.run([sys.executable, "-m", "hnn_bridge", *argv[1:]], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{command} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


# --8<-- [start:inspect]
from hnn_bridge.recipe import load_recipe

recipe = load_recipe("table1a")
print(recipe.paper_table, recipe.title)
for row in recipe.rows:
    s = row.settings
    print(
        f"{row.index}. {row.label:32} paper {row.paper:.2f}   "
        f"{s.epochs} epochs, T = {s.steps}, lr {s.lr:g}, dropout {s.dropout}"
    )
quick = recipe.configure(quick=True).rows[0].settings
print("--quick:", quick.dataset, quick.epochs, "epochs, T =", quick.steps)
# --8<-- [end:inspect]


# --8<-- [start:compare]
from hnn_bridge.report import load_results

results = load_results("docs/full-budget/table1a-lr1e-3")
gaps = {}
for row in results["rows"]:
    ours = 100 * row["seeds"][0]["test_acc_argmax"]
    gaps[row["label"]] = ours - row["paper"]
    print(f"{row['label']:32} ours {ours:.2f}   paper {row['paper']:.2f}   {ours - row['paper']:+.2f}")
within = [label for label, gap in gaps.items() if abs(gap) <= 0.5]
print(f"{len(within)} of {len(gaps)} rows within 0.5 points of the paper")
# --8<-- [end:compare]


# --8<-- [start:my-table]
from pathlib import Path

Path("my-table.toml").write_text("""
[recipe]
name = "my-table"
title = "Where to split a small MLP"
dataset = "mnist"

[defaults]
epochs = 20
lr = 1e-3
steps = 25

[defaults.neuron]
membrane_decay = 0.0          # Fang et al.'s MNIST setting

[quick]
dataset = "mnist-5k"
epochs = 1
steps = 4

[[rows]]
arch = "S784-S100-S10"
coder = "duplicate"
training = "simultaneous"

[[rows]]
arch = "A784-A100-S10"
coder = "duplicate"
training = "simultaneous"

[[rows]]
arch = "A784-A100-A10"
coder = "none"
training = "simultaneous"
""")
mine = load_recipe("my-table.toml").configure(quick=True)
print([(row.arch, row.settings.epochs) for row in mine.rows])
# --8<-- [end:my-table]


print(hnn_bridge(RUN))


# --8<-- [start:my-results]
from hnn_bridge.recipe import al_share

for row in load_results("runs/my-table")["rows"]:
    seed = row["seeds"][0]
    print(
        f"{row['arch']:16} ALs {al_share(row['arch']):.0%}   argmax {seed['test_acc_argmax']:.1%}   "
        f"ties {seed['test_tie_rate']:.1%}"
    )
# --8<-- [end:my-results]
