"""AxiLiteSlave: every register of hw.regmap through AXI4-Lite handshakes."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from hw import regmap
from hw.axi_lite import AxiLiteSlave
from hw.database import DistributionDatabase
from hw.rng import XorshiftBank
from hw.settings import SettingsRegister
from reference.config import PRESETS, CoreConfig
from reference.formats import DfpFormat, RoundingMode, TensorSetting, Width
from reference.isa import LOAD_TIMEOUT_DEFAULT, Command
from reference.rng import seed_states
from reference.stats import DEFAULT_POLICY_WORD

from .axil import AxiLiteMaster
from .test_database import random_stats, stats_const

CFG = PRESETS["tiny"]
REGS = regmap.by_name(CFG)


class Harness(wiring.Component):
    def __init__(self, cfg: CoreConfig) -> None:
        self.axil = AxiLiteSlave(cfg)
        self.settings = SettingsRegister(cfg)
        self.db = DistributionDatabase(cfg)
        self.bank = XorshiftBank(cfg.rng_slots)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.axil, m.submodules.settings, m.submodules.db = self.axil, self.settings, self.db
        m.submodules.bank = self.bank
        wiring.connect(m, self.axil.settings, self.settings.host)
        wiring.connect(m, self.axil.db, self.db.host)
        wiring.connect(m, self.axil.rng, self.bank.host)
        m.d.comb += [self.bank.seed.eq(self.axil.seed), self.bank.seed_load.eq(self.axil.seed_load)]
        return m


def run(dut, tb):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()


def test_rejects_bad_cfg():
    with pytest.raises(TypeError, match="cfg: expected a reference.config.CoreConfig"):
        AxiLiteSlave({"lanes": 2})


def test_id_digest_threshold_seed_settings_and_unmapped():
    h = Harness(CFG)
    bus = AxiLiteMaster(h.axil)
    s1 = TensorSetting(DfpFormat(Width.W8, -32), RoundingMode.FLOOR, True).encode()
    illegal = 3  # width code 3

    async def tb(ctx):
        assert await bus.read(ctx, REGS["ID"].offset) == (regmap.ID_MAGIC << 8) | regmap.REGMAP_VERSION
        assert await bus.read(ctx, REGS["CONFIG_DIGEST"].offset) == int(CFG.digest()[:8], 16)
        assert await bus.read(ctx, REGS["THRESHOLD"].offset) == DEFAULT_POLICY_WORD
        # THRESHOLD holds its fields' bits: a wider value answers SLVERR and changes nothing.
        thr_bits = max(f.lsb + f.width for f in REGS["THRESHOLD"].fields)
        assert thr_bits == 20  # threshold, headroom, rise
        assert await bus.write(ctx, REGS["THRESHOLD"].offset, (1 << thr_bits) | 0x2345) == 2
        assert await bus.read(ctx, REGS["THRESHOLD"].offset) == DEFAULT_POLICY_WORD
        assert await bus.write(ctx, REGS["THRESHOLD"].offset, 0x23456) == 0
        assert await bus.read(ctx, REGS["THRESHOLD"].offset) == 0x23456
        assert ctx.get(h.axil.threshold) == 0x23456
        assert await bus.write(ctx, REGS["SEED"].offset, 0xDEADBEEF) == 0
        assert await bus.read(ctx, REGS["SEED"].offset) == 0xDEADBEEF
        base = REGS["SETTINGS"].offset
        assert await bus.write(ctx, base + 4 * 5, s1) == 0
        assert await bus.read(ctx, base + 4 * 5) == s1 | (1 << 31)
        assert await bus.read(ctx, base + 4 * 4) == 0  # never written: invalid
        # Illegal code: SLVERR, entry unchanged, setting_error pulses exactly once.
        assert pulses == [0]
        resp = await bus.write(ctx, base + 4 * 5, illegal)
        assert resp == 2
        await ctx.tick()
        assert pulses == [1]
        assert await bus.read(ctx, base + 4 * 5) == s1 | (1 << 31)
        # Unmapped addresses answer SLVERR.
        assert (await bus.read_resp(ctx, 0x0C))[1] == 2
        assert await bus.write(ctx, 0x0C, 1) == 2
        assert (await bus.read_resp(ctx, REGS["SETTINGS"].end))[1] == 2

    pulses = [0]

    async def monitor(ctx):
        async for _clk, _rst, err in ctx.tick().sample(h.axil.ctl.setting_error):
            pulses[0] += err

    sim = Simulator(h)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.add_process(monitor)
    sim.run()


def test_cmd_push_assembles_commands_and_waits_for_a_not_full_fifo():
    """With STATUS.fifo_level below the depth, the last CMD_PUSH word is answered when the FIFO
    takes the command (in the core: the same cycle)."""
    h = Harness(CFG)
    bus = AxiLiteMaster(h.axil)
    cmds = [Command(opcode=o, tid_d=1, tid_a=2, tid_b=3, addr_a=17, addr_b=70, addr_d=140, m=3, n=9, k=5,
                    alpha=-7, alpha_frac=-3, broadcast_b=bool(o & 1), irq=True) for o in range(3)]
    got = []

    async def tb(ctx):
        ctx.set(h.axil.cmds.ready, 1)
        for c in cmds[:2]:
            for w in c.encode():
                await bus.write(ctx, REGS["CMD_PUSH"].offset, w)
        ctx.set(h.axil.cmds.ready, 0)
        words = cmds[2].encode()
        for w in words[:-1]:
            await bus.write(ctx, REGS["CMD_PUSH"].offset, w)
        # The 8th word waits for ready (a bench without a FIFO): no response while it is low.
        bus.timeout = 20
        with pytest.raises(AssertionError, match="no response"):
            await bus.write(ctx, REGS["CMD_PUSH"].offset, words[-1])
        assert ctx.get(h.axil.cmds.valid) == 1
        ctx.set(h.axil.cmds.ready, 1)
        await ctx.tick()
        ctx.set(h.axil.cmds.ready, 0)
        # finish the pending response
        for _ in range(3):
            await ctx.tick()
        assert ctx.get(h.axil.cmds.valid) == 0

    async def monitor(ctx):
        async for _clk, _rst, valid, ready, payload in ctx.tick().sample(h.axil.cmds.valid, h.axil.cmds.ready,
                                                                h.axil.cmds.payload):
            if valid and ready:
                got.append([int(x) for x in payload])

    sim = Simulator(h)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.add_process(monitor)
    sim.run()
    assert [Command.decode(w) for w in got] == cmds


def test_database_window_reads_every_counter():
    cfg = CFG
    h = Harness(cfg)
    bus = AxiLiteMaster(h.axil)
    rng = np.random.default_rng(5)
    stats = {tid: random_stats(rng, cfg) for tid in (0, 3, cfg.tensor_ids - 1)}
    win = REGS["DATABASE"]

    async def tb(ctx):
        for tid, s in stats.items():
            ctx.set(h.db.clear.tid, tid)
            ctx.set(h.db.clear.en, 1)
            await ctx.tick()
            ctx.set(h.db.clear.en, 0)
            ctx.set(h.db.commit.tid, tid)
            ctx.set(h.db.commit.stats, stats_const(cfg, s))
            await ctx.tick()
            ctx.set(h.db.commit.en, 1)
            await ctx.tick()
            ctx.set(h.db.commit.en, 0)
        for tid, s in stats.items():
            want = [int(v) for v in s.hist] + [s.zeros, s.overflow, s.underflow, s.total]
            for c, v in enumerate(want):
                addr = win.offset + tid * win.stride + c * 4 * regmap.words_per_counter(cfg)
                assert await bus.read(ctx, addr) == v, f"tid {tid} counter {c}"
        # Past the last counter of an entry: SLVERR, data 0 (every such word of the first entry).
        wpc = regmap.words_per_counter(cfg)
        for off in range(regmap.database_counters(cfg) * wpc * 4, win.stride, 4):
            assert await bus.read_resp(ctx, win.offset + off) == (0, 2), f"offset {off:#x}"

    run(h, tb)


def test_control_strobes_perf_status_and_irq():
    h = Harness(CFG)
    bus = AxiLiteMaster(h.axil)
    ctl = REGS["CONTROL"]
    st = REGS["STATUS"]

    async def tb(ctx):
        seen = {"clear_error": 0, "soft_reset": 0, "clear_perf": 0}

        async def write_watch(value):
            # Strobes are combinational during the write's completing cycle: sample each cycle.
            task_done = False
            ctx.set(h.axil.s_axil_bready, 1)
            ctx.set(h.axil.s_axil_awaddr, ctl.offset)
            ctx.set(h.axil.s_axil_wdata, value)
            ctx.set(h.axil.s_axil_wstrb, 0xF)
            ctx.set(h.axil.s_axil_awvalid, 1)
            ctx.set(h.axil.s_axil_wvalid, 1)
            for _ in range(6):
                for k in seen:
                    seen[k] += ctx.get(getattr(h.axil.ctl, k))
                aw_hs = ctx.get(h.axil.s_axil_awready)
                w_hs = ctx.get(h.axil.s_axil_wready)
                task_done |= bool(ctx.get(h.axil.s_axil_bvalid))
                await ctx.tick()
                if aw_hs:
                    ctx.set(h.axil.s_axil_awvalid, 0)
                if w_hs:
                    ctx.set(h.axil.s_axil_wvalid, 0)
            assert task_done
            ctx.set(h.axil.s_axil_awvalid, 0)
            ctx.set(h.axil.s_axil_wvalid, 0)

        await write_watch(ctl.field("clear_error").mask | ctl.field("clear_perf").mask)
        assert seen == {"clear_error": 1, "soft_reset": 0, "clear_perf": 1}
        await write_watch(ctl.field("soft_reset").mask | ctl.field("irq_enable").mask)
        assert seen == {"clear_error": 1, "soft_reset": 1, "clear_perf": 1}
        assert await bus.read(ctx, ctl.offset) == ctl.field("irq_enable").mask
        ctx.set(h.axil.ctl.busy, 1)
        ctx.set(h.axil.ctl.fifo_level, 5)
        ctx.set(h.axil.ctl.error, 6)
        ctx.set(h.axil.ctl.perf, [0x123456789ABC, 1, 0xFFFFFFFFFFFF, 0])
        assert ctx.get(h.axil.irq) == 0
        ctx.set(h.axil.ctl.irq_event, 1)
        await ctx.tick()
        ctx.set(h.axil.ctl.irq_event, 0)
        assert ctx.get(h.axil.irq) == 1
        v = await bus.read(ctx, st.offset)
        assert v == (st.field("busy").mask | st.field("irq_pending").mask | (5 << 8) | (6 << 16))
        assert await bus.read(ctx, REGS["PERF_BUSY"].offset) == 0x56789ABC
        assert await bus.read(ctx, REGS["PERF_BUSY"].offset + 4) == 0x1234
        assert await bus.read(ctx, REGS["PERF_MACS"].offset + 4) == 0xFFFF
        await bus.write(ctx, ctl.offset, ctl.field("irq_ack").mask)  # also clears irq_enable
        assert ctx.get(h.axil.irq) == 0
        assert await bus.read(ctx, st.offset) & st.field("irq_pending").mask == 0

    run(h, tb)


@pytest.mark.parametrize("seed", [1, 2])
def test_rng_state_window_writes_and_reads_every_generator(seed):
    """Random states written through RNG_STATE reach the bank (it holds them as BVALID arrives)
    and read back; a written 0 reads back 1; a SEED write then reseeds every generator; the
    word after the window is unmapped (SLVERR)."""
    h = Harness(CFG)
    bus = AxiLiteMaster(h.axil)
    win = REGS["RNG_STATE"]
    assert win.count == CFG.rng_slots and win.stride == 4 and win.access == regmap.Access.RW
    rng = np.random.default_rng(seed)
    states = [int(x) for x in rng.integers(0, 1 << 32, size=CFG.rng_slots, dtype=np.uint64)]
    zero_slot = int(rng.integers(0, CFG.rng_slots))
    states[zero_slot] = 0

    async def tb(ctx):
        assert [await bus.read(ctx, win.offset + 4 * j) for j in range(win.count)] == \
            [int(x) for x in seed_states(0, CFG.rng_slots)]
        for j in rng.permutation(win.count):
            assert await bus.write(ctx, win.offset + 4 * int(j), states[j]) == 0
            assert int(ctx.get(h.bank.states[int(j)])) == (states[j] or 1), f"slot {j}"
        want = [s or 1 for s in states]
        assert want[zero_slot] == 1
        assert [await bus.read(ctx, win.offset + 4 * j) for j in range(win.count)] == want
        assert [int(x) for x in ctx.get(h.bank.states)] == want
        assert await bus.write(ctx, REGS["SEED"].offset, 0x2468ACE0) == 0
        await ctx.tick()
        assert [await bus.read(ctx, win.offset + 4 * j) for j in range(win.count)] == \
            [int(x) for x in seed_states(0x2468ACE0, CFG.rng_slots)]
        assert (await bus.read_resp(ctx, win.end))[1] == 2
        assert await bus.write(ctx, win.end, 5) == 2

    run(h, tb)


def test_cmd_push_while_fifo_full_answers_slverr_and_drops_the_command():
    """The last word of a command while STATUS.fifo_level = CMD_FIFO_DEPTH: SLVERR within a few
    cycles (the bus never stalls), no command leaves, and CMD_PUSH expects word 0 again; the
    soft reset can be written meanwhile."""
    h = Harness(CFG)
    bus = AxiLiteMaster(h.axil, timeout=10)
    cmd_a = Command(opcode=3, tid_d=1, tid_a=2, tid_b=3, addr_a=5, addr_b=70, addr_d=140, m=3, n=9, k=5)
    cmd_b = Command(opcode=10, addr_d=7, k=11, irq=True)
    got = []

    async def tb(ctx):
        ctx.set(h.axil.cmds.ready, 1)
        ctx.set(h.axil.ctl.fifo_level, regmap.CMD_FIFO_DEPTH)
        words = cmd_a.encode()
        for w in words[:-1]:
            assert await bus.write(ctx, REGS["CMD_PUSH"].offset, w) == 0
        assert await bus.write(ctx, REGS["CMD_PUSH"].offset, words[-1]) == 2
        assert await bus.write(ctx, REGS["CONTROL"].offset, REGS["CONTROL"].field("irq_enable").mask) == 0
        # room again: the next 8 words are a whole new command (the dropped one left nothing)
        ctx.set(h.axil.ctl.fifo_level, regmap.CMD_FIFO_DEPTH - 1)
        assert await bus.push(ctx, REGS["CMD_PUSH"].offset, cmd_b.encode()) == 0
        # the bus master's retry loop: refused twice while full, then queued
        # the bus master's retry: refused twice while full, then queued
        refusals = []
        ctx.set(h.axil.ctl.fifo_level, regmap.CMD_FIFO_DEPTH)
        for _ in range(2):
            for w in words[:-1]:
                assert await bus.write(ctx, REGS["CMD_PUSH"].offset, w) == 0
            refusals.append(await bus.write(ctx, REGS["CMD_PUSH"].offset, words[-1]))
        ctx.set(h.axil.ctl.fifo_level, 0)
        assert refusals == [2, 2]
        assert await bus.push(ctx, REGS["CMD_PUSH"].offset, words) == 0

    async def monitor(ctx):
        async for _clk, _rst, valid, ready, payload in ctx.tick().sample(h.axil.cmds.valid, h.axil.cmds.ready,
                                                                h.axil.cmds.payload):
            if valid and ready:
                got.append([int(x) for x in payload])

    sim = Simulator(h)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.add_process(monitor)
    sim.run()
    assert [Command.decode(w) for w in got] == [cmd_b, cmd_a]


@pytest.mark.parametrize("reg", ["CONTROL", "CMD_PUSH", "SEED", "THRESHOLD", "LOAD_TIMEOUT", "SETTINGS", "RNG_STATE"])
def test_partial_byte_strobes_answer_slverr_and_change_nothing(reg):
    """Every write with WSTRB != 0b1111 is refused whole: no CONTROL strobe fires, no register,
    settings entry, generator state or command word changes."""
    h = Harness(CFG)
    bus = AxiLiteMaster(h.axil)
    addr = REGS[reg].offset
    ctl = REGS["CONTROL"]
    value = {"CONTROL": sum(f.mask for f in ctl.fields), "SETTINGS": TensorSetting(
        DfpFormat(Width.W16, 3), RoundingMode.NEAREST_EVEN, False).encode()}.get(reg, 0x5A5A5A5A & 0xFFFF)
    fired = []

    async def tb(ctx):
        before = {r: await bus.read_resp(ctx, REGS[r].offset) for r in ("CONTROL", "SEED", "THRESHOLD",
                                                                         "LOAD_TIMEOUT", "SETTINGS", "RNG_STATE")}
        ctx.set(h.axil.cmds.ready, 1)
        for strb in (0x0, 0x1, 0x3, 0x7, 0xE, 0x8):
            assert await bus.write(ctx, addr, value, strb=strb) == 2, f"WSTRB {strb:#x}"
        after = {r: await bus.read_resp(ctx, REGS[r].offset) for r in before}
        assert after == before
        assert ctx.get(h.axil.seed_load) == 0
        # CMD_PUSH: eight narrow writes queue nothing; full writes still assemble from word 0
        if reg == "CMD_PUSH":
            cmd = Command(opcode=4, tid_d=3, m=2, n=2)
            assert await bus.push(ctx, addr, cmd.encode()) == 0
            for _ in range(3):
                await ctx.tick()
            assert [Command.decode(w) for w in cmds] == [cmd]

    cmds = []

    async def monitor(ctx):
        async for _clk, _rst, *sig in ctx.tick().sample(h.axil.ctl.clear_error, h.axil.ctl.soft_reset,
                                                        h.axil.ctl.clear_perf, h.axil.cmds.valid,
                                                        h.axil.cmds.ready, h.axil.cmds.payload):
            fired.extend(n for n, v in zip(("clear_error", "soft_reset", "clear_perf"), sig[:3], strict=True) if v)
            if sig[3] and sig[4]:
                cmds.append([int(x) for x in sig[5]])

    sim = Simulator(h)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.add_process(monitor)
    sim.run()
    assert fired == []


def test_load_timeout_register_resets_to_default_and_refuses_zero():
    h = Harness(CFG)
    bus = AxiLiteMaster(h.axil)
    reg = REGS["LOAD_TIMEOUT"]

    async def tb(ctx):
        assert await bus.read(ctx, reg.offset) == LOAD_TIMEOUT_DEFAULT == reg.field("cycles").reset
        assert await bus.write(ctx, reg.offset, 0) == 2
        assert await bus.read(ctx, reg.offset) == LOAD_TIMEOUT_DEFAULT
        assert await bus.write(ctx, reg.offset, 0xFFFFFFFF) == 0
        assert ctx.get(h.axil.ctl.load_timeout) == 0xFFFFFFFF
        assert await bus.write(ctx, reg.offset, 1) == 0
        assert await bus.read(ctx, reg.offset) == 1 == ctx.get(h.axil.ctl.load_timeout)

    run(h, tb)


def test_every_error_code_fits_status_error_and_timed_out_load_cycles():
    from reference.isa import SETUP_CYCLES, ErrorCode, timed_out_load_cycles

    width = REGS["STATUS"].field("error").width
    assert all(0 <= int(e) < (1 << width) for e in ErrorCode)
    assert timed_out_load_cycles(0) == SETUP_CYCLES and timed_out_load_cycles(7) == SETUP_CYCLES + 7
    with pytest.raises(ValueError, match="accepted=-1 is negative"):
        timed_out_load_cycles(-1)
