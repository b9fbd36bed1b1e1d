"""rtl_gen.blockbench: the register wrapper's timing and the block list (quick; the place and
route itself is the slow test of tests/rtl_gen/test_pnr.py)."""

from __future__ import annotations

from amaranth.sim import Simulator

from rtl_gen.blockbench import PlainMacs, Registered, blocks, main


def test_registered_adds_one_cycle_before_and_after():
    dut = Registered(PlainMacs(2))
    seen = []

    async def bench(ctx):
        ctx.set(dut.a, (5 << 8) | 3)            # a0 = 3, a1 = 5
        ctx.set(dut.b, (0xFE << 8) | 0x7F)      # b0 = 127, b1 = -2
        ctx.set(dut.clear, 1)
        for _ in range(4):
            await ctx.tick()
            seen.append(ctx.get(dut.acc))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    # input register (tick 1), the block's accumulator (tick 2), output register (tick 3)
    expect = (3 * 127) | (((5 * -2) & 0xFFFFFFFF) << 32)
    assert seen == [0, 0, expect, expect]


def test_every_listed_block_elaborates():
    from amaranth.back import rtlil

    for name, make in blocks().items():
        if name != "compute-unit-tiny":  # the largest; the core's own tests elaborate it
            assert "module" in rtlil.convert(Registered(make()), name="block"), name


def test_unknown_block_is_one_line(capsys):
    assert main(["lane", "no-such-block"]) == 2
    err = capsys.readouterr().err
    assert "unknown block(s) no-such-block" in err and err.count("\n") == 1
