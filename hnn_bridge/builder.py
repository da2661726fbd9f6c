"""`build`: architecture string -> hybrid network (ALs, coder, SLs; paper §3, Fig. 2).

The network maps images [B, C, H, W] to class scores [B, classes]: spike counts summed
over T (the eq. 2 readout) when the output layer is spiking, logits when it is
artificial. ALs run once per image; the coder adds the time axis; SLs run time-first on
[T, B, ...] with every weight op applied to all T x B rows in one call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from .coders import CODERS, Coder, make_coder
from .errors import ArchError, ConfigError
from .notation import LayerSpec, is_mlp, parse_arch
from .params import IIRParams

TRAININGS = ("simultaneous", "separate")
INPUT_MODES = ("direct", "axon")
ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid}


class _DefaultCoder(str):
    """The default coder, told apart from an explicit ``coder="duplicate"``: a plain ANN
    silently has no coder, but asking for one on it is an error."""


_DEFAULT_CODER = _DefaultCoder("duplicate")


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
    - ``neurons``: SL index (into ``layers``) -> its neuron module (spikes [T, B, ...]).
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
        self.settings = settings

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
        return self.sl(seq).sum(0)

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


def _conv_out(shape: tuple[int, ...], channels: int) -> tuple[int, ...]:
    return (channels, *shape[1:])


def build(
    arch: str | Sequence[LayerSpec],
    *,
    coder: str | None = _DEFAULT_CODER,
    steps: int = 25,
    backend: str = "reference",
    input_shape: Sequence[int] = (1, 28, 28),
    input_mode: str = "direct",
    neuron: IIRParams | Mapping[str, Any] | None = None,
    training: str = "simultaneous",
    activation: str | None = None,
    dropout: float = 0.0,
) -> HybridNet:
    """Build a hybrid network from an architecture string.

    Args:
        arch: e.g. ``"A784-A500-S10"`` (see `hnn_bridge.notation`).
        coder: ``"duplicate"``, ``"gaussian"`` or ``"poisson"`` (§3.2); must be None
            (or left at its default) for an all-A spec.
        steps: time steps T of the spiking part.
        backend: neuron implementation, see `hnn_bridge.backends.BACKENDS`.
        input_shape: (C, H, W) of one image.
        input_mode: ``"direct"``: the first SL takes the coded values as its current
            unfiltered (§4.2); ``"axon"``: through the synapse filter, as a PSP.
        neuron: `IIRParams` or a dict of its keyword arguments for every SL.
        training: ``"simultaneous"`` or ``"separate"`` (§3.1); checked against the coder.
        activation: of the ALs, ``"relu"`` or ``"sigmoid"``; default sigmoid for the
            Poisson coder (rates in (0, 1), §4.3.3), else ReLU.
        dropout: probability between layers (time-shared mask in the spiking part).

    Raises:
        ArchError: malformed architecture, or an MLP input width that does not match.
        ConfigError: an impossible combination, naming the rule it breaks.
    """
    from .backends import BACKENDS, make_neuron

    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ConfigError(f"input_shape must be (C, H, W) with positive sizes, got {input_shape}")
    specs = parse_arch(arch, input_shape) if isinstance(arch, str) else list(arch)
    text = "-".join(s.token for s in specs)
    params = IIRParams.from_any(neuron)
    has_sl = any(s.spiking for s in specs)
    has_al_weights = any(s.has_weights and not s.spiking for s in specs)

    explicit_coder = not isinstance(coder, _DefaultCoder)
    if not has_sl:
        if coder is not None and explicit_coder:
            raise ConfigError(
                f"{text!r} is all artificial (a plain ANN): it has no coder; pass coder=None"
            )
        coder = None
    elif coder is None:
        raise ConfigError(f"{text!r} has spiking layers: choose a coder ({', '.join(CODERS)})")
    elif coder not in CODERS:
        raise ConfigError(f"unknown coder {coder!r}; choose one of {', '.join(CODERS)}")
    coder = None if coder is None else str(coder)
    if training not in TRAININGS:
        raise ConfigError(f"unknown training method {training!r}; choose one of {', '.join(TRAININGS)}")
    if input_mode not in INPUT_MODES:
        raise ConfigError(f"unknown input_mode {input_mode!r}; choose one of {', '.join(INPUT_MODES)}")
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps (T) must be an integer >= 1, got {steps!r}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")
    activation = activation or ("sigmoid" if coder == "poisson" else "relu")
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")

    all_spiking = has_sl and not any(s.kind == "A" for s in specs)
    if coder == "gaussian":
        if training == "separate":
            raise ConfigError(
                "gaussian coding cannot use separate training: its last AL has twice the units "
                "(mu, ln sigma), so the pre-trained ANN's weights do not fit (§3.3); use simultaneous"
            )
        if all_spiking:
            raise ConfigError(
                f"gaussian coding needs an artificial layer to produce (mu, ln sigma); {text!r} is all "
                "spiking and codes the input itself: use duplicate or poisson"
            )
    if coder == "poisson" and training == "simultaneous" and has_al_weights:
        raise ConfigError(
            "poisson coding is not differentiable, so its ALs cannot be trained with the SLs: "
            "use training='separate' (pre-trained, frozen ALs) or an all-S spec (§3.1, §3.3)"
        )
    if training == "separate" and not has_sl:
        raise ConfigError(f"{text!r} is a pure ANN: separate training needs spiking layers")

    act = ACTIVATIONS[activation]
    coder_module = make_coder(coder, steps) if coder else None
    last_al = max((i for i, s in enumerate(specs) if s.kind == "A" and s.op != "pool"), default=-1)
    first_sl = next((i for i, s in enumerate(specs) if s.spiking and s.has_weights), None)
    widen = coder_module.width_factor if coder_module else 1

    shape: tuple[int, ...] = input_shape
    al: list[nn.Module] = []
    sl: list[nn.Module] = []
    first_op: nn.Module | None = None
    weight_ops: dict[int, nn.Module] = {}
    neurons: dict[int, nn.Module] = {}
    layers: list[LayerInfo] = []
    coded = "spikes" if coder_module is not None and coder_module.binary else "values"
    mlp = is_mlp(specs)
    n_out = len(specs) - 1

    for i, s in enumerate(specs):
        spiking = s.spiking
        out_layer = i == n_out
        if s.op == "input":
            shape = (math.prod(input_shape),)
            al.append(nn.Flatten())
            layers.append(LayerInfo(s.token, "input", "input", shape, 0, 0, "values", False))
            if i == last_al and widen > 1:  # Gaussian: a learnable head makes (mu, ln sigma)
                head = nn.Linear(shape[0], widen * shape[0])
                al.append(head)
                shape = (widen * shape[0],)
                weight_ops[len(layers)] = head
                layers.append(LayerInfo("head", "AL", "dense", shape, head.weight.numel() + head.bias.numel(),
                                        head.weight.numel(), "values", False))
            elif i == last_al and coder is not None:
                al.append(act())
            continue
        if s.op == "pool":
            if shape[-1] < s.width or shape[-2] < s.width:
                raise ConfigError(
                    f"pooling {s.token!r} needs an image of at least {s.width}x{s.width}, "
                    f"but the layer before gives {shape[-2]}x{shape[-1]}"
                )
            pool = nn.MaxPool2d(s.width)
            (sl.append(SeqOp(pool)) if spiking else al.append(pool))
            shape = (shape[0], shape[1] // s.width, shape[2] // s.width)
            layers.append(LayerInfo(s.token, "pool", "pool", shape, 0, 0, "spikes" if spiking else "values", spiking))
            continue
        if i == first_sl and widen > 1:  # the Gaussian coder turns 2n values (mu, ln sigma) into n
            shape = (shape[0] // widen, *shape[1:])
        constant = spiking and i == first_sl and coder == "duplicate"
        flatten: list[nn.Module] = []
        if s.op == "dense" and len(shape) > 1:
            flatten = [nn.Flatten()]
            shape = (math.prod(shape),)
        width = s.width * (widen if i == last_al else 1)
        if s.op == "dense":
            op: nn.Module = nn.Linear(shape[0], width)
            macs = shape[0] * width
            out_shape: tuple[int, ...] = (width,)
        else:
            op = nn.Conv2d(shape[0], width, s.kernel, padding=s.kernel // 2)
            macs = shape[0] * width * s.kernel * s.kernel * shape[1] * shape[2]
            out_shape = _conv_out(shape, width)
        n_params = sum(p.numel() for p in op.parameters())
        weight_ops[len(layers)] = op
        if not spiking:
            al.extend(flatten)
            al.append(op)
            if not out_layer and not (i == last_al and widen > 1):
                al.append(act())
            if not out_layer and dropout > 0:
                al.append(nn.Dropout(dropout))
            layers.append(LayerInfo(s.token, "AL", s.op, out_shape, n_params, macs, "values", False))
        else:
            layer_params = params
            if i == first_sl and input_mode == "direct":
                layer_params = replace(params, synapse="none")
            if constant:
                first_op = nn.Sequential(*flatten, op)
            else:
                sl.extend(SeqOp(m) for m in (*flatten, op))
            neurons[len(layers)] = make_neuron(backend, layer_params)
            sl.append(neurons[len(layers)])
            if not out_layer and dropout > 0:
                sl.append(TimeSharedDropout(dropout))
            fed_by = coded if i == first_sl else "spikes"
            layers.append(LayerInfo(s.token, "SL", s.op, out_shape, n_params, macs, fed_by, not constant))
        shape = out_shape

    if specs[-1].width < 2:
        raise ConfigError(f"the output layer {specs[-1].token!r} must have at least 2 units (one per class)")
    settings = dict(
        coder=coder, steps=steps if coder else None, backend=backend, input_shape=input_shape,
        input_mode=input_mode, neuron=params.as_dict(), training=training, activation=activation,
        dropout=dropout,
    )
    model = HybridNet(text, nn.Sequential(*al), coder_module, first_op, nn.Sequential(*sl), layers, settings)
    model.weight_ops, model.neurons = weight_ops, neurons
    return model
