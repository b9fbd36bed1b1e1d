"""Replay results, their JSON file and the `dlu replay` command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dlu.cli import main
from reference.trace import OpRecord, write_trace
from sim.replay import default_results_path, load_results, replay, results, tensor_evolution
from tests.sim.tracegen import small_trace


@pytest.fixture
def trace_dir(tmp_path):
    return write_trace(small_trace(5), tmp_path / "run" / "trace")


def test_results_groups_add_up_to_the_totals():
    trace = small_trace(5)
    res = results(trace)
    t = res["totals"]
    for key in ("cycles", "macs", "bus_words", "commands"):
        assert sum(g[key] for g in res["by_layer_pass"]) == t[key]
    assert sum(g["energy_pj"]["total"] for g in res["by_layer_pass"]) == pytest.approx(t["energy_pj"]["total"])
    assert sum(i["cycles"] for i in res["by_iteration"]) == t["cycles"]
    assert {g["pass"] for g in res["by_layer_pass"]} == {"forward", "backward", "update", "control"}
    assert t["fp32"]["cycles"] > t["cycles"] and t["fp32_over_dfp_energy"] > 1
    json.dumps(res)  # JSON-ready


def test_tensor_evolution_histograms_are_the_iterations_statistics():
    trace = small_trace(5)
    ev = tensor_evolution(trace)
    relu = ev["relu.out"]
    assert relu["iteration"] == [0, 1] and len(relu["frac"]) == 2
    for i, it in enumerate(trace.iterations):
        want = sum(r.stats.hist for r in it.records if isinstance(r, OpRecord) and r.dst == 5)
        assert np.array_equal(relu["hist"][i], want)
    assert relu["frac"][0] == trace.iterations[0].settings_at_start[5].fmt.frac


def test_replay_writes_results_atomically(trace_dir):
    res, path = replay(trace_dir)
    assert path == default_results_path(trace_dir) == trace_dir.parent / "sim.json"
    assert load_results(path)["totals"] == json.loads(json.dumps(res["totals"]))
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


def test_load_results_rejects_bad_files(tmp_path):
    p = tmp_path / "r.json"
    p.write_text("{")
    with pytest.raises(ValueError, match="malformed JSON"):
        load_results(p)
    p.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="field 'format'"):
        load_results(p)
    p.write_text(json.dumps({"format": "dlu-sim-results", "version": 1, "totals": {}}))
    with pytest.raises(ValueError, match="missing field 'by_layer_pass'"):
        load_results(p)


def test_dlu_replay_command(trace_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["replay", str(trace_dir), "--out", str(out), "--quiet"]) == 0
    assert "data bit-exact with the trace" in capsys.readouterr().out
    assert load_results(out)["executed"] is True
    assert main(["replay", str(trace_dir), "--out", str(out), "--quiet", "--grow-spad", "--timing-only"]) == 0
    assert load_results(out)["executed"] is False
    assert main(["replay", str(trace_dir), "--out", str(out), "--quiet", "--iterations", "1"]) == 0
    assert load_results(out)["iterations"] == [1]
    assert main(["replay", str(trace_dir), "--quiet", "--iterations", "9"]) == 2
    assert "selects none of the traced iterations [0, 1]" in capsys.readouterr().err
    assert main(["replay", str(trace_dir), "--quiet", "--check", "--iterations", "0", "--rtl-commands", "6"]) == 0
    assert "6 commands of iteration(s) [0]" in capsys.readouterr().out
    rtl = json.loads((trace_dir.parent / "rtl.json").read_text())
    assert rtl["checked"] and rtl["mismatch"] is None and rtl["commands"] == 6
    assert rtl["command_cycles"]["rtl"] == rtl["command_cycles"]["sim"] > 0
    # iteration 1 of this hand-made trace reads the weight in the format it had before POLICY_UPDATE
    assert main(["replay", str(trace_dir), "--quiet", "--engine", "rtl"]) == 2
    assert "not executable as recorded" in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_dlu_replay_says_when_the_rtl_engine_cannot_run(trace_dir, monkeypatch, capsys):
    import sim.rtl_engine as eng

    def missing() -> None:
        raise eng.RtlNotAvailable("the RTL engine needs cocotb (pinned in pyproject.toml: run make)")

    monkeypatch.setattr(eng, "ensure_available", missing)
    assert main(["replay", str(trace_dir), "--quiet", "--engine", "rtl"]) == 3
    assert "needs cocotb" in capsys.readouterr().err


def test_dlu_replay_reports_a_failed_rtl_run_in_one_line(trace_dir, monkeypatch, capsys):
    import sim.rtl_engine as eng

    def hung(*args, **kwargs):
        raise eng.RtlFailed("rtl: command 0_3: not done after 10000 STATUS polls (log build/rtl/x/sim.log)")

    monkeypatch.setattr(eng, "run_program", hung)
    assert main(["replay", str(trace_dir), "--quiet", "--engine", "rtl", "--iterations", "0"]) == 1
    err = capsys.readouterr().err
    assert "dlu replay: error: rtl: command 0_3: not done" in err and "Traceback" not in err


def test_default_cnn_trace_replays_on_the_default_core_with_k_split_weight_gradients():
    """The real training path: the digits CNN in dfp8, iteration 0 traced (seed 0). conv1's weight
    gradient (b [2048, 8]) exceeds a default bank: it is summed over K chunks, no larger scratchpad."""
    from reference.data import load_digits_split
    from reference.isa import Accumulate
    from reference.train import IterSpec, Precision, TrainConfig, train
    from sim.core import CycleSim, fitting_config

    res = train(TrainConfig(precision=Precision.DFP8, epochs=1, seed=0, trace_iters=IterSpec.parse("0")),
                load_digits_split())
    trace = res.trace
    sim = CycleSim().run(trace, execute=False)
    split = [c for c in sim.commands if c.kind == "MATMUL" and c.cmd.accumulate != Accumulate.SINGLE]
    assert split and {c.layer for c in split} == {"conv1"}
    assert split[-1].cmd.accumulate == Accumulate.FINISH
    cfg = fitting_config(trace)
    assert cfg.spad_words == trace.cfg.spad_words
    out = results(trace, cfg)  # executes and checks every command against the trace
    layers = {(g["layer"], g["pass"]) for g in out["by_layer_pass"]}
    for layer in ("conv1", "conv2", "fc1", "fc2"):
        assert {(layer, p) for p in ("forward", "backward", "update")} <= layers
    assert out["totals"]["fp32_over_dfp_energy"] > 1


def test_results_carry_the_memory_planners_scratchpad_per_layer_and_pass(tmp_path):
    """Issue #6: the simulator reports the scratchpad each layer needs under the optimized schedule."""
    from reference.data import load_digits_split
    from reference.formats import Width
    from reference.memplan import Strategy
    from reference.pooled import scratchpad_by_layer_pass
    from reference.train import IterSpec, Precision, TrainConfig, train
    from sim.core import fitting_config
    from sim.report import write_report

    d = load_digits_split()
    res = train(TrainConfig(precision=Precision.DFP16, epochs=1, seed=0, trace_iters=IterSpec.parse("0")), d)
    out = results(res.trace, fitting_config(res.trace), execute=False)
    want = scratchpad_by_layer_pass(32, Width.W16, Strategy.REORDER, momentum=True)
    got = {(g["layer"], g["pass"]): g["planned_scratchpad_bytes"] for g in out["by_layer_pass"]}
    assert got[("conv1", "update")] == want[("conv1", "update")] > 0
    assert all(v == want[k] for k, v in got.items() if k in want)
    assert sum(v is not None for v in got.values()) >= 10
    assert out["scratchpad_bytes"] == 4 * 1024 * 256 // 8  # the default core: K split, no growth
    assert "planned scratchpad bytes" in write_report([out], tmp_path / "report").read_text()


