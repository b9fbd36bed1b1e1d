"""``dlu memplan``: table, atomic plot, budget search and clear errors on bad input."""

from __future__ import annotations

import argparse
import json

import pytest

from dlu.cli import main
from reference.formats import Width
from reference.memplan import Strategy, largest_batch, plan
from reference.memplan_cli import parse_bytes, register
from reference.nets import digits_cnn


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["memplan", *argv])
    return args.func(args)


def test_parse_bytes_units_and_errors():
    assert parse_bytes("8GiB") == 8 * 2**30
    assert parse_bytes("500MB") == 500 * 10**6
    assert parse_bytes("1.5 KiB") == 1536
    assert parse_bytes("123") == 123
    for bad in ("", "-5", "12XB", "0", "GiB"):
        with pytest.raises(ValueError, match="--budget"):
            parse_bytes(bad)


def test_table_lists_every_schedule_with_the_planned_peak(tmp_path, capsys):
    png = tmp_path / "sub" / "plot.png"
    assert run(["digits_cnn", "--batch", "16", "--width", "8", "--align", "1", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    for s in Strategy:
        assert s.label in out
    conv = plan(digits_cnn(), 16, Width.W8, Strategy.CONVENTIONAL).peak_arena
    assert f"{conv / 1024:.1f}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in png.parent.iterdir()) == ["plot.png"]  # no temp file left behind


def test_budget_table_reports_the_searched_batch(capsys):
    budget = 400 * 1024
    assert run(["digits_cnn", "--width", "32", "--budget", str(budget), "--no-plot", "--align", "256"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines()[::-1] if line.strip().startswith(Strategy.REORDER.label))
    n = largest_batch(digits_cnn(), budget, Width.W32, Strategy.REORDER, align=256)
    assert n > 0 and int(row.split()[-2]) == n


def test_bad_input_exits_2_naming_the_field(tmp_path, capsys):
    bad = tmp_path / "net.json"
    bad.write_text(json.dumps({"input": [1, 8, 8], "layers": [{"type": "conv", "kernel": 3}]}))
    assert main(["memplan", str(bad), "--no-plot"]) == 2
    assert "missing field 'out_channels'" in capsys.readouterr().err
    assert main(["memplan", "digits_cnn", "--budget", "lots", "--no-plot"]) == 2
    assert "--budget: 'lots'" in capsys.readouterr().err
    assert main(["memplan", "no_such_net", "--no-plot"]) == 2
    assert "not a built-in" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["memplan", "digits_cnn", "--batch", "0"])


def test_measure_runs_the_trainers_cnn_and_refuses_other_nets(capsys):
    assert run(["digits_cnn", "--batch", "8", "--width", "32", "--no-plot", "--measure"]) == 0
    out = capsys.readouterr().out
    assert "tracemalloc peak vs plan" in out and out.count(" arena ") >= len(Strategy)
    with pytest.raises(ValueError, match="only digits_cnn"):
        run(["lenet5", "--batch", "2", "--width", "32", "--no-plot", "--measure"])
