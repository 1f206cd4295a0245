"""Small helpers shared by test modules: reading whole checkpoints, comparing tensors exactly, the corpus.

CORPUS            where the real-world corpus must be: ../shared/corpus beside the repository
require_corpus()  CORPUS, or skip the test (fail it when $CI is set) saying where the corpus goes
child_env()       the environment for a child process that imports this checkout's ckptio
ckptio_popen()    `python -m ckptio ARGS` as a child process, output captured as text
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ckptio

ROOT = Path(__file__).resolve().parents[1]
CORPUS = (ROOT / ".." / "shared" / "corpus").resolve()


def child_env() -> dict:
    """os.environ with this checkout first on PYTHONPATH, so a child process tests this code."""
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def ckptio_popen(*argv, **kw) -> subprocess.Popen:
    """`python -m ckptio ARGV` started in the checkout, stdout and stderr captured as text."""
    return subprocess.Popen(
        [sys.executable, "-m", "ckptio", *map(str, argv)],
        env=child_env(),
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def require_corpus() -> Path:
    """The corpus root; skips the calling test without it, or fails it when $CI is set."""
    if (CORPUS / "MANIFEST.json").is_file():
        return CORPUS
    msg = (
        f"the real-world checkpoint corpus is missing: put it at {CORPUS} (../shared/corpus beside the "
        "repository, with its MANIFEST.json)"
    )
    if os.environ.get("CI"):
        pytest.fail(msg + "; CI is set, so corpus tests may not skip", pytrace=False)
    pytest.skip(msg)


def read_all(prefix) -> dict:
    """Every tensor of a checkpoint, read."""
    with ckptio.open(prefix) as c:
        return {n: c[n].read() for n in c}


def same(a, b) -> bool:
    """Same dtype, shape and bytes (element-wise for string object arrays)."""
    a, b = np.asarray(a), np.asarray(b)
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and (list(a.flat) == list(b.flat) if a.dtype == object else a.tobytes() == b.tobytes())
    )
