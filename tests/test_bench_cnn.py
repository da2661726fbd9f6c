"""`hnn-bridge bench --suite cnn`: the rows, the floor and its shapes, targets, precisions,
the profile categories and the CLI's errors (tiny networks; timings are not asserted)."""

import pytest
import torch
from click.testing import CliRunner
from helpers import one_thread  # noqa: F401  (a fixture)

import hnn_bridge as hb
from hnn_bridge.bench import cnn
from hnn_bridge.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["S4C3-P2-S10", "A4C3-S4C3-P2-S10", "A4C3-P2-A10"]


def test_floor_records_the_rows_each_weight_op_sees():
    """ALs and a duplicate-coded first SL op see B rows; ops inside the spiking part T x B."""
    model = hb.build("A4C3-S6C3-P2-S10", steps=3, input_shape=(3, 32, 32), norm="batch")
    ops = cnn.floor_ops(model, torch.rand(2, 3, 32, 32))
    assert [(type(o["module"]).__name__, o["shape"], o["first"]) for o in ops] == [
        ("Conv2d", (2, 3, 32, 32), True),  # the AL, on the images: no input gradient
        ("Conv2d", (2, 4, 32, 32), False),  # the first SL's op, once per image (duplicate coding)
        ("Linear", (6, 1536), False),  # inside the spiking part: T x B rows
    ]


def test_suite_rows_floor_and_targets():
    result = cnn.cnn_suite(
        archs=TINY, steps=2, batch=2, backends=["reference"], precisions=["32"], repeats=2, warmup=1
    )
    assert [n["arch"] for n in result["networks"]] == TINY
    spiking = result["networks"][0]
    assert [r["name"] for r in spiking["rows"]] == [
        "ours: reference",
        "SpikingJelly LIFNode net",
        "snnTorch Leaky loop net",
    ]
    for r in spiking["rows"]:
        assert r["step"]["median"] > 0
        assert r["images_per_s"] == pytest.approx(2 / r["step"]["median"])
        assert r["floor_share"] == pytest.approx(spiking["floor"]["32"]["seconds"] / r["step"]["median"])
        assert r["infer"]["median"] > 0 and r["infer"]["n"] == 2
        assert r["infer_images_per_s"] == pytest.approx(2 / r["infer"]["median"])
        assert r["peak_bytes"] > 0 and r["infer_peak_bytes"] > 0
    ours, sj, snn = spiking["rows"]
    assert ours["ratio_sj"] == pytest.approx(ours["step"]["median"] / sj["step"]["median"])
    assert ours["ratio_snntorch"] == pytest.approx(ours["step"]["median"] / snn["step"]["median"])
    for key, suffix in (("peak_bytes", "peak"), ("infer_peak_bytes", "infer_peak")):
        assert ours[f"ratio_sj_{suffix}"] == ours[key] / sj[key]
        assert ours[f"ratio_snntorch_{suffix}"] == ours[key] / snn[key]
    assert ours["ratio_sj_infer"] == ours["infer"]["median"] / sj["infer"]["median"]
    assert ours["ratio_snntorch_infer"] == ours["infer"]["median"] / snn["infer"]["median"]
    assert "ratio_sj_peak" not in sj  # ratios are ours over theirs
    ann = result["networks"][2]["rows"]
    assert [r["name"] for r in ann] == ["ours: reference"]  # the ANN has no neurons
    assert ann[0]["peak_bytes"] > 0 and ann[0]["ratio_sj_peak"] is None  # and no baseline
    assert result["targets"] == []  # only the paper's pure SNN and 1-AL rows carry targets
    text = cnn.render_cnn(result)
    assert (
        "| contender | step ms (median) | IQR ms | images/s | floor share | ours/SJ | ours/snnTorch "
        "| peak MiB | peak ours/SJ | peak ours/snnTorch |" in text
    )
    assert "floor (32): weight ops + Adam alone" in text
    assert (
        "Inference (forward only, batch norm in eval mode, under torch.no_grad()):\n\n"
        "| contender | forward ms (median) | IQR ms | images/s | ours/SJ | ours/snnTorch "
        "| peak MiB | peak ours/SJ | peak ours/snnTorch |" in text
    )
    mib = f"{ours['peak_bytes'] / 2**20:.2f} | {ours['ratio_sj_peak']:.2f}x | "
    mib += f"{ours['ratio_snntorch_peak']:.2f}x |"
    assert f"| ours: reference | {ours['step']['median'] * 1e3:.1f} |" in text and mib in text


