"""Requantizer: one accumulator value -> a rounded, saturated W-bit value and its flags.

Golden twins: :func:`reference.formats.round_shift` followed by
:func:`reference.formats.saturate` for ``shift > 0``, and
:func:`reference.formats.requantize_left` for ``shift <= 0`` (as
:func:`reference.ops.convert_acc` chooses); ``underflow`` is the per-value condition of
:func:`reference.stats.analyse` (``acc != 0`` and ``q == 0``).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from reference.formats import STOCHASTIC_BITS, RoundingMode, Width

from .settings import width_mux
from .simd_mac import check_widths


class Requantizer(wiring.Component):
    """Round ``acc * 2**-shift`` with ``rounding`` and saturate to ``out_width`` (combinational).

    Right shifts (``shift > 0``) are computed as ``Y = (acc * 2**16) >> min(shift, N + 16)``
    (arithmetic, N = ``acc_bits``): ``Y >> 16`` is ``floor(acc / 2**shift)``, ``Y``'s low 16
    bits are the stochastic remainder ``r16`` (zero filled when ``shift < 16``), bit 15 of
    ``Y`` is the half-LSB and the OR of all lower bits of ``acc * 2**16`` is the sticky bit.
    For every shift >= N + 16 all three modes give the result of N + 16 (the quotient is the
    sign, ``r16`` is 0 or 2**16 - 1, the half bit is the sign and the sticky bit is
    ``acc != 0``), which is why the clamp, like the twin's sticky pre-shift, changes nothing.

    - NEAREST_EVEN: up = half & (sticky | LSB);
    - FLOOR (and the illegal code 3): up = 0;
    - STOCHASTIC: up = carry out of ``r16 + u16``.

    Left shifts (``shift <= 0``) form ``acc * 2**min(-shift, Wmax)`` exactly, Wmax the widest
    output width: the widest left shift that can leave a non-zero value unsaturated is
    ``W_out - 1``, and every shift from Wmax on saturates every non-zero value, like Wmax does.
    Either result is then clamped to the W-bit range of ``out_width``; ``overflow`` marks a clamp.

    Parameters
    ----------
    acc_bits
        Width N of ``acc``: ``reference.formats.acc_width(W)`` of the widest W the instance
        serves (32, 48 or 80 in the core); any N >= 2 works.
    out_widths
        The output widths to support (default: all; ``CoreConfig.supported_widths`` in the core).

    Members
    -------
    acc : In(signed(acc_bits))
    shift : In(signed(10))
        ``F_acc - F_out``.
    rounding : In(2)
        :class:`reference.formats.RoundingMode` code.
    out_width : In(2)
        :class:`reference.formats.Width` code of the output (a code of no supported width, such
        as 3, is treated as the widest supported one).
    u16 : In(16)
        Random word for STOCHASTIC.
    q : Out(signed(32))
        Result, sign-extended to 32 bits.
    overflow, underflow : Out(1)

    Raises
    ------
    TypeError, ValueError
        ``acc_bits`` is not an integer >= 2; ``out_widths`` is not a non-empty collection of
        distinct ``Width`` s.
    """

    def __init__(self, acc_bits: int, out_widths=tuple(Width)) -> None:
        if isinstance(acc_bits, bool) or not isinstance(acc_bits, int):
            raise TypeError(f"acc_bits: expected an integer, got {acc_bits!r}")
        if acc_bits < 2:
            raise ValueError(f"acc_bits: need at least 2 bits, got {acc_bits}")
        self.acc_bits = acc_bits
        self.out_widths = check_widths(out_widths, "out_widths")
        super().__init__({
            "acc": In(signed(acc_bits)), "shift": In(signed(10)), "rounding": In(2), "out_width": In(2),
            "u16": In(STOCHASTIC_BITS),
            "q": Out(signed(32)), "overflow": Out(1), "underflow": Out(1),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        n = self.acc_bits
        sb = STOCHASTIC_BITS
        xw = n + sb
        acc = self.acc

        # ---- right shift with rounding --------------------------------------------------
        sr = Signal(range(xw + 1))
        m.d.comb += sr.eq(Mux(self.shift > xw, xw, self.shift[:sr.shape().width]))
        x = Signal(signed(xw))
        m.d.comb += x.eq(Cat(Const(0, sb), acc))
        y = Signal(signed(xw))
        m.d.comb += y.eq(x >> sr)
        fq = y[sb:].as_signed()
        r16 = y[:sb]
        half = y[sb - 1]
        below = Signal(xw)  # bits of x below the half bit, i.e. below position sr + sb - 1
        m.d.comb += below.eq(~(Const((1 << xw) - 1, xw) << (sr + (sb - 1)))[:xw])
        sticky = (x.as_unsigned() & below).any()
        up = Signal()
        with m.Switch(self.rounding):
            with m.Case(RoundingMode.NEAREST_EVEN):
                m.d.comb += up.eq(half & (sticky | fq[0]))
            with m.Case(RoundingMode.STOCHASTIC):
                m.d.comb += up.eq((r16 + self.u16)[sb])
        right = Signal(signed(n + 1))
        m.d.comb += right.eq(fq + up)

        # ---- left shift -----------------------------------------------------------------
        left_max = self.out_widths[-1].bits
        k = Signal(range(left_max + 1))
        m.d.comb += k.eq(Mux(-self.shift > left_max, left_max, (-self.shift)[:k.shape().width]))
        left = Signal(signed(n + left_max))
        m.d.comb += left.eq(acc << k)

        # ---- saturation -----------------------------------------------------------------
        # The clamp of the right-shift result is decided from the floor quotient fq and the
        # rounding increment up (0 or 1) without waiting for fq + up: fq + up > hi exactly when
        # fq > hi or (up and fq == hi), and fq + up < lo exactly when fq < lo and not (up and
        # fq == lo - 1). The comparisons then run beside the rounding adder instead of after it.
        hi = Signal(signed(33))
        lo = Signal(signed(33))
        m.d.comb += [hi.eq(width_mux(self.out_width, {w: (1 << (w.bits - 1)) - 1 for w in self.out_widths})),
                     lo.eq(width_mux(self.out_width, {w: -(1 << (w.bits - 1)) for w in self.out_widths}))]
        r_over = Signal()
        r_under = Signal()
        m.d.comb += [r_over.eq((fq > hi) | (up & (fq == hi))),
                     r_under.eq((fq < lo) & ~(up & (fq == lo - 1)))]
        l_over = Signal()
        l_under = Signal()
        m.d.comb += [l_over.eq(left > hi), l_under.eq(left < lo)]
        is_right = self.shift > 0
        over = Mux(is_right, r_over, l_over)
        under = Mux(is_right, r_under, l_under)
        m.d.comb += self.overflow.eq(over | under)
        m.d.comb += self.q.eq(Mux(over, hi, Mux(under, lo, Mux(is_right, right, left))))
        # q == 0 needs no saturation test (hi and lo are never 0) and only the right shift can
        # reach it from acc != 0: fq + up == 0 exactly when fq == 0 and not up, or fq == -1 and up.
        m.d.comb += self.underflow.eq((acc != 0) & is_right & Mux(up, fq == -1, fq == 0))
        return m
