"""The "Use the neuron in your own models" examples run as written.

They are read from README.md when it has that section, else from docs/examples.md
(where they are kept until they are pasted into the README)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## Use the neuron in your own models"


def section() -> tuple[str, str]:
    for path in (ROOT / "README.md", ROOT / "docs" / "examples.md"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            start = text.find(HEADING + "\n")
            if start >= 0:
                body = text[start + len(HEADING) + 1:]
                end = re.search(r"^## ", body, flags=re.M)
                return path.name, body[: end.start()] if end else body
    raise AssertionError(f"neither README.md nor docs/examples.md has the section {HEADING!r}")


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
