"""Past one process (issue 5): DDP under torchrun (2 gloo processes on the CPU) matches one
process with the same global batch; ``--jobs N`` matches ``--jobs 1`` bit for bit; errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from hnn_bridge.cli import main
from hnn_bridge.recipe import RecipeError, load_recipe
from hnn_bridge.training.distributed import SINGLE, all_reduce_sum, barrier, from_env
from hnn_bridge.training.runner import RunOptions, check_parallel, run_recipe

DDP_RECIPE = """
[recipe]
name = "ddp"
dataset = "mnist"

[defaults]
dataset = "mnist-5k"
subset = 1000
epochs = 1
steps = 4
lr = 1e-3
batch_size = 50
dropout = 0.0

[[rows]]
arch = "A784-S64-S10"
coder = "duplicate"
training = "simultaneous"
"""

JOBS_RECIPE = """
[recipe]
name = "jobs"
dataset = "mnist"

[defaults]
dataset = "mnist-5k"
subset = 500
epochs = 1
steps = 4
lr = 1e-3
batch_size = 50
dropout = 0.2

[[rows]]
arch = "A784-A32-S10"
coder = "duplicate"
training = "separate"

[[rows]]
arch = "A784-A32-A10"
coder = "none"
training = "simultaneous"

[[rows]]
arch = "A784-A32-S10"
label = "gaussian"
coder = "gaussian"
training = "simultaneous"
"""

_TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                 "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _weights(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: torch.load(p, weights_only=True)["model"] for p in sorted((folder / "checkpoints").glob("*.pt"))}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in _TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_ddp_two_gloo_processes_match_one_process(tmp_path: Path, clean_env) -> None:
    recipe = _write(tmp_path, "ddp.toml", DDP_RECIPE)
    env = {k: v for k, v in os.environ.items() if k not in _TORCHRUN_ENV}
    ddp_out, one_out = tmp_path / "ddp", tmp_path / "one"
    # the documented launch: torchrun --nproc_per_node 2 -m hnn_bridge recipe ...
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), "-m", "hnn_bridge", "recipe", str(recipe), "--out", str(ddp_out)],
        capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one = CliRunner().invoke(main, ["recipe", str(recipe), "--out", str(one_out)])
    assert one.exit_code == 0, one.output

    # rank 0 alone printed and wrote: one table, one line per epoch, the same files as one process
    assert proc.stdout.count("| 1 | A784-S64-S10 |") == 1
    assert proc.stderr.count("epoch 1/1") == 1 and proc.stderr.count("wrote ") == 1
    assert "2 processes (DDP)" in proc.stderr
    assert _listing(ddp_out) == _listing(one_out)
    assert not [p for p in _listing(ddp_out) if p.endswith(".tmp") or ".state.pt" in p]
    results = json.loads((ddp_out / "results.json").read_text())
    assert results["processes"] == 2 and results["rows"][0]["status"] == "ok"

    # same global batch (2 x 25 rows = 50): the same weights up to reduction order (DDP averages two
    # 25-row gradients where one process sums 50 rows at once), not bit for bit
    ddp, single = _weights(ddp_out), _weights(one_out)
    assert ddp.keys() == single.keys() and ddp
    for name in ddp:
        for key in single[name]:
            torch.testing.assert_close(ddp[name][key], single[name][key], rtol=1e-5, atol=1e-5)


def test_jobs_match_sequential_bit_for_bit(tmp_path: Path, clean_env) -> None:
    recipe = _write(tmp_path, "jobs.toml", JOBS_RECIPE)
    threads = torch.get_num_threads()
    # CPU float reductions depend on the intra-op thread count: run the sequential reference
    # with the threads each of the 2 workers gets (cpu_count // 2)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    try:
        seq = CliRunner().invoke(main, ["recipe", str(recipe), "--seeds", "2", "--out", str(tmp_path / "j1")])
    finally:
        torch.set_num_threads(threads)
    assert seq.exit_code == 0, seq.output
    par = CliRunner().invoke(main, ["recipe", str(recipe), "--seeds", "2", "--jobs", "2",
                                    "--out", str(tmp_path / "j2")])
    assert par.exit_code == 0, par.output
    assert "2 worker processes" in par.output

    def accs(folder: str) -> list:
        res = json.loads((tmp_path / folder / "results.json").read_text())
        return [[(s["seed_index"], s["test_acc"], s["best_val_acc"], s["job"], s["pretrain"] and s["pretrain"]["job"])
                 for s in row["seeds"]] for row in res["rows"]]

    assert accs("j2") == accs("j1")
    assert _listing(tmp_path / "j2") == _listing(tmp_path / "j1")
    a, b = _weights(tmp_path / "j1"), _weights(tmp_path / "j2")
    assert a.keys() == b.keys() and len(a) == 6  # 2 pure ANNs (shared by rows 1 and 2) + rows 1 and 3
    for name in a:
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)

    def epochs(folder: str) -> list[list[str]]:  # all but the seconds column, in the same order
        lines = (tmp_path / folder / "epochs.csv").read_text().splitlines()
        header = lines[0].split(",")
        return [[v for h, v in zip(header, line.split(",")) if h != "seconds"] for line in lines]

    assert epochs("j2") == epochs("j1")


def test_batch_not_divisible_by_world_size(tmp_path: Path, clean_env) -> None:
    recipe = _write(tmp_path, "ddp.toml", DDP_RECIPE)
    clean_env.setenv("WORLD_SIZE", "3")
    clean_env.setenv("RANK", "0")
    result = CliRunner().invoke(main, ["recipe", str(recipe), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert ("row 1 (A784-S64-S10): batch_size 50 is not divisible by the 3 processes of this torchrun launch "
            "(WORLD_SIZE=3)") in result.output
    assert "Use --nproc_per_node in {1, 2, 5, 10} or a batch size divisible by 3" in result.output
    assert not (tmp_path / "out").exists()  # nothing started
    clean_env.setenv("RANK", "2")  # the other processes exit quietly: rank 0 prints the error once
    result = CliRunner().invoke(main, ["recipe", str(recipe), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and result.output == ""


def test_jobs_with_ddp_is_an_error(tmp_path: Path, clean_env) -> None:
    recipe = _write(tmp_path, "ddp.toml", DDP_RECIPE)
    clean_env.setenv("WORLD_SIZE", "2")
    clean_env.setenv("RANK", "0")
    result = CliRunner().invoke(main, ["recipe", str(recipe), "--jobs", "2", "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "--jobs 2 cannot be combined with a torchrun launch (WORLD_SIZE=2)" in result.output


def test_library_checks_and_single_process_context(tmp_path: Path, clean_env) -> None:
    recipe = load_recipe(_write(tmp_path, "ddp.toml", DDP_RECIPE)).configure()
    with pytest.raises(RecipeError, match="not divisible by the 4 processes"):
        check_parallel(recipe, 4)
    with pytest.raises(RecipeError, match="cannot be combined"):
        run_recipe(recipe, RunOptions(out=tmp_path / "x", jobs=2, dist=type(SINGLE)(0, 2, 0)))
    check_parallel(recipe, 2)
    check_parallel(recipe, 1, jobs=3)
    # no torchrun variables: the single-process context, no torch.distributed call
    assert from_env() is SINGLE and SINGLE.is_main and not SINGLE.distributed
    assert all_reduce_sum([1, 2.5], SINGLE) == [1.0, 2.5]
    barrier(SINGLE)
    assert not torch.distributed.is_initialized()
