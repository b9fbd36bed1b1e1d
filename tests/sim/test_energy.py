"""Energy table: published defaults, TOML overrides, validation naming the field, per-command energy."""

from __future__ import annotations

import math

import pytest

from reference.formats import Width
from reference.isa import Command
from reference.ops import Op
from sim.core import Pass, SimCommand
from sim.energy import EnergyTable, OpEnergy, command_energy, load_energy_table, parse_energy_table


def test_defaults_are_the_45nm_figures():
    t = EnergyTable()
    # Horowitz, ISSCC 2014 (45 nm): the numbers quoted in the project issue.
    assert (t.int8.add, t.int8.mul, t.int32.mul, t.fp32.add, t.fp32.mul) == (0.03, 0.2, 3.1, 0.9, 3.7)
    assert t.spad_byte == 2.5 and t.bus_byte == 162.5
    assert t.int8.add < t.int16.add < t.int32.add and t.int8.mul < t.int16.mul < t.int32.mul


def test_toml_overrides_a_subset(tmp_path):
    p = tmp_path / "e.toml"
    p.write_text("[int8]\nmul = 0.25\n[memory]\nbus_byte = 100\n[stats]\nvalue = 0\n")
    t = load_energy_table(p)
    assert t.int8 == OpEnergy(0.03, 0.25) and t.bus_byte == 100.0 and t.stats_value == 0.0
    assert t.int16 == EnergyTable().int16


@pytest.mark.parametrize("doc, msg", [
    ("[int8]\nmul = nan\n", r"\[int8\] mul=nan"),
    ("[fp32]\nadd = -1\n", r"\[fp32\] add=-1"),
    ("[memory]\nbus_byte = true\n", r"\[memory\] bus_byte=True"),
    ("[memory]\nbus = 1\n", r"unknown field\(s\) \['bus'\]"),
    ("[int4]\nadd = 1\n", r"unknown table\(s\) \['int4'\]"),
    ("int8 = 3\n", r"\[int8\] must be a table"),
])
def test_bad_tables_name_the_field(doc, msg):
    import tomllib

    with pytest.raises(ValueError, match=msg):
        parse_energy_table(tomllib.loads(doc))


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_energy_table(tmp_path / "missing.toml")
    p = tmp_path / "bad.toml"
    p.write_text("[int8\n")
    with pytest.raises(ValueError, match="malformed TOML"):
        load_energy_table(p)
    with pytest.raises(ValueError, match="stats_value=inf"):
        EnergyTable(stats_value=math.inf)


def test_command_energy_by_hand():
    c = SimCommand(Command(Op.AXPY, m=2, n=3), 10, 0, 0, "fc", Pass.UPDATE, Width.W16, compute_cycles=2, macs=6,
                   adds=6, muls=6, values=6, spad_read_words=2, spad_write_words=1, bus_words=0)
    t = EnergyTable()
    e = command_energy(c, t, word_bytes=32)
    assert e.compute == pytest.approx(6 * (0.03 + 0.07 / 3) + 6 * 0.8)
    assert e.stats == pytest.approx(6 * 0.1)
    assert e.spad == pytest.approx(3 * 32 * 2.5) and e.bus == 0
    f = command_energy(c, t, word_bytes=32, fp32=True)
    assert f.compute == pytest.approx(6 * 0.9 + 6 * 3.7) and f.stats == 0
    ld = SimCommand(Command(10, k=4), 10, 0, 0, "fc", Pass.FORWARD, Width.W8, spad_write_words=4, bus_words=4)
    assert command_energy(ld, t, 32).total == pytest.approx(4 * 32 * (2.5 + 162.5))
