"""The steps of `hnn-bridge bench --suite epoch` (`hnn_bridge.bench.epoch`) and the helpers
the suites share (`bench.contenders`, `bench.markdown`), each on its own."""

from __future__ import annotations

import copy

import pytest
import torch

from hnn_bridge.bench.contenders import FUSED, SJ, SNNTORCH, add_ratios, ratio_targets, result_row
from hnn_bridge.bench.epoch import (
    Contender,
    EpochTimes,
    LimitedBatches,
    add_total_ratios,
    epoch_contenders,
    epoch_rows,
    time_epoch,
)
from hnn_bridge.bench.markdown import measured_on, table
from hnn_bridge.builder import build
from hnn_bridge.data import TensorBatches

ARCH = "A16-S8-S4"  # 16 = 1 x 4 x 4 inputs


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build(ARCH, coder="duplicate", steps=3, input_shape=(1, 4, 4))


def _batches(n: int, batch: int = 4) -> TensorBatches:
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n * batch, 1, 4, 4), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 4, (n * batch,), generator=gen)
    return TensorBatches(images, labels, torch.arange(n * batch), batch_size=batch, shuffle=True, seed=0)


def _adam(model: torch.nn.Module) -> torch.optim.Adam:
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)


def _one_second(fn):
    return 1.0, fn()


def test_limited_batches_yields_the_first_batches_of_the_same_order():
    loader = _batches(5)
    limited = LimitedBatches(loader, 2)
    assert (
        len(limited) == 2 and len(LimitedBatches(loader, None)) == 5 and len(LimitedBatches(loader, 9)) == 5
    )
    full = list(loader.epoch_batches(0))
    got = list(limited.epoch_batches(0))
    assert len(got) == 2 and all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, full)
    )


def test_time_epoch_rotates_the_first_contender_and_trains_each_on_the_same_batches():
    a = _net()
    models = {"a": a, "b": copy.deepcopy(a), "c": _net(seed=5)}
    calls: list[str] = []
    for name, m in models.items():
        m.register_forward_hook(lambda *_, name=name: calls.append(name))
    optimizers = {n: _adam(m) for n, m in models.items()}
    times = time_epoch(
        models, optimizers, _batches(4), warmup=0, device=torch.device("cpu"), timed=_one_second
    )
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert (
        times.batches == 4 and times.seen == 16 and times.data_time == 4.0
    )  # the closing fetch is not counted
    assert times.step_times == {n: [1.0] * 4 for n in models}
    assert (
        times.losses["a"] == times.losses["b"] != times.losses["c"]
    )  # same weights, same batches, same steps
    assert times.correct["a"] == times.correct["b"]
    assert torch.equal(times.first[0], next(iter(_batches(4).epoch_batches(0)))[0])


def test_time_epoch_warms_up_on_copies_and_refuses_an_empty_epoch():
    model, untouched = _net(), _net()
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="no batches"):
        time_epoch({"m": model}, {"m": _adam(model)}, LimitedBatches(_batches(3), 0), warmup=2, device=cpu)
    warm = time_epoch({"m": model}, {"m": _adam(model)}, _batches(2), warmup=3, device=cpu, timed=_one_second)
    cold = time_epoch(
        {"m": untouched}, {"m": _adam(untouched)}, _batches(2), warmup=0, device=cpu, timed=_one_second
    )
    assert (
        warm.losses == cold.losses
    )  # the warm-up steps ran on copies: the timed steps start from the same weights
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), untouched.parameters()))


