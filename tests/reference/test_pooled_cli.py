"""``dlu train --memplan``: runs on the planned arena, same metrics as without, fp32 only."""

from __future__ import annotations

import argparse
import json

import pytest

from reference.cli import register


def _run(tmp_path, *extra: str) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--epochs", "1", "--seed", "4", "--out", str(tmp_path), "--quiet",
                              "--no-plots", *extra])
    return args.func(args)


def _pooled_like_plain(tmp_path, capsys, memplan: str, *model: str) -> dict:
    """Train plain and on ``memplan`` (seed 4, see _run); the epoch metrics must be equal; the plan's record."""
    assert _run(tmp_path, *model, "--precision", "fp32", "--name", "plain") == 0
    assert _run(tmp_path, *model, "--precision", "fp32", "--memplan", memplan, "--name", "pooled") == 0
    assert f"memplan {memplan}: arena" in capsys.readouterr().out
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    pooled = json.loads((tmp_path / "pooled" / "metrics.json").read_text())
    for key in ("loss", "train_acc", "test_acc"):
        assert pooled["epochs"][0][key] == plain["epochs"][0][key]
    return pooled["memplan"]


def test_train_memplan_reorder_writes_the_same_metrics_plus_the_plan(tmp_path, capsys):
    mp = _pooled_like_plain(tmp_path, capsys, "reorder")
    assert mp["strategy"] == "reorder" and mp["pool_peak_bytes"] == mp["peak_live_bytes"] <= mp["peak_arena_bytes"]
    assert set(mp["orders"]) == {"conv1", "conv2", "fc1", "fc2"}


def test_train_memplan_weight_area_runs_fused_blocks_with_the_same_metrics(tmp_path, capsys):
    """The MLP's two layers are both fused at batch 32."""
    mp = _pooled_like_plain(tmp_path, capsys, "weight-area", "--model", "mlp")
    assert mp["strategy"] == "weight_area" and mp["fused_rows"] == 48
    assert mp["orders"] == {"fc1": "fused", "fc2": "fused"}


def test_train_memplan_refuses_dfp(tmp_path):
    with pytest.raises(ValueError, match="needs precision fp32"):
        _run(tmp_path, "--precision", "dfp16", "--memplan", "reorder")
