"""A local S3 server (moto) for tests of s3:// paths: no network, the environment points s3fs at it."""

from __future__ import annotations

import importlib
import os

import pytest


def need(module: str):
    """The module; outside CI a skip with a reason when it is missing (in CI it must be installed)."""
    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"{module} (the test extra) is needed for the S3 tests")
