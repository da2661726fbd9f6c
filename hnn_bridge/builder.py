"""`build`: architecture string -> hybrid network (ALs, coder, SLs; paper §3, Fig. 2).

The network maps images [B, C, H, W] to class scores [B, classes]: spike counts summed
over T (the eq. 2 readout) when the output layer is spiking, logits when it is
artificial. ALs run once per image; the coder adds the time axis; SLs run time-first on
[T, B, ...] with every weight op applied to all T x B rows in one call.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .coders import CODERS, Coder, MuActivation, make_coder
from .errors import ConfigError
from .functional.iir import Coefficients
from .kernels import spike_conv
from .kernels.bn_neuron import bn_iir_spikes, fusable, fuse_bn_enabled
from .neuron import IIRNeuron, PostFilterBias, SynapseFilter
from .notation import LayerSpec, last_al, parse_arch
from .params import IIRParams
from .pooling import MaxPool2d


def _batch_norm(shape: tuple[int, ...]) -> nn.Module:
    """Batch normalisation of a weight op's output ``shape`` per sample: over features
    (dense) or channels (conv); in an SL its statistics are over all T x B rows."""
    return nn.BatchNorm1d(shape[0]) if len(shape) == 1 else nn.BatchNorm2d(shape[0])


# The option vocabularies of a network, each defined here once: `recipe`, the command line
# and the docs read them from here.
#: §3.1: all layers from scratch, or the pre-trained ANN's ALs frozen and only SLs trained
TRAININGS = ("simultaneous", "separate")
#: the normalisation after every weight op -> a module for the op's output shape per
#: sample (None: no normalisation); not in the paper
NORMS: dict[str, Callable[[tuple[int, ...]], nn.Module] | None] = {"none": None, "batch": _batch_norm}
#: where a spiking layer's bias (or batch-norm shift) acts: after the synapse filter, as in
#: Fang et al.'s layers (I = W F + b), or on the current before it (every run before 2026-12-06)
BIAS_PLACEMENTS = ("after_filter", "before_filter")
#: §4.2: the first SL takes the coded values as its current (direct) or through its synapse filter
INPUT_MODES = ("direct", "axon")
#: the activation of the ALs
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid}


class Default(enum.Enum):
    """A keyword left out where its value depends on the network (not None, which is a
    value): `NetworkConfig`'s ``coder``."""

    #: duplicate for a network with spiking layers, no coder for a plain ANN (where an
    #: explicit coder is an error)
    CODER = "duplicate, or none for a plain ANN"


