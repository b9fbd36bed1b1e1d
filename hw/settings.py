"""Settings register (per tensor id: width, point position, rounding, auto-update) and the
point-position policy controller of the POLICY_UPDATE command.

Both follow :mod:`reference`: the entry encoding is :meth:`reference.formats.TensorSetting.encode`
(12 bits: [1:0] width, [8:2] point position, [10:9] rounding, [11] auto) and the policy is
:func:`reference.stats.next_frac`, evaluated for every tensor id in
:data:`reference.isa.POLICY_CYCLES_PER_TID` cycles.
"""

from __future__ import annotations

from amaranth.hdl import Array, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from reference.config import CoreConfig
from reference.formats import FRAC_BITS, FRAC_MAX, FRAC_MIN, SETTING_BITS
from reference.isa import POLICY_CYCLES_PER_TID
from reference.stats import THRESHOLD_BITS

from .database import DatabasePolicySignature, entry_layout

#: One settings-register entry, field order and widths of ``TensorSetting.encode`` (LSB first).
SETTING_LAYOUT = data.StructLayout({
    "width": unsigned(2),
    "frac": signed(FRAC_BITS),
    "rounding": unsigned(2),
    "auto": unsigned(1),
})
assert SETTING_LAYOUT.size == SETTING_BITS, "SETTING_LAYOUT must match reference.formats.TensorSetting"


def check_config(cfg: object, name: str = "cfg") -> CoreConfig:
    """Validate a constructor's ``cfg`` argument (shared by every ``hw`` component)."""
    if not isinstance(cfg, CoreConfig):
        raise TypeError(f"{name}: expected a reference.config.CoreConfig, got {cfg!r}")
    return cfg


def width_mux(code, opts: dict):
    """Select ``opts[w]`` by ``Width`` code ``code`` among the widths ``opts`` names.

    The widest named width is the default: it also takes the codes of widths not named (the
    illegal code 3, or widths the configuration does not support, which no legal setting
    holds), so a single-width ``opts`` is its value, with no multiplexer at all.
    """
    widths = sorted(opts)
    out = opts[widths[-1]]
    for w in reversed(widths[:-1]):
        out = Mux(code == w, opts[w], out)
    return out


def tid_bits(cfg: CoreConfig) -> int:
    """Bits of a tensor-id index into the settings register and the database (at least 1)."""
    return max(1, ceil_log2(cfg.tensor_ids))


def setting_is_legal(s: data.View, cfg: CoreConfig):
    """Hardware twin of :func:`reference.isa.decode_setting`'s checks: 1 when legal.

    :meth:`reference.formats.TensorSetting.decode` (width code 3, rounding code 3, point
    position range) and :func:`reference.isa.check_setting` (a width ``cfg`` supports).
    """
    width_ok = Const(0, 1)
    for w in cfg.supported_widths:
        width_ok = width_ok | (s.width == w)
    return width_ok & (s.rounding != 3) & (s.frac >= FRAC_MIN) & (s.frac <= FRAC_MAX)


def setting_port_layout() -> data.StructLayout:
    """What a settings read returns: the entry and whether it was ever written (legally)."""
    return data.StructLayout({"setting": SETTING_LAYOUT, "valid": unsigned(1)})


class SettingsHostSignature(wiring.Signature):
    """Host (register-window) access to the settings register, from the host's side.

    Members
    -------
    addr : Out(tid_bits)
        Tensor id read (combinationally) and written.
    wdata : Out(12)
        Encoded entry to write.
    we : Out(1)
        Write strobe. An illegal code is not written: ``error`` pulses instead.
    rdata : In(setting_port_layout)
        Entry at ``addr`` and its valid bit.
    error : In(1)
        One-cycle pulse: the write carried an illegal code (``ErrorCode.BAD_SETTING``).
    """

    def __init__(self, cfg: CoreConfig) -> None:
        super().__init__({
            "addr": Out(tid_bits(cfg)),
            "wdata": Out(SETTING_BITS),
            "we": Out(1),
            "rdata": In(setting_port_layout()),
            "error": In(1),
        })


class SettingsReadSignature(wiring.Signature):
    """A combinational read port of the settings register, from the reader's side."""

    def __init__(self, cfg: CoreConfig) -> None:
        super().__init__({"addr": Out(tid_bits(cfg)), "data": In(setting_port_layout())})


