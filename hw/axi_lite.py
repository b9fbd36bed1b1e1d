"""AXI4-Lite slave: the host's register interface, decoded from :mod:`hw.regmap`."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from reference.config import CoreConfig
from reference.formats import SETTING_BITS
from reference.isa import COMMAND_WORDS, LOAD_TIMEOUT_BITS, LOAD_TIMEOUT_DEFAULT
from reference.stats import DEFAULT_POLICY_WORD, POLICY_BITS

from . import regmap
from .database import DatabaseHostSignature
from .rng import RngHostSignature
from .settings import SETTING_LAYOUT, SettingsHostSignature, check_config, setting_is_legal

#: AXI4-Lite response codes.
RESP_OKAY = 0
RESP_SLVERR = 2

#: One command as it travels from the register interface to the sequencer's FIFO.
COMMAND_LAYOUT = data.ArrayLayout(unsigned(32), COMMAND_WORDS)


def axil_members(addr_bits: int) -> dict[str, wiring.Member]:
    """Flat AXI4-Lite slave ports with the standard names under the prefix ``s_axil``."""
    return {
        "s_axil_awaddr": In(addr_bits), "s_axil_awprot": In(3), "s_axil_awvalid": In(1), "s_axil_awready": Out(1),
        "s_axil_wdata": In(32), "s_axil_wstrb": In(4), "s_axil_wvalid": In(1), "s_axil_wready": Out(1),
        "s_axil_bresp": Out(2), "s_axil_bvalid": Out(1), "s_axil_bready": In(1),
        "s_axil_araddr": In(addr_bits), "s_axil_arprot": In(3), "s_axil_arvalid": In(1), "s_axil_arready": Out(1),
        "s_axil_rdata": Out(32), "s_axil_rresp": Out(2), "s_axil_rvalid": Out(1), "s_axil_rready": In(1),
    }


class HostControlSignature(wiring.Signature):
    """Control and status between the register interface and the sequencer (register side).

    Members
    -------
    clear_error, soft_reset, clear_perf : Out(1)
        One-cycle strobes from CONTROL.
    setting_error : Out(1)
        An illegal settings write: the sequencer records ``ErrorCode.BAD_SETTING``.
    busy, done : In(1)
        STATUS bits.
    fifo_level : In(8)
        Commands waiting.
    error : In(4)
        STATUS.error.
    irq_event : In(1)
        One-cycle pulse when a command with the interrupt flag completes.
    perf : In(ArrayLayout(unsigned(48), 4))
        The performance counters in :data:`hw.regmap.PERF_COUNTERS` order.
    load_timeout : Out(LOAD_TIMEOUT_BITS)
        The LOAD_TIMEOUT register (never 0): stalled cycles after which a LOAD ends with
        ``ErrorCode.LOAD_TIMEOUT``.
    """

    def __init__(self) -> None:
        super().__init__({
            "clear_error": Out(1), "soft_reset": Out(1), "clear_perf": Out(1), "setting_error": Out(1),
            "busy": In(1), "done": In(1), "fifo_level": In(8), "error": In(4), "irq_event": In(1),
            "perf": In(data.ArrayLayout(unsigned(regmap.PERF_COUNTER_BITS), len(regmap.PERF_COUNTERS))),
            "load_timeout": Out(LOAD_TIMEOUT_BITS, init=LOAD_TIMEOUT_DEFAULT),
        })


class AxiLiteSlave(wiring.Component):
    """The register interface of :func:`hw.regmap.register_map`.

    Writes complete when both the address and the data have arrived (in either order); reads
    take three cycles from the address handshake to ``rvalid``. Every write is answered
    within a bounded number of cycles (at most one cycle more than an unhindered write), so
    the bus never stalls and CONTROL.soft_reset can always be written. A write answers SLVERR
    and changes nothing (:data:`hw.regmap.SLVERR_RULES` lists the cases) when: its address is
    outside the map or read-only; its WSTRB is not ``0b1111``; it writes THRESHOLD bits above
    its fields or 0 to LOAD_TIMEOUT; or it is the last CMD_PUSH word of a command
    while STATUS.fifo_level is ``CMD_FIFO_DEPTH`` (the whole command is dropped and CMD_PUSH
    expects its first word again). A SETTINGS write of an illegal code answers SLVERR too and
    also records ``ErrorCode.BAD_SETTING`` in STATUS.error. A read answers SLVERR (data 0)
    outside the map and past the last counter of a DATABASE entry.

    Parameters
    ----------
    cfg
        Core configuration.

    Members
    -------
    s_axil_* :
        AXI4-Lite slave port (flat, standard names; ``awprot``/``arprot`` ignored; ``wstrb``
        must be ``0b1111``).
    irq : Out(1)
        Interrupt: CONTROL.irq_enable and STATUS.irq_pending.
    seed : Out(32), seed_load : Out(1)
        SEED register and its write strobe (to the generator bank).
    rng : Out(RngHostSignature(cfg.rng_slots))
        The RNG_STATE window (to the generator bank): ``we`` in the cycle a write is accepted.
    threshold : Out(POLICY_BITS)
        THRESHOLD register word, all its fields (to the policy controller).
    cmds : Out(stream.Signature(COMMAND_LAYOUT))
        Completed commands, to the sequencer's FIFO.
    ctl : Out(HostControlSignature)
        Control strobes and status.
    settings : Out(SettingsHostSignature)
        The SETTINGS window.
    db : Out(DatabaseHostSignature)
        The DATABASE window.
    """

    def __init__(self, cfg: CoreConfig) -> None:
        self.cfg = check_config(cfg)
        self.addr_bits = regmap.address_bits(cfg)
        super().__init__(axil_members(self.addr_bits) | {
            "irq": Out(1),
            "seed": Out(32),
            "seed_load": Out(1),
            "rng": Out(RngHostSignature(cfg.rng_slots)),
            "threshold": Out(POLICY_BITS, init=DEFAULT_POLICY_WORD),
            "cmds": Out(stream.Signature(COMMAND_LAYOUT)),
            "ctl": Out(HostControlSignature()),
            "settings": Out(SettingsHostSignature(cfg)),
            "db": Out(DatabaseHostSignature(cfg)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        regs = regmap.by_name(cfg)
        off = {name: r.offset for name, r in regs.items()}
        ctl_reg = regs["CONTROL"]

        irq_enable = Signal()
        irq_pending = Signal()
        with m.If(self.ctl.irq_event):
            m.d.sync += irq_pending.eq(1)
        m.d.comb += self.irq.eq(irq_enable & irq_pending)

        # ---- write channel --------------------------------------------------------------
        aw_ok, w_ok = Signal(), Signal()
        aw_addr = Signal(self.addr_bits)
        w_data = Signal(32)
        w_strb = Signal(4)
        m.d.comb += [self.s_axil_awready.eq(~aw_ok & ~self.s_axil_bvalid),
                     self.s_axil_wready.eq(~w_ok & ~self.s_axil_bvalid)]
        with m.If(self.s_axil_awvalid & self.s_axil_awready):
            m.d.sync += [aw_ok.eq(1), aw_addr.eq(self.s_axil_awaddr)]
        with m.If(self.s_axil_wvalid & self.s_axil_wready):
            m.d.sync += [w_ok.eq(1), w_data.eq(self.s_axil_wdata), w_strb.eq(self.s_axil_wstrb)]
        with m.If(self.s_axil_bvalid & self.s_axil_bready):
            m.d.sync += self.s_axil_bvalid.eq(0)

        staged = Signal(data.ArrayLayout(unsigned(32), COMMAND_WORDS - 1))
        word = Signal(range(COMMAND_WORDS))
        m.d.comb += [self.cmds.payload.eq(staged.as_value() | (w_data << (32 * (COMMAND_WORDS - 1))))]

        settings_win = regs["SETTINGS"]
        waddr_word = aw_addr >> 2
        in_settings_w = ((aw_addr >= settings_win.offset) & (aw_addr < settings_win.end))
        m.d.comb += [self.settings.wdata.eq(w_data[:SETTING_BITS])]
        rng_win = regs["RNG_STATE"]
        in_rng_w = (aw_addr >= rng_win.offset) & (aw_addr < rng_win.end)
        m.d.comb += [self.rng.waddr.eq((aw_addr - rng_win.offset) >> 2), self.rng.wdata.eq(w_data)]

        wr = aw_ok & w_ok & ~self.s_axil_bvalid
        ar_addr = Signal(self.addr_bits)
        rstate = Signal(2)  # 0 idle, 1 address decoded (database read issued), 2 data ready
        in_settings_r = (ar_addr >= settings_win.offset) & (ar_addr < settings_win.end)
        settings_read = Signal()
        m.d.comb += settings_read.eq((rstate == 2) & in_settings_r)

        def respond(resp=RESP_OKAY):
            m.d.sync += [self.s_axil_bvalid.eq(1), self.s_axil_bresp.eq(resp), aw_ok.eq(0), w_ok.eq(0)]

        setting_ok = setting_is_legal(data.View(SETTING_LAYOUT, w_data[:SETTING_BITS]), cfg)
        fifo_full = self.ctl.fifo_level >= regmap.CMD_FIFO_DEPTH

        # strobes default to 0 (comb)
        with m.If(wr):
            with m.If(w_strb != 0b1111):
                # A narrow write means nothing to any register: refuse it whole.
                respond(RESP_SLVERR)
            with m.Elif(aw_addr == off["CONTROL"]):
                m.d.comb += [
                    self.ctl.clear_error.eq(w_data[ctl_reg.field("clear_error").lsb]),
                    self.ctl.soft_reset.eq(w_data[ctl_reg.field("soft_reset").lsb]),
                    self.ctl.clear_perf.eq(w_data[ctl_reg.field("clear_perf").lsb]),
                ]
                m.d.sync += irq_enable.eq(w_data[ctl_reg.field("irq_enable").lsb])
                with m.If(w_data[ctl_reg.field("irq_ack").lsb]):
                    m.d.sync += irq_pending.eq(0)
                with m.If(w_data[ctl_reg.field("soft_reset").lsb]):
                    m.d.sync += word.eq(0)
                respond()
            with m.Elif(aw_addr == off["CMD_PUSH"]):
                with m.If((word == COMMAND_WORDS - 1) & fifo_full):
                    # No room: drop the command rather than hold the response.
                    m.d.sync += word.eq(0)
                    respond(RESP_SLVERR)
                with m.Elif(word == COMMAND_WORDS - 1):
                    # Not full: the FIFO takes it in this cycle (a bench without a FIFO may wait).
                    m.d.comb += self.cmds.valid.eq(1)
                    with m.If(self.cmds.ready):
                        m.d.sync += word.eq(0)
                        respond()
                with m.Else():
                    m.d.sync += [staged[word].eq(w_data), word.eq(word + 1)]
                    respond()
            with m.Elif(aw_addr == off["SEED"]):
                m.d.sync += [self.seed.eq(w_data), self.seed_load.eq(1)]
                respond()
            with m.Elif(aw_addr == off["THRESHOLD"]):
                # The register holds len(threshold) bits: a wider value is refused, not truncated.
                thr_bits = len(self.threshold)
                with m.If(w_data[thr_bits:] != 0):
                    respond(RESP_SLVERR)
                with m.Else():
                    m.d.sync += self.threshold.eq(w_data[:thr_bits])
                    respond()
            with m.Elif(aw_addr == off["LOAD_TIMEOUT"]):
                with m.If(w_data[:LOAD_TIMEOUT_BITS] == 0):
                    respond(RESP_SLVERR)
                with m.Else():
                    m.d.sync += self.ctl.load_timeout.eq(w_data[:LOAD_TIMEOUT_BITS])
                    respond()
            with m.Elif(in_rng_w):
                m.d.comb += self.rng.we.eq(1)
                respond()
            with m.Elif(in_settings_w):
                # The settings port has one address: a read of the window in its data cycle
                # goes first, the write waits one cycle.
                # An illegal code answers SLVERR; the write still reaches the settings register,
                # which keeps the entry and records BAD_SETTING.
                with m.If(~settings_read):
                    m.d.comb += self.settings.we.eq(1)
                    respond(Mux(setting_ok, RESP_OKAY, RESP_SLVERR))
            with m.Else():
                respond(RESP_SLVERR)
        with m.If(self.seed_load):
            m.d.sync += self.seed_load.eq(0)
        m.d.comb += self.ctl.setting_error.eq(self.settings.error)

        # ---- read channel ---------------------------------------------------------------
        m.d.comb += self.s_axil_arready.eq((rstate == 0) & ~self.s_axil_rvalid)
        with m.If(self.s_axil_arvalid & self.s_axil_arready):
            m.d.sync += [ar_addr.eq(self.s_axil_araddr), rstate.eq(1)]
        with m.If(rstate == 1):
            m.d.sync += rstate.eq(2)
        with m.If(self.s_axil_rvalid & self.s_axil_rready):
            m.d.sync += self.s_axil_rvalid.eq(0)

        # Settings and database addressing: the settings window for a read or a write.
        m.d.comb += self.settings.addr.eq(Mux(~settings_read, waddr_word - settings_win.offset // 4,
                                              (ar_addr >> 2) - settings_win.offset // 4))
        db_win = regs["DATABASE"]
        wpc = regmap.words_per_counter(cfg)
        rel = Signal(self.addr_bits)
        m.d.comb += rel.eq(ar_addr - db_win.offset)
        stride_bits = db_win.stride.bit_length() - 1
        m.d.comb += self.db.addr.eq(rel >> stride_bits)
        in_db = (ar_addr >= db_win.offset) & (ar_addr < db_win.end)
        in_rng_r = (ar_addr >= rng_win.offset) & (ar_addr < rng_win.end)
        m.d.comb += self.rng.raddr.eq((ar_addr - rng_win.offset) >> 2)
        within = Signal(stride_bits)
        m.d.comb += within.eq(rel)
        counter = Signal(range(db_win.stride // 4 + 1))
        m.d.comb += counter.eq(within >> (2 + (wpc - 1).bit_length()))
        subword = Signal(range(wpc + 1))
        m.d.comb += subword.eq((within >> 2) & (wpc - 1) if wpc > 1 else 0)
        n_counters = regmap.database_counters(cfg)
        cval = Signal(cfg.counter_bits)
        m.d.comb += cval.eq(self.db.data.as_value().word_select(counter[:(n_counters - 1).bit_length()],
                                                                cfg.counter_bits))
        db_word = (cval >> (32 * subword))[:32]

        rdata = Signal(32)
        rresp = Signal(2)
        ident = regs["ID"]
        status = regs["STATUS"]
        with m.Switch(ar_addr):
            with m.Case(off["ID"]):
                m.d.comb += rdata.eq((ident.field("magic").reset << 8) | ident.field("version").reset)
            with m.Case(off["CONFIG_DIGEST"]):
                m.d.comb += rdata.eq(int(cfg.digest()[:8], 16))
            with m.Case(off["CONTROL"]):
                m.d.comb += rdata.eq(irq_enable << ctl_reg.field("irq_enable").lsb)
            with m.Case(off["STATUS"]):
                m.d.comb += rdata.eq(
                    (self.ctl.busy << status.field("busy").lsb)
                    | (self.ctl.done << status.field("done").lsb)
                    | (irq_pending << status.field("irq_pending").lsb)
                    | (self.ctl.fifo_level << status.field("fifo_level").lsb)
                    | (self.ctl.error << status.field("error").lsb))
            with m.Case(off["CMD_PUSH"]):
                m.d.comb += rdata.eq(0)
            with m.Case(off["SEED"]):
                m.d.comb += rdata.eq(self.seed)
            with m.Case(off["THRESHOLD"]):
                m.d.comb += rdata.eq(self.threshold)
            with m.Case(off["LOAD_TIMEOUT"]):
                m.d.comb += rdata.eq(self.ctl.load_timeout)
            for i, (name, _) in enumerate(regmap.PERF_COUNTERS):
                with m.Case(off[name]):
                    m.d.comb += rdata.eq(self.ctl.perf[i][:32])
                with m.Case(off[name] + 4):
                    m.d.comb += rdata.eq(self.ctl.perf[i][32:])
            with m.Default():
                with m.If(in_rng_r):
                    m.d.comb += rdata.eq(self.rng.rdata)
                with m.Elif(in_settings_r):
                    m.d.comb += rdata.eq(self.settings.rdata.setting.as_value()
                                         | (self.settings.rdata.valid << settings_win.field("valid").lsb))
                with m.Elif(in_db & (counter < n_counters)):
                    m.d.comb += rdata.eq(db_word)
                with m.Else():
                    m.d.comb += rresp.eq(RESP_SLVERR)
        with m.If(rstate == 2):
            m.d.sync += [self.s_axil_rdata.eq(rdata), self.s_axil_rresp.eq(rresp),
                         self.s_axil_rvalid.eq(1), rstate.eq(0)]
        return m


