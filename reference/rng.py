"""Random words for stochastic rounding: one xorshift32 generator per output slot.

The core converts results one *beat* at a time: a beat is up to ``V = lanes * 32 / W``
values of one output row (see :func:`reference.ops.beats`). Slot ``j`` of every beat
draws its random word from generator ``j``. There are ``4 * lanes`` generators (the widest
beat, at 8 bits); on every beat that is converted in stochastic mode *all* of them step
once, whatever the width, so the state never depends on which slots were used.

Generator ``j`` is Marsaglia's xorshift32 (13, 17, 5). Seeding from the 32-bit seed
register: ``state_j = seed XOR ((j + 1) * 0x9E3779B9 mod 2**32)``, and 1 if that is 0.
The word for a value is the upper 16 bits of the state *after* the step.
"""

from __future__ import annotations

import numpy as np

GOLDEN = 0x9E3779B9
MASK32 = 0xFFFFFFFF


def seed_states(seed: int, n: int) -> np.ndarray:
    """Initial states of ``n`` generators from the seed register."""
    if not 0 <= int(seed) <= MASK32:
        raise ValueError(f"seed: {seed!r} does not fit the 32-bit seed register")
    j = np.arange(1, n + 1, dtype=np.uint64)
    s = (np.uint64(seed) ^ ((j * np.uint64(GOLDEN)) & np.uint64(MASK32))).astype(np.uint32)
    s[s == 0] = 1
    return s


def xorshift32(s: np.ndarray) -> np.ndarray:
    """One step of every generator (uint32 arrays)."""
    s = s ^ (s << np.uint32(13))
    s = s ^ (s >> np.uint32(17))
    return s ^ (s << np.uint32(5))


def draw_beats(states: np.ndarray, n_beats: int, slots: int) -> tuple[np.ndarray, np.ndarray]:
    """Random words for ``n_beats`` beats of ``slots`` values; returns (words, new states).

    ``words`` has shape [n_beats, slots], dtype int64, values in [0, 2**16).
    """
    states = np.asarray(states, dtype=np.uint32)
    if slots > states.size:
        raise ValueError(f"slots: {slots} exceeds the {states.size} generators")
    words = np.empty((n_beats, slots), dtype=np.int64)
    s = states.copy()
    for b in range(n_beats):
        s = xorshift32(s)
        words[b] = s[:slots] >> np.uint32(16)
    return words, s