class PolicySettingsSignature(wiring.Signature):
    """The policy controller's access to the settings register (read entry, rewrite its F)."""

    def __init__(self, cfg: CoreConfig) -> None:
        super().__init__({
            "addr": Out(tid_bits(cfg)),
            "data": In(setting_port_layout()),
            "frac": Out(signed(FRAC_BITS)),
            "we": Out(1),
        })


class SettingsRegister(wiring.Component):
    """Per tensor id, the 12-bit ``TensorSetting`` entry and a valid bit (flip-flops).

    An entry is valid once the host has written a legal code to it; a command naming a tensor
    id without a valid entry is rejected with ``ErrorCode.BAD_SETTING`` by the sequencer,
    exactly as :func:`reference.isa.check_command` rejects a tensor id missing from its
    ``settings`` dict. An illegal host write (:func:`reference.isa.decode_setting`: width code
    3 or a width ``cfg`` does not support, rounding code 3, point position below ``FRAC_MIN``)
    changes no entry and pulses ``host.error``.

    Parameters
    ----------
    cfg
        Core configuration (``tensor_ids`` entries).
    read_ports
        Number of combinational read ports for the sequencer (a, b, d).

    Members
    -------
    host : In(SettingsHostSignature)
        Register-window access.
    rd : In(SettingsReadSignature) x read_ports
        Sequencer read ports, ``rd[i]``.
    policy : In(PolicySettingsSignature)
        Policy controller port; its write changes only the point position of the entry.
        A host write to the same entry in the same cycle takes precedence.

    Raises
    ------
    TypeError
        ``cfg`` is not a ``CoreConfig``.
    ValueError
        ``read_ports`` is not in [1, 8].
    """

    def __init__(self, cfg: CoreConfig, read_ports: int = 3) -> None:
        self.cfg = check_config(cfg)
        if isinstance(read_ports, bool) or not isinstance(read_ports, int) or not 1 <= read_ports <= 8:
            raise ValueError(f"read_ports: {read_ports!r} is not an integer in [1, 8]")
        self.read_ports = read_ports
        super().__init__({
            "host": In(SettingsHostSignature(cfg)),
            "rd": In(SettingsReadSignature(cfg)).array(read_ports),
            "policy": In(PolicySettingsSignature(cfg)),
        })

    def elaborate(self, platform):
        m = Module()
        n = self.cfg.tensor_ids
        entries = [Signal(SETTING_LAYOUT, name=f"entry{i}") for i in range(n)]
        valid = [Signal(name=f"valid{i}") for i in range(n)]
        # Pad to a power of two so that every index of the port width reads an invalid entry.
        pad = (1 << tid_bits(self.cfg)) - n
        ent_arr = Array([e.as_value() for e in entries] + [Const(0, SETTING_BITS)] * pad)
        val_arr = Array(valid + [Const(0, 1)] * pad)

        def read(port):
            m.d.comb += [port.data.setting.eq(ent_arr[port.addr]), port.data.valid.eq(val_arr[port.addr])]

        for port in self.rd:
            read(port)
        read(self.policy)
        m.d.comb += [self.host.rdata.setting.eq(ent_arr[self.host.addr]),
                     self.host.rdata.valid.eq(val_arr[self.host.addr])]

        new = data.View(SETTING_LAYOUT, self.host.wdata)
        legal = setting_is_legal(new, self.cfg)
        m.d.sync += self.host.error.eq(0)
        with m.If(self.host.we & ~legal):
            m.d.sync += self.host.error.eq(1)
        for i in range(n):
            with m.If(self.host.we & legal & (self.host.addr == i)):
                m.d.sync += [entries[i].eq(new), valid[i].eq(1)]
            with m.Elif(self.policy.we & (self.policy.addr == i)):
                m.d.sync += entries[i].frac.eq(self.policy.frac)
        return m