@dataclass(frozen=True)
class NetworkConfig:
    """What `build` makes a network from: the architecture and every option, validated.

    Construction checks every rule and raises `ConfigError` (a `ValueError`) naming the
    one broken, or `ArchError` for a malformed architecture; the fields then hold the
    resolved values (``arch`` the canonical text, ``coder`` None for a plain ANN,
    ``activation`` chosen, ``neuron`` an `IIRParams`).

    Attributes:
        arch: e.g. ``"A784-A500-S10"`` (see `hnn_bridge.notation`), or its layer specs.
        coder: one of `hnn_bridge.coders.CODERS` (§3.2); None for an all-A spec, which is
            also what leaving it out means there (`Default.CODER`: else duplicate).
        steps: time steps T of the spiking part.
        backend: neuron implementation, see `hnn_bridge.backends.BACKENDS`.
        input_shape: (C, H, W) of one image.
        input_mode: ``"direct"``: the first SL takes the coded values as its current
            unfiltered (§4.2); ``"axon"``: through the synapse filter, as a PSP.
        neuron: `IIRParams` or a dict of its keyword arguments for every SL.
        training: ``"simultaneous"`` or ``"separate"`` (§3.1); checked against the coder.
        activation: of the ALs, ``"relu"`` or ``"sigmoid"``; None: sigmoid for the
            Poisson coder (rates in (0, 1), §4.3.3), else ReLU.
        dropout: probability between layers (time-shared mask in the spiking part).
        norm: a key of `NORMS`: ``"none"``, or ``"batch"``: a batch normalisation after
            every weight op of ALs and SLs except an artificial output layer (the logits);
            in SLs its statistics are over all T x B rows (shared over time). Not in the
            paper: the CIFAR-10 recipes need it for the deep spiking CNNs to learn.
        gaussian_sigma0: Gaussian coding only: when > 0, the ln sigma half of the last
            AL's bias starts at ln(gaussian_sigma0), so that the coder starts close to
            duplicate coding and learns its noise; 0 keeps PyTorch's default
            initialisation (sigma near 1 everywhere). The paper names none.
        bias_placement: where each SL's bias (or batch-norm shift) enters the neuron:
            ``"after_filter"``, Fang et al.'s form (I = W F + b; their layers, on which
            the paper's experiments ran), or ``"before_filter"``, inside the filtered
            current, as every run before 2026-12-06 was built (kept so that those
            checkpoints load and give their numbers). The same network where an SL has no
            filter (direct input).
    """

    arch: str | Sequence[LayerSpec]
    coder: str | None | Default = Default.CODER
    steps: int = 25
    backend: str = "reference"
    input_shape: Sequence[int] = (1, 28, 28)
    input_mode: str = "direct"
    neuron: IIRParams | Mapping[str, Any] | None = None
    training: str = "simultaneous"
    activation: str | None = None
    dropout: float = 0.0
    norm: str = "none"
    gaussian_sigma0: float = 0.0
    bias_placement: str = "after_filter"
    #: the parsed ``arch``
    specs: tuple[LayerSpec, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # each step checks its rules in the order that names the first one broken
        self._resolve_arch()
        self._resolve_coder()
        self._check_options()
        self._check_coder_rules()

    def _set(self, name: str, value: Any) -> None:
        """Store a resolved value (the dataclass is frozen to everyone else)."""
        object.__setattr__(self, name, value)

    def _resolve_arch(self) -> None:
        """``input_shape`` as ints, ``arch`` parsed against it, and the neuron's constants."""
        self._set("input_shape", tuple(int(s) for s in self.input_shape))
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ConfigError(f"input_shape must be (C, H, W) with positive sizes, got {self.input_shape}")
        arch = self.arch
        self._set("specs", tuple(parse_arch(arch, self.input_shape) if isinstance(arch, str) else arch))
        self._set("arch", "-".join(s.token for s in self.specs))
        self._set("neuron", IIRParams.from_any(self.neuron))

    def _resolve_coder(self) -> None:
        """None for a plain ANN, duplicate where left out (`Default.CODER`), else checked."""
        coder, text = self.coder, self.arch
        if not any(s.spiking for s in self.specs):
            if coder is not None and coder is not Default.CODER:
                raise ConfigError(
                    f"{text!r} is all artificial (a plain ANN): it has no coder; pass coder=None"
                )
            coder = None
        elif coder is None:
            raise ConfigError(f"{text!r} has spiking layers: choose a coder ({', '.join(CODERS)})")
        elif coder is Default.CODER:
            coder = "duplicate"
        else:
            _check_choice("coder", coder, CODERS)
        self._set("coder", coder)

    def _check_options(self) -> None:
        """Each option on its own: a known name, a number in range; the activation chosen."""
        from .backends import BACKENDS

        training, steps, dropout = self.training, self.steps, self.dropout
        if training not in TRAININGS:
            raise ConfigError(f"unknown training method {training!r}; choose one of {', '.join(TRAININGS)}")
        _check_choice("input_mode", self.input_mode, INPUT_MODES)
        _check_choice("backend", self.backend, BACKENDS)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"steps (T) must be an integer >= 1, got {steps!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")
        _check_choice("norm", self.norm, NORMS)
        _check_choice("bias_placement", self.bias_placement, BIAS_PLACEMENTS)
        self._set("activation", self.activation or ("sigmoid" if self.coder == "poisson" else "relu"))
        _check_choice("activation", self.activation, ACTIVATIONS)

    def _check_coder_rules(self) -> None:
        """The coder against the training method and the layers (§3.1-3.3)."""
        coder, training, sigma0, text = self.coder, self.training, self.gaussian_sigma0, self.arch
        if coder == "gaussian":
            if training == "separate":
                raise ConfigError(
                    "gaussian coding cannot use separate training: its last AL has twice the units "
                    "(mu, ln sigma), so the pre-trained ANN's weights do not fit (§3.3); use simultaneous"
                )
            if not any(s.kind == "A" for s in self.specs):
                raise ConfigError(
                    f"gaussian coding needs an artificial layer to produce (mu, ln sigma); {text!r} is all "
                    "spiking and codes the input itself: use duplicate or poisson"
                )
        if sigma0 < 0 or not math.isfinite(sigma0):
            raise ConfigError(
                f"gaussian_sigma0 must be a finite number >= 0 (0: default init), got {sigma0!r}"
            )
        if sigma0 > 0 and coder != "gaussian":
            raise ConfigError(f"gaussian_sigma0 = {sigma0!r} needs coder='gaussian' (the coder is {coder!r})")
        if (
            coder == "poisson"
            and training == "simultaneous"
            and any(s.has_weights and not s.spiking for s in self.specs)
        ):
            raise ConfigError(
                "poisson coding is not differentiable, so its ALs cannot be trained with the SLs: "
                "use training='separate' (pre-trained, frozen ALs) or an all-S spec (§3.1, §3.3)"
            )
        if training == "separate" and coder is None:
            raise ConfigError(f"{text!r} is a pure ANN: separate training needs spiking layers")

    def settings(self) -> dict[str, Any]:
        """The options as plain data (`HybridNet.settings`): every field but ``arch``, with
        ``steps`` None for a plain ANN and ``gaussian_sigma0`` only where it is > 0."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.init and f.name not in _NOT_SETTINGS}
        out["steps"] = self.steps if self.coder else None
        out["neuron"] = self.neuron.as_dict()
        if self.gaussian_sigma0 > 0:
            out["gaussian_sigma0"] = self.gaussian_sigma0
        return out


# `NetworkConfig.settings` leaves these out (gaussian_sigma0 is added where it is set)
_NOT_SETTINGS = ("arch", "gaussian_sigma0")


def _check_choice(name: str, value: Any, choices: Iterable[str]) -> None:
    if value not in tuple(choices):
        raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


@dataclass(frozen=True)
class LayerInfo:
    """What `describe` and the operation counter need to know about one token."""

    token: str
    part: str  # "input", "AL", "SL" or "pool"
    op: str
    out_shape: tuple[int, ...]
    params: int
    macs: int  # multiply-accumulates of one evaluation of the weight op, per image
    fed_by: str  # "values" or "spikes": what reaches this layer's weights
    per_step: bool  # evaluated at each of the T steps (else once per image)


class TimeSharedDropout(nn.Module):
    """Dropout on [T, B, ...] whose mask is drawn once and shared by all T steps."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        mask = torch.empty_like(x[0]).bernoulli_(1.0 - self.p).div_(1.0 - self.p)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SeqOp(nn.Module):
    """Apply a per-sample module to all T x B rows of [T, B, ...] in one call."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        steps, batch = x.shape[:2]
        y = self.module(x.reshape(steps * batch, *x.shape[2:]))
        return y.reshape(steps, batch, *y.shape[1:])


class HybridNet(nn.Module):
    """ALs -> coder -> SLs. Built by `build`; attributes:

    - ``al``: `nn.Sequential` of the artificial part, run once per image on [B, ...];
    - ``coder``: the `Coder` (None for a pure ANN);
    - ``sl``: `nn.Sequential` of the spiking part on [T, B, ...];
    - ``const_input``: the first SL weight op runs once per image and its result is
      broadcast over T (duplicate coding: the coded train is constant in time);
    - ``layers``: a `LayerInfo` per token;
    - ``weight_ops``: layer index (into ``layers``) -> its Linear/Conv2d, whose input is
      what feeds that layer (hooks on it measure presynaptic firing rates);
    - ``neurons``: SL index (into ``layers``) -> its neuron module (spikes [T, B, ...]);
    - ``filters``: SL index -> its `SynapseFilter` where the filter runs apart from the
      neuron (``bias_placement="after_filter"``; that neuron then has synapse "none");
      `synapse_params` gives every SL's effective neuron constants either way;
    - ``biases``: SL index -> its `PostFilterBias` (after_filter without a norm);
    - ``config``: the `NetworkConfig` it was built from (``settings`` is its plain data).
    """

    def __init__(
        self,
        arch: str,
        al: nn.Sequential,
        coder: Coder | None,
        first_op: nn.Module | None,
        sl: nn.Sequential,
        layers: list[LayerInfo],
        settings: dict[str, Any],
    ) -> None:
        super().__init__()
        self.arch = arch
        self.al = al
        self.coder = coder
        self.first_op = first_op
        self.sl = sl
        self.layers = layers
        self.weight_ops: dict[int, nn.Module] = {}
        self.neurons: dict[int, nn.Module] = {}
        self.filters: dict[int, SynapseFilter] = {}
        self.biases: dict[int, PostFilterBias] = {}
        self.settings = settings
        self.config: NetworkConfig | None = None

    def synapse_params(self, index: int) -> IIRParams:
        """The neuron constants of SL ``index`` (into ``layers``) as one neuron: with its
        synapse filter where that runs as a module of its own."""
        if index in self.filters:
            return self.filters[index].params
        return self.neurons[index].params

    @property
    def steps(self) -> int | None:
        return None if self.coder is None else self.coder.steps

    @property
    def spiking_output(self) -> bool:
        return self.coder is not None

    def forward(self, x: Tensor) -> Tensor:
        a = self.al(x)
        if self.coder is None:
            return a
        if self.first_op is not None:  # constant train: weigh once, broadcast over T
            current = self.first_op(a)
            seq = current.unsqueeze(0).expand(self.coder.steps, *current.shape)
        else:
            seq = self.coder(a)
        return self._spiking(seq).sum(0)

    def _spiking(self, seq: Tensor) -> Tensor:
        """``self.sl(seq)``; where `bn_neuron.fusable` says so, a ``SeqOp(BatchNorm)``
        directly before an `IIRNeuron` runs with it as one pass (`bn_neuron.bn_iir_spikes`),
        the same modules and parameters (``HNN_BRIDGE_FUSE_BN``). With
        ``HNN_BRIDGE_SPARSE_CONV=1`` a ``SeqOp(Conv2d)`` 3x3 fed by binary spikes
        (`_spike_fed_convs`) runs through `spike_conv.SpikeConv2d` where
        `spike_conv.applies`."""
        pairs = _fusable_pairs(self.sl) if fuse_bn_enabled() else ()
        convs = _spike_fed_convs(self.sl, self.neurons.values()) if spike_conv.sparse_conv_enabled() else ()
        if not (pairs or convs) or not isinstance(seq, Tensor) or _hooked(self.sl) or _global_hooks():
            return self.sl(seq)  # (not a tensor: an fx Proxy, tracing)
        modules, i = list(self.sl), 0
        while i < len(modules):
            if i in pairs and fusable(seq, modules[i].module):
                params = modules[i + 1].params
                k = Coefficients.of(params)
                seq = bn_iir_spikes(seq, modules[i].module, k, detach_reset=params.detach_reset)
                i += 2
            elif i in convs and spike_conv.applies(seq, modules[i].module):
                seq = spike_conv.seq_spike_conv(seq, modules[i].module)
                i += 1
            else:
                seq = modules[i](seq)
                i += 1
        return seq

    def freeze_als(self) -> None:
        """Separate learning (§3.1): fix the AL weights; they stay in eval mode."""
        for p in self.al.parameters():
            p.requires_grad_(False)
        self._als_frozen = True

    def train(self, mode: bool = True) -> "HybridNet":
        super().train(mode)
        if getattr(self, "_als_frozen", False):
            self.al.eval()
        return self

    def load_als_from(self, ann: "HybridNet") -> None:
        """Copy the AL weights of the pre-trained pure ANN of the same widths."""
        source = ann.al.state_dict()
        target = self.al.state_dict()
        missing = [k for k in target if k not in source or source[k].shape != target[k].shape]
        if missing:
            raise ConfigError(
                f"cannot copy the AL weights of {ann.arch!r} into {self.arch!r}: "
                f"no matching tensor for {', '.join(missing)}"
            )
        self.al.load_state_dict({k: source[k] for k in target})


def _hooked(module: nn.Module) -> bool:
    return any(
        getattr(module, name, None)
        for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    )


def _global_hooks() -> bool:
    from torch.nn.modules import module as m

    return any(
        getattr(m, name, None)
        for name in (
            "_global_forward_hooks",
            "_global_forward_pre_hooks",
            "_global_backward_hooks",
            "_global_backward_pre_hooks",
        )
    )


def _fusable_pairs(sl: nn.Sequential) -> set[int]:
    """Indices i of ``sl`` where ``SeqOp(BatchNorm1d/2d)`` is directly followed by an
    `IIRNeuron` without a bias, none of the three hooked."""
    modules = list(sl)
    return {
        i
        for i, (m, nxt) in enumerate(zip(modules, modules[1:]))
        if type(m) is SeqOp
        and type(m.module) in (nn.BatchNorm1d, nn.BatchNorm2d)
        and type(nxt) is IIRNeuron
        and nxt.bias is None
        and not any(_hooked(x) for x in (m, m.module, nxt))
    }


def _spike_fed_convs(sl: nn.Sequential, neurons: Iterable[nn.Module]) -> set[int]:
    """Indices i of ``sl`` where an unhooked ``SeqOp(Conv2d)`` reads binary spikes as of
    now: a neuron's output through only max pooling and `TimeSharedDropout` that does not
    scale (evaluation mode or p = 0). Not the first SL's op: coded values feed it."""
    modules, spiking = list(sl), {id(n) for n in neurons}
    found = set()
    for i, m in enumerate(modules):
        if type(m) is not SeqOp or type(m.module) is not nn.Conv2d or _hooked(m) or _hooked(m.module):
            continue
        j = i - 1
        while j >= 0 and (
            (type(modules[j]) is SeqOp and isinstance(modules[j].module, nn.MaxPool2d))
            or (type(modules[j]) is TimeSharedDropout and (not modules[j].training or modules[j].p == 0.0))
        ):
            j -= 1
        if j >= 0 and id(modules[j]) in spiking:
            found.add(i)
    return found


