"""dlu gen: manifest contents, headers, atomic replacement, bad input."""

from __future__ import annotations

import hashlib
import json
import runpy
from pathlib import Path

import pytest

from dlu.cli import main
from hw import regmap
from reference import isa
from reference.config import PRESETS
from rtl_gen import generate as gen

CFG = PRESETS["tiny"]


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("gen") / "tiny"
    assert main(["gen", "--config", "tiny", "--out", str(d)]) == 0
    return d


def test_writes_netlist_manifest_and_headers(out):
    assert sorted(p.name for p in out.iterdir()) == ["dlu_core.v", "dlu_regs.h", "dlu_regs.py", "files.f",
                                                      "manifest.json"]
    man = json.loads((out / "manifest.json").read_text())
    assert man["config"] == CFG.to_dict() and man["config_digest"] == CFG.digest()
    assert man["register_map"] == regmap.as_dict(CFG)
    assert man["error_codes"] == {e.name: int(e) for e in isa.ErrorCode}
    assert man["timing"]["SETUP_CYCLES"] == isa.SETUP_CYCLES and man["timing"]["DRAIN_CYCLES"] == isa.DRAIN_CYCLES
    for name, digest in man["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name
    text = (out / "dlu_core.v").read_text()
    assert "module dlu_core(" in text
    for p in man["ports"]:
        assert p["name"] in text, p["name"]
    names = {p["name"]: p for p in man["ports"]}
    assert names["s_axil_awaddr"]["direction"] == "input" and names["s_axil_rdata"]["direction"] == "output"
    assert names["m_axis_tdata"]["width"] == CFG.word_bits


def test_command_format_agrees_with_decoder(out):
    """Every field position in the manifest, applied to a random command's words, gives back
    exactly what reference.isa.Command.decode gives."""
    fmt = json.loads((out / "manifest.json").read_text())["command_format"]
    c = isa.Command(opcode=6, tid_d=513, tid_a=77, tid_b=1000, addr_a=0xDEADBEEF, addr_b=17, addr_d=99,
                    m=65535, n=3, k=0x12345678, alpha=-5, alpha_frac=-32, broadcast_b=True, irq=False)
    words = c.encode()
    got = {}
    for f in fmt:
        got[f["name"]] = (words[f["word"]] >> f["lsb"]) & ((1 << f["width"]) - 1)
    assert got["opcode"] == 6 and got["tid_b"] == 1000 and got["addr_a"] == 0xDEADBEEF
    assert got["m"] == 65535 and got["n"] == 3 and got["k"] == 0x12345678
    assert got["alpha_frac"] == (-32) & 0xFF and got["alpha"] == (-5) & 0xFFFFFFFF
    assert got["broadcast_b"] == 1 and got["irq"] == 0
    assert {f["name"] for f in fmt} == set(gen._COMMAND_PROBES)


def test_python_header_matches_regmap(out):
    ns = runpy.run_path(str(out / "dlu_regs.py"))
    regs = regmap.by_name(CFG)
    for name, r in regs.items():
        assert ns[f"{name}_OFFSET"] == r.offset
        for f in r.fields:
            assert ns[f"{name}_{f.name.upper()}_MASK"] == f.mask
    assert ns["CONFIG_DIGEST"] == int(CFG.digest()[:8], 16)
    assert ns["ERROR_BANK_CONFLICT"] == isa.ErrorCode.BANK_CONFLICT
    c = (out / "dlu_regs.h").read_text()
    assert f"#define DLU_STATUS_OFFSET 0x{regs['STATUS'].offset:X}u" in c


def test_output_replaced_atomically_and_kept_on_failure(tmp_path, monkeypatch):
    from amaranth.back import verilog

    # The file handling is under test here, not the netlist: skip the slow conversion.
    monkeypatch.setattr(verilog, "convert", lambda top, name, **kw: f"module {name}(); endmodule\n")
    d = tmp_path / "o"
    d.mkdir()
    (d / "stale.txt").write_text("old")
    gen.generate(CFG, d)
    assert not (d / "stale.txt").exists() and (d / "manifest.json").exists()
    before = {p.name: p.read_bytes() for p in d.iterdir()}

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(gen, "c_header", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        gen.generate(CFG, d)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["o"]  # no temporary directory left behind


def test_bad_config_is_a_clear_error(tmp_path, capsys):
    assert main(["gen", "--config", "huge", "--out", str(tmp_path / "x")]) == 2
    assert "'huge' is neither a preset" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[core]\nlanes = 3\n")
    assert main(["gen", "--config", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "lanes=3" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("bits", [8, 16, 32])
def test_width_variant_manifest_and_headers(tmp_path, bits):
    """A configs/default-wN.toml style file over the tiny preset: the manifest carries the widths
    (and the digest covers them), peak MACs only for the supported width, the headers the width codes."""
    from reference.config import load_config
    from reference.formats import Width

    toml = tmp_path / "w.toml"
    toml.write_text(f'[core]\npreset = "tiny"\nwidths = [{bits}]\n')
    cfg = load_config(toml)
    d = tmp_path / "g"
    assert main(["gen", "--config", str(toml), "--out", str(d)]) == 0
    man = json.loads((d / "manifest.json").read_text())
    assert man["config"]["widths"] == [bits] and man["config"] == cfg.to_dict()
    assert man["config_digest"] == cfg.digest() != CFG.digest()
    w = Width.from_bits(bits)
    assert man["peak_macs_per_cycle"] == {f"W{bits}": CFG.lanes * 32 // bits}
    ns = runpy.run_path(str(d / "dlu_regs.py"))
    assert ns["WIDTH_CODES"] == 1 << int(w) and ns["CONFIG_DIGEST"] == int(cfg.digest()[:8], 16)


def test_example_width_configs_load():
    """configs/default-w<bits>[-<bits>].toml: the default preset with the widths of the file name."""
    import dataclasses

    from reference.config import load_config

    root = Path(__file__).resolve().parents[2] / "configs"
    names = sorted(p.name for p in root.glob("default-w*.toml"))
    assert {"default-w8.toml", "default-w16.toml", "default-w32.toml"} <= set(names)
    for name in names:
        widths = tuple(int(b) for b in name.removeprefix("default-w").removesuffix(".toml").split("-"))
        assert load_config(root / name) == dataclasses.replace(PRESETS["default"], widths=widths), name