class PolicyController(wiring.Component):
    """POLICY_UPDATE: :func:`reference.stats.next_frac` for every tensor id, in hardware.

    After a ``start`` pulse, tensor id ``t`` (0 .. tensor_ids-1) takes cycles
    ``2t`` (database read issued) and ``2t + 1`` (entry arrives; new point position written
    and entry cleared), i.e. ``POLICY_CYCLES_PER_TID`` = 2 cycles per id. An entry is updated
    when its setting is valid, has the auto flag, and its database entry holds statistics
    (``total != 0``: every compute command adds at least one value, so this is exactly the
    reference's "tid in db.entries"); such an entry is then cleared. ``done`` pulses in the
    last cycle.

    ``next_frac`` in integers: with ``n`` the histogram sum and ``over(i)`` the count above
    bin ``i``, bin ``i`` *fails* when ``over(i) * 2**16 > n * threshold``. ``over`` decreases
    with ``i``, so the failing bins are ``0 .. i*-1`` and ``i*`` is their number.
    ``F = clamp(W - 2 - (hist_min_exp + i*), FRAC_MIN, FRAC_MAX)``; ``n == 0`` keeps F.

    Parameters
    ----------
    cfg
        Core configuration.

    Members
    -------
    start : In(1)
        Begin a pass (ignored while busy).
    threshold : In(16)
        Policy threshold register, in units of 2**-16.
    busy : Out(1)
        High during the ``POLICY_CYCLES_PER_TID * tensor_ids`` cycles of a pass.
    done : Out(1)
        High in the last cycle of a pass.
    settings : Out(PolicySettingsSignature)
        To :class:`SettingsRegister`'s ``policy`` port.
    db : Out(DatabasePolicySignature)
        To :class:`hw.database.DistributionDatabase`'s ``policy`` port.
    """

    def __init__(self, cfg: CoreConfig) -> None:
        self.cfg = check_config(cfg)
        assert POLICY_CYCLES_PER_TID == 2, "PolicyController's schedule is 2 cycles per tensor id"
        super().__init__({
            "start": In(1),
            "threshold": In(THRESHOLD_BITS),
            "busy": Out(1),
            "done": Out(1),
            "settings": Out(PolicySettingsSignature(cfg)),
            "db": Out(DatabasePolicySignature(cfg)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        tid = Signal(tid_bits(cfg) + 1)
        phase = Signal()
        last_tid = cfg.tensor_ids - 1

        with m.If(~self.busy & self.start):
            m.d.sync += [self.busy.eq(1), tid.eq(0), phase.eq(0)]
        with m.Elif(self.busy):
            m.d.sync += phase.eq(~phase)
            with m.If(phase):
                m.d.sync += tid.eq(tid + 1)
                with m.If(tid == last_tid):
                    m.d.sync += self.busy.eq(0)
        m.d.comb += self.done.eq(self.busy & phase & (tid == last_tid))

        m.d.comb += [self.db.addr.eq(tid), self.settings.addr.eq(tid)]

        entry = data.View(entry_layout(cfg), self.db.data)
        hist = entry.hist
        cb = cfg.counter_bits
        sum_bits = cb + ceil_log2(cfg.hist_bins + 1)
        # over[i] = sum of bins above i; n = over(-1) = sum of all bins.
        over = [None] * cfg.hist_bins
        acc = Const(0, sum_bits)
        for i in range(cfg.hist_bins - 1, -1, -1):
            over[i] = Signal(sum_bits, name=f"over{i}")
            m.d.comb += over[i].eq(acc)
            acc = (acc + hist[i])[:sum_bits]
        n = Signal(sum_bits)
        m.d.comb += n.eq(acc)
        budget = Signal(sum_bits + THRESHOLD_BITS)
        m.d.comb += budget.eq(n * self.threshold)
        fails = [Signal(name=f"fail{i}") for i in range(cfg.hist_bins)]
        # The top bin always qualifies (nothing lies above it): its fail bit is the constant 0.
        for i in range(cfg.hist_bins - 1):
            m.d.comb += fails[i].eq((over[i] << THRESHOLD_BITS) > budget)
        istar = Signal(range(cfg.hist_bins + 1))
        m.d.comb += istar.eq(sum(fails))

        s = self.settings.data.setting
        wbits = Signal(6)
        m.d.comb += wbits.eq(width_mux(s.width, {w: w.bits for w in cfg.supported_widths}))
        f_raw = Signal(signed(10))
        m.d.comb += f_raw.eq(wbits - 2 - cfg.hist_min_exp - istar)
        f_new = Signal(signed(FRAC_BITS))
        m.d.comb += f_new.eq(Mux(f_raw > FRAC_MAX, FRAC_MAX, Mux(f_raw < FRAC_MIN, FRAC_MIN, f_raw)))

        update = Signal()
        m.d.comb += update.eq(self.busy & phase & self.settings.data.valid & s.auto & (entry.total != 0))
        m.d.comb += [
            self.settings.frac.eq(Mux(n == 0, s.frac, f_new)),
            self.settings.we.eq(update),
            self.db.clear.eq(update),
        ]
        return m


