"""Smoke runs of the paper-reproduction experiments (roughness along training, LLA criteria, Hessian alignment).

Each script runs twice with ``--smoke`` into its own temporary folder (all six runs at once, as subprocesses): it must
exit 0, write its PNG and PDF figures, print well-formed markdown tables of numbers, and print the same tables both
times (the scripts are deterministic for a seed).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Each script writes figures/NAME.png and .pdf (here into --out).
SCRIPTS = ("roughness_training", "generalisation_criteria", "hessian_alignment")
TIMEOUT = 300


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, list[tuple[subprocess.CompletedProcess, Path]]]:
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    started = {}
    for name in SCRIPTS:
        for k in range(2):
            out = tmp_path_factory.mktemp(f"{name}_{k}")
            proc = subprocess.Popen(
                [sys.executable, str(ROOT / "experiments" / f"{name}.py"), "--smoke", "--out", str(out)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            started.setdefault(name, []).append((proc, out))
    done = {}
    for name, procs in started.items():
        for proc, out in procs:
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
            done.setdefault(name, []).append(
                (subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), out)
            )
    return done


def tables(text: str) -> list[list[list[str]]]:
    """Markdown tables in ``text``: lists of rows of stripped cells (header first, separator dropped)."""
    found, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif current:
            found.append(current)
            current = []
    parsed = []
    for t in found:
        assert len(t) >= 3, f"a table needs a header, a separator and rows: {t}"
        assert all(set(c) <= set("-: ") and c for c in t[1]), f"second line is not a separator: {t[1]}"
        assert all(len(row) == len(t[0]) for row in t), f"ragged table: {t}"
        parsed.append([t[0], *t[2:]])
    return parsed


def number(cell: str) -> float | None:
    head = cell.split(" ")[0]
    try:
        return float(head)
    except ValueError:
        return None


@pytest.mark.parametrize("name", SCRIPTS)
def test_smoke_run_writes_figures_and_tables(runs, name):
    for result, out in runs[name]:
        assert result.returncode == 0, result.stderr[-3000:]
        for ext in ("png", "pdf"):
            path = out / f"{name}.{ext}"
            assert path.is_file() and path.stat().st_size > 1000, path
        parsed = tables(result.stdout)
        assert len(parsed) >= 2, result.stdout
        for t in parsed:
            for row in t[1:]:
                values = [number(c) for c in row]
                assert any(v is not None for v in values), row
                assert all(not math.isinf(v) for v in values if v is not None), row


@pytest.mark.parametrize("name", SCRIPTS)
def test_smoke_run_is_deterministic(runs, name):
    (first, _), (second, _) = runs[name]
    assert first.returncode == 0 and second.returncode == 0
    assert tables(first.stdout) == tables(second.stdout)
