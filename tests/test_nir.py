"""NIR export and import (issue 35): `hnn_bridge.export_nir` / `hnn_bridge.import_nir`.

- Round trip: export, ``nir.write``, ``nir.read``, import; the imported network's spikes
  equal the original's bit for bit, in every spiking layer, float32 and float64, for
  dense and conv nets, with and without batch norm, both bias placements, every synapse
  kind, lambda = 0 and 1, theta = 1, axon input and pooling.
- An independent interpreter (`run_graph` below: plain torch ops written from the NIR
  primitives' definitions and forward Euler, no hnn-bridge code) runs the exact graph in
  float64 and gives the original network's spikes.
- The lossy ``lif`` export is read by snnTorch's importer.
- Clear errors for what cannot be exported or imported.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

nir = pytest.importorskip("nir", reason="NIR support is the optional extra: pip install 'hnn-bridge[nir]'")

from hnn_bridge import build, export_nir, import_nir
from hnn_bridge.errors import ConfigError
from hnn_bridge.nir_export import INSTALL_HINT, nir_input, threshold_below

SHAPE = (1, 8, 8)
STEPS = 10


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test builds its networks from the same weights, whatever ran before it (the
    firing-rate floor of `assert_same_spikes` then holds or fails the same way each run)."""
    torch.manual_seed(0)


def busy(model, dtype, gain: float = 2.5, seed: int = 0):
    """``model`` in ``dtype`` and eval mode, with SL weights scaled so that the layers
    fire often, and batch-norm statistics from a few training batches."""
    torch.manual_seed(seed)
    model = model.to(dtype)
    with torch.no_grad():
        for i, info in enumerate(model.layers):
            if info.part == "SL":
                model.weight_ops[i].weight.mul_(gain)
        if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            model.train()
            for _ in range(3):
                model(torch.rand(16, *model.settings["input_shape"], dtype=dtype) * 2)
            for m in model.modules():  # a shift, so that the folded bias is not zero
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.bias.uniform_(-0.3, 0.5)
                    m.weight.uniform_(0.5, 1.5)
    return model.eval()


def layer_spikes(model, x) -> list[torch.Tensor]:
    """Spikes [T, B, ...] of every neuron layer of a HybridNet, in order."""
    out: dict[int, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda mod, i, o, k=k: out.__setitem__(k, o))
        for k, m in model.neurons.items()
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return [out[k] for k in sorted(out)]


def imported_spikes(net, train) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: out.append(o)) for m in net.neurons]
    with torch.no_grad():
        final = net(train)
    for h in hooks:
        h.remove()
    assert torch.equal(final, out[-1])
    return out


def round_trip(graph, tmp_path, **kwargs):
    path = tmp_path / "net.nir"
    nir.write(str(path), graph)
    assert path.stat().st_size > 0
    return import_nir(path, **kwargs)


def assert_same_spikes(model, net, dtype, min_rate: float = 0.02):
    x = torch.rand(6, *model.settings["input_shape"], dtype=dtype) * 2
    ref = layer_spikes(model, x)
    got = imported_spikes(net, nir_input(model, x))
    assert len(got) == len(ref)
    for r, g in zip(ref, got):
        assert g.dtype == dtype
        assert torch.equal(r, g), f"{int((r != g).sum())} of {r.numel()} spikes differ"
    rates = [float(r.mean()) for r in ref]
    assert min(rates) > min_rate, f"a layer barely fires ({rates}); the comparison would prove little"


