"""``dlu demo``: runs end to end (training, reference, simulator and RTL replays, Verilog) and writes its reports."""

from __future__ import annotations

from dlu.cli import main


def test_demo_writes_runs_and_a_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cnn-dfp16", "cnn-dfp8", "report", "report.md", "rtl"]
    report = (out / "report.md").read_text()
    assert "dfp16: test accuracy" in report and "dfp8: test accuracy" in report
    assert "bit-exact" in report and "2 policy updates in 2 iteration(s)" in report
    assert report.count("data bit-exact with the trace") == 2
    assert "identical to the simulator and the trace" in report
    assert (out / "cnn-dfp8" / "trace" / "manifest.json").is_file()
    assert (out / "cnn-dfp8" / "rtl.json").is_file() and (out / "cnn-dfp16" / "sim.json").is_file()
    assert (out / "rtl" / "dlu_core.v").is_file() and (out / "rtl" / "manifest.json").is_file()
    html = out / "report" / "report.html"
    assert html.is_file() and "<img" in html.read_text() and "RTL replay (Verilated core" in html.read_text()
    assert f"[demo] report: {html}" in capsys.readouterr().out


def test_demo_rejects_zero_epochs(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--epochs", "0"]) == 2
    assert "--epochs=0 must be >= 1" in capsys.readouterr().err


def test_demo_without_the_rtl_tools_says_so_and_goes_on(tmp_path, monkeypatch, capsys):
    import sim.rtl_engine as eng

    def missing() -> None:
        raise eng.RtlNotAvailable("the RTL engine needs Verilator >= 5.036: not found")

    monkeypatch.setattr(eng, "ensure_available", missing)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1"]) == 0
    assert "[demo] skipping the RTL step: the RTL engine needs Verilator" in capsys.readouterr().out
    assert "- RTL replay: skipped (the RTL engine needs Verilator" in (out / "report.md").read_text()
    assert (out / "report" / "report.html").is_file()
