"""The AXI4-Lite register interface with the settings register, the database and the generators behind it.

DUT: :class:`RegisterBlock`, a bench-only top wiring ``hw.axi_lite.AxiLiteSlave`` to
``hw.settings.SettingsRegister``, ``hw.database.DistributionDatabase`` and ``hw.rng.XorshiftBank``
(SEED and the RNG_STATE window) as in the core; the
sequencer side (``ctl`` status inputs, ``cmds`` stream, database commit port) is exposed as
top-level ports that this bench drives and watches.

Host traffic goes through cocotbext-axi's ``AxiLiteMaster`` only; reads and writes are issued
concurrently. Expected values come from :mod:`hw.regmap`'s register map (the same data the
manifest is written from: offsets, fields, reset values) and :mod:`reference` (settings
encoding, ``CoreConfig.digest``); the database contents from ``reference.stats.Database``.
"""

from __future__ import annotations

import cocotb
import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from testbenches.cocotb import tbutil

CONFIGS = ["tiny"]


def make_top(cfg):
    from amaranth.lib import data, stream

    from hw.axi_lite import COMMAND_LAYOUT, AxiLiteSlave, axil_members
    from hw.database import DatabaseCommitSignature, DistributionDatabase
    from hw.regmap import PERF_COUNTER_BITS, PERF_COUNTERS, address_bits
    from hw.rng import XorshiftBank
    from hw.settings import SettingsRegister
    from reference.stats import POLICY_BITS

    class RegisterBlock(wiring.Component):
        def __init__(self):
            super().__init__(axil_members(address_bits(cfg)) | {
                "irq": Out(1), "seed": Out(32), "seed_load": Out(1), "threshold": Out(POLICY_BITS),
                "cmds": Out(stream.Signature(COMMAND_LAYOUT)),
                "clear_error": Out(1), "soft_reset": Out(1), "clear_perf": Out(1), "setting_error": Out(1),
                "busy": In(1), "done": In(1), "fifo_level": In(8), "error": In(4), "irq_event": In(1),
                "perf": In(data.ArrayLayout(PERF_COUNTER_BITS, len(PERF_COUNTERS))),
                "commit": In(DatabaseCommitSignature(cfg)),
            })

        def elaborate(self, platform):
            m = Module()
            m.submodules.axil = ax = AxiLiteSlave(cfg)
            m.submodules.settings = st = SettingsRegister(cfg, read_ports=1)
            m.submodules.db = db = DistributionDatabase(cfg)
            m.submodules.bank = bank = XorshiftBank(cfg.rng_slots)
            for name in axil_members(address_bits(cfg)):
                port, mine = getattr(ax, name), getattr(self, name)
                if name in ("s_axil_awready", "s_axil_wready", "s_axil_bresp", "s_axil_bvalid", "s_axil_arready",
                            "s_axil_rdata", "s_axil_rresp", "s_axil_rvalid"):
                    m.d.comb += mine.eq(port)
                else:
                    m.d.comb += port.eq(mine)
            wiring.connect(m, ax.settings, st.host)
            wiring.connect(m, ax.db, db.host)
            wiring.connect(m, ax.rng, bank.host)
            wiring.connect(m, ax.cmds, wiring.flipped(self.cmds))
            wiring.connect(m, wiring.flipped(self.commit), db.commit)
            m.d.comb += [
                self.irq.eq(ax.irq), self.seed.eq(ax.seed), self.seed_load.eq(ax.seed_load),
                self.threshold.eq(ax.threshold),
                bank.seed.eq(ax.seed), bank.seed_load.eq(ax.seed_load),
                self.clear_error.eq(ax.ctl.clear_error), self.soft_reset.eq(ax.ctl.soft_reset),
                self.clear_perf.eq(ax.ctl.clear_perf), self.setting_error.eq(ax.ctl.setting_error),
                ax.ctl.busy.eq(self.busy), ax.ctl.done.eq(self.done), ax.ctl.fifo_level.eq(self.fifo_level),
                ax.ctl.error.eq(self.error), ax.ctl.irq_event.eq(self.irq_event), ax.ctl.perf.eq(self.perf),
            ]
            return m

    return RegisterBlock()


