"""sim.tiling: tiled products (closed-form cost = emitted stream), the policy against the search, network timing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from reference.config import PRESETS
from reference.formats import Width
from reference.isa import Accumulate
from reference.nets import resolve_net
from sim.core import Counters
from sim.tiling import Emitter, Tiling, choose, cost, exhaustive, matmul_commands, network_commands

TINY, DEFAULT = PRESETS["tiny"], PRESETS["default"]


def _stream(cfg, width, m, k, n, t=None):
    em = Emitter(cfg, width)
    used = matmul_commands(em, m, k, n, t)
    return used, em.commands()


@pytest.mark.parametrize("seed", range(20))
def test_closed_form_cost_is_the_emitted_streams(seed):
    """cost() = the cycles and bus words of matmul_commands' legal commands, any legal tiling."""
    rng = np.random.default_rng(seed)
    cfg = dataclasses.replace(TINY, acc_beats=int(rng.choice([1, 4, 64])))
    w = Width(int(rng.integers(0, 3)))
    m, k, n = (int(x) for x in rng.integers(1, [40, 300, 40]))
    for _ in range(20):
        t = Tiling(int(rng.integers(1, m + 3)), int(rng.integers(1, n + 3)), int(rng.integers(1, k + 3)),
                   str(rng.choice(["a", "b"])))
        if t.legal(m, k, n, w, cfg):
            break
    else:
        t = choose(m, k, n, w, cfg)
    _, cmds = _stream(cfg, w, m, k, n, t)
    ctr = Counters.of(cmds)
    assert (ctr.cycles, ctr.bus_words) == cost(m, k, n, w, cfg, t), f"seed {seed}: {t} for {m}x{k}x{n}"
    assert ctr.macs == m * n * k, f"seed {seed}"
    mm = [c.cmd for c in cmds if c.kind == "MATMUL"]
    if min(t.kt, k) < k:
        assert {c.accumulate for c in mm} >= {Accumulate.START, Accumulate.FINISH}, f"seed {seed}"


@pytest.mark.parametrize("seed", range(10))
def test_policy_is_legal_and_never_beats_the_exhaustive_search(seed):
    rng = np.random.default_rng(100 + seed)
    cfg = TINY if seed % 2 else DEFAULT
    w = Width(int(rng.integers(0, 3)))
    m, k, n = (int(x) for x in rng.integers(1, [3000, 5000, 300]))
    t = choose(m, k, n, w, cfg)
    assert t.legal(m, k, n, w, cfg), f"seed {seed}: {t}"
    best, best_cost = exhaustive(m, k, n, w, cfg)
    assert best_cost <= cost(m, k, n, w, cfg, t), f"seed {seed}"


def test_aggregated_network_counts_equal_the_full_stream():
    net = resolve_net("lenet5")
    full = network_commands(net, 4, TINY, Width.W8, aggregate=False)
    agg = network_commands(net, 4, TINY, Width.W8, aggregate=True)
    assert Counters.of(full) == Counters.of(agg)
    assert len(agg) < len(full)


def test_alexnet_weight_gradient_of_conv1_is_k_split_on_the_default_core():
    """AlexNet conv1's weight gradient at batch 32: K = 32 * 55 * 55 = 96,800, summed over chunks."""
    em = Emitter(DEFAULT, Width.W8, aggregate=True)
    matmul_commands(em, 363, 96_800, 96)
    mm = [c for c in em.commands() if c.kind == "MATMUL"]
    assert sum(c.macs for c in mm) == 363 * 96_800 * 96
    assert {c.cmd.accumulate for c in mm} == {Accumulate.START, Accumulate.CONTINUE, Accumulate.FINISH}


def test_dlu_timing_cli_writes_results_and_rejects_bad_input(tmp_path, capsys):
    import json

    from dlu.cli import main

    out = tmp_path / "t.json"
    assert main(["timing", "--net", "lenet5", "--batch", "4", "--core", "tiny", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["format"] == "dlu-timing-results" and res["batch"] == 4
    assert {(g["layer"], g["pass"]) for g in res["by_layer_pass"]} >= {("conv1", "forward"), ("fc5", "update")}
    assert res["totals"]["cycles"] == sum(g["cycles"] for g in res["by_layer_pass"])
    assert main(["timing", "--net", "nosuch"]) == 2
    assert main(["timing", "--net", "lenet5", "--core", "configs/default-w16.toml", "--width", "8"]) == 2
    err = capsys.readouterr().err
    assert "not a built-in" in err and "does not support 8-bit" in err and "Traceback" not in err
