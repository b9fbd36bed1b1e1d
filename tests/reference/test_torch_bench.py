"""The PyTorch side-by-side harness (bench/): data export, network plan, table; torch parts skip without torch."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench import torch_worker as worker
from bench.torch_side_by_side import SCHEDULE, Cell, export_data, format_markdown, main, torch_available
from reference.data import load_dataset, load_npz
from reference.nets import Layer, LayerKind, Net, infer_shapes, load_net, net_for_data


def test_export_loads_back_identical_arrays_and_network(tmp_path):
    npz, net_file = export_data("digits", "cnn", tmp_path)
    ref = load_dataset("digits")
    got = load_npz(npz)  # what `dlu train --data npz:FILE` reads
    for k in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(got, k), getattr(ref, k))
    assert got.image_hwc == ref.image_hwc and got.classes == ref.classes
    assert load_net(net_file) == net_for_data("cnn", (1, 8, 8), 10)
    # the worker's view: NCHW float32 of the same pixels
    arr = worker.load_arrays(npz)
    assert arr["x_train"].shape == (len(ref.x_train), 1, 8, 8) and arr["x_train"].dtype == np.float32
    np.testing.assert_array_equal(arr["x_train"][:, 0].reshape(len(ref.x_train), 64),
                                  ref.x_train.astype(np.float32))
    np.testing.assert_array_equal(arr["y_test"], ref.y_test)


@pytest.mark.parametrize("name,shape", [("lenet5", (1, 28, 28)), ("lenet5", (1, 32, 32)), ("cnn", (3, 16, 16))])
def test_layer_plan_matches_golden_shapes(name, shape):
    net = net_for_data(name, shape, 10)
    plan = worker.layer_plan(net.to_dict())
    shapes = [s for s in infer_shapes(net) if s.weights]
    params = [kw for kind, kw in plan if kind in ("conv", "linear")]
    assert len(params) == len(shapes)
    for kw, s in zip(params, shapes, strict=True):
        if "kernel_size" in kw:
            n_weights = kw["out_channels"] * kw["in_channels"] // kw["groups"] * kw["kernel_size"] ** 2
        else:
            n_weights = kw["in_features"] * kw["out_features"]
        assert n_weights == s.weights
    pools = [kw for kind, kw in plan if kind == "maxpool"]
    assert all(kw["stride"] == 2 and kw["kernel_size"] == 2 for kw in pools)


def test_layer_plan_refuses_layers_it_does_not_build():
    net = Net("n", (4, 8, 8), (Layer("norm", LayerKind.LRN, size=5, alpha=1e-4, beta=0.75, bias=1.0),
                                Layer("fc", LayerKind.LINEAR, out_features=10),
                                Layer("loss", LayerKind.SOFTMAX_CE)))
    with pytest.raises(worker.WorkerError, match="layer 'norm' of type 'lrn'"):
        worker.layer_plan(net.to_dict())


def test_cosine_lr_is_the_golden_schedule():
    from reference.train import LrSchedule

    for ep in range(8):
        assert worker.cosine_lr(0.05, ep, 8) == LrSchedule.COSINE.at(0.05, ep, 8)


def test_table_reports_medians_and_target_verdicts():
    cells = {k: Cell(*k) for k in SCHEDULE}
    cpu = {("golden", "fp32"): [1.0, 3.0, 2.0], ("pytorch", "fp32"): [1.0, 1.0, 1.0],
           ("golden", "dfp8"): [4.0, 4.0, 4.0], ("pytorch", "qtorch8"): [5.0, 5.0, 5.0],
           ("golden", "dfp16"): [7.0, 7.0, 7.0], ("golden", "dfp32"): [5.0, 5.0, 5.0]}
    for key, ts in cpu.items():
        cells[key].add([{"cpu_s": t, "time_s": 2 * t} for t in ts], 0.5)
    md = format_markdown("t", cells)
    assert "| golden fp32 | 2.000 | 4.000 | 50.00 |" in md  # median of 1, 3, 2
    assert "| golden fp32 / PyTorch fp32 | 2.00x | <= 1.5x | NOT met |" in md
    assert "| golden dfp8 / QPyTorch fixed 8 | 0.80x | <= 1x | met |" in md
    assert "| golden dfp16 / golden fp32 | 3.50x | <= 3x | NOT met |" in md
    assert "| golden dfp32 / golden fp32 | 2.50x | <= 3x | met |" in md
    assert "QPyTorch fixed 16 |" not in md.split("| CPU-time ratio")[0]  # no runs: no row, no ratio
    assert "fixed 16 (no target" not in md


def test_missing_torch_interpreter_skips_with_one_line(tmp_path, capsys):
    out = tmp_path / "t.md"
    assert main(["--torch-python", str(tmp_path / "nope" / "python"), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("PyTorch side-by-side skipped:")
    assert not out.exists()
    assert torch_available(tmp_path / "nope") is not None


def test_worker_trains_cnn_in_every_mode(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("qtorch")
    npz, net_file = export_data("digits", "cnn", tmp_path)
    data = worker.load_arrays(npz)
    net = json.loads(net_file.read_text())
    for mode in worker.MODES:
        rec = worker.run(data, net, mode, epochs=2, batch=32, lr=0.05, momentum=0.9, weight_decay=1e-4, seed=0)
        assert rec["threads"] == 1 and len(rec["epochs"]) == 2
        assert all(math.isfinite(e["loss"]) and e["cpu_s"] > 0 for e in rec["epochs"])
        assert rec["epochs"][1]["loss"] < rec["epochs"][0]["loss"]  # it learns
