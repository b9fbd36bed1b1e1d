"""NumPy golden model of the Deep Learning Unit: the project's specification.

Modules
-------
formats   number format, rounding modes, settings-register encoding, float conversion
rng       the per-slot xorshift32 generators behind stochastic rounding
config    static core parameters (lanes, histogram bins, ...) and named presets
stats     most-significant-bit statistics, distribution database, point-position policy
ops       the DLU operations, bit-exact, each returning outputs and statistics

This package never imports Amaranth: ``hw/`` and ``sim/`` import it.
"""
