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


class XorshiftBank(wiring.Component):
    """``n`` xorshift32 generators that step together.

    Slot ``j`` draws the upper :data:`reference.formats.STOCHASTIC_BITS` bits of generator
    ``j``'s state *after* the step (:func:`reference.rng.draw_beats`): ``words`` shows them
    combinationally in the cycle ``step`` is high, and the states advance at the end of that
    cycle. ``seed_load`` (which wins over ``step``) sets generator ``j`` to
    ``seed XOR ((j + 1) * GOLDEN mod 2**32)``, or 1 if that is 0
    (:func:`reference.rng.seed_states`). After reset the states are ``seed_states(0, n)``.

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

    Raises
    ------
    TypeError, ValueError
        ``n`` is not an integer >= 1.
    """

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n: expected an integer number of generators, got {n!r}")
        if n < 1:
            raise ValueError(f"n: need at least one generator, got {n}")
        self.n = n
        super().__init__({
            "seed": In(32), "seed_load": In(1), "step": In(1),
            "words": Out(data.ArrayLayout(unsigned(STOCHASTIC_BITS), n)),
            "states": Out(data.ArrayLayout(unsigned(32), n)),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        reset = seed_states(0, self.n)
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
            with m.Elif(self.step):
                m.d.sync += st.eq(nxt)
        return m