NETS = [
    ("A64-A40-S30-S10", {}),
    ("S6C3-P2-S10", {}),
    ("S6C3-P2-S8C3-P2-S10", {"input_mode": "axon"}),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("placement", ["after_filter", "before_filter"])
@pytest.mark.parametrize("norm", ["none", "batch"])
@pytest.mark.parametrize("arch,kw", NETS, ids=[a for a, _ in NETS])
def test_round_trip_bit_identical(arch, kw, norm, placement, dtype, tmp_path):
    model = busy(
        build(arch, input_shape=SHAPE, steps=STEPS, norm=norm, bias_placement=placement, **kw), dtype
    )
    net = round_trip(export_nir(model), tmp_path)
    assert_same_spikes(model, net, dtype)


NEURONS = {
    "first_order": {"synapse": "first_order", "tau_s": 2.0},
    "none": {"synapse": "none"},
    "lam0": {"membrane_decay": 0.0},  # Fang et al.'s MNIST setting
    "lam1": {"membrane_decay": 1.0},  # an I membrane; the bias comes from a zero-weight op
    "theta1": {"reset_decay": 1.0},  # an I reset filter
    "theta0": {"reset_decay": 0.0, "v_threshold": 0.75, "tau_m": 3.0, "tau_s": 1.5},
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(NEURONS))
def test_round_trip_neuron_kinds(name, dtype, tmp_path):
    for arch in ("A64-S30-S10", "S4C3-P2-S10"):
        model = busy(
            build(arch, input_shape=SHAPE, steps=STEPS, neuron=NEURONS[name], input_mode="axon"),
            dtype,
            gain=1.5 if name == "lam1" else 2.5,
        )
        graph = export_nir(model)
        kinds = [type(n).__name__ for k, n in graph.nodes.items() if k.endswith("_membrane")]
        assert kinds == ["I" if name == "lam1" else "LI"] * 2
        assert_same_spikes(model, round_trip(graph, tmp_path), dtype)


@pytest.mark.parametrize("backend", ["spikingjelly", "snntorch"])
def test_other_backends(backend, tmp_path):
    """Built on the reference neuron, imported on ``backend``; and built on ``backend``,
    exported and imported on the reference neuron: the same spikes both ways."""
    model = busy(build("S6C3-P2-S10", input_shape=SHAPE, steps=STEPS, norm="batch"), torch.float32)
    assert_same_spikes(model, round_trip(export_nir(model), tmp_path, backend=backend), torch.float32)
    model = busy(
        build("S6C3-P2-S10", input_shape=SHAPE, steps=STEPS, norm="batch", backend=backend), torch.float32
    )
    assert_same_spikes(model, round_trip(export_nir(model), tmp_path), torch.float32)


def test_graph_structure_and_metadata():
    model = busy(build("A64-S30-S10", input_shape=SHAPE, steps=STEPS, input_mode="axon"), torch.float32)
    g = export_nir(model)
    assert g.metadata["mode"] == "exact" and g.metadata["dt"] == 1.0
    assert g.metadata["discretisation"] == "forward_euler" and g.metadata["dtype"] == "float32"
    assert "surrogate" in g.metadata["not_in_graph"] and "detach_reset" in g.metadata["not_in_graph"]
    n = g.nodes
    # dual exponential: LI (e_m, gain b) -> LI (e_s, gain 1); forward Euler at dt = 1
    em, es = torch.tensor(-0.25).exp().item(), torch.tensor(-1.0).exp().item()
    assert n["l1_synapse1"].tau[0] == pytest.approx(1 / (1 - em)) and n["l1_synapse1"].r[0] * (
        1 - em
    ) == pytest.approx(em - es)
    assert n["l1_synapse2"].tau[0] == pytest.approx(1 / (1 - es)) and n["l1_synapse2"].r[0] * (
        1 - es
    ) == pytest.approx(1)
    assert n["l1_spike"].threshold.dtype.name == "float32"
    assert float(n["l1_spike"].threshold[0]) < 1.0 and n["l1_spike"].threshold[0] == threshold_below(
        1.0, torch.float32
    )
    assert set(g.edges) >= {
        ("l1_weight", "l1_synapse1"),
        ("l1_synapse1", "l1_synapse2"),
        ("l1_synapse2", "l1_membrane"),
        ("l1_membrane", "l1_spike"),
        ("l1_spike", "l1_reset"),
        ("l1_reset", "l1_reset_scale"),
        ("l1_reset_scale", "l1_membrane"),
        ("l1_spike", "l2_weight"),
    }
    assert (n["l1_reset_scale"].scale == -1.0).all()
    assert isinstance(n["l1_weight"], nir.Linear)  # after_filter: the bias is the membrane's leak
    c = model.biases[1].bias.detach().numpy()
    assert (n["l1_membrane"].v_leak * (1 - em)) == pytest.approx(c, rel=1e-5)


# ------------------------------------------------------------ an independent interpreter


def run_graph(graph, train: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run a NIR graph over a train [T, B, ...] in float64 with forward Euler at the
    graph's dt, from the primitives' definitions: LI: tau dv/dt = (v_leak - v) + r I;
    I: dv/dt = r I; Threshold: v > threshold; Affine, Linear, Conv2d, Scale, Flatten,
    SumPool2d. A node sums the outputs of its predecessors; an edge that closes a cycle
    (found by a depth-first search from the input) carries the previous step's output.
    Returns every node's outputs [T, B, ...]."""
    dt = float(graph.metadata.get("dt", 1.0))
    nodes = graph.nodes
    succ: dict[str, list[str]] = {k: [] for k in nodes}
    for a, b in graph.edges:
        succ[a].append(b)
    start = next(k for k, v in nodes.items() if isinstance(v, nir.Input))
    order: list[str] = []
    state: dict[str, int] = {}
    back: set[tuple[str, str]] = set()

    def visit(k: str) -> None:
        state[k] = 1
        for s in succ[k]:
            if state.get(s) == 1:
                back.add((k, s))
            elif s not in state:
                visit(s)
        state[k] = 2
        order.append(k)

    visit(start)
    order.reverse()
    t64 = lambda a: torch.as_tensor(a, dtype=torch.float64)
    prev: dict[str, torch.Tensor] = {}
    mem: dict[str, torch.Tensor] = {}
    outs: dict[str, list[torch.Tensor]] = {k: [] for k in order}
    for x in train.to(torch.float64):
        now: dict[str, torch.Tensor] = {}
        for k in order:
            node = nodes[k]
            if k == start:
                now[k] = x
                outs[k].append(x)
                continue
            ins = [(prev.get(a) if (a, k) in back else now[a]) for a, b in graph.edges if b == k]
            ins = [i for i in ins if i is not None]
            u = sum(ins[1:], ins[0]) if ins else torch.zeros(())
            if isinstance(node, nir.Affine):
                y = u @ t64(node.weight).T + t64(node.bias)
            elif isinstance(node, nir.Linear):
                y = u @ t64(node.weight).T
            elif isinstance(node, nir.Conv2d):
                y = F.conv2d(
                    u,
                    t64(node.weight),
                    t64(node.bias),
                    tuple(node.stride),
                    tuple(node.padding),
                    tuple(node.dilation),
                    int(node.groups),
                )
            elif isinstance(node, nir.Flatten):
                y = u.flatten(int(node.start_dim) + 1)
            elif isinstance(node, nir.SumPool2d):
                y = F.avg_pool2d(u, tuple(node.kernel_size), tuple(node.stride), divisor_override=1)
            elif isinstance(node, nir.Scale):
                y = u * t64(node.scale)
            elif isinstance(node, nir.Threshold):
                y = (u > t64(node.threshold)).double()
            elif isinstance(node, nir.LI):
                v = mem.get(k, torch.zeros_like(u))
                y = mem[k] = v + dt / t64(node.tau) * (t64(node.v_leak) - v + t64(node.r) * u)
            elif isinstance(node, nir.I):
                v = mem.get(k, torch.zeros_like(u))
                y = mem[k] = v + dt * t64(node.r) * u
            elif isinstance(node, nir.Output):
                y = u
            else:
                pytest.fail(f"the test's interpreter has no rule for NIR node {k!r} ({type(node).__name__})")
            now[k] = y
            outs[k].append(y)
        prev = now
    return {k: torch.stack(v) for k, v in outs.items()}


@pytest.mark.parametrize(
    "arch,kw",
    [
        ("A64-A40-S30-S10", {"norm": "batch"}),
        ("S6C3-P2-S8C3-P2-S10", {"input_mode": "axon"}),
        (
            "A64-S30-S10",
            {"neuron": {"membrane_decay": 1.0, "reset_decay": 1.0}, "bias_placement": "before_filter"},
        ),
    ],
)
def test_independent_interpreter_float64(arch, kw):
    model = busy(
        build(arch, input_shape=SHAPE, steps=STEPS, **kw), torch.float64, gain=1.5 if "neuron" in kw else 2.5
    )
    graph = export_nir(model)
    x = torch.rand(6, *SHAPE, dtype=torch.float64) * 2
    ref = layer_spikes(model, x)
    outs = run_graph(graph, nir_input(model, x))
    spikes = [outs[k] for k in outs if k.endswith("_spike")]
    assert len(spikes) == len(ref)
    for r, s in zip(ref, spikes):
        assert torch.equal(r, s), f"{int((r != s).sum())} of {r.numel()} spikes differ"
    assert min(float(r.mean()) for r in ref) > 0.02
    assert torch.equal(outs["output"], ref[-1])


# ------------------------------------------------------------------------ lif mode


def test_lif_mode_standard_neurons_and_snntorch(tmp_path):
    model = busy(build("A64-S30-S10", input_shape=SHAPE, steps=STEPS, input_mode="axon"), torch.float32)
    graph = export_nir(model, mode="lif")
    assert graph.metadata["mode"] == "lif" and "lossy" in graph.metadata
    kinds = sorted(type(n).__name__ for n in graph.nodes.values())
    assert kinds.count("CubaLIF") == 2 and "Threshold" not in kinds
    path = tmp_path / "lif.nir"
    nir.write(str(path), graph)
    with pytest.raises(ValueError, match="node 'l1_lif' is a standard CubaLIF neuron"):
        import_nir(path)
    from snntorch.import_nir import import_from_nir as snntorch_import
    from spikingjelly.activation_based.nir_exchange.from_nir import (
        import_from_nir as spikingjelly_import,
    )

    train = nir_input(model, torch.rand(4, *SHAPE) * 2)
    runs = []
    for net in (snntorch_import(nir.read(str(path))), spikingjelly_import(str(path))):
        state, outs = None, []
        with torch.no_grad():
            for step in train:
                out, state = net(step, state)
                outs.append(out)
        runs.append(torch.stack(outs))
    snn, sj = runs
    assert snn.shape == (STEPS, 4, 10) and set(snn.unique().tolist()) <= {0.0, 1.0}
    assert float(snn.mean()) > 0.02
    assert torch.equal(snn, sj)  # the two simulators read the lossy graph the same way


# ------------------------------------------------------------------------ errors


def test_errors():
    with pytest.raises(TypeError, match="needs a hnn_bridge.HybridNet"):
        export_nir(torch.nn.Linear(2, 2))
    ann = build("A64-A10", input_shape=SHAPE, coder=None).eval()
    with pytest.raises(ConfigError, match="pure ANN: it has no spiking part"):
        export_nir(ann)
    model = build("A64-S30-S10", input_shape=SHAPE, steps=STEPS)
    with pytest.raises(ConfigError, match=r"call model.eval\(\) first"):
        export_nir(model)
    with pytest.raises(ConfigError, match="unknown NIR export mode 'fast'"):
        export_nir(model.eval(), mode="fast")
    lam1 = build("A64-S30-S10", input_shape=SHAPE, steps=STEPS, neuron={"membrane_decay": 1.0}).eval()
    with pytest.raises(ConfigError, match="layer 'S30' has membrane decay lambda = 1"):
        export_nir(lam1, mode="lif")


def test_max_pool_of_values_is_refused():
    """A spiking part that max-pools the coded values (not spikes) has no exact NIR form;
    the builder never makes one (P2 after the last A token pools in the AL part), so
    this one is put together by hand."""
    from hnn_bridge.pooling import MaxPool2d

    model = build("S4C3-S10", input_shape=SHAPE, steps=STEPS).eval()
    model.first_op.insert(0, MaxPool2d(2))
    with pytest.raises(
        ConfigError, match=r"NIR has no max pooling; first_op.0 \(MaxPool2d\) pools real values"
    ):
        export_nir(model)


def test_import_errors(tmp_path):
    bad = tmp_path / "bad.nir"
    bad.write_text("not hdf5")
    with pytest.raises(ValueError, match="'.*bad.nir' is not a NIR file"):
        import_nir(bad)
    with pytest.raises(FileNotFoundError, match="no such file"):
        import_nir(tmp_path / "missing.nir")
    with pytest.raises(TypeError, match="needs a nir.NIRGraph or a path"):
        import_nir(3)
    g = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type={"input": torch.tensor([3]).numpy()}),
            "wait": nir.Delay(delay=torch.ones(3).numpy()),
            "output": nir.Output(output_type={"output": torch.tensor([3]).numpy()}),
        },
        edges=[("input", "wait"), ("wait", "output")],
    )
    with pytest.raises(ValueError, match="cannot import node 'wait' of type Delay"):
        import_nir(g)


