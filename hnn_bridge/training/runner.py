"""Run the rows of a recipe over seeds: data, seeding, separate learning, resume, outputs.

Per (row, seed index) the runner

1. derives the seed from (recipe seed, seed index, what the row trains) and seeds torch's
   global RNG with it, so that weights, dropout and coder noise are repeatable; the data
   order comes from `TensorBatches` seeded with the same seed per epoch;
2. for separate learning (§3.1) first obtains the pure ANN of the same widths
   (`notation.ann_twin`), trained to its best validation epoch or reused from its
   checkpoint under ``OUT/checkpoints`` (one per twin architecture, activation, settings
   and seed; a pure-ANN row of the same recipe is the same job, so it is trained once),
   copies its AL weights into the HNN (`HybridNet.load_als_from`), freezes them
   (`HybridNet.freeze_als`) and gives only the SL parameters to the optimizer;
3. trains (`loop.train_model`), saving the whole training state after every epoch
   (``OUT/checkpoints/<job>.state.pt``) so that ``resume=True`` continues from the last
   finished epoch with the same final result as an uninterrupted run;
4. evaluates the best-validation weights on test and writes ``<job>.json`` (metrics and
   per-epoch log) and ``<job>.pt`` (the best weights).

With ``resume=True`` finished rows are read back instead of trained. The 6:2:2 split
(§4.1) is stratified and fixed by ``split_seed``: all seeds of a row share it.

Data parallel (``RunOptions.dist`` with several processes, launched by torchrun; see
`distributed`): every process runs the same jobs in the same order; each trains on its
shard of every global batch (``batch_size`` / world size rows, so ``batch_size`` must be
divisible by the world size) and evaluates its share of the validation and test sets.
Rank 0 alone writes checkpoints, result and report files and prints progress; the others
wait at a barrier after each job's files are written, since later jobs read them (the
pre-trained ANN of separate learning, finished rows on resume).

Parallel jobs (``RunOptions.jobs`` > 1, one process): the independent (row, seed) jobs
run in worker processes. The pure ANNs that separate rows need are trained first (each
once), then the rows; every job is seeded from its own derived seed and data order, so
the results are the same as a sequential run's: bit for bit when the sequential run uses
the intra-op thread count of a worker (``cpu_count // jobs``; CPU float reductions such as
matrix products can round differently with another thread count).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import platform
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from .. import __version__
from ..calibration import calibrate_firing
from ..notation import ann_twin, last_al, parse_arch
from ..ops import ops_summary
from ..rates import recording_counts
from ..recipe import ADDED_LATER, Recipe, RecipeError, RowSpec, Settings, build_row
from .checkpoint import (CheckpointError, atomic_write_json, atomic_write_text, ensure_writable, load_state,
                         load_weights, read_checkpoint_json, remove_partial_writes, save_state, torch_save)
from .distributed import SINGLE, DistContext, barrier
from .loop import TIE_RULE, NonFiniteLoss, TrainOptions, evaluate, train_model
from .progress import ConsoleReporter, Reporter

__all__ = ["EPOCH_FIELDS", "OutputBusy", "RESULTS_FORMAT", "RunOptions", "check_parallel", "derive_seed",
           "epoch_warnings", "run_recipe"]

RESULTS_FORMAT = "hnn-bridge-results/1"
EPOCH_FIELDS = ("job", "row", "label", "seed", "phase", "epoch", "train_loss", "train_acc", "val_acc",
                "val_acc_argmax", "val_tie_rate", "lr", "seconds", "best", "train_out_silent",
                "train_out_saturated", "train_out_dead", "val_rates", "test_acc", "test_acc_argmax",
                "test_tie_rate")
# the first training images (in split order) on which SL weights are calibrated (init_rate)
CALIBRATION_IMAGES = 64
# settings that do not change a pure ANN (it has no coder and no spiking layer)
_SNN_ONLY = ("steps", "input_mode", "backend", "neuron", "init_rate", "logit_scale", "gaussian_sigma0",
             "bias_placement")


@dataclass(frozen=True)
class RunOptions:
    """How to run a recipe: where to write, how many seeds, on which device.

    ``dist``: this process's place in a data-parallel (torchrun) run; ``jobs``: worker
    processes for independent (row, seed) jobs (not together with ``dist``)."""

    out: Path
    seeds: int = 1
    device: str = "cpu"
    data_dir: str | None = None
    resume: bool = False
    reporter: Reporter = field(default_factory=Reporter)
    dist: DistContext = SINGLE
    jobs: int = 1
    # score every epoch's weights on test too (`loop.train_model` ``test_batches``), for the
    # best-test-epoch column; selection stays on validation
    test_every_epoch: bool = False


def check_parallel(recipe: Recipe, world_size: int, jobs: int = 1) -> None:
    """Fail before any training when the recipe cannot run on ``world_size`` processes
    (every row's batch size must split evenly) or ``jobs`` is combined with DDP.

    Raises:
        RecipeError: naming the row, its batch size and the world size.
    """
    if jobs < 1:
        raise RecipeError(f"--jobs must be at least 1, got {jobs}")
    if world_size > 1 and jobs > 1:
        raise RecipeError(f"--jobs {jobs} cannot be combined with a torchrun launch (WORLD_SIZE={world_size}): "
                          "run the rows either data-parallel under torchrun or in --jobs processes, not both")
    if world_size == 1:
        return
    for row in recipe.rows:
        b = row.settings.batch_size
        if b % world_size:
            fits = [w for w in range(1, min(b, 16) + 1) if b % w == 0]
            raise RecipeError(
                f"{recipe.source}: row {row.index} ({row.arch}): batch_size {b} is not divisible by the "
                f"{world_size} processes of this torchrun launch (WORLD_SIZE={world_size}); every process takes "
                f"batch_size / WORLD_SIZE rows of each global batch. Use --nproc_per_node in "
                f"{{{', '.join(map(str, fits))}}} or a batch size divisible by {world_size}")


def derive_seed(base: int, index: int, *parts: str) -> int:
    """A 63-bit seed from the recipe seed, the seed index and what is trained."""
    text = ":".join(["hnn-bridge-seed", str(int(base)), str(int(index)), *parts])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def _activation(coder: str | None, activation: str) -> str:
    if activation != "auto":
        return activation
    return "sigmoid" if coder == "poisson" else "relu"


def _short_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class _Job:
    """One training run: a pure ANN (``kind="ann"``) or an HNN row (``kind="hnn"``)."""

    kind: str
    name: str
    arch: str
    coder: str | None
    training: str
    activation: str
    settings: Settings
    seed_index: int
    seed: int
    fingerprint: Mapping[str, Any]
    row: RowSpec
    twin: "_Job | None" = None


def _ann_job(row: RowSpec, arch: str, seed_index: int) -> _Job:
    """The pure ANN ``arch`` trained with ``row``'s settings (the twin of a separate row,
    or a pure-ANN row itself)."""
    activation = _activation(row.coder, row.settings.activation)
    s = row.settings
    seed = derive_seed(s.seed, seed_index, "ann", arch, activation)
    relevant = {k: v for k, v in s.identity().items() if k not in _SNN_ONLY}
    relevant["activation"] = activation
    fingerprint = {"kind": "ann", "arch": arch, "settings": relevant, "seed_index": seed_index, "seed": seed}
    name = f"ann-{arch}-{activation}-{_short_hash(fingerprint)}-s{seed_index}"
    return _Job("ann", name, arch, None, "simultaneous", activation, s, seed_index, seed, fingerprint, row)


def _jobs(row: RowSpec, seed_index: int) -> _Job:
    if row.coder is None:
        return _ann_job(row, row.arch, seed_index)
    s = row.settings
    activation = _activation(row.coder, s.activation)
    seed = derive_seed(s.seed, seed_index, "hnn", row.arch, row.coder, row.training)
    twin = None
    if row.training == "separate":
        twin = _ann_job(row, ann_twin(parse_arch(row.arch)), seed_index)
    fingerprint = {"kind": "hnn", "arch": row.arch, "coder": row.coder, "training": row.training,
                   "settings": {**s.identity(), "activation": activation}, "seed_index": seed_index, "seed": seed,
                   "twin": twin.fingerprint if twin else None}
    if row.coder == "gaussian":  # mu passes the AL activation (coders.MuActivation); runs before it were linear
        fingerprint["gaussian_mu"] = "activation"
        specs = parse_arch(row.arch)
        if s.dropout > 0 and specs[last_al(specs)].op != "input":  # dropout acts on mu only; before, also on ln sigma
            fingerprint["gaussian_dropout"] = "mu"  # (an input token's head never had dropout)
    return _Job("hnn", f"{row.slug}-s{seed_index}", row.arch, row.coder, row.training, activation, s,
                seed_index, seed, fingerprint, row, twin)


@dataclass
class _Data:
    images: torch.Tensor
    labels: torch.Tensor
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    description: str


class _Run:
    """State of one `run_recipe` call."""

    def __init__(self, recipe: Recipe, options: RunOptions) -> None:
        self.recipe = recipe
        self.options = options
        self.out = Path(options.out)
        self.ckpt = self.out / "checkpoints"
        self.dist = options.dist
        self.device = torch.device(options.device)
        if self.dist.distributed and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.reporter = options.reporter if self.dist.is_main else Reporter()
        self.write_epochs = True  # epochs.csv after every epoch (off in --jobs workers)
        self.data: dict[tuple[str, int, int], _Data] = {}
        self.logs: dict[str, list[dict[str, Any]]] = {}  # job name -> epoch rows for epochs.csv
        self.job_results: dict[str, dict[str, Any]] = {}  # finished jobs of this run
        self.started = time.perf_counter()

    # -------------------------------------------------------------------- data

    def load_data(self, rows: Any = None) -> None:
        """Load every dataset the rows need (all rows of the recipe when ``rows`` is None),
        before any training (fails fast)."""
        from ..data import load_dataset, split_622

        for row in self.recipe.rows if rows is None else rows:
            s = row.settings
            key = (s.dataset, s.subset, s.split_seed)
            if key in self.data:
                continue
            ds = load_dataset(s.dataset, self.options.data_dir)
            images, labels = ds.images, ds.labels
            what = f"{ds.name} ({len(ds)} images"
            if s.subset and s.subset < len(ds):
                n = len(ds)
                pick = split_622(labels, seed=s.split_seed, ratios=(s.subset, n - s.subset, 0)).train
                images, labels = images[pick], labels[pick]
                what += f", stratified subset of {s.subset}"
            split = split_622(labels, seed=s.split_seed)
            what += f"; split 6:2:2 with seed {s.split_seed}: {len(split.train)}/{len(split.val)}/{len(split.test)})"
            self.data[key] = _Data(images, labels, split.train, split.val, split.test, what)

    def batches(self, job: _Job) -> tuple[Any, Any, Any]:
        from ..data import TensorBatches
        from ..data.augment import augmentation

        s = job.settings
        d = self.data[(s.dataset, s.subset, s.split_seed)]
        preload = self.device.type == "cuda"
        common = dict(device=self.device, preload=preload)
        rank, world = self.dist.rank, self.dist.world_size
        # DDP: this rank's shard of every global batch; every world-th validation/test image
        train = TensorBatches(d.images, d.labels, d.train, batch_size=s.batch_size // world, shuffle=True,
                              seed=job.seed, rank=rank, world_size=world, augment=augmentation(s.augment), **common)
        val_idx, test_idx = (d.val, d.test) if world == 1 else (d.val[rank::world], d.test[rank::world])
        val = TensorBatches(d.images, d.labels, val_idx, batch_size=s.eval_batch_size, shuffle=False, **common)
        test = TensorBatches(d.images, d.labels, test_idx, batch_size=s.eval_batch_size, shuffle=False, **common)
        return train, val, test

    # -------------------------------------------------------------------- epoch log

    def write_epoch_log(self) -> None:
        if not self.dist.is_main:
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=EPOCH_FIELDS, lineterminator="\n")
        writer.writeheader()
        for rows in self.logs.values():
            writer.writerows(rows)
        atomic_write_text(self.out / "epochs.csv", buffer.getvalue())

    def _log_rows(self, job: _Job, row: RowSpec, log: list[dict[str, Any]]) -> list[dict[str, Any]]:
        phase = "pretrain" if job.kind == "ann" and row.coder is not None else "train"
        rows = []
        for r in log:
            entry = {k: r[k] for k in EPOCH_FIELDS if k in r}
            if isinstance(entry.get("train_out_dead"), list):  # one cell: "3 7"
                entry["train_out_dead"] = " ".join(map(str, entry["train_out_dead"]))
            if isinstance(entry.get("val_rates"), Mapping):  # one cell: "2:S32C3=0.1031 4:S64C3=0.0472"
                entry["val_rates"] = " ".join(f"{k}={v:.4f}" for k, v in entry["val_rates"].items())
            rows.append({"job": job.name, "row": row.index, "label": row.label, "seed": job.seed_index,
                         "phase": phase, **entry})
        return rows

    # -------------------------------------------------------------------- models

    def _build(self, job: _Job) -> nn.Module:
        row = replace(job.row, arch=job.arch, coder=job.coder, training=job.training,
                      settings=replace(job.settings, activation=job.activation))
        return build_row(row).to(self.device)

    def _model_and_params(self, job: _Job) -> tuple[nn.Module, list[nn.Parameter]]:
        """Seed, build, and for separate learning copy and freeze the ALs (§3.1)."""
        twin_model = None
        if job.twin is not None:
            twin_model = self._build(job.twin)
            path = self.ckpt / f"{job.twin.name}.pt"
            twin_model.load_state_dict(load_weights(path, _retrain_hint(path))["model"])
        torch.manual_seed(job.seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed_all(job.seed)
        model = self._build(job)
        if twin_model is not None:
            model.load_als_from(twin_model)
            model.freeze_als()
        if job.settings.init_rate > 0 and model.neurons:
            d = self.data[(job.settings.dataset, job.settings.subset, job.settings.split_seed)]
            x = d.images[d.train[:CALIBRATION_IMAGES]].to(self.device, torch.float32) / 255
            calibrate_firing(model, x, job.settings.init_rate)
        return model, [p for p in model.parameters() if p.requires_grad]

    def _needs_twin(self, job: _Job) -> bool:
        """A separate row whose ALs have weights (A784-S500-S10 has none to pre-train)."""
        if job.twin is None:
            return False
        probe = self._build(replace(job, twin=None))
        return any(True for _ in probe.al.parameters())

    # -------------------------------------------------------------------- one job

    def run_job(self, job: _Job, row: RowSpec) -> dict[str, Any]:
        """Train ``job`` (or read it back when finished), return its result dict."""
        result_path = self.ckpt / f"{job.name}.json"
        state_path = self.ckpt / f"{job.name}.state.pt"
        weights_path = self.ckpt / f"{job.name}.pt"
        reporter = self.reporter
        main = self.dist.is_main
        if job.name in self.job_results:
            return self.job_results[job.name]
        reusable = job.kind == "ann" or self.options.resume
        if reusable and result_path.is_file() and weights_path.is_file():
            done = read_checkpoint_json(result_path, _retrain_hint(result_path, weights_path))
            if done.get("fingerprint") != json.loads(json.dumps(job.fingerprint)):
                reporter.note(f"{row.label} seed {job.seed_index}: {result_path} was made with other settings "
                              f"({_changes(done.get('fingerprint'), job.fingerprint)}); training this row again")
            else:
                what = "pre-trained ANN" if job.kind == "ann" else "finished row"
                if done.get("status") != "ok":
                    what = f"failed row ({done.get('error')}; delete {result_path} to train it again)"
                reporter.note(f"{row.label} seed {job.seed_index}: reusing the {what} in {result_path}")
                done = {**done, "reused": True}
                twin_path = self.ckpt / f"{job.twin.name}.json" if job.twin is not None else None
                if twin_path is not None and job.twin.name not in self.logs and twin_path.is_file():
                    # epochs.csv keeps the pre-training epochs of a reused separate row, before its own
                    twin_log = read_checkpoint_json(twin_path, _retrain_hint(twin_path)).get("log", [])
                    self.logs[job.twin.name] = self._log_rows(job.twin, row, twin_log)
                self.job_results[job.name] = done
                self.logs[job.name] = self._log_rows(job, row, done.get("log", []))
                return done
        pretrain = None
        if job.twin is not None and self._needs_twin(job):
            pretrain = self.run_job(job.twin, row)
            if pretrain["status"] != "ok" and pretrain.get("best_epoch", 0) == 0:
                raise RuntimeError(f"the pure ANN {job.twin.arch} failed: {pretrain.get('error')}")
        elif job.twin is not None:
            job = replace(job, twin=None)
        state = load_state(state_path) if self.options.resume else None
        if state is not None and state.get("fingerprint") != json.loads(json.dumps(job.fingerprint)):
            reporter.note(f"{row.label} seed {job.seed_index}: the saved state in {state_path} was made "
                          f"with other settings ({_changes(state.get('fingerprint'), job.fingerprint)}); "
                          "starting this row again")
            state = None
        if state is not None and int(state.get("world_size", 1)) != self.dist.world_size:
            n = int(state.get("world_size", 1))
            how = f"torchrun --nproc_per_node {n}" if n > 1 else "one process (no torchrun)"
            raise CheckpointError(
                f"{state_path} was saved by {n} process(es) but this run has {self.dist.world_size}: every process "
                f"continues its own random stream, so only the same number resumes exactly; resume with {how}, or "
                "delete that file to restart its row")
        resumes: list[int] = []  # the epochs after which this job was interrupted and resumed
        if state is not None:
            reporter.note(f"{row.label} seed {job.seed_index}: resuming after epoch {state['epoch']}")
            resumes = [*state.get("resumes", []), int(state["epoch"])]
        model, params = self._model_and_params(job)
        train, val, test = self.batches(job)
        s = job.settings
        title = (f"pre-training {job.arch} ({job.activation}) for row {row.index}" if job.kind == "ann"
                 and row.coder is not None else f"row {row.index} {row.label}")
        progress = reporter.job(f"{title}, seed {job.seed_index}")
        fingerprint = json.loads(json.dumps(job.fingerprint))

        warnings: list[str] = list(state.get("warnings", [])) if state is not None else []

        def on_epoch(snapshot: dict[str, Any]) -> None:
            for text in epoch_warnings(snapshot["log"][-1]):
                warnings.append(text)
                reporter.note(f"warning: row {row.index} {row.label} seed {job.seed_index}: {text}")
            if main:
                save_state(state_path, {**snapshot, "fingerprint": fingerprint, "resumes": resumes,
                                        "warnings": warnings})
            self.logs[job.name] = self._log_rows(job, row, snapshot["log"])
            if self.write_epochs:
                self.write_epoch_log()

        status, error = "ok", None
        try:
            options = TrainOptions(epochs=s.epochs, lr=s.lr, lr_milestones=s.lr_milestones,
                                   lr_gamma=s.lr_gamma, device=self.device, precision=s.precision,
                                   logit_scale=s.logit_scale)
            final = train_model(model, params, train, val, options, state=state, on_epoch=on_epoch,
                                progress=progress, dist=self.dist,
                                test_batches=test if self.options.test_every_epoch else None)
        except NonFiniteLoss as err:
            final, status, error = dict(err.finished), "failed", str(err)
            reporter.note(f"row {row.index} {row.label} seed {job.seed_index}: {error}")
        finally:
            progress.close()
        self.logs[job.name] = self._log_rows(job, row, final["log"])
        if self.write_epochs:
            self.write_epoch_log()
        test_metrics = None
        if final["best_epoch"] > 0:
            model.load_state_dict(final["best_model"])
            # the spikes and values fed to every layer in the test pass give the exact operation
            # counts and the energy under every model (rank 0's shard under DDP)
            with recording_counts(model) as tally:
                test_metrics = evaluate(model, test.epoch_batches(0), self.dist, s.precision,
                                        s.logit_scale).as_dict()
            test_metrics["ops"] = ops_summary(model, tally)
            if main:
                torch_save({"model": final["best_model"], "arch": job.arch, "coder": job.coder,
                            "training": job.training, "settings": s.as_dict(),
                            "best_epoch": final["best_epoch"], "fingerprint": fingerprint}, weights_path)
        result = {
            "job": job.name, "kind": job.kind, "arch": job.arch, "coder": job.coder, "training": job.training,
            "activation": job.activation, "seed_index": job.seed_index, "seed": job.seed, "status": status,
            "error": error, "epochs": s.epochs, "epochs_run": len(final["log"]), "best_epoch": final["best_epoch"],
            "best_val": final["best_val"], "test": test_metrics, "wall_s": final["wall_s"],
            "pretrain": None if pretrain is None else {
                "job": pretrain["job"], "arch": pretrain["arch"], "test_acc": (pretrain["test"] or {}).get("acc"),
                "best_epoch": pretrain["best_epoch"], "wall_s": pretrain["wall_s"],
                "reused": bool(pretrain.get("reused"))},
            "checkpoint": str(weights_path.relative_to(self.out)) if test_metrics else None,
            "processes": self.dist.world_size, "resumed_after": resumes, "warnings": warnings,
            "fingerprint": fingerprint, "log": final["log"],
        }
        if main:
            atomic_write_json(result_path, result)
            state_path.unlink(missing_ok=True)
        barrier(self.dist)  # later jobs (on every rank) read these files
        self.job_results[job.name] = result
        return result

    # -------------------------------------------------------------------- results

    def results(self, seeds_done: Mapping[int, list[dict[str, Any]]], finished: bool) -> dict[str, Any]:
        rows = []
        for row in self.recipe.rows:
            entry = row.as_dict()
            entry["seeds"] = [_seed_summary(r) for r in seeds_done.get(row.index, [])]
            entry["status"] = _row_status(entry["seeds"], self.options.seeds)
            rows.append(entry)
        r = self.recipe
        return {
            "format": RESULTS_FORMAT,
            "recipe": {"name": r.name, "title": r.title, "paper_table": r.paper_table, "dataset": r.dataset,
                       "source": r.source, "description": r.description},
            "profile": r.profile, "overrides": dict(r.overrides), "seeds": self.options.seeds,
            "device": str(self.device), "processes": self.dist.world_size,
            "data": sorted({d.description for d in self.data.values()}),
            "tie_rule": TIE_RULE, "finished": finished,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_s": time.perf_counter() - self.started,
            "versions": {"hnn_bridge": __version__, "torch": torch.__version__,
                         "python": platform.python_version()},
            "rows": rows,
        }


def epoch_warnings(record: Mapping[str, Any]) -> list[str]:
    """What a user must see about one epoch (an `EpochRecord` dict): an output layer that
    was silent, or saturated (every class at every step), on every training image, output
    neurons (classes) that never fired on a training image while others did, and hidden
    spiking layers that never fired on the validation set; each names the layer."""
    rates = record.get("val_rates") or {}
    out = list(rates)[-1] if rates else "the output layer"
    e = record["epoch"]
    found = []
    if record.get("train_out_silent") == 1.0:
        found.append(f"epoch {e}: output layer {out} was silent for the whole epoch (no spike for any training "
                     "image, so no gradient reaches the weights); try norm = \"batch\", a larger init_rate or lr")
    if record.get("train_out_saturated") == 1.0:
        found.append(f"epoch {e}: output layer {out} fired at every step for every class on every training image "
                     "of the epoch (every prediction is a tie); try norm = \"batch\" or a smaller lr")
    dead = record.get("train_out_dead")
    if dead and record.get("train_out_silent") != 1.0:
        classes = ", ".join(map(str, dead))
        found.append(f"epoch {e}: output layer {out}: the neuron of class(es) {classes} fired on no training image "
                     "of the epoch (never predicted, almost no surrogate gradient); try norm = \"batch\" or a "
                     "larger init_rate")
    for key, rate in list(rates.items())[:-1]:
        if rate == 0.0:
            found.append(f"epoch {e}: spiking layer {key} did not fire on the validation set")
    return found


def _changes(saved: Any, now: Mapping[str, Any]) -> str:
    """What differs between a saved job fingerprint and this run's, e.g.
    ``norm: 'none' -> 'batch'`` (a setting missing from a fingerprint has its
    `ADDED_LATER` value)."""
    if not isinstance(saved, Mapping):
        return "no fingerprint saved"
    now = json.loads(json.dumps(now))
    old_s, new_s = dict(saved.get("settings") or {}), dict(now.get("settings") or {})
    for key, before in ADDED_LATER.items():
        old_s.setdefault(key, before)
        new_s.setdefault(key, before)
    diffs = [f"{k}: {old_s.get(k)!r} -> {new_s.get(k)!r}" for k in sorted(set(old_s) | set(new_s))
             if old_s.get(k) != new_s.get(k)]
    diffs += [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(saved) | set(now))
              if k not in ("settings", "twin") and saved.get(k) != now.get(k)]
    if not diffs and saved.get("twin") != now.get("twin"):
        diffs.append("the pre-trained ANN's settings")
    return "; ".join(diffs) or "unknown difference"


def _retrain_hint(*paths: Path) -> str:
    return f"delete {' and '.join(map(str, paths))} to train that job again (the other rows are kept)"


def _seed_summary(job: dict[str, Any]) -> dict[str, Any]:
    test = job.get("test") or {}
    return {
        "seed_index": job["seed_index"], "seed": job["seed"], "status": job["status"], "error": job["error"],
        "test_acc": test.get("acc"), "test_acc_argmax": test.get("acc_argmax"),
        "test_tie_rate": test.get("tie_rate"), "test_silent_rate": test.get("silent_rate"),
        "best_epoch": job["best_epoch"], "best_val_acc": (job.get("best_val") or {}).get("acc"),
        "epochs": job["epochs"], "epochs_run": job["epochs_run"], "wall_s": job["wall_s"],
        "pretrain": job.get("pretrain"), "checkpoint": job.get("checkpoint"), "job": job["job"],
        "reused": bool(job.get("reused")), "resumed_after": job.get("resumed_after", []),
        "warnings": job.get("warnings", []),
        "val_rates": [r["val_rates"] for r in job.get("log", []) if r.get("val_rates")],
        **{k: (test.get("ops") or {}).get(k) for k in ("macs", "acs", "energy_uj", "effective_macs", "energy")},
        **_best_test_epoch(job.get("log", [])),
    }


def _best_test_epoch(log: list[dict[str, Any]]) -> dict[str, Any]:
    """The epoch with the highest argmax test accuracy (the first of equals, like the
    ``np.argmax`` of Fang et al.'s reference code) and its scores; empty unless every
    epoch was scored on test (``RunOptions.test_every_epoch``)."""
    if not log or any(r.get("test_acc_argmax") is None for r in log):
        return {}
    best = max(log, key=lambda r: (r["test_acc_argmax"], -r["epoch"]))
    return {"best_test_epoch": best["epoch"], "best_test_acc": best["test_acc"],
            "best_test_acc_argmax": best["test_acc_argmax"], "best_test_tie_rate": best["test_tie_rate"]}


def _row_status(seeds: list[dict[str, Any]], wanted: int) -> str:
    if any(s["status"] != "ok" for s in seeds):
        return "failed"
    return "ok" if len(seeds) >= wanted else "pending"


def run_recipe(recipe: Recipe, options: RunOptions,
               on_results: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train every row of a configured recipe for ``options.seeds`` seeds.

    ``on_results(results)`` is called after every finished (row, seed) with the results so
    far (the CLI writes the report files there) and once at the end. Returns the results
    dict (the content of ``results.json``, see `hnn_bridge.report`). A NaN or infinite
    loss fails that row only; KeyboardInterrupt propagates, leaving the last finished
    epoch's state on disk for ``resume=True``.

    Under DDP (``options.dist``) every process calls this; ``on_results`` is called on
    rank 0 only and every process returns the same results. Raises `RecipeError` when a
    batch size does not split over the processes or ``jobs`` is combined with DDP,
    `OutputNotWritable` (before any training) when ``options.out`` cannot be written or its
    disk is full, and `CheckpointError` when a saved file cannot be read or a saved state
    was made by another number of processes (one line naming the file and how to restart).
    """
    check_parallel(recipe, options.dist.world_size, options.jobs)
    run = _Run(recipe, options)
    if not options.dist.is_main:  # rank 0 creates OUT and holds the lock for the whole launch
        return _run(run, recipe, options, None)
    ensure_writable(run.out)  # a read-only or full --out fails here, before any data or training
    with _exclusive(run.out):
        return _run(run, recipe, options, on_results)


class OutputBusy(RuntimeError):
    """Another process is running into the same output folder."""


@contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Hold ``OUT/.lock`` for the run: two runs writing the same checkpoints would corrupt
    each other's results (POSIX only; elsewhere no lock is taken)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(out / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise OutputBusy(f"another hnn-bridge run is writing to {out}; wait for it or choose another --out") \
                from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _run(run: _Run, recipe: Recipe, options: RunOptions,
         on_results: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    dist = run.dist
    if dist.is_main:  # rank 0 first: a dataset missing from the cache is downloaded once
        run.load_data()
    barrier(dist)
    if not dist.is_main:
        run.load_data()
    for d in run.data.values():
        run.reporter.note(f"data: {d.description}")
    if dist.distributed:
        run.reporter.note(f"data parallel: {dist.world_size} processes, each takes batch_size / {dist.world_size} "
                          "rows of every global batch")
    if dist.is_main:  # a process killed while writing leaves a temporary file; the old file is intact
        remove_partial_writes(run.out)
        remove_partial_writes(run.ckpt)
    if not options.resume and dist.is_main:
        for stale in run.ckpt.glob("*.state.pt"):
            stale.unlink()
    barrier(dist)
    if options.jobs > 1:
        return _run_parallel(run, recipe, options, on_results)
    done: dict[int, list[dict[str, Any]]] = {}
    for row in recipe.rows:
        for k in range(options.seeds):
            result = run.run_job(_jobs(row, k), row)
            done.setdefault(row.index, []).append(result)
            if on_results is not None:
                on_results(run.results(done, finished=False))
    results = run.results(done, finished=True)
    if on_results is not None:
        on_results(results)
    return results


# ---------------------------------------------------------------------------- --jobs N


def _run_parallel(run: _Run, recipe: Recipe, options: RunOptions,
                  on_results: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """`_run` with the (row, seed) jobs in ``options.jobs`` worker processes.

    Every pure ANN that a separate row needs is trained (or reused) once, as the job of the
    row that needs it first in the sequential order, and goes first into the queue; the
    rows that need it are queued when it finishes, given its result so that they reuse it
    exactly as a sequential run does. Every other job is queued at the start, so a worker
    never waits for an ANN that its job does not need. Results, logs and report files are
    put together here in the sequential order.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    order = [(row, k, _jobs(row, k)) for row in recipe.rows for k in range(options.seeds)]
    first: dict[str, tuple[_Job, RowSpec]] = {}  # pure ANN -> (job, row) where a sequential run trains it
    needed: list[str] = []  # pure ANNs that separate rows need
    for row, _k, job in order:
        if job.twin is not None and run._needs_twin(job):
            first.setdefault(job.twin.name, (job.twin, row))
            needed += [job.twin.name] if job.twin.name not in needed else []
        if job.kind == "ann":
            first.setdefault(job.name, (job, row))
    twins = {name: first[name] for name in needed}
    workers = max(1, min(options.jobs, len(order)))
    threads = max(1, (os.cpu_count() or 1) // workers)
    worker_options = replace(options, reporter=Reporter())
    console = isinstance(options.reporter, ConsoleReporter)
    run.reporter.note(f"running {len(order)} job(s) in {workers} worker processes ({threads} thread(s) each)"
                      + (f"; {len(twins)} pure ANN(s) for separate learning first, the rows that need them "
                         "after" if twins else ""))
    finished: dict[tuple[int, int], dict[str, Any]] = {}

    def done_so_far() -> dict[int, list[dict[str, Any]]]:
        done: dict[int, list[dict[str, Any]]] = {}
        for row, k, _job in order:
            if (row.index, k) in finished:
                done.setdefault(row.index, []).append(finished[(row.index, k)])
        return done

    def collect(result: dict[str, Any], logs: dict[str, list[dict[str, Any]]]) -> None:
        run.job_results.setdefault(result["job"], result)
        for name, rows in logs.items():
            run.logs.setdefault(name, rows)
        run.write_epoch_log()

    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(threads,))
    pending: set[Any] = set()

    def submit(job: _Job, row: RowSpec, known: dict[str, dict[str, Any]]) -> None:
        with _workers_ignore_ctrl_c():  # the pool may start a worker on submit
            pending.add(pool.submit(_job_worker, recipe, worker_options, job, row, known, console))

    try:
        waiting: dict[str, list[tuple[RowSpec, _Job]]] = {}  # pure ANN -> the jobs that need it
        for job, row in twins.values():
            submit(job, row, {})
        for row, _k, job in order:
            if job.name in twins:  # a pure-ANN row that is also a separate row's ANN
                continue
            if job.twin is not None and job.twin.name in twins:
                waiting.setdefault(job.twin.name, []).append((row, job))
            else:
                submit(job, row, {})
        while pending:
            ready, _ = wait(pending, return_when=FIRST_COMPLETED)
            pending.difference_update(ready)
            for future in ready:
                result, logs = future.result()
                collect(result, logs)
                for row, job in waiting.pop(result["job"], []):
                    submit(job, row, {result["job"]: result})
                for row, k, job in order:
                    if job.name == result["job"]:
                        finished[(row.index, k)] = result
                if on_results is not None:
                    on_results(run.results(done_so_far(), finished=False))
    except BaseException:
        # taken before shutdown, which sets the pool's process table to None
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:  # stop running jobs too
            process.terminate()
        raise
    pool.shutdown()
    ordered: dict[str, list[dict[str, Any]]] = {}  # epochs.csv in the sequential order
    for _row, _k, job in order:
        for name in ([job.twin.name] if job.twin is not None else []) + [job.name]:
            if name in run.logs:
                ordered.setdefault(name, run.logs[name])
    run.logs = {**ordered, **{k: v for k, v in run.logs.items() if k not in ordered}}
    run.write_epoch_log()
    results = run.results(done_so_far(), finished=True)
    if on_results is not None:
        on_results(results)
    return results


@contextmanager
def _workers_ignore_ctrl_c() -> Iterator[None]:
    """Ignore SIGINT in this process while the pool starts workers (it starts them on submit).

    A terminal's Ctrl-C goes to the whole process group; a worker caught in the middle of
    starting up would print an import traceback. Workers inherit the ignored signal, so
    Ctrl-C reaches this process only, whose clean-up in ``_run_parallel`` stops them (a
    Ctrl-C during the few milliseconds of a submit is dropped).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


_WORKER_DATA: dict[tuple[str, int, int], _Data] = {}  # datasets loaded by this worker process


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _job_worker(recipe: Recipe, options: RunOptions, job: _Job, row: RowSpec, known: dict[str, dict[str, Any]],
                console: bool) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Run one job in a ``--jobs`` worker; return its result and epoch-log rows. Progress:
    one line per finished epoch (no live bar), prefixed with the job's title."""
    if console:
        options = replace(options, reporter=ConsoleReporter(live=False))
    run = _Run(recipe, options)
    run.data = _WORKER_DATA
    run.load_data([row, job.row])
    run.write_epochs = False  # the parent writes epochs.csv
    run.job_results.update(known)
    result = run.run_job(job, row)
    return result, run.logs
