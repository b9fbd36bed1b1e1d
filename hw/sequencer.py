"""Sequencer: command FIFO, decode, legality checks, address generation, operand unpacking,
result packing, statistics commit and the command timing of :func:`reference.isa.cycles`.

A command leaves the FIFO in the cycle the sequencer is idle (``IDLE``, the first setup
cycle), spends one more cycle in ``SETUP`` (settings read, :func:`reference.isa.check_command`
in hardware, alignment shifts of :mod:`reference.ops`), then:

- compute: ``beats * (K if MATMUL else 1)`` cycles issuing one read per operand bank
  (``BODY``), then ``DRAIN_CYCLES`` (``DRAIN``) during which the last results are written
  and, in the last one, the statistics are accumulated into the database;
- LOAD / STORE: K words (``LOAD``/``STORE``), then ``DRAIN_CYCLES``; a stream that is not
  ready stretches the command by the stalled cycles (counted in PERF_STALL); a LOAD stalled
  for ``ctl.load_timeout`` consecutive cycles ends there with ``ErrorCode.LOAD_TIMEOUT``
  (:mod:`reference.isa`, "LOAD timeout");
- POLICY_UPDATE: the :class:`hw.settings.PolicyController` pass,
  ``reference.isa.policy_cycles_per_tid(cfg) * tensor_ids`` cycles;
- CLEAR_STATS: one cycle per cleared entry;
- an illegal command: nothing after ``SETUP``; STATUS.error keeps the first error code until
  the host clears it, and the following commands execute normally.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from reference.config import CoreConfig
from reference.formats import FRAC_MAX, FRAC_MIN, MAX_K, acc_width
from reference.isa import CLEAR_CYCLES_PER_TID, DRAIN_CYCLES, LOAD_TIMEOUT_BITS, SETUP_CYCLES, Ctl, ErrorCode
from reference.ops import Op

from . import regmap
from .axi_lite import COMMAND_LAYOUT, HostControlSignature
from .axi_stream import STORE_FIFO_DEPTH, store_layout
from .compute_unit import ComputeUnit, count_shape, operand_layout, result_layout
from .database import DatabaseClearSignature, DatabaseCommitSignature
from .scratchpad import ScratchpadReadSignature, ScratchpadWriteSignature, spad_addr_bits
from .settings import SettingsReadSignature, check_config, width_mux

assert SETUP_CYCLES == 2, "the sequencer's setup is IDLE (FIFO pop) + SETUP"
assert CLEAR_CYCLES_PER_TID == 1, "the sequencer clears one database entry per cycle"
# Drain: operand read (1) + ComputeUnit.LATENCY to the last result beat + 1 cycle until the
# statistics include that beat, in which the sequencer commits them to the database.
assert DRAIN_CYCLES == ComputeUnit.LATENCY + 2, "reference.isa.DRAIN_CYCLES must be ComputeUnit.LATENCY + 2"


class ComputeControlSignature(wiring.Signature):
    """The sequencer's side of the :class:`hw.compute_unit.ComputeUnit` ports it drives and reads
    (everything but the generator seed, which comes from the SEED register)."""

    def __init__(self, cfg: CoreConfig) -> None:
        cb = cfg.counter_bits
        super().__init__({
            "op": Out(4), "width": Out(2), "out_width": Out(2), "rounding": Out(2),
            "a_shift": Out(signed(9)), "b_shift": Out(signed(9)), "out_shift": Out(signed(10)),
            "f_acc": Out(signed(10)), "alpha": Out(signed(32)),
            "acc_in": Out(1), "acc_out": Out(1),
            "operands": Out(stream.Signature(operand_layout(cfg))),
            "results": In(stream.Signature(result_layout(cfg))),
            "stats_hist": In(data.ArrayLayout(unsigned(cb), cfg.hist_bins)),
            "stats_zeros": In(cb), "stats_overflow": In(cb), "stats_underflow": In(cb), "stats_total": In(cb),
            "stats_clear": Out(1),
            "busy": In(1),
        })


def _bits(code, widths):
    """Bits of a width code (8, 16, 32) as a value, among the supported ``widths``."""
    return width_mux(code, {w: w.bits for w in widths})


def _min(a, b):
    return Mux(a < b, a, b)


def _max(a, b):
    return Mux(a > b, a, b)


class Sequencer(wiring.Component):
    """Executes commands from the FIFO with the timing of :func:`reference.isa.cycles`.

    Parameters
    ----------
    cfg
        Core configuration.

    Members
    -------
    cmds : In(stream.Signature(COMMAND_LAYOUT))
        Commands from the register interface into the FIFO (depth ``CMD_FIFO_DEPTH``).
    ctl : In(HostControlSignature)
        Strobes from and status to the register interface.
    settings_rd : Out(SettingsReadSignature) x 3
        Reads of the settings of a, b and d.
    db_commit : Out(DatabaseCommitSignature)
        Statistics of a compute command into the entry of its destination tensor id.
    db_clear : Out(DatabaseClearSignature)
        CLEAR_STATS.
    policy_start : Out(1), policy_done : In(1)
        POLICY_UPDATE handshake with the policy controller.
    spad_rd : Out(ScratchpadReadSignature) x 2
        Operand reads: a (and STORE) on port 0, b on port 1.
    spad_wr : Out(ScratchpadWriteSignature)
        Result and LOAD writes.
    load : In(stream.Signature(word_bits))
        LOAD data.
    store : Out(stream.Signature(store_layout))
        STORE data; ``store_level`` is the occupancy of the buffer behind it.
    cu : Out(ComputeControlSignature)
        The compute unit.
    cmd_start : Out(1)
        High in the cycle a command leaves the FIFO (for testbenches and the cycle simulator).
    """

    def __init__(self, cfg: CoreConfig) -> None:
        self.cfg = check_config(cfg)
        super().__init__({
            "cmds": In(stream.Signature(COMMAND_LAYOUT)),
            "ctl": In(HostControlSignature()),
            "settings_rd": Out(SettingsReadSignature(cfg)).array(3),
            "db_commit": Out(DatabaseCommitSignature(cfg)),
            "db_clear": Out(DatabaseClearSignature(cfg)),
            "policy_start": Out(1),
            "policy_done": In(1),
            "spad_rd": Out(ScratchpadReadSignature(cfg)).array(2),
            "spad_wr": Out(ScratchpadWriteSignature(cfg)),
            "load": In(stream.Signature(cfg.word_bits)),
            "store": Out(stream.Signature(store_layout(cfg))),
            "store_level": In(range(STORE_FIFO_DEPTH + 1)),
            "cu": Out(ComputeControlSignature(cfg)),
            "cmd_start": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        T = cfg.tensor_ids
        total_words = cfg.spad_banks * cfg.spad_words
        ob = exact_log2(cfg.spad_words)
        lb = exact_log2(cfg.lanes)
        wb = cfg.word_bits
        S = cfg.rng_slots
        ab = spad_addr_bits(cfg)
        widths = cfg.supported_widths

        # ---- command FIFO ---------------------------------------------------------------
        m.submodules.fifo = q = fifo.SyncFIFO(width=COMMAND_LAYOUT.size, depth=regmap.CMD_FIFO_DEPTH)
        m.d.comb += [q.w_data.eq(self.cmds.payload), q.w_en.eq(self.cmds.valid), self.cmds.ready.eq(q.w_rdy),
                     self.ctl.fifo_level.eq(q.level)]

        cmd = Signal(COMMAND_LAYOUT)
        w0, w1 = cmd[0], cmd[1]
        opcode = w0[0:4]
        bcast = w0[4]
        irq = w0[5]
        acc_mode = w0[6:8]  # reference.isa.Accumulate
        alpha_frac = w0[8:16].as_signed()
        tid_d, tid_a, tid_b = w1[0:10], w1[10:20], w1[20:30]
        addr_a, addr_b, addr_d = cmd[2], cmd[3], cmd[4]
        dim_m, dim_n = cmd[5][0:16], cmd[5][16:32]
        dim_k = cmd[6]
        alpha = cmd[7].as_signed()

        # ---- setup: settings, legality, parameters (combinational from cmd) ----------------
        for port, tid in zip(self.settings_rd, (tid_a, tid_b, tid_d), strict=True):
            m.d.comb += port.addr.eq(tid)
        sa, sb, sd = (p.data.setting for p in self.settings_rd)
        va, vb, vd = (p.data.valid for p in self.settings_rd)

        is_matmul = opcode == Op.MATMUL
        has_b = Signal()
        m.d.comb += has_b.eq((opcode == Op.MATMUL) | (opcode == Op.ADD) | (opcode == Op.SUB) | (opcode == Op.MUL)
                             | (opcode == Op.AXPY) | (opcode == Op.RELU_BACKWARD))

        def role_range(addr, rows, cols, wcode, name):
            """ADDRESS_RANGE check of one operand; returns (bad, bank)."""
            log2v = Signal(range(lb + 3), name=f"log2v_{name}")
            m.d.comb += log2v.eq(lb + 2 - wcode)
            cpr = Signal(18, name=f"cpr_{name}")
            m.d.comb += cpr.eq((cols + (Const(1, 18) << log2v) - 1) >> log2v)
            words = Signal(36, name=f"words_{name}")
            m.d.comb += words.eq(rows * cpr)
            bad = Signal(name=f"range_bad_{name}")
            m.d.comb += bad.eq((addr >= total_words) | ((addr[:ob] + words) > cfg.spad_words))
            return bad, addr >> ob, cpr

        rows_a = dim_m
        cols_a = Mux(is_matmul, dim_k, dim_n)
        rows_b = Mux(is_matmul, dim_k, Mux(bcast, 1, dim_m))
        bad_a, bank_a, cpr_a = role_range(addr_a, rows_a, cols_a, sa.width, "a")
        bad_b, bank_b, cpr_b = role_range(addr_b, rows_b, dim_n, sb.width, "b")
        bad_d, bank_d, cpr_d = role_range(addr_d, dim_m, dim_n, sd.width, "d")

        ls_addr = Mux(opcode == Ctl.LOAD, addr_d, addr_a)
        lim_ok = Signal()
        m.d.comb += lim_ok.eq(width_mux(sa.width, {
            w: (alpha >= -(1 << (w.bits - 1))) & (alpha < (1 << (w.bits - 1))) if w.bits < 32 else 1
            for w in widths}))

        # W_op, F_acc and the alignment shifts of reference.ops.
        wop = Signal(2)
        m.d.comb += wop.eq(_max(_max(sa.width, sd.width), Mux(has_b, sb.width, 0)))
        # Values per beat at W_op, beats per row, and the per-operand ratios to W_op.
        log2vop = Signal(range(lb + 3))
        m.d.comb += log2vop.eq(lb + 2 - wop)
        cpr_op = Signal(17)
        m.d.comb += cpr_op.eq((dim_n + (Const(1, 17) << log2vop) - 1) >> log2vop)

        # Output beats of an accumulating MATMUL, against the accumulator memory's depth.
        acc_beats = Signal(34)
        m.d.comb += acc_beats.eq(dim_m * cpr_op)

        err = Signal(4)
        with m.If((opcode > max(Ctl)) | ((acc_mode != 0) & ~is_matmul)):
            m.d.comb += err.eq(ErrorCode.BAD_OPCODE)
        with m.Elif(opcode == Ctl.POLICY_UPDATE):
            pass
        with m.Elif(opcode == Ctl.CLEAR_STATS):
            with m.If(~bcast & (tid_d >= T)):
                m.d.comb += err.eq(ErrorCode.BAD_TENSOR_ID)
        with m.Elif((opcode == Ctl.LOAD) | (opcode == Ctl.STORE)):
            with m.If((dim_k < 1) | (ls_addr >= total_words) | ((ls_addr + dim_k) > total_words)):
                m.d.comb += err.eq(ErrorCode.ADDRESS_RANGE)
        with m.Elif(tid_a >= T):
            m.d.comb += err.eq(ErrorCode.BAD_TENSOR_ID)
        with m.Elif(~va):
            m.d.comb += err.eq(ErrorCode.BAD_SETTING)
        with m.Elif(tid_d >= T):
            m.d.comb += err.eq(ErrorCode.BAD_TENSOR_ID)
        with m.Elif(~vd):
            m.d.comb += err.eq(ErrorCode.BAD_SETTING)
        with m.Elif(has_b & (tid_b >= T)):
            m.d.comb += err.eq(ErrorCode.BAD_TENSOR_ID)
        with m.Elif(has_b & ~vb):
            m.d.comb += err.eq(ErrorCode.BAD_SETTING)
        with m.Elif((dim_m < 1) | (dim_n < 1) | (is_matmul & ((dim_k < 1) | (dim_k > MAX_K)))
                    | ((acc_mode != 0) & (acc_beats > cfg.acc_beats))):
            m.d.comb += err.eq(ErrorCode.BAD_SHAPE)
        with m.Elif((opcode != Op.CONVERT) & ((sa.width != sd.width) | (has_b & (sb.width != sd.width)))):
            m.d.comb += err.eq(ErrorCode.WIDTH_MISMATCH)
        with m.Elif(bad_a | (has_b & bad_b) | bad_d):
            m.d.comb += err.eq(ErrorCode.ADDRESS_RANGE)
        with m.Elif((bank_a == bank_d) | (has_b & ((bank_a == bank_b) | (bank_b == bank_d)))):
            m.d.comb += err.eq(ErrorCode.BANK_CONFLICT)
        with m.Elif((opcode == Op.AXPY) & (~lim_ok | (alpha_frac < FRAC_MIN) | (alpha_frac > FRAC_MAX))):
            m.d.comb += err.eq(ErrorCode.BAD_ALPHA)

        acc_bits = Signal(8)
        m.d.comb += acc_bits.eq(width_mux(wop, {w: acc_width(w) for w in widths}))
        fa, fb, fd = sa.frac, sb.frac, sd.frac
        w_a = _bits(sa.width, widths)
        w_b = _bits(sb.width, widths)
        f_acc = Signal(signed(10))
        a_shift = Signal(signed(10))
        b_shift = Signal(signed(10))
        fp = Signal(signed(10))
        m.d.comb += fp.eq(alpha_frac + fa)
        with m.Switch(opcode):
            with m.Case(Op.MATMUL, Op.MUL):
                m.d.comb += f_acc.eq(fa + fb)
            with m.Case(Op.ADD, Op.SUB):
                m.d.comb += f_acc.eq(_min(_max(fa, fb), _min(fa + acc_bits - 1 - w_a, fb + acc_bits - 1 - w_b)))
                m.d.comb += [a_shift.eq(f_acc - fa), b_shift.eq(f_acc - fb)]
            with m.Case(Op.AXPY):
                m.d.comb += f_acc.eq(_min(_max(fp, fb), _min(fp + acc_bits - 1 - 2 * w_a, fb + acc_bits - 1 - w_b)))
                m.d.comb += [a_shift.eq(f_acc - fp), b_shift.eq(f_acc - fb)]
            with m.Default():
                m.d.comb += f_acc.eq(fa)


        # ---- registered command parameters ----------------------------------------------
        p_op = Signal(4)
        p_wop = Signal(2)
        p_wa = Signal(2)
        p_wd = Signal(2)
        p_ra = Signal(2)  # log2(V_a / V_op)
        p_rd = Signal(2)  # log2(V_d / V_op)
        p_log2vop = Signal(range(lb + 3))
        p_log2va = Signal(range(lb + 3))
        p_cpr_op = Signal(17)
        p_stride_a = Signal(18)
        p_stride_b = Signal(18)
        p_stride_d = Signal(18)
        p_m = Signal(16)
        p_n = Signal(16)
        p_k = Signal(17)
        p_matmul = Signal()
        p_macs = Signal(48)
        p_values = Signal(32)
        p_irq = Signal()
        p_tid_d = Signal(10)
        p_acc = Signal(2)
        p_addr_b = Signal(ab)

        in_setup = Signal()
        m.d.comb += [self.cu.op.eq(p_op), self.cu.width.eq(p_wop), self.cu.out_width.eq(p_wd),
                     self.cu.acc_in.eq(p_acc[0]), self.cu.acc_out.eq(p_acc[1])]
        for sig, val in ((self.cu.rounding, sd.rounding), (self.cu.a_shift, a_shift), (self.cu.b_shift, b_shift),
                         (self.cu.f_acc, f_acc), (self.cu.alpha, alpha)):
            held = Signal.like(sig, name=f"p_{sig.name}")
            m.d.comb += sig.eq(held)
            with m.If(in_setup):
                m.d.sync += held.eq(val)
        out_shift = Signal(signed(10))
        with m.If(in_setup):
            m.d.sync += out_shift.eq(f_acc - fd)
        m.d.comb += self.cu.out_shift.eq(out_shift)

        # ---- state machine ----------------------------------------------------------------
        error = Signal(4)
        m.d.comb += self.ctl.error.eq(error)
        with m.If(self.ctl.clear_error):
            m.d.sync += error.eq(0)
        with m.Elif((error == 0) & self.ctl.setting_error):
            m.d.sync += error.eq(ErrorCode.BAD_SETTING)

        # loop state
        r = Signal(16)
        c = Signal(17)
        k = Signal(17)
        a_row = Signal(ab + 1)
        b_row = Signal(ab + 1)
        b_ptr = Signal(ab + 1)
        d_row = Signal(ab + 1)
        wc = Signal(17)
        n_words = Signal(32)
        drain = Signal(range(DRAIN_CYCLES + 1))
        inflight = Signal()
        finish = Signal()
        stall = Signal()
        pop = Signal()
        load_wait = Signal(LOAD_TIMEOUT_BITS)  # consecutive stalled cycles of a LOAD (timeout)

        m.d.comb += self.cmd_start.eq(pop)
        m.d.comb += self.db_commit.tid.eq(p_tid_d)

        # operand read issue (BODY)
        issue = Signal()
        idx = Signal(32)
        m.d.comb += idx.eq(c << p_log2vop)
        a_word = Signal(ab + 1)
        a_val = Signal(range(S))  # MATMUL: value index of A[m, k] in its word
        a_sel = Signal(2)  # elementwise: which 1/ratio part of the a word
        m.d.comb += [
            a_word.eq(Mux(p_matmul, a_row + (k >> p_log2va), a_row + (c >> p_ra))),
            a_val.eq(k & ((Const(1, 17) << p_log2va) - 1)),
            a_sel.eq(c & ((Const(1, 3) << p_ra) - 1)),
        ]
        count = Signal(count_shape(cfg))
        remaining = Signal(17)
        m.d.comb += remaining.eq(p_n - idx)
        m.d.comb += count.eq(Mux(remaining > (Const(1, 17) << p_log2vop), Const(1, 17) << p_log2vop, remaining))
        last_k = ~p_matmul | (k == p_k - 1)
        last_c = c == p_cpr_op - 1
        last_r = r == p_m - 1

        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.comb += q.r_en.eq(1)
                with m.If(q.r_rdy):
                    m.d.comb += pop.eq(1)
                    m.d.sync += cmd.eq(q.r_data)
                    m.next = "SETUP"
            with m.State("SETUP"):
                m.d.comb += in_setup.eq(1)
                m.d.sync += [
                    p_op.eq(opcode), p_wop.eq(wop), p_wa.eq(sa.width), p_wd.eq(sd.width),
                    p_ra.eq(wop - sa.width), p_rd.eq(wop - sd.width),
                    p_log2vop.eq(log2vop), p_log2va.eq(lb + 2 - sa.width), p_cpr_op.eq(cpr_op),
                    p_stride_a.eq(cpr_a), p_stride_b.eq(Mux(~is_matmul & bcast, 0, cpr_b)), p_stride_d.eq(cpr_d),
                    p_m.eq(dim_m), p_n.eq(dim_n), p_k.eq(dim_k), p_matmul.eq(is_matmul), p_irq.eq(irq),
                    p_tid_d.eq(tid_d), p_addr_b.eq(addr_b), p_acc.eq(Mux(is_matmul, acc_mode, 0)),
                    # an unfinished sum (accumulate OUT) is not analysed
                    p_values.eq(Mux((opcode <= max(Op)) & ~(is_matmul & acc_mode[1]), dim_m * dim_n, 0)),
                    p_macs.eq(Mux(is_matmul, dim_m * dim_n * dim_k,
                                  Mux((opcode == Op.MUL) | (opcode == Op.AXPY), dim_m * dim_n, 0))),
                    r.eq(0), c.eq(0), k.eq(0), wc.eq(0), n_words.eq(0),
                    a_row.eq(addr_a), b_row.eq(addr_b), b_ptr.eq(addr_b), d_row.eq(addr_d),
                    drain.eq(0),
                ]
                with m.If(err != 0):
                    with m.If((error == 0) & ~self.ctl.clear_error):
                        m.d.sync += error.eq(err)
                    m.d.sync += p_macs.eq(0)
                    m.d.sync += p_values.eq(0)
                    m.d.comb += finish.eq(1)
                    m.next = "IDLE"
                with m.Elif(opcode == Ctl.POLICY_UPDATE):
                    m.d.comb += self.policy_start.eq(1)
                    m.next = "POLICY"
                with m.Elif(opcode == Ctl.CLEAR_STATS):
                    m.d.sync += r.eq(Mux(bcast, 0, tid_d))
                    m.d.sync += c.eq(Mux(bcast, T - 1, 0))  # entries left after this one
                    m.next = "CLEAR"
                with m.Elif(opcode == Ctl.LOAD):
                    m.d.sync += [a_row.eq(addr_d), load_wait.eq(0)]
                    m.next = "LOAD"
                with m.Elif(opcode == Ctl.STORE):
                    m.next = "STORE"
                with m.Else():
                    m.d.comb += self.cu.stats_clear.eq(1)
                    m.next = "BODY"
            with m.State("POLICY"):
                with m.If(self.policy_done):
                    m.d.comb += finish.eq(1)
                    m.next = "IDLE"
            with m.State("CLEAR"):
                m.d.comb += [self.db_clear.tid.eq(r), self.db_clear.en.eq(1)]
                m.d.sync += [r.eq(r + 1), c.eq(c - 1)]
                with m.If(c == 0):
                    m.d.comb += finish.eq(1)
                    m.next = "IDLE"
            with m.State("LOAD"):
                m.d.comb += self.load.ready.eq(1)
                with m.If(self.load.valid):
                    m.d.comb += [self.spad_wr.addr.eq(a_row), self.spad_wr.data.eq(self.load.payload),
                                 self.spad_wr.en.eq(-1)]
                    m.d.sync += [a_row.eq(a_row + 1), n_words.eq(n_words + 1), load_wait.eq(0)]
                    with m.If(n_words == p_k - 1):
                        m.next = "DRAIN"
                with m.Else():
                    m.d.comb += stall.eq(1)
                    m.d.sync += load_wait.eq(load_wait + 1)
                    with m.If(load_wait == self.ctl.load_timeout - 1):
                        with m.If((error == 0) & ~self.ctl.clear_error):
                            m.d.sync += error.eq(ErrorCode.LOAD_TIMEOUT)
                        m.d.comb += finish.eq(1)
                        m.next = "IDLE"
            with m.State("STORE"):
                # Issue a read only if the buffer will have room for it and the one in flight.
                with m.If(self.store_level + inflight < STORE_FIFO_DEPTH):
                    m.d.comb += [self.spad_rd[0].addr.eq(a_row), self.spad_rd[0].en.eq(1)]
                    m.d.sync += [a_row.eq(a_row + 1), n_words.eq(n_words + 1)]
                    with m.If(n_words == p_k - 1):
                        m.next = "DRAIN"
                with m.Else():
                    m.d.comb += stall.eq(1)
            with m.State("BODY"):
                m.d.comb += issue.eq(1)
                m.d.sync += k.eq(k + 1)
                with m.If(p_matmul):
                    m.d.sync += b_ptr.eq(b_ptr + p_stride_b)
                with m.If(last_k):
                    m.d.sync += [k.eq(0), c.eq(c + 1), b_ptr.eq(b_row + c + 1)]
                    with m.If(last_c):
                        m.d.sync += [c.eq(0), r.eq(r + 1), a_row.eq(a_row + p_stride_a)]
                        m.d.sync += b_ptr.eq(b_row + Mux(p_matmul, 0, p_stride_b))
                        with m.If(~p_matmul):
                            m.d.sync += b_row.eq(b_row + p_stride_b)
                        with m.If(last_r):
                            m.next = "DRAIN"
            with m.State("DRAIN"):
                store_busy = (p_op == Ctl.STORE) & ((self.store_level != 0) | inflight)
                with m.If(drain < DRAIN_CYCLES - 1):
                    m.d.sync += drain.eq(drain + 1)
                with m.Elif(store_busy):
                    m.d.comb += stall.eq(1)
                with m.Else():
                    m.d.comb += finish.eq(1)
                    with m.If((p_op <= max(Op)) & ~p_acc[1]):
                        m.d.comb += self.db_commit.en.eq(1)
                    m.next = "IDLE"

        # ---- operand reads and unpacking ------------------------------------------------
        with m.If(issue):
            m.d.comb += [
                self.spad_rd[0].addr.eq(a_word), self.spad_rd[0].en.eq(1),
                self.spad_rd[1].addr.eq(Mux(p_matmul, b_ptr, b_row + c)), self.spad_rd[1].en.eq(1),
            ]
        s_valid = Signal()
        s_count = Signal(count_shape(cfg))
        s_last = Signal()
        s_a_val = Signal(range(S))
        s_a_sel = Signal(2)
        m.d.sync += [s_valid.eq(issue), s_count.eq(count), s_last.eq(last_k), s_a_val.eq(a_val), s_a_sel.eq(a_sel),
                     inflight.eq(self.spad_rd[0].en & ~issue)]

        def unpack(word, wcode, prefix):
            """Slots of a word at width ``wcode``: slot j = value j, sign-extended; others 0."""
            out = []
            for j in range(S):
                opts = {}
                for w in widths:
                    n = wb // w.bits
                    opts[w] = word[j * w.bits:(j + 1) * w.bits].as_signed() if j < n else Const(0, signed(32))
                v = Signal(signed(32), name=f"{prefix}{j}")
                m.d.comb += v.eq(width_mux(wcode, opts))
                out.append(v)
            return out

        a_raw = self.spad_rd[0].data
        quarter = Signal(2)
        m.d.comb += quarter.eq(Mux(p_ra == 0, 0, Mux(p_ra == 1, s_a_sel << 1, s_a_sel)))
        a_shifted = Signal(wb)
        with m.Switch(quarter):
            for i in range(4):
                with m.Case(i):
                    m.d.comb += a_shifted.eq(a_raw >> (i * wb // 4))
        a_slots = unpack(a_shifted, p_wa, "a_slot")
        b_slots = unpack(self.spad_rd[1].data, p_wop, "b_slot")
        a_bcast = Signal(signed(32))
        opts = {}
        for w in widths:
            n = wb // w.bits
            opts[w] = a_raw.word_select(s_a_val[:exact_log2(n)] if n > 1 else 0, w.bits).as_signed()
        m.d.comb += a_bcast.eq(width_mux(p_wa, opts))
        ops = self.cu.operands
        m.d.comb += [ops.valid.eq(s_valid), ops.payload.count.eq(s_count), ops.payload.last.eq(s_last)]
        for j in range(S):
            live = j < s_count
            m.d.comb += [
                ops.payload.a[j].eq(Mux(live, Mux(p_matmul, a_bcast, a_slots[j]), 0)),
                ops.payload.b[j].eq(Mux(live, b_slots[j], 0)),
            ]
        m.d.comb += self.cu.results.ready.eq(1)

        # STORE data: the word read in the previous cycle
        m.d.comb += [self.store.valid.eq(inflight), self.store.payload.data.eq(a_raw)]
        store_last = Signal()
        m.d.sync += store_last.eq(self.spad_rd[0].en & ~issue & (n_words == p_k - 1))
        m.d.comb += self.store.payload.last.eq(store_last)

        # ---- result packing and writes --------------------------------------------------
        res = self.cu.results
        qm = []
        for j in range(S):
            v = Signal(signed(32), name=f"q{j}")
            m.d.comb += v.eq(Mux(j < res.payload.count, res.payload.q[j], 0))
            qm.append(v)
        packed = Signal(wb)
        m.d.comb += packed.eq(width_mux(p_wd, {w: Cat(*[x[:w.bits] for x in qm[:wb // w.bits]]) for w in widths}))
        part = Signal(2)
        m.d.comb += part.eq(Mux(p_rd == 0, 0, Mux(p_rd == 1, wc[0] << 1, wc[:2])))
        nbytes = wb // 8
        base_en = Signal(nbytes)
        m.d.comb += base_en.eq(Mux(p_rd == 0, (1 << nbytes) - 1,
                                   Mux(p_rd == 1, (1 << (nbytes // 2)) - 1, (1 << (nbytes // 4)) - 1)))
        with m.If(res.valid):
            with m.Switch(part):
                for i in range(4):
                    with m.Case(i):
                        # the result beats of an unfinished sum are not written (accumulate OUT)
                        m.d.comb += [self.spad_wr.data.eq(packed << (i * wb // 4)),
                                     self.spad_wr.en.eq(Mux(p_acc[1], 0, base_en << (i * nbytes // 4)))]
            m.d.comb += self.spad_wr.addr.eq(d_row + (wc >> p_rd))
            m.d.sync += wc.eq(wc + 1)
            with m.If(wc == p_cpr_op - 1):
                m.d.sync += [wc.eq(0), d_row.eq(d_row + p_stride_d)]

        # ---- statistics commit ------------------------------------------------------------
        st = self.db_commit.stats
        m.d.comb += [st.hist.eq(self.cu.stats_hist), st.zeros.eq(self.cu.stats_zeros),
                     st.overflow.eq(self.cu.stats_overflow), st.underflow.eq(self.cu.stats_underflow),
                     st.total.eq(self.cu.stats_total)]

        # ---- status, interrupt and performance counters ----------------------------------
        in_idle = Signal()
        m.d.comb += in_idle.eq(fsm.ongoing("IDLE"))
        m.d.comb += [self.ctl.busy.eq(~in_idle | pop), self.ctl.done.eq(in_idle & ~q.r_rdy),
                     self.ctl.irq_event.eq(finish & p_irq)]
        pmax = (1 << regmap.PERF_COUNTER_BITS) - 1
        incs = (~in_idle | pop, stall, Mux(finish, p_macs, 0), Mux(finish, p_values, 0))
        for i, inc in enumerate(incs):
            cnt = Signal(regmap.PERF_COUNTER_BITS, name=f"perf{i}")
            m.d.comb += self.ctl.perf[i].eq(cnt)
            s = Signal(regmap.PERF_COUNTER_BITS + 1, name=f"perf{i}_next")
            m.d.comb += s.eq(cnt + inc)
            with m.If(self.ctl.clear_perf):
                m.d.sync += cnt.eq(0)
            with m.Else():
                m.d.sync += cnt.eq(Mux(s > pmax, pmax, s))
        return m
