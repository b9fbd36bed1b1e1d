"""Command-level scoreboard model of a whole DLU core, built only from :mod:`reference`.

The model holds what a host can observe: the scratchpad (words of ``lanes * 32`` bits, with a
mask of the bits whose value the specification defines), the settings register, the
distribution database, the stochastic-rounding generators, the policy threshold, the
performance counters and ``STATUS.error``. Each command is checked with
:func:`reference.isa.check_command` (an illegal one records its code, if none is pending, and
changes nothing else), executed with :mod:`reference.ops` exactly as
:meth:`reference.engine.Engine.run` does, and timed with :func:`reference.isa.cycles`.

Accumulator memory (:class:`reference.isa.Accumulate`): one entry per output beat index, holding
the beat's ``V`` full-width values (slots past ``N`` included, as the hardware keeps them: a
start stores 0 there, a continuation keeps them), wrapped to ``acc_width(W_op)`` bits.

Scratchpad layout (:mod:`reference.isa`): value ``j`` of a word at bits ``[j*W, (j+1)*W)``,
each row of a tensor starting on a new word. The slots of a result's last word beyond its
``cols`` are not specified: the model marks them unknown, and comparisons mask them out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from reference import ops
from reference.config import CoreConfig
from reference.formats import DfpFormat, DfpTensor, TensorSetting, acc_width
from reference.isa import (
    LOAD_TIMEOUT_DEFAULT,
    SETUP_CYCLES,
    Accumulate,
    Command,
    Ctl,
    ErrorCode,
    IllegalCommand,
    check_command,
    cycles,
    decode_setting,
    macs,
    operand_shapes,
    timed_out_load_cycles,
)
from reference.ops import Op
from reference.rng import seed_states
from reference.stats import DEFAULT_POLICY_WORD, Database, OpStats, PolicyParams, next_frac


@dataclass
class Outcome:
    """What one command did, for the scoreboard and the coverage model."""

    cmd: Command
    error: ErrorCode = ErrorCode.NONE
    cycles: int = 0
    stats: OpStats | None = None
    shift: int = 0
    acc_bits: int = 0
    out_fmt: DfpFormat | None = None
    rounding: int = 0
    store_words: list[int] | None = None
    store_masks: list[int] | None = None


class CoreModel:
    def __init__(self, cfg: CoreConfig, seed: int = 0) -> None:
        self.cfg = cfg
        self.total_words = cfg.spad_banks * cfg.spad_words
        self.word_mask = (1 << cfg.word_bits) - 1
        self.mem = [0] * self.total_words
        self.known = [0] * self.total_words  # bits of each word the specification defines
        self.settings: dict[int, TensorSetting] = {}
        self.db = Database(cfg)
        self.threshold = DEFAULT_POLICY_WORD
        self.reseed(seed)
        self.error = ErrorCode.NONE
        self.perf_busy = 0
        self.perf_macs = 0
        self.perf_values = 0
        self.load_timeout = LOAD_TIMEOUT_DEFAULT  # the LOAD_TIMEOUT register
        #: accumulator memory: beat index -> (accumulator bits, V full-width values)
        self.acc_mem: dict[int, tuple[int, list[int]]] = {}

    # -- registers --------------------------------------------------------------------------
    def reseed(self, seed: int) -> None:
        self.seed = seed
        self.rng = seed_states(seed, self.cfg.rng_slots)

    def write_setting(self, tid: int, word: int) -> bool:
        """Host write of a settings entry; returns False (and records BAD_SETTING) if illegal."""
        try:
            s = decode_setting(word, self.cfg)
        except IllegalCommand as exc:
            self._fail(exc.code)
            return False
        self.settings[tid] = s
        return True

    def clear_error(self) -> None:
        self.error = ErrorCode.NONE

    def _fail(self, code: ErrorCode) -> None:
        if self.error == ErrorCode.NONE:
            self.error = code

    # -- scratchpad -----------------------------------------------------------------------
    def read_tensor(self, addr: int, rows: int, cols: int, fmt: DfpFormat) -> DfpTensor:
        v = self.cfg.values_per_beat(fmt.width)
        wpr = -(-cols // v)
        bits, m = fmt.bits, (1 << fmt.bits) - 1
        out = np.zeros((rows, cols), dtype=np.int64)
        for r in range(rows):
            for c in range(cols):
                w = self.mem[addr + r * wpr + c // v]
                x = (w >> ((c % v) * bits)) & m
                out[r, c] = x - (1 << bits) if x >> (bits - 1) else x
        return DfpTensor(out, fmt)

    def write_tensor(self, addr: int, t: DfpTensor) -> None:
        v = self.cfg.values_per_beat(t.fmt.width)
        rows, cols = t.shape
        wpr = -(-cols // v)
        bits, m = t.fmt.bits, (1 << t.fmt.bits) - 1
        for r in range(rows):
            for wi in range(wpr):
                word = known = 0
                for j in range(v):
                    c = wi * v + j
                    if c < cols:
                        word |= (int(t.data[r, c]) & m) << (j * bits)
                        known |= m << (j * bits)
                self.mem[addr + r * wpr + wi] = word
                self.known[addr + r * wpr + wi] = known

    @staticmethod
    def pack_rows(t: DfpTensor, cfg: CoreConfig) -> list[int]:
        """The scratchpad words of a tensor (what a LOAD of it sends), padding slots zero."""
        m = CoreModel(cfg)
        m.write_tensor(0, t)
        return m.mem[: t.shape[0] * -(-t.shape[1] // cfg.values_per_beat(t.fmt.width))]

    # -- commands ---------------------------------------------------------------------------
    def execute(self, cmd: Command, load_words: list[int] | None = None) -> Outcome:
        out = Outcome(cmd)
        try:
            check_command(cmd, self.settings, self.cfg)
        except IllegalCommand as exc:
            self._fail(exc.code)
            out.error = exc.code
            out.cycles = SETUP_CYCLES  # reference.isa.cycles: an illegal command takes SETUP_CYCLES
            self.perf_busy += out.cycles
            return out
        out.cycles = cycles(cmd, self.settings, self.cfg)
        self.perf_busy += out.cycles
        op = cmd.opcode
        if op == Ctl.POLICY_UPDATE:
            for tid in sorted(self.settings):
                s = self.settings[tid]
                if not s.auto or tid not in self.db.entries:
                    continue
                p = PolicyParams.decode(self.threshold)
                f = next_frac(self.db.entries[tid], s.fmt.width, s.fmt.frac, self.cfg, p.threshold, p.headroom,
                              p.rise)
                self.settings[tid] = replace(s, fmt=DfpFormat(s.fmt.width, f))
                self.db.clear(tid)
        elif op == Ctl.CLEAR_STATS:
            self.db.clear(None if cmd.broadcast_b else cmd.tid_d)
        elif op == Ctl.LOAD:
            # Fewer than K words: the stream ran dry and the LOAD timed out (reference.isa).
            assert load_words is not None and len(load_words) <= cmd.k
            for i, w in enumerate(load_words):
                self.mem[cmd.addr_d + i] = w & self.word_mask
                self.known[cmd.addr_d + i] = self.word_mask
            if len(load_words) < cmd.k:
                self.perf_busy += timed_out_load_cycles(len(load_words)) - out.cycles
                out.cycles = timed_out_load_cycles(len(load_words))
                self._fail(ErrorCode.LOAD_TIMEOUT)
                out.error = ErrorCode.LOAD_TIMEOUT
        elif op == Ctl.STORE:
            out.store_words = self.mem[cmd.addr_a: cmd.addr_a + cmd.k]
            out.store_masks = self.known[cmd.addr_a: cmd.addr_a + cmd.k]
        else:
            self._compute(cmd, out)
        self.perf_macs += macs(cmd)
        return out

    def _compute(self, cmd: Command, out: Outcome) -> None:
        shapes = operand_shapes(cmd)
        sd = self.settings[cmd.tid_d]
        fmt, rnd, cfg = sd.fmt, sd.rounding, self.cfg
        a = self.read_tensor(cmd.addr_a, *shapes["a"], self.settings[cmd.tid_a].fmt)
        b = self.read_tensor(cmd.addr_b, *shapes["b"], self.settings[cmd.tid_b].fmt) if "b" in shapes else None
        op = Op(cmd.opcode)
        if op == Op.MATMUL and cmd.accumulate:
            f_acc = a.fmt.frac + b.fmt.frac
            res = self._accumulate(cmd, a, b, fmt, f_acc)
            if res is None:
                return
        elif op == Op.MATMUL:
            res = ops.matmul(a, b, fmt, rnd, cfg, self.rng)
            f_acc = a.fmt.frac + b.fmt.frac
        elif op in (Op.ADD, Op.SUB):
            res = (ops.add if op == Op.ADD else ops.sub)(a, b, fmt, rnd, cfg, self.rng)
            _, f_acc = ops.align_terms([(a.data, a.fmt), (b.data, b.fmt)], acc_width(fmt.width))
        elif op == Op.MUL:
            res = ops.mul(a, b, fmt, rnd, cfg, self.rng)
            f_acc = a.fmt.frac + b.fmt.frac
        elif op == Op.AXPY:
            res = ops.axpy(cmd.alpha, cmd.alpha_frac, a, b, fmt, rnd, cfg, self.rng)
            w = fmt.width
            _, f_acc = ops.align_terms([(a.data, (cmd.alpha_frac + a.fmt.frac, 2 * w.bits)), (b.data, b.fmt)],
                                       acc_width(w))
        elif op == Op.RELU:
            res = ops.relu(a, fmt, rnd, cfg, self.rng)
            f_acc = a.fmt.frac
        elif op == Op.RELU_BACKWARD:
            res = ops.relu_backward(a, b, fmt, rnd, cfg, self.rng)
            f_acc = a.fmt.frac
        else:
            res = ops.convert(a, fmt, rnd, cfg, self.rng)
            f_acc = a.fmt.frac
        self.rng = np.asarray(res.rng, dtype=np.uint32).copy()
        self.db.accumulate(cmd.tid_d, res.stats)
        self.perf_values += res.stats.total
        self.write_tensor(cmd.addr_d, res.out)
        w_op = max(self.settings[t].fmt.width for t in
                   [cmd.tid_a, cmd.tid_d] + ([cmd.tid_b] if "b" in shapes else []))
        out.stats, out.out_fmt, out.rounding = res.stats, fmt, int(rnd)
        out.shift, out.acc_bits = f_acc - fmt.frac, acc_width(w_op)

    def _accumulate(self, cmd: Command, a: DfpTensor, b: DfpTensor, fmt: DfpFormat, f_acc: int):
        """An accumulating MATMUL on the beat-indexed accumulator memory; the OpResult if it finishes."""
        mode = Accumulate(cmd.accumulate)
        w = max(a.fmt.width, b.fmt.width, fmt.width)
        bits, v = acc_width(w), self.cfg.values_per_beat(w)
        cpr = -(-cmd.n // v)
        p = ops.matmul_sum(a, b, fmt)  # the exact product, wrapped (it cannot wrap for one command)
        total = np.zeros((cmd.m, cpr * v), dtype=object)
        total[:, :cmd.n] = p
        for r in range(cmd.m):
            for c in range(cpr):
                beat = r * cpr + c
                vals = total[r, c * v:(c + 1) * v]
                if mode.acc_in:
                    old_bits, old = self.acc_mem[beat]
                    assert old_bits == bits, "the model reads a sum at the width it was stored"
                    vals = vals + np.array(old, dtype=object)
                total[r, c * v:(c + 1) * v] = ops.wrap_acc(vals, bits)
                if mode.acc_out:
                    self.acc_mem[beat] = (bits, [int(x) for x in total[r, c * v:(c + 1) * v]])
        if mode.acc_out:
            return None
        sd = self.settings[cmd.tid_d]
        return ops.convert_acc(total[:, :cmd.n], f_acc, bits, fmt, sd.rounding, self.cfg, self.rng, w)
