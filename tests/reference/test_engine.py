"""Engine: dispatch to the ops with the destination's setting, database, generators, POLICY_UPDATE."""

from __future__ import annotations

import numpy as np
import pytest

from reference import ops
from reference.config import PRESETS
from reference.engine import Engine
from reference.formats import DfpFormat, DfpTensor, RoundingMode, TensorSetting, Width
from reference.isa import ACC_MAX_K, Accumulate
from reference.ops import Op
from reference.rng import draw_beats, seed_states
from reference.stats import PolicyParams, next_frac

CFG = PRESETS["default"]


def _t(values, width=Width.W8, frac=0) -> DfpTensor:
    return DfpTensor(np.array(values, dtype=np.int64), DfpFormat(width, frac))


def _engine(**settings: TensorSetting) -> Engine:
    e = Engine(CFG, seed=7)
    for name, s in settings.items():
        e.set_setting(int(name[1:]), s)
    return e


def _s(width=Width.W8, frac=0, rounding=RoundingMode.NEAREST_EVEN, auto=True) -> TensorSetting:
    return TensorSetting(DfpFormat(width, frac), rounding, auto)


def test_matmul_hand_computed_and_output_format_from_destination_setting():
    e = _engine(t3=_s(frac=-1))
    a = _t([[1, 2], [3, -4]])
    b = _t([[5], [6]])
    out = e.run(Op.MATMUL, 3, [a, b], [1, 2])
    # exact products 17 and -9, then F 0 -> -1: 17/2 = 8.5 -> 8 (even), -9/2 = -4.5 -> -4 (even)
    assert out.fmt == DfpFormat(Width.W8, -1)
    assert out.data.tolist() == [[8], [-4]]


def test_add_with_broadcast_row_and_saturation_hand_computed():
    e = _engine(t0=_s())
    out = e.run(Op.ADD, 0, [_t([[100, -100], [1, 2]]), _t([[50, -50]])], [1, 2])
    assert out.data.tolist() == [[127, -128], [51, -48]]
    assert e.db.read(0).overflow == 2 and e.db.read(0).total == 4


@pytest.mark.parametrize("op", list(Op))
@pytest.mark.parametrize("rounding", list(RoundingMode))
def test_run_equals_the_ops_function_with_destination_setting(op, rounding):
    seed = 1000 + 10 * int(op) + int(rounding)
    rng = np.random.default_rng(seed)
    x = _t(rng.integers(-128, 128, (5, 40)), Width.W8, 3)
    y = _t(rng.integers(-128, 128, (5, 40)), Width.W8, 5)
    w = _t(rng.integers(-128, 128, (40, 7)), Width.W8, 4)
    setting = _s(Width.W8, 2, rounding)
    e = _engine(t9=setting)
    states = e.rng.copy()
    fmt = setting.fmt
    srcs, alpha = {
        Op.MATMUL: ([x, w], None), Op.ADD: ([x, y], None), Op.SUB: ([x, y], None), Op.MUL: ([x, y], None),
        Op.AXPY: ([x, y], (-77, 9)), Op.RELU: ([x], None), Op.RELU_BACKWARD: ([x, y], None),
        Op.CONVERT: ([x], None),
    }[op]
    out = e.run(op, 9, srcs, [1] * len(srcs), alpha)
    args = (fmt, rounding, CFG, states)
    want = {
        Op.MATMUL: lambda: ops.matmul(x, w, *args), Op.ADD: lambda: ops.add(x, y, *args),
        Op.SUB: lambda: ops.sub(x, y, *args), Op.MUL: lambda: ops.mul(x, y, *args),
        Op.AXPY: lambda: ops.axpy(-77, 9, x, y, *args), Op.RELU: lambda: ops.relu(x, *args),
        Op.RELU_BACKWARD: lambda: ops.relu_backward(x, y, *args), Op.CONVERT: lambda: ops.convert(x, *args),
    }[op]()
    assert np.array_equal(out.data, want.out.data), f"seed {seed}"
    assert e.db.read(9) == want.stats
    assert np.array_equal(e.rng, want.rng)


