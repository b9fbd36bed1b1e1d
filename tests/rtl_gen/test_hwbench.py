"""rtl_gen.hwbench: the table of synth.json / pnr.json figures."""

from __future__ import annotations

import json

from rtl_gen.hwbench import main


def test_table_rows_from_synth_and_pnr(tmp_path, capsys):
    a, b = tmp_path / "tiny", tmp_path / "w8"
    a.mkdir()
    b.mkdir()
    (a / "synth.json").write_text(json.dumps({
        "config_digest": "abc", "total": {"luts": 2000, "flip_flops": 300, "memory_bits": 4096},
        "compute_unit": {"luts": 800}, "peak_macs_per_cycle_8bit": 8,
        "macs_per_cycle_8bit_per_1000_lut4": {"core": 4.0, "compute_unit": 10.0}}))
    (a / "pnr.json").write_text(json.dumps({
        "config_digest": "abc", "fmax_mhz": 101.5, "luts": 1900, "ffs": 310, "brams": 4, "dsps": 8,
        "critical_path": {"start": "x.Q", "end": "y.DI", "delay_ns": 9.8, "carry_cells": 3}}))
    (b / "synth.json").write_text(json.dumps({
        "config_digest": "def", "total": {"luts": 5000, "flip_flops": 1, "memory_bits": 0},
        "compute_unit": None, "peak_macs_per_cycle_8bit": None,
        "macs_per_cycle_8bit_per_1000_lut4": {"core": None, "compute_unit": None}}))
    assert main([str(a), str(b), "--out", str(tmp_path / "hw.md")]) == 0
    lines = (tmp_path / "hw.md").read_text().splitlines()
    assert lines[2] == ("| tiny | abc | 2000 | 300 | 4096 | 800 | 8 | 4.0 / 10.0 | 101.5 | 1900 / 310 / 4 / 8 "
                        "| `x.Q` -> `y.DI` (9.8 ns, 3 carry cells) |")
    assert lines[3] == "| w8 | def | 5000 | 1 | 0 | - | - | - / - | - | - | - |"
    assert len(lines[1].split("|")) == len(lines[0].split("|"))


def test_directory_without_results_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path), "--out", str(tmp_path / "hw.md")]) == 2
    err = capsys.readouterr().err
    assert "has neither synth.json nor pnr.json" in err and err.count("\n") == 1
    assert not (tmp_path / "hw.md").exists()
