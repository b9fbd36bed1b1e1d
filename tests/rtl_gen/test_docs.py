"""docs/architecture.md's generated sections equal what rtl_gen.docs produces now."""

from __future__ import annotations

from pathlib import Path

from rtl_gen import docs

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def test_generated_sections_are_current():
    got = docs.extract(DOC.read_text())
    want = docs.sections()
    assert set(got) == set(want)
    for name in want:
        assert got[name] == want[name], f"docs/architecture.md section {name} is stale: python -m rtl_gen.docs {DOC}"


def test_register_table_names_every_register():
    from hw import regmap
    from reference.config import PRESETS

    table = docs.extract(DOC.read_text())["REGMAP"]
    for r in regmap.register_map(PRESETS["default"]):
        assert f"| {r.name} |" in table


PROG = DOC.with_name("programming.md")


def test_programming_guide_sections_are_current():
    got = docs.extract(PROG.read_text())
    want = docs.programming_sections()
    assert set(got) == set(want)
    for name in want:
        assert got[name] == want[name], f"docs/programming.md section {name} is stale: python -m rtl_gen.docs {PROG}"


def test_programming_guide_names_every_error_code_opcode_and_register():
    from hw import regmap
    from reference import isa
    from reference.config import PRESETS
    from reference.ops import Op

    text = PROG.read_text()
    for name in [e.name for e in isa.ErrorCode] + [o.name for o in Op] + [c.name for c in isa.Ctl]:
        assert f"| {name} |" in text, name
    for r in regmap.register_map(PRESETS["default"]):
        assert f"| {r.name} |" in text, r.name
    for path in ("docs/examples/host_example.c", "docs/examples/host_example.py", "docs/examples/dlu_host.h",
                 "docs/examples/verilator_shim.cpp"):
        assert path in text and (PROG.parents[1] / path).is_file(), path