def test_stochastic_rounding_advances_the_generators_by_the_beats_converted():
    e = _engine(t1=_s(Width.W8, 0, RoundingMode.STOCHASTIC))
    x = _t(np.arange(-35, 35).reshape(2, 35), Width.W8, 3)  # 2 rows x ceil(35/32) = 4 beats at 8 bits
    before = e.rng.copy()
    e.run(Op.CONVERT, 1, [x], [0])
    _, after = draw_beats(before, 4, CFG.rng_slots)
    assert np.array_equal(e.rng, after)
    # nearest-even never draws
    e.set_setting(1, _s(Width.W8, 0))
    mid = e.rng.copy()
    e.run(Op.CONVERT, 1, [x], [0])
    assert np.array_equal(e.rng, mid)


def test_seed_register_sets_the_generators():
    assert np.array_equal(Engine(CFG, seed=12345).rng, seed_states(12345, CFG.rng_slots))


def test_database_accumulates_per_destination():
    e = _engine(t4=_s(), t5=_s())
    x = _t([[1, 2, 0, -3]])
    e.run(Op.RELU, 4, [x], [0])
    e.run(Op.RELU, 4, [x], [0])
    e.run(Op.CONVERT, 5, [x], [0])
    assert e.db.read(4).total == 8 and e.db.read(4).zeros == 4
    assert e.db.read(5).total == 4 and e.db.read(5).zeros == 1


def test_update_formats_applies_policy_to_auto_ids_with_stats_only():
    e = _engine(t1=_s(Width.W8, 0), t2=_s(Width.W16, 0), t3=_s(Width.W8, 0, auto=False), t4=_s(Width.W8, 5))
    x = _t([[100]], Width.W16, 0)  # exponent 6: |100| in [64, 128)
    e.run(Op.CONVERT, 1, [x], [0])
    e.run(Op.CONVERT, 2, [x], [0])
    e.run(Op.CONVERT, 3, [x], [0])
    changed = e.update_formats()
    # F = W - 2 - e: 8-bit -> 0, 16-bit -> 8 but the default rise limit (1 bit per update) takes it to 1;
    # tid 3 is not auto, tid 4 has no statistics
    assert e.policy == PolicyParams(66, 0, 1)
    assert changed == {1: _s(Width.W8, 0), 2: _s(Width.W16, 1)}
    assert e.settings[3].fmt.frac == 0 and e.settings[4].fmt.frac == 5
    assert 1 not in e.db.entries and 2 not in e.db.entries and 3 in e.db.entries


def test_update_formats_without_rise_limit_jumps_and_headroom_lowers():
    e = Engine(CFG, threshold=PolicyParams(66, 2, 0).encode())
    e.settings = {2: _s(Width.W16, 0)}
    e.run(Op.CONVERT, 2, [_t([[100]], Width.W16, 0)], [0])
    assert e.update_formats() == {2: _s(Width.W16, 8 - 2)}


def test_rerun_rewrites_setting_and_reissues_overflowing_command():
    """A result that overflows beyond the re-run threshold: the host lowers the destination's point
    position (next_frac of the command's histogram) and issues the command again; the trace of
    commands is op, setting, op; an operand with the destination's id is re-formatted first."""
    e = _engine(t1=_s(Width.W16, 0), t2=_s(Width.W16, 10))
    e.rerun_threshold = 655
    seen = []

    class Rec:
        def on_op(self, engine, op, dst, setting, srcs, src_tids, alpha, out, stats, rng_before):
            seen.append(("op", dst, setting.fmt.frac, stats.overflow, srcs[0].fmt.frac))

        def on_setting(self, engine, tid, setting):
            seen.append(("setting", tid, setting.fmt.frac))

        def on_load(self, *a): ...

        def on_policy(self, *a): ...

    e.recorder = Rec()
    x = _t([[100, -3, 7, 1]], Width.W16, 0)  # 100 needs 8 integer bits: F = 14 - 6 = 8
    out = e.run(Op.CONVERT, 2, [x], [1])
    assert seen == [("op", 2, 10, 1, 0), ("setting", 2, 8), ("op", 2, 8, 0, 0)]
    assert out.fmt.frac == 8 and out.data.tolist() == [[100 << 8, -3 << 8, 7 << 8, 1 << 8]]
    assert e.reruns == {2: [1, 1, 4]}
    seen.clear()
    out = e.run(Op.ADD, 2, [out, x], [2, 1])  # 200: F 8 overflows -> 7; operand tid 2 re-formatted to F 7
    assert seen == [("op", 2, 8, 1, 8), ("setting", 2, 7), ("op", 2, 7, 0, 7)]
    assert out.data.tolist() == [[200 << 7, -6 << 7, 14 << 7, 2 << 7]]
    e.rerun_threshold = None
    seen.clear()
    e.run(Op.ADD, 2, [out, out], [2, 2])  # overflows, but re-runs are off
    assert [s[0] for s in seen] == ["op"]


