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
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from .. import __version__
from ..notation import ann_twin, parse_arch
from ..recipe import Recipe, RowSpec, Settings, build_row
from .checkpoint import atomic_write_json, atomic_write_text, load_state, read_json, save_state, torch_load, torch_save
from .loop import TIE_RULE, NonFiniteLoss, Progress, evaluate, train_model
from .progress import Reporter

__all__ = ["EPOCH_FIELDS", "OutputBusy", "RESULTS_FORMAT", "RunOptions", "derive_seed", "run_recipe"]

RESULTS_FORMAT = "hnn-bridge-results/1"
EPOCH_FIELDS = ("job", "row", "label", "seed", "phase", "epoch", "train_loss", "train_acc", "val_acc",
                "val_acc_argmax", "val_tie_rate", "lr", "seconds", "best")
# settings that do not change a pure ANN (it has no coder and no spiking layer)
_SNN_ONLY = ("steps", "input_mode", "backend", "neuron")


@dataclass(frozen=True)
class RunOptions:
    """How to run a recipe: where to write, how many seeds, on which device."""

    out: Path
    seeds: int = 1
    device: str = "cpu"
    data_dir: str | None = None
    resume: bool = False
    reporter: Reporter = field(default_factory=Reporter)


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
    relevant = {k: v for k, v in s.as_dict().items() if k not in _SNN_ONLY}
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
                   "settings": {**s.as_dict(), "activation": activation}, "seed_index": seed_index, "seed": seed,
                   "twin": twin.fingerprint if twin else None}
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
        self.device = torch.device(options.device)
        self.data: dict[tuple[str, int, int], _Data] = {}
        self.logs: dict[str, list[dict[str, Any]]] = {}  # job name -> epoch rows for epochs.csv
        self.job_results: dict[str, dict[str, Any]] = {}  # finished jobs of this run
        self.started = time.perf_counter()

    # -------------------------------------------------------------------- data

    def load_data(self) -> None:
        """Load every dataset the rows need, before any training (fails fast)."""
        from ..data import load_dataset, split_622

        for row in self.recipe.rows:
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

        s = job.settings
        d = self.data[(s.dataset, s.subset, s.split_seed)]
        preload = self.device.type == "cuda"
        common = dict(device=self.device, preload=preload)
        train = TensorBatches(d.images, d.labels, d.train, batch_size=s.batch_size, shuffle=True,
                              seed=job.seed, **common)
        val = TensorBatches(d.images, d.labels, d.val, batch_size=s.eval_batch_size, shuffle=False, **common)
        test = TensorBatches(d.images, d.labels, d.test, batch_size=s.eval_batch_size, shuffle=False, **common)
        return train, val, test

    # -------------------------------------------------------------------- epoch log

    def write_epoch_log(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=EPOCH_FIELDS, lineterminator="\n")
        writer.writeheader()
        for rows in self.logs.values():
            writer.writerows(rows)
        atomic_write_text(self.out / "epochs.csv", buffer.getvalue())

    def _log_rows(self, job: _Job, row: RowSpec, log: list[dict[str, Any]]) -> list[dict[str, Any]]:
        phase = "pretrain" if job.kind == "ann" and row.coder is not None else "train"
        return [{"job": job.name, "row": row.index, "label": row.label, "seed": job.seed_index, "phase": phase,
                 **{k: r[k] for k in EPOCH_FIELDS if k in r}} for r in log]

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
            twin_model.load_state_dict(torch_load(self.ckpt / f"{job.twin.name}.pt")["model"])
        torch.manual_seed(job.seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed_all(job.seed)
        model = self._build(job)
        if twin_model is not None:
            model.load_als_from(twin_model)
            model.freeze_als()
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
        reporter = self.options.reporter
        if job.name in self.job_results:
            return self.job_results[job.name]
        reusable = job.kind == "ann" or self.options.resume
        if reusable and result_path.is_file() and weights_path.is_file():
            done = read_json(result_path)
            if done.get("fingerprint") == json.loads(json.dumps(job.fingerprint)):
                what = "pre-trained ANN" if job.kind == "ann" else "finished row"
                reporter.note(f"{row.label} seed {job.seed_index}: reusing the {what} in {result_path}")
                done = {**done, "reused": True}
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
                          "with other settings; starting this row again")
            state = None
        if state is not None:
            reporter.note(f"{row.label} seed {job.seed_index}: resuming after epoch {state['epoch']}")
        model, params = self._model_and_params(job)
        train, val, test = self.batches(job)
        s = job.settings
        title = (f"pre-training {job.arch} ({job.activation}) for row {row.index}" if job.kind == "ann"
                 and row.coder is not None else f"row {row.index} {row.label}")
        progress = reporter.job(f"{title}, seed {job.seed_index}")
        fingerprint = json.loads(json.dumps(job.fingerprint))

        def on_epoch(snapshot: dict[str, Any]) -> None:
            save_state(state_path, {**snapshot, "fingerprint": fingerprint})
            self.logs[job.name] = self._log_rows(job, row, snapshot["log"])
            self.write_epoch_log()

        status, error = "ok", None
        try:
            final = train_model(model, params, train, val, epochs=s.epochs, lr=s.lr,
                                lr_milestones=s.lr_milestones, lr_gamma=s.lr_gamma, device=self.device,
                                state=state, on_epoch=on_epoch, progress=progress)
        except NonFiniteLoss as err:
            final, status, error = dict(err.finished), "failed", str(err)
            reporter.note(f"row {row.index} {row.label} seed {job.seed_index}: {error}")
        finally:
            progress.close()
        self.logs[job.name] = self._log_rows(job, row, final["log"])
        self.write_epoch_log()
        test_metrics = None
        if final["best_epoch"] > 0:
            model.load_state_dict(final["best_model"])
            test_metrics = evaluate(model, test.epoch_batches(0)).as_dict()
            torch_save({"model": final["best_model"], "arch": job.arch, "coder": job.coder,
                        "training": job.training, "settings": s.as_dict(), "best_epoch": final["best_epoch"],
                        "fingerprint": fingerprint}, weights_path)
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
            "fingerprint": fingerprint, "log": final["log"],
        }
        atomic_write_json(result_path, result)
        state_path.unlink(missing_ok=True)
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
            "device": str(self.device), "data": sorted({d.description for d in self.data.values()}),
            "tie_rule": TIE_RULE, "finished": finished,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_s": time.perf_counter() - self.started,
            "versions": {"hnn_bridge": __version__, "torch": torch.__version__,
                         "python": platform.python_version()},
            "rows": rows,
        }


def _seed_summary(job: dict[str, Any]) -> dict[str, Any]:
    test = job.get("test") or {}
    return {
        "seed_index": job["seed_index"], "seed": job["seed"], "status": job["status"], "error": job["error"],
        "test_acc": test.get("acc"), "test_acc_argmax": test.get("acc_argmax"),
        "test_tie_rate": test.get("tie_rate"), "test_silent_rate": test.get("silent_rate"),
        "best_epoch": job["best_epoch"], "best_val_acc": (job.get("best_val") or {}).get("acc"),
        "epochs": job["epochs"], "epochs_run": job["epochs_run"], "wall_s": job["wall_s"],
        "pretrain": job.get("pretrain"), "checkpoint": job.get("checkpoint"), "job": job["job"],
        "reused": bool(job.get("reused")),
    }


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
    """
    run = _Run(recipe, options)
    run.out.mkdir(parents=True, exist_ok=True)
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
    run.load_data()
    for d in run.data.values():
        options.reporter.note(f"data: {d.description}")
    if not options.resume:
        for stale in run.ckpt.glob("*.state.pt"):
            stale.unlink()
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