def test_edited_graph_is_refused():
    model = busy(build("A64-S30-S10", input_shape=SHAPE, steps=STEPS), torch.float64)
    g = export_nir(model)
    reset = g.nodes["l2_reset"]  # theta changed, gain kept at 1
    reset.tau, reset.r = reset.tau * 2, reset.r * 2
    with pytest.raises(
        ValueError, match="nodes of neuron 'l2_membrane' disagree with its hnn_bridge_neuron metadata"
    ):
        import_nir(g)


def test_without_nir_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "nir", None)
    model = build("A64-S30-S10", input_shape=SHAPE, steps=STEPS).eval()
    with pytest.raises(ImportError, match=r"pip install 'hnn-bridge\[nir\]'"):
        export_nir(model)
    assert "nirtorch" in INSTALL_HINT


def test_import_without_our_metadata(tmp_path):
    """A graph that carries none of hnn-bridge's metadata (as another tool would write the
    same subgraph): the constants come from the nodes, a = 1 - dt/tau, equal up to
    rounding; in float64 the spikes are still the original's."""
    model = busy(
        build("S6C3-P2-S10", input_shape=SHAPE, steps=STEPS, norm="batch", input_mode="axon"), torch.float64
    )
    graph = export_nir(model)
    for node in graph.nodes.values():
        node.metadata = {}
    graph.metadata = {"dt": 1.0}
    net = round_trip(graph, tmp_path)
    p = net.neurons[0].params
    assert p.synapse == "none" and p.membrane_decay == pytest.approx(model.synapse_params(0).lam, rel=1e-12)
    assert net.sl[1].params.synapse == "dual_exp" and net.sl[1].params.tau_m == pytest.approx(4.0, rel=1e-12)
    assert_same_spikes(model, net, torch.float64)


