"""Benchmark harnesses that run outside the golden model's own venv (see torch_side_by_side)."""
