"""Running an ``experiments/`` script as a user would, and reading what it prints.

A script runs in its quick mode (``--smoke``) as a subprocess (a fresh interpreter) with its figures written to a
temporary folder; the markdown tables it prints are parsed into cells, and the numbers in them checked.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NUMBER = re.compile(r"-?\d+(\.\d+)?(e[-+]?\d+)?")
TIMING = re.compile(r"(in )?\(?\d+ s\)?")
TIMEOUT = 300


def run(script: str, *args: str) -> str:
    """Stdout of ``experiments/script --smoke args`` (run from the repository root); it must exit 0."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / script), "--smoke", *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def table_rows(stdout: str) -> list[list[str]]:
    """Body rows of every markdown table in ``stdout`` (header and separator rows dropped), as lists of cells."""
    rows, lines = [], stdout.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("|") or set(line) <= set("|-"):
            continue
        if i + 1 < len(lines) and set(lines[i + 1]) <= set("|-") and lines[i + 1]:
            continue  # header
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def numbers(cell: str) -> list[float]:
    return [float(m.group(0)) for m in NUMBER.finditer(cell)]


def figures_and_deterministic_tables(
    tmp_path: Path, script: str, first_numeric: int, min_rows: int, label_in_widest_rows: bool = False
) -> list[list[str]]:
    """Run ``script`` into ``tmp_path``: its PNG and PDF are written, its tables have at least ``min_rows`` rows whose
    cells from ``first_numeric`` on (one more in the widest rows with ``label_in_widest_rows``) hold numbers that are
    not NaN, and a second run with the same seed (``--no-figure``) prints the same rows. Returns the rows."""
    stem = script.removesuffix(".py")
    out = run(script, "--out", str(tmp_path))
    for ext in ("png", "pdf"):
        path = tmp_path / f"{stem}.{ext}"
        assert path.is_file() and path.stat().st_size > 1000, path
    rows = table_rows(out)
    assert len(rows) >= min_rows, out
    width = {len(r) for r in rows}
    for row in rows:
        skip = first_numeric + (1 if len(row) == max(width) and label_in_widest_rows else 0)
        for cell in row[skip:]:
            values = numbers(cell)
            assert values, f"no number in cell {cell!r} of {row}"
            assert all(v == v for v in values)  # not NaN
    # same seed, same numbers (figures skipped the second time to keep the test short)
    again = run(script, "--no-figure", "--out", str(tmp_path / "again"))
    assert table_rows(again) == rows
    assert not (tmp_path / "again").exists()
    return rows


def same_output_twice(tmp_path: Path, script: str) -> str:
    """Run ``script`` twice (into ``tmp_path / "a"`` and ``"b"``): the first writes its PNG and PDF, and both print
    the same lines once wall times and "wrote" lines are removed. Returns the first run's stdout."""
    stem = script.removesuffix(".py")
    first = run(script, "--out", str(tmp_path / "a"))
    for ext in ("png", "pdf"):
        path = tmp_path / "a" / f"{stem}.{ext}"
        assert path.is_file() and path.stat().st_size > 1000, path
    second = run(script, "--out", str(tmp_path / "b"))
    strip = [TIMING.sub("", line) for line in first.splitlines() if "wrote" not in line]
    again = [TIMING.sub("", line) for line in second.splitlines() if "wrote" not in line]
    assert strip == again
    return first


def run_twice_at_once(name: str, folders: list[Path]) -> list[tuple[subprocess.CompletedProcess, Path]]:
    """``experiments/name.py --smoke`` once into each folder, the runs side by side; their results and folders."""
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    started = [
        (
            subprocess.Popen(
                [sys.executable, str(ROOT / "experiments" / f"{name}.py"), "--smoke", "--out", str(out)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
            out,
        )
        for out in folders
    ]
    done = []
    for proc, out in started:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
        done.append((subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), out))
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


def figures_and_tables(name: str, runs: list[tuple[subprocess.CompletedProcess, Path]]) -> None:
    """Every run exited 0, wrote ``name.png`` and ``name.pdf`` and printed at least two well-formed tables whose
    rows hold a number and no infinity."""
    for result, out in runs:
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


def same_tables(runs: list[tuple[subprocess.CompletedProcess, Path]]) -> None:
    """Both runs exited 0 and printed the same tables."""
    (first, _), (second, _) = runs
    assert first.returncode == 0 and second.returncode == 0
    assert tables(first.stdout) == tables(second.stdout)