def test_inference_is_the_forward_alone_as_evaluation_runs_it():
    model = hb.build("S4C3-P2-S10", steps=2, input_shape=(3, 32, 32), norm="batch")
    x = torch.rand(2, 3, 32, 32)
    out = cnn._infer_call(model.train(), x, "32", torch.device("cpu"))()
    assert not model.training and out.grad_fn is None and not out.requires_grad
    assert torch.equal(out, model(x).detach())  # batch norm on its running statistics


def test_targets_are_judged_on_the_paper_rows(monkeypatch):
    monkeypatch.setitem(cnn.CNN_ARCHS, "pure SNN", "S4C3-P2-S10")
    result = cnn.cnn_suite(archs=["pure SNN"], steps=2, batch=2, backends=["reference"], repeats=1, warmup=0)
    what = [(t["what"], t["limit"]) for t in result["targets"]]
    assert what == [("floor share", 0.6), ("ours / SpikingJelly", 0.5)]
    assert all(
        t["met"] == (t["value"] >= 0.6 if t["what"] == "floor share" else t["value"] <= 0.5)
        for t in result["targets"]
    )
    assert "(the target is set at T=8)" in result["targets"][0]["at"]
    assert "Targets:" in cnn.render_cnn(result)


def test_categorize_sums_self_times_by_pattern():
    events = [
        ("aten::convolution_backward", 3.0),
        ("aten::mkldnn_convolution", 1.0),
        ("IIRSpikesBackward", 2.0),
        ("BNSpikes", 0.75),
        ("BNSpikesBackward", 0.125),
        ("NativeSynapseFilter", 0.0625),
        ("_FilterTransposeBackward", 0.0625),
        ("SpikeConv2d", 1.0),
        ("aten::native_batch_norm", 0.5),
        ("_MaxPool2x2", 0.25),
        ("aten::addmm", 0.5),
        ("aten::_foreach_mul_", 0.1),
        ("aten::copy_", 0.2),
        ("aten::something", 0.05),
    ]
    got = cnn.categorize(events)
    assert got == {
        "neuron with batch norm": 0.875,
        "synapse filter": 0.125,
        "neuron": 2.0,
        "convolution": 5.0,
        "linear": 0.5,
        "batch norm": 0.5,
        "pooling": 0.25,
        "optimizer": 0.1,
        "copies and reshapes": 0.2,
        "other": 0.05,
    }


def test_cli_runs_the_suite_and_rejects_bad_precisions():
    ok = CliRunner().invoke(
        main,
        [
            "bench",
            "--suite",
            "cnn",
            "-T",
            "2",
            "-B",
            "2",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--backends",
            "reference",
            "--archs",
            "S4C3-P2-S10",
            "--profile",
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert "**S4C3-P2-S10: S4C3-P2-S10**" in ok.output and "Profile of ours" in ok.output
    fp16 = CliRunner().invoke(main, ["bench", "--suite", "cnn", "--precision", "32,16"])
    assert (
        fp16.exit_code == 2 and "precision 16 (float16 with a GradScaler) is for CUDA devices" in fp16.output
    )
    bad = CliRunner().invoke(main, ["bench", "--suite", "cnn", "--precision", "bf8"])
    assert bad.exit_code == 2 and "'bf8': choose from 32, bf16, 16" in bad.output
    other = CliRunner().invoke(main, ["bench", "--suite", "neuron", "--precision", "bf16"])
    assert other.exit_code == 2 and "measured by the cnn suite only" in other.output
