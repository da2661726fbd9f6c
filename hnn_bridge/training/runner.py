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

The parts live in modules named for them: `jobs` (what each job trains, its seed and
fingerprint), `pool` (``--jobs``), `output_lock` (one run per output folder), `results`
(``results.json``, ``epochs.csv``, warnings) and `checkpoint` (the files); this module
holds `run_recipe` and `RecipeRun`, which runs one job in named steps (`RecipeRun.run_job`)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..calibration import calibrate_firing
from ..ops import ops_summary
from ..rates import recording_counts
from ..recipe import Recipe, RecipeError, RowSpec, build_row
from .checkpoint import (
    CheckpointError,
    atomic_write_json,
    atomic_write_text,
    ensure_writable,
    load_state,
    load_weights,
    read_checkpoint_json,
    remove_partial_writes,
    save_state,
    torch_save,
)
from .distributed import SINGLE, DistContext, barrier
from .jobs import Job, derive_seed, row_job
from .loop import NonFiniteLoss, TrainOptions, evaluate, train_model
from .output_lock import OutputBusy, exclusive
from .pool import run_parallel
from .progress import Reporter
from .results import (
    EPOCH_FIELDS,
    RESULTS_FORMAT,
    epoch_log_rows,
    epoch_warnings,
    epochs_csv,
    fingerprint_changes,
    retrain_hint,
    run_results,
)

__all__ = [
    "EPOCH_FIELDS",
    "OutputBusy",
    "RESULTS_FORMAT",
    "RunOptions",
    "check_parallel",
    "derive_seed",
    "epoch_warnings",
    "run_recipe",
]

# the first training images (in split order) on which SL weights are calibrated (init_rate)
CALIBRATION_IMAGES = 64


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
        raise RecipeError(
            f"--jobs {jobs} cannot be combined with a torchrun launch (WORLD_SIZE={world_size}): "
            "run the rows either data-parallel under torchrun or in --jobs processes, not both"
        )
    if world_size == 1:
        return
    for row in recipe.rows:
        b = row.settings.batch_size
        if b % world_size:
            fits = [w for w in range(1, min(b, 16) + 1) if b % w == 0]
            raise RecipeError(
                f"{recipe.source}: row {row.index} ({row.arch}): batch_size {b} is not divisible by the "
                f"{world_size} processes of this torchrun launch (WORLD_SIZE={world_size}); every "
                "process takes "
                f"batch_size / WORLD_SIZE rows of each global batch. Use --nproc_per_node in "
                f"{{{', '.join(map(str, fits))}}} or a batch size divisible by {world_size}"
            )


@dataclass
class _Data:
    images: torch.Tensor
    labels: torch.Tensor
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    description: str


@dataclass(frozen=True)
class JobFiles:
    """A job's files under ``OUT/checkpoints``: its result (``.json``), its training state
    while it runs (``.state.pt``) and its best-validation weights (``.pt``)."""

    result: Path
    state: Path
    weights: Path

    @classmethod
    def of(cls, ckpt: Path, job: Job) -> "JobFiles":
        return cls(ckpt / f"{job.name}.json", ckpt / f"{job.name}.state.pt", ckpt / f"{job.name}.pt")


