"""Verilator -Wall lint of the generated netlist (tiny preset) with the documented waivers."""

from __future__ import annotations

import pytest

from reference.config import PRESETS
from rtl_gen.generate import generate
from rtl_gen.lint import WAIVERS, lint


def test_waiver_file_only_names_generator_artifacts():
    rules = [line.split()[2] for line in WAIVERS.read_text().splitlines() if line.startswith("lint_off")]
    assert sorted(rules) == sorted(["UNUSEDSIGNAL", "WIDTHEXPAND", "WIDTHTRUNC", "CASEINCOMPLETE",
                                    "PROCASSINIT", "DECLFILENAME"])
    assert all('-file "*dlu_core.v"' in line for line in WAIVERS.read_text().splitlines()
               if line.startswith("lint_off"))


@pytest.mark.parametrize("with_cu", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_tiny_netlist_is_lint_clean(tmp_path, with_cu):
    generate(PRESETS["tiny"], tmp_path / "g", with_compute_unit=with_cu)
    res = lint(tmp_path / "g" / "dlu_core.v")
    assert res.ok, res.output[-3000:]


@pytest.mark.parametrize("widths", [(8,), (16,), (32,), (16, 32)], ids=lambda ws: "w" + "+".join(map(str, ws)))
def test_width_variant_netlist_is_lint_clean(tmp_path, widths):
    """Cores with fewer widths (tiny preset) lint as cleanly, with the same waivers."""
    import dataclasses

    generate(dataclasses.replace(PRESETS["tiny"], widths=widths), tmp_path / "g")
    res = lint(tmp_path / "g" / "dlu_core.v")
    assert res.ok, res.output[-3000:]


def test_lint_reports_unwaived_warnings(tmp_path):
    """A design problem the waivers do not cover (an undriven output) fails the lint."""
    v = tmp_path / "dlu_core.v"
    v.write_text("module dlu_core(input clk, output [3:0] y);\nendmodule\n")
    res = lint(v)
    assert not res.ok and "%Warning-UNDRIVEN" in res.warnings
