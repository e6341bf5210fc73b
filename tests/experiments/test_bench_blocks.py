"""Smoke test of experiments/bench_blocks.py: block_spectra against a loop over blocks, one method per process.

``--smoke`` runs the four methods on a tiny W2 (64 images 3x8x8, 1 probe, 3 Lanczos steps), each in its own
process, appending JSON rows to ``--out``: both sides multiply as many columns, block_spectra in one operator call
(data pass) per step for all blocks, the loop in one per step and block; the default ``dense_max`` run is the same
as ``dense_max=0`` here (no block of at most 3 parameters) and says so.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.experiments.smoke import ROOT, tables


@pytest.mark.slow
def test_smoke_run_counts_one_pass_per_step_for_all_blocks(tmp_path):
    out = tmp_path / "bench_blocks.jsonl"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "bench_blocks.py"), "--smoke", "--workloads", "W2", "--out", out],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, f"bench_blocks.py failed:\n{proc.stdout}\n{proc.stderr}"
    rows = {r["method"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"loop", "loop_rebuilt", "blocks", "blocks_default", "blocks_refined"}
    loop, blocks = rows["loop"], rows["blocks"]
    B = blocks["blocks"]
    assert B == loop["blocks"] >= 10 and blocks["params"] == loop["params"]
    assert blocks["operator_calls"] == blocks["passes_reported"] == 3
    assert loop["operator_calls"] == 3 * B
    assert blocks["products"] == loop["products"] == 3 * B
    assert all(math.isfinite(r[k]) and r[k] > 0 for r in (loop, blocks) for k in ("seconds", "peak_gib"))
    # Zhang et al.'s loop rebuilds the graph for every product, the cached loop once per block, block_spectra once
    rebuilt = rows["loop_rebuilt"]
    assert rebuilt["products"] == loop["products"] and rebuilt["operator_calls"] == loop["operator_calls"]
    assert rebuilt["forward_calls"] > loop["forward_calls"] > blocks["forward_calls"]
    assert rows["blocks_default"]["same_as"] == "blocks"
    # The restarted top-k of the blocks 3 density steps left unconverged: more passes, smaller residuals.
    refined = rows["blocks_refined"]
    assert refined["refine"]["blocks"] == blocks["unconverged"] != []
    assert refined["operator_calls"] == 3 + refined["refine"]["passes"]
    assert refined["max_relative_residual"] < blocks["max_relative_residual"]
    (table,) = tables(proc.stdout)
    assert [row[3] for row in table[1:]] == ["loop", "loop_rebuilt", "blocks", "blocks_default", "blocks_refined"]
