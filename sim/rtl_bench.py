"""cocotb side of the RTL engine: runs a command program on the Verilated ``dlu_core``.

Loaded by the simulator (cocotb), never imported by the rest of ``sim``. The host side
(:mod:`sim.rtl_engine`) writes the program: ``program.json`` (steps) and ``payloads.npz``
(LOAD data); this module runs it through the core's own ports with the standard bus models of
cocotbext-axi (AXI4-Lite master for registers and the command FIFO, AXI4-Stream source and sink
for LOAD and STORE data) and writes ``results.npz`` (write, then rename).

Python stays out of the per-cycle loop where it can: the clock toggles inside the model (the
``dlu_core_clocked`` wrapper of :func:`sim.rtl_engine.clocked_wrapper`), a
command's completion is awaited with one ``Timer`` of the cycles :func:`reference.isa.cycles`
predicts followed by ``STATUS`` polls, and the bus models sleep while their queues are empty.
Only the beats of LOAD/STORE and the AXI4-Lite transactions wake Python every cycle.

Steps (``program.json``)
------------------------
``{"op": "setting", "tid": t, "word": w}``
    write ``SETTINGS[t]``.
``{"op": "settings", "tids": [...], "key": "r3"}``
    read ``SETTINGS[t]`` back for each ``t``: result array ``key``.
``{"op": "rng", "states": [...]}`` / ``{"op": "rng_read", "key": "g0", "n": slots}``
    write / read ``RNG_STATE[i]`` for every generator slot (cores with that window).
``{"op": "cmd", "i": i, "words": [...], "expect": c, "load": key|null, "store": k, "db": tid|null}``
    push command ``i``; for a LOAD send payload ``key``; for a STORE receive ``k`` words;
    wait until done; results ``c{i}`` = [busy - stall cycles, STATUS.error], ``s{i}`` = the
    STORE words ``[k, lanes]``, ``d{i}`` = database entry of ``db`` after the command.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge, Timer

from sim.rtl_engine import from_int_words, to_int_words

CLOCK_NS = 10  # the wrapper's period (sim.rtl_engine.CLOCK_NS)


class Core:
    """The core's AXI ports and its register map (read from the generator's manifest)."""

    def __init__(self, dut, manifest: dict) -> None:
        from cocotbext.axi import AxiLiteBus, AxiLiteMaster, AxiStreamBus, AxiStreamSink, AxiStreamSource

        self.dut = dut
        self.regs = {r["name"]: r for r in manifest["register_map"]}
        from hw.regmap import words_per_counter
        from reference.config import CoreConfig

        self.params = manifest["config"]  # the CoreConfig fields
        self.wpc = words_per_counter(CoreConfig(**self.params))  # 32-bit words per database counter
        self.axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil"), dut.clk, dut.rst)
        self.src = AxiStreamSource(AxiStreamBus.from_prefix(dut, "s_axis"), dut.clk, dut.rst, byte_lanes=1)
        self.sink = AxiStreamSink(AxiStreamBus.from_prefix(dut, "m_axis"), dut.clk, dut.rst, byte_lanes=1)
        for m in (self.axil.write_if, self.axil.read_if, self.src, self.sink):
            m.log.setLevel(logging.WARNING)

    def addr(self, name: str, index: int = 0) -> int:
        r = self.regs[name]
        if not 0 <= index < r["count"]:
            raise IndexError(f"{name}[{index}]: the window has {r['count']} entries")
        return r["offset"] + index * r["stride"]

    def field(self, reg: str, name: str, value: int) -> int:
        for f in self.regs[reg]["fields"]:
            if f["name"] == name:
                return (value >> f["lsb"]) & ((1 << f["width"]) - 1)
        raise KeyError(f"{reg}.{name}")

    async def rd(self, addr: int) -> int:
        return await self.axil.read_dword(addr)

    async def wr(self, addr: int, value: int) -> None:
        await self.axil.write_dword(addr, value & 0xFFFFFFFF)

    async def reset(self) -> None:
        dut = self.dut
        await FallingEdge(dut.clk)
        dut.rst.value = 1
        for _ in range(4):
            await FallingEdge(dut.clk)
        dut.rst.value = 0

    async def status(self) -> tuple[int, int, int]:
        v = await self.rd(self.addr("STATUS"))
        return self.field("STATUS", "done", v), self.field("STATUS", "busy", v), self.field("STATUS", "error", v)

    async def busy_minus_stall(self) -> int:
        return await self.rd(self.addr("PERF_BUSY")) - await self.rd(self.addr("PERF_STALL"))

    async def db_entry(self, tid: int) -> list[int]:
        """Database entry ``tid``: ``hist_bins`` histogram counters, then zeros, overflow, underflow, total."""
        wpc = self.wpc
        base = self.addr("DATABASE", tid)
        out = []
        for c in range(self.params["hist_bins"] + 4):
            v = 0
            for j in range(wpc):
                v |= (await self.rd(base + 4 * (c * wpc + j))) << (32 * j)
            out.append(v)
        return out


class RtlStop(Exception):
    """The core did not finish a command within its poll budget."""


async def _run_cmd(core: Core, step: dict, payloads, out: dict) -> None:
    from cocotbext.axi import AxiStreamFrame

    i = step["i"]
    before = await core.busy_minus_stall()
    for w in step["words"]:
        await core.wr(core.addr("CMD_PUSH"), w)
    if step.get("load"):
        await core.src.send(AxiStreamFrame(tdata=to_int_words(payloads[step["load"]])))
    got = None
    if step.get("store"):
        frame = await core.sink.recv(compact=False)
        got = list(frame.tdata)
    else:
        await Timer(max(step["expect"] - 8, 1) * CLOCK_NS, "ns")
    for _ in range(10_000):
        done, busy, err = await core.status()
        if done and not busy:
            break
    else:
        raise RtlStop(f"command {i}: not done after 10000 STATUS polls (expected {step['expect']} cycles)")
    took = (await core.busy_minus_stall() - before) & 0xFFFFFFFF
    out[f"c{i}"] = np.array([took, err], dtype=np.int64)
    if got is not None:
        out[f"s{i}"] = from_int_words(got, core.params["lanes"])
    if step.get("db") is not None:
        out[f"d{i}"] = np.array(await core.db_entry(step["db"]), dtype=np.int64)


@cocotb.test()
async def replay(dut):
    """Run ``$DLU_RTL_PROGRAM`` and write ``results.npz`` beside it."""
    prog_path = Path(os.environ["DLU_RTL_PROGRAM"])
    prog = json.loads(prog_path.read_text())
    payloads = np.load(prog_path.with_name("payloads.npz"))
    manifest = json.loads(Path(prog["manifest"]).read_text())
    core = Core(dut, manifest)
    await core.reset()
    out: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    from cocotb.utils import get_sim_time

    c0 = get_sim_time("ns")
    error = ""
    try:
        digest = await core.rd(core.addr("CONFIG_DIGEST"))
        want = int(manifest["config_digest"][:8], 16)
        if digest != want:
            raise RtlStop(f"CONFIG_DIGEST reads {digest:#010x}, the manifest says {want:#010x}: wrong netlist")
        await core.wr(core.addr("THRESHOLD"), prog["threshold"])
        await core.wr(core.addr("SEED"), prog["seed"])
        progress = prog_path.with_name("progress")
        last = time.perf_counter()
        for n, step in enumerate(prog["steps"]):
            if time.perf_counter() - last > 0.5:  # for the host's progress bar: steps done, cycles run
                progress.with_name(".progress").write_text(f"{n} {(get_sim_time('ns') - c0) / CLOCK_NS:.0f}")
                os.replace(progress.with_name(".progress"), progress)
                last = time.perf_counter()
            op = step["op"]
            if op == "setting":
                await core.wr(core.addr("SETTINGS", step["tid"]), step["word"])
            elif op == "settings":
                out[step["key"]] = np.array([await core.rd(core.addr("SETTINGS", t)) for t in step["tids"]],
                                            dtype=np.int64)
            elif op == "rng":
                for i, v in enumerate(step["states"]):
                    await core.wr(core.addr("RNG_STATE", i), v)
            elif op == "rng_read":
                out[step["key"]] = np.array([await core.rd(core.addr("RNG_STATE", i)) for i in range(step["n"])],
                                            dtype=np.int64)
            elif op == "cmd":
                await _run_cmd(core, step, payloads, out)
            else:
                raise ValueError(f"program step {step}: unknown op {op!r}")
    except RtlStop as exc:
        error = str(exc)
    wall = time.perf_counter() - t0
    cycles = (get_sim_time("ns") - c0) / CLOCK_NS
    out["_speed"] = np.array([cycles, wall])
    res = prog_path.with_name("results.npz")
    tmp = res.with_name(".results.tmp.npz")
    np.savez(tmp, **out, _error=np.array(error))
    os.replace(tmp, res)
    assert not error, error
