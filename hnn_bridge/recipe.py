"""Recipes: one TOML file per table of the paper, loaded and validated into frozen dataclasses.

A recipe lists the rows of one table (architecture, coder, training method, the paper's
accuracy) and every hyperparameter of the run (§4.1: 6:2:2 split, 100 epochs on MNIST,
150 on CIFAR-10; where the paper is silent, the reference values of Fang et al., 2020).
Shape of a file::

    [recipe]                      # name, title, paper_table, dataset, description
    [defaults]                    # every hyperparameter (see `Settings`)
    [defaults.neuron]             # IIR neuron constants (see `hnn_bridge.params.IIRParams`)
    [quick]                       # the --quick profile: overrides of [defaults]
    [cpu]                         # optional: the --profile cpu budget, overrides of [defaults]
    [[rows]]                      # arch, coder, training, paper, label; any [defaults] key

Precedence, lowest first: ``[defaults]``, the row's own keys, the profile's table
(``[quick]`` with ``--quick``, ``[cpu]`` with ``--profile cpu``), then the command line;
`Recipe.shadowed` names each row key that a profile replaces (the run prints it).
Every key is checked against the dataclass fields
and every row is built once (cheap, on the CPU) before any training starts, so a typo or
an impossible row fails at once with a `RecipeError` naming the file, the row and the key.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .builder import ACTIVATIONS, BIAS_PLACEMENTS, INPUT_MODES, NORMS, TRAININGS, NetworkConfig
from .coders import CODERS
from .data import DATASET_NAMES, IMAGE_FOLDER_PREFIX, describe_dataset
from .data.augment import AUGMENTS
from .errors import ArchError, ConfigError
from .notation import parse_arch
from .params import NEURON_KEYS, IIRParams
from .precision import PRECISIONS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "ACTIVATION_NAMES",
    "ADDED_LATER",
    "CODER_NAMES",
    "PROFILES",
    "Recipe",
    "RecipeError",
    "RowSpec",
    "Settings",
    "al_share",
    "build_row",
    "check_rows",
    "find_recipe",
    "list_recipes",
    "load_recipe",
    "parse_rows",
]

#: a row's coder: `hnn_bridge.coders.CODERS`, or "none" for a plain ANN
CODER_NAMES = (*CODERS, "none")
#: ``Settings.activation``: `hnn_bridge.builder.ACTIVATIONS`, or "auto" (by the coder)
ACTIVATION_NAMES = ("auto", *ACTIVATIONS)


class RecipeError(ValueError):
    """A recipe that cannot run: unknown name, bad TOML, unknown key, wrong type or an
    impossible row. The message names the file, the row and the key."""


@dataclass(frozen=True)
class Settings:
    """Every hyperparameter of one training run (§4.1 and Fang et al.'s reference setup).

    Attributes:
        dataset: name for `hnn_bridge.data.load_dataset` (``mnist``, ``mnist-5k``, ...), or
            ``imagefolder:PATH``: a folder of images of your own, one sub-folder per class.
        subset: use a stratified subset of this many pooled samples before the 6:2:2
            split (0: all); for quick profiles.
        split_seed: seed of the stratified 6:2:2 split (§4.1); fixed across seeds.
        epochs: training epochs; the best-validation epoch is evaluated on test (§4.1).
        batch_size: training mini-batch.
        eval_batch_size: mini-batch for validation and test (no effect on results).
        lr: Adam learning rate.
        lr_milestones: epochs after which the learning rate is multiplied by ``lr_gamma``
            (``MultiStepLR``; empty: constant).
        lr_gamma: the factor at each milestone.
        steps: time steps T of the spiking part.
        dropout: dropout probability between layers.
        seed: base seed; each (row, seed index) derives its own from it.
        input_mode: ``direct`` or ``axon`` (§4.2).
        backend: neuron implementation (`hnn_bridge.backends.BACKENDS`).
        activation: of the ALs: ``relu``, ``sigmoid`` or ``auto`` (sigmoid for Poisson
            coding, §4.3.3, else ReLU).
        neuron: IIR neuron constants of every SL.
        init_rate: when > 0, scale each SL's initial weights so that it fires at this
            rate on a batch of training images (`hnn_bridge.calibration`); 0: PyTorch's
            default initialisation as it is.
        norm: a key of `hnn_bridge.builder.NORMS`: ``none``, or ``batch``: a batch
            normalisation after every weight op of ALs and SLs; not in the paper.
        precision: ``32`` (float32), ``bf16`` or ``16``: `torch.autocast` of the forward
            pass (`hnn_bridge.precision`); the neuron's state stays float32.
        gaussian_sigma0: Gaussian coding: the initial sigma of the coder (the ln sigma
            half of the last AL's bias starts at its log; `hnn_bridge.builder.build`);
            0: PyTorch's default initialisation, sigma near 1.
        logit_scale: the cross entropy of a spiking output takes ``logit_scale`` x the
            spike counts as its logits (eq. 2b has 1); below 1 it asks for wider count
            margins for the same confidence, hence fewer tied top counts at small T.
        augment: ``none``, or ``crop-rotate``: Fang et al.'s random resized crop and
            rotation of training images (`hnn_bridge.data.augment`); not in the paper.
        bias_placement: ``after_filter`` (Fang et al.'s layers: each SL's bias, or its
            batch-norm shift, is added after the synapse filter) or ``before_filter``
            (filtered with the current; every run before 2026-12-06), see
            `hnn_bridge.builder.build`.
    """

    dataset: str = "mnist"
    subset: int = 0
    split_seed: int = 0
    epochs: int = 100
    batch_size: int = 64
    eval_batch_size: int = 500
    lr: float = 1e-4
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    steps: int = 25
    dropout: float = 0.3
    seed: int = 0
    input_mode: str = "direct"
    backend: str = "reference"
    activation: str = "auto"
    neuron: IIRParams = field(default_factory=IIRParams)
    init_rate: float = 0.0
    norm: str = "none"
    precision: str = "32"
    logit_scale: float = 1.0
    gaussian_sigma0: float = 0.0
    augment: str = "none"
    bias_placement: str = "after_filter"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        d["neuron"] = self.neuron.as_dict()
        return d

    def identity(self) -> dict[str, Any]:
        """`as_dict` for job fingerprints: a setting added after runs were first saved is
        left out while it has the value that reproduces the runs before it, so that
        their checkpoints still resume (`ADDED_LATER`)."""
        return {k: v for k, v in self.as_dict().items() if ADDED_LATER.get(k, object()) != v}

    def network(
        self, arch: str, coder: str | None, training: str, *, backend: str | None = None
    ) -> NetworkConfig:
        """The `NetworkConfig` of ``arch`` with ``coder`` and ``training`` under these
        settings: every setting that is a field of it, with "auto" activation as None,
        ``gaussian_sigma0`` for Gaussian coding only, and ``backend`` (if given) in place of
        the recipe's. Raises what `NetworkConfig` raises."""
        shared = {k: getattr(self, k) for k in _NETWORK_KEYS}
        shared["activation"] = None if self.activation == "auto" else self.activation
        shared["gaussian_sigma0"] = self.gaussian_sigma0 if coder == "gaussian" else 0.0
        shared["backend"] = backend or self.backend
        return NetworkConfig(arch, coder=coder, training=training, input_shape=self.input_shape, **shared)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``: of the named dataset, or read from an ``imagefolder:PATH``'s first image."""
        return describe_dataset(self.dataset)[0]

    @property
    def num_classes(self) -> int:
        """Class count: 10 for the named datasets, the class folders of an ``imagefolder:PATH``."""
        return describe_dataset(self.dataset)[1]


SETTING_KEYS = tuple(f.name for f in fields(Settings))
#: the settings that are fields of `NetworkConfig` too (`Settings.network`)
_NETWORK_KEYS = tuple(f.name for f in fields(NetworkConfig) if f.name in SETTING_KEYS)
#: settings added after results were first saved -> the value that means "as before"
ADDED_LATER: dict[str, Any] = {
    "norm": "none",
    "precision": "32",
    "logit_scale": 1.0,
    "gaussian_sigma0": 0.0,
    "augment": "none",
    "bias_placement": "before_filter",
}
AUGMENT_NAMES = AUGMENTS  # the augmentations, named in hnn_bridge.data.augment
ROW_KEYS = ("arch", "coder", "training", "paper", "label", "note")
RECIPE_KEYS = ("name", "title", "paper_table", "dataset", "description")
TOP_KEYS = ("recipe", "defaults", "quick", "cpu", "rows")
#: full: the paper's budget ([defaults]); quick: a smoke run ([quick]); cpu: a budget that
#: shows a CIFAR-10 table on a 2-core CPU in about 2 hours ([cpu], CIFAR recipes only)
PROFILES = ("full", "quick", "cpu")


@dataclass(frozen=True)
class RowSpec:
    """One row of a table: a network, how it is coded and trained, and its settings.

    ``index`` is 1-based (as ``--rows`` counts); ``coder`` is None for a pure ANN;
    ``paper`` is the paper's test accuracy in % (None where the paper has none);
    ``settings`` are resolved (defaults, row keys, quick profile, command line);
    ``overrides`` are the row's own hyperparameter keys as written in the file.
    """

    index: int
    arch: str
    coder: str | None
    training: str
    paper: float | None
    label: str
    settings: Settings
    overrides: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def slug(self) -> str:
        """A file-name-safe id: ``r02-A784-S500-S10-duplicate-separate``."""
        coder = self.coder or "ann"
        return f"r{self.index:02d}-{self.arch}-{coder}-{self.training}"

    @property
    def al_share(self) -> float:
        return al_share(self.arch)

    def as_dict(self) -> dict[str, Any]:
        return {
            "row": self.index,
            "label": self.label,
            "arch": self.arch,
            "coder": self.coder,
            "training": self.training,
            "paper": self.paper,
            "al_share": self.al_share,
            "note": self.note,
            "settings": self.settings.as_dict(),
        }


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. ``rows`` carry settings for the profile chosen by `configure`
    (initially: the full paper budget, no command-line overrides)."""

    name: str
    title: str
    paper_table: str
    dataset: str
    description: str
    source: str
    defaults: Mapping[str, Any]
    quick: Mapping[str, Any]
    rows: tuple[RowSpec, ...]
    profile: str = "full"
    overrides: Mapping[str, Any] = field(default_factory=dict)
    cpu: Mapping[str, Any] = field(default_factory=dict)

    def configure(
        self, *, quick: bool = False, profile: str | None = None, overrides: Mapping[str, Any] | None = None
    ) -> "Recipe":
        """The recipe with every row's settings resolved for a profile (`PROFILES`;
        ``quick=True`` is ``profile="quick"``) and command-line ``overrides`` (keys of
        `Settings`); raises `RecipeError` for a bad override or a profile the recipe lacks."""
        profile = profile or ("quick" if quick else "full")
        if profile not in PROFILES:
            raise RecipeError(
                f"{self.source}: unknown profile {profile!r}; choose one of {', '.join(PROFILES)}"
            )
        if profile == "cpu" and not self.cpu:
            raise RecipeError(
                f"{self.source}: recipe {self.name!r} has no [cpu] profile (only the CIFAR-10 tables "
                "need one: the MNIST tables run at the paper's budget on a CPU); use the full "
                "budget or --quick"
            )
        layer = self._profile_table(profile)
        overrides = dict(overrides or {})
        where = f"{self.source}: command-line overrides"
        for key in overrides:
            if key not in SETTING_KEYS:
                raise RecipeError(f"{where}: unknown setting {key!r}; known: {', '.join(SETTING_KEYS)}")
        overrides = _check_settings(self.source, "command-line overrides", overrides)
        rows = tuple(
            replace(
                row,
                settings=_resolve(
                    self.source, row, self.dataset, self.defaults, row.overrides, layer, overrides
                ),
            )
            for row in self.rows
        )
        return replace(self, rows=rows, profile=profile, overrides=overrides)

    def _profile_table(self, profile: str) -> Mapping[str, Any]:
        """The settings table of a profile (`PROFILES`); the full profile has none."""
        return {"full": {}, "quick": self.quick, "cpu": self.cpu}[profile]

    def shadowed(self) -> list[str]:
        """One line per row key that the configured profile's table sets to another value.
        The profile takes precedence (a smoke profile cuts every row's budget), so such a
        row value is not used at this profile; a key that the command line sets overrides
        both and is left out. Empty for the full profile."""
        layer = self._profile_table(self.profile)
        profile_neuron = layer.get("neuron", {})
        lines = []
        for row in self.rows:
            pairs = [(k, v, layer[k]) for k, v in row.overrides.items() if k != "neuron" and k in layer]
            pairs += [
                (f"neuron.{k}", v, profile_neuron[k])
                for k, v in row.overrides.get("neuron", {}).items()
                if k in profile_neuron
            ]
            lines += [
                f"row {row.index} ({row.arch}): {key} = {mine!r} of the row is replaced by the "
                f"[{self.profile}] profile's {theirs!r}"
                for key, mine, theirs in pairs
                if mine != theirs and key not in self.overrides
            ]
        return lines

    def select(self, rows: Sequence[int] | None) -> "Recipe":
        """Keep only the rows with these 1-based indices (all when None)."""
        if rows is None:
            return self
        known = {r.index for r in self.rows}
        bad = [i for i in rows if i not in known]
        if bad:
            raise RecipeError(f"{self.source}: no row {bad[0]}; the recipe has rows 1..{len(self.rows)}")
        keep = set(rows)
        return replace(self, rows=tuple(r for r in self.rows if r.index in keep))

    @classmethod
    def single(
        cls,
        arch: str,
        *,
        coder: str | None,
        training: str,
        base: "Recipe",
        row_keys: Mapping[str, Any] | None = None,
        name: str = "train",
    ) -> "Recipe":
        """An ad-hoc one-row recipe (`hnn-bridge train`) that inherits the hyperparameters
        and quick profile of ``base`` (the paper recipe of the dataset)."""
        row_keys = dict(row_keys or {})
        raw = {"arch": arch, "coder": "none" if coder is None else coder, "training": training, **row_keys}
        source = f"<train {arch}>"
        dataset = str(row_keys.get("dataset", base.dataset))
        row = _parse_row(source, 1, raw, dataset, base.defaults, labels={})
        recipe = cls(
            name=name,
            title=f"{arch}, coder {coder or 'none'}, {training} training",
            paper_table="",
            dataset=base.dataset,
            description="",
            source=source,
            defaults=base.defaults,
            quick=base.quick,
            rows=(row,),
        )
        return recipe.configure()


# ---------------------------------------------------------------------------- validation


def _where(source: str, section: str, key: str | None = None) -> str:
    return f"{source}: {section}" + (f": key {key!r}" if key is not None else "")


def _row_where(source: str, index: int, arch: Any) -> str:
    return f"row {index} ({arch})" if isinstance(arch, str) else f"row {index}"


def _int(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecipeError(f"{where}: expected an integer, got {value!r}")
    if value < minimum:
        raise RecipeError(f"{where}: must be >= {minimum}, got {value!r}")
    return value


def _float(
    value: Any, where: str, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RecipeError(f"{where}: expected a number, got {value!r}")
    value = float(value)
    if value < lo or (lo_open and value == lo) or value > hi or (hi_open and value == hi):
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        raise RecipeError(f"{where}: must be in {left}{lo:g}, {hi:g}{right}, got {value!r}")
    return value


def _choice(value: Any, where: str, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise RecipeError(f"{where}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _dataset(value: Any, where: str) -> str:
    """A dataset name of `hnn_bridge.data.DATASET_NAMES`, or ``imagefolder:PATH`` naming a
    folder of images that exists (`hnn_bridge.data.load_dataset`)."""
    if isinstance(value, str) and value.startswith(IMAGE_FOLDER_PREFIX):
        try:
            describe_dataset(value)
        except (FileNotFoundError, ValueError) as err:
            raise RecipeError(f"{where}: {err}") from None
        return value
    return _choice(value, where, (*DATASET_NAMES, f"{IMAGE_FOLDER_PREFIX}PATH"))


def _check_setting(key: str, value: Any, where: str) -> Any:
    """Validate one hyperparameter value (``where`` names the file, section and key)."""
    from .backends import BACKENDS

    if key == "dataset":
        return _dataset(value, where)
    if key in ("subset", "split_seed", "seed"):
        return _int(value, where, 0)
    if key in ("epochs", "batch_size", "eval_batch_size", "steps"):
        return _int(value, where, 1)
    if key == "lr":
        return _float(value, where, 0.0, 10.0, lo_open=True)
    if key == "lr_gamma":
        return _float(value, where, 0.0, 1.0, lo_open=True)
    if key == "logit_scale":
        return _float(value, where, 0.0, 100.0, lo_open=True)
    if key == "gaussian_sigma0":
        return _float(value, where, 0.0, 100.0)
    if key in ("dropout", "init_rate"):
        return _float(value, where, 0.0, 1.0, hi_open=True)
    if key == "lr_milestones":
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{where}: expected a list of epochs, e.g. [50], got {value!r}")
        return tuple(_int(v, where, 1) for v in value)
    if key == "input_mode":
        return _choice(value, where, INPUT_MODES)
    if key == "backend":
        return _choice(value, where, BACKENDS)
    if key == "activation":
        return _choice(value, where, ACTIVATION_NAMES)
    if key == "norm":
        return _choice(value, where, NORMS)
    if key == "augment":
        return _choice(value, where, AUGMENT_NAMES)
    if key == "bias_placement":
        return _choice(value, where, BIAS_PLACEMENTS)
    if key == "precision":  # 32 and 16 may be written as TOML integers
        return _choice(
            str(value) if isinstance(value, int) and not isinstance(value, bool) else value, where, PRECISIONS
        )
    if key == "neuron":
        if not isinstance(value, Mapping):
            raise RecipeError(f"{where}: expected a table of neuron constants, got {value!r}")
        for name in value:
            if name not in NEURON_KEYS:
                raise RecipeError(
                    f"{where[: -len(repr(key))]}'neuron.{name}': unknown neuron setting; "
                    f"known: {', '.join(sorted(NEURON_KEYS))}"
                )
        return dict(value)
    raise RecipeError(f"{where}: unknown setting; known: {', '.join(SETTING_KEYS)}")  # pragma: no cover


def _check_section(source: str, section: str, table: Any, allowed: Sequence[str]) -> dict[str, Any]:
    if not isinstance(table, Mapping):
        raise RecipeError(f"{_where(source, section)}: expected a table, got {type(table).__name__}")
    for key in table:
        if key not in allowed:
            raise RecipeError(
                f"{_where(source, section, key)}: unknown key; known keys: {', '.join(allowed)}"
            )
    return dict(table)


def _check_settings(source: str, section: str, table: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _check_setting(k, v, _where(source, section, k)) for k, v in table.items()}


def _resolve(
    source: str,
    row: RowSpec | None,
    dataset: str,
    *layers: Mapping[str, Any],
) -> Settings:
    """Merge setting layers (lowest first) into `Settings`; neuron tables merge key by key."""
    values: dict[str, Any] = {"dataset": dataset}
    neuron: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key == "neuron":
                neuron.update(value)
            else:
                values[key] = value
    section = _row_where(source, row.index, row.arch) if row is not None else "[defaults]"
    try:
        params = IIRParams(**neuron)
    except (TypeError, ValueError) as err:
        raise RecipeError(f"{_where(source, section, 'neuron')}: {err}") from None
    return Settings(**values, neuron=params)


def _parse_row(
    source: str,
    index: int,
    raw: Any,
    dataset: str,
    defaults: Mapping[str, Any],
    labels: dict[str, int],
) -> RowSpec:
    if not isinstance(raw, Mapping):
        raise RecipeError(f"{source}: row {index}: expected a table ([[rows]]), got {raw!r}")
    section = _row_where(source, index, raw.get("arch"))
    allowed = (*ROW_KEYS, *SETTING_KEYS)
    for key in raw:
        if key not in allowed:
            raise RecipeError(
                f"{_where(source, section, key)}: unknown key; a row takes {', '.join(ROW_KEYS)} "
                f"or any setting of [defaults] ({', '.join(SETTING_KEYS)})"
            )
    for key in ("arch", "coder", "training"):
        if key not in raw:
            raise RecipeError(
                f"{_where(source, section, key)}: missing (every row needs arch, coder and training)"
            )
    arch = raw["arch"]
    if not isinstance(arch, str):
        raise RecipeError(
            f"{_where(source, section, 'arch')}: expected a string such as 'A784-S500-S10', got {arch!r}"
        )
    try:
        specs = parse_arch(arch)
    except ArchError as err:
        raise RecipeError(f"{_where(source, section, 'arch')}: {err}") from None
    arch = "-".join(s.token for s in specs)
    coder = _choice(raw["coder"], _where(source, section, "coder"), CODER_NAMES)
    training = _choice(raw["training"], _where(source, section, "training"), TRAININGS)
    paper = raw.get("paper")
    if paper is not None:
        paper = _float(paper, _where(source, section, "paper"), 0.0, 100.0)
    for key in ("label", "note"):
        if key in raw and not isinstance(raw[key], str):
            raise RecipeError(f"{_where(source, section, key)}: expected a string, got {raw[key]!r}")
    label = raw.get("label") or arch
    if label in labels:
        raise RecipeError(
            f"{_where(source, section, 'label')}: label {label!r} is already used by row {labels[label]}; "
            "give one of them a distinct 'label'"
        )
    labels[label] = index
    overrides = {k: v for k, v in raw.items() if k in SETTING_KEYS}
    overrides = _check_settings(source, section, overrides)
    row = RowSpec(
        index,
        arch,
        None if coder == "none" else coder,
        training,
        paper,
        label,
        Settings(),
        overrides,
        raw.get("note", ""),
    )
    return replace(row, settings=_resolve(source, row, dataset, defaults, overrides))


def _parse(source: str, data: Mapping[str, Any]) -> Recipe:
    for key in data:
        if key not in TOP_KEYS:
            raise RecipeError(
                f"{_where(source, 'top level', key)}: unknown table; known: {', '.join(TOP_KEYS)}"
            )
    for key in ("recipe", "rows"):
        if key not in data:
            raise RecipeError(
                f"{_where(source, 'top level', key)}: missing (a recipe needs [recipe] and [[rows]])"
            )
    meta = _check_section(source, "[recipe]", data["recipe"], RECIPE_KEYS)
    for key in ("name", "dataset"):
        if key not in meta:
            raise RecipeError(f"{_where(source, '[recipe]', key)}: missing")
    for key, value in meta.items():
        if not isinstance(value, str):
            raise RecipeError(f"{_where(source, '[recipe]', key)}: expected a string, got {value!r}")
    dataset = _dataset(meta["dataset"], _where(source, "[recipe]", "dataset"))
    defaults = _check_settings(
        source, "[defaults]", _check_section(source, "[defaults]", data.get("defaults", {}), SETTING_KEYS)
    )
    quick = _check_settings(
        source, "[quick]", _check_section(source, "[quick]", data.get("quick", {}), SETTING_KEYS)
    )
    cpu = _check_settings(source, "[cpu]", _check_section(source, "[cpu]", data.get("cpu", {}), SETTING_KEYS))
    _resolve(source, None, dataset, defaults)  # the neuron table of [defaults] alone must be valid
    raw_rows = data["rows"]
    if not isinstance(raw_rows, list) or not raw_rows:
        raise RecipeError(f"{_where(source, '[[rows]]')}: expected at least one [[rows]] table")
    labels: dict[str, int] = {}
    rows = tuple(_parse_row(source, i, raw, dataset, defaults, labels) for i, raw in enumerate(raw_rows, 1))
    recipe = Recipe(
        name=meta["name"],
        title=meta.get("title", meta["name"]),
        paper_table=meta.get("paper_table", ""),
        dataset=dataset,
        description=meta.get("description", ""),
        source=source,
        defaults=defaults,
        quick=quick,
        rows=rows,
        cpu=cpu,
    )
    recipe.configure(quick=True)  # the other profiles must resolve too
    if cpu:
        recipe.configure(profile="cpu")
    return recipe


# ---------------------------------------------------------------------------- building


def al_share(arch: str) -> float:
    """Share of artificial layers: A tokens over all tokens, pooling not counted (the
    MLP input token counts: S784-S500-S10 is 0, A784-S500-S10 1/3, A784-A500-A10 1)."""
    specs = [s for s in parse_arch(arch) if s.op != "pool"]
    return sum(s.kind == "A" for s in specs) / len(specs)


def build_row(row: RowSpec, *, backend: str | None = None):  # -> HybridNet
    """Build the network of ``row`` with its settings (raises ArchError/ConfigError)."""
    from .builder import build

    return build(row.settings.network(row.arch, row.coder, row.training, backend=backend))


def check_rows(recipe: Recipe) -> None:
    """Build every row (and the pure ANN of every separately trained row) once, so that an
    impossible row fails before any training; raises `RecipeError` naming file, row and keys."""
    from .notation import ann_twin

    for row in recipe.rows:
        section = _row_where(recipe.source, row.index, row.arch)
        s = row.settings
        try:
            specs = parse_arch(row.arch, s.input_shape)
        except ArchError as err:
            raise RecipeError(
                f"{_where(recipe.source, section, 'arch')}: {err} (dataset {s.dataset})"
            ) from None
        if specs[-1].width != s.num_classes:
            raise RecipeError(
                f"{_where(recipe.source, section, 'arch')}: the output layer {specs[-1].token!r} has "
                f"{specs[-1].width} units but {s.dataset} has {s.num_classes} classes"
            )
        try:
            build_row(row)
            if row.training == "separate":
                build_row(replace(row, arch=ann_twin(specs), coder=None, training="simultaneous"))
        except ArchError as err:
            raise RecipeError(f"{_where(recipe.source, section, 'arch')}: {err}") from None
        except (ConfigError, ValueError) as err:
            raise RecipeError(
                f"{recipe.source}: {section}: keys 'coder' = {row.coder or 'none'!r}, "
                f"'training' = {row.training!r}: impossible row: {err}"
            ) from None


# ---------------------------------------------------------------------------- finding files


def list_recipes() -> list[str]:
    """Names of the shipped recipes (``recipes/*.toml`` installed as `hnn_bridge.recipes`)."""
    folder = resources.files("hnn_bridge.recipes")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def find_recipe(name_or_path: str | Path) -> tuple[str, str]:
    """(source, text) of a shipped recipe name or a path to a TOML file."""
    text_name = str(name_or_path)
    path = Path(text_name).expanduser()
    if text_name.endswith(".toml") or path.is_file() or "/" in text_name:
        if not path.is_file():
            raise RecipeError(f"{path}: no such recipe file")
        try:
            return str(path), path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise RecipeError(f"{path}: cannot read the recipe: {err}") from None
    if text_name not in list_recipes():
        raise RecipeError(
            f"unknown recipe {text_name!r}; shipped recipes: {', '.join(list_recipes())} "
            "(see `hnn-bridge recipe --list`), or pass the path of a .toml file"
        )
    resource = resources.files("hnn_bridge.recipes").joinpath(f"{text_name}.toml")
    return f"recipes/{text_name}.toml", resource.read_text(encoding="utf-8")


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load, validate and return a recipe (shipped name such as ``table1a``, or a path).

    Raises `RecipeError` for an unknown name, bad TOML, unknown keys or wrong types. Rows
    are not built here; call `check_rows` on the configured recipe before training.
    """
    source, text = find_recipe(name_or_path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{source}: invalid TOML: {err}") from None
    return _parse(source, data)


def parse_rows(text: str | None, count: int) -> list[int] | None:
    """``--rows`` syntax: ``1,3-5`` (1-based, inclusive ranges); None means all rows."""
    if text is None or not text.strip():
        return None
    picked: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                values = list(range(lo, hi + 1))
            else:
                values = [int(part)]
        except ValueError:
            raise RecipeError(f"--rows: {part!r} is not a row number or range such as 2-4") from None
        for v in values:
            if not 1 <= v <= count:
                raise RecipeError(f"--rows: row {v} does not exist; the recipe has rows 1..{count}")
            if v not in picked:
                picked.append(v)
        if not values:
            raise RecipeError(f"--rows: empty range {part!r}")
    return sorted(picked)
