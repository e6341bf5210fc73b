"""CI must fail, not skip, when its own install of an optional backend failed (tests/conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent


@pytest.mark.parametrize(("required", "outcome"), [("1", "1 failed"), ("", "1 skipped")])
def test_a_missing_optional_backend_fails_only_where_it_is_required(tmp_path, required, outcome):
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_needs_backend.py").write_text(
        "import pytest\n\n\ndef test_backend():\n    pytest.importorskip('landscape_no_such_backend')\n"
    )
    env = {**os.environ, "LANDSCAPE_REQUIRE_OPTIONAL": required}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert outcome in run.stdout, run.stdout + run.stderr
    if required:
        assert "landscape_no_such_backend" in run.stdout and "install" in run.stdout
