"""Distribution database: per tensor id, the accumulated statistics of :mod:`reference.stats`.

One :class:`amaranth.lib.memory.Memory` of ``tensor_ids`` entries; an entry is the histogram
(``hist_bins`` counters) and the ``zeros``, ``overflow``, ``underflow`` and ``total`` counters,
each ``counter_bits`` wide. Accumulation saturates each counter at ``counter_max``, exactly
:meth:`reference.stats.Database.accumulate`.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from reference.config import CoreConfig

COUNTER_NAMES = ("zeros", "overflow", "underflow", "total")


def entry_layout(cfg: CoreConfig) -> data.StructLayout:
    """One database entry (also the statistics of one command, as the sequencer commits them).

    Counter ``i`` of the host read-out window is ``hist[i]`` for ``i < hist_bins``, then
    zeros, overflow, underflow, total (see :func:`hw.regmap.database_window`).
    """
    c = unsigned(cfg.counter_bits)
    return data.StructLayout({"hist": data.ArrayLayout(c, cfg.hist_bins)} | {k: c for k in COUNTER_NAMES})


def _tid_bits(cfg: CoreConfig) -> int:
    return max(1, ceil_log2(cfg.tensor_ids))


class DatabaseCommitSignature(wiring.Signature):
    """The sequencer's accumulate port, from the sequencer's side.

    ``tid`` must be held for at least one cycle before ``en`` (the entry is read with a
    synchronous port); on ``en`` the entry becomes ``saturate(entry + stats)``.
    """

    def __init__(self, cfg: CoreConfig) -> None:
        super().__init__({"tid": Out(_tid_bits(cfg)), "stats": Out(entry_layout(cfg)), "en": Out(1)})


class DatabaseClearSignature(wiring.Signature):
    """Clear one entry per cycle (CLEAR_STATS), from the sequencer's side."""

    def __init__(self, cfg: CoreConfig) -> None:
        super().__init__({"tid": Out(_tid_bits(cfg)), "en": Out(1)})


class DatabasePolicySignature(wiring.Signature):
    """The policy controller's port: entry ``addr`` appears on ``data`` one cycle later; ``clear``
    zeroes entry ``addr``."""

    def __init__(self, cfg: CoreConfig) -> None:
        super().__init__({"addr": Out(_tid_bits(cfg)), "data": In(entry_layout(cfg)), "clear": Out(1)})


class DatabaseHostSignature(wiring.Signature):
    """Host read-out: entry ``addr`` appears on ``data`` one cycle later."""

    def __init__(self, cfg: CoreConfig) -> None:
        super().__init__({"addr": Out(_tid_bits(cfg)), "data": In(entry_layout(cfg))})


class DistributionDatabase(wiring.Component):
    """Accumulated statistics per tensor id.

    Parameters
    ----------
    cfg
        Core configuration (``tensor_ids``, ``hist_bins``, ``counter_bits``).

    Members
    -------
    commit : In(DatabaseCommitSignature)
        Accumulate a command's statistics (saturating, per counter).
    clear : In(DatabaseClearSignature)
        Zero one entry.
    policy : In(DatabasePolicySignature)
        Read and clear port of the :class:`hw.settings.PolicyController`.
    host : In(DatabaseHostSignature)
        Read-out port of the register window.

    The sequencer never issues two of commit, clear and policy clear in the same cycle (they
    belong to different commands); if it did, commit wins, then clear, then policy.
    Memory contents are not reset: the host clears them with CLEAR_STATS (all).

    Raises
    ------
    TypeError
        ``cfg`` is not a ``CoreConfig``.
    """

    def __init__(self, cfg: CoreConfig) -> None:
        if not isinstance(cfg, CoreConfig):
            raise TypeError(f"cfg: expected a reference.config.CoreConfig, got {cfg!r}")
        self.cfg = cfg
        super().__init__({
            "commit": In(DatabaseCommitSignature(cfg)),
            "clear": In(DatabaseClearSignature(cfg)),
            "policy": In(DatabasePolicySignature(cfg)),
            "host": In(DatabaseHostSignature(cfg)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        layout = entry_layout(cfg)
        m.submodules.mem = mem = memory.Memory(shape=layout, depth=cfg.tensor_ids, init=[])
        wp = mem.write_port()
        rp_commit = mem.read_port()
        rp_policy = mem.read_port()
        rp_host = mem.read_port()
        m.d.comb += [
            rp_commit.addr.eq(self.commit.tid),
            rp_policy.addr.eq(self.policy.addr),
            self.policy.data.eq(rp_policy.data),
            rp_host.addr.eq(self.host.addr),
            self.host.data.eq(rp_host.data),
        ]
        cmax = cfg.counter_max
        cur, add = rp_commit.data, self.commit.stats
        total = Signal(layout)

        def sat(dst, a, b):
            s = Signal(unsigned(cfg.counter_bits + 1))
            m.d.comb += [s.eq(a + b), dst.eq(Mux(s > cmax, cmax, s))]

        for i in range(cfg.hist_bins):
            sat(total.hist[i], cur.hist[i], add.hist[i])
        for k in COUNTER_NAMES:
            sat(getattr(total, k), getattr(cur, k), getattr(add, k))

        with m.If(self.commit.en):
            m.d.comb += [wp.addr.eq(self.commit.tid), wp.data.eq(total), wp.en.eq(1)]
        with m.Elif(self.clear.en):
            m.d.comb += [wp.addr.eq(self.clear.tid), wp.data.eq(0), wp.en.eq(1)]
        with m.Elif(self.policy.clear):
            m.d.comb += [wp.addr.eq(self.policy.addr), wp.data.eq(0), wp.en.eq(1)]
        return m
