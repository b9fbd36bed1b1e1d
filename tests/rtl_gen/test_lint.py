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


def test_gen_output_passes_a_plain_verilator_lint_as_shipped(tmp_path):
    """`dlu gen`'s folder alone, no waiver file from this repository: `verilator --lint-only -Wall
    -f files.f` in it, and `-F files.f` from elsewhere, report nothing; the embedded waivers are
    exactly the documented ones."""
    import subprocess

    from rtl_gen.lint import embedded_waivers, verilator_path, waiver_rules

    out = tmp_path / "gen"
    generate(PRESETS["tiny"], out)
    listed = (out / "files.f").read_text().split()
    assert listed == ["dlu_core.v"] and all((out / f).is_file() for f in listed)
    text = (out / "dlu_core.v").read_text()
    assert text.startswith(embedded_waivers())
    assert [ln.split()[3] for ln in text.splitlines() if "verilator lint_off" in ln] == list(waiver_rules())
    for args, cwd in ((["-f", "files.f"], out), (["-F", str(out / "files.f")], tmp_path)):
        p = subprocess.run([str(verilator_path()), "--lint-only", "-Wall", *args], cwd=cwd, capture_output=True,
                           text=True, timeout=600)
        assert p.returncode == 0 and "%Warning" not in p.stderr + p.stdout, (p.stdout + p.stderr)[-3000:]


def test_plain_lint_without_the_waivers_would_fail(tmp_path):
    """The check above can fail: the same netlist without its metacomments has warnings."""
    import subprocess

    from rtl_gen.lint import embedded_waivers, verilator_path

    out = tmp_path / "gen"
    generate(PRESETS["tiny"], out)
    v = out / "dlu_core.v"
    v.write_text(v.read_text().removeprefix(embedded_waivers()))
    p = subprocess.run([str(verilator_path()), "--lint-only", "-Wall", "dlu_core.v"], cwd=out, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode != 0 and "%Warning-UNUSEDSIGNAL" in p.stderr
