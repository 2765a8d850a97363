"""The code stays clean: ruff and mypy (strict on apiguard/) pass."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ruff_finds_nothing() -> None:
    ruff = shutil.which("ruff")
    assert ruff is not None, "ruff is a test dependency"
    result = subprocess.run(
        [ruff, "check", "apiguard", "tests", "bench"]
        if (ROOT / "bench").exists()
        else [ruff, "check", "apiguard", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_strict_finds_nothing() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