def test_update_formats_matches_next_frac_on_random_data():
    seed = 5
    rng = np.random.default_rng(seed)
    e = _engine(t6=_s(Width.W16, 3))
    x = _t(rng.integers(-2**15, 2**15, (4, 300)), Width.W16, 12)
    e.run(Op.CONVERT, 6, [x], [0])
    p = e.policy
    want = next_frac(e.db.read(6), Width.W16, 3, CFG, p.threshold, p.headroom, p.rise)
    e.update_formats()
    assert e.settings[6].fmt.frac == want, f"seed {seed}"


def test_load_rounds_to_nearest_even_and_leaves_database_alone():
    e = _engine(t2=_s(Width.W8, 1, RoundingMode.STOCHASTIC))
    out = e.load(2, np.array([[0.25, 0.75, -0.25, 100.0]]))
    assert out.data.tolist() == [[0, 2, 0, 127]]
    assert e.db.entries == {}


def test_fork_copies_settings_and_generators_but_not_database():
    e = _engine(t1=_s())
    e.run(Op.RELU, 1, [_t([[1]])], [0])
    f = e.fork()
    assert f.settings == e.settings and np.array_equal(f.rng, e.rng)
    assert f.db.entries == {} and f.recorder is None
    f.set_setting(1, _s(frac=3))
    assert e.settings[1].fmt.frac == 0


@pytest.mark.parametrize("call, message", [
    (lambda e: e.run(Op.MATMUL, 1, [_t([[1]])], [0]), "MATMUL takes 2 operand"),
    (lambda e: e.run(Op.RELU, 1, [_t([[1]])], [0, 0]), "RELU takes 1 operand"),
    (lambda e: e.run(Op.RELU, 2, [_t([[1]])], [0]), "tensor id 2 has no setting"),
    (lambda e: e.run(Op.RELU, 64, [_t([[1]])], [0]), "dst=64 is outside"),
    (lambda e: e.run(Op.RELU, 1, [_t([[1]])], [99]), "src_tids[0]=99"),
    (lambda e: e.run(Op.AXPY, 1, [_t([[1]]), _t([[1]])], [0, 0]), "AXPY needs"),
    (lambda e: e.run(Op.ADD, 1, [_t([[1]]), _t([[1]])], [0, 0], (1, 0)), "alpha=(1, 0)"),
    (lambda e: e.run(Op.ADD, 1, [_t([[1]]), _t([[1]], Width.W16)], [0, 5]), "operand 1 (tid 5) is 16-bit"),
    (lambda e: e.set_setting(-1, _s()), "tid=-1"),
])
def test_illegal_commands_raise_naming_the_field(call, message):
    e = _engine(t1=_s())
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        call(e)


def test_convert_may_change_width():
    e = _engine(t1=_s(Width.W16, 8))
    out = e.run(Op.CONVERT, 1, [_t([[3, -128]], Width.W8, 0)], [0])
    assert out.fmt.width == Width.W16 and out.data.tolist() == [[768, -32768]]


@pytest.mark.parametrize("seed, threshold, field", [(-1, 66, "seed"), (2**32, 66, "seed"), (0, 2**20, "threshold"),
                                                    (0, -1, "threshold")])
def test_bad_registers_are_rejected(seed, threshold, field):
    with pytest.raises(ValueError, match=field):
        Engine(CFG, seed=seed, threshold=threshold)


def test_dimensions_above_the_command_field_are_rejected():
    e = _engine(t1=_s())
    big = DfpTensor(np.zeros((70000, 1), dtype=np.int64), DfpFormat(Width.W8, 0))
    with pytest.raises(ValueError, match=r"shape \(70000, 1\); the command's M, N fields hold at most 65535"):
        e.run(Op.RELU, 1, [big], [0])


# -- accumulation across commands (reference.isa.Accumulate) -------------------------------------

def _split_points(rng: np.random.Generator, k: int, max_chunks: int) -> list[int]:
    n = int(rng.integers(1, min(k, max_chunks) + 1))
    cuts = sorted(rng.choice(np.arange(1, k), size=n - 1, replace=False).tolist()) if n > 1 else []
    return [0, *cuts, k]