# ------------------------------------------------------------------------------------------
# cocotb side
# ------------------------------------------------------------------------------------------
class TB(tbutil.Clocked):
    def __init__(self, dut, rng):
        from cocotbext.axi import AxiLiteBus, AxiLiteMaster

        from hw.regmap import by_name

        super().__init__(dut)
        self.cfg = tbutil.core_config()
        self.regs = by_name(self.cfg)
        self.rng = rng
        self.axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil"), dut.clk, dut.rst)
        for sig in ("busy", "done", "fifo_level", "error", "irq_event", "perf", "commit__en", "commit__tid",
                    "commit__stats"):
            getattr(dut, sig).value = 0
        self.strobes = {"clear_error": 0, "soft_reset": 0, "clear_perf": 0, "setting_error": 0, "seed_load": 0}
        self.cmds = tbutil.StreamSink(self, "cmds", rng, stall=0.0)
        cocotb.start_soon(self._watch())

    async def _watch(self):
        from cocotb.triggers import FallingEdge, ReadOnly

        while True:
            await FallingEdge(self.clk)
            await ReadOnly()
            for k in self.strobes:
                self.strobes[k] += int(getattr(self.dut, k).value)

    def off(self, name, index=0):
        r = self.regs[name]
        return r.offset + index * r.stride

    async def read(self, addr):
        resp = await self.axil.read(addr, 4)
        return int.from_bytes(resp.data, "little"), int(resp.resp)

    async def write(self, addr, value):
        resp = await self.axil.write(addr, (value & 0xFFFFFFFF).to_bytes(4, "little"))
        return int(resp.resp)


