"""XorshiftBank (``hw.rng.XorshiftBank``) at block level.

Netlist configs: ``n = cfg.rng_slots`` of the ``tiny`` (8) and ``default`` (32) presets.
A seeded random sequence of cycles, each idle, ``step`` or ``seed_load`` (sometimes both: the
load wins), with seeds 0, 2**32-1, random, and for a random slot ``j`` the seed
``(j+1) * GOLDEN mod 2**32`` that makes that generator's seeded state 0 (it must become 1).

Golden twin: :func:`reference.rng.seed_states` after reset and after each load; in a ``step``
cycle ``words`` must equal row 0 of :func:`reference.rng.draw_beats` of the current states, and
the states advance to its new states. Every word and state is compared exactly, every cycle.
"""

from __future__ import annotations

import cocotb
import pytest
from cocotb.triggers import ReadOnly

from testbenches.cocotb import tbutil

CONFIGS = ["tiny", "default"]


@cocotb.test(timeout_time=200_000_000, timeout_unit="ns")
async def xorshift_bank_matches_reference(dut):
    from reference.rng import GOLDEN, MASK32, draw_beats, seed_states

    rng, _ = tbutil.test_rng("xorshift_bank_matches_reference", dut._log)
    n = tbutil.core_config().rng_slots
    tb = tbutil.Clocked(dut)
    dut.seed.value, dut.seed_load.value, dut.step.value = 0, 0, 0
    await tb.reset()
    states = seed_states(0, n)
    steps = loads = 0
    for cyc in range(tbutil.iterations(2000)):
        await tb.falling()
        r = rng.random()
        load = r < 0.05
        step = r >= 0.05 and r < 0.85 or (load and rng.random() < 0.5)
        seed = rng.choice([0, MASK32, rng.getrandbits(32), ((rng.randrange(n) + 1) * GOLDEN) & MASK32])
        dut.seed.value, dut.seed_load.value, dut.step.value = seed, int(load), int(step)
        await ReadOnly()
        got_states = [int(x) for x in tbutil.unpack(dut_layout(n, 32), int(dut.states.value))]
        assert got_states == [int(x) for x in states], f"cycle {cyc}: states {got_states}, expected {states.tolist()}"
        if step and not load:
            words, new = draw_beats(states, 1, n)
            got = tbutil.unpack(dut_layout(n, 16), int(dut.words.value))
            assert got == [int(x) for x in words[0]], f"cycle {cyc}: words {got}, expected {words[0].tolist()}"
            states = new
            steps += 1
        elif load:
            states = seed_states(seed, n)
            loads += 1
    await tb.falling()
    await ReadOnly()
    got_states = [int(x) for x in tbutil.unpack(dut_layout(n, 32), int(dut.states.value))]
    assert got_states == [int(x) for x in states]
    dut._log.info("%d steps and %d loads checked", steps, loads)
    assert steps > 0 and loads > 0


def dut_layout(n: int, bits: int):
    from amaranth import unsigned
    from amaranth.lib import data

    return data.ArrayLayout(unsigned(bits), n)


def _run(config, record_property, iters, sim=None):
    from reference.config import load_config
    from testbenches.cocotb import harness

    XorshiftBank = harness.require("hw.rng", "XorshiftBank")
    cfg = load_config(config)
    bdir = harness.build_dir(config, "rng", sim)
    src = harness.elaborate(lambda: XorshiftBank(cfg.rng_slots), "xorshift_bank", bdir)
    harness.run(module="testbenches.cocotb.test_rng", top="xorshift_bank", config=config, block="rng",
                sources=[src], record_property=record_property, cfg=cfg, extra_env={"DLU_ITERS": str(iters)},
                sim=sim)


@pytest.mark.parametrize("config", CONFIGS[:1])
def test_rng(config, record_property):
    _run(config, record_property, iters=2000)


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("rep", range(4))
def test_rng_many_seeds(config, rep, record_property):
    _run(config, record_property, iters=30_000)


