"""Scratchpad: ``spad_banks`` banks of ``spad_words`` words of ``lanes * 32`` bits.

Word address ``bank * spad_words + offset`` (:mod:`reference.isa`). Each bank is one
:class:`amaranth.lib.memory.Memory` with one synchronous read port and one write port with
byte enables, so the two operands and the destination of a command (in different banks by
:func:`reference.isa.check_command`) are accessed in the same cycle.
"""

from __future__ import annotations

from amaranth.hdl import Array, Module, Signal
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from reference.config import CoreConfig

from .settings import check_config


def spad_addr_bits(cfg: CoreConfig) -> int:
    return ceil_log2(cfg.spad_banks * cfg.spad_words)


class ScratchpadReadSignature(wiring.Signature):
    """A read port, from the reader's side: ``data`` holds the word at ``addr`` one cycle after
    ``en``."""

    def __init__(self, cfg: CoreConfig) -> None:
        super().__init__({"addr": Out(spad_addr_bits(cfg)), "en": Out(1), "data": In(cfg.word_bits)})


class ScratchpadWriteSignature(wiring.Signature):
    """A write port, from the writer's side: byte ``i`` of ``data`` is written where ``en[i]``."""

    def __init__(self, cfg: CoreConfig) -> None:
        super().__init__({"addr": Out(spad_addr_bits(cfg)), "data": Out(cfg.word_bits),
                          "en": Out(cfg.word_bits // 8)})


class Scratchpad(wiring.Component):
    """The banked scratchpad.

    Parameters
    ----------
    cfg
        Core configuration (``spad_banks``, ``spad_words``, ``lanes``).

    Members
    -------
    rd : In(ScratchpadReadSignature) x 2
        Two logical read ports, each routed to the bank its address selects; if both select
        the same bank, ``rd[0]`` is served and ``rd[1]`` reads that bank's port's data.
    wr : In(ScratchpadWriteSignature)
        The write port (results and LOAD data). Addresses past the last bank are ignored.
    """

    def __init__(self, cfg: CoreConfig) -> None:
        self.cfg = check_config(cfg)
        super().__init__({
            "rd": In(ScratchpadReadSignature(cfg)).array(2),
            "wr": In(ScratchpadWriteSignature(cfg)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        ob = ceil_log2(cfg.spad_words)
        bank_data = []
        for i in range(cfg.spad_banks):
            mem = memory.Memory(shape=cfg.word_bits, depth=cfg.spad_words, init=[])
            m.submodules[f"bank{i}"] = mem
            rp = mem.read_port()
            wp = mem.write_port(granularity=8)
            sel0 = self.rd[0].en & (self.rd[0].addr >> ob == i)
            sel1 = self.rd[1].en & (self.rd[1].addr >> ob == i)
            with m.If(sel0):
                m.d.comb += [rp.addr.eq(self.rd[0].addr), rp.en.eq(1)]
            with m.Elif(sel1):
                m.d.comb += [rp.addr.eq(self.rd[1].addr), rp.en.eq(1)]
            with m.If(self.wr.addr >> ob == i):
                m.d.comb += [wp.addr.eq(self.wr.addr), wp.data.eq(self.wr.data), wp.en.eq(self.wr.en)]
            bank_data.append(rp.data)
        data = Array(bank_data)
        for port in self.rd:
            bank = Signal(range(cfg.spad_banks), name="bank_q")
            with m.If(port.en):
                m.d.sync += bank.eq(port.addr >> ob)
            m.d.comb += port.data.eq(data[bank])
        return m
