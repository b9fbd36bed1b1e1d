"""Tiling of matrix products and elementwise commands onto the scratchpad, and network timing.

:func:`matmul_commands` maps one product ``a[M, K] @ b[K, N]`` whose operands are in host memory
onto the core: tiles ``a[mt, kt]``, ``b[kt, nt]`` and ``d[mt, nt]`` in three banks (each at most
``spad_words`` words), K chunks summed in the accumulator memory (:class:`reference.isa.Accumulate`,
so an output tile of an accumulating product has at most ``acc_beats`` beats), results STOREd.
Loop order: with one K chunk, the operand of one tile row (``a``: order ``"a"``) or one tile
column (``b``: order ``"b"``) stays in its bank while the other operand's tiles stream past; with
several K chunks every output tile streams its chunks of both. Every command is legal by
:func:`reference.isa.check_command` and timed by :func:`reference.isa.cycles`.

Tile policy (:func:`choose`), for today's in-order core whose transfers do not overlap compute:

1. one K chunk when a ``[K, V]`` column of ``b`` fits a bank (``K <= spad_words`` for one beat
   of columns), else chunks of as many rows of ``b`` as a bank holds;
2. with one chunk: ``b``'s tile as wide as its bank allows, ``a``'s tile as tall as its bank and
   the result's bank allow; with several chunks: the output tile as large as the accumulator
   memory allows (``mt * ceil(nt / V) <= acc_beats``), tallest first, then K chunks as long as
   both operand tiles allow;
3. the loop order that moves fewer words.

:func:`exhaustive` searches every power-of-two tile size (and the whole dimension) with both
orders and returns the fastest, to measure how far the policy is from it (docs/simulator.md).

:func:`time_network` times one training iteration of a network of :mod:`reference.nets` from its
description alone: per layer and pass the products of :func:`sim.scale.layer_costs` (convolutions
through host im2col, as :mod:`reference.layers` forms them), bias adds, ReLUs and the three AXPYs of
the update, each tiled here with its operands from host memory and its result back to it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

from reference import isa
from reference.config import CoreConfig
from reference.formats import DfpFormat, RoundingMode, TensorSetting, Width
from reference.isa import Accumulate, Command, Ctl
from reference.ops import Op

from .core import Pass, SimCommand, activity

#: Tensor ids of the tiled commands (a, b, d); their settings are :func:`settings_for`'s.
TID_A, TID_B, TID_D = 0, 1, 2


def settings_for(width: Width) -> dict[int, TensorSetting]:
    """The settings the tiled commands run with (all three tensors at ``width``)."""
    s = TensorSetting(DfpFormat(width, 0), RoundingMode.NEAREST_EVEN, True)
    return {TID_A: s, TID_B: s, TID_D: s}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Tiling:
    """Tile sizes of one product and its loop order (``"a"`` or ``"b"``: which operand stays)."""

    mt: int
    nt: int
    kt: int
    order: str = "a"

    def legal(self, m: int, k: int, n: int, width: Width, cfg: CoreConfig) -> bool:
        v = cfg.values_per_beat(width)
        sw = cfg.spad_words
        mt, nt, kt = min(self.mt, m), min(self.nt, n), min(self.kt, k)
        if min(mt, nt, kt) < 1 or max(mt, nt) > isa.MAX_DIM or kt > isa.MAX_K:
            return False
        if mt * _cdiv(kt, v) > sw or kt * _cdiv(nt, v) > sw or mt * _cdiv(nt, v) > sw:
            return False
        return kt >= k or mt * _cdiv(nt, v) <= cfg.acc_beats


def _sizes(total: int, tile: int) -> list[tuple[int, int]]:
    """(size, count) of the tiles that cut ``total`` into pieces of ``tile`` (the last one shorter)."""
    full, rest = divmod(total, tile)
    return [(tile, full)] + ([(rest, 1)] if rest else []) if full else [(rest, 1)]


def cost(m: int, k: int, n: int, width: Width, cfg: CoreConfig, t: Tiling) -> tuple[int, int]:
    """(cycles, bus words) of :func:`matmul_commands` with tiling ``t``, in closed form."""
    v = cfg.values_per_beat(width)
    fixed = isa.SETUP_CYCLES + isa.DRAIN_CYCLES
    ms, ns, ks = _sizes(m, min(t.mt, m)), _sizes(n, min(t.nt, n)), _sizes(k, min(t.kt, k))
    n_m, n_n, n_k = sum(c for _, c in ms), sum(c for _, c in ns), sum(c for _, c in ks)
    # per-dimension sums over the tiles
    rows = m
    beats_n = sum(_cdiv(s, v) * c for s, c in ns)
    a_words = sum(s * c for s, c in ms) * sum(_cdiv(s, v) * c for s, c in ks)  # = M * sum ceil(kc/V)
    b_words = k * beats_n
    d_words = rows * beats_n
    mm_cycles = n_m * n_n * n_k * fixed + rows * beats_n * k
    if n_k == 1:
        # order "a": each a tile once, b tiles once per tile row (once in all if one tile column)
        a_loads, b_loads = (n_m, n_m * n_n if n_n > 1 else 1) if t.order == "a" else \
            (n_m * n_n if n_m > 1 else 1, n_n)
        a_moved = a_words * (1 if t.order == "a" or n_m == 1 else n_n)
        b_moved = b_words * (1 if t.order == "b" or n_n == 1 else n_m)
    else:
        a_loads, b_loads = n_m * n_n * n_k, n_m * n_n * n_k
        a_moved, b_moved = a_words * n_n, b_words * n_m
    words = a_moved + b_moved + d_words
    cycles = mm_cycles + (a_loads + b_loads + n_m * n_n) * fixed + words
    return cycles, words


def choose(m: int, k: int, n: int, width: Width, cfg: CoreConfig) -> Tiling:
    """The tile policy of the module docstring."""
    v = cfg.values_per_beat(width)
    sw = cfg.spad_words
    if k <= min(sw, isa.MAX_K):
        nt = min(n, v * (sw // k), isa.MAX_DIM)
        mt = min(m, sw // _cdiv(k, v), sw // _cdiv(nt, v), isa.MAX_DIM)
        best = None
        for order in ("a", "b"):
            t = Tiling(mt, nt, k, order)
            c = cost(m, k, n, width, cfg, t)
            if best is None or c < best[0]:
                best = (c, t)
        return best[1]
    acc = min(cfg.acc_beats, sw)
    mt = min(m, acc, isa.MAX_DIM)
    nt = min(n, v * max(1, acc // mt), v * (sw // 1), isa.MAX_DIM)
    while mt * _cdiv(nt, v) > acc:
        nt -= v
    kt = min(k, isa.MAX_K, sw // _cdiv(nt, v), (sw // mt) * v)
    return Tiling(mt, nt, kt, "a")


def _candidates(total: int, step: int = 1, also: int | None = None) -> list[int]:
    out, x = {total} | ({min(also, total)} if also else set()), step
    while x < total:
        out.add(x)
        x *= 2
    return sorted(out)


def exhaustive(m: int, k: int, n: int, width: Width, cfg: CoreConfig) -> tuple[Tiling, tuple[int, int]]:
    """The fastest legal tiling over power-of-two tiles, whole dimensions and the policy's own sizes
    (so never slower than :func:`choose`), both loop orders; returns it and its :func:`cost`."""
    v = cfg.values_per_beat(width)
    p = choose(m, k, n, width, cfg)
    best = None
    for mt, nt, kt, order in itertools.product(_candidates(m, 1, p.mt), _candidates(n, v, p.nt),
                                               _candidates(k, 1, p.kt), ("a", "b")):
        t = Tiling(mt, nt, kt, order)
        if not t.legal(m, k, n, width, cfg):
            continue
        c = cost(m, k, n, width, cfg, t)
        if best is None or c < best[1]:
            best = (t, c)
    if best is None:
        raise ValueError(f"tiling: no legal tiling of [{m}, {k}] x [{k}, {n}] at {width.bits} bits")
    return best


class Emitter:
    """Builds timed :class:`sim.core.SimCommand` s for one width (legality checked once per shape).

    With ``aggregate`` the identical commands of one (layer, pass) are merged into one entry
    whose ``repeat`` says how many it stands for (its counters are the totals): a network's
    hundreds of thousands of tiles are counted, not stored.
    """

    def __init__(self, cfg: CoreConfig, width: Width, aggregate: bool = False) -> None:
        self.cfg, self.width, self.aggregate = cfg, width, aggregate
        self.settings = settings_for(width)
        self.out: list[SimCommand] = []
        self._seen: dict[tuple, SimCommand] = {}
        self._counts: dict[tuple, int] = {}
        self.layer, self.pass_ = "-", Pass.CONTROL

    def _template(self, key: tuple) -> SimCommand:
        op, m, n, k, mode, bcast = key
        sw = self.cfg.spad_words
        if op == Ctl.LOAD:
            cmd = Command(Ctl.LOAD, addr_d=0, k=k)
        elif op == Ctl.STORE:
            cmd = Command(Ctl.STORE, addr_a=2 * sw, k=k)
        else:
            two = op not in (Op.RELU, Op.CONVERT)
            cmd = Command(op, tid_d=TID_D, tid_a=TID_A, tid_b=TID_B if two else 0, addr_a=0, addr_b=sw if two else 0,
                          addr_d=2 * sw, m=m, n=n, k=k, alpha=1 if op == Op.AXPY else 0, broadcast_b=bcast,
                          accumulate=mode)
        isa.check_command(cmd, self.settings, self.cfg)
        cyc = isa.cycles(cmd, self.settings, self.cfg)
        if op in (Ctl.LOAD, Ctl.STORE):
            extra = {"bus_words": k, ("spad_write_words" if op == Ctl.LOAD else "spad_read_words"): k}
        else:
            extra = activity(cmd, cyc, self.settings, self.cfg)
        return SimCommand(cmd, cyc, 0, 0, "-", Pass.CONTROL, self.width, **extra)

    def emit(self, op: int, m: int = 1, n: int = 1, k: int = 1, mode: Accumulate = Accumulate.SINGLE,
             bcast: bool = False) -> None:
        key = (op, m, n, k, mode, bcast)
        if key not in self._seen:
            self._seen[key] = self._template(key)
        if self.aggregate:
            ck = (self.layer, self.pass_, key)
            self._counts[ck] = self._counts.get(ck, 0) + 1
        else:
            t = self._seen[key]
            self.out.append(replace(t, record=len(self.out), layer=self.layer, pass_=self.pass_))

    def commands(self) -> list[SimCommand]:
        """The stream (or, aggregated, one entry per distinct command of each layer and pass)."""
        if not self.aggregate:
            return self.out
        out = []
        for (layer, pass_, key), n in self._counts.items():
            t = self._seen[key]
            out.append(replace(t, cycles=t.cycles * n, record=len(out), layer=layer, pass_=pass_, repeat=n,
                               compute_cycles=t.compute_cycles * n, macs=t.macs * n, adds=t.adds * n,
                               muls=t.muls * n, values=t.values * n, spad_read_words=t.spad_read_words * n,
                               spad_write_words=t.spad_write_words * n, bus_words=t.bus_words * n))
        return out

    def load(self, words: int) -> None:
        self.emit(Ctl.LOAD, k=words)

    def store(self, words: int) -> None:
        self.emit(Ctl.STORE, k=words)


def matmul_commands(em: Emitter, m: int, k: int, n: int, t: Tiling | None = None) -> Tiling:
    """Emit the commands of ``a[m, k] @ b[k, n]`` (operands in host memory, result STOREd) with
    tiling ``t`` (default :func:`choose`); returns the tiling used."""
    cfg, w = em.cfg, em.width
    t = choose(m, k, n, w, cfg) if t is None else t
    if not t.legal(m, k, n, w, cfg):
        raise ValueError(f"tiling: {t} is not legal for [{m}, {k}] x [{k}, {n}] at {w.bits} bits")
    v = cfg.values_per_beat(w)
    mt, nt, kt = min(t.mt, m), min(t.nt, n), min(t.kt, k)
    chunks = [(k0, min(k, k0 + kt)) for k0 in range(0, k, kt)]
    m_tiles = [(m0, min(mt, m - m0)) for m0 in range(0, m, mt)]
    n_tiles = [(n0, min(nt, n - n0)) for n0 in range(0, n, nt)]
    outer, inner = (m_tiles, n_tiles) if t.order == "a" else (n_tiles, m_tiles)
    loaded_a = loaded_b = None
    for o in outer:
        for i in inner:
            (m0, rows), (n0, cols) = (o, i) if t.order == "a" else (i, o)
            for j, (k0, k1) in enumerate(chunks):
                kc = k1 - k0
                if loaded_a != (m0, k0):
                    em.load(rows * _cdiv(kc, v))
                    loaded_a = (m0, k0)
                if loaded_b != (n0, k0):
                    em.load(kc * _cdiv(cols, v))
                    loaded_b = (n0, k0)
                if len(chunks) == 1:
                    mode = Accumulate.SINGLE
                else:
                    mode = Accumulate.START if j == 0 else \
                        Accumulate.FINISH if k1 == k else Accumulate.CONTINUE
                em.emit(Op.MATMUL, rows, cols, kc, mode)
            em.store(rows * _cdiv(cols, v))
    return t


def elementwise_commands(em: Emitter, op: Op, m: int, n: int, bcast_b: bool = False) -> None:
    """Emit an elementwise command over ``[m, n]`` in row tiles that fit a bank: operands LOADed
    from host memory (a broadcast row once), the result STOREd."""
    v, sw = em.cfg.values_per_beat(em.width), em.cfg.spad_words
    wpr = _cdiv(n, v)
    if wpr > sw:
        raise ValueError(f"tiling: a row of {n} values needs {wpr} words, a bank has {sw}")
    rows = min(m, sw // wpr, isa.MAX_DIM)
    two = op not in (Op.RELU, Op.CONVERT)
    if two and bcast_b:
        em.load(wpr)
    for r0 in range(0, m, rows):
        mt = min(rows, m - r0)
        em.load(mt * wpr)
        if two and not bcast_b:
            em.load(mt * wpr)
        em.emit(op, mt, n, bcast=bcast_b and mt > 1)
        em.store(mt * wpr)


def network_commands(net, batch: int, cfg: CoreConfig, width: Width, aggregate: bool = True) -> list[SimCommand]:
    """The tiled commands of one training iteration of ``net`` (a :class:`reference.nets.Net`) at
    ``batch``, all tensors at ``width``, attributed to (layer, pass).

    Per parameter layer, as :func:`sim.scale.layer_costs` forms the work: forward product and bias
    ADD (a broadcast row); backward weight-gradient product, bias-gradient product (a ones row
    times the error) and, except for the first layer, the input-error product; update three AXPYs
    (weight decay, momentum, step) over the weights and over the biases. A ReLU after a layer adds
    a RELU (forward) and a RELU_BACKWARD (backward) to it. Pooling, LRN, dropout and flatten are
    host data movement (not timed), as in :mod:`reference.layers`.
    """
    from reference.nets import LayerKind, infer_shapes

    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"timing: batch={batch!r}: must be an integer >= 1")
    em = Emitter(cfg, width, aggregate)
    first = True
    last = None
    for s in infer_shapes(net):
        lay = s.layer
        if lay.kind in (LayerKind.CONV, LayerKind.LINEAR):
            if lay.kind is LayerKind.CONV:
                c, h, wd = s.in_shape
                o, ho, wo = s.out_shape
                g = lay.groups
                m, kk, nn = batch * ho * wo, lay.kernel * lay.kernel * c // g, o // g
                err = (batch * h * wd, lay.kernel * lay.kernel * nn, c // g)
            else:
                g, m, kk, nn = 1, batch, s.in_count, lay.out_features
                o = nn
                err = (batch, nn, kk)
            em.layer = last = lay.name
            em.pass_ = Pass.FORWARD
            for _ in range(g):
                matmul_commands(em, m, kk, nn)
            elementwise_commands(em, Op.ADD, m, o, bcast_b=True)
            em.pass_ = Pass.BACKWARD
            for _ in range(g):
                matmul_commands(em, kk, m, nn)
            matmul_commands(em, 1, m, o)
            if not first:
                for _ in range(g):
                    matmul_commands(em, *err)
            em.pass_ = Pass.UPDATE
            for _ in range(3):
                elementwise_commands(em, Op.AXPY, kk * g, nn)
                elementwise_commands(em, Op.AXPY, 1, o)
            first = False
        elif lay.kind is LayerKind.RELU and last is not None:
            rows = batch * (s.out_shape[1] * s.out_shape[2] if len(s.out_shape) == 3 else 1)
            em.layer, em.pass_ = last, Pass.FORWARD
            elementwise_commands(em, Op.RELU, rows, s.out_shape[0])
            em.pass_ = Pass.BACKWARD
            elementwise_commands(em, Op.RELU_BACKWARD, rows, s.out_shape[0])
    return em.commands()


def time_network(net, batch: int, cfg: CoreConfig, width: Width, table=None) -> dict:
    """Results of one training iteration of ``net`` timed from its description alone (no data):
    the counters, utilization, bus bytes and energy in total and per (layer, pass), and the fp32
    counterpart (the same schedule at 32 bits, fp32 energies), as ``dlu replay`` reports them."""
    import time

    from .energy import EnergyTable
    from .replay import _group, _summary

    table = table or EnergyTable()
    t0 = time.perf_counter()
    cmds = network_commands(net, batch, cfg, width)
    fp32 = network_commands(net, batch, cfg, Width.W32)
    wall = time.perf_counter() - t0
    peak = cfg.peak_macs_per_cycle(width)
    by32 = _group(fp32)
    groups = [{"layer": layer, "pass": pass_, **_summary(cs, by32.get((layer, pass_), []), cfg, table, peak)}
              for (layer, pass_), cs in _group(cmds).items()]
    order = {p.value: i for i, p in enumerate(Pass)}
    groups.sort(key=lambda g: order[g["pass"]])
    return {"format": "dlu-timing-results", "version": 1, "net": net.name, "batch": batch, "width": width.bits,
            "config": cfg.to_dict(), "energy_table": table.to_dict(), "peak_macs_per_cycle": peak,
            "totals": _summary(cmds, fp32, cfg, table, peak), "by_layer_pass": groups,
            "speed": {"wall_s": wall}}


#: Products of the policy-against-search table in docs/simulator.md: (name, M, K, N).
COMPARED = (("AlexNet conv1 forward", 96800, 363, 96), ("AlexNet conv1 weight grad", 363, 96800, 96),
            ("AlexNet conv3 forward", 5408, 2304, 384), ("AlexNet fc6 forward", 32, 9216, 4096),
            ("AlexNet fc6 weight grad", 9216, 32, 4096), ("LeNet-5 conv1 weight grad", 25, 18432, 6),
            ("VGG-16 conv1_2 forward", 1605632, 576, 64))


def compare_table(cfg: CoreConfig, widths=(Width.W8, Width.W16)) -> list[str]:
    """Markdown rows: the policy's tiling and cycles against :func:`exhaustive`'s, per product of
    :data:`COMPARED` (``python -m sim.tiling``)."""
    rows = []
    for name, m, k, n in COMPARED:
        for w in widths:
            t = choose(m, k, n, w, cfg)
            c = cost(m, k, n, w, cfg, t)
            b, bc = exhaustive(m, k, n, w, cfg)
            rows.append(f"| {name} [{m}, {k}] x [{k}, {n}] | {w.bits} | {t.mt}x{t.nt}x{t.kt} {t.order} | {c[0]:,} | "
                        f"{b.mt}x{b.nt}x{b.kt} {b.order} | {bc[0]:,} | {c[0] / bc[0]:.3f} |")
    return rows


if __name__ == "__main__":
    from reference.config import PRESETS

    print("\n".join(compare_table(PRESETS["default"])))
