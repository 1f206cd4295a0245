"""TensorFlow helpers for ckptio's tests.

TensorFlow is a test dependency only, and it never runs inside the pytest process: TF can
abort the whole process on malformed input (see FORMAT.md §5), and importing it is slow.
Everything here that needs TF starts a subprocess.

    tf_available() -> bool
    require_tf()                       skip the test without TF; fail it instead when $CI is set
    generate_fixtures(outdir) -> dict  run tools/make_fixtures.py (cached), return truth.json
    session_fixtures(tmp_path_factory) -> (Path, dict)   one fixture dir per test session
    fixture_prefix(outdir, truth, name) -> str            absolute prefix of a fixture
    tf_load(prefix) -> {key: {"dtype", "shape", "sha256", "num_elements"[, "via"]}}
    run_tf(code, timeout=) -> (returncode, stdout, stderr)
    run_tf_json(code, timeout=) -> the JSON value printed on the snippet's last stdout line
    hash_array(value) -> str           the corpus hash rule

truth.json layout: {"meta": {"script_sha256", "tensorflow_version", ...},
                    "fixtures": {name: {"prefix", "format", "kind", "files", "tensors", ...}}};
paths in it are relative to the fixture directory.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
MAKE_FIXTURES = REPO / "tools" / "make_fixtures.py"

# Every fixture tools/make_fixtures.py must produce (tests may parametrize over these).
FIXTURE_NAMES = (
    "tf1_gradientdescent",
    "tf1_momentum",
    "tf1_adam",
    "tf1_rmsprop",
    "tf1_rmsprop_centered",
    "tf1_adagrad",
    "tf1_adagradda",
    "tf1_adadelta",
    "tf1_ftrl",
    "tf1_proximaladagrad",
    "tf1_ema",
    "tf1_two_optimizers",
    "tf1_partitioned_v2",
    "tf1_partitioned_v1",
    "tf1_v1_plain",
    "tf1_v1_dtypes",
    "tf1_v1_sharded",
    "tf1_sharded_v2",
    "tf2_keras3_adam",
    "tf2_legacy_adam",
    "tf2_tfkeras_adam",
    "tf2_module_tree",
    "tf2_max_shard",
    "tf2_misc_state",
    "savedmodel",
    "tf2_all_dtypes",
    "tf2_exotic_dtypes",
)

DEFAULT_TIMEOUT = 300  # seconds, for one TF subprocess
GENERATE_TIMEOUT = 900
FIXTURES_ENV = "CKPTIO_TF_FIXTURES"  # optional persistent fixture dir (reused across sessions)


# --------------------------------------------------------------------------- availability


@functools.cache
def _tf_probe() -> tuple[bool, str]:
    if importlib.util.find_spec("tensorflow") is None:
        return False, "tensorflow is not installed"
    try:
        rc, out, err = run_tf("import tensorflow as tf; print(tf.__version__)", timeout=DEFAULT_TIMEOUT)
    except AssertionError as e:  # timeout
        return False, str(e)
    if rc != 0:
        last = [ln for ln in err.splitlines() if ln.strip()][-1:] or ["(no stderr)"]
        return False, "importing tensorflow failed (rc=%d): %s" % (rc, last[0][:300])
    return True, out.strip().splitlines()[-1] if out.strip() else "?"


def tf_available() -> bool:
    """True if `import tensorflow` works in a subprocess (checked once per process)."""
    return _tf_probe()[0]


def require_tf() -> None:
    """Skip the calling test when TF is unusable; with $CI set, fail it instead."""
    ok, why = _tf_probe()
    if ok:
        return
    msg = "TensorFlow is required for this test: %s" % why
    if os.environ.get("CI"):
        pytest.fail(msg + " (CI is set: a TF test may not skip)", pytrace=False)
    pytest.skip(msg)


# --------------------------------------------------------------------------- subprocesses


def _tail(text: str, n: int = 3000) -> str:
    return text if len(text) <= n else "..." + text[-n:]


def _env() -> dict:
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.setdefault("KERAS_BACKEND", "tensorflow")
    return env


def _run(argv: list, timeout: float) -> tuple[int, str, str]:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=str(REPO))
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise AssertionError(
            "TF subprocess timed out after %ss: %s\nstderr:\n%s" % (timeout, argv[1:3], _tail(err))
        ) from None
    return p.returncode, p.stdout, p.stderr


def run_tf(code: str, timeout: float = DEFAULT_TIMEOUT) -> tuple[int, str, str]:
    """Run a Python snippet in a fresh interpreter (TF_CPP_MIN_LOG_LEVEL=2, cwd = repo root).

    Returns (returncode, stdout, stderr). A negative returncode is a signal (TF abort = -6).
    Raises AssertionError on timeout.
    """
    return _run([sys.executable, "-c", code], timeout)


def _last_json_line(rc: int, out: str, err: str, what: str):
    if rc != 0:
        raise AssertionError("%s failed (rc=%d)\nstdout:\n%s\nstderr:\n%s" % (what, rc, _tail(out, 1000), _tail(err)))
    lines = [ln for ln in out.splitlines() if ln.strip()]
    if not lines:
        raise AssertionError("%s printed nothing on stdout\nstderr:\n%s" % (what, _tail(err)))
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError as e:
        raise AssertionError(
            "%s: last stdout line is not JSON (%s): %r\nstderr:\n%s" % (what, e, lines[-1][:500], _tail(err))
        ) from None


def run_tf_json(code: str, timeout: float = DEFAULT_TIMEOUT):
    """run_tf(code) that must exit 0 and print one JSON value as its last stdout line."""
    rc, out, err = run_tf(code, timeout=timeout)
    return _last_json_line(rc, out, err, "TF snippet")


def tf_load(prefix, *, restore_fallback: bool = True, timeout: float = DEFAULT_TIMEOUT) -> dict:
    """What TF reads from a checkpoint: {key: {"dtype", "shape", "sha256", "num_elements"}}.

    Uses tf.train.load_checkpoint in a subprocess (the same code that wrote truth.json, so
    the result compares directly with truth["fixtures"][name]["tensors"]). When get_tensor
    fails and restore_fallback is true, the value comes from RestoreV2 and the record has
    "via": "RestoreV2"; with restore_fallback=False such a failure raises AssertionError.
    Raises AssertionError (with TF's stderr) if TF cannot open or read the checkpoint,
    including when TF aborts the subprocess.
    """
    argv = [sys.executable, str(MAKE_FIXTURES), "--describe", str(prefix)]
    if not restore_fallback:
        argv.append("--no-fallback")
    rc, out, err = _run(argv, timeout)
    return _last_json_line(rc, out, err, "tf.train.load_checkpoint(%r)" % str(prefix))


# --------------------------------------------------------------------------- fixtures


def script_sha256() -> str:
    return hashlib.sha256(MAKE_FIXTURES.read_bytes()).hexdigest()


def _installed_tf_version():
    try:
        return importlib.metadata.version("tensorflow")
    except importlib.metadata.PackageNotFoundError:
        return None


def _cached_truth(outdir: Path):
    """The existing truth.json if it is complete and was made by this script and TF."""
    try:
        truth = json.loads((outdir / "truth.json").read_text())
        meta = truth["meta"]
        fixtures = truth["fixtures"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if meta.get("script_sha256") != script_sha256():
        return None
    if meta.get("tensorflow_version") != _installed_tf_version():
        return None
    if set(fixtures) != set(FIXTURE_NAMES):
        return None
    for rec in fixtures.values():
        if not all((outdir / f).is_file() for f in rec.get("files", ())) or not rec.get("files"):
            return None
    return truth


def generate_fixtures(outdir, *, force: bool = False, timeout: float = GENERATE_TIMEOUT) -> dict:
    """Write TF fixtures into outdir (unless a valid cache is there) and return truth.json.

    The cache is reused when outdir/truth.json records the sha256 of the current
    tools/make_fixtures.py and the installed TF version, and every listed file exists.
    Concurrent callers on one outdir are serialized with a lock file (POSIX).
    Raises AssertionError with the script's stderr if generation fails.
    """
    outdir = Path(outdir).resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    with _Lock(outdir / ".make_fixtures.lock"):
        if not force:
            truth = _cached_truth(outdir)
            if truth is not None:
                return truth
        rc, out, err = _run([sys.executable, str(MAKE_FIXTURES), str(outdir)], timeout)
        if rc != 0:
            raise AssertionError("tools/make_fixtures.py failed (rc=%d)\nstderr:\n%s" % (rc, _tail(err, 6000)))
        truth = _cached_truth(outdir)
        if truth is None:
            raise AssertionError(
                "tools/make_fixtures.py exited 0 but %s is missing, stale or "
                "incomplete\nstderr:\n%s" % (outdir / "truth.json", _tail(err))
            )
        return truth


_SESSION: dict = {}


def session_fixtures(tmp_path_factory) -> tuple[Path, dict]:
    """(fixture dir, truth) shared by all tests of a session; calls require_tf() first.

    The directory is $CKPTIO_TF_FIXTURES if set (kept between sessions, so the cache
    applies), else a directory under pytest's session tmp dir.
    """
    require_tf()
    if "value" not in _SESSION:
        env_dir = os.environ.get(FIXTURES_ENV)
        outdir = Path(env_dir) if env_dir else tmp_path_factory.getbasetemp() / "tf_fixtures"
        _SESSION["value"] = (outdir.resolve(), generate_fixtures(outdir))
    return _SESSION["value"]


def fixture_prefix(outdir, truth: dict, name: str) -> str:
    """Absolute checkpoint prefix of fixture `name` (a glob pattern for sharded V1)."""
    return str(Path(outdir) / truth["fixtures"][name]["prefix"])


class _Lock:
    def __init__(self, path: Path):
        self.path = path
        self.fh = None

    def __enter__(self):
        self.fh = open(self.path, "a+")
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking
            return self
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self.fh.close()  # closing releases the lock
        return False


# --------------------------------------------------------------------------- hashing


def hash_array(value) -> str:
    """sha256 of a tensor value under the corpus hash rule.

    non-string: sha256(np.ascontiguousarray(value).tobytes())
    string:     sha256 over elements in C order of uint64_le(len(e)) + e
    Strings must be an object array of bytes (or a bytes scalar / list of bytes); numpy
    fixed-width 'S' arrays are refused because they drop trailing NUL bytes.
    """
    if isinstance(value, (bytes, str)):
        arr = np.array(value, dtype=object)
    elif isinstance(value, (list, tuple)) and _has_bytes(value):
        arr = np.array(value, dtype=object)
    else:
        arr = np.asarray(value)
    return _fixture_tool().hash_array(arr)  # one implementation of the rule, shared with the truth file


@functools.cache
def _fixture_tool():
    """tools/make_fixtures.py as a module (it imports TensorFlow only when asked to)."""
    spec = importlib.util.spec_from_file_location("_ckptio_make_fixtures", MAKE_FIXTURES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _has_bytes(seq) -> bool:
    for e in seq:
        if isinstance(e, (bytes, str)):
            return True
        if isinstance(e, (list, tuple)) and _has_bytes(e):
            return True
    return False
