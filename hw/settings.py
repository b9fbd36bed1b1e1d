"""Settings register (per tensor id: width, point position, rounding, auto-update) and the
point-position policy controller of the POLICY_UPDATE command.

Both follow :mod:`reference`: the entry encoding is :meth:`reference.formats.TensorSetting.encode`
(12 bits: [1:0] width, [8:2] point position, [10:9] rounding, [11] auto) and the policy is
:func:`reference.stats.next_frac`, evaluated for every tensor id in
:func:`reference.isa.policy_cycles_per_tid` cycles.
"""

from __future__ import annotations

from amaranth.hdl import Array, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from reference.config import CoreConfig
from reference.formats import FRAC_BITS, FRAC_MAX, FRAC_MIN, SETTING_BITS
from reference.isa import POLICY_CYCLES_PER_BIN, POLICY_FIXED_CYCLES
from reference.stats import HEADROOM_BITS, HEADROOM_LSB, POLICY_BITS, RISE_BITS, RISE_LSB, THRESHOLD_BITS

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

    Multi-cycle, so that no path holds more than one adder of the histogram (the single-cycle
    version summed all bins combinationally). Tensor id ``t`` takes
    :func:`reference.isa.policy_cycles_per_tid` = ``2 * hist_bins + 4`` cycles:

    - READ: the database read is issued (its read port is synchronous);
    - LATCH: the histogram is loaded into a ring of ``hist_bins`` registers, the top bin last;
    - SUM (``hist_bins`` cycles): ``n`` += the ring's top bin, then the ring rotates by one bin;
      after ``hist_bins`` rotations it is back in place;
    - MUL: ``budget = n * threshold`` registered;
    - SCAN (``hist_bins`` cycles, bins from the top down): bin ``i`` *fails* when
      ``over(i) * 2**16 > budget``, with ``over(i)`` the sum of the bins above ``i``; ``i*``
      counts the failing bins (``over`` decreases with ``i``, so they are ``0 .. i*-1``);
    - WRITE: ``T = clamp(W - 2 - (hist_min_exp + i*) - headroom, FRAC_MIN, FRAC_MAX)``; the
      new F is ``T`` if ``T <= F`` or ``rise == 0``, else ``min(T, F + rise)``; ``n == 0``
      keeps F. The entry is updated when its setting is valid, has the auto flag, and its
      database entry holds statistics (``total != 0``: every compute command adds at least one
      value, so this is exactly the reference's "tid in db.entries"); such an entry is then
      cleared. ``done`` pulses in the last tensor id's WRITE cycle.

    The settings and database addresses stay at ``t`` for all its cycles.

    Parameters
    ----------
    cfg
        Core configuration.

    Members
    -------
    start : In(1)
        Begin a pass (ignored while busy).
    threshold : In(POLICY_BITS)
        The THRESHOLD register word (:class:`reference.stats.PolicyParams`: threshold [15:0],
        headroom [17:16], rise [19:18]).
    busy : Out(1)
        High during the ``policy_cycles_per_tid(cfg) * tensor_ids`` cycles of a pass.
    done : Out(1)
        High in the last cycle of a pass.
    settings : Out(PolicySettingsSignature)
        To :class:`SettingsRegister`'s ``policy`` port.
    db : Out(DatabasePolicySignature)
        To :class:`hw.database.DistributionDatabase`'s ``policy`` port.

    Raises
    ------
    TypeError
        ``cfg`` is not a ``CoreConfig``.
    """

    def __init__(self, cfg: CoreConfig) -> None:
        self.cfg = check_config(cfg)
        assert POLICY_CYCLES_PER_BIN == 2 and POLICY_FIXED_CYCLES == 4, \
            "PolicyController's schedule is READ, LATCH, SUM x bins, MUL, SCAN x bins, WRITE"
        super().__init__({
            "start": In(1),
            "threshold": In(POLICY_BITS),
            "busy": Out(1),
            "done": Out(1),
            "settings": Out(PolicySettingsSignature(cfg)),
            "db": Out(DatabasePolicySignature(cfg)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        nb = cfg.hist_bins
        tid = Signal(tid_bits(cfg) + 1)
        last_tid = cfg.tensor_ids - 1
        cb = cfg.counter_bits
        sum_bits = cb + ceil_log2(nb + 1)
        thr = self.threshold[:THRESHOLD_BITS]
        headroom = self.threshold[HEADROOM_LSB:HEADROOM_LSB + HEADROOM_BITS]
        rise = self.threshold[RISE_LSB:RISE_LSB + RISE_BITS]

        m.d.comb += [self.db.addr.eq(tid), self.settings.addr.eq(tid)]
        entry = data.View(entry_layout(cfg), self.db.data)

        ring = [Signal(cb, name=f"ring{i}") for i in range(nb)]
        has_stats = Signal()
        count = Signal(range(nb + 1))
        n = Signal(sum_bits)
        over = Signal(sum_bits)
        budget = Signal(sum_bits + THRESHOLD_BITS)
        istar = Signal(range(nb + 1))

        def rotate():
            m.d.sync += [ring[0].eq(ring[nb - 1])] + [ring[i].eq(ring[i - 1]) for i in range(1, nb)]

        s = self.settings.data.setting
        wbits = Signal(6)
        m.d.comb += wbits.eq(width_mux(s.width, {w: w.bits for w in cfg.supported_widths}))
        target_raw = Signal(signed(10))
        m.d.comb += target_raw.eq(wbits - 2 - cfg.hist_min_exp - istar - headroom)
        target = Signal(signed(FRAC_BITS))
        m.d.comb += target.eq(Mux(target_raw > FRAC_MAX, FRAC_MAX, Mux(target_raw < FRAC_MIN, FRAC_MIN, target_raw)))
        raised = Signal(signed(FRAC_BITS + 1))
        m.d.comb += raised.eq(s.frac + rise)
        f_new = Signal(signed(FRAC_BITS))
        m.d.comb += f_new.eq(Mux((rise != 0) & (target > raised), raised, target))

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [self.busy.eq(1), tid.eq(0)]
                    m.next = "READ"
            with m.State("READ"):
                m.next = "LATCH"
            with m.State("LATCH"):
                m.d.sync += [r.eq(entry.hist[i]) for i, r in enumerate(ring)]
                m.d.sync += [has_stats.eq(entry.total != 0), n.eq(0), count.eq(0)]
                m.next = "SUM"
            with m.State("SUM"):
                m.d.sync += [n.eq(n + ring[nb - 1]), count.eq(count + 1)]
                rotate()
                with m.If(count == nb - 1):
                    m.next = "MUL"
            with m.State("MUL"):
                m.d.sync += [budget.eq(n * thr), over.eq(0), istar.eq(0), count.eq(0)]
                m.next = "SCAN"
            with m.State("SCAN"):
                m.d.sync += [istar.eq(istar + ((over << THRESHOLD_BITS) > budget)), over.eq(over + ring[nb - 1]),
                             count.eq(count + 1)]
                rotate()
                with m.If(count == nb - 1):
                    m.next = "WRITE"
            with m.State("WRITE"):
                update = self.settings.data.valid & s.auto & has_stats
                m.d.comb += [
                    self.settings.frac.eq(Mux(n == 0, s.frac, f_new)),
                    self.settings.we.eq(update),
                    self.db.clear.eq(update),
                ]
                m.d.sync += tid.eq(tid + 1)
                with m.If(tid == last_tid):
                    m.d.comb += self.done.eq(1)
                    m.d.sync += self.busy.eq(0)
                    m.next = "IDLE"
                with m.Else():
                    m.next = "READ"
        return m
