"""A minimal AXI4-Lite master for Amaranth's simulator (async testbenches).

Drives the flat ``<prefix>_aw*``/``w*``/``b*``/``ar*``/``r*`` ports of a component, the same
names cocotbext-axi's ``AxiLiteMaster`` uses on the Verilog.
"""

from __future__ import annotations


class AxiLiteTimeout(AssertionError):
    pass


class AxiLiteMaster:
    def __init__(self, dut, prefix: str = "s_axil", timeout: int = 200) -> None:
        self.dut, self.prefix, self.timeout = dut, prefix, timeout

    def _s(self, name: str):
        return getattr(self.dut, f"{self.prefix}_{name}")

    async def write(self, ctx, addr: int, value: int, strb: int = 0xF) -> int:
        """Write one word with byte strobes ``strb``; returns BRESP."""
        s = self._s
        ctx.set(s("awaddr"), addr)
        ctx.set(s("awvalid"), 1)
        ctx.set(s("wdata"), value & 0xFFFFFFFF)
        ctx.set(s("wstrb"), strb)
        ctx.set(s("wvalid"), 1)
        ctx.set(s("bready"), 1)
        aw = w = False
        for _ in range(self.timeout):
            aw_hs = not aw and ctx.get(s("awready"))
            w_hs = not w and ctx.get(s("wready"))
            b = ctx.get(s("bvalid"))
            resp = ctx.get(s("bresp"))
            await ctx.tick()
            if aw_hs:
                aw = True
                ctx.set(s("awvalid"), 0)
            if w_hs:
                w = True
                ctx.set(s("wvalid"), 0)
            if b:
                ctx.set(s("bready"), 0)
                return resp
        raise AxiLiteTimeout(f"AXI4-Lite write to {addr:#x}: no response in {self.timeout} cycles")

    async def push(self, ctx, addr: int, words: list[int], attempts: int = 10_000) -> int:
        """Write a command's words to CMD_PUSH at ``addr``; while its last word answers SLVERR
        (FIFO full: the command was dropped) write the whole command again. Returns the number
        of refusals."""
        for refused in range(attempts):
            for w in words[:-1]:
                assert await self.write(ctx, addr, w) == 0, f"CMD_PUSH word {w:#x} refused"
            resp = await self.write(ctx, addr, words[-1])
            if resp == 0:
                return refused
            assert resp == 2, f"CMD_PUSH: BRESP {resp}"
        raise AxiLiteTimeout(f"CMD_PUSH: command refused {attempts} times")

    async def read_resp(self, ctx, addr: int) -> tuple[int, int]:
        """Read one word; returns (data, RRESP)."""
        s = self._s
        ctx.set(s("araddr"), addr)
        ctx.set(s("arvalid"), 1)
        ctx.set(s("rready"), 1)
        ar = False
        for _ in range(self.timeout):
            ar_hs = not ar and ctx.get(s("arready"))
            r = ctx.get(s("rvalid"))
            rdata, rresp = ctx.get(s("rdata")), ctx.get(s("rresp"))
            await ctx.tick()
            if ar_hs:
                ar = True
                ctx.set(s("arvalid"), 0)
            if r:
                ctx.set(s("rready"), 0)
                return rdata, rresp
        raise AxiLiteTimeout(f"AXI4-Lite read of {addr:#x}: no response in {self.timeout} cycles")

    async def read(self, ctx, addr: int) -> int:
        data, resp = await self.read_resp(ctx, addr)
        assert resp == 0, f"AXI4-Lite read of {addr:#x}: RRESP={resp}"
        return data