def test_planned_scratchpad_follows_the_traced_image_shape():
    """A 12x12 data set (not digits' 8x8): the plan is made for the image shape the trace records (seed 0)."""
    from reference.data import Dataset, load_digits_split
    from reference.formats import Width
    from reference.memplan import Strategy
    from reference.models import build_model
    from reference.pooled import net_of_model, scratchpad_by_layer_pass
    from reference.train import IterSpec, Precision, TrainConfig, train
    from sim.replay import planned_scratchpad

    d = load_digits_split()
    pad = lambda x: np.pad(x.reshape(-1, 8, 8), ((0, 0), (2, 2), (2, 2))).reshape(len(x), -1)  # noqa: E731
    big = Dataset("mnist:/nowhere", pad(d.x_train[:64]), d.y_train[:64], pad(d.x_test[:16]), d.y_test[:16],
                  (12, 12, 1))
    trace = train(TrainConfig(precision=Precision.DFP16, epochs=1, seed=0, trace_iters=IterSpec.parse("0")),
                  big).trace
    assert trace.meta["image_hwc"] == [12, 12, 1]
    want = scratchpad_by_layer_pass(32, Width.W16, Strategy.REORDER, net=net_of_model(build_model("cnn", (12, 12, 1))),
                                    momentum=True)
    assert planned_scratchpad(trace) == want
    digits = scratchpad_by_layer_pass(32, Width.W16, Strategy.REORDER, momentum=True)
    assert want[("relu1", "backward")] != digits[("relu1", "backward")], "the image size shows in the plan"


def test_replay_counts_the_host_reruns_cycles_and_energy():
    from reference.config import PRESETS
    from reference.engine import Engine
    from reference.formats import DfpFormat, DfpTensor, RoundingMode, TensorSetting, Width
    from reference.isa import Command, cycles
    from reference.ops import Op
    from reference.trace import TraceRecorder
    from sim.replay import results

    cfg = PRESETS["tiny"]
    e = Engine(cfg)
    e.rerun_threshold = 655
    for tid, f in ((1, 0), (2, 10)):
        e.set_setting(tid, TensorSetting(DfpFormat(Width.W16, f), RoundingMode.NEAREST_EVEN, tid != 1))
    rec = TraceRecorder()
    e.recorder = rec
    rec.begin_iteration(0, e)
    e.run(Op.CONVERT, 2, [DfpTensor(np.array([[100, -3, 7, 1]], dtype=np.int64), DfpFormat(Width.W16, 0))], [1])
    e.update_formats()
    rec.end_iteration()
    res = results(rec.trace(e, {"tensor_names": {"1": "x", "2": "y"}}))
    rr = res["reruns"]
    assert rr["reruns"] == 1 and rr["commands"] >= 1
    # at least the re-issued CONVERT (1 row of 4 16-bit values: one beat), at most the whole iteration
    one = cycles(Command(int(Op.CONVERT), tid_d=2, tid_a=1, m=1, n=4), e.settings, cfg)
    assert one <= rr["cycles"] < res["totals"]["cycles"]
    assert 0 < rr["energy_pj"] < res["totals"]["energy_pj"]["total"]
