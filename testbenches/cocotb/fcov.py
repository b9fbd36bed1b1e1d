"""Functional coverage model of the regression (cocotb-coverage), sampled from the scoreboard.

Bins are sampled with what the *reference* says happened to each checked command (its
overflow/underflow counters), after the hardware's outputs matched it exactly; a mismatch
fails the test before any bin is sampled, so a covered bin is a checked one.

Cover items (all under ``dlu.``):

``cmd.op_width_round_flow``  operation x width x rounding mode x {none, overflow, underflow,
                             both}: 8 x 3 x 3 x 4 = 288 combinations, the issue's target cross,
                             less the 21 that cannot happen (:data:`INFEASIBLE`): 267 bins.
``cmd.frac``                 output point position class: FRAC_MIN, negative, 0, positive,
                             FRAC_MAX.
``cmd.shift``                accumulator-to-output shift class: left (<0), 0, 1..16,
                             17..acc_bits, beyond acc_bits (sticky pre-shift).
``cmd.stall``                bus/stream behaviour: no stalls, idle source, back-pressure, both.
``ctl.kind``                 non-compute commands and error codes exercised (core bench).
``policy.outcome``           POLICY_UPDATE per tensor id: skipped, kept, moved, clamped.

Each simulator run exports its database to ``$DLU_FCOV_FILE`` (YAML); the pytest session
merges every run's file (see :mod:`testbenches.cocotb.coverage`).
"""

from __future__ import annotations

import os

from cocotb_coverage.coverage import CoverCross, CoverPoint, coverage_db

from reference.formats import FRAC_MAX, FRAC_MIN, RoundingMode, Width
from reference.isa import Ctl, ErrorCode
from reference.ops import Op

FLOWS = ["none", "overflow", "underflow", "both"]
FRAC_CLASSES = ["min", "neg", "zero", "pos", "max"]
SHIFT_CLASSES = ["left", "zero", "small", "large", "sticky"]
STALLS = ["none", "idle", "backpressure", "both"]
CTL_KINDS = ([c.name for c in Ctl] + [f"error_{e.name}" for e in ErrorCode if e != ErrorCode.NONE]
             + ["clear_error", "soft_reset", "irq", "clear_perf", "cmd_fifo_full"])
POLICY_OUTCOMES = ["skipped", "kept", "moved", "clamped_min", "clamped_max"]


#: Cross combinations no legal command can produce, ignored by the cross (None: any value).
#: RELU and RELU_BACKWARD keep the operand's width and point scale (F_acc = F_x): a right shift
#: (F_out < F_x) only shrinks values, so nothing can overflow, and a left shift is exact, so
#: nothing non-zero becomes 0: never both in one command. The same holds for CONVERT *to* 32
#: bits (its input has at most 32 bits). CONVERT to 8 or 16 bits can do both (from wider inputs).
INFEASIBLE = [("RELU", None, None, "both"), ("RELU_BACKWARD", None, None, "both"), ("CONVERT", "W32", None, "both")]


def flow_of(overflow: int, underflow: int) -> str:
    return FLOWS[(overflow > 0) | ((underflow > 0) << 1)]


def frac_class(f: int) -> str:
    if f == FRAC_MIN:
        return "min"
    if f == FRAC_MAX:
        return "max"
    return "neg" if f < 0 else "zero" if f == 0 else "pos"


def shift_class(shift: int, acc_bits: int) -> str:
    if shift < 0:
        return "left"
    if shift == 0:
        return "zero"
    if shift <= 16:
        return "small"
    return "large" if shift <= acc_bits else "sticky"


@CoverPoint("dlu.cmd.op", xf=lambda op, w, r, fl: op, bins=[o.name for o in Op])
@CoverPoint("dlu.cmd.width", xf=lambda op, w, r, fl: w, bins=[w.name for w in Width])
@CoverPoint("dlu.cmd.rounding", xf=lambda op, w, r, fl: r, bins=[m.name for m in RoundingMode])
@CoverPoint("dlu.cmd.flow", xf=lambda op, w, r, fl: fl, bins=FLOWS)
@CoverCross("dlu.cmd.op_width_round_flow", items=["dlu.cmd.op", "dlu.cmd.width", "dlu.cmd.rounding", "dlu.cmd.flow"],
            ign_bins=INFEASIBLE)
def _sample_cmd(op: str, w: str, r: str, fl: str) -> None:
    pass


@CoverPoint("dlu.cmd.frac", xf=lambda f, s: f, bins=FRAC_CLASSES)
@CoverPoint("dlu.cmd.shift", xf=lambda f, s: s, bins=SHIFT_CLASSES)
def _sample_point(f: str, s: str) -> None:
    pass


@CoverPoint("dlu.cmd.stall", xf=lambda s: s, bins=STALLS)
def _sample_stall(s: str) -> None:
    pass


@CoverPoint("dlu.ctl.kind", xf=lambda k: k, bins=CTL_KINDS)
def _sample_ctl(k: str) -> None:
    pass


@CoverPoint("dlu.policy.outcome", xf=lambda o: o, bins=POLICY_OUTCOMES)
def _sample_policy(o: str) -> None:
    pass


def sample_cmd(op: Op, width: Width, rounding: RoundingMode, overflow: int, underflow: int,
               out_frac: int, shift: int, acc_bits: int) -> None:
    """One checked compute command (or one checked requantization batch at block level)."""
    _sample_cmd(Op(op).name, Width(width).name, RoundingMode(rounding).name, flow_of(overflow, underflow))
    _sample_point(frac_class(out_frac), shift_class(shift, acc_bits))


def sample_stall(idle: bool, backpressure: bool) -> None:
    _sample_stall(STALLS[int(idle) | (int(backpressure) << 1)])


def sample_ctl(kind: str) -> None:
    _sample_ctl(kind)


def sample_policy(outcome: str) -> None:
    _sample_policy(outcome)


def export(log=None) -> None:
    """Write this run's coverage database to ``$DLU_FCOV_FILE`` (no-op when unset)."""
    path = os.environ.get("DLU_FCOV_FILE")
    if not path:
        return
    coverage_db.export_to_yaml(filename=path)
    if log is not None:
        log.info("functional coverage written to %s", path)
