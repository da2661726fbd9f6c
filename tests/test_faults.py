"""Faults around resuming and the output folder: a run killed (SIGKILL) while writing a
checkpoint resumes to the uninterrupted result; truncated or corrupt files give a one-line
error naming the file and how to restart its row; a state saved with other settings restarts
only its row; a read-only or full --out fails before training; --resume with --jobs; Ctrl-C
on a --jobs run; a row that stopped on a NaN loss; init_rate calibration inside the runner;
error paths of the CLI and of separate learning."""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import TINY_RECIPE, one_thread  # noqa: F401  (one_thread: a fixture)

from hnn_bridge import ConfigError, build
from hnn_bridge.cli import main
from hnn_bridge.recipe import load_recipe
from hnn_bridge.training import checkpoint as checkpoint_module
from hnn_bridge.training import loop
from hnn_bridge.training import runner as runner_module
from hnn_bridge.training.checkpoint import CheckpointError, torch_load
from hnn_bridge.training.jobs import row_job
from hnn_bridge.training.runner import RunOptions

RECIPE = TINY_RECIPE.replace('name = "tiny"', 'name = "faults"').replace("epochs = 2", "epochs = 3")
# jobs in order: the pure ANN twin of row 1 (3 epochs), row 1 (3), row 2 (3): 9 state saves


pytestmark = pytest.mark.usefixtures("one_thread")


def _write_recipe(folder: Path, text: str = RECIPE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "faults.toml"
    path.write_text(text)
    return path


def _cli(*args: str, catch: bool = True):
    return CliRunner().invoke(main, list(args), catch_exceptions=catch)


def _comparable(out: Path) -> tuple:
    results = json.loads((out / "results.json").read_text())
    seeds = [
        (
            r["row"],
            s["status"],
            s["test_acc"],
            s["test_acc_argmax"],
            s["best_epoch"],
            s["best_val_acc"],
            s["epochs_run"],
        )
        for r in results["rows"]
        for s in r["seeds"]
    ]
    with open(out / "epochs.csv") as f:
        log = [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]
    weights = {p.name: torch_load(p)["model"] for p in sorted((out / "checkpoints").glob("*.pt"))}
    return seeds, log, weights


def _assert_same(a: Path, b: Path) -> None:
    ca, cb = _comparable(a), _comparable(b)
    assert ca[0] == cb[0]
    assert ca[1] == cb[1]
    assert ca[2].keys() == cb[2].keys() and ca[2]
    for name in ca[2]:
        assert all(torch.equal(ca[2][name][k], cb[2][name][k]) for k in ca[2][name]), name


def _no_partial_files(out: Path) -> None:
    left = [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.endswith(".state.pt")]
    assert not left, left


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[Path, Path]:
    """(recipe file, output of an uninterrupted run)."""
    tmp = tmp_path_factory.mktemp("faults-straight")
    recipe = _write_recipe(tmp)
    result = _cli("recipe", str(recipe), "--out", str(tmp / "out"), catch=False)
    assert result.exit_code == 0, result.output
    return recipe, tmp / "out"


def _interrupt_after(monkeypatch, saves: int) -> list:
    """Make the runner raise KeyboardInterrupt right after its ``saves``-th state save."""
    real = runner_module.save_state
    seen: list = []

    def save_then_interrupt(path, state):
        real(path, state)
        seen.append(Path(path))
        if len(seen) == saves:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner_module, "save_state", save_then_interrupt)
    return seen


# ----------------------------------------------------------------------------- SIGKILL mid-write

