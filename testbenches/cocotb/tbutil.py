"""Simulator side of the cocotb regression: seeds, clocks, Amaranth stream drivers, payload packing.

Imported by the cocotb test modules inside the simulator. The pytest side (``harness.py``)
passes the run's seed and config through the environment; nothing here reads the
environment at import time.

Amaranth ``lib.stream`` ports appear in the Verilog as ``<name>__valid``, ``<name>__ready``
and ``<name>__payload`` (one flat vector). :class:`StreamSource` and :class:`StreamSink`
drive and watch such ports with seeded idle cycles (source) and back-pressure (sink);
:func:`pack`/:func:`unpack` convert payloads with the *component's own* ``lib.data`` layouts,
so no field offset is retyped here.
"""

from __future__ import annotations

import os
import random
from collections import deque

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

CLOCK_NS = 10


# -- run parameters ------------------------------------------------------------------------
def run_seed() -> int:
    return int(os.environ.get("DLU_SEED", "1"), 0)


def test_rng(name: str, log) -> tuple[random.Random, int]:
    """A ``random.Random`` for one cocotb test, seeded from the run seed and the test's name."""
    base = run_seed()
    seed = (base * 1_000_003 + sum(ord(c) * 131**i for i, c in enumerate(name))) & 0x7FFFFFFF
    log.info("seed: run %d, test %s -> %d (rerun with DLU_SEED=%d)", base, name, seed, base)
    return random.Random(seed), seed


def iterations(default: int) -> int:
    """How many random rounds a test runs: ``DLU_ITERS`` (set by the slow tier) or ``default``."""
    return int(os.environ.get("DLU_ITERS", default))


def config_name() -> str:
    return os.environ.get("DLU_CONFIG", "tiny")


def core_config():
    """The run's ``CoreConfig``: the exact fields the pytest side built the netlist with."""
    import json

    from reference.config import CoreConfig, load_config

    fields = os.environ.get("DLU_CONFIG_FIELDS")
    return CoreConfig(**json.loads(fields)) if fields else load_config(config_name())


# -- payload packing with Amaranth layouts ----------------------------------------------------
def _shape_of(layout):
    from amaranth.hdl import Shape

    return Shape.cast(layout)