def test_readme_example_runs(tmp_path, monkeypatch):
    """The "Export to NIR" page's block (docs/nir.md) runs as written (it writes net.nir in the cwd)."""
    import re
    from pathlib import Path

    body = (Path(__file__).resolve().parent.parent / "docs" / "nir.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"^```python\n(.*?)^```", body, flags=re.MULTILINE | re.DOTALL)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "docs/nir.md", "exec"), {})  # noqa: S102 - the page's block itself
    assert (tmp_path / "net.nir").stat().st_size > 0


# ------------------------------------------------- nirtorch's interpreter, plain torch cells


def _t64(a) -> torch.Tensor:
    return torch.as_tensor(__import__("numpy").asarray(a), dtype=torch.float64)


class _LICell(torch.nn.Module):
    """NIR LI under forward Euler at dt = 1: v += (v_leak - v + r x) / tau."""

    def __init__(self, node) -> None:
        super().__init__()
        self.tau, self.r, self.v_leak = _t64(node.tau), _t64(node.r), _t64(node.v_leak)

    def forward(self, x, state=None):
        v = torch.zeros_like(x) if state is None else state
        v = v + (self.v_leak - v + self.r * x) / self.tau
        return v, v


class _ICell(torch.nn.Module):
    """NIR I under forward Euler at dt = 1: v += r x."""

    def __init__(self, node) -> None:
        super().__init__()
        self.r = _t64(node.r)

    def forward(self, x, state=None):
        v = (torch.zeros_like(x) if state is None else state) + self.r * x
        return v, v


class _ThresholdCell(torch.nn.Module):
    """NIR Threshold: 1 where x > threshold."""

    def __init__(self, node) -> None:
        super().__init__()
        self.threshold = _t64(node.threshold)

    def forward(self, x):
        return (x > self.threshold).double()


class _ScaleCell(torch.nn.Module):
    """NIR Scale: x * scale, elementwise."""

    def __init__(self, node) -> None:
        super().__init__()
        self.scale = _t64(node.scale)

    def forward(self, x):
        return x * self.scale


def _dense(node, bias: bool) -> torch.nn.Linear:
    """Affine/Linear mapped here: nirtorch 2.6's default Affine mapping leaves the
    layer's random initial bias in place (NIRTorch PR #55)."""
    m = torch.nn.Linear(node.weight.shape[1], node.weight.shape[0], bias=bias, dtype=torch.float64)
    m.weight.data = _t64(node.weight)
    if bias:
        m.bias.data = _t64(node.bias)
    return m


NIRTORCH_MAP = {
    nir.LI: _LICell,
    nir.I: _ICell,
    nir.Threshold: _ThresholdCell,
    nir.Scale: _ScaleCell,
    nir.Affine: lambda n: _dense(n, True),
    nir.Linear: lambda n: _dense(n, False),
    # NIR's dims exclude the batch (nir.Flatten's own shape rule); nirtorch's default does not
    nir.Flatten: lambda n: torch.nn.Flatten(
        int(n.start_dim) + 1, int(n.end_dim) + (1 if n.end_dim >= 0 else 0)
    ),
}


@pytest.mark.parametrize(
    "arch,kw",
    [
        ("A64-A40-S30-S10", {"norm": "batch"}),
        ("S6C3-P2-S8C3-P2-S10", {"input_mode": "axon"}),
    ],
)
def test_nirtorch_interpreter_with_plain_cells(arch, kw):
    """nirtorch 2.6 runs the exact graph (its cycle handling, its Conv2d and SumPool2d)
    with the plain torch cells above: the output spikes are the original's, float64."""
    nirtorch = pytest.importorskip("nirtorch")
    model = busy(build(arch, input_shape=SHAPE, steps=STEPS, **kw), torch.float64)
    module = nirtorch.nir_to_torch(export_nir(model), NIRTORCH_MAP, dtype=torch.float64)
    x = torch.rand(6, *SHAPE, dtype=torch.float64) * 2
    ref = layer_spikes(model, x)[-1]
    state, outs = None, []
    with torch.no_grad():
        for step in nir_input(model, x):
            out, state = module(step, state)
            outs.append(out)
    got = torch.stack(outs)
    assert torch.equal(got, ref), f"{int((got != ref).sum())} of {ref.numel()} output spikes differ"
    assert float(ref.mean()) > 0.02


@pytest.mark.parametrize(
    "arch,coder,training",
    [
        ("A64-A40-S30-S10", "gaussian", "simultaneous"),
        ("S6C3-P2-S10", "poisson", "simultaneous"),  # the coded input is binary
        ("A64-A40-S30-S10", "poisson", "separate"),
    ],
)
def test_round_trip_random_coders(arch, coder, training, tmp_path):
    """The coders stay in PyTorch; with the same draws (same seed) the imported graph
    gives the original's spikes."""
    model = busy(build(arch, input_shape=SHAPE, steps=STEPS, coder=coder, training=training), torch.float32)
    net = round_trip(export_nir(model), tmp_path)
    x = torch.rand(6, *SHAPE)
    torch.manual_seed(7)
    ref = layer_spikes(model, x)
    torch.manual_seed(7)
    got = imported_spikes(net, nir_input(model, x))
    for r, g in zip(ref, got, strict=True):
        assert torch.equal(r, g)
    assert min(float(r.mean()) for r in ref) > 0.01


def test_cli_export_of_a_trained_run(tmp_path):
    """`hnn-bridge export RUN_DIR --row N --nir FILE`: the trained row's weights, rebuilt
    from the run folder (`load_trained`), written as NIR; importing the file gives that
    network's spikes. Bad rows and folders are named."""
    from click.testing import CliRunner

    from hnn_bridge.cli import main
    from hnn_bridge.training.trained import load_trained

    run = tmp_path / "run"
    trained = CliRunner().invoke(
        main, ["train", "S784-S40-S10", "--quick", "--epochs", "1", "--out", str(run)]
    )
    assert trained.exit_code == 0, trained.output
    out = tmp_path / "row1.nir"
    result = CliRunner().invoke(main, ["export", str(run), "--row", "1", "--nir", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote {out}: row 1 (S784-S40-S10) seed 0, mode exact, ")
    model = load_trained(run, 1)
    assert not model.training and model.settings["bias_placement"] == "after_filter"
    assert_same_spikes(model, import_nir(out), torch.float32)
    bad = CliRunner().invoke(main, ["export", str(run), "--row", "2", "--nir", str(out)])
    assert bad.exit_code == 1 and f"Error: {run}: no row 2; the run has rows 1" in bad.output
    empty = CliRunner().invoke(main, ["export", str(tmp_path), "--row", "1", "--nir", str(out)])
    assert f"Error: {tmp_path}: no results.json" in empty.output
