"""The README's "Use the neuron in your own models" examples run as written."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## Use the neuron in your own models"


def section() -> tuple[str, str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.find(HEADING + "\n")
    assert start >= 0, f"README.md has no section {HEADING!r}"
    body = text[start + len(HEADING) + 1:]
    end = re.search(r"^## ", body, flags=re.M)
    return "README.md", body[: end.start()] if end else body


def code_blocks() -> list[str]:
    _, body = section()
    return re.findall(r"^```python\n(.*?)^```", body, flags=re.M | re.S)


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
    exec(compile(code, f"<{section()[0]} example {index + 1}>", "exec"), {"__name__": "__example__"})
