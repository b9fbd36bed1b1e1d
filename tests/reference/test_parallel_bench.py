"""The measurement table of :mod:`reference.parallel_bench` (medians, ratios, hidden fraction)."""

from __future__ import annotations

from reference.parallel_bench import table


def test_table_medians_ratio_and_hidden_fraction():
    # 2 ranks: steps overlap [10, 20, 30] ms -> median 20; no overlap [40, 50, 60] -> 50: ratio 2.50x.
    # gradient wait overlap median 1 ms, no overlap 4 ms: hidden 1 - 1/4 = 75%.
    res = {
        (2, True): {"step": [0.010, 0.020, 0.030], "wait": [0.002] * 3, "grad": [0.0, 0.001, 0.005],
                    "bytes": [100]},
        (2, False): {"step": [0.040, 0.050, 0.060], "wait": [0.006] * 3, "grad": [0.004] * 3, "bytes": [100]},
    }
    md = table(res, [2])
    assert "| 2 | yes | 20.00 | 2.00 | 1.000 | 100 | 2.50x | 75% |" in md
    assert "| 2 | no | 50.00 | 6.00 | 4.000 | 100 |  |  |" in md


def test_table_one_rank_has_no_hidden_fraction():
    res = {(1, ov): {"step": [0.01], "wait": [0.0], "grad": [0.0], "bytes": [8]} for ov in (True, False)}
    assert "| 1 | yes | 10.00 | 0.00 | 0.000 | 8 | 1.00x | - |" in table(res, [1])
