"""ComputeUnit: the DLU datapath (SIMD multiply-accumulate, alignment, requantizer, statistics).

NOT YET FUNCTIONAL: this first version fixes the port contract only (``elaborate`` drives
``operands.ready`` low and produces no results); the datapath lands in a later commit.
"""

from __future__ import annotations

from amaranth.hdl import Module, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from reference.config import CoreConfig

from .settings import check_config


def count_shape(cfg: CoreConfig):
    """Shape of a beat's ``count`` field (1..S valid slots)."""
    return unsigned(ceil_log2(cfg.rng_slots + 1))


def operand_layout(cfg: CoreConfig) -> data.StructLayout:
    """One operand beat: ``a``, ``b`` (S slots, sign-extended to 32 bits), ``count``, ``last``."""
    s = cfg.rng_slots
    return data.StructLayout({"a": data.ArrayLayout(signed(32), s), "b": data.ArrayLayout(signed(32), s),
                              "count": count_shape(cfg), "last": 1})


def result_layout(cfg: CoreConfig) -> data.StructLayout:
    """One result beat: ``q`` (S slots, rounded and saturated to ``out_width``), ``count``."""
    return data.StructLayout({"q": data.ArrayLayout(signed(32), cfg.rng_slots), "count": count_shape(cfg)})


class ComputeUnit(wiring.Component):
    """The DLU datapath: one command's operand beats in, rounded result beats out.

    Parameters
    ----------
    cfg
        Core configuration (``lanes``, ``hist_bins``, ``hist_min_exp``, ``counter_bits``).

    Members
    -------
    op, width, out_width, rounding : In
        :class:`reference.ops.Op`, ``Width`` code of ``W_op``, ``Width`` code of the output,
        :class:`reference.formats.RoundingMode`; held for the whole command.
    a_shift, b_shift : In(signed(9))
        Alignment of the a-term (for AXPY the product alpha * a) and b-term onto the
        accumulator point (:func:`reference.ops.align_terms`).
    out_shift : In(signed(10))
        ``F_acc - F_out``.
    f_acc : In(signed(10))
        Accumulator point position (statistics exponent).
    alpha : In(signed(32))
        AXPY scalar.
    seed, seed_load : In
        Load the stochastic-rounding generators (:func:`reference.rng.seed_states`).
    operands : In(stream.Signature(operand_layout(cfg)))
    results : Out(stream.Signature(result_layout(cfg)))
    stats_clear : In(1)
    stats_hist, stats_zeros, stats_overflow, stats_underflow, stats_total : Out
        Running :class:`reference.stats.OpStats` of the current command (saturating).
    busy : Out(1)
    """

    #: Cycles from the accepted operand beat with ``last`` to its result beat (no back-pressure).
    LATENCY = 2

    def __init__(self, cfg: CoreConfig) -> None:
        self.cfg = check_config(cfg)
        cb = cfg.counter_bits
        super().__init__({
            "op": In(4), "width": In(2), "out_width": In(2), "rounding": In(2),
            "a_shift": In(signed(9)), "b_shift": In(signed(9)), "out_shift": In(signed(10)),
            "f_acc": In(signed(10)), "alpha": In(signed(32)),
            "seed": In(32), "seed_load": In(1),
            "operands": In(stream.Signature(operand_layout(cfg))),
            "results": Out(stream.Signature(result_layout(cfg))),
            "stats_clear": In(1),
            "stats_hist": Out(data.ArrayLayout(unsigned(cb), cfg.hist_bins)),
            "stats_zeros": Out(cb), "stats_overflow": Out(cb), "stats_underflow": Out(cb),
            "stats_total": Out(cb),
            "busy": Out(1),
        })

    def elaborate(self, platform) -> Module:
        return Module()