@cocotb.test(timeout_time=20_000_000, timeout_unit="ns")
async def register_map_read_write(dut):
    """ID, digest, reset values, RW registers, strobes, STATUS and PERF composition, SLVERR."""
    from hw.regmap import PERF_COUNTER_BITS, PERF_COUNTERS, Access

    rng, _ = tbutil.test_rng("register_map_read_write", dut._log)
    tb = TB(dut, rng)
    await tb.reset()
    regs = tb.regs
    ident = regs["ID"]
    v, resp = await tb.read(tb.off("ID"))
    assert resp == 0 and v == (ident.field("magic").reset << 8) | ident.field("version").reset, f"ID {v:#x}"
    v, resp = await tb.read(tb.off("CONFIG_DIGEST"))
    assert v == int(tb.cfg.digest()[:8], 16), f"CONFIG_DIGEST {v:#x}, CoreConfig.digest() {tb.cfg.digest()}"
    v, _ = await tb.read(tb.off("THRESHOLD"))
    want = sum(f.reset << f.lsb for f in regs["THRESHOLD"].fields)
    assert v == want, f"THRESHOLD resets to {v:#x}, expected {want:#x}"
    v, _ = await tb.read(tb.off("LOAD_TIMEOUT"))
    assert v == regs["LOAD_TIMEOUT"].field("cycles").reset, f"LOAD_TIMEOUT resets to {v}"
    for _ in range(tbutil.iterations(20)):
        # RW registers
        s = rng.getrandbits(32)
        before = tb.strobes["seed_load"]
        assert await tb.write(tb.off("SEED"), s) == 0
        v, _ = await tb.read(tb.off("SEED"))
        assert v == s, f"SEED read {v:#x} after writing {s:#x}"
        assert tb.strobes["seed_load"] == before + 1, "SEED write must pulse seed_load exactly once"
        assert int(dut.seed.value) == s
        # THRESHOLD: a value wider than THRESHOLD_BITS answers SLVERR and changes nothing
        THRESHOLD_BITS = max(f.lsb + f.width for f in regs["THRESHOLD"].fields)  # noqa: N806
        before, _ = await tb.read(tb.off("THRESHOLD"))
        t = rng.getrandbits(rng.choice([THRESHOLD_BITS, 32]))
        resp = await tb.write(tb.off("THRESHOLD"), t)
        want = before if t >> THRESHOLD_BITS else t
        assert resp == (2 if t >> THRESHOLD_BITS else 0), f"THRESHOLD write of {t:#x} answered {resp}"
        v, _ = await tb.read(tb.off("THRESHOLD"))
        assert v == want, f"THRESHOLD read {v:#x} after writing {t:#x}"
        assert int(dut.threshold.value) == want
        # LOAD_TIMEOUT: any non-zero value; 0 answers SLVERR
        before, _ = await tb.read(tb.off("LOAD_TIMEOUT"))
        t = rng.choice([0, 1, rng.getrandbits(32)])
        resp = await tb.write(tb.off("LOAD_TIMEOUT"), t)
        assert resp == (0 if t else 2), f"LOAD_TIMEOUT write of {t} answered {resp}"
        v, _ = await tb.read(tb.off("LOAD_TIMEOUT"))
        assert v == (t or before), f"LOAD_TIMEOUT reads {v} after writing {t} (before {before})"
        # STATUS and PERF are compositions of the sequencer's outputs
        await tb.falling()
        st = {"busy": rng.getrandbits(1), "done": rng.getrandbits(1), "fifo_level": rng.randrange(9),
              "error": rng.randrange(9)}
        perf = [rng.choice([0, (1 << PERF_COUNTER_BITS) - 1, rng.getrandbits(PERF_COUNTER_BITS)])
                for _ in PERF_COUNTERS]
        for k, val in st.items():
            getattr(dut, k).value = val
        dut.perf.value = sum(p << (PERF_COUNTER_BITS * i) for i, p in enumerate(perf))
        v, _ = await tb.read(tb.off("STATUS"))
        for k, val in st.items():
            f = regs["STATUS"].field(k)
            assert (v >> f.lsb) & ((1 << f.width) - 1) == val, f"STATUS.{k} reads {v:#x}, driven {val}"
        for i, (name, _) in enumerate(PERF_COUNTERS):
            lo, _ = await tb.read(tb.off(name))
            hi, _ = await tb.read(tb.off(name) + 4)
            assert lo | (hi << 32) == perf[i], f"{name} reads {lo | (hi << 32):#x}, driven {perf[i]:#x}"
        # CONTROL strobes pulse once and read as 0; irq_enable reads back
        for fname in ("clear_error", "soft_reset", "clear_perf"):
            before = tb.strobes[fname]
            en = rng.getrandbits(1)
            await tb.write(tb.off("CONTROL"), regs["CONTROL"].field(fname).mask
                           | (en << regs["CONTROL"].field("irq_enable").lsb))
            await tb.falling(2)
            assert tb.strobes[fname] == before + 1, f"CONTROL.{fname} pulsed {tb.strobes[fname] - before} times"
            v, _ = await tb.read(tb.off("CONTROL"))
            assert v == en << regs["CONTROL"].field("irq_enable").lsb, f"CONTROL reads {v:#x}"
        # out of the map: SLVERR, read data 0
        holes = [a for a in range(0, 0x1000, 4) if not any(r.offset <= a < r.end for r in regs.values())]
        a = rng.choice(holes)
        v, resp = await tb.read(a)
        assert resp == 2 and v == 0, f"read of unmapped {a:#x}: resp {resp}, data {v:#x}"
        resp = await tb.write(a, rng.getrandbits(32))
        assert resp == 2, f"write of unmapped {a:#x}: resp {resp}"
        # read-only registers keep their value when written
        ro = rng.choice([r for r in regs.values() if r.access == Access.RO and r.count == 1])
        before, _ = await tb.read(ro.offset)
        await tb.write(ro.offset, rng.getrandbits(32))
        after, _ = await tb.read(ro.offset)
        assert after == before, f"read-only {ro.name} changed from {before:#x} to {after:#x} by a write"


