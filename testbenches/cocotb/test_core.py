"""The whole DLU core (``dlu_core.v`` from ``dlu gen``) through its AXI ports only.

Bus models: cocotbext-axi ``AxiLiteMaster`` on ``s_axil_*`` (registers, command FIFO),
``AxiStreamSource`` on ``s_axis_*`` (LOAD data) and ``AxiStreamSink`` on ``m_axis_*`` (STORE
data), with seeded idle cycles on the source and back-pressure on the sink. Register
addresses come from the ``manifest.json`` the generator writes beside the Verilog.

Scoreboard: :class:`testbenches.cocotb.core_model.CoreModel` (reference only). For every
command: ``STATUS.error`` (illegal commands and settings raise their code; a clear returns it
to 0), the busy cycles it took (``PERF_BUSY`` minus the stream-stall cycles ``PERF_STALL``)
against :func:`reference.isa.cycles`; for every compute command the result tensor (read back
with STORE, unspecified padding masked) and the destination's database entry; after
POLICY_UPDATE the settings register; at the end every database entry, the settings, the
MAC/value counters and the generator states (RNG_STATE; the command stream starts from random
states written there).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import cocotb
import numpy as np
import pytest

from sim.rtl_bench import Core
from testbenches.cocotb import fcov, tbutil
from testbenches.cocotb.core_model import Outcome

Outcome.got_words = None  # filled by Checker.run for a STORE

CONFIGS = ["tiny"]


# ------------------------------------------------------------------------------------------
# Stimulus: commands that are legal by construction, steered to uncovered coverage bins
# ------------------------------------------------------------------------------------------
def random_values(rng: random.Random, n: int, bits: int, small: bool) -> list[int]:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.12:
            out.append(rng.choice([lo, hi, 0, -1, 1, lo + 1]))
        elif small or r < 0.3:
            out.append(rng.randint(-8, 8))
        else:
            out.append(rng.randint(lo, hi))
    return out


class Stimulus:
    """Generates compute commands with their settings and operand data."""

    def __init__(self, cfg, rng: random.Random):
        self.cfg, self.rng = cfg, rng

    def shape(self, op, v):
        rng = self.rng
        m = rng.choice([1, 1, 2, 3, rng.randint(1, 5)])
        n = rng.choice([1, v - 1 if v > 1 else 1, v, v + 1, rng.randint(1, 2 * v + 1)])
        k = rng.choice([1, 2, rng.randint(1, 6)]) if op == 0 else 1
        return m, n, k

    def candidate(self, op, width, rounding):
        """(settings {tid: TensorSetting}, Command without addresses, {role: DfpTensor})."""
        from reference.formats import FRAC_MAX, FRAC_MIN, DfpFormat, DfpTensor, RoundingMode, TensorSetting, Width
        from reference.isa import operand_shapes
        from reference.ops import Op

        cfg, rng = self.cfg, self.rng
        op = Op(op)
        tids = rng.sample(range(cfg.tensor_ids), 3)
        w_a = w_b = width
        if op == Op.CONVERT:
            w_a = rng.choice(list(Width))
        w_op = max(width, w_a)
        v = cfg.values_per_beat(w_op)
        m, n, k = self.shape(int(op), v)
        f_a = rng.choice([rng.randint(-4, 12), rng.randint(FRAC_MIN, FRAC_MAX)])
        f_b = rng.choice([f_a, rng.randint(-4, 12), rng.randint(FRAC_MIN, FRAC_MAX)])
        f_d = max(FRAC_MIN, min(FRAC_MAX, f_a + rng.choice([0, 0, rng.randint(-12, 12), rng.randint(-40, 40)])))
        if op in (Op.MATMUL, Op.MUL):
            f_d = max(FRAC_MIN, min(FRAC_MAX, f_a + f_b + rng.choice([0, rng.randint(-24, 24), rng.randint(-80, 40),
                                                                       rng.randint(-160, -90)])))
        alpha, alpha_frac = 0, 0
        if op == Op.AXPY:
            alpha = random_values(rng, 1, width.bits, False)[0]
            alpha_frac = rng.choice([0, rng.randint(0, width.bits), rng.randint(FRAC_MIN, FRAC_MAX)])
        auto = [rng.random() < 0.7 for _ in range(3)]
        settings = {
            tids[0]: TensorSetting(DfpFormat(w_a, f_a), RoundingMode(rng.randrange(3)), auto[0]),
            tids[1]: TensorSetting(DfpFormat(w_b, f_b), RoundingMode(rng.randrange(3)), auto[1]),
            tids[2]: TensorSetting(DfpFormat(width, f_d), rounding, auto[2]),
        }
        broadcast = op in (Op.ADD, Op.SUB, Op.MUL) and rng.random() < 0.25
        from reference.isa import Command

        cmd = Command(int(op), tid_d=tids[2], tid_a=tids[0], tid_b=tids[1], m=m, n=n, k=k,
                      alpha=alpha, alpha_frac=alpha_frac, broadcast_b=broadcast, irq=rng.random() < 0.1)
        small = rng.random() < 0.3
        data = {}
        for role, (rows, cols) in operand_shapes(cmd).items():
            if role == "d":
                continue
            fmt = settings[tids[0] if role == "a" else tids[1]].fmt
            vals = random_values(rng, rows * cols, fmt.bits, small)
            data[role] = DfpTensor(np.array(vals, dtype=np.int64).reshape(rows, cols), fmt)
        return settings, cmd, data

    def place(self, cmd, settings):
        """Give the command addresses in three different banks."""
        from dataclasses import replace

        from reference.isa import operand_shapes, tensor_words

        cfg, rng = self.cfg, self.rng
        banks = rng.sample(range(cfg.spad_banks), 3)
        shapes = operand_shapes(cmd)
        fmts = {"a": settings[cmd.tid_a].fmt, "b": settings[cmd.tid_b].fmt, "d": settings[cmd.tid_d].fmt}
        addr = {}
        for (role, (rows, cols)), bank in zip(sorted(shapes.items()), banks, strict=False):
            words = tensor_words(rows, cols, fmts[role], cfg)
            if words > cfg.spad_words:
                return None
            addr[role] = bank * cfg.spad_words + rng.randint(0, cfg.spad_words - words)
        return replace(cmd, addr_a=addr.get("a", 0), addr_b=addr.get("b", 0), addr_d=addr["d"])


# ------------------------------------------------------------------------------------------
# cocotb side
# ------------------------------------------------------------------------------------------
class CoreTB(tbutil.Clocked, Core):
    """The core with its clock, reset and bus models; register access from :class:`sim.rtl_bench.Core`."""

    def __init__(self, dut, rng: random.Random):
        tbutil.Clocked.__init__(self, dut)
        self.cfg = tbutil.core_config()
        self.manifest = json.loads(Path(os.environ["DLU_MANIFEST"]).read_text())
        Core.__init__(self, dut, self.manifest)
        self.rng = rng
        self.idle = self.backpressure = False
        self.beats_in = self.beats_out = 0
        self.irq_enable = 0
        self.out_of_reset = False
        cocotb.start_soon(self._count_beats())

    async def _count_beats(self):
        """Beats accepted on s_axis and m_axis (sampled at the rising edge that transfers them)."""
        from cocotb.triggers import FallingEdge, ReadOnly

        d = self.dut
        while True:  # bus models drive on rising edges: sample settled values half a cycle later
            await FallingEdge(self.clk)
            await ReadOnly()
            if not self.out_of_reset:  # before the first reset, Icarus shows X on registered outputs
                continue
            # Icarus 11 leaves an Amaranth combinational output X until one of its inputs first
            # changes (its time-0 trigger does not fire there): X counts as "no transfer"
            v = [d.s_axis_tvalid.value, d.s_axis_tready.value, d.m_axis_tvalid.value, d.m_axis_tready.value]
            v = [int(x) if x.is_resolvable else 0 for x in v]
            self.beats_in += v[0] & v[1]
            self.beats_out += v[2] & v[3]

    def set_stalls(self, idle: bool, backpressure: bool):
        rng = self.rng
        self.idle, self.backpressure = idle, backpressure

        def gen(p):
            while True:
                yield rng.random() < p

        # cocotbext-axi 0.1.28: clear_pause_generator() kills the generator but leaves `pause` at
        # its last value, which can stall the stream forever; so reset it explicitly.
        if idle:
            self.src.set_pause_generator(gen(0.3))
        else:
            self.src.clear_pause_generator()
            self.src.pause = False
        if backpressure:
            self.sink.set_pause_generator(gen(0.4))
        else:
            self.sink.clear_pause_generator()
            self.sink.pause = False

    # -- registers ----------------------------------------------------------------------
    def fmask(self, reg: str, name: str, value: int = 1) -> int:
        for f in self.regs[reg]["fields"]:
            if f["name"] == name:
                return (value & ((1 << f["width"]) - 1)) << f["lsb"]
        raise KeyError(f"{reg}.{name}")

    async def control(self, *strobes: str) -> None:
        """Write CONTROL with the given strobe bits; irq_enable keeps its current value (every
        CONTROL write sets it from its bit)."""
        v = self.fmask("CONTROL", "irq_enable", self.irq_enable)
        for f in strobes:
            v |= self.fmask("CONTROL", f)
        await self.wr(self.addr("CONTROL"), v)

    async def reset(self, cycles: int = 4, rst_name: str = "rst"):
        await super().reset(cycles, rst_name)
        self.out_of_reset = True

    async def check_identity(self):
        """ID and CONFIG_DIGEST read back what the manifest and reference.config say."""
        man = self.manifest
        assert man["config"] == self.cfg.to_dict(), f"manifest config {man['config']} is not {self.cfg.to_dict()}"
        digest = await self.rd(self.addr("CONFIG_DIGEST"))
        assert digest == int(self.cfg.digest()[:8], 16) == int(man["config_digest"][:8], 16), (
            f"CONFIG_DIGEST {digest:#010x}, manifest {man['config_digest']}, reference {self.cfg.digest()}")
        ident = await self.rd(self.addr("ID"))
        for f in self.regs["ID"]["fields"]:
            assert self.field("ID", f["name"], ident) == f["reset"], f"ID.{f['name']} reads {ident:#x}"

    async def read_counter(self, name: str) -> int:
        lo = await self.rd(self.addr(name))
        hi = await self.rd(self.addr(name) + 4)
        return lo | (hi << 32)

    async def status(self) -> dict:
        v = await self.rd(self.addr("STATUS"))
        return {f["name"]: self.field("STATUS", f["name"], v) for f in self.regs["STATUS"]["fields"]}

    async def push(self, cmd) -> int:
        """Write ``cmd`` to CMD_PUSH; while its last word answers SLVERR (FIFO full: dropped),
        write the whole command again. Returns the number of refusals."""
        *head, last = cmd.encode()
        for refused in range(10_000):
            for w in head:
                resp = await self.axil.write(self.addr("CMD_PUSH"), w.to_bytes(4, "little"))
                assert int(resp.resp) == 0, f"CMD_PUSH word {w:#x}: BRESP {resp.resp}"
            resp = await self.axil.write(self.addr("CMD_PUSH"), last.to_bytes(4, "little"))
            if int(resp.resp) == 0:
                return refused
            assert int(resp.resp) == 2, f"CMD_PUSH: BRESP {resp.resp}"
            fcov.sample_ctl("cmd_fifo_full")
        raise AssertionError(f"CMD_PUSH: {cmd} refused 10000 times")

    async def wait_done(self, max_polls: int = 2_000) -> dict:
        """Poll STATUS until done; each poll is one AXI read (a few cycles)."""
        for _ in range(max_polls):
            st = await self.status()
            if st["done"] and not st["busy"]:
                return st
        d = self.dut
        raise AssertionError(f"core not done after {max_polls} STATUS polls: {st}; s_axis queue "
                             f"{self.src.count()} frames (pause {self.src.pause}), tvalid={d.s_axis_tvalid.value} "
                             f"tready={d.s_axis_tready.value}; "
                             f"m_axis received {self.sink.count()} frames, tvalid={d.m_axis_tvalid.value} "
                             f"tready={d.m_axis_tready.value}")

    async def read_db_entry(self, tid: int) -> dict:
        vals = await self.db_entry(tid)
        h = self.cfg.hist_bins
        return {"hist": vals[:h], "zeros": vals[h], "overflow": vals[h + 1], "underflow": vals[h + 2],
                "total": vals[h + 3]}


async def start(dut, name: str):
    """A reset core whose identity is checked, with its seeded ``random.Random``, bench, model and checker."""
    from testbenches.cocotb.core_model import CoreModel

    rng, _ = tbutil.test_rng(name, dut._log)
    tb = CoreTB(dut, rng)
    await tb.reset()
    await tb.check_identity()
    model = CoreModel(tb.cfg, seed=0)
    return rng, tb, model, Checker(tb, model, dut._log)


def stats_dict(s) -> dict:
    return {"hist": [int(x) for x in s.hist], "zeros": s.zeros, "overflow": s.overflow,
            "underflow": s.underflow, "total": s.total}


class Checker:
    """Runs commands on the DUT and the model side by side and compares everything."""

    def __init__(self, tb: CoreTB, model, log):
        self.tb, self.model, self.log = tb, model, log
        self.n = 0

    async def counters(self):
        return await self.tb.read_counter("PERF_BUSY"), await self.tb.read_counter("PERF_STALL")

    async def write_setting(self, tid: int, word: int) -> None:
        await self.tb.wr(self.tb.addr("SETTINGS", tid), word)
        self.model.write_setting(tid, word)

    async def run(self, cmd, load_words=None, what="", check_store=True):
        from reference.isa import Ctl, ErrorCode

        tb, model = self.tb, self.model
        busy0, stall0 = await self.counters()
        in0, out0 = tb.beats_in, tb.beats_out
        exp = model.execute(cmd, load_words)
        self.log.info("command %d (%s): %s -> error %s, %d cycles", self.n + 1, what, cmd, exp.error.name, exp.cycles)
        starved = cmd.opcode == Ctl.LOAD and exp.error == ErrorCode.LOAD_TIMEOUT
        if starved:
            # queued before the command, so that the words wait for the LOAD and then run dry
            from cocotbext.axi import AxiStreamFrame

            if load_words:
                await tb.src.send(AxiStreamFrame(tdata=list(load_words)))
        await tb.push(cmd)
        if cmd.opcode == Ctl.LOAD and exp.error == 0:
            from cocotbext.axi import AxiStreamFrame

            await tb.src.send(AxiStreamFrame(tdata=list(load_words)))
        got_frame = None
        if cmd.opcode == Ctl.STORE and exp.error == 0:
            got_frame = await tb.sink.recv(compact=False)
        try:
            st = await tb.wait_done(200 + 2 * exp.cycles)
        except AssertionError as e:
            raise AssertionError(f"command {self.n + 1} {what} {cmd}: {e}; beats in/out since it was pushed: "
                                 f"{tb.beats_in - in0}/{tb.beats_out - out0}") from None
        busy1, stall1 = await self.counters()
        self.n += 1
        ctx = f"command {self.n} {what} {cmd}"
        n_in = exp.cmd.k if (cmd.opcode == Ctl.LOAD and exp.error == 0) else len(load_words) if starved else 0
        n_out = exp.cmd.k if (cmd.opcode == Ctl.STORE and exp.error == 0) else 0
        assert (tb.beats_in - in0, tb.beats_out - out0) == (n_in, n_out), (
            f"{ctx}: s_axis/m_axis beats {tb.beats_in - in0}/{tb.beats_out - out0}, expected {n_in}/{n_out}")
        assert st["error"] == int(model.error), f"{ctx}: STATUS.error {st['error']}, expected {int(model.error)}"
        took = (busy1 - busy0) - (stall1 - stall0)
        assert took == exp.cycles, (f"{ctx}: took {took} cycles (busy {busy1 - busy0}, stalled {stall1 - stall0}), "
                                    f"reference.isa.cycles says {exp.cycles}")
        if cmd.irq and exp.error == 0:  # a completed command with the interrupt flag
            assert st["irq_pending"] == 1, f"{ctx}: STATUS.irq_pending not set by a command with irq=1"
            assert int(tb.dut.irq.value) == tb.irq_enable, (
                f"{ctx}: irq output {tb.dut.irq.value}, irq_enable {tb.irq_enable}")
            tb.irq_enable = int(tb.rng.random() < 0.5)
            await tb.wr(tb.addr("CONTROL"), tb.fmask("CONTROL", "irq_ack") | tb.fmask("CONTROL", "irq_enable",
                                                                                        tb.irq_enable))
            st = await tb.status()
            assert st["irq_pending"] == 0 and int(tb.dut.irq.value) == 0, f"{ctx}: irq_ack left {st}"
            fcov.sample_ctl("irq")
        elif exp.error == 0:
            assert st["irq_pending"] == 0, f"{ctx}: STATUS.irq_pending set by a command with irq=0"
        if got_frame is not None:
            got = list(got_frame.tdata)
            assert len(got) == cmd.k, f"{ctx}: STORE sent {len(got)} words, expected {cmd.k}"
            exp.got_words = got
            for i, (g, e, mk) in enumerate(zip(got, exp.store_words, exp.store_masks, strict=True)):
                assert not check_store or g & mk == e & mk, (
                    f"{ctx}: STORE word {i}: got {g:#x}, expected {e:#x} (mask {mk:#x})")
        return exp


async def run_compute(chk: Checker, stim: Stimulus, op, width, rounding, target_flow):
    """Settings, LOADs, the compute command, STORE of the result and its database entry."""
    from reference.isa import Command, Ctl, operand_shapes, tensor_words

    model, tb = chk.model, chk.tb
    from testbenches.cocotb.core_model import CoreModel

    best = None
    for _ in range(40):  # steer to the target overflow/underflow bin with the reference
        settings, cmd, data = stim.candidate(op, width, rounding)
        cmd = stim.place(cmd, settings)
        if cmd is None:
            continue
        probe = CoreModel(model.cfg)
        probe.settings = dict(settings)
        probe.rng = model.rng.copy()
        for role, t in data.items():
            probe.write_tensor(cmd.addr_a if role == "a" else cmd.addr_b, t)
        o = probe.execute(cmd)
        if o.error:
            continue
        best = (settings, cmd, data)
        if fcov.flow_of(o.stats.overflow, o.stats.underflow) == target_flow:
            break
    assert best is not None, "stimulus generator found no legal command"
    settings, cmd, data = best
    for tid, s in settings.items():
        await chk.write_setting(tid, s.encode())
    for role, t in data.items():
        words = CoreModel.pack_rows(t, model.cfg)
        await chk.run(Command(Ctl.LOAD, addr_d=cmd.addr_a if role == "a" else cmd.addr_b, k=len(words)), words,
                      what=f"LOAD {role}")
    exp = await chk.run(cmd, what="compute")
    rows, cols = operand_shapes(cmd)["d"]
    fmt_d = settings[cmd.tid_d].fmt
    st = await chk.run(Command(Ctl.STORE, addr_a=cmd.addr_d, k=tensor_words(rows, cols, fmt_d, model.cfg)),
                       what="STORE result", check_store=False)
    # compare value by value, naming the element and its operands
    scratch = CoreModel(model.cfg)
    scratch.mem[: len(st.got_words)] = st.got_words
    got_t = scratch.read_tensor(0, rows, cols, fmt_d).data
    want_t = model.read_tensor(cmd.addr_d, rows, cols, fmt_d).data
    bad = np.argwhere(got_t != want_t)
    if bad.size:
        r0, c0 = (int(x) for x in bad[0])
        ops_txt = ", ".join(f"{role}={t.fmt}" for role, t in data.items())
        elem = ""
        if cmd.opcode != 0:  # elementwise: show the operand values of that element
            elem = "; operands at it: " + ", ".join(
                f"{role}={int(t.data[min(r0, t.shape[0] - 1), c0])}" for role, t in data.items())
        raise AssertionError(
            f"{cmd} (d={fmt_d} {settings[cmd.tid_d].rounding.name}, {ops_txt}): {len(bad)} of {got_t.size} result "
            f"values differ; first d[{r0},{c0}] got {int(got_t[r0, c0])}, expected {int(want_t[r0, c0])}{elem}")
    got = await tb.read_db_entry(cmd.tid_d)
    want = stats_dict(model.db.read(cmd.tid_d))
    assert got == want, f"{cmd}: database entry {cmd.tid_d}: got {got}, expected {want}"
    fcov.sample_cmd(cmd.opcode, width, rounding, exp.stats.overflow, exp.stats.underflow,
                    exp.out_fmt.frac, exp.shift, exp.acc_bits)
    fcov.sample_stall(tb.idle, tb.backpressure)
    return exp


async def soft_reset(tb, model):
    """CONTROL.soft_reset with an error pending; afterwards (regmap): no settings are valid, the
    performance counters and STATUS.error are 0, the scratchpad and database keep their contents.
    The generators restart from seed_states(0) (regmap; checked by the Amaranth core bench); this
    bench rewrites SEED before anything else, so its model needs no copy of that rule."""
    from reference.isa import Command

    await tb.push(Command(opcode=15))  # an illegal command, so an error is pending
    await tb.wait_done()
    await tb.control("soft_reset")
    model.settings.clear()
    model.clear_error()
    model.perf_busy = model.perf_macs = model.perf_values = 0
    st = await tb.wait_done()
    assert st["error"] == 0 and st["fifo_level"] == 0, f"after soft_reset STATUS is {st}"
    for name, want in (("PERF_BUSY", 0), ("PERF_MACS", 0), ("PERF_VALUES", 0)):
        got = await tb.read_counter(name)
        # the STATUS polls above ran no command, so the counters stay at 0
        assert got == want, f"{name} = {got} after soft_reset"
    for tid in range(tb.cfg.tensor_ids):
        v = await tb.rd(tb.addr("SETTINGS", tid))
        assert tb.field("SETTINGS", "valid", v) == 0, f"SETTINGS[{tid}] still valid after soft_reset"
    seed = tb.rng.getrandbits(32)
    await tb.wr(tb.addr("SEED"), seed)
    model.reseed(seed)
    fcov.sample_ctl("soft_reset")


async def write_rng_states(tb, model):
    """Random states (some 0) into every generator through the RNG_STATE window, read back: a
    written 0 reads 1 (reference.rng.seed_states' rule); the model continues from them."""
    n = tb.regs["RNG_STATE"]["count"]
    assert n == tb.cfg.rng_slots, f"RNG_STATE has {n} entries, CoreConfig.rng_slots is {tb.cfg.rng_slots}"
    states = [0 if tb.rng.random() < 0.1 else tb.rng.getrandbits(32) for _ in range(n)]
    for j, s in enumerate(states):
        await tb.wr(tb.addr("RNG_STATE", j), s)
    model.rng = np.array([s or 1 for s in states], dtype=np.uint32)
    got = [await tb.rd(tb.addr("RNG_STATE", j)) for j in range(n)]
    assert got == [int(x) for x in model.rng], f"RNG_STATE reads {got} after writing {states}"


async def check_rng_states(tb, model, what: str):
    got = [await tb.rd(tb.addr("RNG_STATE", j)) for j in range(tb.cfg.rng_slots)]
    assert got == [int(x) for x in model.rng], f"{what}: RNG_STATE reads {got}, reference {list(model.rng)}"


def illegal_command(cfg, rng, model):
    """A command :func:`reference.isa.check_command` rejects, for each ErrorCode but BAD_SETTING."""
    from reference.isa import Command, Ctl
    from reference.ops import Op

    valid = sorted(model.settings)
    kind = rng.choice(["opcode", "tid", "nosetting", "shape", "range", "bank", "width", "alpha"])
    t = rng.choice(valid) if valid else 0
    base = Command(int(Op.ADD), tid_d=t, tid_a=t, tid_b=t, addr_a=0, addr_b=cfg.spad_words,
                   addr_d=2 * cfg.spad_words, m=1, n=1)
    from dataclasses import replace

    if kind == "opcode":
        return replace(base, opcode=rng.randint(12, 15))
    if kind == "tid":
        role = rng.choice(["tid_a", "tid_b", "tid_d"])
        cmd = replace(base, **{role: rng.randint(cfg.tensor_ids, 1023)})
        return replace(cmd, opcode=int(Ctl.CLEAR_STATS)) if role == "tid_d" and rng.random() < 0.3 else cmd
    if kind == "nosetting":
        free = [i for i in range(cfg.tensor_ids) if i not in model.settings]
        return replace(base, **{rng.choice(["tid_a", "tid_b", "tid_d"]): free[0]}) if free else replace(base, m=0)
    if kind == "shape":
        return rng.choice([replace(base, m=0), replace(base, n=0), replace(base, opcode=int(Op.MATMUL), k=0),
                           replace(base, opcode=int(Op.MATMUL), k=(1 << 16) + 1)])
    if kind == "range":
        return rng.choice([replace(base, addr_d=cfg.spad_banks * cfg.spad_words + rng.randint(0, 100)),
                           replace(base, addr_a=cfg.spad_words - 1, n=4 * cfg.lanes * 8),
                           replace(base, opcode=10, addr_d=cfg.spad_banks * cfg.spad_words - 1, k=2)])
    if kind == "bank":
        return replace(base, addr_b=1)
    if kind == "width":
        others = [i for i in valid if model.settings[i].fmt.width != model.settings[t].fmt.width]
        return replace(base, tid_b=others[0]) if others else replace(base, m=0)
    return replace(base, opcode=int(Op.AXPY), alpha_frac=rng.choice([-100, 100]))


@cocotb.test(timeout_time=200_000_000, timeout_unit="ns")
async def random_command_stream(dut):
    """Coverage-steered random compute commands, control commands and illegal commands."""
    from reference.formats import RoundingMode, Width
    from reference.isa import Command, Ctl, ErrorCode
    from reference.ops import Op

    rng, tb, model, chk = await start(dut, "random_command_stream")
    cfg = tb.cfg
    # a defined starting state: seed, threshold, every database entry cleared
    seed = rng.getrandbits(32)
    await tb.wr(tb.addr("SEED"), seed)
    model.reseed(seed)
    await check_rng_states(tb, model, "after the SEED write")
    await write_rng_states(tb, model)  # the stochastic commands below start from these states
    await chk.run(Command(int(Ctl.CLEAR_STATS), broadcast_b=True), what="CLEAR_STATS all")
    n_cmds = tbutil.iterations(40)
    def feasible(b):
        names = (b[0].name, b[1].name, b[2].name, b[3])
        return not any(all(x is None or x == y for x, y in zip(ign, names, strict=True)) for ign in fcov.INFEASIBLE)

    bins = [(o, w, r, f) for o in Op for w in Width for r in RoundingMode for f in fcov.FLOWS]
    bins = [b for b in bins if feasible(b)]
    hits = {b: 0 for b in bins}
    for i in range(n_cmds):
        if i % 10 == 0:
            tb.set_stalls(rng.random() < 0.5, rng.random() < 0.5)
        r = rng.random()
        if r < 0.06:
            cmd = illegal_command(cfg, rng, model)
            await chk.run(cmd, what="illegal")
            fcov.sample_ctl(f"error_{ErrorCode(model.error).name}" if model.error else "clear_error")
            await tb.control("clear_error")
            model.clear_error()
            st = await tb.status()
            assert st["error"] == 0, f"STATUS.error {st['error']} after clear_error"
            continue
        if r < 0.09:
            tid, word = rng.randrange(cfg.tensor_ids), rng.randrange(1 << 12)
            await chk.write_setting(tid, word)
            st = await tb.status()
            assert st["error"] == int(model.error), f"settings word {word:#x}: STATUS.error {st['error']}"
            if model.error:
                fcov.sample_ctl("error_BAD_SETTING")
                await tb.control("clear_error")
                model.clear_error()
            continue
        if r < 0.13:
            await tb.wr(tb.addr("THRESHOLD"),
                        rng.choice([0, 66, 65535, rng.randrange(1 << 16), rng.randrange(1 << 20)]))
            model.threshold = await tb.rd(tb.addr("THRESHOLD"))
            await chk.run(Command(int(Ctl.POLICY_UPDATE)), what="POLICY_UPDATE")
            fcov.sample_ctl("POLICY_UPDATE")
            for tid in range(cfg.tensor_ids):
                v = await tb.rd(tb.addr("SETTINGS", tid))
                valid = tb.field("SETTINGS", "valid", v)
                assert valid == int(tid in model.settings), f"tid {tid}: valid bit {valid}"
                if valid:
                    got = tb.field("SETTINGS", "setting", v)
                    assert got == model.settings[tid].encode(), (
                        f"after POLICY_UPDATE tid {tid}: setting {got:#x}, expected {model.settings[tid].encode():#x}")
            continue
        if r < 0.15:
            bc = rng.random() < 0.5
            await chk.run(Command(int(Ctl.CLEAR_STATS), tid_d=rng.randrange(cfg.tensor_ids), broadcast_b=bc),
                          what="CLEAR_STATS")
            fcov.sample_ctl("CLEAR_STATS")
            continue
        if r < 0.16:
            await soft_reset(tb, model)
            continue
        if r < 0.17:
            from reference.rng import GOLDEN, MASK32

            # sometimes the seed whose seeded state of one generator is 0 (it must become 1)
            seed = rng.choice([rng.getrandbits(32), ((rng.randrange(cfg.rng_slots) + 1) * GOLDEN) & MASK32])
            await tb.wr(tb.addr("SEED"), seed)
            model.reseed(seed)
            continue
        if i % 25 == 24:  # a whole bank back: no command may have written outside its tensor
            bank = rng.randrange(cfg.spad_banks)
            await chk.run(Command(int(Ctl.STORE), addr_a=bank * cfg.spad_words, k=cfg.spad_words),
                          what=f"STORE bank {bank}")
        # a compute command aimed at the least-hit bin of the cross
        least = min(hits.values())
        op, w, rnd, flow = rng.choice([b for b in bins if hits[b] == least])
        exp = await run_compute(chk, Stimulus(cfg, rng), op, w, rnd, flow)
        got = (Op(op), w, rnd, fcov.flow_of(exp.stats.overflow, exp.stats.underflow))
        if got in hits:
            hits[got] += 1
        fcov.sample_ctl("LOAD")
        fcov.sample_ctl("STORE")
    # final sweep: the generators, every database entry and the counters
    await check_rng_states(tb, model, "after the command stream")
    for tid in range(cfg.tensor_ids):
        got = await tb.read_db_entry(tid)
        assert got == stats_dict(model.db.read(tid)), f"final database entry {tid}: {got}"
    macs = await tb.read_counter("PERF_MACS")
    values = await tb.read_counter("PERF_VALUES")
    assert macs == model.perf_macs, f"PERF_MACS {macs}, expected {model.perf_macs}"
    assert values == model.perf_values, f"PERF_VALUES {values}, expected {model.perf_values}"
    dut._log.info("%d commands checked", chk.n)
    fcov.export(dut._log)


@cocotb.test(timeout_time=100_000_000, timeout_unit="ns")
async def control_and_data_movement(dut):
    """Everything but compute: LOAD/STORE round trips under stalls, CLEAR_STATS, POLICY_UPDATE on an
    empty database, illegal commands of every kind and illegal settings, each with its cycle count."""
    from reference.formats import DfpFormat, RoundingMode, TensorSetting, Width
    from reference.isa import Command, Ctl, ErrorCode

    rng, tb, model, chk = await start(dut, "control_and_data_movement")
    cfg = tb.cfg
    # register read-back through the core's own AXI port (the block bench covers it in detail)
    seed = rng.getrandbits(32)
    await tb.wr(tb.addr("SEED"), seed)
    assert await tb.rd(tb.addr("SEED")) == seed, "SEED read-back"
    model.reseed(seed)
    tb.irq_enable = 1
    await tb.control()
    assert await tb.rd(tb.addr("CONTROL")) == tb.fmask("CONTROL", "irq_enable"), "CONTROL read-back"
    assert await tb.rd(tb.addr("CMD_PUSH")) == 0, "CMD_PUSH is write-only"
    resp = await tb.axil.read(0xFFC, 4)
    assert int(resp.resp) == 2, f"read of unmapped 0xffc answered {resp.resp}, not SLVERR"
    await chk.run(Command(int(Ctl.CLEAR_STATS), broadcast_b=True), what="CLEAR_STATS all")
    for tid in range(cfg.tensor_ids // 2):
        s = TensorSetting(DfpFormat(rng.choice(list(Width)), rng.randint(-32, 63)), rng.choice(list(RoundingMode)))
        await chk.write_setting(tid, s.encode())
    total = cfg.spad_banks * cfg.spad_words
    for i in range(tbutil.iterations(40)):
        if i % 8 == 0:
            tb.set_stalls(rng.random() < 0.5, rng.random() < 0.5)
        r = rng.random()
        if r < 0.45:
            k = rng.choice([1, 2, rng.randint(1, 3 * cfg.spad_words // 2)])
            addr = rng.choice([0, total - k, rng.randint(0, total - k)])
            words = [rng.getrandbits(cfg.word_bits) for _ in range(k)]
            await chk.run(Command(int(Ctl.LOAD), addr_d=addr, k=k), words, what="LOAD")
            a2 = rng.randint(max(0, addr - 4), min(total - 1, addr + k))
            k2 = rng.randint(1, total - a2)
            k2 = min(k2, 3 * cfg.spad_words // 2)
            await chk.run(Command(int(Ctl.STORE), addr_a=a2, k=k2), what="STORE")
            fcov.sample_ctl("LOAD")
            fcov.sample_ctl("STORE")
        elif r < 0.6:
            cmd = illegal_command(cfg, rng, model)
            await chk.run(cmd, what="illegal")
            fcov.sample_ctl(f"error_{ErrorCode(model.error).name}" if model.error else "clear_error")
            await tb.control("clear_error")
            model.clear_error()
            st = await tb.status()
            assert st["error"] == 0, f"STATUS.error {st['error']} after clear_error"
            fcov.sample_ctl("clear_error")
        elif r < 0.65:
            # a LOAD whose stream runs dry ends after LOAD_TIMEOUT stalled cycles (reference.isa)
            from reference.isa import LOAD_TIMEOUT_DEFAULT

            await tb.control("clear_error")
            model.clear_error()
            t = rng.choice([1, 2, rng.randint(3, 40)])
            await tb.wr(tb.addr("LOAD_TIMEOUT"), t)
            model.load_timeout = t
            tb.set_stalls(False, rng.random() < 0.5)  # no gaps before the stream runs dry
            k = rng.randint(1, 12)
            addr = rng.randint(0, total - k)
            words = [rng.getrandbits(cfg.word_bits) for _ in range(rng.randint(0, k - 1))]
            await chk.run(Command(int(Ctl.LOAD), addr_d=addr, k=k), words, what="starved LOAD")
            assert model.error == ErrorCode.LOAD_TIMEOUT  # and STATUS.error equals it (Checker.run)
            fcov.sample_ctl("error_LOAD_TIMEOUT")
            await chk.run(Command(int(Ctl.STORE), addr_a=addr, k=k), what="STORE after LOAD_TIMEOUT")
            await tb.wr(tb.addr("LOAD_TIMEOUT"), LOAD_TIMEOUT_DEFAULT)
            model.load_timeout = LOAD_TIMEOUT_DEFAULT
            await tb.control("clear_error")
            model.clear_error()
        elif r < 0.67:
            # issue 16's hang: a LOAD without stream data holds the core and commands queue behind
            # it until the FIFO is full; the next command is refused (SLVERR) instead of stalling
            # the bus, and a soft reset (which can always be written) recovers
            from hw.regmap import CMD_FIFO_DEPTH
            from reference.isa import LOAD_TIMEOUT_DEFAULT

            await tb.wr(tb.addr("LOAD_TIMEOUT"), 1 << 20)
            tb.set_stalls(False, False)
            await tb.push(Command(int(Ctl.LOAD), addr_d=0, k=4))
            filler = Command(int(Ctl.CLEAR_STATS), broadcast_b=True)
            for _ in range(CMD_FIFO_DEPTH):
                assert await tb.push(filler) == 0, "a push was refused before the FIFO was full"
            st = await tb.status()
            assert st["busy"] and st["fifo_level"] == CMD_FIFO_DEPTH, f"FIFO not full behind a starved LOAD: {st}"
            *head, last = filler.encode()
            for w in head:
                await tb.wr(tb.addr("CMD_PUSH"), w)
            resp = await tb.axil.write(tb.addr("CMD_PUSH"), last.to_bytes(4, "little"))
            assert int(resp.resp) == 2, f"CMD_PUSH into a full FIFO answered {resp.resp}, not SLVERR"
            fcov.sample_ctl("cmd_fifo_full")
            await tb.control("soft_reset")
            await soft_reset(tb, model)  # the model's side, and the checks after a soft reset
            await tb.wr(tb.addr("LOAD_TIMEOUT"), LOAD_TIMEOUT_DEFAULT)
        elif r < 0.7:
            # two errors in a row: the first code stays until cleared
            c1, c2 = illegal_command(cfg, rng, model), illegal_command(cfg, rng, model)
            await chk.run(c1, what="illegal 1")
            await chk.run(c2, what="illegal 2 (STATUS keeps the first)")
            await tb.control("clear_error")
            model.clear_error()
        elif r < 0.8:
            tid, word = rng.randrange(cfg.tensor_ids), rng.randrange(1 << 12)
            await chk.write_setting(tid, word)
            st = await tb.status()
            assert st["error"] == int(model.error), f"settings word {word:#x}: STATUS.error {st['error']}"
            if model.error:
                fcov.sample_ctl("error_BAD_SETTING")
                await tb.control("clear_error")
                model.clear_error()
        elif r < 0.9:
            await chk.run(Command(int(Ctl.CLEAR_STATS), tid_d=rng.randrange(cfg.tensor_ids),
                                  broadcast_b=rng.random() < 0.5), what="CLEAR_STATS")
            fcov.sample_ctl("CLEAR_STATS")
        elif r < 0.95:
            await chk.run(Command(int(Ctl.POLICY_UPDATE)), what="POLICY_UPDATE")
            fcov.sample_ctl("POLICY_UPDATE")
        else:
            await soft_reset(tb, model)
        # several commands queued back to back: total busy cycles add up
        if rng.random() < 0.05:  # zero the performance counters
            await tb.control("clear_perf")
            model.perf_busy = model.perf_macs = model.perf_values = 0
            for name in ("PERF_BUSY", "PERF_STALL", "PERF_MACS", "PERF_VALUES"):
                v = await tb.read_counter(name)
                assert v == 0, f"{name} = {v} after CONTROL.clear_perf"
            fcov.sample_ctl("clear_perf")
        if rng.random() < 0.1:
            # more commands than the FIFO holds: a full FIFO refuses a command (SLVERR), the bench resends it
            n_q = rng.choice([2, 5, 8, 9, 10, 12])
            cmds = [Command(int(Ctl.CLEAR_STATS), tid_d=rng.randrange(cfg.tensor_ids)) for _ in range(n_q)]
            busy0, stall0 = await chk.counters()
            for c in cmds:
                model.execute(c)
                await tb.push(c)
            await tb.wait_done()
            busy1, stall1 = await chk.counters()
            from reference.isa import cycles

            exp = sum(cycles(c, model.settings, cfg) for c in cmds)
            assert (busy1 - busy0) - (stall1 - stall0) == exp, (
                f"{n_q} queued CLEAR_STATS took {busy1 - busy0} cycles, not {exp}")
    for tid in range(cfg.tensor_ids):
        v = await tb.rd(tb.addr("SETTINGS", tid))
        assert tb.field("SETTINGS", "valid", v) == int(tid in model.settings), f"tid {tid} valid bit"
        if tid in model.settings:
            assert tb.field("SETTINGS", "setting", v) == model.settings[tid].encode(), f"tid {tid} setting"
    dut._log.info("%d commands checked", chk.n)
    fcov.export(dut._log)


@cocotb.test(timeout_time=10_000_000_000, timeout_unit="ns")
async def k_split_matmul(dut):
    """A MATMUL of K = DLU_K (default 96,800: AlexNet conv1's weight gradient at batch 32) on the core:
    K cut into chunks of one bank of b, summed START, CONTINUE..., FINISH in the accumulator memory.
    Every command is checked against the model (cycles, STOREs, status); the finished result and
    statistics are compared with the golden conversion of the exact integer product (numpy int64,
    no split), stochastic rounding included. Sampled: two output rows of one beat each."""
    import numpy as np

    from reference import ops
    from reference.formats import DfpFormat, DfpTensor, RoundingMode, TensorSetting, Width
    from reference.isa import Accumulate, Command, Ctl, tensor_words
    from testbenches.cocotb.core_model import CoreModel

    rng, tb, model, chk = await start(dut, "k_split_matmul")
    cfg = tb.cfg
    k_total = int(os.environ.get("DLU_K", "96800"))
    w = Width.W8
    v = cfg.values_per_beat(w)
    m, n = 2, v
    nrng = np.random.default_rng(rng.getrandbits(32))
    a = nrng.integers(-128, 128, size=(m, k_total))
    b = nrng.integers(-128, 128, size=(k_total, n))
    a[0, : k_total // 2] = -128  # half of row 0 at the largest product, 2**14: the sum nears 2**31
    b[: k_total // 2, :] = -128
    fa, fb = DfpFormat(w, 4), DfpFormat(w, 3)
    fd = DfpFormat(w, -25)
    await chk.write_setting(0, TensorSetting(fa, RoundingMode.NEAREST_EVEN, False).encode())
    await chk.write_setting(1, TensorSetting(fb, RoundingMode.NEAREST_EVEN, False).encode())
    await chk.write_setting(2, TensorSetting(fd, RoundingMode.STOCHASTIC, True).encode())
    await chk.run(Command(int(Ctl.CLEAR_STATS), broadcast_b=True), what="CLEAR_STATS all")
    rng_start = model.rng.copy()
    sw = cfg.spad_words
    kc = sw  # rows of b per chunk: one bank
    cuts = list(range(0, k_total, kc)) + [k_total]
    for j, (k0, k1) in enumerate(zip(cuts, cuts[1:], strict=False)):
        for addr, t in ((0, DfpTensor(a[:, k0:k1], fa)), (sw, DfpTensor(b[k0:k1], fb))):
            words = CoreModel.pack_rows(t, cfg)
            await chk.run(Command(int(Ctl.LOAD), addr_d=addr, k=len(words)), words, what=f"LOAD chunk {j}")
        mode = Accumulate.START if j == 0 else Accumulate.FINISH if k1 == k_total else Accumulate.CONTINUE
        await chk.run(Command(0, tid_d=2, tid_a=0, tid_b=1, addr_a=0, addr_b=sw, addr_d=2 * sw, m=m, n=n,
                              k=k1 - k0, accumulate=mode), what=f"MATMUL {mode.name} K {k0}..{k1}")
    await chk.run(Command(int(Ctl.STORE), addr_a=2 * sw, k=tensor_words(m, n, fd, cfg)), what="STORE result")
    # the golden conversion of the exact product, unsplit
    exact = a.astype(np.int64) @ b.astype(np.int64)
    assert int(np.abs(exact).max()) < 1 << 31, "the test's sum fits the 32-bit accumulator"
    want = ops.convert_acc(exact, fa.frac + fb.frac, 32, fd, RoundingMode.STOCHASTIC, cfg, rng_start, w)
    got = model.read_tensor(2 * sw, m, n, fd)  # the model's scratchpad: the STORE above matched it
    assert np.array_equal(got.data, want.out.data), "K-split result differs from the unsplit golden product"
    entry = await tb.read_db_entry(2)
    assert entry == {"hist": want.stats.hist.tolist(), "zeros": want.stats.zeros, "overflow": want.stats.overflow,
                     "underflow": want.stats.underflow, "total": want.stats.total}, f"database entry {entry}"
    dut._log.info("K = %d in %d chunks: %d commands checked, bit-exact", k_total, len(cuts) - 1, chk.n)


# ------------------------------------------------------------------------------------------
# pytest side
# ------------------------------------------------------------------------------------------
def generate(config: str, out: Path) -> tuple[Path, Path]:
    """``dlu gen --config CONFIG --out DIR``: the core's Verilog and manifest."""
    from testbenches.cocotb import harness

    if not (harness.ROOT / "rtl_gen" / "__init__.py").exists():
        pytest.skip("rtl_gen (dlu gen) does not exist yet")
    out.mkdir(parents=True, exist_ok=True)
    exe = Path(sys.executable).parent / "dlu"
    res = subprocess.run([str(exe), "gen", "--config", config, "--out", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, f"dlu gen --config {config} failed:\n{res.stdout}\n{res.stderr}"
    v, man = out / "dlu_core.v", out / "manifest.json"
    assert v.exists() and man.exists(), f"dlu gen wrote no dlu_core.v/manifest.json in {out}"
    import hashlib

    h = json.loads(man.read_text()).get("files", {}).get("dlu_core.v")
    assert h is None or h == hashlib.sha256(v.read_bytes()).hexdigest(), "manifest hash does not match dlu_core.v"
    return v, man


def _run(config, record_property, iters, testcase=None, sim=None):
    from reference.config import load_config
    from testbenches.cocotb import harness

    harness.require("hw.core", "DLUCore")
    bdir = harness.build_dir(config, "core", sim)
    v, man = generate(config, bdir / "gen")
    harness.run(module="testbenches.cocotb.test_core", top="dlu_core", config=config, block="core", sources=[v],
                record_property=record_property, cfg=load_config(config), testcase=testcase,
                extra_env={"DLU_ITERS": str(iters), "DLU_MANIFEST": str(man)}, sim=sim)


@pytest.mark.parametrize("config", CONFIGS)
def test_core(config, record_property):
    _run(config, record_property, iters=200, testcase="random_command_stream")


def _run_k(config, record_property, k):
    from reference.config import load_config
    from testbenches.cocotb import harness

    harness.require("hw.core", "DLUCore")
    bdir = harness.build_dir(config, "core")
    v, man = generate(config, bdir / "gen")
    harness.run(module="testbenches.cocotb.test_core", top="dlu_core", config=config, block="core", sources=[v],
                record_property=record_property, cfg=load_config(config), testcase="k_split_matmul",
                extra_env={"DLU_K": str(k), "DLU_MANIFEST": str(man)})


def test_core_k_split_tiny(record_property):
    """K = 4,000 on the tiny core (63 chunks of one 64-word bank)."""
    _run_k("tiny", record_property, 4000)


@pytest.mark.parametrize("config", CONFIGS)
def test_core_control(config, record_property):
    _run(config, record_property, iters=40, testcase="control_and_data_movement")


def test_core_control_icarus(record_property):
    """Smoke run of the core on the second simulator."""
    _run("tiny", record_property, iters=8, testcase="control_and_data_movement", sim="icarus")


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("rep", range(8))
def test_core_many_seeds(config, rep, record_property):
    _run(config, record_property, iters=600, testcase="random_command_stream")


@pytest.mark.slow
@pytest.mark.parametrize("rep", range(4))
def test_core_control_many_seeds(rep, record_property):
    _run("tiny", record_property, iters=400, testcase="control_and_data_movement")
