"""SimdMacLane: one 32-bit SIMD lane, one 32x32, two 16x16 or four 8x8 multiply-accumulates per cycle.

Golden twins: the exact integer products and sums of :func:`reference.ops.matmul`
(``_int_matmul``) and :func:`reference.ops.mul`, accumulated in
:func:`reference.formats.acc_width` bits.
"""

from collections.abc import Iterable

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from reference.formats import Width, acc_width

from .settings import width_mux

#: Bits of a lane word.
LANE_BITS = 32
#: Sub-lanes at the narrowest width (8 bits): the number of bytes of a lane word.
SUB_LANES = LANE_BITS // 8
#: Widest accumulator (32-bit operands) and widest product.
ACC_MAX = acc_width(Width.W32)
PRODUCT_BITS = 2 * LANE_BITS
#: Granule of the segmented adder: every accumulator boundary (32, 48, 64, 80, 96) is a multiple.
_CHUNK = 16


def segments(width: Width) -> list[tuple[int, int]]:
    """(offset, bits) of each sub-lane's accumulator in the lane's storage at ``width``."""
    bits = acc_width(width)
    return [(s * bits, bits) for s in range(width.lanes_per_word)]


def check_widths(widths: object, name: str = "widths") -> tuple[Width, ...]:
    """Validate a constructor's ``widths`` argument: a non-empty set of :class:`Width`, narrowest first."""
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Iterable):
        raise TypeError(f"{name}: expected an iterable of reference.formats.Width, got {widths!r}")
    widths = tuple(widths)
    for w in widths:
        if not isinstance(w, Width):
            raise TypeError(f"{name}: {w!r} is not a reference.formats.Width")
    if not widths or len(set(widths)) != len(widths):
        raise ValueError(f"{name}: {widths!r} must name each width at most once, and at least one")
    return tuple(sorted(widths))


def tree_sum(terms: list):
    """Sum of ``terms`` as a balanced binary tree of adders (depth ceil(log2 n), not a chain of n - 1)."""
    if not terms:
        return Const(0, 1)
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
    return terms[0]


def shifted_tree_sum(terms: list[tuple[object, int]]):
    """``sum(v << k for v, k in terms)`` for signed ``v``, as a balanced tree of adders that
    are only as wide as the overlap of their operands: the bits of the lower-shifted operand
    below the other's shift pass through, only the rest is added (``a + (b << d)`` is
    ``Cat(a[:d], (a >> d) + b)``). Returns a signed value of the sum at the smallest shift."""
    if not terms:
        return Const(0, 1)
    items = sorted(((v.as_signed(), k) for v, k in terms), key=lambda t: t[1])
    while len(items) > 1:
        nxt = []
        for i in range(0, len(items) - 1, 2):
            (a, ka), (b, kb) = items[i], items[i + 1]
            d = kb - ka
            nxt.append((Cat(a[:d], (a >> d) + b).as_signed() if d else a + b, ka))
        if len(items) % 2:
            nxt.append(items[-1])
        items = sorted(nxt, key=lambda t: t[1])
    v, k = items[0]
    return v << k


