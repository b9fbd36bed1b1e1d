"""Pytest hooks of the cocotb regression: a coverage summary at the end of every session.

Only runs whose coverage files were written during this session are merged, so a quick
``make test`` reports the quick tier and ``make regress`` the full one.
"""

from __future__ import annotations

import time

_SESSION_START = time.time()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if hasattr(config, "workerinput"):  # an xdist worker: the controller reports
        return
    try:
        from testbenches.cocotb import coverage
    except ImportError as exc:  # cocotb-coverage or the bench package missing: say so, do not hide it
        terminalreporter.write_line(f"DLU coverage report unavailable: {exc}")
        return
    fcov, dats = coverage.collect(_SESSION_START)
    if not fcov and not dats:
        return
    coverage.report(_SESSION_START, write=terminalreporter.write_line)
