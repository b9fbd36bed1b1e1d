"""Random words for stochastic rounding: one xorshift32 generator per output slot.

The core converts results one *beat* at a time: a beat is up to ``V = lanes * 32 / W``
values of one output row (see :func:`reference.ops.beats`). Slot ``j`` of every beat
draws its random word from generator ``j``. There are ``4 * lanes`` generators (the widest
beat, at 8 bits); on every beat that is converted in stochastic mode with bits dropped
(``shift = F_acc - F_out > 0``) *all* of them step once, whatever the width, so the state
never depends on which slots were used. A conversion that drops no bits steps none.

Generator ``j`` is Marsaglia's xorshift32 (13, 17, 5). Seeding from the 32-bit seed
register: ``state_j = seed XOR ((j + 1) * 0x9E3779B9 mod 2**32)``, and 1 if that is 0.
The word for a value is the upper 16 bits of the state *after* the step.

Definition of :func:`draw_beats` (the test suite keeps this loop as its oracle)::

    for b in range(n_beats):
        s = xorshift32(s)
        words[b] = s[:slots] >> 16

The implementation runs that loop compiled (:func:`reference.kernels.xorshift_beats`).
:func:`jump` skips ``t`` steps at once: a xorshift32 step is a linear map ``M`` over
GF(2)**32, so ``M**t`` is applied with four 256-entry lookup tables (one per state byte) and
``M**(t * 2**k)`` is obtained by squaring.
"""

from __future__ import annotations

import functools

import numpy as np

from . import kernels

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


_SHL_A, _SHR_B, _SHL_C = np.uint32(13), np.uint32(17), np.uint32(5)


def xorshift32(s: np.ndarray) -> np.ndarray:
    """One step of every generator (uint32 arrays); returns a new array."""
    s = s ^ (s << _SHL_A)
    s ^= s >> _SHR_B
    s ^= s << _SHL_C
    return s


def _apply(tables: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Apply the GF(2)-linear map given by byte tables [4, 256] to uint32 states."""
    return (
        tables[0][x & np.uint32(0xFF)]
        ^ tables[1][(x >> np.uint32(8)) & np.uint32(0xFF)]
        ^ tables[2][(x >> np.uint32(16)) & np.uint32(0xFF)]
        ^ tables[3][x >> np.uint32(24)]
    )


def _tables(images: np.ndarray) -> np.ndarray:
    """Byte tables of the linear map that sends bit i to ``images[i]`` (uint32[32])."""
    byte = np.arange(256)
    t = np.zeros((4, 256), dtype=np.uint32)
    for j in range(4):
        for bit in range(8):
            t[j][((byte >> bit) & 1) == 1] ^= images[8 * j + bit]
    return t


@functools.cache
def _jump_tables(log2_steps: int) -> np.ndarray:
    """Byte tables of ``M**(2**log2_steps)``, ``M`` being one xorshift32 step."""
    if log2_steps == 0:
        basis = np.left_shift(np.uint32(1), np.arange(32, dtype=np.uint32))
        return _tables(xorshift32(basis))
    half = _jump_tables(log2_steps - 1)
    basis = np.left_shift(np.uint32(1), np.arange(32, dtype=np.uint32))
    return _tables(_apply(half, _apply(half, basis)))


def jump(states: np.ndarray, steps: int) -> np.ndarray:
    """The states after ``steps`` xorshift32 steps of every generator, in O(log steps)."""
    if steps < 0:
        raise ValueError(f"steps: {steps} is negative")
    s = np.asarray(states, dtype=np.uint32).copy()
    k = 0
    while steps:
        if steps & 1:
            s = _apply(_jump_tables(k), s)
        steps >>= 1
        k += 1
    return s


def draw_beats(states: np.ndarray, n_beats: int, slots: int) -> tuple[np.ndarray, np.ndarray]:
    """Random words for ``n_beats`` beats of ``slots`` values; returns (words, new states).

    ``words`` has shape [n_beats, slots], dtype int64, values in [0, 2**16): row ``b`` holds
    the upper halves of the first ``slots`` generators' states after ``b + 1`` steps. Every
    generator (not only the first ``slots``) steps once per beat.
    """
    states = np.asarray(states, dtype=np.uint32)
    if states.ndim != 1:
        raise ValueError(f"states: expected a 1-D array of generator states, got shape {states.shape}")
    if not 0 <= slots <= states.size:
        raise ValueError(f"slots: {slots} is not in [0, {states.size}] (the number of generators)")
    if n_beats < 0:
        raise ValueError(f"n_beats: {n_beats} is negative")
    return kernels.xorshift_beats(states, int(n_beats), int(slots))
