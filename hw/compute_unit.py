"""ComputeUnit: the DLU datapath (SIMD multiply-accumulate, alignment, requantizer, statistics).

Golden twins: :func:`reference.ops.matmul`, :func:`~reference.ops.add`, :func:`~reference.ops.sub`,
:func:`~reference.ops.mul`, :func:`~reference.ops.axpy`, :func:`~reference.ops.relu`,
:func:`~reference.ops.relu_backward`, :func:`~reference.ops.convert` (one output beat at a time),
:func:`reference.ops.align_terms` for the alignment shifts and :func:`reference.ops.convert_acc`
for the output stage.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from reference import latency
from reference.config import CoreConfig
from reference.formats import RoundingMode, Width, acc_width
from reference.ops import Op

from .requantizer import Requantizer
from .rng import RngHostSignature, XorshiftBank
from .settings import check_config, width_mux
from .simd_mac import ACC_MAX, PRODUCT_BITS, SUB_LANES, SimdMacLane
from .statistics import StatisticsBlock


def count_shape(cfg: CoreConfig):
    """Shape of a beat's ``count`` field (1..S valid slots)."""
    return unsigned(ceil_log2(cfg.rng_slots + 1))


def operand_layout(cfg: CoreConfig) -> data.StructLayout:
    """One operand beat: ``a``, ``b`` (S slots, sign-extended to 32 bits), ``count``, ``last``."""
    s = cfg.rng_slots
    return data.StructLayout({"a": data.ArrayLayout(signed(32), s), "b": data.ArrayLayout(signed(32), s),
                              "count": count_shape(cfg), "last": 1})


def result_layout(cfg: CoreConfig) -> data.StructLayout:
    """One result beat: ``q`` (S slots, rounded and saturated to ``out_width``), ``count``."""
    return data.StructLayout({"q": data.ArrayLayout(signed(32), cfg.rng_slots), "count": count_shape(cfg)})


def align_left_max(widths) -> int:
    """Largest alignment left shift :func:`reference.ops.align_terms` can ask for at ``widths``:
    ``F_acc - F_i <= acc_width(W) - 1 - w_i`` (at most 80 - 1 - 32 at 32 bits)."""
    return max(acc_width(w) - 1 - w.bits for w in widths)


def align_right_max(widths) -> int:
    """Right alignment shifts from this on leave only the sign of any term (a product of the widest width)."""
    return 2 * max(w.bits for w in widths)


# The statistics take a beat in the cycle its result is registered, one cycle before it is offered.
assert latency.COMPUTE_UNIT_STATS_LATENCY == latency.STATISTICS_LATENCY - 1, "reference.latency is inconsistent"

#: :func:`align_left_max` and :func:`align_right_max` with every width supported.
ALIGN_LEFT_MAX = align_left_max(Width)
ALIGN_RIGHT_MAX = align_right_max(Width)
assert ALIGN_RIGHT_MAX == PRODUCT_BITS


def _align(m: Module, x, sh, name: str, bits: int = ACC_MAX, widths=tuple(Width)):
    """``x << sh`` if ``sh >= 0`` else ``x >> -sh`` (floor), as a ``bits``-bit value.

    Twin of the shift in :func:`reference.ops.align_terms`. Left shifts are clamped at
    :func:`align_left_max` (no legal command shifts further) and right shifts at
    :func:`align_right_max` (any longer shift of a term of at most twice the widest width gives
    the same sign word), so every shift ``align_terms`` produces is exact.
    """
    lmax, rmax = align_left_max(widths), align_right_max(widths)
    left = Signal(range(lmax + 1), name=f"{name}_l")
    right = Signal(range(rmax + 1), name=f"{name}_r")
    m.d.comb += [
        left.eq(Mux(sh > lmax, lmax, Mux(sh < 0, 0, sh[:len(left)]))),
        right.eq(Mux(-sh > rmax, rmax, Mux(sh > 0, 0, (-sh)[:len(right)]))),
    ]
    out = Signal(signed(bits), name=name)
    m.d.comb += out.eq(Mux(sh >= 0, x << left, x >> right))
    return out


