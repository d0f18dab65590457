"""`ruff check` over the repository with the rules of pyproject.toml's [tool.ruff] (issue #19).

ruff is in the test extras (`pip install -e '.[test]'`), so the README's test command runs this; the
test skips only where ruff is not installed at all.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_check_is_clean():
    ruff = pytest.importorskip("ruff.__main__", reason="ruff is not installed (pip install -e '.[test]')")
    done = subprocess.run([ruff.find_ruff_bin(), "check", "--no-cache", "--output-format", "concise", "."],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
