"""Fixtures shared by the test modules.

tf_fixtures   (session)  (fixture dir Path, truth dict) of the checkpoints tools/make_fixtures.py
                         writes with real TensorFlow; needs TF (skips without it, fails with $CI set)
corpus        (session)  Path of the real-world corpus root (/work/shared/corpus), used in place;
                         never copy its files into the repository
corpus_manifest (session) the corpus MANIFEST.json as a dict
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

try:
    from support import require_corpus
    from tf_support import session_fixtures
except ImportError:  # tests/ imported as a package
    from .support import require_corpus
    from .tf_support import session_fixtures


@pytest.fixture(scope="session")
def tf_fixtures(tmp_path_factory):
    """(outdir, truth) of the TF-written fixtures; see tests/tf_support.py and tools/make_fixtures.py."""
    return session_fixtures(tmp_path_factory)


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The corpus root, resolved; skips without it (fails instead when $CI is set)."""
    return require_corpus()


@pytest.fixture(scope="session")
def corpus_manifest(corpus) -> dict:
    """MANIFEST.json: {"checkpoints": [{"short_name", "prefix", "format", "kind", "files", "tensors"}, ...]}."""
    return json.loads((corpus / "MANIFEST.json").read_text())
