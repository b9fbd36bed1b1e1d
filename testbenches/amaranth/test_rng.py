"""XorshiftBank against reference.rng: seeding (incl. the state-0 fix-up), words and states per step."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.rng import XorshiftBank
from reference.config import PRESETS
from reference.rng import GOLDEN, draw_beats, seed_states

N = PRESETS["tiny"].rng_slots  # generators of the "tiny" preset


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_rejects_bad_n():
    with pytest.raises(TypeError, match="n: expected an integer number of generators, got '8'"):
        XorshiftBank("8")
    with pytest.raises(ValueError, match="n: need at least one generator, got 0"):
        XorshiftBank(0)
    gc.collect()  # the half-built components warn when collected: here, where it is ignored


# Seed GOLDEN makes generator 0's state 0, which the twin replaces by 1.
@pytest.mark.parametrize("seed", [0, 1, GOLDEN, 0xFFFFFFFF, 0x12345678])
def test_seed_then_steps_match_draw_beats(seed):
    dut = XorshiftBank(N)
    rng = np.random.default_rng(seed)
    # A step pattern with idle cycles; draw_beats counts only the steps.
    pattern = [int(x) for x in rng.integers(0, 2, size=60)]
    got_words, got_states = [], []

    async def tb(ctx):
        assert [int(x) for x in ctx.get(dut.states)] == [int(x) for x in seed_states(0, N)]
        ctx.set(dut.seed, seed)
        ctx.set(dut.seed_load, 1)
        ctx.set(dut.step, 1)  # seed_load wins
        await ctx.tick()
        ctx.set(dut.seed_load, 0)
        got_states.append([int(x) for x in ctx.get(dut.states)])
        for p in pattern:
            ctx.set(dut.step, p)
            if p:
                got_words.append([int(x) for x in ctx.get(dut.words)])
            await ctx.tick()
        got_states.append([int(x) for x in ctx.get(dut.states)])

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    s0 = seed_states(seed, N)
    assert got_states[0] == [int(x) for x in s0]
    if seed == GOLDEN:
        assert got_states[0][0] == 1
    words, final = draw_beats(s0, sum(pattern), N)
    assert np.array_equal(np.array(got_words, dtype=np.int64), words)
    assert got_states[1] == [int(x) for x in final]
