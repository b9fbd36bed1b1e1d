"""reference.isa's rule for cores with fewer widths: settings writes and commands naming an
unsupported width are illegal (BAD_SETTING), like width code 3 or a missing setting."""

from __future__ import annotations

import dataclasses

import pytest

from reference.config import PRESETS
from reference.formats import DfpFormat, RoundingMode, TensorSetting, Width
from reference.isa import (
    Command,
    Ctl,
    ErrorCode,
    IllegalCommand,
    check_command,
    check_setting,
    cycles,
    decode_setting,
    settings_key,
)
from reference.ops import Op

TINY = PRESETS["tiny"]


def setting(w: Width, frac: int = 2) -> TensorSetting:
    return TensorSetting(DfpFormat(w, frac), RoundingMode.NEAREST_EVEN, False)


@pytest.mark.parametrize("widths", [(8,), (16,), (32,), (8, 16), (16, 32), (8, 16, 32)])
def test_decode_setting_accepts_exactly_the_supported_widths(widths):
    cfg = dataclasses.replace(TINY, widths=widths)
    for w in Width:
        word = setting(w).encode()
        if w.bits in widths:
            assert decode_setting(word, cfg) == TensorSetting.decode(word)
            check_setting(setting(w), cfg)
        else:
            with pytest.raises(IllegalCommand, match=rf"BAD_SETTING: {w.bits}-bit data is not supported") as e:
                decode_setting(word, cfg)
            assert e.value.code == ErrorCode.BAD_SETTING


def test_decode_setting_reports_other_illegal_words_as_bad_setting():
    for word in (3, setting(Width.W8).encode() | (3 << 9)):
        with pytest.raises(IllegalCommand) as e:
            decode_setting(word, TINY)
        assert e.value.code == ErrorCode.BAD_SETTING


def test_command_on_an_unsupported_width_is_bad_setting_in_role_order():
    cfg = dataclasses.replace(TINY, widths=(8,))
    sw = cfg.spad_words
    cmd = Command(int(Op.ADD), tid_a=0, tid_b=1, tid_d=2, addr_a=0, addr_b=sw, addr_d=2 * sw, m=1, n=4)
    s8, s16 = setting(Width.W8), setting(Width.W16)
    check_command(cmd, {0: s8, 1: s8, 2: s8}, cfg)
    for role, tid in (("a", 0), ("d", 2), ("b", 1)):
        with pytest.raises(IllegalCommand, match=rf"BAD_SETTING: tid_{role}={tid}: 16-bit data is not supported"):
            check_command(cmd, {0: s8, 1: s8, 2: s8} | {tid: s16}, cfg)
    # the full core accepts the 16-bit command
    check_command(cmd, {0: s16, 1: s16, 2: s16}, TINY)
    # an earlier error comes first: a bad tensor id of a is reported before b's width
    bad = dataclasses.replace(cmd, tid_a=cfg.tensor_ids)
    with pytest.raises(IllegalCommand, match="BAD_TENSOR_ID"):
        check_command(bad, {1: s16, 2: s8}, cfg)


def _outcome(cmd, settings, cfg):
    try:
        check_command(cmd, settings, cfg)
    except IllegalCommand as e:
        return ("illegal", e.code)
    return ("legal", cycles(cmd, settings, cfg))


@pytest.mark.parametrize("seed", range(8))
def test_check_and_cycles_read_the_settings_only_through_settings_key(seed):
    """Commands checked under two settings registers with the same ``settings_key`` (widths of the
    ids used, or missing) but other point positions, roundings and widths of unused ids have the
    same legality and cycles; the cycle simulator reuses checks on that promise."""
    import numpy as np

    rs = np.random.default_rng(seed)
    cfg = dataclasses.replace(TINY, widths=(8, 16) if seed % 2 else (8, 16, 32))
    sw, nt = cfg.spad_words, cfg.tensor_ids
    codes = [int(o) for o in Op] + [int(c) for c in Ctl]
    for _ in range(300):
        cmd = Command(int(rs.choice(codes)), tid_d=int(rs.integers(0, nt + 1)), tid_a=int(rs.integers(0, nt)),
                      tid_b=int(rs.integers(0, nt)), addr_a=int(rs.integers(0, 2)) * sw,
                      addr_b=int(rs.integers(0, 3)) * sw, addr_d=int(rs.integers(0, 3)) * sw + int(rs.integers(0, 4)),
                      m=int(rs.integers(1, 9)), n=int(rs.integers(1, 70)), k=int(rs.integers(1, 9)),
                      alpha=int(rs.integers(-300, 300)), alpha_frac=int(rs.integers(-40, 70)),
                      broadcast_b=bool(rs.random() < 0.3))

        def register():
            return {t: TensorSetting(DfpFormat(Width(int(rs.integers(0, 3))), int(rs.integers(-32, 64))),
                                     RoundingMode(int(rs.integers(0, 3))), bool(rs.random() < 0.5))
                    for t in range(nt) if rs.random() < 0.9}

        one = register()
        key = settings_key(cmd, one)
        other = register()
        for t, w in zip((cmd.tid_a, cmd.tid_b, cmd.tid_d), key or (), strict=False):  # same widths where used
            if w is None:
                other.pop(t, None)
            else:
                old = other.get(t)
                other[t] = TensorSetting(DfpFormat(w, int(rs.integers(-32, 64))), RoundingMode(int(rs.integers(0, 3))),
                                         old.auto if old else False)
        assert settings_key(cmd, other) == key
        assert _outcome(cmd, one, cfg) == _outcome(cmd, other, cfg), (seed, cmd)
