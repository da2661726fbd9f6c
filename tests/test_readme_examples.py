"""README.md stays short and true: its install, run and test commands are the ones CI runs,
and its links lead to files of the repository. The examples of the docs page "Use the neuron
in your own models" (moved there from the README) run as written and do what they say."""

import re
import shlex
from pathlib import Path

import pytest
import torch

from hnn_bridge import IIRNeuron

ROOT = Path(__file__).resolve().parent.parent
PAGE = "docs/your-models.md"


def section() -> tuple[str, str]:
    return PAGE, (ROOT / PAGE).read_text(encoding="utf-8")


def code_blocks() -> list[str]:
    _, body = section()
    return re.findall(r"^```python\n(.*?)^```", body, flags=re.M | re.S)


def readme_blocks(lang: str = "bash") -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [block.strip() for block in re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.M | re.S)]


def test_readme_is_short_and_has_no_python_to_rot():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 80
    assert readme_blocks("python") == []
    assert [h for h in re.findall(r"^## (.*)$", text, flags=re.M)] == [
        "Install",
        "Run",
        "Test",
        "Documentation",
    ]


def test_readme_commands_are_the_ones_ci_runs():
    """.ci/run installs as README's install line does (plus the docs extra) and ends with
    README's test command, word for word."""
    install, run, test = readme_blocks()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert install == (
        "python3 -m venv .venv && .venv/bin/pip install torch==2.14.1 torchvision==0.29.1 -e '.[test]'"
    )
    venv, pip = install.split(" && ")
    assert venv in ci
    pip_words = shlex.split(pip)
    (ci_pip,) = [
        shlex.split(line.removeprefix("if ! "))[: len(pip_words) + 1]
        for line in ci
        if ".venv/bin/pip install" in line and "torch==" in line
    ]
    assert [w for w in ci_pip if not w.startswith("--disable")] == [*pip_words[:-1], ".[test,docs]"]
    assert ci[-1] == test == ".venv/bin/python -m pytest -q"
    assert run == ".venv/bin/hnn-bridge recipe table3a --quick"


def test_readme_run_command_names_a_shipped_recipe_with_a_quick_profile():
    from hnn_bridge.recipe import list_recipes, load_recipe

    argv = shlex.split(readme_blocks()[1])
    assert argv[1:3] == ["recipe", "table3a"] and "table3a" in list_recipes()
    quick = load_recipe("table3a").configure(quick=True)
    assert quick.rows[0].settings.dataset == "mnist-5k"  # offline: the embedded digits


def test_readme_links_lead_to_files_of_the_repository():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert len(links) >= 15
    missing = [link for link in links if not link.startswith("http") and not (ROOT / link).exists()]
    assert missing == []


EXAMPLES = ["snntorch-swap", "spikingjelly-swap", "snntorch-mlp", "spikingjelly-cnn"]


def test_section_shows_the_one_line_swaps_first_then_the_richer_api():
    blocks = code_blocks()
    assert len(blocks) == len(EXAMPLES)
    assert "IIRLeaky()" in blocks[0] and "was: snn.Leaky(beta=0.9)" in blocks[0]
    assert "spiking_neuron=IIRNode" in blocks[1] and "was: neuron.LIFNode" in blocks[1]
    assert "IIRLeaky" in blocks[2] and "IIRNode" in blocks[3]


@pytest.mark.parametrize("index", range(len(EXAMPLES)), ids=EXAMPLES)
def test_example_runs(index):
    code = code_blocks()[index]
    exec(compile(code, f"<{PAGE} example {index + 1}>", "exec"), {"__name__": "__example__"})


def _run(index: int) -> dict:
    namespace = {"__name__": "__example__"}
    exec(compile(code_blocks()[index], f"<{PAGE} example {index + 1}>", "exec"), namespace)
    return namespace


def _binary(t) -> bool:
    return bool(((t == 0) | (t == 1)).all())


def _core_pass(net, x_seq):
    """`net` (multi-step, SpikingJelly or time-first layers) with every IIR neuron replaced
    by `hb.IIRNeuron` of the same settings, in float64."""
    from hnn_bridge.adapters.snntorch import IIRLeaky
    from hnn_bridge.adapters.spikingjelly import IIRNode

    from hnn_bridge import IIRNeuron

    h = x_seq
    for module in net:
        if isinstance(module, (IIRNode, IIRLeaky)):
            h = IIRNeuron.from_params(module.params)(h)
        elif isinstance(module, torch.nn.Flatten):
            h = h.flatten(2)
        else:
            h = module(h)
    return h


def test_snntorch_swap_example_results():
    ns = _run(0)
    spk_rec, mem_rec, acc = ns["spk_rec"], ns["mem_rec"], ns["acc"]
    assert spk_rec.shape == mem_rec.shape == (25, 8, 10) and _binary(spk_rec)
    assert 0.0 <= acc <= 1.0
    # the explicit-state loop gives the spikes of the core neuron (float64: no rounding ties)
    torch.manual_seed(0)
    net = ns["Net"]().double()
    x = torch.rand(8, 784, dtype=torch.float64)
    spk, mem = net(x)
    s1 = IIRNeuron()(net.fc1(x).unsqueeze(0).expand(25, 8, 100))
    s2 = IIRNeuron()(net.fc2(s1))
    assert s1.sum() > 0 and torch.equal(spk, s2)


def test_spikingjelly_swap_example_results():
    from hnn_bridge.adapters.spikingjelly import IIRNode

    ns = _run(1)
    out, net = ns["out"], ns["net"]
    assert out.shape == (2, 2, 10)
    nodes = [m for m in net.modules() if isinstance(m, IIRNode)]
    assert len(nodes) > 10 and all(n.params.detach_reset and n.path == "fused" for n in nodes)
    assert all(n.state.v == 0.0 for n in nodes)  # reset_net cleared every node
    assert net.conv1.weight.grad is not None and net.conv1.weight.grad.abs().sum() > 0


def test_snntorch_richer_api_example_results():
    import snntorch.utils

    from hnn_bridge.functional import IIRState

    ns = _run(2)
    counts, net, state = ns["counts"], ns["net"], ns["state"]
    assert counts.shape == (8, 10) and ns["spk_t"].shape == (8, 10) and _binary(ns["spk_t"])
    assert isinstance(state, IIRState) and state.v.shape == (8, 10)
    assert ns["lif"].params.synapse == "first_order" and type(ns["stock"]).__name__ == "Leaky"
    snntorch.utils.reset(net)
    net.double()
    x = torch.rand(8, 1, 28, 28, dtype=torch.float64)
    spk = torch.stack([net(x)[0] for _ in range(25)])
    assert torch.equal(spk, _core_pass(net, x.unsqueeze(0).expand(25, *x.shape)))


def test_spikingjelly_cnn_example_results():
    from spikingjelly.activation_based import functional

    ns = _run(3)
    counts, net = ns["counts"], ns["net"]
    assert counts.shape == (8, 10) and bool((counts >= 0).all()) and bool((counts <= 25).all())
    net.double()
    x_seq = ns["x_seq"].double()
    spikes = net(x_seq)
    functional.reset_net(net)
    assert spikes.sum() > 0 and torch.equal(spikes, _core_pass(net, x_seq))
    assert _core_pass(net[:6], x_seq).sum() > 0  # the hidden spiking layers fire too