KILLER = r"""
import os, signal, sys, tempfile
from hnn_bridge.training import checkpoint

pattern, nth = sys.argv[1], int(sys.argv[2])
real = checkpoint.atomic_write_bytes
count = [0]

def write(path, data):
    if pattern in os.path.basename(str(path)):
        count[0] += 1
        if count[0] == nth:  # half of the new file is in the temporary file: killed mid-write
            fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(str(path))}.", suffix=".tmp",
                                       dir=os.path.dirname(str(path)))
            os.write(fd, data[: len(data) // 2])
            os.fsync(fd)
            os.kill(os.getpid(), signal.SIGKILL)
    return real(path, data)

checkpoint.atomic_write_bytes = write
from hnn_bridge.cli import main
main(sys.argv[3:], prog_name="hnn-bridge")
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "pattern,nth",
    [
        (".state.pt", 5),  # row 1's second epoch (after the 3 epochs of its pure ANN)
        ("-s0.json", 2),  # row 1's result file, after its last state
    ],
)
def test_sigkill_while_writing_a_checkpoint_then_resume(
    straight, tmp_path: Path, pattern: str, nth: int
) -> None:
    recipe, reference = straight
    out = tmp_path / "killed"
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    env.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    proc = subprocess.run(
        [sys.executable, str(script), pattern, str(nth), "recipe", str(recipe), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    partial = list((out / "checkpoints").glob(".*.tmp"))
    assert len(partial) == 1 and pattern in partial[0].name  # the torn write is in the temporary file only
    assert list((out / "checkpoints").glob("*.state.pt"))  # the previous epoch's state is intact
    resumed = _cli("recipe", str(recipe), "--out", str(out), "--resume", catch=False)
    assert resumed.exit_code == 0, resumed.output
    assert "resuming after epoch" in resumed.output
    _no_partial_files(out)
    _assert_same(reference, out)


# ----------------------------------------------------------------------------- unreadable files


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[: min(len(data), 64)] = b"\x13" * min(len(data), 64)
    path.write_bytes(bytes(data))


def _one_line_error(output: str) -> str:
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, output
    return lines[0]


@pytest.mark.parametrize("damage", [_truncate, _garble])
def test_unreadable_state_names_the_file_and_how_to_restart(
    straight, tmp_path: Path, monkeypatch, damage
) -> None:
    recipe, reference = straight
    out = tmp_path / "out"
    seen = _interrupt_after(monkeypatch, 5)  # in row 1, epoch 2
    first = _cli("recipe", str(recipe), "--out", str(out))
    assert first.exit_code == 130
    monkeypatch.undo()
    state = seen[-1]
    damage(state)
    again = _cli("recipe", str(recipe), "--out", str(out), "--resume")
    assert again.exit_code == 1
    line = _one_line_error(again.output)
    assert f"cannot read {state}" in line and "truncated or corrupt" in line
    assert "delete that file to restart its row" in line and "without --resume" in line
    assert "epoch 1/3" not in again.output  # nothing trained
    state.unlink()  # as the message says: that row starts again, the finished pure ANN is kept
    third = _cli("recipe", str(recipe), "--out", str(out), "--resume", catch=False)
    assert third.exit_code == 0, third.output
    assert "reusing the pre-trained ANN" in third.output
    _assert_same(reference, out)


def test_unreadable_result_or_weights_of_a_finished_job(straight, tmp_path: Path) -> None:
    recipe, reference = straight
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    results = json.loads((out / "results.json").read_text())
    row1 = results["rows"][0]["seeds"][0]
    job_json = out / "checkpoints" / f"{row1['job']}.json"
    _truncate(job_json)
    again = _cli("recipe", str(recipe), "--out", str(out), "--resume")
    assert again.exit_code == 1
    line = _one_line_error(again.output)
    assert f"cannot read {job_json}" in line
    assert (
        f"delete {job_json} and {out / 'checkpoints' / (row1['job'] + '.pt')} to train that job again" in line
    )
    # the pure ANN's weights are read when its HNN row is trained (also without --resume)
    shutil.rmtree(out)
    shutil.copytree(reference, out)
    ann_pt = out / "checkpoints" / f"{row1['pretrain']['job']}.pt"
    _garble(ann_pt)
    again = _cli("recipe", str(recipe), "--out", str(out), "--rows", "1")
    assert again.exit_code == 1
    line = _one_line_error(again.output)
    assert f"cannot read {ann_pt}" in line and "to train that job again" in line


# ----------------------------------------------------------------------------- other settings


def test_state_with_other_settings_restarts_only_that_row(straight, tmp_path: Path, monkeypatch) -> None:
    recipe, reference = straight
    out = tmp_path / "out"
    _interrupt_after(monkeypatch, 8)  # row 2, epoch 2: row 1 finished
    assert _cli("recipe", str(recipe), "--out", str(out)).exit_code == 130
    monkeypatch.undo()
    changed = _write_recipe(
        tmp_path / "changed", RECIPE.replace('label = "gaussian"', 'label = "gaussian"\nlr = 2e-3')
    )
    again = _cli("recipe", str(changed), "--out", str(out), "--resume", catch=False)
    assert again.exit_code == 0, again.output
    assert (
        "gaussian seed 0: the saved state in" in again.output
        and "was made with other settings (lr: 0.001 -> 0.002); starting this row again" in again.output
    )
    assert "A784-A32-S10 seed 0: reusing the finished row" in again.output  # row 1 untouched
    assert "epoch 1/3" in again.output and "resuming after epoch" not in again.output
    fresh = tmp_path / "fresh"
    assert _cli("recipe", str(changed), "--out", str(fresh), catch=False).exit_code == 0
    _assert_same(fresh, out)  # row 2 as trained from scratch with the new settings; row 1 as before
    assert _comparable(out)[0][0] == _comparable(reference)[0][0]


def test_a_resumed_run_says_so_in_its_table(straight, tmp_path: Path, monkeypatch) -> None:
    recipe, reference = straight
    out = tmp_path / "out"
    _interrupt_after(monkeypatch, 8)  # row 2, epoch 2
    assert _cli("recipe", str(recipe), "--out", str(out)).exit_code == 130
    monkeypatch.undo()
    again = _cli("recipe", str(recipe), "--out", str(out), "--resume", catch=False)
    assert again.exit_code == 0, again.output
    table = (out / "table.md").read_text()
    assert "- row 2 seed 0 was interrupted and resumed after epoch(s) 2." in table
    assert "row 1 seed 0 was interrupted" not in table
    assert "interrupted" not in (reference / "table.md").read_text()
    _assert_same(out, reference)


def test_finished_row_with_other_settings_is_trained_again(straight, tmp_path: Path) -> None:
    recipe, reference = straight
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    changed = _write_recipe(
        tmp_path / "changed", RECIPE.replace('label = "gaussian"', 'label = "gaussian"\nlr = 2e-3')
    )
    again = _cli("recipe", str(changed), "--out", str(out), "--resume", catch=False)
    assert again.exit_code == 0
    assert "was made with other settings (lr: 0.001 -> 0.002); training this row again" in again.output
    assert again.output.count("reusing the finished row") == 1


# ----------------------------------------------------------------------------- the output folder


def _assert_failed_before_training(result, folder: Path) -> str:
    assert result.exit_code == 1
    line = _one_line_error(result.output)
    assert str(folder) in line
    assert "data:" not in result.output and "epoch 1/" not in result.output
    return line


def test_read_only_out_fails_before_training(straight, tmp_path: Path, monkeypatch) -> None:
    recipe, _ = straight
    out = tmp_path / "ro"
    real = checkpoint_module.tempfile.mkstemp

    def read_only(*args, dir=None, **kw):  # what a read-only mount answers (root ignores chmod)
        if dir is not None and str(dir).startswith(str(out)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
        return real(*args, dir=dir, **kw)

    monkeypatch.setattr(checkpoint_module.tempfile, "mkstemp", read_only)
    line = _assert_failed_before_training(_cli("recipe", str(recipe), "--out", str(out)), out)
    assert "cannot write to the output folder" in line and "read-only" in line and "--out" in line


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_permissions(straight, tmp_path: Path) -> None:
    recipe, _ = straight
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        _assert_failed_before_training(
            _cli("recipe", str(recipe), "--out", str(parent / "out")), parent / "out"
        )
    finally:
        parent.chmod(0o755)


def test_out_that_is_a_file_fails_before_training(straight, tmp_path: Path) -> None:
    recipe, _ = straight
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    result = _cli("recipe", str(recipe), "--out", str(a_file))  # click's own check of --out
    assert result.exit_code == 2 and f"Directory '{a_file}' is a file" in result.output
    out = a_file / "out"  # below a file: only creating it tells
    line = _assert_failed_before_training(_cli("recipe", str(recipe), "--out", str(out)), out)
    assert "cannot write to the output folder" in line and "Not a directory" in line


def test_full_disk_fails_before_training(straight, tmp_path: Path, monkeypatch) -> None:
    recipe, _ = straight
    out = tmp_path / "full"
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(
        checkpoint_module.shutil, "disk_usage", lambda path: usage(10 * 2**30, 10 * 2**30, 2**20)
    )
    line = _assert_failed_before_training(_cli("recipe", str(recipe), "--out", str(out)), out)
    assert "only 1.0 MiB free" in line
    # the write itself failing with ENOSPC says so too
    monkeypatch.undo()

    def no_space(*args, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint_module.tempfile, "mkstemp", no_space)
    line = _assert_failed_before_training(_cli("recipe", str(recipe), "--out", str(out)), out / "checkpoints")
    assert "the disk is full" in line


# ----------------------------------------------------------------------------- --resume with --jobs


@pytest.mark.slow
def test_resume_with_jobs_equals_an_uninterrupted_run(tmp_path: Path, monkeypatch, capfd) -> None:
    recipe = _write_recipe(tmp_path)
    threads = torch.get_num_threads()
    # bit for bit needs the intra-op thread count of a --jobs 2 worker in the sequential parts
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    try:
        reference = tmp_path / "reference"
        assert _cli("recipe", str(recipe), "--out", str(reference), catch=False).exit_code == 0
        out = tmp_path / "out"
        _interrupt_after(monkeypatch, 5)  # row 1, epoch 2 (its pure ANN finished)
        assert _cli("recipe", str(recipe), "--out", str(out)).exit_code == 130
        monkeypatch.undo()
    finally:
        torch.set_num_threads(threads)
    capfd.readouterr()
    again = _cli("recipe", str(recipe), "--out", str(out), "--resume", "--jobs", "2", catch=False)
    assert again.exit_code == 0, again.output
    assert "2 worker processes" in again.output
    workers = capfd.readouterr().err  # the workers print to the process's stderr
    assert "resuming after epoch 2" in workers and "reusing the pre-trained ANN" in workers
    assert "row 1 A784-A32-S10, seed 0 | epoch 3/3" in workers
    assert "row 1 A784-A32-S10, seed 0 | epoch 1/3" not in workers  # row 1 continued, it did not start over
    _no_partial_files(out)
    _assert_same(reference, out)


# ----------------------------------------------------------------------------- Ctrl-C on --jobs 2

SLOW_SAVES = r"""
import os, sys, time
from hnn_bridge.training import runner

