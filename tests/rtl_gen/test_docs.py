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
