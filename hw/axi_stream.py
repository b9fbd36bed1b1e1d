"""AXI4-Stream ports of LOAD (``s_axis_*``) and STORE (``m_axis_*``), one scratchpad word per beat."""

from __future__ import annotations

from amaranth.hdl import Module
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from reference.config import CoreConfig

from .settings import check_config

#: Words the STORE buffer holds; the sequencer reads ahead only into free entries.
STORE_FIFO_DEPTH = 4


def store_layout(cfg: CoreConfig) -> data.StructLayout:
    return data.StructLayout({"data": cfg.word_bits, "last": 1})


class AxiStreamBridge(wiring.Component):
    """Flat AXI4-Stream ports with the standard names, bridged to the sequencer's streams.

    LOAD: ``s_axis_tdata``/``tvalid``/``tready`` pass straight to ``load`` (``s_axis_tlast``
    is accepted and ignored: a LOAD takes exactly K words). STORE: words from ``store`` go
    through a :data:`STORE_FIFO_DEPTH`-entry FIFO to ``m_axis_*`` (``tvalid`` never depends on
    ``tready``); ``m_axis_tlast`` marks the last word of a STORE.

    Parameters
    ----------
    cfg
        Core configuration (``word_bits`` = tdata width).

    Members
    -------
    s_axis_tdata, s_axis_tvalid, s_axis_tready, s_axis_tlast :
        Slave stream (data into the core).
    m_axis_tdata, m_axis_tvalid, m_axis_tready, m_axis_tlast :
        Master stream (data out of the core).
    load : Out(stream.Signature(word_bits))
        Words for LOAD.
    store : In(stream.Signature(store_layout))
        Words of STORE; ``ready`` is the FIFO's.
    store_level : Out(range(STORE_FIFO_DEPTH + 1))
        Words in the FIFO.
    """

    def __init__(self, cfg: CoreConfig) -> None:
        self.cfg = check_config(cfg)
        w = cfg.word_bits
        super().__init__({
            "s_axis_tdata": In(w), "s_axis_tvalid": In(1), "s_axis_tready": Out(1), "s_axis_tlast": In(1),
            "m_axis_tdata": Out(w), "m_axis_tvalid": Out(1), "m_axis_tready": In(1), "m_axis_tlast": Out(1),
            "load": Out(stream.Signature(w)),
            "store": In(stream.Signature(store_layout(cfg))),
            "store_level": Out(range(STORE_FIFO_DEPTH + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [
            self.load.payload.eq(self.s_axis_tdata),
            self.load.valid.eq(self.s_axis_tvalid),
            self.s_axis_tready.eq(self.load.ready),
        ]
        m.submodules.fifo = q = fifo.SyncFIFO(width=self.cfg.word_bits + 1, depth=STORE_FIFO_DEPTH)
        m.d.comb += [
            q.w_data.eq(self.store.payload),
            q.w_en.eq(self.store.valid),
            self.store.ready.eq(q.w_rdy),
            self.m_axis_tdata.eq(q.r_data[:-1]),
            self.m_axis_tlast.eq(q.r_data[-1]),
            self.m_axis_tvalid.eq(q.r_rdy),
            q.r_en.eq(self.m_axis_tready),
            self.store_level.eq(q.level),
        ]
        return m