def _norm_layer(norm: str, shape: tuple[int, ...]) -> nn.Module | None:
    """The normalisation after a weight op whose output per sample has ``shape``."""
    make = NORMS[norm]
    return None if make is None else make(shape)


@dataclass
class _Assembly:
    """What `build` has laid so far, token by token: one method per kind of token.

    For ``norm="none"`` the modules (and so the state_dict keys) are exactly those of
    the builder before normalisation existed, so older checkpoints still load.
    """

    config: NetworkConfig
    coder_module: Coder | None
    shape: tuple[int, ...] = ()
    al: list[nn.Module] = field(default_factory=list)
    sl: list[nn.Module] = field(default_factory=list)
    first_op: nn.Module | None = None
    weight_ops: dict[int, nn.Module] = field(default_factory=dict)
    neurons: dict[int, nn.Module] = field(default_factory=dict)
    filters: dict[int, SynapseFilter] = field(default_factory=dict)
    biases: dict[int, PostFilterBias] = field(default_factory=dict)
    layers: list[LayerInfo] = field(default_factory=list)

    def __post_init__(self) -> None:
        c = self.config
        self.specs, self.coder, self.params, self.dropout = c.specs, c.coder, c.neuron, c.dropout
        self.activation = ACTIVATIONS[c.activation]
        self.shape = c.input_shape
        self.widen = self.coder_module.width_factor if self.coder_module else 1
        self.last_al = last_al(self.specs)
        self.first_sl = next((i for i, s in enumerate(self.specs) if s.spiking and s.has_weights), None)
        self.coded = "spikes" if self.coder_module is not None and self.coder_module.binary else "values"

    def add(self, i: int, s: LayerSpec) -> None:
        if s.op == "input":
            self.input_token(i, s)
        elif s.op == "pool":
            self.pool(s)
        elif s.spiking:
            self.spiking_layer(i, s)
        else:
            self.artificial_layer(i, s)

    def input_token(self, i: int, s: LayerSpec) -> None:
        """The weightless first token of an MLP (a learnable head for the Gaussian coder)."""
        self.shape = (math.prod(self.config.input_shape),)
        self.al.append(nn.Flatten())
        self.layers.append(LayerInfo(s.token, "input", "input", self.shape, 0, 0, "values", False))
        if i == self.last_al and self.widen > 1:  # Gaussian: a learnable head makes (mu, ln sigma)
            head = nn.Linear(self.shape[0], self.widen * self.shape[0])
            self.al.extend((head, MuActivation(self.activation())))
            self.shape = (self.widen * self.shape[0],)
            self.weight_ops[len(self.layers)] = head
            self.layers.append(
                LayerInfo(
                    "head",
                    "AL",
                    "dense",
                    self.shape,
                    head.weight.numel() + head.bias.numel(),
                    head.weight.numel(),
                    "values",
                    False,
                )
            )
        elif i == self.last_al and self.coder is not None:
            self.al.append(self.activation())

    def pool(self, s: LayerSpec) -> None:
        if self.shape[-1] < s.width or self.shape[-2] < s.width:
            raise ConfigError(
                f"pooling {s.token!r} needs an image of at least {s.width}x{s.width}, "
                f"but the layer before gives {self.shape[-2]}x{self.shape[-1]}"
            )
        pool = MaxPool2d(s.width)
        (self.sl.append(SeqOp(pool)) if s.spiking else self.al.append(pool))
        self.shape = (self.shape[0], self.shape[1] // s.width, self.shape[2] // s.width)
        self.layers.append(
            LayerInfo(
                s.token, "pool", "pool", self.shape, 0, 0, "spikes" if s.spiking else "values", s.spiking
            )
        )

    def _weight_op(self, i: int, s: LayerSpec) -> tuple[list[nn.Module], nn.Module, int, tuple[int, ...]]:
        """(flatten, op, MACs, output shape) of a dense or conv token; registers the op."""
        if i == self.first_sl and self.widen > 1:  # the Gaussian coder turns 2n values into n
            self.shape = (self.shape[0] // self.widen, *self.shape[1:])
        flatten: list[nn.Module] = []
        if s.op == "dense" and len(self.shape) > 1:
            flatten = [nn.Flatten()]
            self.shape = (math.prod(self.shape),)
        width = s.width * (self.widen if i == self.last_al else 1)
        if s.op == "dense":
            op: nn.Module = nn.Linear(self.shape[0], width)
            macs = self.shape[0] * width
            out_shape: tuple[int, ...] = (width,)
        else:
            op = nn.Conv2d(self.shape[0], width, s.kernel, padding=s.kernel // 2)
            macs = self.shape[0] * width * s.kernel * s.kernel * self.shape[1] * self.shape[2]
            out_shape = (width, *self.shape[1:])
        self.weight_ops[len(self.layers)] = op
        return flatten, op, macs, out_shape

    def artificial_layer(self, i: int, s: LayerSpec) -> None:
        """Weight op, [norm], activation, dropout; run once per image on [B, ...]."""
        flatten, op, macs, out_shape = self._weight_op(i, s)
        n_params = sum(p.numel() for p in op.parameters())
        out_layer = i == len(self.specs) - 1
        coder_input = i == self.last_al and self.widen > 1  # (mu, ln sigma): activation on mu only
        self.al.extend((*flatten, op))
        norm = None if out_layer or coder_input else _norm_layer(self.config.norm, out_shape)
        if norm is not None:
            self.al.append(norm)
            n_params += sum(p.numel() for p in norm.parameters())
        if coder_input:  # dropout, too, acts on mu only: a dropped ln sigma would mean sigma = 1
            mu = (
                self.activation()
                if self.dropout == 0
                else nn.Sequential(self.activation(), nn.Dropout(self.dropout))
            )
            self.al.append(MuActivation(mu))
        elif not out_layer:
            self.al.append(self.activation())
            if self.dropout > 0:
                self.al.append(nn.Dropout(self.dropout))
        self.layers.append(LayerInfo(s.token, "AL", s.op, out_shape, n_params, macs, "values", False))
        self.shape = out_shape

    def spiking_layer(self, i: int, s: LayerSpec) -> None:
        """Weight op, synapse filter, bias or norm, IIR neuron, time-shared dropout; on all
        T x B rows of [T, B, ...].

        ``bias_placement="after_filter"`` (Fang et al.'s form, I = W F + b): the weight op
        has no bias; a `SynapseFilter` follows it, then the bias (`PostFilterBias`, the
        weight op's own initial bias moved) or the batch norm, whose shift is then that
        bias, then the neuron with synapse "none". ``"before_filter"``: weight op with
        bias, [norm], then the neuron, whose filter sees the bias (and norm shift) too.
        A layer without a filter (the first SL with direct input) is built the second way
        under either placement: with nothing to filter, the two are the same network.

        With duplicate coding the first SL's train is constant in time, so its weight op
        (and a norm before the filter: the statistics of T equal copies are those of one)
        runs once per image.
        """
        flatten, op, macs, out_shape = self._weight_op(i, s)
        constant = i == self.first_sl and self.coder == "duplicate"
        layer_params = self.params
        if i == self.first_sl and self.config.input_mode == "direct":
            layer_params = replace(self.params, synapse="none")
        norm = _norm_layer(self.config.norm, out_shape)
        from .backends import make_neuron

        split = self.config.bias_placement == "after_filter" and layer_params.synapse != "none"
        if split:
            after: nn.Module = PostFilterBias.like(op) if norm is None else SeqOp(norm)
            if norm is not None:
                op.register_parameter("bias", None)  # the norm's shift is the bias after the filter
            ops: list[nn.Module] = [*flatten, op]
        else:
            ops = [*flatten, op] + ([norm] if norm is not None else [])
        if constant:
            self.first_op = nn.Sequential(*ops)
        else:
            self.sl.extend(SeqOp(m) for m in ops)
        n_params = sum(p.numel() for m in (op, norm) if m is not None for p in m.parameters())
        if split:
            self.filters[len(self.layers)] = filt = SynapseFilter(layer_params)
            self.sl.extend((filt, after))
            if norm is None:
                self.biases[len(self.layers)] = after
            layer_params = replace(layer_params, synapse="none")
            n_params += sum(p.numel() for p in after.parameters()) if norm is None else 0
        self.neurons[len(self.layers)] = neuron = make_neuron(self.config.backend, layer_params)
        self.sl.append(neuron)
        if i != len(self.specs) - 1 and self.dropout > 0:
            self.sl.append(TimeSharedDropout(self.dropout))
        fed_by = self.coded if i == self.first_sl else "spikes"
        self.layers.append(LayerInfo(s.token, "SL", s.op, out_shape, n_params, macs, fed_by, not constant))
        self.shape = out_shape


def build(arch: str | Sequence[LayerSpec] | NetworkConfig, **options: Any) -> HybridNet:
    """Build a hybrid network: ``build("A784-A500-S10", coder="gaussian", steps=25)``.

    ``arch`` and the keyword ``options`` are the fields of `NetworkConfig` (the
    architecture, ``coder``, ``steps``, ``backend``, ``input_shape``, ``input_mode``,
    ``neuron``, ``training``, ``activation``, ``dropout``, ``norm``, ``gaussian_sigma0``,
    ``bias_placement``); or ``arch`` is a `NetworkConfig` itself, without options.

    Raises:
        ArchError: malformed architecture, or an MLP input width that does not match.
        ConfigError: an impossible combination, naming the rule it breaks.
    """
    if isinstance(arch, NetworkConfig):
        if options:
            raise TypeError(
                f"build(config) takes no options; got {', '.join(options)} (use dataclasses.replace)"
            )
        config = arch
    else:
        config = NetworkConfig(arch, **options)
    specs, coder = config.specs, config.coder
    coder_module = make_coder(coder, config.steps) if coder else None
    parts = _Assembly(config, coder_module)
    for i, s in enumerate(specs):
        parts.add(i, s)

    if specs[-1].width < 2:
        raise ConfigError(f"the output layer {specs[-1].token!r} must have at least 2 units (one per class)")
    model = HybridNet(
        config.arch,
        nn.Sequential(*parts.al),
        coder_module,
        parts.first_op,
        nn.Sequential(*parts.sl),
        parts.layers,
        config.settings(),
    )
    model.config = config
    model.weight_ops, model.neurons, model.filters = parts.weight_ops, parts.neurons, parts.filters
    model.biases = parts.biases
    if config.gaussian_sigma0 > 0:
        head = model.weight_ops[max(i for i, info in enumerate(model.layers) if info.part == "AL")]
        with torch.no_grad():  # (mu, ln sigma) are stacked along dim 1: the second half is ln sigma
            head.bias[head.bias.numel() // 2 :] = math.log(config.gaussian_sigma0)
    return model
