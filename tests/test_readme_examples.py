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


def test_section_has_an_snntorch_and_a_spikingjelly_example():
    blocks = code_blocks()
    assert len(blocks) == 2
    assert "IIRLeaky" in blocks[0] and "IIRNode" in blocks[1]


@pytest.mark.parametrize("index", [0, 1], ids=["snntorch-mlp", "spikingjelly-cnn"])
def test_example_runs(index):
    code = code_blocks()[index]
    exec(compile(code, f"<{section()[0]} example {index + 1}>", "exec"), {"__name__": "__example__"})
