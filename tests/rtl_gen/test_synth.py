"""Area reporting: Yosys ``stat -json`` parsing and per-module memory bits (quick), a real
hierarchical synthesis of a two-module design (quick) and of the tiny preset (slow)."""

from __future__ import annotations

import json

import pytest

from rtl_gen.synth import module_memory_bits, netlist_memory_bits, parse_stat_json

# The shape of Yosys 0.70 `stat -json -width` with hierarchy kept (counts made up).
STAT = {
    "modules": {
        "\\top": {"num_cells": 10, "num_submodules": 2,
                  "num_cells_by_type": {"$lut_1": 3, "$lut_4": 5, "top.u0": 1, "top.u1": 1}},
        "\\top.u0": {"num_cells": 9, "num_submodules": 0,
                     "num_cells_by_type": {"$_DFF_P_": 4, "$_SDFFE_PP0P_": 2, "$lut_2": 2, "$mem_v2": 1}},
        "\\top.u1": {"num_cells": 7, "num_submodules": 0,
                     "num_cells_by_type": {"$lut_3": 6, "$_DFF_P_": 1}},
    },
    "design": {"num_cells": 28, "num_submodules": 2,
               "num_cells_by_type": {"$_DFF_P_": 5, "$_SDFFE_PP0P_": 2, "$lut_1": 3, "$lut_2": 2, "$lut_3": 6,
                                     "$lut_4": 5, "$mem_v2": 1, "top.u0": 1, "top.u1": 1}},
}


def test_parse_stat_json_local_subtree_and_total_counts():
    rep = parse_stat_json(STAT, {"top.u0": 64})
    assert rep.modules["top"].as_dict() == {"cells": 8, "luts": 8, "flip_flops": 0, "memory_bits": 0, "memories": 0}
    assert rep.modules["top.u0"].as_dict() == {"cells": 9, "luts": 2, "flip_flops": 6, "memory_bits": 64,
                                               "memories": 1}
    assert rep.subtrees["top"].luts == 8 + 2 + 6 and rep.subtrees["top"].flip_flops == 7
    assert rep.subtrees["top.u1"] == rep.modules["top.u1"]
    assert rep.total.as_dict() == {"cells": 24, "luts": 16, "flip_flops": 7, "memory_bits": 64, "memories": 1}
    rows = rep.table()
    assert [r["module"] for r in rows] == ["top", "top.u0", "top.u1"]
    assert rows[0]["subtree_luts"] == 16 and rows[0]["subtree_memory_bits"] == 64


def test_parse_stat_json_rejects_other_output():
    with pytest.raises(ValueError, match="no per-module statistics"):
        parse_stat_json({"cells": 3})


def test_memory_bits_of_netlist_arrays():
    text = "  reg [63:0] bank0 [63:0];\n  reg [1151:0] mem [7:0];\n  reg [3:0] notmem;\n"
    assert netlist_memory_bits(text) == 64 * 64 + 1152 * 8


def test_memory_bits_per_module():
    text = ("module top(a);\n  reg [3:0] x;\nendmodule\n"
            "module \\top.u0 (a, b);\n  reg [7:0] m [15:0];\n  reg [1:0] n [0:2];\nendmodule\n")
    assert module_memory_bits(text) == {"top": 0, "top.u0": 8 * 16 + 2 * 3}


HIER = """
module sub(input clk, input [7:0] a, output reg [7:0] q);
  reg [7:0] m [0:15]; reg [3:0] ad;
  always @(posedge clk) begin m[a[3:0]] <= a; q <= m[ad] + a; ad <= a[7:4]; end
endmodule
module top(input clk, input [7:0] a, output [7:0] q, output [7:0] r);
  sub u0(clk, a, q); sub u1(clk, ~a, r);
endmodule
"""


def test_synthesize_keeps_hierarchy(tmp_path):
    from rtl_gen.synth import synthesize

    (tmp_path / "h.v").write_text(HIER)
    rep = synthesize(tmp_path / "h.v", tmp_path / "syn", top="top")
    assert set(rep.modules) == {"top", "sub"}
    # each instance of `sub`: 8 q flip-flops (Yosys folds the address register into the memory's
    # synchronous read port) and one 16 x 8 memory
    assert rep.modules["sub"].flip_flops == 8 and rep.modules["sub"].memories == 1
    assert rep.modules["sub"].memory_bits == 128
    assert rep.total.flip_flops == 16 and rep.total.memories == 2 and rep.total.luts >= 16
    assert json.loads((tmp_path / "syn" / "yosys_stat.json").read_text())["modules"]


@pytest.mark.slow
def test_tiny_preset_synthesizes(tmp_path):
    from dlu.cli import main

    out = tmp_path / "g"
    assert main(["gen", "--config", "tiny", "--out", str(out), "--synth"]) == 0
    rep = json.loads((out / "synth.json").read_text())
    mods = {r["module"]: r for r in rep["modules"]}
    assert rep["total"]["luts"] > 1000 and rep["total"]["flip_flops"] > 100 and rep["total"]["memories"] >= 6
    assert rep["total"]["memory_bits"] >= 4 * 64 * 64  # the scratchpad banks at least
    assert mods["dlu_core.spad"]["memory_bits"] >= 4 * 64 * 64
    assert rep["compute_unit"]["luts"] == mods["dlu_core.cu"]["subtree_luts"] > 0
    assert rep["peak_macs_per_cycle_8bit"] == 8
    assert rep["macs_per_cycle_8bit_per_1000_lut4"]["core"] == round(8000 / rep["total"]["luts"], 3)
