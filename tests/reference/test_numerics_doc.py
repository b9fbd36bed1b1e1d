"""docs/numerics.md: every worked example in the page is executed and must hold."""

from __future__ import annotations

import doctest
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "numerics.md"


def test_numerics_doc_examples_hold():
    result = doctest.testfile(
        str(DOC), module_relative=False, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        verbose=False, report=True,
    )
    assert result.attempted >= 40, f"only {result.attempted} examples found in {DOC}"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {DOC} failed (see output)"
