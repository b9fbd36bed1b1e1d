"""`dlu report`: HTML with its PNG plots from results, run directories and traces."""

from __future__ import annotations

import re

from dlu.cli import main
from reference.trace import write_trace
from sim.replay import replay
from sim.report import write_report
from tests.sim.tracegen import small_trace


def test_report_from_results_and_trace(tmp_path, capsys):
    run_a = write_trace(small_trace(1), tmp_path / "a" / "trace")
    replay(run_a)  # a/sim.json
    run_b = write_trace(small_trace(2), tmp_path / "b" / "trace")  # no results: replayed, timing only
    out = tmp_path / "report"
    assert main(["report", str(tmp_path / "a"), str(run_b), "--out", str(out)]) == 0
    html = (out / "report.html").read_text()
    imgs = re.findall(r"<img src='([^']+)'>", html)
    assert len(imgs) >= 9
    for name in imgs:
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000, name
    assert "timing only" in html and "yes" in html
    assert "forward" in html and "backward" in html and "update" in html
    assert str(out / "report.html") in capsys.readouterr().out


def test_report_errors(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="no results"):
        write_report([], tmp_path)
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
