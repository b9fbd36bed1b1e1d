"""SimdMacLane against Python integers: products at every width (most negative operands included),
long accumulations with clear, loads, and carries that must stop at accumulator boundaries; for the
lane of every set of supported widths (single-width lanes and the shared partial products of two),
at each width it supports."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.simd_mac import SimdMacLane
from reference.formats import Width, acc_width

W8, W16, W32 = Width
#: (supported widths, the width exercised): every width of the full lane, every width of every
#: reduced lane.
CASES = [(tuple(Width), w) for w in Width] + [
    (ws, w) for ws in [(W8,), (W16,), (W32,), (W8, W16), (W16, W32), (W8, W32)] for w in ws]


def case_id(case) -> str:
    ws, w = case
    return f"{'all' if len(ws) == 3 else '+'.join(str(x.bits) for x in ws)}-W{w.bits}"


def pack(values: list[int], w: Width) -> int:
    return sum((v & ((1 << w.bits) - 1)) << (s * w.bits) for s, v in enumerate(values))


def wrap(v: int, bits: int) -> int:
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


def rand_elems(rng: np.random.Generator, w: Width, n: int, extreme: float = 0.3) -> list[int]:
    lo, hi = -(1 << (w.bits - 1)), (1 << (w.bits - 1)) - 1
    return [int(rng.choice([lo, hi, lo + 1, -1, 0, 1])) if rng.random() < extreme
            else int(rng.integers(lo, hi, endpoint=True)) for _ in range(n)]


def sim(dut, tb):
    s = Simulator(dut)
    s.add_clock(1e-6)
    s.add_testbench(tb)
    s.run()


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_ports_follow_the_widths():
    """Sub-lanes of the narrowest width, accumulators of the widest."""
    for ws, sub, acc, prod in [(tuple(Width), 4, 80, 64), ((W8,), 4, 32, 16), ((W16,), 2, 48, 32), ((W32,), 1, 80, 64),
                               ((W8, W16), 4, 48, 32), ((W16, W32), 2, 80, 64)]:
        dut = SimdMacLane(ws)
        assert (dut.sub_lanes, dut.acc_bits, dut.product_bits) == (sub, acc, prod), ws
        assert len(dut.acc) == sub and len(dut.acc[0]) == acc and len(dut.product[0]) == prod
    del dut
    gc.collect()  # the unelaborated lanes warn when collected: here, where it is ignored


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
@pytest.mark.parametrize(("widths", "exc", "pattern"), [
    ([], ValueError, r"widths: \(\) must name each width at most once, and at least one"),
    ([W8, W8], ValueError, r"widths: \(<Width.W8: 0>, <Width.W8: 0>\) must name"),
    ([8], TypeError, r"widths: 8 is not a reference.formats.Width"),
    ("W8", TypeError, r"widths: expected an iterable of reference.formats.Width, got 'W8'"),
])
def test_rejects_bad_widths(widths, exc, pattern):
    with pytest.raises(exc, match=pattern):
        SimdMacLane(widths)
    gc.collect()


@pytest.mark.parametrize(("widths", "w"), CASES, ids=[case_id(c) for c in CASES])
def test_products_every_width(widths, w):
    seed = 40 + w
    rng = np.random.default_rng(seed)
    n = w.lanes_per_word
    lo, hi = -(1 << (w.bits - 1)), (1 << (w.bits - 1)) - 1
    vecs = [([x] * n, [y] * n) for x in (lo, hi, -1, 0, 1) for y in (lo, hi, -1, 0, 1)]
    vecs += [(rand_elems(rng, w, n), rand_elems(rng, w, n)) for _ in range(400 if len(widths) == 3 else 150)]
    dut = SimdMacLane(widths)
    bad = []

    async def tb(ctx):
        ctx.set(dut.width, w)
        for a, b in vecs:
            ctx.set(dut.a, pack(a, w))
            ctx.set(dut.b, pack(b, w))
            got = [ctx.get(dut.product[s]) for s in range(dut.sub_lanes)]
            want = [x * y for x, y in zip(a, b, strict=True)] + [0] * (dut.sub_lanes - n)
            if got != want:
                bad.append((a, b, got, want))

    sim(dut, tb)
    assert not bad, f"seed {seed}: {len(bad)} mismatches, first {bad[0]}"


@pytest.mark.parametrize(("widths", "w"), CASES, ids=[case_id(c) for c in CASES])
def test_accumulate_long_k_with_clear(widths, w):
    """Groups of K steps (K up to 300), a clear starting each group, idle cycles in between;
    the accumulator is compared with Python ints after every step."""
    seed = 50 + w
    rng = np.random.default_rng(seed)
    n = w.lanes_per_word
    lo = -(1 << (w.bits - 1))
    groups = []
    # most negative squared, accumulated: the largest positive sum; then min * max: the largest negative
    # (300 * 2**(2W - 2) > 2**(2W): the sums outgrow a product, so carries cross chunk boundaries)
    groups.append([([lo] * n, [lo] * n)] * 300)
    groups.append([([lo] * n, [-lo - 1] * n)] * 300)
    for _ in range(4):
        k = int(rng.integers(1, 60))
        groups.append([(rand_elems(rng, w, n), rand_elems(rng, w, n)) for _ in range(k)])
    dut = SimdMacLane(widths)
    bad = []

    async def tb(ctx):
        ctx.set(dut.width, w)
        for g in groups:
            ref = [0] * n
            for step, (a, b) in enumerate(g):
                ctx.set(dut.en, 1)
                ctx.set(dut.clear, step == 0)
                ctx.set(dut.a, pack(a, w))
                ctx.set(dut.b, pack(b, w))
                ref = [r + x * y for r, x, y in zip(ref, a, b, strict=True)]
                await ctx.tick()
                got = [ctx.get(dut.acc[s]) for s in range(n)]
                if got != ref:
                    bad.append((step, got, ref))
            ctx.set(dut.en, 0)
            await ctx.tick()
            if [ctx.get(dut.acc[s]) for s in range(n)] != ref:  # en low: held
                bad.append(("hold", ref))

    sim(dut, tb)
    assert not bad, f"seed {seed}: {len(bad)} mismatches, first {bad[0]}"


@pytest.mark.parametrize(("widths", "w"), CASES, ids=[case_id(c) for c in CASES])
def test_load_and_carries_stop_at_boundaries(widths, w):
    """Accumulators loaded at -1, 0, the extremes; adding products whose carries would leak into the
    neighbour if a boundary were not cut. Sums that leave acc_width(W) wrap within the accumulator."""
    n = w.lanes_per_word
    bits = acc_width(w)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    starts = [[-1] * n, [hi] * n, [lo] * n, [(-1, 0, hi, lo)[s % 4] for s in range(n)]]
    elo = -(1 << (w.bits - 1))
    steps = [[1] * n, [elo] * n, [-1] * n, [-elo - 1] * n]
    dut = SimdMacLane(widths)
    bad = []

    async def tb(ctx):
        ctx.set(dut.width, w)
        for start in starts:
            ctx.set(dut.en, 1)
            ctx.set(dut.load, 1)
            ctx.set(dut.load_value, start + [12345] * (dut.sub_lanes - n))
            await ctx.tick()
            if [ctx.get(dut.acc[s]) for s in range(n)] != start:
                bad.append(("load", start))
            ctx.set(dut.load, 0)
            ref = list(start)
            for a in steps:
                ctx.set(dut.a, pack(a, w))
                ctx.set(dut.b, pack([1] * n, w))
                await ctx.tick()
                ref = [wrap(r + x, bits) for r, x in zip(ref, a, strict=True)]
                got = [ctx.get(dut.acc[s]) for s in range(n)]
                if got != ref:
                    bad.append((start, a, got, ref))

    sim(dut, tb)
    assert not bad, f"{len(bad)} mismatches, first {bad[0]}"


@pytest.mark.slow
def test_max_k_most_negative_w8():
    """K = MAX_K steps of (-128) * (-128): the 32-bit accumulators reach exactly 2**30."""
    from reference.formats import MAX_K

    w = Width.W8
    dut = SimdMacLane()
    out = {}

    async def tb(ctx):
        ctx.set(dut.width, w)
        ctx.set(dut.en, 1)
        ctx.set(dut.a, pack([-128] * 4, w))
        ctx.set(dut.b, pack([-128] * 4, w))
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        for _ in range(MAX_K - 1):
            await ctx.tick()
        out["acc"] = [ctx.get(dut.acc[s]) for s in range(4)]

    sim(dut, tb)
    assert out["acc"] == [MAX_K * 128 * 128] * 4
