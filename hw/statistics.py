"""StatisticsBlock: the running statistics of one command's pre-conversion values.

Golden twins: :func:`reference.stats.msb_position` (leading-sign detection),
:func:`reference.stats.analyse` (bin, zeros, overflow, underflow, total of one beat) and the
saturating sums of :meth:`reference.stats.Database.accumulate` (beats add up like entries).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from reference import latency
from reference.config import CoreConfig
from reference.formats import Width, acc_width

from .settings import check_config
from .simd_mac import tree_sum

#: Widest pre-conversion value of any configuration: the 32-bit accumulator.
VALUE_BITS = max(acc_width(w) for w in Width)


def value_bits(cfg: CoreConfig) -> int:
    """Bits of a pre-conversion value in a core of ``cfg``: the accumulator of its widest width."""
    return acc_width(cfg.widest)


def msb_position(m: Module, v, name: str):
    """p(v): index of the highest bit differing from the sign bit, -1 for 0 and -1.

    Twin of :func:`reference.stats.msb_position`; returns a ``signed`` Signal. The leading-one
    detector is a binary tree (depth ceil(log2 n) of 2:1 multiplexers), not a chain of n
    priority multiplexers.
    """
    n = len(v)
    mag = Signal(n, name=f"{name}_mag")
    m.d.comb += mag.eq(v ^ v[n - 1].replicate(n))
    # (any bit set, index of the highest set bit) of aligned power-of-two groups, pairwise up
    size = 1 << ceil_log2(n)
    nodes = [(mag[i], Const(0, 0)) if i < n else (Const(0, 1), Const(0, 0)) for i in range(size)]
    # Each node is a named signal ({name}_t<level>_<group>: group g of level l covers bits
    # [g * 2**l, (g + 1) * 2**l)), so that coverage reports say which bits a dead branch tests.
    level = 0
    while len(nodes) > 1:
        level += 1
        new = []
        for g, ((lo_any, lo_idx), (hi_any, hi_idx)) in enumerate(zip(nodes[0::2], nodes[1::2], strict=True)):
            any_ = Signal(name=f"{name}_t{level}_{g}_any")
            idx_ = Signal(level, name=f"{name}_t{level}_{g}_idx")
            m.d.comb += [any_.eq(hi_any | lo_any),
                         idx_.eq(Mux(hi_any, Cat(hi_idx, Const(1, 1)), Cat(lo_idx, Const(0, 1))))]
            new.append((any_, idx_))
        nodes = new
    found, idx = nodes[0]
    p = Signal(signed(ceil_log2(n + 1) + 1), name=f"{name}_p", init=-1)
    m.d.comb += p.eq(Mux(found, idx, -1))
    return p


class StatisticsBlock(wiring.Component):
    """Histogram of leading-sign exponents and value counters, updated per beat, never stalling.

    A beat (``valid`` high for one cycle) carries S values; those whose ``live`` bit is set are
    counted (a mask rather than a count, so that the ComputeUnit can present its values in lane
    order, each straight from its requantizer; the statistics do not depend on the order).
    Per counted value ``v``: zero -> ``zeros``; else bin
    ``clamp(p(v) - f_acc - hist_min_exp, 0, hist_bins - 1)`` of ``hist``; a set
    ``slot_overflow``/``slot_underflow`` flag -> ``overflow``/``underflow``; every value ->
    ``total``. All counters are ``counter_bits`` wide and saturate at ``counter_max``.

    Pipeline: bins are registered in the cycle after the beat, counters the cycle after that,
    so the outputs include a beat from :attr:`LATENCY` cycles after its ``valid`` cycle.
    ``clear`` zeroes every counter from the next cycle and discards the beat presented in the
    same cycle and the one in the bin register (the sequencer clears before a command's
    first beat).

    Parameters
    ----------
    cfg
        Core configuration (``rng_slots`` = S, ``hist_bins``, ``hist_min_exp``, ``counter_bits``).

    Members
    -------
    valid : In(1)
    values : In(ArrayLayout(signed(value_bits(cfg)), S))
        Pre-conversion values with ``f_acc`` fraction bits (narrower accumulators sign-extended);
        80 bits when the core supports 32-bit data, else 48 or 32.
    live : In(S)
        Which slots hold values of the beat.
    f_acc : In(signed(10))
    slot_overflow, slot_underflow : In(S)
        Per-slot flags from the requantizers.
    clear : In(1)
    hist : Out(ArrayLayout(unsigned(counter_bits), hist_bins))
    zeros, overflow, underflow, total : Out(counter_bits)
    busy : Out(1)
        A beat is in the bin register (not yet counted).
    """

    #: Cycles from a beat's ``valid`` to the first cycle the counters include it.
    LATENCY = latency.STATISTICS_LATENCY

    def __init__(self, cfg: CoreConfig) -> None:
        self.cfg = check_config(cfg)
        s = cfg.rng_slots
        cb = cfg.counter_bits
        super().__init__({
            "valid": In(1),
            "values": In(data.ArrayLayout(signed(value_bits(cfg)), s)),
            "live": In(s),
            "f_acc": In(signed(10)),
            "slot_overflow": In(s), "slot_underflow": In(s),
            "clear": In(1),
            "hist": Out(data.ArrayLayout(unsigned(cb), cfg.hist_bins)),
            "zeros": Out(cb), "overflow": Out(cb), "underflow": Out(cb), "total": Out(cb),
            "busy": Out(1),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self.cfg
        s = cfg.rng_slots
        nb = cfg.hist_bins
        cmax = cfg.counter_max

        # ---- stage A: per slot, bin and flags (registered) --------------------------------
        a_valid = Signal()
        a_bin = [Signal(range(nb), name=f"a_bin{j}") for j in range(s)]
        a_nz = Signal(s)
        a_zero = Signal(s)
        a_over = Signal(s)
        a_under = Signal(s)
        a_live = Signal(s)
        m.d.sync += a_valid.eq(self.valid & ~self.clear)
        m.d.comb += self.busy.eq(a_valid)
        for j in range(s):
            v = self.values[j]
            live = self.live[j]
            p = msb_position(m, v, f"v{j}")
            e = Signal(signed(13), name=f"bin_raw{j}")
            m.d.comb += e.eq(p - self.f_acc - cfg.hist_min_exp)
            m.d.sync += [
                a_bin[j].eq(Mux(e < 0, 0, Mux(e > nb - 1, nb - 1, e[:ceil_log2(nb)]))),
                a_live[j].eq(live),
                a_nz[j].eq(live & (v != 0)),
                a_zero[j].eq(live & (v == 0)),
                a_over[j].eq(live & self.slot_overflow[j]),
                a_under[j].eq(live & self.slot_underflow[j]),
            ]

        # ---- stage B: saturating counters ----------------------------------------------
        def bump(counter, inc, name):
            total = Signal(len(counter) + 1 + ceil_log2(s + 1), name=f"{name}_sum")
            m.d.comb += total.eq(counter + inc)
            with m.If(self.clear):
                m.d.sync += counter.eq(0)
            with m.Elif(a_valid):
                m.d.sync += counter.eq(Mux(total > cmax, cmax, total))

        def popcount(bits):
            return tree_sum([bits[j] for j in range(s)])

        for b in range(nb):
            c = Signal(cfg.counter_bits, name=f"hist{b}")
            m.d.comb += self.hist[b].eq(c)
            bump(c, tree_sum([(a_nz[j] & (a_bin[j] == b)) for j in range(s)]), f"hist{b}")
        for name, flags in (("zeros", a_zero), ("overflow", a_over), ("underflow", a_under), ("total", a_live)):
            c = Signal(cfg.counter_bits, name=name)
            m.d.comb += getattr(self, name).eq(c)
            bump(c, popcount(flags), name)
        return m