if os.environ.get("HNN_TEST_SLOW_SAVES"):  # also runs in the spawned workers, which import this file
    real = runner.save_state

    def save_then_wait(path, state):
        real(path, state)
        time.sleep(float(os.environ["HNN_TEST_SLOW_SAVES"]))

    runner.save_state = save_then_wait

if __name__ == "__main__":
    import signal
    # as in a terminal, even if pytest runs in the background
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from hnn_bridge.cli import main
    main(sys.argv[1:], prog_name="hnn-bridge")
"""


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] not in "ZX"
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads worker processes from /proc")
def test_ctrl_c_on_a_parallel_run_stops_every_worker_and_resumes(tmp_path: Path) -> None:
    """SIGINT to the process group, as a terminal's Ctrl-C sends it, while a --jobs 2 run trains
    its rows: exit status 130 with the resume hint and no traceback, no worker left running, and
    --resume finishes with the result of an uninterrupted --jobs 2 run."""
    import time

    recipe = _write_recipe(tmp_path, RECIPE.replace("epochs = 3", "epochs = 6"))
    script = tmp_path / "cli.py"
    script.write_text(SLOW_SAVES)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "HNN_TEST_SLOW_SAVES")}

    def cli(out: Path, *extra: str, slow: bool = False) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(script), "recipe", str(recipe), "--out", str(out), "--jobs", "2", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env={**env, **({"HNN_TEST_SLOW_SAVES": "1"} if slow else {})},
        )

    reference = cli(tmp_path / "reference")
    assert reference.wait(timeout=300) == 0, reference.communicate()
    out = tmp_path / "out"
    proc = cli(out, slow=True)
    deadline = time.monotonic() + 240
    while not list((out / "checkpoints").glob("r0*.state.pt")):  # a row (not the pure ANN) has saved an epoch
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert len(workers) >= 2  # two workers (and the resource tracker)
    for pid in workers:  # a worker still importing torch would print a traceback on SIGINT: they ignore it
        ignored = next(
            line
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if line.startswith("SigIgn:")
        )
        assert int(ignored.split()[1], 16) >> (signal.SIGINT - 1) & 1, (pid, ignored)
    os.killpg(proc.pid, signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    assert (
        f"interrupted: finished epochs and rows are saved in {out}; continue with\n"
        f"  hnn-bridge recipe {recipe} --jobs 2 --out {out} --resume"
    ) in stderr
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if _alive(pid)]
    assert (
        not (out / "results.json").exists()
        or json.loads((out / "results.json").read_text())["finished"] is False
    )
    again = cli(out, "--resume")
    _stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr
    assert "resuming after epoch" in stderr
    _no_partial_files(out)
    _assert_same(tmp_path / "reference", out)


# ----------------------------------------------------------------------------- NaN, then resume


def test_resume_keeps_a_row_that_stopped_on_a_nan_loss(straight, tmp_path: Path, monkeypatch) -> None:
    recipe, reference = straight
    text = RECIPE.replace('training = "separate"', 'training = "simultaneous"')  # row 1 without a pure ANN
    recipe = _write_recipe(tmp_path / "r", text)
    real = loop.F.cross_entropy
    calls = {"n": 0}

    def poisoned(out, y, **kw):
        loss = real(out, y, **kw)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 8:  # row 1, epoch 2, batch 2 (6 batches per epoch)
                return loss * float("nan")
        return loss

    monkeypatch.setattr(loop.F, "cross_entropy", poisoned)
    _interrupt_after(monkeypatch, 3)  # row 1 saved 1 epoch; the 2nd, 3rd saves are row 2's epochs 1, 2
    out = tmp_path / "out"
    assert _cli("recipe", str(recipe), "--out", str(out)).exit_code == 130
    monkeypatch.undo()
    failed = json.loads(next((out / "checkpoints").glob("r01-*-s0.json")).read_text())
    assert failed["status"] == "failed" and "in epoch 2, batch 2" in failed["error"]
    again = _cli("recipe", str(recipe), "--out", str(out), "--resume", catch=False)
    assert again.exit_code == 0, again.output
    assert "reusing the failed row (non-finite training loss (nan) in epoch 2, batch 2" in again.output
    assert "resuming after epoch 2" in again.output  # row 2 continues where it stopped
    results = json.loads((out / "results.json").read_text())
    row1, row2 = results["rows"]
    assert row1["status"] == "failed" and row1["seeds"][0]["epochs_run"] == 1
    assert row1["seeds"][0]["test_acc"] is not None  # the epoch before the NaN is evaluated
    # row 2 is independent of row 1: it equals row 2 of the uninterrupted run
    ref_row2 = json.loads((reference / "results.json").read_text())["rows"][1]["seeds"][0]
    ours = row2["seeds"][0]
    assert row2["status"] == "ok"
    assert (ours["test_acc"], ours["best_epoch"], ours["best_val_acc"]) == (
        ref_row2["test_acc"],
        ref_row2["best_epoch"],
        ref_row2["best_val_acc"],
    )


# ----------------------------------------------------------------------------- init_rate in the runner

CALIBRATED = RECIPE.replace("dropout = 0.2", "dropout = 0.2\ninit_rate = 0.1")


def test_init_rate_calibrates_the_sls_on_the_first_training_images(tmp_path: Path, monkeypatch) -> None:
    recipe = load_recipe(_write_recipe(tmp_path, CALIBRATED)).configure().select([2])
    calls = []
    real = runner_module.calibrate_firing

    def spy(model, x, target):
        calls.append((x.clone(), target, {k: v.clone() for k, v in model.state_dict().items()}))
        factors = real(model, x, target)
        calls[-1] += (factors, {k: v.clone() for k, v in model.state_dict().items()})
        return factors

    monkeypatch.setattr(runner_module, "calibrate_firing", spy)
    run = runner_module.RecipeRun(recipe, RunOptions(out=tmp_path / "out"))
    run.load_data()
    job = row_job(recipe.rows[0], 0)
    model, _ = run.model_and_params(job)
    ((x, target, before, factors, after),) = calls
    d = next(iter(run.data.values()))
    assert target == 0.1
    assert torch.equal(x, d.images[d.train[: runner_module.CALIBRATION_IMAGES]].float() / 255)
    assert factors and any(f != 1.0 for f in factors.values())  # the SL weights were scaled
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(not k.startswith("al.") for k in changed)  # ALs untouched
    # training then starts from the calibrated weights; the seeded build is the same each time
    again, _ = run.model_and_params(job)
    assert all(torch.equal(model.state_dict()[k], again.state_dict()[k]) for k in after)


@pytest.mark.slow
def test_init_rate_resume_is_bit_identical(tmp_path: Path, monkeypatch) -> None:
    recipe = _write_recipe(tmp_path, CALIBRATED)
    reference = tmp_path / "reference"
    assert _cli("recipe", str(recipe), "--out", str(reference), catch=False).exit_code == 0
    out = tmp_path / "out"
    _interrupt_after(monkeypatch, 8)
    assert _cli("recipe", str(recipe), "--out", str(out)).exit_code == 130
    monkeypatch.undo()
    assert _cli("recipe", str(recipe), "--out", str(out), "--resume", catch=False).exit_code == 0
    _assert_same(reference, out)


# ----------------------------------------------------------------------------- error paths


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", ["recipe", "train"])
def test_device_cuda_without_cuda(straight, tmp_path: Path, command: str) -> None:
    recipe, _ = straight
    target = str(recipe) if command == "recipe" else "A784-A32-S10"
    extra = [] if command == "recipe" else ["--quick"]
    result = _cli(command, target, *extra, "--device", "cuda", "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "'cuda': no CUDA device is available here" in result.output and "--device" in result.output
    assert not (tmp_path / "out").exists()


def test_missing_torchrun_variables(straight, tmp_path: Path, monkeypatch) -> None:
    recipe, _ = straight
    for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = _cli("recipe", str(recipe), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    line = _one_line_error(result.output)
    assert (
        "cannot join the torchrun process group: WORLD_SIZE=2 but RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT "
        "not set"
        in line
        and "torchrun --nproc_per_node N" in line
    )
    assert not (tmp_path / "out").exists()


def test_load_als_from_a_mismatched_network() -> None:
    hnn = build("A784-A32-S10", steps=2, training="separate")
    with pytest.raises(
        ConfigError,
        match=r"cannot copy the AL weights of 'A784-A64-A10' into 'A784-A32-S10': "
        r"no matching tensor for 1\.weight, 1\.bias",
    ):
        hnn.load_als_from(build("A784-A64-A10"))
    with pytest.raises(ConfigError, match="no matching tensor"):
        build("A32C3-P2-S10", input_shape=(1, 8, 8), steps=2).load_als_from(build("A784-A32-A10"))
    before = {k: v.clone() for k, v in hnn.state_dict().items()}
    with pytest.raises(ConfigError):
        hnn.load_als_from(build("A784-A64-A10"))
    assert all(torch.equal(before[k], v) for k, v in hnn.state_dict().items())  # nothing half-copied


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_error_is_one_line_and_picklable(tmp_path: Path) -> None:
    import pickle

    bad = tmp_path / "x.state.pt"
    bad.write_bytes(b"\x80\x04garbage\n" * 3)
    with pytest.raises(CheckpointError) as info:
        checkpoint_module.load_state(bad)
    assert "\n" not in str(info.value) and str(bad) in str(info.value)
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)  # crosses --jobs workers
