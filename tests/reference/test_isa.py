"""reference.isa: the accumulate field's encoding and legality."""

from __future__ import annotations

import dataclasses

import pytest

from reference.config import PRESETS
from reference.formats import DfpFormat, RoundingMode, TensorSetting, Width
from reference.isa import Accumulate, Command, Ctl, ErrorCode, IllegalCommand, check_command, cycles
from reference.ops import Op

CFG = PRESETS["default"]
S8 = {t: TensorSetting(DfpFormat(Width.W8, 0), RoundingMode.NEAREST_EVEN, True) for t in range(3)}


def _mm(**kw) -> Command:
    base = dict(opcode=Op.MATMUL, tid_d=0, tid_a=1, tid_b=2, addr_a=0, addr_b=CFG.spad_words,
                addr_d=2 * CFG.spad_words, m=2, n=40, k=5)
    return Command(**(base | kw))


@pytest.mark.parametrize("mode", list(Accumulate))
def test_accumulate_mode_round_trips_through_word0_bits_7_6(mode):
    cmd = _mm(accumulate=mode, irq=True, alpha_frac=-3)
    words = cmd.encode()
    assert (words[0] >> 6) & 3 == int(mode)
    assert Command.decode(words) == cmd


def test_accumulate_mode_must_fit_two_bits():
    with pytest.raises(ValueError, match="accumulate=4"):
        _mm(accumulate=4).encode()


@pytest.mark.parametrize("op", [Op.ADD, Op.RELU, Ctl.LOAD, Ctl.POLICY_UPDATE])
def test_accumulate_on_another_opcode_is_bad_opcode(op):
    cmd = dataclasses.replace(_mm(accumulate=Accumulate.START), opcode=op)
    with pytest.raises(IllegalCommand) as exc:
        check_command(cmd, S8, CFG)
    assert exc.value.code == ErrorCode.BAD_OPCODE


def test_accumulating_matmul_is_limited_to_the_accumulator_memory():
    v = CFG.values_per_beat(Width.W8)
    fits = _mm(m=CFG.acc_beats // 2, n=2 * v, accumulate=Accumulate.CONTINUE)
    check_command(fits, S8, CFG)
    too_big = dataclasses.replace(fits, n=2 * v + 1)
    with pytest.raises(IllegalCommand) as exc:
        check_command(too_big, S8, CFG)
    assert exc.value.code == ErrorCode.BAD_SHAPE
    # the same shape without accumulation is legal, and accumulation does not change timing
    check_command(dataclasses.replace(too_big, accumulate=Accumulate.SINGLE), S8, CFG)
    assert cycles(fits, S8, CFG) == cycles(dataclasses.replace(fits, accumulate=Accumulate.SINGLE), S8, CFG)


def test_acc_beats_is_validated_and_its_default_keeps_the_digest():
    with pytest.raises(ValueError, match="acc_beats=0"):
        dataclasses.replace(CFG, acc_beats=0)
    assert dataclasses.replace(CFG, acc_beats=128).digest() != CFG.digest()
    assert "acc_beats" in CFG.to_dict()
