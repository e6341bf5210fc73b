"""Smoke test of experiments/bench_double_backward.py: one product through each layer kind on torch's double backward
and on ``landscape.double_backward``'s, with and without leaf gradients (``--quick``: small shapes). Every kind is
printed with positive times and products that agree to float32 rounding; no timing is asserted."""

from __future__ import annotations

import subprocess
import sys

from tests.experiments.smoke import ROOT, number, tables


def test_quick_run_prints_every_kind_with_equal_products():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "bench_double_backward.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, f"bench_double_backward.py failed:\n{proc.stdout}\n{proc.stderr}"
    (table,) = tables(proc.stdout)
    header, rows = table[0], table[1:]
    assert header[0] == "layer kind" and header[-1] == "rel. diff"
    kinds = [r[0] for r in rows]
    assert any("conv_transpose2d" in k for k in kinds) and any("batch norm" in k for k in kinds)
    assert any("linear" in k for k in kinds) and any("embedding" in k for k in kinds)
    assert len(kinds) == 10
    for row in rows:
        times = [number(c) for c in row[1:7]]
        assert all(t is not None and t > 0 for t in times), row
        assert number(row[-1]) < 1e-5, row  # the same product, float32 rounding apart
