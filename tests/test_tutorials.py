"""Every tutorial page shows the code of one script under examples/, included section by
section (pymdownx.snippets: ``--8<-- "examples/x.py:section"``), so the code lives once.
Each test runs its page's script as a user would (``python examples/x.py``, in a fresh
folder that sees the repository's docs/ and benchmarks/), then checks that it did what the page says."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "docs" / "tutorials"
BLOCK = re.compile(r"^```(?P<lang>\w+)\n(?P<code>.*?)^```", re.M | re.S)
SNIPPET = re.compile(r'^--8<-- "(?P<path>examples/[\w.]+\.py):(?P<section>[\w-]+)"\n$')
SECTION = re.compile(
    r"^# --8<-- \[start:(?P<name>[\w-]+)\]\n(?P<code>.*?)^# --8<-- \[end:(?P=name)\]\n", re.M | re.S
)
PAGES = sorted(p.stem for p in TUTORIALS.glob("*.md"))
#: The script of each page.
SCRIPTS = {
    "hybrid-network": "hybrid_network",
    "reproduce-a-table": "reproduce_a_table",
    "snntorch": "snntorch_swap",
    "spikingjelly": "spikingjelly_swap",
    "where-to-split": "where_to_split",
    "your-images": "your_images",
}


def blocks(page: str, lang: str = "python") -> list[str]:
    """The ``lang`` blocks of a tutorial page, as written (a Python block is one snippet line)."""
    text = (TUTORIALS / f"{page}.md").read_text(encoding="utf-8")
    return [m["code"] for m in BLOCK.finditer(text) if m["lang"] == lang]


def sections(script: str) -> dict[str, str]:
    """The named sections of ``examples/<script>.py``, in order."""
    text = (ROOT / "examples" / f"{script}.py").read_text(encoding="utf-8")
    return {m["name"]: m["code"] for m in SECTION.finditer(text)}


def shell_lines(page: str) -> list[str]:
    """The commands of the page's sh blocks, comments stripped."""
    lines = [ln.split("#")[0].strip() for code in blocks(page, "sh") for ln in code.splitlines()]
    return [ln for ln in lines if ln]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working folder in which ``docs/`` and ``benchmarks/`` are the repository's
    (as in its root); decoded images are cached under it."""
    for folder in ("docs", "benchmarks"):
        (tmp_path / folder).symlink_to(ROOT / folder)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    torch.manual_seed(0)
    return tmp_path


def run_script(page: str) -> dict:
    """Run the page's script as ``python examples/<script>.py`` does; its global namespace."""
    return runpy.run_path(str(ROOT / "examples" / f"{SCRIPTS[page]}.py"), run_name="__main__")


def test_every_tutorial_page_is_tested():
    assert PAGES == sorted(SCRIPTS)
    tests = {name for name in globals() if name.startswith("test_")}
    assert {f"test_{page.replace('-', '_')}" for page in PAGES} <= tests


@pytest.mark.parametrize("page", PAGES)
def test_page_shows_every_section_of_its_script_once_in_order(page: str):
    """The page's Python blocks are snippets of its own script, each section once and in the
    script's order: what the script runs, the page shows (outside sections, a script only
    runs the page's shell commands)."""
    script = SCRIPTS[page]
    shown = []
    for code in blocks(page):
        match = SNIPPET.match(code)
        assert match, f"docs/tutorials/{page}.md has a Python block that is not a snippet: {code[:60]!r}"
        assert match["path"] == f"examples/{script}.py"
        shown.append(match["section"])
    assert shown == list(sections(script)) and shown
    text = (ROOT / "examples" / f"{script}.py").read_text(encoding="utf-8")
    outside = SECTION.sub("", text)
    commands = re.findall(r'^[A-Z_]+ = "(hnn-bridge [^"]+)"$', outside, flags=re.M)
    assert set(commands) <= set(shell_lines(page)), "a command the script runs is not on the page"


def test_hybrid_network(workdir: Path):
    ns = run_script("hybrid-network")
    assert "duplicate" in ns["describe"] and "A100" in ns["describe"]
    assert (workdir / "runs" / "first" / "table.md").is_file()
    assert ns["seed"]["test_acc_argmax"] > 0.5  # one epoch at T = 4 learns
    assert ns["accuracy"] > 0.8 and ns["ties"] < 0.15  # "88% here"
    assert ns["ann_accuracy"] > 0.85 and 0.6 < ns["separate_accuracy"] < ns["accuracy"]  # "about 70%", lags
    frozen = [p for p in ns["hybrid"].parameters() if not p.requires_grad]
    assert frozen and all(any(torch.equal(p, q) for q in ns["ann"].parameters()) for p in frozen)
    assert ns["same"] == {"spikingjelly": True, "snntorch": True} and ns["reference"].sum() > 0


def test_snntorch(workdir: Path):
    from hnn_bridge import IIRNeuron
    from hnn_bridge.functional import IIRState

    ns = run_script("snntorch")
    assert ns["accuracy"] > 0.7  # two epochs of 3,000 digits learn
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
    # "Copy and save a network": deepcopy after snntorch.utils.reset, state_dict into a
    # fresh network, and torch.save / torch.load of the whole model give the same spikes
    outputs = ns["outputs"]
    assert len(outputs) == 4 and outputs[0].sum() > 0
    assert all(torch.equal(outputs[0], o) for o in outputs[1:])


