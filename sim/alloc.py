"""Scratchpad allocator: contiguous word ranges inside one bank.

The scratchpad has ``cfg.spad_banks`` banks of ``cfg.spad_words`` words (see
:mod:`reference.isa`). A buffer is a contiguous range of words inside one bank (a tensor never
crosses a bank boundary). Each bank keeps a sorted list of allocated ranges; :meth:`alloc` is
first fit within a bank, and the caller chooses the bank (and what to evict when nothing fits:
see :mod:`sim.core`). Addresses returned are scratchpad word addresses,
``bank * spad_words + offset``.

The allocator only does bookkeeping; it never decides what to evict, so its invariant is easy
to state and test: live buffers never overlap and never leave their bank.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from reference.config import CoreConfig


@dataclass(frozen=True)
class Buffer:
    """An allocated range: ``words`` words at ``offset`` in bank ``bank`` (word address ``addr``)."""

    bank: int
    offset: int
    words: int
    owner: int
    addr: int


class BankAllocator:
    """First-fit allocation of word ranges per bank.

    Parameters
    ----------
    cfg
        Core parameters (``spad_banks``, ``spad_words``).

    Members
    -------
    buffers
        Owner key -> :class:`Buffer` of every live allocation.
    """

    def __init__(self, cfg: CoreConfig) -> None:
        self.cfg = cfg
        self.buffers: dict[int, Buffer] = {}
        # Per bank: sorted list of (offset, words, owner).
        self._ranges: list[list[tuple[int, int, int]]] = [[] for _ in range(cfg.spad_banks)]

    def free_extents(self, bank: int) -> list[tuple[int, int]]:
        """Free (offset, words) ranges of ``bank`` in address order."""
        out, pos = [], 0
        for off, words, _ in self._ranges[bank]:
            if off > pos:
                out.append((pos, off - pos))
            pos = off + words
        if pos < self.cfg.spad_words:
            out.append((pos, self.cfg.spad_words - pos))
        return out

    def largest_free(self, bank: int) -> int:
        return max((w for _, w in self.free_extents(bank)), default=0)

    def owners(self, bank: int) -> list[int]:
        return [o for _, _, o in self._ranges[bank]]

    def alloc(self, owner: int, words: int, bank: int) -> Buffer | None:
        """First-fit ``words`` words in ``bank`` for ``owner``; None when no free range is large enough.

        Raises
        ------
        ValueError
            ``owner`` already holds a buffer, ``words`` is not in [1, spad_words] or ``bank`` is out of range.
        """
        if owner in self.buffers:
            raise ValueError(f"alloc: owner {owner} already holds {self.buffers[owner]}")
        if not 1 <= words <= self.cfg.spad_words:
            raise ValueError(f"alloc: words={words} is outside [1, {self.cfg.spad_words}] (one bank)")
        if not 0 <= bank < self.cfg.spad_banks:
            raise ValueError(f"alloc: bank={bank} is outside [0, {self.cfg.spad_banks})")
        for off, free in self.free_extents(bank):
            if free >= words:
                buf = Buffer(bank, off, words, owner, bank * self.cfg.spad_words + off)
                bisect.insort(self._ranges[bank], (off, words, owner))
                self.buffers[owner] = buf
                return buf
        return None

    def free(self, owner: int) -> Buffer:
        """Release ``owner``'s buffer; raises KeyError if it holds none."""
        buf = self.buffers.pop(owner)
        self._ranges[buf.bank].remove((buf.offset, buf.words, owner))
        return buf

    def check(self) -> None:
        """Raise AssertionError if two live buffers overlap or one leaves its bank."""
        for bank, ranges in enumerate(self._ranges):
            pos = 0
            for off, words, owner in ranges:
                if off < pos or off + words > self.cfg.spad_words:
                    raise AssertionError(f"bank {bank}: buffer of owner {owner} at {off}+{words} overlaps or "
                                         f"leaves the bank")
                pos = off + words