def pack(layout, value) -> int:
    """Integer bit pattern of ``value`` (dict / list / int, nested) in ``layout``."""
    from amaranth.lib import data

    if isinstance(layout, data.ArrayLayout):
        out = 0
        for i, v in enumerate(value):
            out |= pack(layout.elem_shape, v) << (i * _shape_of(layout.elem_shape).width)
        if len(value) != layout.length:
            raise ValueError(f"pack: {len(value)} elements for an array of {layout.length}")
        return out
    if isinstance(layout, data.Layout):
        out = 0
        for name, field in layout:
            if name not in value:
                raise KeyError(f"pack: field {name!r} missing (have {sorted(value)})")
            out |= pack(field.shape, value[name]) << field.offset
        extra = set(value) - {n for n, _ in layout}
        if extra:
            raise KeyError(f"pack: unknown field(s) {sorted(extra)}")
        return out
    shape = _shape_of(layout)
    v = int(value)
    lo, hi = (-(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1) if shape.signed else (0, (1 << shape.width) - 1)
    if not lo <= v <= hi:
        raise ValueError(f"pack: {v} does not fit {shape}")
    return v & ((1 << shape.width) - 1)


def unpack(layout, raw: int):
    """Inverse of :func:`pack`: dicts for structs, lists for arrays, Python ints for leaves."""
    from amaranth.lib import data

    if isinstance(layout, data.ArrayLayout):
        w = _shape_of(layout.elem_shape).width
        return [unpack(layout.elem_shape, (raw >> (i * w)) & ((1 << w) - 1)) for i in range(layout.length)]
    if isinstance(layout, data.Layout):
        out = {}
        for name, field in layout:
            w = _shape_of(field.shape).width
            out[name] = unpack(field.shape, (raw >> field.offset) & ((1 << w) - 1))
        return out
    shape = _shape_of(layout)
    raw &= (1 << shape.width) - 1
    if shape.signed and raw >> (shape.width - 1):
        raw -= 1 << shape.width
    return raw


def payload_layout(component, port: str):
    """The payload layout of stream port ``port`` of an Amaranth component."""
    return component.signature.members[port].signature.members["payload"].shape


# -- clock and reset -------------------------------------------------------------------------
class Clocked:
    """Clock, cycle counter and reset of a bench.

    Discipline used by every driver here, identical on Verilator and Icarus: inputs change
    only on the *falling* edge; handshakes are sampled in the ReadOnly phase after that
    falling edge, when every combinational path has settled; a transfer seen there happens
    at the next rising edge, numbered ``self.cycle + 1``.
    """

    def __init__(self, dut, clk_name: str = "clk"):
        self.dut = dut
        self.clk = getattr(dut, clk_name)
        self.cycle = 0  # rising edges since the clock started
        cocotb.start_soon(Clock(self.clk, CLOCK_NS, unit="ns").start(start_high=False))
        cocotb.start_soon(self._count())

    async def _count(self):
        while True:
            await RisingEdge(self.clk)
            self.cycle += 1

    async def reset(self, cycles: int = 4, rst_name: str = "rst"):
        rst = getattr(self.dut, rst_name)
        await FallingEdge(self.clk)
        rst.value = 1
        for _ in range(cycles):
            await FallingEdge(self.clk)
        rst.value = 0

    async def falling(self, n: int = 1):
        for _ in range(n):
            await FallingEdge(self.clk)


# -- Amaranth lib.stream drivers -------------------------------------------------------------
class StreamSource:
    """Drives ``<name>__valid``/``__payload``, honours ``__ready``; seeded idle cycles.

    ``idle`` is the probability of holding valid low for a cycle while data is queued.
    ``sent`` records the cycle of every transfer (the rising edge that took it).
    """

    def __init__(self, tb: Clocked, name: str, rng: random.Random, idle: float = 0.0):
        dut = tb.dut
        self.tb = tb
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.payload = getattr(dut, f"{name}__payload")
        self.rng, self.idle = rng, idle
        self.queue: deque[int] = deque()
        self.sent: list[int] = []
        self.valid.value = 0
        self._task = cocotb.start_soon(self._run())

    def send(self, raw: int) -> None:
        self.queue.append(raw)

    @property
    def empty(self) -> bool:
        return not self.queue

    async def _run(self):
        while True:
            await FallingEdge(self.tb.clk)
            drive = bool(self.queue) and not (self.idle and self.rng.random() < self.idle)
            if drive:
                self.payload.value = self.queue[0]
            self.valid.value = int(drive)
            await ReadOnly()
            if drive and int(self.ready.value):
                self.queue.popleft()
                self.sent.append(self.tb.cycle + 1)

    def stop(self):
        self._task.cancel()


class StreamSink:
    """Collects ``<name>__payload`` with seeded back-pressure on ``__ready``.

    ``items`` holds (cycle of the transfer, raw payload).
    """

    def __init__(self, tb: Clocked, name: str, rng: random.Random, stall: float = 0.0):
        dut = tb.dut
        self.tb = tb
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.payload = getattr(dut, f"{name}__payload")
        self.rng, self.stall = rng, stall
        self.items: list[tuple[int, int]] = []
        self.ready.value = 0
        self._task = cocotb.start_soon(self._run())

    async def _run(self):
        while True:
            await FallingEdge(self.tb.clk)
            r = 0 if (self.stall and self.rng.random() < self.stall) else 1
            self.ready.value = r
            await ReadOnly()
            if r and int(self.valid.value):
                self.items.append((self.tb.cycle + 1, int(self.payload.value)))

    def stop(self):
        self._task.cancel()
