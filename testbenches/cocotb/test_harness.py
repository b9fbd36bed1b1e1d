"""Self-test of the bench machinery on a known-good design: Amaranth's own SyncFIFOBuffered.

Checks that :class:`tbutil.StreamSource`/:class:`tbutil.StreamSink` lose, duplicate and
reorder nothing under seeded idle cycles and back-pressure, that :func:`tbutil.pack`/
:func:`tbutil.unpack` round-trip a nested layout, and that the build/run/seed plumbing of
``harness.py`` works on both simulators. If this fails, no other bench result can be trusted.
"""

from __future__ import annotations

import cocotb
import pytest
from amaranth import Module, signed
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from testbenches.cocotb import tbutil

LAYOUT = data.StructLayout({"a": signed(7), "v": data.ArrayLayout(signed(5), 3), "f": 2})


class StreamFifo(wiring.Component):
    """A SyncFIFOBuffered between two lib.stream ports carrying ``LAYOUT``."""

    def __init__(self):
        super().__init__({"i": In(stream.Signature(LAYOUT)), "o": Out(stream.Signature(LAYOUT))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = f = fifo.SyncFIFOBuffered(width=LAYOUT.size, depth=4)
        m.d.comb += [
            f.w_data.eq(self.i.payload.as_value()), f.w_en.eq(self.i.valid), self.i.ready.eq(f.w_rdy),
            self.o.payload.eq(f.r_data), self.o.valid.eq(f.r_rdy), f.r_en.eq(self.o.ready),
        ]
        return m


@cocotb.test(timeout_time=200_000, timeout_unit="ns")
async def stream_drivers_keep_order_under_stalls(dut):
    rng, _ = tbutil.test_rng("stream_drivers_keep_order_under_stalls", dut._log)
    tb = tbutil.Clocked(dut)
    src = tbutil.StreamSource(tb, "i", rng, idle=0.3)
    sink = tbutil.StreamSink(tb, "o", rng, stall=0.4)
    await tb.reset()
    sent = []
    for _ in range(500):
        v = {"a": rng.randint(-64, 63), "v": [rng.randint(-16, 15) for _ in range(3)], "f": rng.randint(0, 3)}
        raw = tbutil.pack(LAYOUT, v)
        assert tbutil.unpack(LAYOUT, raw) == v
        sent.append(v)
        src.send(raw)
    while len(sink.items) < len(sent):
        await tb.falling()
    await tb.falling(20)
    got = [tbutil.unpack(LAYOUT, raw) for _, raw in sink.items]
    assert len(got) == len(sent), f"sent {len(sent)} items, received {len(got)}"
    for i, (s, g) in enumerate(zip(sent, got, strict=True)):
        assert s == g, f"item {i}: sent {s}, received {g}"
    # A transfer cannot be seen on the output before it went in, plus the FIFO's latency.
    for (cyc_out, _), cyc_in in zip(sink.items, src.sent, strict=True):
        assert cyc_out > cyc_in


@pytest.mark.parametrize("sim", ["verilator", "icarus"])
def test_stream_drivers(sim, record_property):
    from testbenches.cocotb import harness

    bdir = harness.build_dir("none", "stream_fifo", sim)
    src = harness.elaborate(StreamFifo, "stream_fifo", bdir)
    harness.run(module="testbenches.cocotb.test_harness", top="stream_fifo", config="none", block="stream_fifo",
                sources=[src], record_property=record_property, sim=sim)