def position_sub(width: Width, pos: int) -> int | None:
    """The sub-lane whose accumulator converts in a lane's requantizer ``pos`` at ``width``.

    Requantizer ``pos`` (0..3) serves sub-lane ``pos`` at 8 bits, ``pos // 2`` at 16 bits when
    ``pos`` is even, and sub-lane 0 at 32 bits when ``pos`` is 0; None where it is idle.
    """
    step = SUB_LANES // width.lanes_per_word
    return pos // step if pos % step == 0 else None


def position_bits(widths) -> dict[int, int]:
    """Accumulator bits of each requantizer position a lane uses at ``widths``: the widest
    accumulator it converts (all widths: 80, 32, 48, 32 bits at positions 0-3, the
    4 x 32 / 2 x 48 / 1 x 80 split of the lane; 16 and 32 bits: 80 and 48 at 0 and 2)."""
    out = {}
    for pos in range(SUB_LANES):
        used = [acc_width(w) for w in widths if position_sub(w, pos) is not None]
        if used:
            out[pos] = max(used)
    return out


#: :func:`position_bits` with every width supported.
POSITION_BITS = tuple(position_bits(Width).values())


class ComputeUnit(wiring.Component):
    """The DLU datapath: one command's operand beats in, rounded result beats out.

    Slot ``j`` of a beat (``S = cfg.rng_slots`` slots, the first ``V = values_per_beat(W)``
    used at width W) lives in lane ``j // (32 / W)``, sub-lane ``j % (32 / W)`` of the
    :class:`hw.simd_mac.SimdMacLane` array.

    Only the widths of ``cfg.widths`` are built: S is the number of values per beat at the
    narrowest of them, the lanes, accumulators and alignment shifters are those of
    ``SimdMacLane(cfg.supported_widths)``, and only the requantizer positions some supported
    width uses exist, each as wide as :func:`position_bits` says (an 8-bit-only core: four
    32-bit requantizers per lane; 32-bit-only: one of 80 bits). The ``width`` codes of
    unsupported widths never arrive (no legal setting holds them) and select the widest.

    Pipeline (``LATENCY = 2``), fully pipelined: one operand beat per cycle while ``results``
    is ready.

    1. Accept cycle: the lane words are packed from the slots; each lane multiplies (a * b;
       for AXPY a * alpha). MATMUL accumulates into the lane accumulators (starting from 0
       on the first beat after a ``last``); every other op computes its exact value
       (alignment shifts, sum, ReLU, ...) at each accumulator position of the lane, in
       :func:`position_bits` bits, and loads it into the accumulators. A ``last``
       beat leaves a finished value there.
    2. The finished values go through :class:`hw.requantizer.Requantizer` s, four per lane
       (with 8-bit support) at the lane's accumulator positions, sized by :func:`position_bits`
       (all widths: 80, 32, 48, 32 bits: position 0 converts the one 32-bit, the first 16-bit or the first 8-bit
       value, position 2 the second 16-bit or third 8-bit one, positions 1 and 3 only 8-bit
       values; see :func:`position_sub`), each with its slot's generator word; the result
       is routed to its slot, registered and offered on ``results`` from the next cycle.
       In the same cycle the :class:`hw.statistics.StatisticsBlock` takes the values and
       the flags (in lane order, with a live mask); the ``stats_*`` outputs include the
       beat from the cycle after its result beat is first valid (at the latest). All S generators step in this cycle if
       ``rounding`` is STOCHASTIC and ``out_shift > 0`` (:mod:`reference.rng`).

    Accumulation across commands (:class:`reference.isa.Accumulate`; golden twin
    :func:`reference.ops.matmul_sum` and :func:`reference.ops.matmul` with ``acc``): an
    accumulator memory of ``cfg.acc_beats`` entries, one per output beat index (counted from 0
    after ``stats_clear``), each holding a lane's accumulators packed at ``W_op``
    (``32 / W`` fields of ``acc_width(W)`` bits). With ``acc_in`` a MATMUL sum's first beat loads
    ``entry + a * b`` instead of ``a * b``: the entry of the next beat to start is read every
    cycle, one cycle ahead (a registered read). With ``acc_out`` a finished sum is written to its
    entry when it leaves the accumulators; its result beat still appears (same timing; the
    sequencer does not write it), but the statistics do not count it and the generators do not step.

    Back-pressure on ``results`` stalls stage 2 and then ``operands``; statistics never stall.
    The command constants (``op`` ... ``alpha``) must be held until ``busy`` falls.

    Parameters
    ----------
    cfg
        Core configuration (``lanes``, ``widths``, ``hist_bins``, ``hist_min_exp``, ``counter_bits``).

    Members
    -------
    op, width, out_width, rounding : In
        :class:`reference.ops.Op`, ``Width`` code of ``W_op``, ``Width`` code of the output,
        :class:`reference.formats.RoundingMode`; held for the whole command.
    a_shift, b_shift : In(signed(9))
        Alignment of the a-term (for AXPY the product alpha * a) and the b-term onto the
        accumulator point (:func:`reference.ops.align_terms`): left if >= 0, else arithmetic
        right. Used by ADD, SUB and AXPY.
    out_shift : In(signed(10))
        ``F_acc - F_out``.
    f_acc : In(signed(10))
        Accumulator point position (statistics exponent).
    alpha : In(signed(32))
        AXPY scalar, a ``W_op``-bit integer.
    acc_in, acc_out : In(1)
        MATMUL accumulate mode (bits 0 and 1 of :class:`reference.isa.Accumulate`); held for
        the whole command; 0 for other ops.
    seed, seed_load : In
        Load the stochastic-rounding generators (:func:`reference.rng.seed_states`).
    rng : In(RngHostSignature(cfg.rng_slots))
        Host read and write of single generator states (the RNG_STATE window, :class:`hw.rng.XorshiftBank`).
    operands : In(stream.Signature(operand_layout(cfg)))
        MATMUL: one beat per k (a: A[m, k] in every slot, b: B[k, n0:n0 + V], ``last`` at
        k = K - 1); other ops: one beat per output beat with ``last`` set (RELU_BACKWARD:
        a = dy, b = x). Slots past ``count`` are ignored.
    results : Out(stream.Signature(result_layout(cfg)))
        One beat per output beat; slots past ``count`` are 0.
    stats_clear : In(1)
        Zero the statistics (before a command's first beat).
    stats_hist, stats_zeros, stats_overflow, stats_underflow, stats_total : Out
        Running :class:`reference.stats.OpStats` of the current command (saturating).
    busy : Out(1)
        A beat is in flight (a MATMUL sum is open, a value waits for conversion or to be
        taken, or the statistics have not counted it yet).

    Raises
    ------
    TypeError
        ``cfg`` is not a :class:`reference.config.CoreConfig`.
    """

    #: Cycles from the accepted operand beat with ``last`` to its result beat (no back-pressure).
    LATENCY = latency.COMPUTE_UNIT_LATENCY
    #: Cycles from a result beat's first valid cycle to the first cycle ``stats_*`` include it.
    STATS_LATENCY = latency.COMPUTE_UNIT_STATS_LATENCY

    def __init__(self, cfg: CoreConfig) -> None:
        self.cfg = check_config(cfg)
        cb = cfg.counter_bits
        super().__init__({
            "op": In(4), "width": In(2), "out_width": In(2), "rounding": In(2),
            "a_shift": In(signed(9)), "b_shift": In(signed(9)), "out_shift": In(signed(10)),
            "f_acc": In(signed(10)), "alpha": In(signed(32)),
            "acc_in": In(1), "acc_out": In(1),
            "seed": In(32), "seed_load": In(1),
            "rng": In(RngHostSignature(cfg.rng_slots)),
            "operands": In(stream.Signature(operand_layout(cfg))),
            "results": Out(stream.Signature(result_layout(cfg))),
            "stats_clear": In(1),
            "stats_hist": Out(data.ArrayLayout(unsigned(cb), cfg.hist_bins)),
            "stats_zeros": Out(cb), "stats_overflow": Out(cb), "stats_underflow": Out(cb),
            "stats_total": Out(cb),
            "busy": Out(1),
        })
        #: The stochastic-rounding generators (a member so that tests can read their states).
        self.generators = XorshiftBank(cfg.rng_slots)
        #: The statistics block.
        self.statistics = StatisticsBlock(cfg)

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self.cfg
        S = cfg.rng_slots
        lanes = cfg.lanes
        m.submodules.generators = gen = self.generators
        m.submodules.statistics = stats = self.statistics
        widths = cfg.supported_widths
        mac = [SimdMacLane(widths) for _ in range(lanes)]
        for i, lane in enumerate(mac):
            m.submodules[f"lane{i}"] = lane
        pos_bits = position_bits(widths)
        # requantizer positions of a lane, in slot order at the narrowest width
        positions = sorted(pos_bits)

        def by_width(opts: dict):
            """Mux on ``width`` over the supported widths (other codes select the widest, as the lanes do)."""
            return width_mux(self.width, opts)

        def slot_of(w: Width, lane: int, sub: int) -> int | None:
            n = w.lanes_per_word
            return lane * n + sub if sub < n else None

        ops = self.operands
        pa, pb = ops.payload.a, ops.payload.b

        # ---- handshake and pipeline state -----------------------------------------------
        v1 = Signal()  # the lane accumulators hold finished values for stage 2
        v2 = Signal()  # the result register holds a beat
        fresh = Signal(init=1)  # the next MATMUL beat starts a new sum
        count1 = Signal.like(ops.payload.count)
        take2 = Signal()
        accept = Signal()
        m.d.comb += [
            take2.eq(v1 & (~v2 | self.results.ready)),
            ops.ready.eq(~v1 | take2),
            accept.eq(ops.valid & ops.ready),
            self.results.valid.eq(v2),
            self.busy.eq(v1 | v2 | ~fresh | stats.busy),
        ]
        with m.If(accept):
            m.d.sync += [fresh.eq(ops.payload.last), count1.eq(ops.payload.count)]
        m.d.sync += v1.eq((accept & ops.payload.last) | (v1 & ~take2))
        m.d.sync += v2.eq(take2 | (v2 & ~self.results.ready))

        # ---- accumulator memory (sums across commands) -----------------------------------------
        is_matmul = self.op == Op.MATMUL
        lane_store = mac[0].store_bits
        m.submodules.acc_mem = acc_mem = memory.Memory(shape=unsigned(lanes * lane_store), depth=cfg.acc_beats,
                                                       init=[])
        acc_rd = acc_mem.read_port()
        acc_wr = acc_mem.write_port()
        idx_bits = ceil_log2(cfg.acc_beats + 1)
        rd_idx = Signal(idx_bits)  # beat index of the next sum to start
        wr_idx = Signal(idx_bits)  # beat index of the finished sum in the accumulators
        with m.If(self.stats_clear):
            m.d.sync += [rd_idx.eq(0), wr_idx.eq(0)]
        with m.Else():
            with m.If(accept & ops.payload.last):
                m.d.sync += rd_idx.eq(rd_idx + 1)
            with m.If(take2):
                m.d.sync += wr_idx.eq(wr_idx + 1)
        m.d.comb += acc_rd.addr.eq(Mux(self.stats_clear, 0, Mux(accept & ops.payload.last, rd_idx + 1, rd_idx)))
        m.d.comb += [acc_wr.addr.eq(wr_idx), acc_wr.en.eq(take2 & self.acc_out & is_matmul)]
        acc_start = is_matmul & self.acc_in & fresh
        entry = {}  # (lane, sub-lane) -> the stored value, sign-extended
        for i, lane in enumerate(mac):
            packed, stored = {}, {}
            word = acc_rd.data[i * lane_store:(i + 1) * lane_store]
            for w in widths:
                aw = acc_width(w)
                packed[w] = Cat(*[lane.acc[s][:aw] for s in range(w.lanes_per_word)])
                stored[w] = [word[s * aw:(s + 1) * aw].as_signed() for s in range(w.lanes_per_word)]
            m.d.comb += acc_wr.data[i * lane_store:(i + 1) * lane_store].eq(by_width(packed))
            for sub in range(lane.sub_lanes):
                v = Signal(signed(lane.acc_bits), name=f"acc_entry{i}_{sub}")
                m.d.comb += v.eq(by_width({w: stored[w][sub] if sub < len(stored[w]) else 0 for w in widths}))
                entry[i, sub] = v

        # ---- stage 1: lane words, products, exact values --------------------------------------
        is_axpy = self.op == Op.AXPY
        for i, lane in enumerate(mac):
            words_a, words_b = {}, {}
            for w in widths:
                n = w.lanes_per_word
                words_a[w] = Cat(*[pa[i * n + s][:w.bits] for s in range(n)])
                words_b[w] = Cat(*[pb[i * n + s][:w.bits] for s in range(n)])
                words_b[w] = Mux(is_axpy, Cat(*[self.alpha[:w.bits]] * n), words_b[w])
            m.d.comb += [
                lane.width.eq(self.width), lane.a.eq(by_width(words_a)), lane.b.eq(by_width(words_b)),
                lane.en.eq(accept), lane.clear.eq(fresh), lane.load.eq(~is_matmul | acc_start),
            ]

        # The exact elementwise values, computed at the lane's accumulator positions (like the
        # requantizers below), each only as wide as the widest value it can hold.
        for i, lane in enumerate(mac):
            values = {}
            for pos, bits in pos_bits.items():
                wmax = max(w.bits for w in widths if position_sub(w, pos) is not None)
                a_o, b_o, p_o = {}, {}, {}
                for w in widths:
                    sub = position_sub(w, pos)
                    j = None if sub is None else slot_of(w, i, sub)
                    # operands fit W_op bits (the contract), so wmax bits hold every one here
                    a_o[w] = 0 if j is None else pa[j][:wmax].as_signed()
                    b_o[w] = 0 if j is None else pb[j][:wmax].as_signed()
                    p_o[w] = 0 if j is None else lane.product[sub]
                a = Signal(signed(wmax), name=f"a{i}_{pos}")
                b = Signal(signed(wmax), name=f"b{i}_{pos}")
                p = Signal(signed(2 * wmax), name=f"prod{i}_{pos}")
                m.d.comb += [a.eq(by_width(a_o)), b.eq(by_width(b_o)), p.eq(by_width(p_o))]
                ta = _align(m, Mux(is_axpy, p, a), self.a_shift, f"term_a{i}_{pos}", bits, widths)
                tb = _align(m, b, self.b_shift, f"term_b{i}_{pos}", bits, widths)
                v = Signal(signed(bits), name=f"value{i}_{pos}")
                with m.Switch(self.op):
                    with m.Case(Op.ADD, Op.AXPY):
                        m.d.comb += v.eq(ta + tb)
                    with m.Case(Op.SUB):
                        m.d.comb += v.eq(ta - tb)
                    with m.Case(Op.MUL):
                        m.d.comb += v.eq(p)
                    with m.Case(Op.RELU):
                        m.d.comb += v.eq(Mux(a < 0, 0, a))
                    with m.Case(Op.RELU_BACKWARD):
                        m.d.comb += v.eq(Mux(b > 0, a, 0))
                    with m.Default():  # CONVERT (MATMUL accumulates in the lanes instead)
                        m.d.comb += v.eq(a)
                values[pos] = v
            for sub in range(lane.sub_lanes):
                opts = {}
                for w in widths:
                    n = w.lanes_per_word
                    opts[w] = values[sub * (SUB_LANES // n)] if sub < n else 0
                # a sum continued from the accumulator memory loads entry + product (wrapping
                # to the accumulator, as the lane's own adder does)
                m.d.comb += lane.load_value[sub].eq(
                    Mux(is_matmul, entry[i, sub] + lane.product[sub], by_width(opts)))

        # ---- stage 2: conversion, generators, statistics ------------------------------------
        stochastic = (self.rounding == RoundingMode.STOCHASTIC) & (self.out_shift > 0)
        converts = take2 & ~(is_matmul & self.acc_out)  # an unfinished sum is kept, not converted
        m.d.comb += [gen.seed.eq(self.seed), gen.seed_load.eq(self.seed_load), gen.step.eq(converts & stochastic)]
        wiring.connect(m, wiring.flipped(self.rng), gen.host)
        m.d.comb += [stats.valid.eq(converts), stats.f_acc.eq(self.f_acc),
                     stats.clear.eq(self.stats_clear)]
        for name in ("hist", "zeros", "overflow", "underflow", "total"):
            m.d.comb += getattr(self, f"stats_{name}").eq(getattr(stats, name))
        # One requantizer per accumulator position of a lane, as wide as its widest use.
        q_phys = {}
        for i, lane in enumerate(mac):
            for idx, pos in enumerate(positions):
                bits = pos_bits[pos]
                k = i * len(positions) + idx
                acc = Signal(signed(bits), name=f"acc{i}_{pos}")
                u16 = Signal(16, name=f"u16_{i}_{pos}")
                live = Signal(name=f"live{i}_{pos}")
                acc_o, u16_o, live_o = {}, {}, {}
                for w in widths:
                    sub = position_sub(w, pos)
                    j = None if sub is None else slot_of(w, i, sub)
                    acc_o[w] = 0 if j is None else lane.acc[sub]
                    u16_o[w] = 0 if j is None else gen.words[j]
                    live_o[w] = 0 if j is None else (j < count1)
                m.d.comb += [acc.eq(by_width(acc_o)), u16.eq(by_width(u16_o)), live.eq(by_width(live_o))]
                rq = Requantizer(bits, widths)
                m.submodules[f"requantizer{i}_{pos}"] = rq
                m.d.comb += [rq.acc.eq(acc), rq.shift.eq(self.out_shift), rq.rounding.eq(self.rounding),
                             rq.out_width.eq(self.out_width), rq.u16.eq(u16)]
                m.d.comb += [stats.values[k].eq(acc), stats.live[k].eq(live),
                             stats.slot_overflow[k].eq(rq.overflow), stats.slot_underflow[k].eq(rq.underflow)]
                q_phys[i, pos] = rq.q
        q2 = []
        for j in range(S):
            opts = {}
            for w in widths:
                n = w.lanes_per_word
                opts[w] = q_phys[j // n, (j % n) * (SUB_LANES // n)] if j < lanes * n else 0
            q = Signal(signed(32), name=f"q{j}")
            with m.If(take2):
                m.d.sync += q.eq(Mux(j < count1, by_width(opts), 0))
            q2.append(q)
        count2 = Signal.like(count1)
        with m.If(take2):
            m.d.sync += count2.eq(count1)
        m.d.comb += [self.results.payload.count.eq(count2)]
        for j in range(S):
            m.d.comb += self.results.payload.q[j].eq(q2[j])
        return m
