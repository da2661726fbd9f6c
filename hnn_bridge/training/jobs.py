"""The jobs of a recipe run: one per (row, seed index), and the pure ANN that a separate
row trains first (§3.1), each named and seeded by what it trains.

A job's ``fingerprint`` is what its saved files were made with: a run reuses a finished
job, or resumes a saved state, only when the fingerprints agree. A pure ANN's
fingerprint leaves out the settings that do not change it (`SNN_ONLY`), so a pure-ANN
row and the separate rows of the same widths and settings share one job.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping

from ..notation import ann_twin, last_al, parse_arch
from ..recipe import RowSpec, Settings

__all__ = ["SNN_ONLY", "Job", "activation_for", "ann_job", "derive_seed", "row_job"]

#: Settings that do not change a pure ANN (it has no coder and no spiking layer).
SNN_ONLY = (
    "steps",
    "input_mode",
    "backend",
    "neuron",
    "init_rate",
    "logit_scale",
    "gaussian_sigma0",
    "bias_placement",
)


def derive_seed(base: int, index: int, *parts: str) -> int:
    """A 63-bit seed from the recipe seed, the seed index and what is trained."""
    text = ":".join(["hnn-bridge-seed", str(int(base)), str(int(index)), *parts])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def activation_for(coder: str | None, activation: str) -> str:
    """The AL activation: ``activation`` unless ``"auto"``, which is sigmoid for the
    Poisson coder (rates in (0, 1), §4.3.3) and ReLU otherwise."""
    if activation != "auto":
        return activation
    return "sigmoid" if coder == "poisson" else "relu"


def _short_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Job:
    """One training run: a pure ANN (``kind="ann"``) or an HNN row (``kind="hnn"``);
    ``twin`` is the pure ANN a separate row copies its ALs from."""

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
    twin: "Job | None" = None


def ann_job(row: RowSpec, arch: str, seed_index: int) -> Job:
    """The pure ANN ``arch`` trained with ``row``'s settings (the twin of a separate row,
    or a pure-ANN row itself)."""
    activation = activation_for(row.coder, row.settings.activation)
    s = row.settings
    seed = derive_seed(s.seed, seed_index, "ann", arch, activation)
    relevant = {k: v for k, v in s.identity().items() if k not in SNN_ONLY}
    relevant["activation"] = activation
    fingerprint = {"kind": "ann", "arch": arch, "settings": relevant, "seed_index": seed_index, "seed": seed}
    name = f"ann-{arch}-{activation}-{_short_hash(fingerprint)}-s{seed_index}"
    return Job("ann", name, arch, None, "simultaneous", activation, s, seed_index, seed, fingerprint, row)


def row_job(row: RowSpec, seed_index: int) -> Job:
    """The job of ``row`` for seed index ``seed_index`` (with its twin for separate learning)."""
    if row.coder is None:
        return ann_job(row, row.arch, seed_index)
    s = row.settings
    activation = activation_for(row.coder, s.activation)
    seed = derive_seed(s.seed, seed_index, "hnn", row.arch, row.coder, row.training)
    twin = None
    if row.training == "separate":
        twin = ann_job(row, ann_twin(parse_arch(row.arch)), seed_index)
    fingerprint = {
        "kind": "hnn",
        "arch": row.arch,
        "coder": row.coder,
        "training": row.training,
        "settings": {**s.identity(), "activation": activation},
        "seed_index": seed_index,
        "seed": seed,
        "twin": twin.fingerprint if twin else None,
    }
    if row.coder == "gaussian":  # mu passes the AL activation (coders.MuActivation); before, linear
        fingerprint["gaussian_mu"] = "activation"
        specs = parse_arch(row.arch)
        if s.dropout > 0 and specs[last_al(specs)].op != "input":  # dropout acts on mu only; before, also on
            fingerprint["gaussian_dropout"] = "mu"  # ln sigma (an input token's head never had dropout)
    return Job(
        "hnn",
        f"{row.slug}-s{seed_index}",
        row.arch,
        row.coder,
        row.training,
        activation,
        s,
        seed_index,
        seed,
        fingerprint,
        row,
        twin,
    )