class RecipeRun:
    """State of one `run_recipe` call (in a ``--jobs`` worker: of the worker's job)."""

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
            sizes = f"{len(split.train)}/{len(split.val)}/{len(split.test)}"
            what += f"; split 6:2:2 with seed {s.split_seed}: {sizes})"
            self.data[key] = _Data(images, labels, split.train, split.val, split.test, what)

    def batches(self, job: Job) -> tuple[Any, Any, Any]:
        from ..data import TensorBatches
        from ..data.augment import augmentation

        s = job.settings
        d = self.data[(s.dataset, s.subset, s.split_seed)]
        preload = self.device.type == "cuda"
        common = dict(device=self.device, preload=preload)
        rank, world = self.dist.rank, self.dist.world_size
        # DDP: this rank's shard of every global batch; every world-th validation/test image
        train = TensorBatches(
            d.images,
            d.labels,
            d.train,
            batch_size=s.batch_size // world,
            shuffle=True,
            seed=job.seed,
            rank=rank,
            world_size=world,
            augment=augmentation(s.augment),
            **common,
        )
        val_idx, test_idx = (d.val, d.test) if world == 1 else (d.val[rank::world], d.test[rank::world])
        val = TensorBatches(
            d.images, d.labels, val_idx, batch_size=s.eval_batch_size, shuffle=False, **common
        )
        test = TensorBatches(
            d.images, d.labels, test_idx, batch_size=s.eval_batch_size, shuffle=False, **common
        )
        return train, val, test

    # -------------------------------------------------------------------- epoch log

    def write_epoch_log(self) -> None:
        if not self.dist.is_main:
            return
        atomic_write_text(self.out / "epochs.csv", epochs_csv(self.logs.values()))

    # -------------------------------------------------------------------- models

    def _build(self, job: Job) -> nn.Module:
        row = replace(
            job.row,
            arch=job.arch,
            coder=job.coder,
            training=job.training,
            settings=replace(job.settings, activation=job.activation),
        )
        return build_row(row).to(self.device)

    def model_and_params(self, job: Job) -> tuple[nn.Module, list[nn.Parameter]]:
        """Seed, build, and for separate learning copy and freeze the ALs (§3.1)."""
        twin_model = None
        if job.twin is not None:
            twin_model = self._build(job.twin)
            path = self.ckpt / f"{job.twin.name}.pt"
            twin_model.load_state_dict(load_weights(path, retrain_hint(path))["model"])
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

    def needs_twin(self, job: Job) -> bool:
        """A separate row whose ALs have weights (A784-S500-S10 has none to pre-train)."""
        if job.twin is None:
            return False
        probe = self._build(replace(job, twin=None))
        return any(True for _ in probe.al.parameters())

    # -------------------------------------------------------------------- one job

    def run_job(self, job: Job, row: RowSpec) -> dict[str, Any]:
        """Train ``job`` (or read it back when finished), return its result dict: reuse a
        finished result, pre-train the twin, pick up a saved state, train, score the best
        weights on test and write the files, each a step below."""
        if job.name in self.job_results:
            return self.job_results[job.name]
        files = JobFiles.of(self.ckpt, job)
        done = self._reuse(job, row, files)
        if done is not None:
            return done
        job, pretrain = self._pretrain(job, row)
        state, resumes = self._saved_state(job, row, files)
        model, params = self.model_and_params(job)
        train, val, test = self.batches(job)
        final, status, error, warnings = self._train(
            job, row, files, model, params, (train, val, test), state, resumes
        )
        test_metrics = self._score_best(job, files, model, final, test)
        result = {
            "job": job.name,
            "kind": job.kind,
            "arch": job.arch,
            "coder": job.coder,
            "training": job.training,
            "activation": job.activation,
            "seed_index": job.seed_index,
            "seed": job.seed,
            "status": status,
            "error": error,
            "epochs": job.settings.epochs,
            "epochs_run": len(final["log"]),
            "best_epoch": final["best_epoch"],
            "best_val": final["best_val"],
            "test": test_metrics,
            "wall_s": final["wall_s"],
            "pretrain": None
            if pretrain is None
            else {
                "job": pretrain["job"],
                "arch": pretrain["arch"],
                "test_acc": (pretrain["test"] or {}).get("acc"),
                "best_epoch": pretrain["best_epoch"],
                "wall_s": pretrain["wall_s"],
                "reused": bool(pretrain.get("reused")),
            },
            "checkpoint": str(files.weights.relative_to(self.out)) if test_metrics else None,
            "processes": self.dist.world_size,
            "resumed_after": resumes,
            "warnings": warnings,
            "fingerprint": _plain(job.fingerprint),
            "log": final["log"],
        }
        if self.dist.is_main:
            atomic_write_json(files.result, result)
            files.state.unlink(missing_ok=True)
        barrier(self.dist)  # later jobs (on every rank) read these files
        self.job_results[job.name] = result
        return result

    def _reuse(self, job: Job, row: RowSpec, files: JobFiles) -> dict[str, Any] | None:
        """The saved result of a finished job made with the same fingerprint (a pure ANN
        always, a row with ``resume``), with its epoch-log rows; None to train it."""
        reusable = job.kind == "ann" or self.options.resume
        if not (reusable and files.result.is_file() and files.weights.is_file()):
            return None
        done = read_checkpoint_json(files.result, retrain_hint(files.result, files.weights))
        if done.get("fingerprint") != _plain(job.fingerprint):
            changes = fingerprint_changes(done.get("fingerprint"), job.fingerprint)
            self.reporter.note(
                f"{row.label} seed {job.seed_index}: {files.result} was made with other "
                f"settings ({changes}); training this row again"
            )
            return None
        what = "pre-trained ANN" if job.kind == "ann" else "finished row"
        if done.get("status") != "ok":
            what = f"failed row ({done.get('error')}; delete {files.result} to train it again)"
        self.reporter.note(f"{row.label} seed {job.seed_index}: reusing the {what} in {files.result}")
        done = {**done, "reused": True}
        twin_path = self.ckpt / f"{job.twin.name}.json" if job.twin is not None else None
        if twin_path is not None and job.twin.name not in self.logs and twin_path.is_file():
            # epochs.csv keeps the pre-training epochs of a reused separate row, before its own
            twin_log = read_checkpoint_json(twin_path, retrain_hint(twin_path)).get("log", [])
            self.logs[job.twin.name] = epoch_log_rows(job.twin, row, twin_log)
        self.job_results[job.name] = done
        self.logs[job.name] = epoch_log_rows(job, row, done.get("log", []))
        return done

    def _pretrain(self, job: Job, row: RowSpec) -> tuple[Job, dict[str, Any] | None]:
        """For separate learning, the pure ANN's result (trained or reused first); a twin
        without weights to pre-train is dropped from the job."""
        if job.twin is not None and self.needs_twin(job):
            pretrain = self.run_job(job.twin, row)
            if pretrain["status"] != "ok" and pretrain.get("best_epoch", 0) == 0:
                raise RuntimeError(f"the pure ANN {job.twin.arch} failed: {pretrain.get('error')}")
            return job, pretrain
        if job.twin is not None:
            job = replace(job, twin=None)
        return job, None

    def _saved_state(
        self, job: Job, row: RowSpec, files: JobFiles
    ) -> tuple[dict[str, Any] | None, list[int]]:
        """With ``resume``, the job's saved training state when it was made with the same
        fingerprint and number of processes, and the epochs after which the job was
        interrupted so far (this resume's included).

        Raises:
            CheckpointError: the state was saved by another number of processes.
        """
        state = load_state(files.state) if self.options.resume else None
        if state is not None and state.get("fingerprint") != _plain(job.fingerprint):
            changes = fingerprint_changes(state.get("fingerprint"), job.fingerprint)
            self.reporter.note(
                f"{row.label} seed {job.seed_index}: the saved state in {files.state} was "
                f"made with other settings ({changes}); starting this row again"
            )
            state = None
        if state is not None and int(state.get("world_size", 1)) != self.dist.world_size:
            n = int(state.get("world_size", 1))
            how = f"torchrun --nproc_per_node {n}" if n > 1 else "one process (no torchrun)"
            raise CheckpointError(
                f"{files.state} was saved by {n} process(es) but this run has {self.dist.world_size}: every "
                "process continues its own random stream, so only the same number resumes exactly; resume "
                f"with {how}, or delete that file to restart its row"
            )
        if state is None:
            return None, []
        self.reporter.note(f"{row.label} seed {job.seed_index}: resuming after epoch {state['epoch']}")
        return state, [*state.get("resumes", []), int(state["epoch"])]

    def _train(
        self,
        job: Job,
        row: RowSpec,
        files: JobFiles,
        model: nn.Module,
        params: list[nn.Parameter],
        batches: tuple[Any, Any, Any],
        state: dict[str, Any] | None,
        resumes: list[int],
    ) -> tuple[dict[str, Any], str, str | None, list[str]]:
        """`loop.train_model` with the row's settings, saving the state and the epoch log
        after every epoch; returns the final state, the status (``ok``, or ``failed`` on a
        non-finite loss, keeping the epochs before it), the error and the warnings."""
        train, val, test = batches
        s = job.settings
        title = (
            f"pre-training {job.arch} ({job.activation}) for row {row.index}"
            if job.kind == "ann" and row.coder is not None
            else f"row {row.index} {row.label}"
        )
        progress = self.reporter.job(f"{title}, seed {job.seed_index}")
        fingerprint = _plain(job.fingerprint)
        warnings: list[str] = list(state.get("warnings", [])) if state is not None else []

        def on_epoch(snapshot: dict[str, Any]) -> None:
            for text in epoch_warnings(snapshot["log"][-1]):
                warnings.append(text)
                self.reporter.note(f"warning: row {row.index} {row.label} seed {job.seed_index}: {text}")
            if self.dist.is_main:
                save_state(
                    files.state,
                    {**snapshot, "fingerprint": fingerprint, "resumes": resumes, "warnings": warnings},
                )
            self.logs[job.name] = epoch_log_rows(job, row, snapshot["log"])
            if self.write_epochs:
                self.write_epoch_log()

        status, error = "ok", None
        try:
            options = TrainOptions(
                epochs=s.epochs,
                lr=s.lr,
                lr_milestones=s.lr_milestones,
                lr_gamma=s.lr_gamma,
                device=self.device,
                precision=s.precision,
                logit_scale=s.logit_scale,
            )
            final = train_model(
                model,
                params,
                train,
                val,
                options,
                state=state,
                on_epoch=on_epoch,
                progress=progress,
                dist=self.dist,
                test_batches=test if self.options.test_every_epoch else None,
            )
        except NonFiniteLoss as err:
            final, status, error = dict(err.finished), "failed", str(err)
            self.reporter.note(f"row {row.index} {row.label} seed {job.seed_index}: {error}")
        finally:
            progress.close()
        self.logs[job.name] = epoch_log_rows(job, row, final["log"])
        if self.write_epochs:
            self.write_epoch_log()
        return final, status, error, warnings

    def _score_best(
        self, job: Job, files: JobFiles, model: nn.Module, final: Mapping[str, Any], test: Any
    ) -> dict[str, Any] | None:
        """The best-validation weights on test, with their operation counts and energy, and
        those weights saved (rank 0); None when no epoch finished."""
        if final["best_epoch"] <= 0:
            return None
        s = job.settings
        model.load_state_dict(final["best_model"])
        # the spikes and values fed to every layer in the test pass give the exact operation
        # counts and the energy under every model (rank 0's shard under DDP)
        with recording_counts(model) as tally:
            test_metrics = evaluate(
                model, test.epoch_batches(0), self.dist, s.precision, s.logit_scale
            ).as_dict()
        test_metrics["ops"] = ops_summary(model, tally)
        if self.dist.is_main:
            torch_save(
                {
                    "model": final["best_model"],
                    "arch": job.arch,
                    "coder": job.coder,
                    "training": job.training,
                    "settings": s.as_dict(),
                    "best_epoch": final["best_epoch"],
                    "fingerprint": _plain(job.fingerprint),
                },
                files.weights,
            )
        return test_metrics

    # -------------------------------------------------------------------- results

    def results(self, seeds_done: Mapping[int, list[dict[str, Any]]], finished: bool) -> dict[str, Any]:
        return run_results(
            self.recipe,
            seeds_done,
            seeds=self.options.seeds,
            device=str(self.device),
            processes=self.dist.world_size,
            data=[d.description for d in self.data.values()],
            finished=finished,
            wall_s=time.perf_counter() - self.started,
        )


