"""SimdMacLane: one 32-bit SIMD lane, one 32x32, two 16x16 or four 8x8 multiply-accumulates per cycle.

Golden twins: the exact integer products and sums of :func:`reference.ops.matmul`
(``_int_matmul``) and :func:`reference.ops.mul`, accumulated in
:func:`reference.formats.acc_width` bits.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from reference.formats import Width, acc_width

#: Bits of a lane word.
LANE_BITS = 32
#: Sub-lanes at the narrowest width (8 bits): the number of bytes of a lane word.
SUB_LANES = LANE_BITS // 8
#: Widest accumulator (32-bit operands) and widest product.
ACC_MAX = acc_width(Width.W32)
PRODUCT_BITS = 2 * LANE_BITS
#: Accumulator storage: four 32-bit accumulators fill it; 2 x 48 and 1 x 80 fit.
STORE_BITS = SUB_LANES * acc_width(Width.W8)
#: Granule of the segmented adder: every accumulator boundary (32, 48, 64, 80, 96) is a multiple.
_CHUNK = 16


def segments(width: Width) -> list[tuple[int, int]]:
    """(offset, bits) of each sub-lane's accumulator in the lane's storage at ``width``."""
    bits = acc_width(width)
    return [(s * bits, bits) for s in range(width.lanes_per_word)]


class SimdMacLane(wiring.Component):
    """Multiplier array shared across widths, with the lane's accumulators.

    Multiplier scheme: 16 signed 9x9 multipliers, one per pair (byte i of ``a``, byte j of
    ``b``). Each byte is extended by a ninth bit: its sign bit if it is the top byte of its
    element at the current width (every byte at 8 bits; bytes 1 and 3 at 16 bits; byte 3 at
    32 bits), else 0, so ``pp[i][j]`` is the exact signed product of the two byte
    contributions. Element products are then

    - 8 bits, sub-lane s: ``pp[s][s]`` (the diagonal);
    - 16 bits, sub-lane s: ``sum pp[i][j] << 8 * (i + j - 4s)`` over i, j in {2s, 2s + 1}
      (the two diagonal 2x2 blocks);
    - 32 bits: ``sum pp[i][j] << 8 * (i + j)`` over all 16.

    Accumulators: a 128-bit register holding ``acc_width(W)``-bit accumulators (4 x 32,
    2 x 48 or 1 x 80 bits, sub-lane s at bit ``s * acc_width(W)``); the adder is cut into
    16-bit chunks whose carry-in is cut at every accumulator boundary of the current width.
    Sums wrap modulo ``2**acc_width(W)``, which never happens for K <= ``MAX_K``.

    One step per cycle with ``en``: each accumulator becomes ``acc + a_s * b_s``, or
    ``a_s * b_s`` with ``clear``, or ``load_value[s]`` (truncated to the accumulator) with
    ``load``, which wins.

    Members
    -------
    width : In(2)
        :class:`reference.formats.Width` code (code 3 is treated as 32 bits).
    a, b : In(32)
        Packed lane words: element s at bits ``[s * W, (s + 1) * W)``, two's complement.
    en, clear, load : In(1)
    load_value : In(ArrayLayout(signed(80), 4))
        Per sub-lane value for ``load`` (entries past ``32 / W`` are ignored).
    product : Out(ArrayLayout(signed(64), 4))
        Per sub-lane product ``a_s * b_s`` of this cycle's words (combinational; 0 past ``32 / W``).
    acc : Out(ArrayLayout(signed(80), 4))
        Per sub-lane accumulator, sign-extended (0 past ``32 / W``).
    """

    width: In(2)
    a: In(LANE_BITS)
    b: In(LANE_BITS)
    en: In(1)
    clear: In(1)
    load: In(1)
    load_value: In(data.ArrayLayout(signed(ACC_MAX), SUB_LANES))
    product: Out(data.ArrayLayout(signed(PRODUCT_BITS), SUB_LANES))
    acc: Out(data.ArrayLayout(signed(ACC_MAX), SUB_LANES))

    def elaborate(self, platform) -> Module:
        m = Module()
        is8 = self.width == Width.W8
        is16 = self.width == Width.W16
        is32 = ~is8 & ~is16

        # ---- 16 shared 9x9 partial products -----------------------------------------------
        def ext(word, i):
            top = is8 | (is16 & (i % 2 == 1)) | (is32 & (i == SUB_LANES - 1))
            byte = word[8 * i:8 * i + 8]
            return Cat(byte, top & byte[7]).as_signed()

        pp = [[Signal(signed(18), name=f"pp{i}{j}") for j in range(SUB_LANES)] for i in range(SUB_LANES)]
        for i in range(SUB_LANES):
            for j in range(SUB_LANES):
                m.d.comb += pp[i][j].eq(ext(self.a, i) * ext(self.b, j))

        def combine(idx):
            base = min(idx)
            return sum(pp[i][j] << (8 * (i + j - 2 * base)) for i in idx for j in idx)

        prods = {
            Width.W8: [pp[s][s] for s in range(4)],
            Width.W16: [combine((0, 1)), combine((2, 3))],
            Width.W32: [combine((0, 1, 2, 3))],
        }
        for s in range(SUB_LANES):
            m.d.comb += self.product[s].eq(Mux(is8, prods[Width.W8][s],
                                               Mux(is16, prods[Width.W16][s] if s < 2 else 0,
                                                   prods[Width.W32][0] if s == 0 else 0)))

        # ---- place per-sub-lane values into the accumulator storage -----------------------
        def place(values, name: str) -> Signal:
            out = Signal(STORE_BITS, name=name)
            for w in Width:
                fields = []
                for s, (_, bits) in enumerate(segments(w)):
                    f = Signal(signed(bits), name=f"{name}_w{w.bits}_{s}")
                    m.d.comb += f.eq(values[s])  # sign-extends or truncates to the accumulator
                    fields.append(f)
                with m.If(self.width == w if w != Width.W32 else is32):
                    m.d.comb += out.eq(Cat(*fields))
            return out

        store = Signal(STORE_BITS)
        addend = place([self.product[s] for s in range(SUB_LANES)], "addend")
        loaded = place([self.load_value[s] for s in range(SUB_LANES)], "loaded")
        base = Signal(STORE_BITS)
        m.d.comb += base.eq(Mux(self.clear, 0, store))

        # ---- segmented adder --------------------------------------------------------------
        cut = {w: {off // _CHUNK for off, _ in segments(w)} for w in Width}
        total = []
        carry = Const(0, 1)
        for c in range(STORE_BITS // _CHUNK):
            kill = Mux(is8, c in cut[Width.W8], Mux(is16, c in cut[Width.W16], c in cut[Width.W32]))
            s = Signal(_CHUNK + 1, name=f"sum_chunk{c}")
            sl = slice(c * _CHUNK, (c + 1) * _CHUNK)
            m.d.comb += s.eq(base[sl] + addend[sl] + (carry & ~kill))
            total.append(s[:_CHUNK])
            carry = s[_CHUNK]

        with m.If(self.en):
            m.d.sync += store.eq(Mux(self.load, loaded, Cat(*total)))

        # ---- read the accumulators out ----------------------------------------------------
        def read(w: Width, s: int):
            segs = segments(w)
            if s >= len(segs):
                return Const(0, signed(ACC_MAX))
            off, bits = segs[s]
            return store[off:off + bits].as_signed()

        for s in range(SUB_LANES):
            m.d.comb += self.acc[s].eq(Mux(is8, read(Width.W8, s), Mux(is16, read(Width.W16, s), read(Width.W32, s))))
        return m