@pytest.mark.parametrize("seed", range(12))
def test_k_split_product_is_bit_identical_to_the_unsplit_one(seed):
    """START, CONTINUE..., FINISH over random K chunks: same result, statistics, database and
    generator states as one MATMUL, in every width and rounding (stochastic included)."""
    rng = np.random.default_rng(seed)
    width = [Width.W8, Width.W16, Width.W32][seed % 3]
    rounding = [RoundingMode.STOCHASTIC, RoundingMode.NEAREST_EVEN, RoundingMode.FLOOR,
                RoundingMode.STOCHASTIC][(seed // 3) % 4]
    m, k, n = int(rng.integers(1, 9)), int(rng.integers(2, 300)), int(rng.integers(1, 70))
    lim = 1 << (width.bits - 1)
    a = DfpTensor(rng.integers(-lim, lim, size=(m, k)), DfpFormat(width, int(rng.integers(8, 20))))
    b = DfpTensor(rng.integers(-lim, lim, size=(k, n)), DfpFormat(width, int(rng.integers(8, 20))))
    # an output point position that drops bits, so that rounding (and stochastic draws) matter
    out = _s(width, frac=a.fmt.frac + b.fmt.frac - width.bits - 3, rounding=rounding)
    whole, split = _engine(t3=out), _engine(t3=out)
    want = whole.run(Op.MATMUL, 3, [a, b], [1, 2])
    cuts = _split_points(rng, k, 6)
    for i, (k0, k1) in enumerate(zip(cuts, cuts[1:], strict=False)):
        first, last = i == 0, k1 == k
        mode = (Accumulate.SINGLE if last else Accumulate.START) if first else \
            (Accumulate.FINISH if last else Accumulate.CONTINUE)
        got = split.run(Op.MATMUL, 3, [DfpTensor(a.data[:, k0:k1], a.fmt), DfpTensor(b.data[k0:k1], b.fmt)],
                        [1, 2], accumulate=mode)
        assert (got is None) == (not last), f"seed {seed}: chunk {i} ({mode.name}) returned {got!r}"
    assert got.fmt == want.fmt and np.array_equal(got.data, want.data), f"seed {seed}, cuts {cuts}"
    assert np.array_equal(split.rng, whole.rng), f"seed {seed}: generator states differ"
    assert split.db.entries[3].as_dict() == whole.db.entries[3].as_dict(), f"seed {seed}: statistics differ"
    assert split.acc is None


def test_partial_matmul_leaves_statistics_generators_and_database_alone():
    e = _engine(t3=_s(frac=-3, rounding=RoundingMode.STOCHASTIC))
    rng0 = e.rng.copy()
    assert e.run(Op.MATMUL, 3, [_t([[100, -7]]), _t([[90], [3]])], [1, 2], accumulate=Accumulate.START) is None
    assert e.run(Op.MATMUL, 3, [_t([[100]]), _t([[90]])], [1, 2], accumulate=Accumulate.CONTINUE) is None
    assert np.array_equal(e.rng, rng0) and not e.db.entries
    # 9000 - 21 + 9000 = 17979 exceeds 8 bits at F=0 but is held exactly at accumulator width
    assert e.acc.tolist() == [[17979]]


def test_accumulator_wraps_at_its_width_like_the_hardware():
    a = DfpTensor(np.full((1, 1), -128), DfpFormat(Width.W8, 0))
    acc = np.array([[(1 << 31) - 1]], dtype=np.int64)
    got = ops.matmul_sum(a, a, DfpFormat(Width.W8, 0), acc)
    assert got.tolist() == [[(1 << 31) - 1 + 16384 - (1 << 32)]]
    # the bound of reference.isa: ACC_MAX_K products of the largest magnitude still fit
    assert ACC_MAX_K * (1 << 14) < 1 << 31 and (ACC_MAX_K + 1) * (1 << 14) >= 1 << 31


def test_accumulate_misuse_is_refused_with_a_message():
    e = _engine(t3=_s())
    with pytest.raises(ValueError, match="no sum is open"):
        e.run(Op.MATMUL, 3, [_t([[1]]), _t([[1]])], [1, 2], accumulate=Accumulate.FINISH)
    with pytest.raises(ValueError, match="MATMUL only"):
        e.run(Op.ADD, 3, [_t([[1]]), _t([[1]])], [1, 2], accumulate=Accumulate.START)
