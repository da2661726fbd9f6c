"""Freed memory kept in the heap (`hnn_bridge.kernels.heap`): the next step's large tensors
reuse it without page faults, the values are the same bits, and the switch turns it off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")

# Allocate, fill and free a 64 MiB tensor ten times; the minor page faults of each round.
FAULTS = textwrap.dedent(
    """
    import json, resource, sys, torch
    from hnn_bridge.kernels.heap import reuse_freed_memory
    applied = reuse_freed_memory()
    def round_():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        x = torch.empty(16 * 1024 * 1024).fill_(1.0)
        del x
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps({"applied": applied, "faults": [round_() for _ in range(10)]}))
    """
)

# A small spiking CNN with batch norm, three Adam steps: the parameters' bytes.
TRAIN = textwrap.dedent(
    """
    import hashlib, json, torch
    import torch.nn.functional as F
    import hnn_bridge as hb
    from hnn_bridge.kernels.heap import reuse_freed_memory
    applied = reuse_freed_memory()
    torch.manual_seed(0)
    net = hb.build("S16C3-P2-S32C3-P2-S10", coder="duplicate", steps=6, input_shape=(3, 16, 16), norm="batch")
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, y = torch.rand(8, 3, 16, 16) * 3, torch.randint(0, 10, (8,))
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in net.parameters()))
    print(json.dumps({"applied": applied, "params": digest.hexdigest()}))
    """
)


def _run(code: str, heap: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "HNN_BRIDGE_HEAP" and not k.startswith("MALLOC_")}
    if heap is not None:
        env["HNN_BRIDGE_HEAP"] = heap
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_freed_large_tensor_is_reused_without_page_faults() -> None:
    kept = _run(FAULTS, None)
    default = _run(FAULTS, "0")
    assert kept["applied"] is True and default["applied"] is False
    # 64 MiB is 16,384 pages of 4 KiB: glibc's default maps them afresh every round; kept
    # in the heap, they fault in during the first rounds (while the heap settles), then no more
    assert min(default["faults"]) >= 16_000
    assert sum(kept["faults"][5:]) < 1_000


def test_training_gives_the_same_bits_either_way() -> None:
    kept = _run(TRAIN, None)
    default = _run(TRAIN, "0")
    assert kept["applied"] is True and default["applied"] is False
    assert kept["params"] == default["params"]


def test_the_command_line_and_the_workers_turn_it_on() -> None:
    code = textwrap.dedent(
        """
        import json
        from click.testing import CliRunner
        from hnn_bridge.cli import main
        from hnn_bridge.kernels import heap
        from hnn_bridge.training import pool
        assert heap._applied is None
        result = CliRunner().invoke(main, ["describe", "S784-S10", "--input-shape", "1x28x28"])
        assert result.exit_code == 0, result.output
        first = heap._applied
        heap._applied = None
        pool._worker_init(1)
        print(json.dumps({"cli": first, "worker": heap._applied}))
        """
    )
    assert _run(code, None) == {"cli": True, "worker": True}
    assert _run(code, "0") == {"cli": False, "worker": False}
