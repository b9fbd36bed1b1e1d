"""Traces: record, write, read back, replay bit-exactly; tampered or malformed traces are caught."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from reference.data import Dataset, load_digits_split
from reference.formats import RoundingMode, Width
from reference.models import ModelKind
from reference.ops import Op
from reference.trace import (
    ARRAYS,
    MANIFEST,
    OpRecord,
    PolicyRecord,
    TraceError,
    read_trace,
    replay_record,
    replay_reference,
    write_trace,
)
from reference.train import ClassSpec, IterSpec, Precision, PrecisionSpec, TrainConfig, train


@pytest.fixture(scope="module")
def small_data() -> Dataset:
    d = load_digits_split()
    return Dataset("digits-small", d.x_train[:96], d.y_train[:96], d.x_test[:40], d.y_test[:40], d.image_hwc)


@pytest.fixture(scope="module")
def mixed_trace(small_data):
    """CNN, 8-bit activations/errors, 16-bit weights/gradients/velocities: exercises CONVERT too."""
    ne8 = ClassSpec(Width.W8, RoundingMode.NEAREST_EVEN)
    ne16 = ClassSpec(Width.W16, RoundingMode.NEAREST_EVEN)
    spec = PrecisionSpec(ne8, ne8, ClassSpec(Width.W16, RoundingMode.STOCHASTIC), ne16, ne16)
    cfg = TrainConfig(model=ModelKind.CNN, precision=Precision.DFP8, spec=spec, epochs=2, batch=32, seed=3,
                      trace_iters=IterSpec.parse("0,4-5"))
    return train(cfg, small_data).trace


@pytest.fixture()
def trace_dir(mixed_trace, tmp_path):
    return write_trace(mixed_trace, tmp_path / "trace")


def test_trace_holds_the_chosen_complete_iterations(mixed_trace):
    assert [it.iteration for it in mixed_trace.iterations] == [0, 4, 5]
    for it in mixed_trace.iterations:
        assert isinstance(it.records[-1], PolicyRecord)  # ends with its POLICY_UPDATE
        assert sum(isinstance(r, PolicyRecord) for r in it.records) == 1
    ops = {r.op for r in mixed_trace.iterations[0].records if isinstance(r, OpRecord)}
    assert {Op.MATMUL, Op.ADD, Op.RELU, Op.RELU_BACKWARD, Op.AXPY, Op.CONVERT} <= ops
    stoch = [r for r in mixed_trace.iterations[0].records
             if isinstance(r, OpRecord) and r.setting.rounding == RoundingMode.STOCHASTIC]
    assert stoch and all(r.op == Op.AXPY for r in stoch)
    assert any(not np.array_equal(r.rng_before, r.rng_after) for r in stoch)


def test_round_trip_and_reference_replay_is_bit_exact(mixed_trace, trace_dir):
    back = read_trace(trace_dir)
    assert back.cfg == mixed_trace.cfg and back.seed == 3 and back.threshold == mixed_trace.threshold
    for a, b in zip(mixed_trace.iterations, back.iterations, strict=True):
        assert len(a.records) == len(b.records)
        for ra, rb in zip(a.records, b.records, strict=True):
            assert type(ra) is type(rb)
            if isinstance(ra, OpRecord):
                assert np.array_equal(ra.out.data, rb.out.data) and ra.out.fmt == rb.out.fmt
                assert ra.stats == rb.stats and ra.alpha == rb.alpha
    rep = replay_reference(back)
    n_ops = sum(isinstance(r, OpRecord) for it in back.iterations for r in it.records)
    assert rep.iterations == 3 and rep.ops == n_ops and rep.policy_updates == 3


def test_an_operand_that_is_an_earlier_result_is_stored_once_and_read_back_shared(mixed_trace, trace_dir, tmp_path):
    """The writer names an earlier record's array for the same tensor object; the reader returns one
    tensor object per array; a trace whose records each name their own array reads back equal."""
    m = json.loads((trace_dir / MANIFEST).read_text())
    srcs = [t for it in m["iterations"] for r in it["records"] for t in r.get("srcs", [])]
    refs = [t["array"] for t in srcs] + [r["out"]["array"] for it in m["iterations"] for r in it["records"]
                                         if "out" in r]
    arrays = dict(np.load(trace_dir / ARRAYS))
    assert set(arrays) == set(refs) and len(arrays) < len(refs)  # shared, and nothing unnamed is stored
    shared = read_trace(trace_dir)
    recs = [r for r in shared.iterations[0].records if isinstance(r, OpRecord)]
    outs = {id(r.out) for r in recs}
    assert any(id(t) in outs for r in recs for t in r.srcs)
    # every operand in its own array, as the writer did before sharing
    for j, t in enumerate(srcs):
        arrays[f"apart{j}"] = arrays[t["array"]]
        t["array"] = f"apart{j}"
    apart = tmp_path / "apart"
    apart.mkdir()
    (apart / MANIFEST).write_text(json.dumps(m))
    np.savez_compressed(apart / ARRAYS, **arrays)
    alone = read_trace(apart)
    for a, b in zip(shared.iterations, alone.iterations, strict=True):
        for ra, rb in zip(a.records, b.records, strict=True):
            if isinstance(ra, OpRecord):
                for x, y in zip(ra.srcs, rb.srcs, strict=True):
                    assert np.array_equal(x.data, y.data) and x.fmt == y.fmt
    replay_reference(alone)


def test_any_record_replays_on_its_own(mixed_trace):
    recs = [r for r in mixed_trace.iterations[1].records if isinstance(r, OpRecord)]
    stoch = next(r for r in recs if r.setting.rounding == RoundingMode.STOCHASTIC)
    for r in (recs[0], recs[len(recs) // 2], stoch):
        replay_record(r, mixed_trace.cfg)


def test_a_flipped_output_value_is_caught(trace_dir):
    m = json.loads((trace_dir / MANIFEST).read_text())
    k, rec = [(k, r) for k, r in enumerate(m["iterations"][2]["records"]) if r["kind"] == "op"][7]
    arrays = dict(np.load(trace_dir / ARRAYS))
    a = arrays[rec["out"]["array"]].copy()
    a.flat[0] = 1 if a.flat[0] == 0 else 0
    arrays[rec["out"]["array"]] = a
    np.savez(trace_dir / ARRAYS, **arrays)
    with pytest.raises(TraceError, match=f"iteration 5 record {k} .*output differs \\(1 values\\)"):
        replay_reference(read_trace(trace_dir))


def test_a_wrong_policy_result_is_caught(trace_dir):
    m = json.loads((trace_dir / MANIFEST).read_text())
    rec = m["iterations"][1]["records"][-1]
    tid, word = next(iter(rec["changed"].items()))
    frac = (word >> 2) & 0x7F
    rec["changed"][tid] = (word & ~(0x7F << 2)) | (((frac + 1) & 0x7F) << 2)
    (trace_dir / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(TraceError, match=f"POLICY_UPDATE.*tensor ids \\[{tid}\\]"):
        replay_reference(read_trace(trace_dir))


def test_a_wrong_generator_state_is_caught(trace_dir):
    m = json.loads((trace_dir / MANIFEST).read_text())
    for r in m["iterations"][0]["records"]:
        if r["kind"] == "op" and r["rng_before"] != r["rng_after"]:
            r["rng_after"][0] ^= 1
            break
    (trace_dir / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(TraceError, match="generator state"):
        replay_reference(read_trace(trace_dir))


def _edit_manifest(trace_dir, fn):
    m = json.loads((trace_dir / MANIFEST).read_text())
    fn(m)
    (trace_dir / MANIFEST).write_text(json.dumps(m))


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(version=99), "version 99 is not supported"),
    (lambda m: m.update(format="other"), "field 'format'"),
    (lambda m: m["config"].update(lanes=4), "config_digest"),
    (lambda m: m["config"].update(lanes=3), "lanes=3"),
    (lambda m: m.pop("seed"), "missing field 'seed'"),
    (lambda m: m["iterations"][0]["records"][3].pop("out"), r"iterations\[0\].records\[3\]: missing field 'out'"),
    (lambda m: m["iterations"][0]["records"][3].update(kind="bogus"), "'bogus' is not one of"),
    (lambda m: m["iterations"][0]["records"][3].update(dst=500), "tensor id 500 is outside"),
    (lambda m: m["iterations"][0].update(rng_at_start=[1, 2]), "non-zero 32-bit generator states"),
    (lambda m: m["iterations"][0].update(settings_at_start={"1": 3}), "width code 3 is illegal"),
])
def test_malformed_manifest_is_rejected_naming_the_field(trace_dir, edit, message):
    _edit_manifest(trace_dir, edit)
    with pytest.raises(TraceError, match=message):
        read_trace(trace_dir)


def test_op_record_field_errors(trace_dir):
    m = json.loads((trace_dir / MANIFEST).read_text())
    k, rec = next((k, r) for k, r in enumerate(m["iterations"][0]["records"]) if r.get("op") == "MATMUL")
    rec["alpha"] = [1, 2]
    (trace_dir / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(TraceError, match=rf"records\[{k}\].alpha: MATMUL takes no alpha"):
        read_trace(trace_dir)
    rec["alpha"] = None
    rec["srcs"][1]["shape"] = [1, 1]
    (trace_dir / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(TraceError, match=r"srcs\[1\]: array .* has shape \[\d+, \d+\], manifest says \[1, 1\]"):
        read_trace(trace_dir)
    rec["srcs"].pop()
    (trace_dir / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(TraceError, match="MATMUL takes 2 operands"):
        read_trace(trace_dir)


def test_missing_and_corrupt_files(trace_dir):
    arrays = dict(np.load(trace_dir / ARRAYS))
    arrays.pop(sorted(arrays)[0])
    np.savez(trace_dir / ARRAYS, **arrays)
    with pytest.raises(TraceError, match="is missing from arrays.npz"):
        read_trace(trace_dir)
    (trace_dir / ARRAYS).write_bytes(b"junk")
    with pytest.raises(TraceError, match="not a readable .npz"):
        read_trace(trace_dir)
    (trace_dir / MANIFEST).write_text("{")
    with pytest.raises(TraceError, match="malformed JSON"):
        read_trace(trace_dir)
    shutil.rmtree(trace_dir)
    with pytest.raises(TraceError, match="does not exist"):
        read_trace(trace_dir)


def test_out_of_range_values_in_arrays_are_rejected(trace_dir):
    m = json.loads((trace_dir / MANIFEST).read_text())
    rec = next(r for r in m["iterations"][0]["records"] if r["kind"] == "op" and r["out"]["width"] == 8)
    key = rec["out"]["array"]
    arrays = dict(np.load(trace_dir / ARRAYS))
    a = arrays[key].astype(np.int64)
    a.flat[0] = 300
    arrays[key] = a
    np.savez(trace_dir / ARRAYS, **arrays)
    with pytest.raises(TraceError, match="outside the 8-bit range"):
        read_trace(trace_dir)


def test_write_is_atomic_and_refuses_to_overwrite(mixed_trace, trace_dir):
    with pytest.raises(FileExistsError):
        write_trace(mixed_trace, trace_dir)
    write_trace(mixed_trace, trace_dir, overwrite=True)
    assert sorted(p.name for p in trace_dir.parent.iterdir()) == ["trace"]  # no temp directory left
    assert sorted(p.name for p in trace_dir.iterdir()) == [ARRAYS, MANIFEST]


def test_rerun_records_are_found_and_replay_bit_exact():
    """A host re-run (command, setting of its destination, command again) is recorded as three
    records, found by rerun_records, and replays bit for bit; other command pairs are not re-runs."""
    from reference.config import PRESETS
    from reference.engine import Engine
    from reference.formats import DfpFormat, DfpTensor, TensorSetting
    from reference.trace import TraceRecorder, replay_reference, rerun_records

    cfg = PRESETS["tiny"]
    e = Engine(cfg)
    e.rerun_threshold = 655
    for tid, f in ((1, 0), (2, 10), (3, 10)):
        e.set_setting(tid, TensorSetting(DfpFormat(Width.W16, f), RoundingMode.NEAREST_EVEN, tid != 1))
    rec = TraceRecorder()
    e.recorder = rec
    rec.begin_iteration(0, e)
    x = DfpTensor(np.array([[100, -3, 7, 1]], dtype=np.int64), DfpFormat(Width.W16, 0))
    e.run(Op.CONVERT, 2, [x], [1])  # overflows at F = 10: re-run at F = 8 (records 0, 1, 2)
    e.run(Op.CONVERT, 3, [DfpTensor(x.data >> 5, x.fmt)], [1])  # fits: no re-run (record 3)
    e.run(Op.CONVERT, 3, [DfpTensor(x.data >> 5, x.fmt)], [1])  # same command twice, no setting between
    e.update_formats()
    rec.end_iteration()
    tr = rec.trace(e)
    assert [type(r).__name__ for r in tr.iterations[0].records] == \
        ["OpRecord", "SettingRecord", "OpRecord", "OpRecord", "OpRecord", "PolicyRecord"]
    assert rerun_records(tr.iterations[0]) == {2}
    assert replay_reference(tr).ops == 4
