"""XorshiftBank: the stochastic-rounding generators, one xorshift32 per slot.

Golden twin: :mod:`reference.rng` (:func:`reference.rng.seed_states`,
:func:`reference.rng.xorshift32`, :func:`reference.rng.draw_beats`).
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from reference.formats import STOCHASTIC_BITS
from reference.rng import GOLDEN, MASK32, seed_states

#: xorshift32 shift triple (13, 17, 5); the twin's constants are numpy scalars.
_SHIFTS = (13, 17, 5)


def xorshift32_step(s):
    """One xorshift32 step of a 32-bit value; twin of :func:`reference.rng.xorshift32`."""
    a, b, c = _SHIFTS
    s = (s ^ (s << a))[:32]
    s = s ^ (s >> b)
    return (s ^ (s << c))[:32]


def slot_bits(n: int) -> int:
    """Width of a generator index among ``n`` generators (at least 1 bit)."""
    return max(1, (n - 1).bit_length())


class RngHostSignature(wiring.Signature):
    """Host (register-window) access to the generator states, from the host's side.

    The RNG_STATE window of :mod:`hw.regmap`: one 32-bit state per generator.

    Parameters
    ----------
    n
        Number of generators.

    Members
    -------
    we : Out(1)
        Write strobe: generator ``waddr`` takes ``wdata`` (or 1 if ``wdata`` is 0, the rule of
        :func:`reference.rng.seed_states`) at the end of this cycle.
    waddr, raddr : Out(slot_bits(n))
        Generator written / read.
    wdata : Out(32)
        State to write.
    rdata : In(32)
        Current state of generator ``raddr`` (combinational).

    Raises
    ------
    TypeError, ValueError
        ``n`` is not an integer >= 1.
    """

    def __init__(self, n: int) -> None:
        _check_n(n)
        self.n = n
        super().__init__({
            "we": Out(1), "waddr": Out(slot_bits(n)), "wdata": Out(32),
            "raddr": Out(slot_bits(n)), "rdata": In(32),
        })


def _check_n(n) -> None:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n: expected an integer number of generators, got {n!r}")
    if n < 1:
        raise ValueError(f"n: need at least one generator, got {n}")


class XorshiftBank(wiring.Component):
    """``n`` xorshift32 generators that step together.

    Slot ``j`` draws the upper :data:`reference.formats.STOCHASTIC_BITS` bits of generator
    ``j``'s state *after* the step (:func:`reference.rng.draw_beats`): ``words`` shows them
    combinationally in the cycle ``step`` is high, and the states advance at the end of that
    cycle. ``seed_load`` (which wins over ``step``) sets generator ``j`` to
    ``seed XOR ((j + 1) * GOLDEN mod 2**32)``, or 1 if that is 0
    (:func:`reference.rng.seed_states`). After reset the states are ``seed_states(0, n)``.

    The host port sets one generator's state directly (the RNG_STATE window): a ``host.we``
    cycle sets generator ``host.waddr`` to ``host.wdata``, or to 1 if that is 0 (state 0 is a
    fixed point of xorshift32; the same rule as ``seed_states``). Priority per generator:
    ``seed_load``, then ``host.we``, then ``step`` (a written generator does not also step in
    that cycle; the others do). ``host.rdata`` shows the current state of ``host.raddr``.

    Parameters
    ----------
    n
        Number of generators (``cfg.rng_slots`` in the core).

    Members
    -------
    seed : In(32)
    seed_load : In(1)
    step : In(1)
    words : Out(ArrayLayout(unsigned(16), n))
        Upper 16 bits of each generator's next state.
    states : Out(ArrayLayout(unsigned(32), n))
        Current states (for tests and debug).
    host : In(RngHostSignature(n))
        Host read and write of single states.

    Raises
    ------
    TypeError, ValueError
        ``n`` is not an integer >= 1.
    """

    def __init__(self, n: int) -> None:
        _check_n(n)
        self.n = n
        super().__init__({
            "seed": In(32), "seed_load": In(1), "step": In(1),
            "words": Out(data.ArrayLayout(unsigned(STOCHASTIC_BITS), n)),
            "states": Out(data.ArrayLayout(unsigned(32), n)),
            "host": In(RngHostSignature(n)),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        reset = seed_states(0, self.n)
        host = self.host
        written = Signal(32)
        m.d.comb += written.eq(Mux(host.wdata == 0, 1, host.wdata))
        for j in range(self.n):
            st = Signal(32, name=f"state{j}", init=int(reset[j]))
            nxt = Signal(32, name=f"next{j}")
            seeded = Signal(32, name=f"seeded{j}")
            m.d.comb += [
                nxt.eq(xorshift32_step(st)),
                seeded.eq(self.seed ^ Const(((j + 1) * GOLDEN) & MASK32, 32)),
                self.words[j].eq(nxt[32 - STOCHASTIC_BITS:]),
                self.states[j].eq(st),
            ]
            with m.If(self.seed_load):
                m.d.sync += st.eq(Mux(seeded == 0, 1, seeded))
            with m.Elif(host.we & (host.waddr == j)):
                m.d.sync += st.eq(written)
            with m.Elif(self.step):
                m.d.sync += st.eq(nxt)
        m.d.comb += host.rdata.eq(self.states[host.raddr])
        return m
