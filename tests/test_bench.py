"""`hnn-bridge bench`: the suites run on tiny shapes and write the expected JSON and tables;
the memory accounting is exact on known cases. No timed assertions."""

import json

import pytest
import torch
from click.testing import CliRunner

from hnn_bridge import IIRNeuron
from hnn_bridge.bench import interleave, peak_memory, saved_tensor_bytes, summarize
from hnn_bridge.bench.baselines import SJLIFLayer, SNNTorchLoopNet, per_step_ops, unhoisted
from hnn_bridge.bench.timing import heap_in_use
from hnn_bridge.builder import build
from hnn_bridge.cli import main

STATS_KEYS = {"median", "q1", "q3", "iqr", "min", "max", "n"}


def run_cli(tmp_path, *args):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", *args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    return result.output, json.loads(out.read_text())["results"]


def check_ratios(rows):
    ours = [r for r in rows if r["group"] == "ours"]
    assert ours and {r["baseline"] for r in rows if r["group"] == "baseline"} == {"sj", "snntorch"}
    for r in ours:
        assert r["ratio_sj"] > 0 and r["ratio_snntorch"] > 0


def test_neuron_suite_json_and_table(tmp_path):
    text, results = run_cli(
        tmp_path,
        "--suite",
        "neuron",
        "-T",
        "3",
        "-B",
        "2",
        "-N",
        "8",
        "--repeats",
        "2",
        "--warmup",
        "0",
        "--backends",
        "reference,snntorch",
    )
    (res,) = results
    assert (
        res["suite"] == "neuron"
        and res["config"]["steps"] == 3
        and res["machine"]["torch"] == torch.__version__
    )
    names = [r["name"] for r in res["rows"]]
    assert names == ["ours: reference", "ours: snntorch", "SpikingJelly LIFNode", "snnTorch Leaky loop"]
    for r in res["rows"]:
        assert set(r["fwd_bwd"]) == STATS_KEYS and r["fwd_bwd"]["n"] == 2 and set(r["fwd_eval"]) == STATS_KEYS
        assert r["saved_bytes"] > 0 and "peak_bytes" in r and 0.0 <= r["rate"] <= 1.0
    check_ratios(res["rows"])
    assert res["rows"][0]["saved_bytes"] == 3 * 2 * 8 * 4  # only V, float32
    assert {t["versus"] for t in res["targets"]} == {"sj", "snntorch"}
    assert "| contender | fwd+bwd ms (median) |" in text and "| ours/SJ | ours/snnTorch |" in text
    assert "| ours: reference |" in text and "Targets:" in text


def test_network_suite_with_ablations(tmp_path):
    text, (res,) = run_cli(
        tmp_path,
        "--suite",
        "network",
        "-T",
        "2",
        "-B",
        "2",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--archs",
        "A784-S16-S10",
        "--backends",
        "reference",
    )
    (net,) = res["networks"]
    names = [r["name"] for r in net["rows"]]
    assert names == [
        "ours: reference",
        "ours: reference, first SL weighed T times",
        "ours: reference, per-step weight ops",
        "SpikingJelly LIFNode net",
        "snnTorch Leaky loop net",
    ]
    check_ratios(net["rows"])
    assert all(r["ratio_sj"] > 0 for r in net["rows"] if r["group"] == "ablation")
    assert "**A784-S16-S10**" in text


def test_epoch_suite_estimates_from_limited_batches(tmp_path):
    text, (res,) = run_cli(
        tmp_path,
        "--suite",
        "epoch",
        "-T",
        "2",
        "-B",
        "16",
        "--dataset",
        "mnist-5k",
        "--limit-batches",
        "2",
        "--warmup",
        "0",
        "--backends",
        "reference",
        "--no-ablations",
    )
    c = res["config"]
    assert c["arch"] == "A784-S500-S10" and c["coder"] == "duplicate" and c["train_images"] == 3000
    assert c["batches_per_epoch"] == 188 and c["batches_measured"] == 2 and c["estimated"]
    assert "2 of 188 batches measured" in c["note"] and c["settings"]["lr"] == 1e-3
    rows = res["rows"]
    assert [r["name"] for r in rows] == [
        "ours: reference",
        "SpikingJelly LIFNode net",
        "snnTorch Leaky loop net",
    ]
    for r in rows:
        assert r["step"]["n"] == 2 and r["epoch_s"] > 0 and r["saved_bytes"] > 0 and r["mean_loss"] > 0
    check_ratios(rows)
    assert res["targets"] and res["targets"][0]["limit"] == pytest.approx(1 / 3)
    assert "| contender | epoch s (median step x batches) |" in text


