"""The habits CI keeps (issue 13): ruff's lint and format checks and mypy's type check, configured in pyproject.toml.

Each tool runs as a subprocess from the repository root, so it reads the same configuration as a developer's
run. Without the tool the test skips, unless $CI is set: CI installs the `test` extra, which has both.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PATHS = ("ckptio", "tests", "tools")


def _tool(name: str) -> list[str]:
    """The command that runs tool `name`: its console script, or `python -m name`; skip (or fail on CI) without it."""
    exe = shutil.which(name)
    if exe is not None:
        return [exe]
    try:
        __import__(name)
    except ImportError:
        msg = f"{name} is not installed (pip install -e '.[test]')"
        if os.environ.get("CI"):
            pytest.fail(msg + " (CI is set: the lint checks may not skip)", pytrace=False)
        pytest.skip(msg)
    return [sys.executable, "-m", name]


def _run(cmd: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_ruff_check_passes():
    result = _run(_tool("ruff") + ["check", *PATHS])
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_leaves_every_file_as_it_is():
    result = _run(_tool("ruff") + ["format", "--check", *PATHS])
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_no_errors_in_the_package():
    # The files, exclusions and per-module settings come from [tool.mypy] in pyproject.toml.
    result = _run(_tool("mypy"))
    errors = [line for line in result.stdout.splitlines() if re.search(r":\d+: error:", line)]
    assert result.returncode == 0 and not errors, f"{len(errors)} mypy errors:\n" + "\n".join(errors[:50])