@cocotb.test(timeout_time=20_000_000, timeout_unit="ns")
async def rng_state_window(dut):
    """RNG_STATE: random states (some 0) written to every generator in random order read back, a
    written 0 as 1; a SEED write then reseeds all of them (reference.rng.seed_states)."""
    from reference.rng import seed_states

    rng, _ = tbutil.test_rng("rng_state_window", dut._log)
    tb = TB(dut, rng)
    await tb.reset()
    n = tb.regs["RNG_STATE"].count
    assert n == tb.cfg.rng_slots
    got = [(await tb.read(tb.off("RNG_STATE", j)))[0] for j in range(n)]
    assert got == [int(x) for x in seed_states(0, n)], f"RNG_STATE after reset reads {got}"
    for _ in range(tbutil.iterations(10)):
        states = [0 if rng.random() < 0.15 else rng.getrandbits(32) for _ in range(n)]
        for j in rng.sample(range(n), n):
            assert await tb.write(tb.off("RNG_STATE", j), states[j]) == 0
        got = [(await tb.read(tb.off("RNG_STATE", j)))[0] for j in range(n)]
        assert got == [s or 1 for s in states], f"RNG_STATE reads {got} after writing {states}"
        seed = rng.getrandbits(32)
        assert await tb.write(tb.off("SEED"), seed) == 0
        await tb.falling(2)
        got = [(await tb.read(tb.off("RNG_STATE", j)))[0] for j in range(n)]
        assert got == [int(x) for x in seed_states(seed, n)], f"RNG_STATE after SEED {seed:#x} reads {got}"


@cocotb.test(timeout_time=20_000_000, timeout_unit="ns")
async def irq_pending_enable_ack(dut):
    rng, _ = tbutil.test_rng("irq_pending_enable_ack", dut._log)
    tb = TB(dut, rng)
    await tb.reset()
    ctl = tb.regs["CONTROL"]
    pend = tb.regs["STATUS"].field("irq_pending")
    for _ in range(tbutil.iterations(10)):
        en = rng.getrandbits(1)
        await tb.write(tb.off("CONTROL"), en << ctl.field("irq_enable").lsb)
        await tb.falling()
        dut.irq_event.value = 1
        await tb.falling()
        dut.irq_event.value = 0
        await tb.falling()
        v, _ = await tb.read(tb.off("STATUS"))
        assert (v >> pend.lsb) & 1 == 1, "irq_event did not set STATUS.irq_pending"
        assert int(dut.irq.value) == en, f"irq output {int(dut.irq.value)} with irq_enable={en} and pending"
        await tb.write(tb.off("CONTROL"), ctl.field("irq_ack").mask | (en << ctl.field("irq_enable").lsb))
        await tb.falling()
        v, _ = await tb.read(tb.off("STATUS"))
        assert (v >> pend.lsb) & 1 == 0, "irq_ack did not clear STATUS.irq_pending"
        assert int(dut.irq.value) == 0