def test_unknown_backend_is_a_usage_error():
    result = CliRunner().invoke(main, ["bench", "--backends", "reference,nest"])
    assert result.exit_code == 2 and "nest" in result.output


@pytest.mark.parametrize("dtype, size", [(torch.float32, 4), (torch.float64, 8)])
def test_saved_bytes_of_the_fused_neuron_are_exactly_v(dtype, size):
    T, B, N = 7, 3, 11
    x = torch.randn(T, B, N, dtype=dtype, requires_grad=True)
    assert saved_tensor_bytes(lambda: IIRNeuron()(x)) == T * B * N * size
    with torch.no_grad():  # the evaluation path saves nothing
        assert saved_tensor_bytes(lambda: IIRNeuron()(x)) == 0


def test_a_current_constant_over_time_saves_one_step():
    """Duplicate coding: the first SL's current is expanded over T; V is recomputed."""
    T, B, N = 7, 3, 11
    current = torch.randn(B, N, requires_grad=True)
    x = current.unsqueeze(0).expand(T, B, N)
    assert saved_tensor_bytes(lambda: IIRNeuron()(x)) == B * N * 4


def test_saved_bytes_count_storages_once_and_skip_excluded():
    w = torch.randn(5, 5, requires_grad=True)
    x = torch.randn(4, 5, requires_grad=True)
    # x @ w saves x and w; (x @ w) * x saves x @ w and x again (the same storage: once)
    assert saved_tensor_bytes(lambda: (x @ w) * x) == (20 + 25 + 20) * 4
    assert saved_tensor_bytes(lambda: (x @ w) * x, exclude=[w]) == (20 + 20) * 4


def test_sj_lifnode_saves_more_than_the_fused_neuron():
    x = torch.randn(5, 4, 9, requires_grad=True)
    ours = saved_tensor_bytes(lambda: IIRNeuron()(x))
    sj = saved_tensor_bytes(lambda: SJLIFLayer(IIRNeuron().params)(x))
    assert sj >= ours == 5 * 4 * 9 * 4


@pytest.mark.skipif(heap_in_use() is None, reason="needs glibc's mallinfo2")
def test_peak_memory_sees_a_temporary():
    n = 1_000_000

    def fn():
        t = torch.ones(n)  # 4 MB, freed before returning
        return float(t.sum())

    peak = peak_memory(fn)
    assert 4 * n <= peak < 4 * n + 2_000_000


@pytest.mark.skipif(heap_in_use() is None, reason="needs glibc's mallinfo2")
def test_the_first_peak_memory_of_a_process_leaves_out_the_modes_setup():
    """A process's first dispatch through a TorchDispatchMode sets up ~28 MB of heap once;
    peak_memory does it before it measures, so a tiny op measures tiny in a fresh process."""
    import subprocess
    import sys

    code = (
        "import torch; from hnn_bridge.bench import peak_memory; a = torch.ones(3); "
        "print(peak_memory(lambda: a + 1))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 0 < int(out.stdout) < 100_000


def test_summarize_and_interleave_order():
    s = summarize([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (s.median, s.q1, s.q3, s.min, s.max, s.n, s.iqr) == (3.0, 2.0, 4.0, 1.0, 5.0, 5, 2.0)
    calls = []
    samples = interleave(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=2, warmup=1
    )
    assert calls == ["a", "b", "b", "a", "a", "b"] and [len(v) for v in samples.values()] == [2, 2]


def test_baseline_networks_share_the_weights_and_shapes():
    torch.manual_seed(0)
    model = build("A784-S16-S10", coder="duplicate", steps=3)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(unhoisted(model)(x), ref)  # the same spikes, weighed T times
        assert torch.equal(per_step_ops(model)(x), ref)
        out = SNNTorchLoopNet(model)(x)
    assert out.shape == ref.shape == (2, 10)
    loop = SNNTorchLoopNet(model)
    assert torch.equal(loop.layers[0][-1].weight, model.first_op[-1].weight)


def test_small_layers_run_on_one_thread_and_restore_the_count():
    from hnn_bridge.kernels.threads import GRAIN, one_thread

    before = torch.get_num_threads()
    seen = []
    with one_thread(torch.zeros(4, 10)):
        seen.append(torch.get_num_threads())
    with one_thread(torch.zeros(2, GRAIN), per_step=GRAIN):
        seen.append(torch.get_num_threads())
    assert torch.get_num_threads() == before
    assert seen[0] == 1 and seen[1] == before
    x = torch.randn(5, 3, 4, requires_grad=True)
    IIRNeuron()(x).sum().backward()  # forward and backward restore it too
    assert torch.get_num_threads() == before and x.grad is not None
