"""docs/examples/host_example.py, the programming guide's Python host program, on the generated core.

The example talks to the core only through ``dlu_regs.py`` from ``dlu gen``'s output and a bus
object; here the bus is cocotbext-axi's AXI4-Lite master and AXI4-Stream source/sink on the
Verilog of the tiny preset (the build of test_core.py, shared). Its results are compared as
exact integers with :class:`testbenches.cocotb.core_model.CoreModel`, which is built only from
``reference/``, running the same commands.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import cocotb
import pytest

from testbenches.cocotb import tbutil

ROOT = Path(__file__).resolve().parents[2]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Bus:
    """The example's bus interface on cocotbext-axi models."""

    def __init__(self, dut):
        import logging

        from cocotbext.axi import AxiLiteBus, AxiLiteMaster, AxiStreamBus, AxiStreamSink, AxiStreamSource

        self.axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil"), dut.clk, dut.rst)
        self.src = AxiStreamSource(AxiStreamBus.from_prefix(dut, "s_axis"), dut.clk, dut.rst, byte_lanes=1)
        self.sink = AxiStreamSink(AxiStreamBus.from_prefix(dut, "m_axis"), dut.clk, dut.rst, byte_lanes=1)
        for m in (self.axil.write_if, self.axil.read_if, self.src, self.sink):
            m.log.setLevel(logging.WARNING)
        self.received: list[int] = []

    async def write(self, addr: int, value: int) -> int:
        return int((await self.axil.write(addr, (value & 0xFFFFFFFF).to_bytes(4, "little"))).resp)

    async def read(self, addr: int) -> tuple[int, int]:
        r = await self.axil.read(addr, 4)
        return int.from_bytes(r.data, "little"), int(r.resp)

    def stream_send(self, words: list[int]) -> None:
        from cocotbext.axi import AxiStreamFrame

        self.src.send_nowait(AxiStreamFrame(tdata=list(words)))

    async def stream_recv(self, n: int) -> list[int]:
        while len(self.received) < n:
            self.received += list((await self.sink.recv(compact=False)).tdata)
        out, self.received = self.received[:n], self.received[n:]
        return out


@cocotb.test(timeout_time=50_000_000, timeout_unit="ns")
async def python_host_example(dut):
    """The example on random 16-bit inputs (seeded), against CoreModel."""
    from reference.config import load_config
    from reference.formats import TensorSetting
    from reference.isa import Command, Ctl, ErrorCode
    from reference.ops import Op
    from testbenches.cocotb.core_model import CoreModel

    rng, _ = tbutil.test_rng("python_host_example", dut._log)
    ex = _load(ROOT / "docs" / "examples" / "host_example.py", "host_example")
    regs = _load(Path(os.environ["DLU_GEN_DIR"]) / "dlu_regs.py", "dlu_regs")
    cfg = load_config(os.environ["DLU_CONFIG"])
    tb = tbutil.Clocked(dut)
    bus = Bus(dut)
    await tb.reset()
    for _ in range(tbutil.iterations(3)):
        x = [[rng.randint(-(1 << 15), (1 << 15) - 1) for _ in range(ex.COLS)] for _ in range(ex.X_ROWS)]
        # mostly small biases; the extremes saturate y (16 bits) and then e
        bias = [rng.randint(-999, 999) if rng.random() < 0.8 else rng.choice([-(1 << 15), (1 << 15) - 1])
                for _ in range(ex.COLS)]
        got = await ex.main(bus, regs, x, bias)

        # The same program on the golden model.
        model = CoreModel(cfg)
        w = {t: ex.setting(regs, *a) for t, a in ((ex.TID_X, (regs.WIDTH_16, 8, regs.ROUND_FLOOR)),
                                                   (ex.TID_BIAS, (regs.WIDTH_16, 6, regs.ROUND_FLOOR)),
                                                   (ex.TID_Y, (regs.WIDTH_16, 7, regs.ROUND_FLOOR)),
                                                   (ex.TID_E, (regs.WIDTH_8, -1, regs.ROUND_NEAREST_EVEN)))}
        for t, word in w.items():
            assert model.write_setting(t, word)
        assert TensorSetting.decode(w[ex.TID_E]).fmt.frac == -1
        assert not model.write_setting(7, 3)
        bad = model.error
        model.clear_error()
        sw = cfg.spad_words
        prog = [(Command(int(Ctl.CLEAR_STATS), broadcast_b=True), None),
                (Command(int(Ctl.LOAD), addr_d=0, k=len(ex.pack(x, 16, regs))), ex.pack(x, 16, regs)),
                (Command(int(Ctl.LOAD), addr_d=sw, k=len(ex.pack([bias], 16, regs))), ex.pack([bias], 16, regs)),
                (Command(int(Op.ADD), broadcast_b=True, tid_a=0, tid_b=1, tid_d=2, addr_a=0, addr_b=sw,
                         addr_d=2 * sw, m=ex.X_ROWS, n=ex.COLS), None),
                (Command(int(Op.CONVERT), tid_a=2, tid_d=3, addr_a=2 * sw, addr_d=3 * sw, m=ex.X_ROWS, n=ex.COLS),
                 None)]
        macs0 = model.perf_macs
        for cmd, words in prog:
            assert model.execute(cmd, words).error == ErrorCode.NONE
        e = model.read_tensor(3 * sw, ex.X_ROWS, ex.COLS, model.settings[3].fmt)
        stats = model.db.read(3)
        want = {"e": e.data.tolist(), "error": 0, "bad_setting": (2, int(ErrorCode.BAD_SETTING)),
                "e_stats": [int(v) for v in stats.hist] + [stats.zeros, stats.overflow, stats.underflow, stats.total],
                "macs": 0}
        assert int(bad) == int(ErrorCode.BAD_SETTING)
        # PERF_MACS counts only MATMUL, MUL and AXPY (reference.isa.macs): 0 here, never reset.
        assert model.perf_macs == macs0
        assert got == want, f"x={x} bias={bias}: core {got}, golden {want}"
        dut._log.info("host example: e = %s, stats of e %s", got["e"], got["e_stats"])


def _gen(config: str) -> tuple[Path, Path, Path]:
    from testbenches.cocotb import harness
    from testbenches.cocotb.test_core import generate

    bdir = harness.build_dir(config, "core")
    v, man = generate(config, bdir / "gen")
    return bdir, v, man


@pytest.mark.parametrize("config", ["tiny"])
def test_python_host_example(config, record_property):
    from reference.config import load_config
    from testbenches.cocotb import harness

    harness.require("hw.core", "DLUCore")
    _, v, man = _gen(config)
    harness.run(module="testbenches.cocotb.test_host_example", top="dlu_core", config=config, block="core",
                sources=[v], record_property=record_property, cfg=load_config(config),
                testcase="python_host_example",
                extra_env={"DLU_GEN_DIR": str(v.parent), "DLU_MANIFEST": str(man), "DLU_ITERS": "3"})
    assert json.loads(man.read_text())["config"] == load_config(config).to_dict()