def test_epoch_rows_scale_the_measured_batches_to_the_whole_epoch():
    model = _net()
    x, y = next(iter(_batches(1).epoch_batches(0)))
    times = EpochTimes(
        {"m": [0.1, 0.2, 0.6]},
        {"m": [1.0, 2.0, 6.0]},
        {"m": 6},
        data_time=0.3,
        seen=12,
        batches=3,
        first=(x, y),
    )
    (row,) = epoch_rows(
        {"m": Contender(model, "ours", None, "reference")},
        {"m": _adam(model)},
        times,
        full_batches=6,
        device=torch.device("cpu"),
        memory_steps=1,
    )
    assert row["name"] == "m" and row["group"] == "ours" and row["backend"] == "reference"
    assert row["epoch_s"] == pytest.approx((0.9 + 0.3) * 2)  # the sum of the steps and data, x 6 / 3
    assert row["epoch_median_s"] == pytest.approx(0.2 * 6 + 0.3 * 2)  # median step x batches + data
    assert row["steps_s"] == pytest.approx(1.8) and row["data_s"] == pytest.approx(0.6)
    assert row["mean_loss"] == pytest.approx(3.0) and row["train_acc"] == 0.5 and row["step"]["n"] == 3
    assert row["saved_bytes"] > 0


def test_total_ratios_divide_the_measured_epochs():
    rows = [
        result_row("ours", "ours", baseline=None, epoch_s=2.0),
        result_row("sj", "baseline", baseline=SJ, epoch_s=4.0),
    ]
    add_total_ratios(rows)
    assert rows[0]["ratio_sj_total"] == 0.5 and rows[0]["ratio_snntorch_total"] is None
    assert "ratio_sj_total" not in rows[1]


def test_epoch_contenders_share_the_reference_weights():
    ref = _net()
    contenders = epoch_contenders(ref, ["reference", "spikingjelly"], ablations=True)
    assert list(contenders) == [
        "ours: reference",
        "ours: spikingjelly",
        "ours: reference, first SL weighed T times",
        "SpikingJelly LIFNode net",
        "snnTorch Leaky loop net",
    ]
    assert contenders["ours: reference"].model is ref
    assert [(c.group, c.tag, c.backend) for c in contenders.values()] == [
        ("ours", None, "reference"),
        ("ours", None, "spikingjelly"),
        ("ablation", None, None),
        ("baseline", SJ, None),
        ("baseline", SNNTORCH, None),
    ]
    x = torch.rand(5, 1, 4, 4)
    for name in ("ours: spikingjelly", "ours: reference, first SL weighed T times"):
        model = contenders[name].model.eval()
        assert torch.equal(model(x), ref.eval()(x)), name
    assert "ours: reference, first SL weighed T times" not in epoch_contenders(
        ref, ["reference"], ablations=False
    )


def test_ratios_and_targets_read_our_fused_rows_against_each_baseline():
    rows = [
        result_row("ours: reference", "ours", baseline=None, backend="reference", t={"median": 1.0}),
        result_row("ours: snntorch", "ours", baseline=None, backend="snntorch", t={"median": 3.0}),
        result_row("SJ", "baseline", baseline=SJ, t={"median": 2.0}),
        result_row("snnTorch", "baseline", baseline=SNNTORCH, t={"median": 0.0}),
    ]
    add_ratios(rows, "t.median")
    assert rows[0]["ratio_sj"] == 0.5 and rows[1]["ratio_sj"] == 1.5
    assert rows[0]["ratio_snntorch"] is None  # a zero baseline gives no ratio
    assert "ratio_sj" not in rows[2]
    targets = ratio_targets("neuron", rows, "[T, B, N]")
    assert "snntorch" not in FUSED and [(t["contender"], t["versus"], t["met"]) for t in targets] == [
        ("ours: reference", SJ, True)
    ]


def test_markdown_table_and_machine_line():
    assert table(["a", "b", "c"], [["x", "1", "2"]]) == "| a | b | c |\n|---|---:|---:|\n| x | 1 | 2 |"
    m = {"cpu": "EPYC", "cpu_cores": 2, "torch": "2.14", "torch_threads": 1, "date": "2026-12-06"}
    assert measured_on(m) == "_Measured 2026-12-06 on EPYC, 2 cores, torch 2.14 (1 threads)._"
    m.update(load_average=[3.3, 1, 1], gpu="H100")
    assert (
        measured_on(m) == "_Measured 2026-12-06 on H100; EPYC, 2 cores, torch 2.14 (1 threads), "
        "load average 3.3 at the end._"
    )