def _element_top(w: Width, byte: int) -> bool:
    """Whether ``byte`` of a lane word is the top (sign) byte of its element at width ``w``."""
    return byte % (w.bits // 8) == w.bits // 8 - 1


class SimdMacLane(wiring.Component):
    """Multiplier array shared across the supported widths, with the lane's accumulators.

    Only the hardware the supported ``widths`` need is built. With P = ``32 / W`` sub-lanes at
    the narrowest supported width W, the ports have P entries; the accumulator of every
    sub-lane is ``acc_width`` of the widest supported width.

    One width W: ``32 / W`` signed W x W multipliers and as many ``acc_width(W)``-bit
    accumulators, nothing shared.

    Several widths: signed 9x9 multipliers, one per pair (byte i of ``a``, byte j of ``b``)
    that a supported width uses. Each byte is extended by a ninth bit: its sign bit if it is
    the top byte of its element at the current width (every byte at 8 bits; bytes 1 and 3 at
    16 bits; byte 3 at 32 bits), else 0, so ``pp[i][j]`` is the exact signed product of the
    two byte contributions. Element products are then

    - 8 bits, sub-lane s: ``pp[s][s]`` (the diagonal);
    - 16 bits, sub-lane s: ``sum pp[i][j] << 8 * (i + j - 4s)`` over i, j in {2s, 2s + 1}
      (the two diagonal 2x2 blocks);
    - 32 bits: ``sum pp[i][j] << 8 * (i + j)`` over all 16.

    Accumulators: a register as wide as the largest ``(32 / W) * acc_width(W)`` over the
    supported widths (128 bits with 8-bit support: 4 x 32; 96 bits for 16 and 32 bits: 2 x 48
    or 1 x 80), sub-lane s at bit ``s * acc_width(W)``; the adder is one carry chain over
    16-bit chunks with a guard bit between chunks that passes the carry on, or absorbs it at
    every accumulator boundary of the current width. The partial products of an element are
    summed in a balanced tree of adders no wider than their operands overlap
    (:func:`shifted_tree_sum`).

    Sums wrap modulo ``2**acc_width(W)``, which never happens for K <= ``MAX_K``.

    One step per cycle with ``en``: each accumulator becomes ``acc + a_s * b_s``, or
    ``a_s * b_s`` with ``clear``, or ``load_value[s]`` (truncated to the accumulator) with
    ``load``, which wins.

    Parameters
    ----------
    widths
        The supported :class:`reference.formats.Width` s (default: all); ``CoreConfig.supported_widths``
        in the core.

    Members
    -------
    width : In(2)
        :class:`reference.formats.Width` code; a code of no supported width (3, say) is
        treated as the widest supported width.
    a, b : In(32)
        Packed lane words: element s at bits ``[s * W, (s + 1) * W)``, two's complement.
    en, clear, load : In(1)
    load_value : In(ArrayLayout(signed(acc_width(widest)), P))
        Per sub-lane value for ``load`` (entries past ``32 / W`` are ignored).
    product : Out(ArrayLayout(signed(2 * widest.bits), P))
        Per sub-lane product ``a_s * b_s`` of this cycle's words (combinational; 0 past ``32 / W``).
    acc : Out(ArrayLayout(signed(acc_width(widest)), P))
        Per sub-lane accumulator, sign-extended (0 past ``32 / W``).

    Raises
    ------
    TypeError, ValueError
        ``widths`` is not a non-empty collection of distinct ``Width`` s.
    """

    def __init__(self, widths: Iterable[Width] = tuple(Width)) -> None:
        self.widths = check_widths(widths)
        self.sub_lanes = self.widths[0].lanes_per_word
        self.acc_bits = acc_width(self.widths[-1])
        self.product_bits = 2 * self.widths[-1].bits
        self.store_bits = max(w.lanes_per_word * acc_width(w) for w in self.widths)
        super().__init__({
            "width": In(2),
            "a": In(LANE_BITS),
            "b": In(LANE_BITS),
            "en": In(1),
            "clear": In(1),
            "load": In(1),
            "load_value": In(data.ArrayLayout(signed(self.acc_bits), self.sub_lanes)),
            "product": Out(data.ArrayLayout(signed(self.product_bits), self.sub_lanes)),
            "acc": Out(data.ArrayLayout(signed(self.acc_bits), self.sub_lanes)),
        })

    def elaborate(self, platform) -> Module:
        if len(self.widths) == 1:
            return self._single_width(self.widths[0])
        m = Module()
        widths = self.widths
        P = self.sub_lanes  # noqa: N806 (the sub-lane count of the docstring)

        def by_width(opts: dict):
            return width_mux(self.width, opts)

        # is_w: the current width is w (the widest takes every other code, as width_mux does)
        is_w = {w: self.width == w for w in widths[:-1]}
        rest = Const(1, 1)
        for w in widths[:-1]:
            rest = rest & ~is_w[w]
        is_w[widths[-1]] = rest

        # ---- shared 9x9 partial products --------------------------------------------------
        def ext(word, i):
            tops = [w for w in widths if _element_top(w, i)]
            top = Const(1, 1) if len(tops) == len(widths) else Const(0, 1)
            if len(tops) != len(widths):
                for w in tops:
                    top = top | is_w[w]
            byte = word[8 * i:8 * i + 8]
            return Cat(byte, top & byte[7]).as_signed()

        def blocks(w: Width) -> list[tuple[int, ...]]:
            n = w.bits // 8
            return [tuple(range(s * n, (s + 1) * n)) for s in range(w.lanes_per_word)]

        needed = sorted({(i, j) for w in widths for idx in blocks(w) for i in idx for j in idx})
        pp = {}
        for i, j in needed:
            pp[i, j] = Signal(signed(18), name=f"pp{i}{j}")
            m.d.comb += pp[i, j].eq(ext(self.a, i) * ext(self.b, j))

        def combine(idx):
            base = min(idx)
            return shifted_tree_sum([(pp[i, j], 8 * (i + j - 2 * base)) for i in idx for j in idx])

        prods = {w: [combine(idx) for idx in blocks(w)] for w in widths}
        for s in range(P):
            m.d.comb += self.product[s].eq(by_width({w: prods[w][s] if s < len(prods[w]) else 0 for w in widths}))

        # ---- place per-sub-lane values into the accumulator storage -----------------------
        sb = self.store_bits

        def place(values, name: str) -> Signal:
            out = Signal(sb, name=name)
            opts = {}
            for w in widths:
                fields = []
                for s, (_, bits) in enumerate(segments(w)):
                    f = Signal(signed(bits), name=f"{name}_w{w.bits}_{s}")
                    m.d.comb += f.eq(values[s])  # sign-extends or truncates to the accumulator
                    fields.append(f)
                opts[w] = Cat(*fields)
            m.d.comb += out.eq(by_width(opts))
            return out

        store = Signal(sb)
        addend = place([self.product[s] for s in range(P)], "addend")
        loaded = place([self.load_value[s] for s in range(P)], "loaded")
        base = Signal(sb)
        m.d.comb += base.eq(Mux(self.clear, 0, store))

        # ---- segmented adder --------------------------------------------------------------
        # One carry chain over the whole store with a guard bit before every chunk but the
        # first: a + b guard bits of 1 + 0 pass a carry on into the next chunk, 0 + 0 absorb it
        # (a cut at an accumulator boundary of the current width). An FPGA maps this to one
        # uninterrupted carry chain instead of leaving it at every chunk for the cut logic.
        cut = {w: {off // _CHUNK for off, _ in segments(w)} for w in widths}
        xa, xb, spans = [], [], []
        pos = 0
        for c in range(-(-sb // _CHUNK)):
            lo, hi = c * _CHUNK, min((c + 1) * _CHUNK, sb)
            if c:
                pass_carry = Signal(name=f"carry_pass{c}")
                m.d.comb += pass_carry.eq(by_width({w: int(c not in cut[w]) for w in widths}))
                xa.append(pass_carry)
                xb.append(Const(0, 1))
                pos += 1
            xa.append(base[lo:hi])
            xb.append(addend[lo:hi])
            spans.append((pos, pos + hi - lo))
            pos += hi - lo
        wide = Signal(pos, name="sum_guarded")
        m.d.comb += wide.eq(Cat(*xa) + Cat(*xb))
        total = [wide[a:b] for a, b in spans]

        with m.If(self.en):
            m.d.sync += store.eq(Mux(self.load, loaded, Cat(*total)))

        # ---- read the accumulators out ----------------------------------------------------
        def read(w: Width, s: int):
            segs = segments(w)
            if s >= len(segs):
                return Const(0, signed(self.acc_bits))
            off, bits = segs[s]
            return store[off:off + bits].as_signed()

        for s in range(P):
            m.d.comb += self.acc[s].eq(by_width({w: read(w, s) for w in widths}))
        return m

    def _single_width(self, w: Width) -> Module:
        """One supported width: independent W x W multipliers and ``acc_width(W)``-bit accumulators."""
        m = Module()
        for s in range(w.lanes_per_word):
            a = self.a[s * w.bits:(s + 1) * w.bits].as_signed()
            b = self.b[s * w.bits:(s + 1) * w.bits].as_signed()
            m.d.comb += self.product[s].eq(a * b)
            acc = Signal(signed(self.acc_bits), name=f"acc{s}")
            with m.If(self.en):
                m.d.sync += acc.eq(Mux(self.load, self.load_value[s], Mux(self.clear, 0, acc) + self.product[s]))
            m.d.comb += self.acc[s].eq(acc)
        return m
