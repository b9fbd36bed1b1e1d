"""A cycle-level Python model of the ComputeUnit contract, for testing the sequencer alone.

It drives the ``cu`` port of :class:`hw.sequencer.Sequencer` from an Amaranth testbench
process: each operand beat is computed with :mod:`reference.formats`/:mod:`reference.stats`
(exact integers), and its result beat appears ``latency`` cycles after the operand beat with
``last``; the statistics outputs include a result beat from the cycle after it. This is a test
double of the interface, not of the datapath: the real ComputeUnit is tested against
:mod:`reference` by its own tests and in the core tests.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from reference.config import CoreConfig
from reference.formats import DfpFormat, RoundingMode, Width, acc_width, requantize_left, round_shift, saturate
from reference.ops import Op
from reference.rng import seed_states, xorshift32
from reference.stats import OpStats, analyse


def _wrap(x: int, bits: int) -> int:
    half = 1 << (bits - 1)
    return ((x + half) & ((1 << bits) - 1)) - half


def _align(x: int, s: int) -> int:
    return x << s if s >= 0 else x >> -s


class ComputeUnitModel:
    def __init__(self, cfg: CoreConfig, port, latency: int = 2, seed: int = 0) -> None:
        self.cfg, self.port, self.latency = cfg, port, latency
        self.rng = seed_states(seed, cfg.rng_slots)
        self.stats = OpStats.empty(cfg)
        self.acc: list[int] | None = None
        self.beats_seen = 0
        self.acc_mem: dict[int, list[int]] = {}  # beat index -> S full-width values
        self.beat_index = 0

    def _add_stats(self, s: OpStats) -> None:
        cmax = self.cfg.counter_max
        t = self.stats
        self.stats = OpStats(np.minimum(t.hist + s.hist, cmax), min(t.zeros + s.zeros, cmax),
                             min(t.overflow + s.overflow, cmax), min(t.underflow + s.underflow, cmax),
                             min(t.total + s.total, cmax))

    async def run(self, ctx) -> None:
        p, cfg = self.port, self.cfg
        pending: deque = deque()
        cycle = 0
        S = cfg.rng_slots
        while True:
            ctx.set(p.results.valid, 0)
            if pending and pending[0][0] == cycle:
                _, q, count, st = pending.popleft()
                ctx.set(p.results.valid, 1)
                ctx.set(p.results.payload.q, q)
                ctx.set(p.results.payload.count, count)
                self._add_stats(st)  # visible from the next cycle
            ctx.set(p.busy, int(bool(pending) or self.acc is not None))
            ctx.set(p.operands.ready, 1)
            if ctx.get(p.stats_clear):
                self.stats = OpStats.empty(cfg)
                self.beat_index = 0
            if ctx.get(p.operands.valid):
                self.beats_seen += 1
                pl = ctx.get(p.operands.payload)
                count = int(pl.count)
                a = [int(x) for x in pl.a][:count]
                b = [int(x) for x in pl.b][:count]
                op = Op(ctx.get(p.op))
                ash, bsh = ctx.get(p.a_shift), ctx.get(p.b_shift)
                if op == Op.MATMUL:
                    # all S slots, as the hardware keeps them (slots past count multiply zeros)
                    a_s, b_s = a + [0] * (S - count), b + [0] * (S - count)
                    if self.acc is None:
                        start = self.acc_mem.get(self.beat_index, [0] * S) if ctx.get(p.acc_in) else [0] * S
                        self.acc = list(start)
                    bits = acc_width(Width(ctx.get(p.width)))
                    self.acc = [_wrap(x + y * z, bits) for x, y, z in zip(self.acc, a_s, b_s, strict=True)]
                    acc = self.acc[:count]
                elif op in (Op.ADD, Op.SUB):
                    sg = 1 if op == Op.ADD else -1
                    acc = [_align(x, ash) + sg * _align(y, bsh) for x, y in zip(a, b, strict=True)]
                elif op == Op.MUL:
                    acc = [x * y for x, y in zip(a, b, strict=True)]
                elif op == Op.AXPY:
                    al = ctx.get(p.alpha)
                    acc = [_align(al * x, ash) + _align(y, bsh) for x, y in zip(a, b, strict=True)]
                elif op == Op.RELU:
                    acc = [max(x, 0) for x in a]
                elif op == Op.RELU_BACKWARD:
                    acc = [x if y > 0 else 0 for x, y in zip(a, b, strict=True)]
                else:
                    acc = a
                if pl.last:
                    if op == Op.MATMUL and ctx.get(p.acc_out):  # kept unfinished: no conversion, no statistics
                        self.acc_mem[self.beat_index] = self.acc
                        q, st = [0] * count, OpStats.empty(cfg)
                    else:
                        q, st = self._convert(ctx, acc)
                    self.acc = None
                    self.beat_index += 1
                    pending.append((cycle + self.latency, q + [0] * (S - count), count, st))
            h = self.stats
            await ctx.tick()
            cycle += 1
            ctx.set(p.stats_hist, [int(v) for v in h.hist])
            ctx.set(p.stats_zeros, h.zeros)
            ctx.set(p.stats_overflow, h.overflow)
            ctx.set(p.stats_underflow, h.underflow)
            ctx.set(p.stats_total, h.total)

    def _convert(self, ctx, acc: list[int]):
        p, cfg = self.port, self.cfg
        w = Width(ctx.get(p.width))
        fmt = DfpFormat(Width(ctx.get(p.out_width)), 0)
        mode = RoundingMode(ctx.get(p.rounding))
        shift = ctx.get(p.out_shift)
        abits = acc_width(w)
        x = np.array(acc, dtype=object)
        if shift > 0:
            u16 = None
            if mode == RoundingMode.STOCHASTIC:
                self.rng = xorshift32(self.rng)
                u16 = (self.rng[: len(acc)] >> np.uint32(16)).astype(np.int64)
            q, over = saturate(round_shift(x, shift, mode, abits, u16), fmt)
        else:
            q, over = requantize_left(x, -shift, fmt)
        st = analyse(x, ctx.get(p.f_acc), q, over, cfg)
        return [int(v) for v in q], st
