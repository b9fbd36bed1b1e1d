"""Requantizer (``hw.requantizer.Requantizer``) at block level: combinational, one value per vector.

Netlist configs: the three accumulator widths ``acc_width(W)`` = 32, 48 and 80 bits (the core
instantiates the 80-bit one per slot). Runtime choices per vector: rounding mode, output width
(every width at every ``acc_bits``), shift over the whole ``signed(10)`` port range with extra weight on 0, +-1,
15..17 (the stochastic window), ``acc_bits`` +- 1 and beyond (the sticky pre-shift), and the
accumulator drawn from extremes (most negative, most positive, 0, +-1), exact ties (``k *
2**shift + 2**(shift-1)``), values at the output range's edges after scaling, and uniform bits.

Golden twin: ``reference.formats.round_shift`` + ``saturate`` for ``shift > 0`` and
``requantize_left`` for ``shift <= 0`` (as ``reference.ops.convert_acc`` does); ``underflow`` as
``reference.stats.analyse`` counts it (``acc != 0 and q == 0``). Every vector is compared
exactly (q, overflow, underflow).
"""

from __future__ import annotations

import cocotb
import numpy as np
import pytest
from cocotb.triggers import Timer

from testbenches.cocotb import tbutil

ACC_BITS = [32, 48, 80]


def golden(acc: int, shift: int, rounding, width, acc_bits: int, u16: int) -> tuple[int, bool, bool]:
    from reference.formats import DfpFormat, requantize_left, round_shift, saturate

    fmt = DfpFormat(width, 0)
    a = np.array([acc], dtype=object) if acc_bits > 62 else np.array([acc], dtype=np.int64)
    if shift > 0:
        q, over = saturate(round_shift(a, shift, rounding, acc_bits, np.array([u16])), fmt)
    else:
        q, over = requantize_left(a, -shift, fmt)
    q0 = int(q[0])
    return q0, bool(over[0]), acc != 0 and q0 == 0


def random_vector(rng, acc_bits: int):
    from reference.formats import RoundingMode, Width

    width = rng.choice(list(Width))  # the core uses 80-bit instances for every width; any pair is legal
    rounding = rng.choice(list(RoundingMode))
    lo, hi = -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1
    shift = rng.choice([0, 1, -1, 15, 16, 17, acc_bits - 1, acc_bits, acc_bits + 1, acc_bits + 16, acc_bits + 17,
                        rng.randint(1, acc_bits), rng.randint(-40, 0), rng.randint(-512, 511), 511, -512])
    kind = rng.random()
    if kind < 0.15:
        acc = rng.choice([lo, hi, 0, 1, -1, lo + 1, hi - 1])
    elif kind < 0.35 and 0 < shift < acc_bits - 1:  # an exact tie, or one LSB off it
        k = rng.randint(lo >> shift, (hi >> shift) - 1)
        acc = k * (1 << shift) + (1 << (shift - 1)) + rng.choice([0, 0, 1, -1])
    elif kind < 0.5:  # near the saturation edges of the output after scaling
        edge = rng.choice([(1 << (width.bits - 1)) - 1, -(1 << (width.bits - 1))])
        acc = (edge << shift) if shift > 0 else edge >> min(-shift, 63)
        acc += rng.randint(-3, 3) << max(shift - 1, 0)
    elif kind < 0.7:
        acc = rng.randint(-(1 << rng.randint(1, 20)), 1 << rng.randint(1, 20))
    else:
        acc = rng.randint(lo, hi)
    acc = max(lo, min(hi, acc))
    u16 = rng.choice([0, 0xFFFF, 0x8000, rng.getrandbits(16)])
    return acc, shift, rounding, width, u16


@cocotb.test(timeout_time=500_000_000, timeout_unit="ns")
async def requantizer_matches_reference(dut):
    rng, _ = tbutil.test_rng("requantizer_matches_reference", dut._log)
    acc_bits = len(dut.acc)
    n = tbutil.iterations(3000)
    flows = {}
    for i in range(n):
        acc, shift, rounding, width, u16 = random_vector(rng, acc_bits)
        dut.acc.value = acc
        dut.shift.value = shift
        dut.rounding.value = int(rounding)
        dut.out_width.value = int(width)
        dut.u16.value = u16
        await Timer(1, unit="ns")
        q = dut.q.value.to_signed()
        over, under = int(dut.overflow.value), int(dut.underflow.value)
        eq, eover, eunder = golden(acc, shift, rounding, width, acc_bits, u16)
        assert (q, over, under) == (eq, int(eover), int(eunder)), (
            f"vector {i}: acc={acc} ({acc_bits} bits) shift={shift} {rounding.name} out W{width.bits} u16={u16:#06x}: "
            f"got q={q} overflow={over} underflow={under}, expected q={eq} overflow={int(eover)} "
            f"underflow={int(eunder)}")
        key = (rounding.name, width.name, "over" if eover else "under" if eunder else "none")
        flows[key] = flows.get(key, 0) + 1
    dut._log.info("%d vectors checked; rounding x width x flow hits: %s", n, dict(sorted(flows.items())))


def _run(acc_bits, record_property, iters, sim=None):
    from testbenches.cocotb import harness

    Requantizer = harness.require("hw.requantizer", "Requantizer")
    cfgname = f"acc{acc_bits}"
    bdir = harness.build_dir(cfgname, "requantizer", sim)
    src = harness.elaborate(lambda: Requantizer(acc_bits), "requantizer", bdir)
    harness.run(module="testbenches.cocotb.test_requantizer", top="requantizer", config=cfgname,
                block="requantizer", sources=[src], record_property=record_property,
                extra_env={"DLU_ITERS": str(iters)}, sim=sim)


@pytest.mark.parametrize("acc_bits", [80])
def test_requantizer(acc_bits, record_property):
    """Quick tier: the 80-bit instance the core uses."""
    _run(acc_bits, record_property, iters=4000)


def test_requantizer_icarus(record_property):
    _run(80, record_property, iters=500, sim="icarus")


@pytest.mark.slow
@pytest.mark.parametrize("acc_bits", ACC_BITS)
@pytest.mark.parametrize("rep", range(4))
def test_requantizer_many_seeds(acc_bits, rep, record_property):
    _run(acc_bits, record_property, iters=50_000)
