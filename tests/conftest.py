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


@pytest.fixture(scope="session")
def s3():
    """A moto S3 server on localhost with bucket 'bkt' (one per session: moto keeps its buckets per process,
    so tests use their own prefixes); the environment points s3fs (and subprocesses) at it."""
    import logging

    from s3_support import need

    need("s3fs")
    server_mod = need("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem()
        fs.mkdir("bkt")
        yield fs
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()
