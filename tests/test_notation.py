"""Architecture notation of Tables 1-3."""

import pytest

from hnn_bridge import ArchError, parse_arch
from hnn_bridge.notation import ann_twin

MNIST_ARCHS = ["S784-S500-S10", "A784-S500-S10", "A784-A500-S10", "A784-A500-A10"]
CIFAR_ARCHS = [
    "S32C3-S32C3-S64C3-P2-S64C3-P2-S512-S10",
    "A32C3-S32C3-S64C3-P2-S64C3-P2-S512-S10",
    "A32C3-A32C3-A64C3-P2-S64C3-P2-S512-S10",
    "A32C3-A32C3-A64C3-P2-A64C3-P2-S512-S10",
    "A32C3-A32C3-A64C3-P2-A64C3-P2-A512-A10",
]


def test_mlp_first_token_is_the_weightless_input_layer():
    specs = parse_arch("A784-A500-S10", input_shape=(1, 28, 28))
    assert [(s.kind, s.op, s.width) for s in specs] == [
        ("A", "input", 784),
        ("A", "dense", 500),
        ("S", "dense", 10),
    ]
    assert not specs[0].has_weights and specs[1].has_weights


@pytest.mark.parametrize("arch", MNIST_ARCHS)
def test_every_table_mlp_parses(arch):
    specs = parse_arch(arch, input_shape=(1, 28, 28))
    assert "-".join(s.token for s in specs) == arch
    assert [s.width for s in specs] == [784, 500, 10]
    assert [s.kind for s in specs] == list(
        arch.replace("784", "").replace("500", "").replace("10", "").replace("-", "")
    )


@pytest.mark.parametrize("arch", CIFAR_ARCHS)
def test_every_table_cnn_parses(arch):
    specs = parse_arch(arch, input_shape=(3, 32, 32))
    assert [s.op for s in specs] == ["conv", "conv", "conv", "pool", "conv", "pool", "dense", "dense"]
    assert [s.width for s in specs] == [32, 32, 64, 2, 64, 2, 512, 10]
    assert [s.kernel for s in specs if s.op == "conv"] == [3, 3, 3, 3]
    kinds = [tok[0] for tok in arch.split("-")]
    # pooling inherits the kind of the layer before it
    expected = [k if k != "P" else kinds[i - 1] for i, k in enumerate(kinds)]
    assert [s.kind for s in specs] == expected


@pytest.mark.parametrize(
    "arch, message",
    [
        ("A784--S10", "empty layer token in 'A784--S10': two '-' in a row, or a '-' at an end"),
        (
            "X10",
            "unknown layer token 'X10': expected An or Sn (dense), AnCk or SnCk (convolution) or Pk "
            "(pooling)",
        ),
        ("S32C-S10", "layer token 'S32C' has no kernel size after 'C' (write e.g. 'S32C3')"),
        ("A0-S10", "layer token 'A0' has width 0; widths must be at least 1"),
        (
            "A784-S500-A10",
            "'A10' follows a spiking layer: artificial layers must all come before the spiking layers "
            "(ALs, then the coder, then SLs)",
        ),
        ("A32C4-S10", "layer token 'A32C4': the kernel size must be odd (padding k//2 keeps the image size)"),
        ("P2-S32C3-S10", "pooling token 'P2' cannot come first: it needs a convolution before it"),
        ("S32C3-S64-S32C3-S10", "convolution 'S32C3' follows a dense layer: convolutions must come first"),
        ("A784", "MLP spec 'A784' needs an input layer and an output layer, e.g. 'A784-S10'"),
        ("S32C3-S32C3", "the last token 'S32C3' must be a dense layer giving the class scores"),
    ],
)
def test_malformed_strings_quote_the_bad_token(arch, message):
    with pytest.raises(ArchError) as err:
        parse_arch(arch)
    assert str(err.value) == message
    assert isinstance(err.value, ValueError)


def test_mlp_input_width_must_match_the_data():
    with pytest.raises(ArchError) as err:
        parse_arch("A784-A500-S10", input_shape=(3, 32, 32))
    assert (
        str(err.value)
        == "input layer 'A784' has 784 units but the input 3x32x32 has 3072 values; write A3072"
    )


def test_ann_twin_turns_every_layer_artificial():
    assert ann_twin(parse_arch(CIFAR_ARCHS[1])) == CIFAR_ARCHS[-1]
    assert ann_twin(parse_arch("A784-S500-S10")) == "A784-A500-A10"