@cocotb.test(timeout_time=50_000_000, timeout_unit="ns")
async def settings_window_and_database_window(dut):
    """Settings through the window (legal and illegal words) while database reads run concurrently."""
    from reference.isa import IllegalCommand, decode_setting
    from reference.stats import Database, OpStats

    rng, _ = tbutil.test_rng("settings_window_and_database_window", dut._log)
    tb = TB(dut, rng)
    cfg = tb.cfg
    await tb.reset()
    from hw.database import entry_layout
    from hw.regmap import words_per_counter

    layout = entry_layout(cfg)
    db = Database(cfg)

    async def commit(tid, s):
        await tb.falling()
        dut.commit__tid.value = tid
        dut.commit__stats.value = tbutil.pack(layout, {"hist": [int(x) for x in s.hist], "zeros": s.zeros,
                                                       "overflow": s.overflow, "underflow": s.underflow,
                                                       "total": s.total})
        await tb.falling()
        dut.commit__en.value = 1
        await tb.falling()
        dut.commit__en.value = 0

    for tid in range(cfg.tensor_ids):  # the memory is not reset: zero it through the commit port
        await tb.falling()
        dut.commit__tid.value = tid
    settings = {}
    import numpy as np

    # zero entries: commit of an all-zero entry onto unknown contents is not a clear, so the
    # bench reads the initial contents and folds them into the model instead
    wpc = words_per_counter(cfg)
    dbw = tb.regs["DATABASE"]

    async def read_entry(tid):
        vals = []
        for c in range(cfg.hist_bins + 4):
            v = 0
            for j in range(wpc):
                w, resp = await tb.read(dbw.offset + tid * dbw.stride + 4 * (c * wpc + j))
                assert resp == 0
                v |= w << (32 * j)
            vals.append(v)
        return vals

    for tid in range(cfg.tensor_ids):
        vals = await read_entry(tid)
        h = cfg.hist_bins
        db.entries[tid] = OpStats(np.array(vals[:h], dtype=np.int64), *vals[h:])
    for _ in range(tbutil.iterations(30)):
        tid = rng.randrange(cfg.tensor_ids)
        word = rng.randrange(1 << 12) if rng.random() < 0.4 else rng.randrange(1 << 11)
        try:
            legal = decode_setting(word, cfg)
        except IllegalCommand:
            legal = None
        before = tb.strobes["setting_error"]
        # a concurrent read of another settings entry contends for the window's one address
        other = rng.randrange(cfg.tensor_ids)
        wtask = cocotb.start_soon(tb.write(tb.off("SETTINGS", tid), word | (rng.getrandbits(20) << 12)))
        rv, _ = await tb.read(tb.off("SETTINGS", other))
        resp = await wtask
        assert resp == (0 if legal else 2), f"settings word {word:#x} answered {resp}"
        await tb.falling(2)
        if legal is None:
            assert tb.strobes["setting_error"] == before + 1, f"illegal setting {word:#x}: no setting_error pulse"
        else:
            settings[tid] = legal
            assert tb.strobes["setting_error"] == before
        v, _ = await tb.read(tb.off("SETTINGS", tid))
        valid = (v >> tb.regs["SETTINGS"].field("valid").lsb) & 1
        assert valid == int(tid in settings), f"SETTINGS[{tid}] valid {valid}"
        if tid in settings:
            assert v & 0xFFF == settings[tid].encode(), f"SETTINGS[{tid}] reads {v:#x}, wrote {word:#x}"
        # the database window: a commit, then the whole entry read back counter by counter
        s = OpStats(np.array([rng.choice([0, 1, rng.getrandbits(cfg.counter_bits)]) for _ in range(cfg.hist_bins)],
                             dtype=np.int64), rng.randrange(100), rng.randrange(100), rng.randrange(100),
                    rng.getrandbits(cfg.counter_bits))
        t2 = rng.randrange(cfg.tensor_ids)
        await commit(t2, s)
        db.accumulate(t2, s)
        vals = await read_entry(t2)
        e = db.read(t2)
        exp = [int(x) for x in e.hist] + [e.zeros, e.overflow, e.underflow, e.total]
        assert vals == exp, f"DATABASE[{t2}] reads {vals}, expected {exp}"
        # past the last counter of the entry: SLVERR, data 0
        past = rng.randrange((cfg.hist_bins + 4) * wpc, dbw.stride // 4)
        v, resp = await tb.read(dbw.offset + t2 * dbw.stride + 4 * past)
        assert (v, resp) == (0, 2), f"DATABASE[{t2}] word {past} (past the counters) answered {resp}, {v:#x}"


@cocotb.test(timeout_time=50_000_000, timeout_unit="ns")
async def command_push_under_backpressure(dut):
    """CMD_PUSH: eight words make one command; the last write waits while the FIFO is not ready,
    and answers SLVERR, dropping the command, while STATUS.fifo_level says the FIFO is full."""
    from hw.regmap import CMD_FIFO_DEPTH
    from reference.isa import COMMAND_WORDS

    rng, _ = tbutil.test_rng("command_push_under_backpressure", dut._log)
    tb = TB(dut, rng)
    tb.cmds.stall = 0.7
    await tb.reset()
    sent = []
    for _ in range(tbutil.iterations(20)):
        words = [rng.getrandbits(32) for _ in range(COMMAND_WORDS)]
        full = rng.random() < 0.3
        dut.fifo_level.value = CMD_FIFO_DEPTH if full else rng.randrange(CMD_FIFO_DEPTH)
        if not full:
            sent.append(words)
        for w in words[:-1]:
            assert await tb.write(tb.off("CMD_PUSH"), w) == 0
        resp = await tb.write(tb.off("CMD_PUSH"), words[-1])
        assert resp == (2 if full else 0), f"last CMD_PUSH word with fifo_level full={full} answered {resp}"
        v, _ = await tb.read(tb.off("CMD_PUSH"))
        assert v == 0, f"CMD_PUSH is write-only, read {v:#x}"
    await tb.falling(10)
    got = [[(raw >> (32 * i)) & 0xFFFFFFFF for i in range(COMMAND_WORDS)] for _, raw in tb.cmds.items]
    assert got == sent, f"commands out of CMD_PUSH: {len(got)} (first difference at " \
                        f"{next((i for i, (a, b) in enumerate(zip(got, sent, strict=False)) if a != b), None)})"


@cocotb.test(timeout_time=20_000_000, timeout_unit="ns")
async def narrow_writes_are_refused(dut):
    """A write with WSTRB != 0b1111 (cocotbext-axi: fewer than 4 bytes) answers SLVERR to every
    writable register and changes nothing: no CONTROL strobe, no register, no command word."""
    rng, _ = tbutil.test_rng("narrow_writes_are_refused", dut._log)
    tb = TB(dut, rng)
    await tb.reset()
    names = ["CONTROL", "CMD_PUSH", "SEED", "THRESHOLD", "LOAD_TIMEOUT", "SETTINGS", "RNG_STATE"]
    for _ in range(tbutil.iterations(20)):
        snapshot = {n: (await tb.read(tb.off(n)))[0] for n in names if n != "CMD_PUSH"}
        strobes = dict(tb.strobes)
        name = rng.choice(names)
        nbytes = rng.randint(1, 3)
        lane = rng.randint(0, 4 - nbytes)
        resp = await tb.axil.write(tb.off(name) + lane, bytes(rng.getrandbits(8) for _ in range(nbytes)))
        assert int(resp.resp) == 2, f"{nbytes}-byte write to {name}+{lane} answered {resp.resp}"
        await tb.falling(2)
        assert tb.strobes == strobes, f"{nbytes}-byte write to {name}+{lane} fired {tb.strobes} (was {strobes})"
        assert {n: (await tb.read(tb.off(n)))[0] for n in snapshot} == snapshot, f"write to {name} changed it"
    assert tb.cmds.items == [], "narrow CMD_PUSH writes queued a command"


def _run(config, record_property, iters, sim=None):
    from reference.config import load_config
    from testbenches.cocotb import harness

    harness.require("hw.axi_lite", "AxiLiteSlave")
    cfg = load_config(config)
    bdir = harness.build_dir(config, "axil", sim)
    src = harness.elaborate(lambda: make_top(cfg), "register_block", bdir)
    harness.run(module="testbenches.cocotb.test_axil", top="register_block", config=config, block="axil",
                sources=[src], record_property=record_property, cfg=cfg, extra_env={"DLU_ITERS": str(iters)},
                sim=sim)


@pytest.mark.parametrize("config", CONFIGS)
def test_axil(config, record_property):
    _run(config, record_property, iters=10)


@pytest.mark.slow
@pytest.mark.parametrize("rep", range(4))
def test_axil_many_seeds(rep, record_property):
    _run("tiny", record_property, iters=100)
