"""Area reporting: Yosys statistics parsing (quick) and a real synthesis of the tiny preset (slow)."""

from __future__ import annotations

import pytest

from rtl_gen.synth import netlist_memory_bits, parse_stat

STAT = """
=== dlu_core ===

        +----------Local Count, excluding submodules.
        |
    16934 wires
    97972 wire bits
       32 ports
      261 port bits
    20085 cells
      775   $_SDFFE_PP0P_
        2   $_SDFFE_PP1P_
      204   $_SDFF_PP0_
       10   $_DFF_P_
      184   $lut_1
     5553   $lut_2
     6030   $lut_3
     7321   $lut_4
        7   $mem_v2
        9   $scopeinfo
"""


def test_parse_stat_counts_luts_flip_flops_and_memories():
    a = parse_stat(STAT, memory_bits=123)
    assert (a.cells, a.luts, a.flip_flops, a.memories, a.memory_bits) == (20085, 19088, 991, 7, 123)


def test_parse_stat_rejects_output_without_cells():
    with pytest.raises(ValueError, match="no cell count"):
        parse_stat("nothing here")


def test_memory_bits_of_netlist_arrays():
    text = "  reg [63:0] bank0 [63:0];\n  reg [1151:0] mem [7:0];\n  reg [3:0] notmem;\n"
    assert netlist_memory_bits(text) == 64 * 64 + 1152 * 8


@pytest.mark.slow
def test_tiny_preset_synthesizes(tmp_path):
    from reference.config import PRESETS
    from rtl_gen.generate import generate
    from rtl_gen.synth import synthesize

    generate(PRESETS["tiny"], tmp_path / "g")
    area = synthesize(tmp_path / "g" / "dlu_core.v", tmp_path / "syn")
    assert area.luts > 1000 and area.flip_flops > 100 and area.memories >= 6
    assert area.memory_bits >= 4 * 64 * 64  # the scratchpad banks at least
