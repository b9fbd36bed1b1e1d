"""Requantizer against reference.formats: round_shift + saturate (shift > 0) and requantize_left
(shift <= 0), every rounding mode and output width, exact ties, most negative values, shift edges."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.requantizer import Requantizer
from reference.formats import DfpFormat, RoundingMode, Width, acc_width, requantize_left, round_shift, saturate


def golden(acc: int, shift: int, mode: RoundingMode, out_w: Width, n: int, u16: int) -> tuple[int, bool, bool]:
    fmt = DfpFormat(out_w, 0)
    x = np.array([acc], dtype=object)
    if shift > 0:
        q, over = saturate(round_shift(x, shift, mode, n, np.array([u16])), fmt)
    else:
        q, over = requantize_left(x, -shift, fmt)
    return int(q[0]), bool(over[0]), acc != 0 and int(q[0]) == 0


def vectors(n: int, seed: int, count: int) -> list[tuple[int, int, RoundingMode, Width, int]]:
    """Corner and random (acc, shift, mode, out_width, u16) for an n-bit accumulator."""
    rng = np.random.default_rng(seed)
    lo, hi = -(1 << (n - 1)), (1 << (n - 1)) - 1
    shifts = sorted({-512, -100, -33, -32, -31, -24, -8, -7, -1, 0, 1, 2, 3, 7, 8, 15, 16, 17, 31, 32,
                     n - 2, n - 1, n, n + 1, n + 15, n + 16, n + 17, n + 40, 200, 511})
    out = []
    for _ in range(count):
        shift = int(rng.choice(shifts)) if rng.random() < 0.6 else int(rng.integers(-40, n + 20))
        kind = rng.integers(0, 6)
        if kind == 0:
            acc = int(rng.choice([0, 1, -1, 2, -2, lo, hi, lo + 1, hi - 1]))
        elif kind == 1 and shift > 0:
            # exact tie and its neighbours: k * 2**s + 2**(s-1) + d
            s = min(shift, n - 2)
            span = 1 << max(0, n - 2 - s)
            k = int.from_bytes(rng.bytes(16), "little") % (2 * span) - span
            acc = max(lo, min(hi, k * (1 << s) + (1 << (s - 1)) + int(rng.integers(-1, 2))))
        elif kind == 2:
            # values near a format boundary after the shift
            w = int(rng.choice([8, 16, 32]))
            base = (1 << (w - 1)) * (1 << shift) if shift >= 0 else (1 << (w - 1)) >> -shift
            acc = max(lo, min(hi, int(rng.choice([1, -1])) * base + int(rng.integers(-3, 4))))
        else:
            bits = int(rng.integers(1, n + 1))
            acc = int.from_bytes(rng.bytes(16), "little") % (1 << bits) - (1 << (bits - 1))
        mode = RoundingMode(int(rng.integers(0, 3)))
        out_w = Width(int(rng.integers(0, 3)))
        u16 = int(rng.choice([0, 1, 0x7FFF, 0x8000, 0xFFFF])) if rng.random() < 0.3 else int(rng.integers(0, 1 << 16))
        out.append((acc, shift, mode, out_w, u16))
    return out


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_rejects_bad_acc_bits():
    with pytest.raises(TypeError, match="acc_bits: expected an integer, got 80.0"):
        Requantizer(80.0)
    with pytest.raises(ValueError, match="acc_bits: need at least 2 bits, got 1"):
        Requantizer(1)
    gc.collect()  # the half-built components warn when collected: here, where it is ignored


@pytest.mark.parametrize("n,seed", [(acc_width(w), 100 + i) for i, w in enumerate(Width)] + [(80, 7)])
def test_matches_round_shift_and_saturate(n, seed):
    dut = Requantizer(n)
    vecs = vectors(n, seed, 1500)
    # every (mode, out_width) pair at an exact tie with an odd and an even quotient
    for mode in RoundingMode:
        for out_w in Width:
            for acc in (5 << 3, 7 << 3, -(5 << 3), -(7 << 3), -(1 << (n - 1)), (1 << (n - 1)) - 1):
                vecs.append((acc, 4, mode, out_w, 0x8000))
    bad = []

    async def tb(ctx):
        for acc, shift, mode, out_w, u16 in vecs:
            ctx.set(dut.acc, acc)
            ctx.set(dut.shift, shift)
            ctx.set(dut.rounding, mode)
            ctx.set(dut.out_width, out_w)
            ctx.set(dut.u16, u16)
            got = (ctx.get(dut.q), bool(ctx.get(dut.overflow)), bool(ctx.get(dut.underflow)))
            want = golden(acc, shift, mode, out_w, n, u16)
            if got != want:
                bad.append(((acc, shift, mode.name, out_w.name, u16), got, want))

    sim = Simulator(dut)
    sim.add_testbench(tb)
    sim.run()
    assert not bad, f"{len(bad)} mismatches (seed {seed}), first: {bad[:3]}"


def test_vectors_reach_every_outcome():
    """The sweep is not vacuous: it rounds up and down, saturates both ways and underflows."""
    outcomes = set()
    for acc, shift, mode, out_w, u16 in vectors(80, 7, 1500):
        q, over, under = golden(acc, shift, mode, out_w, 80, u16)
        floor_q = acc >> shift if shift > 0 else acc << -shift
        outcomes.add(("over", over and q > 0))
        outcomes.add(("under", under))
        outcomes.add(("up", not over and q != floor_q and shift > 0))
    assert {("over", True), ("under", True), ("up", True)} <= outcomes


@pytest.mark.slow
def test_exhaustive_small_accumulator():
    """Every 7-bit accumulator value x shifts -10..30 x every mode and output width (u16 at the
    stochastic edges and one random word per vector, seed 9).

    The twin is called with acc_bits = 32 (the values are valid 32-bit accumulators): its sticky
    pre-shift to acc_bits is exact only when acc_bits >= 17 (see round_shift), true of every core
    accumulator, while the hardware computes the exact quotient for any N.
    """
    n = 7
    rng = np.random.default_rng(9)
    dut = Requantizer(n)
    bad = []

    async def tb(ctx):
        for mode in RoundingMode:
            ctx.set(dut.rounding, mode)
            for out_w in Width:
                ctx.set(dut.out_width, out_w)
                for shift in range(-10, 31):
                    ctx.set(dut.shift, shift)
                    words = (0, 0x8000, 0xFFFF, int(rng.integers(0, 1 << 16))) \
                        if mode == RoundingMode.STOCHASTIC else (0,)
                    for acc in range(-(1 << (n - 1)), 1 << (n - 1)):
                        ctx.set(dut.acc, acc)
                        for u16 in words:
                            ctx.set(dut.u16, u16)
                            got = (ctx.get(dut.q), bool(ctx.get(dut.overflow)), bool(ctx.get(dut.underflow)))
                            want = golden(acc, shift, mode, out_w, acc_width(Width.W8), u16)
                            if got != want:
                                bad.append(((acc, shift, mode.name, out_w.name, u16), got, want))

    sim = Simulator(dut)
    sim.add_testbench(tb)
    sim.run()
    assert not bad, f"{len(bad)} mismatches, first: {bad[:3]}"


@pytest.mark.parametrize("n", sorted({acc_width(w) for w in Width}))
def test_saturation_edges_with_and_without_rounding_up(n):
    """Floor quotients at hi - 1, hi, hi + 1 and lo - 2, lo - 1, lo, lo + 1 of every output width,
    each with a remainder that rounds up in every mode that can (a tie above an odd quotient, a
    remainder over the half, u16 that carries) and none: the clamp decided beside the rounding
    adder must agree with round-then-saturate exactly at its edges."""
    dut = Requantizer(n)
    shift = 4
    vecs = []
    for out_w in Width:
        hi, lo = (1 << (out_w.bits - 1)) - 1, -(1 << (out_w.bits - 1))
        for fq in (hi - 1, hi, hi + 1, lo - 2, lo - 1, lo, lo + 1):
            for rem in (0, 1, 8, 9, 15):  # remainder of acc / 2**4: none, low, tie, over half, max
                acc = (fq << shift) + rem
                if not -(1 << (n - 1)) <= acc < (1 << (n - 1)):
                    continue
                for mode in RoundingMode:
                    for u16 in (0, 0x8000, 0xFFFF):
                        vecs.append((acc, shift, mode, out_w, u16))
    bad = []

    async def tb(ctx):
        for acc, sh, mode, out_w, u16 in vecs:
            for port, value in ((dut.acc, acc), (dut.shift, sh), (dut.rounding, mode), (dut.out_width, out_w),
                                (dut.u16, u16)):
                ctx.set(port, value)
            got = (ctx.get(dut.q), bool(ctx.get(dut.overflow)), bool(ctx.get(dut.underflow)))
            want = golden(acc, sh, mode, out_w, n, u16)
            if got != want:
                bad.append(((acc, sh, mode.name, out_w.name, u16), got, want))

    sim = Simulator(dut)
    sim.add_testbench(tb)
    sim.run()
    assert len(vecs) > 500 and not bad, f"{len(bad)} of {len(vecs)} mismatch, first: {bad[:3]}"