def test_spikingjelly(workdir: Path):
    from hnn_bridge.adapters.spikingjelly import IIRNode

    ns = run_script("spikingjelly")
    assert ns["counts"].shape == (32, 10) and ns["counts"].sum() > 0
    losses = ns["losses"]
    assert losses[-1] < 0.25 * losses[0]  # "the loss falls"
    assert ns["paths"] == {"default": "fused", "Erf": "fused", "ATan": "per-step"}
    assert ns["out"].shape == (2, 2, 10)
    nodes = [m for m in ns["resnet"].modules() if isinstance(m, IIRNode)]
    assert len(nodes) > 10 and all(n.path == "fused" and n.params.detach_reset for n in nodes)
    assert ns["node_spikes"].sum() > 0 and torch.equal(ns["node_spikes"], ns["core_spikes"])
    with pytest.raises(ValueError, match="v_reset"):
        IIRNode(v_reset=0.0)


def test_reproduce_a_table(workdir: Path):
    ns = run_script("reproduce-a-table")
    assert ns["recipe"].paper_table == "Table 1(a)" and len(ns["recipe"].rows) == 6
    assert ns["quick"].dataset == "mnist-5k"
    # the gaps printed are those of the results page's Table 1(a): 5 of 6 rows within 0.5
    assert len(ns["gaps"]) == 6 and len(ns["within"]) == 5
    assert round(ns["gaps"]["A784-A500-S10 (separate)"], 2) == -1.06
    assert [(row.arch, row.settings.epochs) for row in ns["mine"].rows] == [
        ("S784-S100-S10", 1),
        ("A784-A100-S10", 1),
        ("A784-A100-A10", 1),
    ]
    rows = load_results_of(workdir / "runs" / "my-table")
    assert [r["arch"] for r in rows] == ["S784-S100-S10", "A784-A100-S10", "A784-A100-A10"]
    assert all(r["seeds"][0]["test_acc_argmax"] > 0.3 for r in rows)  # one epoch learns something
    assert (workdir / "runs" / "my-table" / "accuracy.png").is_file()


def load_results_of(folder: Path) -> list[dict]:
    from hnn_bridge.report import load_results

    return load_results(folder)["rows"]


def test_your_images(workdir: Path):
    ns = run_script("your-images")
    assert ns["mine"].classes == ["0", "1", "7"] and len(ns["mine"]) == 300
    assert ns["mine"].input_shape == (1, 28, 28)
    rows = load_results_of(workdir / "runs" / "my-images")
    assert [r["arch"] for r in rows] == ["A784-A100-A3", "A784-A100-S3"]
    assert all(r["settings"]["dataset"] == "imagefolder:my-images" for r in rows)
    assert all(r["seeds"][0]["test_acc_argmax"] > 0.8 for r in rows)  # three digits: learnt
    assert (workdir / "runs" / "my-images" / "energy.png").is_file()
    assert (
        "imagefolder:my-images" in ns["one_network"] and (workdir / "runs" / "one" / "results.json").is_file()
    )
    assert any((workdir / "cache").rglob("imagefolder-my-images-*.pt"))  # decoded once, then cached


def test_where_to_split(workdir: Path):
    ns = run_script("where-to-split")
    assert "lemaire" in ns["describe"] and "S512" in ns["describe"]
    estimate = ns["estimate"]
    pure_snn, pure_ann = estimate[ns["split"](0)], estimate[ns["split"](6)]
    assert len(estimate) == 5
    # as the page says: ops makes the pure SNN the cheapest, the memory models reverse the order
    assert pure_snn["ops"] == min(e["ops"] for e in estimate.values()) < pure_ann["ops"]
    for name in ("lemaire", "simple"):
        assert pure_ann[name] == pytest.approx(min(e[name] for e in estimate.values()), rel=1e-3)
        assert pure_snn[name] > 1.5 * pure_ann[name]
    assert "A32C3-A32C3-A64C3-P2-A64C3-P2-A512-A10" in ns["committed"]
    assert {p.name for p in (workdir / "plots").glob("*.png")} == {
        f"table1b-t16-{name}.png" for name in ("ops", "lemaire", "simple")
    }
    rows = load_results_of(workdir / "runs" / "my-splits")
    assert [r["arch"] for r in rows] == ["S784-S500-S10", "A784-S500-S10", "A784-A500-S10", "A784-A500-A10"]
    assert all(r["seeds"][0]["test_acc_argmax"] > 0.5 for r in rows)  # two epochs learn
    assert all(set(r["seeds"][0]["energy"]) == {"ops", "lemaire", "simple"} for r in rows)
    assert (workdir / "runs" / "my-splits" / "energy.png").is_file()
    points = {r["arch"]: (r["seeds"][0]["energy"]["lemaire"], r["seeds"][0]["test_acc_argmax"]) for r in rows}
    front = ns["fronts"]["lemaire"]
    assert front and set(front) <= set(points)
    for arch in front:  # no row beats a row of the printed front on both axes
        e, a = points[arch]
        assert not any(e2 <= e and a2 > a for e2, a2 in points.values())