def _plain(fingerprint: Mapping[str, Any]) -> Any:
    """A fingerprint as it reads back from JSON (tuples become lists), for comparing."""
    return json.loads(json.dumps(fingerprint))


def run_recipe(
    recipe: Recipe, options: RunOptions, on_results: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
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
    run = RecipeRun(recipe, options)
    if not options.dist.is_main:  # rank 0 creates OUT and holds the lock for the whole launch
        return _run(run, recipe, options, None)
    ensure_writable(run.out)  # a read-only or full --out fails here, before any data or training
    with exclusive(run.out):
        return _run(run, recipe, options, on_results)


def _run(
    run: RecipeRun, recipe: Recipe, options: RunOptions, on_results: Callable[[dict[str, Any]], None] | None
) -> dict[str, Any]:
    dist = run.dist
    if dist.is_main:  # rank 0 first: a dataset missing from the cache is downloaded once
        run.load_data()
    barrier(dist)
    if not dist.is_main:
        run.load_data()
    for d in run.data.values():
        run.reporter.note(f"data: {d.description}")
    if dist.distributed:
        run.reporter.note(
            f"data parallel: {dist.world_size} processes, each takes batch_size / {dist.world_size} "
            "rows of every global batch"
        )
    if dist.is_main:  # a process killed while writing leaves a temporary file; the old file is intact
        remove_partial_writes(run.out)
        remove_partial_writes(run.ckpt)
    if not options.resume and dist.is_main:
        for stale in run.ckpt.glob("*.state.pt"):
            stale.unlink()
    barrier(dist)
    if options.jobs > 1:
        return run_parallel(run, recipe, options, on_results)
    done: dict[int, list[dict[str, Any]]] = {}
    for row in recipe.rows:
        for k in range(options.seeds):
            result = run.run_job(row_job(row, k), row)
            done.setdefault(row.index, []).append(result)
            if on_results is not None:
                on_results(run.results(done, finished=False))
    results = run.results(done, finished=True)
    if on_results is not None:
        on_results(results)
    return results
