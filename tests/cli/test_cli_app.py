"""The command group and what every command shares: every command registered on it, the entry points, progress
output (run for real in a subprocess)."""

from __future__ import annotations

import subprocess
import sys

from landscape.cli import main
from tests.cli.helpers import CACHED, PROGRESS_MARKS, runs_fixture  # noqa: F401 (the fixture runs)

# The commands of DESIGN.md.
COMMANDS = ("spectrum", "trace", "eigen", "density", "surface", "interpolate", "sharpness", "roughness", "stability")
COMMANDS += ("scaling", "report", "demo", "blocks")


def test_every_command_registers_on_the_group_when_the_package_is_imported():
    assert sorted(main.commands) == sorted(COMMANDS)


def test_python_dash_m_landscape_lists_every_command():
    r = subprocess.run([sys.executable, "-m", "landscape", "--help"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    listed = [line.split()[0] for line in r.stdout.split("Commands:")[1].splitlines() if line.strip()]
    assert listed == sorted(COMMANDS)


def test_no_progress_bars_when_stderr_is_not_a_terminal(runs):
    _, results = runs
    eigen = results["eigen"][0]  # run without --quiet
    assert eigen.returncode == 0 and not any(mark in eigen.stderr for mark in PROGRESS_MARKS), eigen.stderr
    for name in CACHED:
        for r in results[name]:
            assert not any(mark in r.stderr for mark in PROGRESS_MARKS), (name, r.stderr)
