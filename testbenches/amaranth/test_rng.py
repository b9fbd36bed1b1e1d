"""XorshiftBank against reference.rng: seeding (incl. the state-0 fix-up), host writes and reads of single
states (RNG_STATE), words and states per step."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.rng import XorshiftBank
from reference.config import PRESETS
from reference.rng import GOLDEN, draw_beats, seed_states, xorshift32

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


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_host_signature_rejects_bad_n():
    from hw.rng import RngHostSignature

    with pytest.raises(TypeError, match="n: expected an integer number of generators, got True"):
        RngHostSignature(True)
    with pytest.raises(ValueError, match="n: need at least one generator, got -1"):
        RngHostSignature(-1)


@pytest.mark.parametrize("seed", [3, 4])
def test_host_write_sets_state_then_steps_match_draw_beats(seed):
    """host.we sets one generator (0 stores 1) and reads back through host.rdata; a write in a
    step cycle wins for its generator while the others step; seed_load wins over a write; the
    steps after the writes draw the words of draw_beats started from the written states."""
    dut = XorshiftBank(N)
    rng = np.random.default_rng(seed)
    states = [int(x) for x in rng.integers(0, 1 << 32, size=N, dtype=np.uint64)]
    states[int(rng.integers(0, N))] = 0
    pattern = [int(x) for x in rng.integers(0, 2, size=40)]
    got = {}

    async def write(ctx, j, value, step=0):
        ctx.set(dut.host.we, 1)
        ctx.set(dut.host.waddr, j)
        ctx.set(dut.host.wdata, value)
        ctx.set(dut.step, step)
        await ctx.tick()
        ctx.set(dut.host.we, 0)
        ctx.set(dut.step, 0)

    async def tb(ctx):
        for j in range(N):
            await write(ctx, j, states[j])
        got["read"] = []
        for j in range(N):
            ctx.set(dut.host.raddr, j)
            got["read"].append(int(ctx.get(dut.host.rdata)))
        # A write in a step cycle: generator 0 takes the write, the others step.
        before = [int(x) for x in ctx.get(dut.states)]
        await write(ctx, 0, 0xCAFEF00D, step=1)
        got["write_and_step"] = (before, [int(x) for x in ctx.get(dut.states)])
        for j in range(N):
            await write(ctx, j, states[j])
        got["start"] = [int(x) for x in ctx.get(dut.states)]
        got["words"] = []
        for p in pattern:
            ctx.set(dut.step, p)
            if p:
                got["words"].append([int(x) for x in ctx.get(dut.words)])
            await ctx.tick()
        ctx.set(dut.step, 0)
        got["final"] = [int(x) for x in ctx.get(dut.states)]
        # seed_load wins over a write in the same cycle
        ctx.set(dut.seed, 7)
        ctx.set(dut.seed_load, 1)
        await write(ctx, 1, 0x1234)
        ctx.set(dut.seed_load, 0)
        got["seeded"] = [int(x) for x in ctx.get(dut.states)]

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    written = np.array([s or 1 for s in states], dtype=np.uint32)
    assert got["read"] == [int(x) for x in written]
    before, after = got["write_and_step"]
    assert after[0] == 0xCAFEF00D
    assert after[1:] == [int(x) for x in xorshift32(np.array(before[1:], dtype=np.uint32))]
    assert got["start"] == [int(x) for x in written]
    words, final = draw_beats(written, sum(pattern), N)
    assert np.array_equal(np.array(got["words"], dtype=np.int64).reshape(-1, N), words)
    assert got["final"] == [int(x) for x in final]
    assert got["seeded"] == [int(x) for x in seed_states(7, N)]
