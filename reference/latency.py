"""Pipeline latencies of the hardware blocks, defined once: ``hw/`` builds its pipelines to
them and the cycle model (:mod:`reference.isa`) derives its timing constants from them by name.

Changing a block's pipeline means changing its constant here; the block's tests check that
the hardware takes exactly this many cycles, and :data:`reference.isa.DRAIN_CYCLES` follows.
"""

#: :class:`hw.compute_unit.ComputeUnit`: cycles from the accepted operand beat with ``last``
#: to its result beat (no back-pressure).
COMPUTE_UNIT_LATENCY = 2
#: :class:`hw.compute_unit.ComputeUnit`: cycles from a result beat's first valid cycle to the
#: first cycle its ``stats_*`` outputs include the beat.
COMPUTE_UNIT_STATS_LATENCY = 1
#: :class:`hw.statistics.StatisticsBlock`: cycles from a beat's ``valid`` to the first cycle
#: the counters include it.
STATISTICS_LATENCY = 2
#: The sequencer's operand read: cycles from an operand address to the ComputeUnit's beat.
OPERAND_READ_LATENCY = 1
