"""Every Python block of docs/tutorials/*.md runs as written, page by page in one namespace
(in a fresh folder that sees the repository's docs/), and does what its text says.

A block preceded by ``<!-- ci: xfail ... -->`` is left out of the page's run and run by
its own test instead, marked ``xfail(strict=True)``: it shows what a known snag stops,
and that test fails as soon as the snag is fixed, so that the marker is removed.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Callable, Mapping

import pytest
import torch
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "docs" / "tutorials"
BLOCK = re.compile(r"^(?P<mark><!-- ci: xfail[^>]*-->\n\n?)?```(?P<lang>\w+)\n(?P<code>.*?)^```", re.M | re.S)
PAGES = sorted(p.stem for p in TUTORIALS.glob("*.md"))


def blocks(page: str, lang: str = "python") -> list[tuple[str, bool]]:
    """The ``lang`` blocks of a tutorial page: (code, marked xfail)."""
    text = (TUTORIALS / f"{page}.md").read_text(encoding="utf-8")
    return [(m["code"], bool(m["mark"])) for m in BLOCK.finditer(text) if m["lang"] == lang]


def shell_line(page: str, start: str) -> list[str]:
    """The arguments of the one command of the page's sh blocks that starts with ``start``."""
    lines = [ln.split("#")[0].strip() for code, _ in blocks(page, "sh") for ln in code.splitlines()]
    (line,) = [ln for ln in lines if ln.startswith(start)]
    return shlex.split(line)


def cli(argv: list[str]) -> str:
    """Run ``hnn-bridge ARGV`` in this process; its output."""
    from hnn_bridge.cli import main

    assert argv[0] == "hnn-bridge"
    result = CliRunner().invoke(main, argv[1:], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working folder in which ``docs/`` is the repository's."""
    (tmp_path / "docs").symlink_to(ROOT / "docs")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    return tmp_path


def run_page(page: str, *, xfail_blocks: bool = False, before: Mapping[int, Callable[[], object]] = {}) -> dict:
    """Execute the page's Python blocks in order in one namespace (the marked ones only
    when ``xfail_blocks``); ``before[i]`` runs before block i (0-based), e.g. the page's
    shell command that the block reads the output of. The namespace."""
    namespace: dict = {"__name__": f"__tutorial_{page}__"}
    for index, (code, marked) in enumerate(blocks(page)):
        if marked and not xfail_blocks:
            continue
        if index in before:
            before[index]()
        exec(compile(code, f"<docs/tutorials/{page}.md, Python block {index + 1}>", "exec"), namespace)
    return namespace


def test_every_tutorial_page_is_tested():
    assert PAGES == ["hybrid-network", "reproduce-a-table", "snntorch", "spikingjelly"]
    assert all(blocks(page) for page in PAGES)


def test_hybrid_network(workdir: Path):
    describe = cli(shell_line("hybrid-network", "hnn-bridge describe"))
    assert "duplicate" in describe and "A100" in describe
    cli(shell_line("hybrid-network", "hnn-bridge train"))
    assert (workdir / "runs" / "first" / "table.md").is_file()
    ns = run_page("hybrid-network")
    assert ns["seed"]["test_acc_argmax"] > 0.5            # one epoch at T = 4 learns
    assert ns["accuracy"] > 0.8 and ns["ties"] < 0.15            # "88% here"
    assert ns["ann_accuracy"] > 0.85 and 0.6 < ns["separate_accuracy"] < ns["accuracy"]  # "about 70%", lags
    frozen = [p for p in ns["hybrid"].parameters() if not p.requires_grad]
    assert frozen and all(any(torch.equal(p, q) for q in ns["ann"].parameters()) for p in frozen)
    assert ns["same"] == {"spikingjelly": True, "snntorch": True} and ns["reference"].sum() > 0


def test_snntorch(workdir: Path):
    from hnn_bridge import IIRNeuron
    from hnn_bridge.functional import IIRState

    ns = run_page("snntorch")
    assert ns["accuracy"] > 0.7                                 # two epochs of 3,000 digits learn
    assert ns["same_spikes"] is True and torch.stack(ns["ours"]).sum() > 0
    assert "reset_mechanism" in ns["message"]
    assert ns["counts"].shape == (8, 10) and ns["counts"].sum() > 0
    assert torch.equal(ns["counts"], ns["again"]) and torch.equal(ns["counts"], ns["after_our_reset"])
    assert isinstance(ns["state"], IIRState) and ns["state"].v.shape == (8, 10)
    # the tutorial network's spikes are those of the core neuron (float64: no threshold ties)
    net = ns["Net"]().double()
    x = torch.rand(4, 784, dtype=torch.float64)
    spk, _ = net(x)
    s1 = IIRNeuron()(net.fc1(x).expand(10, 4, 100))
    assert s1.sum() > 0 and torch.equal(spk, IIRNeuron()(net.fc2(s1)))


def test_snntorch_copy_and_save(workdir: Path):
    """The page's "Copy and save a network" block: deepcopy after snntorch.utils.reset,
    state_dict into a fresh network, and torch.save / torch.load of the whole model."""
    ns = run_page("snntorch", xfail_blocks=True)
    outputs = ns["outputs"]
    assert len(outputs) == 4 and outputs[0].sum() > 0
    assert all(torch.equal(outputs[0], o) for o in outputs[1:])


def test_spikingjelly(workdir: Path):
    from hnn_bridge.adapters.spikingjelly import IIRNode

    ns = run_page("spikingjelly")
    assert ns["counts"].shape == (32, 10) and ns["counts"].sum() > 0
    losses = ns["losses"]
    assert losses[-1] < 0.25 * losses[0]                         # "the loss falls"
    assert ns["paths"] == {"default": "fused", "Erf": "fused", "ATan": "per-step"}
    assert ns["out"].shape == (2, 2, 10)
    nodes = [m for m in ns["resnet"].modules() if isinstance(m, IIRNode)]
    assert len(nodes) > 10 and all(n.path == "fused" and n.params.detach_reset for n in nodes)
    assert ns["node_spikes"].sum() > 0 and torch.equal(ns["node_spikes"], ns["core_spikes"])
    with pytest.raises(ValueError, match="v_reset"):
        IIRNode(v_reset=0.0)


def test_reproduce_a_table(workdir: Path):
    ns = run_page("reproduce-a-table",
                  before={3: lambda: cli(shell_line("reproduce-a-table", "hnn-bridge recipe my-table.toml"))})
    assert ns["recipe"].paper_table == "Table 1(a)" and len(ns["recipe"].rows) == 6
    assert ns["quick"].dataset == "mnist-5k"
    # the gaps printed are those of the results page's Table 1(a): 5 of 6 rows within 0.5
    assert len(ns["gaps"]) == 6 and len(ns["within"]) == 5
    assert round(ns["gaps"]["A784-A500-S10 (separate)"], 2) == -1.06
    assert [(row.arch, row.settings.epochs) for row in ns["mine"].rows] == [
        ("S784-S100-S10", 1), ("A784-A100-S10", 1), ("A784-A100-A10", 1)]
    rows = load_results_of(workdir / "runs" / "my-table")
    assert [r["arch"] for r in rows] == ["S784-S100-S10", "A784-A100-S10", "A784-A100-A10"]
    assert all(r["seeds"][0]["test_acc_argmax"] > 0.3 for r in rows)     # one epoch learns something
    assert (workdir / "runs" / "my-table" / "accuracy.png").is_file()


def load_results_of(folder: Path) -> list[dict]:
    from hnn_bridge.report import load_results

    return load_results(folder)["rows"]
