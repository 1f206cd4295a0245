"""Rewritten checkpoints load natively in TensorFlow, with the values we promise.

Every rewrite runs through the CLI (`ckptio.cli.main.main([...])`); TensorFlow then checks the
outputs in ONE subprocess per module (TF import costs seconds): `tf.train.load_checkpoint`
(exact key set, dtypes and value hashes), `tf.compat.v1.train.Saver.restore` into a graph built
without the optimizer (or with new names, partitioners included), and per-variable
`tf.compat.v1.train.init_from_checkpoint`. Expected hashes come from truth.json (written by TF
when the fixtures were made), from the corpus MANIFEST, or from `tf.cast` inside TF for casts.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
from pathlib import Path

import pytest

from ckptio.cli.main import main
from ckptio.transform import OPTIMIZER, SLOT, classify

try:
    from tf_support import FIXTURE_NAMES, fixture_prefix, run_tf_json
except ImportError:  # tests/ imported as a package
    from .tf_support import FIXTURE_NAMES, fixture_prefix, run_tf_json

HAS_OBJGRAPH = importlib.util.find_spec("ckptio.objgraph") is not None

OPTIMIZER_FIXTURES = (
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
)
assert set(OPTIMIZER_FIXTURES) <= set(FIXTURE_NAMES)
DENSE = [["model/dense/kernel", [3, 2], "float32", 0], ["model/dense/bias", [2], "float32", 0]]
STEP = [["global_step", [], "int64", 0]]
EMA = [
    ["model/dense/kernel/ExponentialMovingAverage", [3, 2], "float32", 0],
    ["model/dense/bias/ExponentialMovingAverage", [2], "float32", 0],
]
PARTITIONED = [["embedding", [6, 4], "float32", 3], ["dense/kernel", [4, 2], "float32", 0]]
# An independent description of optimizer state in the corpus's name-based checkpoints (FORMAT §9.1),
# so that the corpus test does not trust ckptio's own classifier.
CORPUS_OPTIMIZER_STATE = (
    r"/(Adam|Momentum|RMSProp|Ftrl|Adagrad)(_\d+)?$",
    r"(^|/)beta[12]_power(_\d+)?$",
    r"^training/Ftrl/",
    r"/learning_rate$",
)

# -- the TF side: one script, many jobs ------------------------------------------------------------------

TF_JOBS = r'''
import json, sys, traceback
sys.path.insert(0, "tools")
import numpy as np
import make_fixtures as mf
tf = mf.tf()
v1 = tf.compat.v1

def build(specs):
    """Variables named as in specs [[name, shape, dtype, partitions]], created under their scopes."""
    out = {}
    for name, shape, dtype, parts in specs:
        if name == "global_step":
            out[name] = v1.train.get_or_create_global_step()
            continue
        scope, _, base = name.rpartition("/")
        kw = dict(shape=shape, dtype=getattr(tf, dtype), initializer=v1.zeros_initializer())
        if parts:
            kw["partitioner"] = v1.fixed_size_partitioner(parts)
        with contextlib_scope(scope):
            out[name] = v1.get_variable(base, **kw)
    return out

import contextlib
def contextlib_scope(scope):
    return v1.variable_scope(scope) if scope else contextlib.nullcontext()

def value_of(var):
    if hasattr(var, "_get_variable_list"):  # a PartitionedVariable (or _Parts): rows in order
        return tf.concat(list(var), axis=0)
    return var.value()

def read_all(sess, variables):
    tensors = {n: value_of(v) for n, v in variables.items()}
    values = sess.run(tensors)
    return {n: {"sha256": mf.hash_array(np.asarray(v)), "dtype": mf.dtype_name(tensors[n].dtype)}
            for n, v in values.items()}

def train_op(variables):
    loss = tf.add_n([tf.reduce_sum(tf.cast(value_of(v), tf.float32)) for n, v in variables.items()
                     if n != "global_step"])
    return v1.train.AdamOptimizer(0.01).minimize(loss, global_step=variables.get("global_step"))

def saver_job(job):
    g = tf.Graph()
    with g.as_default():
        variables = build(job["vars"])
        if job.get("train"):
            train_op(variables)
            variables = {}
            for v in v1.global_variables():
                info = getattr(v, "_save_slice_info", None)
                full = info.full_name if info is not None else v.op.name
                variables.setdefault(full, []).append((info.var_offset[0] if info else 0, v))
            variables = {n: (ps[0][1] if len(ps) == 1 else _Parts([v for _, v in sorted(ps, key=lambda p: p[0])]))
                         for n, ps in variables.items()}
        saver = v1.train.Saver()
        with v1.Session(graph=g) as sess:
            saver.restore(sess, job["prefix"])
            return read_all(sess, variables)

class _Parts(list):
    def _get_variable_list(self):
        return list(self)

def init_job(job):
    g = tf.Graph()
    with g.as_default():
        variables = build(job["vars"])
        v1.train.init_from_checkpoint(job["prefix"], {job.get("map", {}).get(n, n): n for n in variables})
        with v1.Session(graph=g) as sess:
            sess.run(v1.global_variables_initializer())
            return read_all(sess, variables)

def cast_job(job):
    reader = tf.train.load_checkpoint(job["prefix"])
    out = {}
    for name in job["names"]:
        t = tf.constant(reader.get_tensor(name))
        for dt in job["casts"]:
            t = tf.cast(t, getattr(tf, dt))
        out[name] = mf.hash_array(t.numpy())
    return out

def graph_job(job):
    from tensorflow.core.protobuf import trackable_object_graph_pb2
    reader = tf.train.load_checkpoint(job["prefix"])
    keys = set(reader.get_variable_to_shape_map())
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    problems, referenced = [], set()
    n = len(graph.nodes)
    for i, node in enumerate(graph.nodes):
        for c in node.children:
            if not 0 <= c.node_id < n:
                problems.append("node %d child %s -> %d" % (i, c.local_name, c.node_id))
        for s in node.slot_variables:
            if not (0 <= s.original_variable_node_id < n and 0 <= s.slot_variable_node_id < n):
                problems.append("node %d has a dangling slot variable" % i)
        for a in node.attributes:
            referenced.add(a.checkpoint_key)
            if a.checkpoint_key not in keys:
                problems.append("node %d attribute %s -> missing key %s" % (i, a.name, a.checkpoint_key))
            if ".ATTRIBUTES/" not in a.checkpoint_key:
                problems.append("key without .ATTRIBUTES/: %s" % a.checkpoint_key)
    unreferenced = sorted(keys - referenced - {"_CHECKPOINTABLE_OBJECT_GRAPH"})
    return {"problems": problems, "unreferenced": unreferenced, "nodes": n}

KINDS = {"describe": lambda job: mf.describe(job["prefix"]), "saver": saver_job, "init": init_job,
         "cast": cast_job, "graph": graph_job}
results = {}
for job_id, job in JOBS.items():
    try:
        results[job_id] = KINDS[job["kind"]](job)
    except Exception as e:
        results[job_id] = {"error": "%s: %s" % (type(e).__name__, str(e)[:2000]),
                           "trace": traceback.format_exc()[-3000:]}
print(json.dumps(results, sort_keys=True))
'''


def run_jobs(jobs: dict) -> dict:
    code = "import json\nJOBS = json.loads(%r)\n" % json.dumps(jobs) + TF_JOBS
    return run_tf_json(code, timeout=600)


def cli(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def file_hashes(paths) -> dict:
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


# -- all rewrites, then one TF run ---------------------------------------------------------------------------


class Run:
    """Rewrites done through the CLI plus the TF jobs that check them."""

    def __init__(self, root: Path):
        self.root, self.jobs, self.rc, self.results = root, {}, {}, {}

    def rewrite(self, case: str, argv) -> str:
        """Run `ckptio COMMAND IN OUT [options]` for argv = [COMMAND, IN, options...]; returns OUT."""
        out = str(self.root / case / "model.ckpt")
        self.rc[case] = cli([*argv[:2], out, *argv[2:], "-q"])
        return out

    def check(self, case: str, prefix: str, *, vars=None, train=False, init_vars=None, casts=None):
        """Queue describe (+ Saver restore, + init_from_checkpoint) of an output if it was written."""
        if self.rc.get(case, (0,))[0] != 0:
            return
        self.jobs[case + ":describe"] = {"kind": "describe", "prefix": prefix}
        if vars is not None:
            self.jobs[case + ":saver"] = {"kind": "saver", "prefix": prefix, "vars": vars, "train": train}
            self.jobs[case + ":init"] = {"kind": "init", "prefix": prefix, "vars": init_vars or vars}

    def result(self, job_id: str):
        assert job_id in self.results, f"{job_id} did not run (rewrite exit codes: {self.rc})"
        value = self.results[job_id]
        assert not (isinstance(value, dict) and "error" in value), (
            f"{job_id}: {value.get('error')}\n{value.get('trace', '')}"
        )
        return value

    def ok(self, case: str):
        rc, out, err = self.rc[case]
        assert rc == 0, f"{case}: exit {rc}\n{out}\n{err}"


def scoped(specs, scope):
    return [[scope + n, *rest] for n, *rest in specs]


@pytest.fixture(scope="module")
def tf_run(tf_fixtures, corpus, corpus_manifest, tmp_path_factory):
    outdir, truth = tf_fixtures
    run = Run(tmp_path_factory.mktemp("rewrite_tf"))

    def fx(name):
        return fixture_prefix(outdir, truth, name)

    # strip: every TF1 optimizer, EMA, two optimizers
    for name in OPTIMIZER_FIXTURES:
        out = run.rewrite(name, ["strip", fx(name)])
        specs = DENSE + STEP
        if name == "tf1_two_optimizers":
            specs = specs + [["model/out/kernel", [2, 2], "float32", 0]]
        if name == "tf1_ema":
            specs = specs + EMA
        run.check(name, out, vars=specs)
    out = run.rewrite("adam_drop_step", ["strip", fx("tf1_adam"), "--drop-global-step"])
    run.check("adam_drop_step", out, vars=DENSE)
    out = run.rewrite("ema_drop", ["strip", fx("tf1_ema"), "--ema", "drop"])
    run.check("ema_drop", out, vars=DENSE + STEP)
    out = run.rewrite("ema_promote", ["strip", fx("tf1_ema"), "--ema", "promote"])
    run.check("ema_promote", out, vars=DENSE + STEP)

    # scope renames of partitioned variables (V2 and V1 inputs), restored into graphs with new names
    for name in ("tf1_partitioned_v2", "tf1_partitioned_v1"):
        out = run.rewrite(name, ["rename", fx(name), "--map", "model/=renamed/"])
        specs = scoped(PARTITIONED, "renamed/") + STEP
        run.check(name, out, vars=specs)
        # the full training state under the new names: Adam slots are partitioned like their variable
        run.jobs[name + ":saver_train"] = {"kind": "saver", "prefix": out, "vars": specs, "train": True}
        # init_from_checkpoint reads each partition's own slice: any partitioning works (FORMAT §10.3)
        run.jobs[name + ":init_2parts"] = {
            "kind": "init",
            "prefix": out,
            "vars": [["renamed/embedding", [6, 4], "float32", 2]],
        }
        out = run.rewrite(name + "_strip", ["rewrite", fx(name), "--strip-optimizer", "--map", "model/=renamed/"])
        run.check(name + "_strip", out, vars=specs)

    # output sharding: TF reads every layout we write, empty data shards included
    specs = scoped(PARTITIONED, "model/") + STEP
    for case, argv in (("shards3", ["--shards", "3"]), ("max_shard", ["--max-shard-size", "100"])):
        out = run.rewrite(case, ["rewrite", fx("tf1_partitioned_v2"), *argv])
        run.check(case, out, vars=specs)
        run.jobs[case + ":saver_train"] = {"kind": "saver", "prefix": out, "vars": specs, "train": True}
    out = run.rewrite("shards5", ["strip", fx("tf1_gradientdescent"), "--shards", "5"])
    run.check("shards5", out, vars=DENSE + STEP)

    # casts: bfloat16 and float16 and back
    for dt in ("bfloat16", "float16"):
        out = run.rewrite("all_" + dt, ["rewrite", fx("tf2_all_dtypes"), "--cast", dt])
        run.check("all_" + dt, out)
        back = run.rewrite("all_" + dt + "_back", ["rewrite", out, "--cast", "float32"])
        run.check("all_" + dt + "_back", back)
        out = run.rewrite("adam_" + dt, ["rewrite", fx("tf1_adam"), "--strip-optimizer", "--cast", dt])
        run.check("adam_" + dt, out, vars=[[n, s, dt, p] for n, s, _, p in DENSE] + STEP)
        back = run.rewrite("adam_" + dt + "_back", ["rewrite", out, "--cast", "float32"])
        run.check("adam_" + dt + "_back", back, vars=DENSE + STEP)
    all_names = [
        n
        for n, r in truth["fixtures"]["tf2_all_dtypes"]["tensors"].items()
        if r["dtype"] in ("float32", "float16", "bfloat16", "float64")
    ]  # float64 too (issue 12)
    for dt in ("bfloat16", "float16"):
        run.jobs["cast_all_" + dt] = {"kind": "cast", "prefix": fx("tf2_all_dtypes"), "names": all_names, "casts": [dt]}
        run.jobs["cast_all_" + dt + "_back"] = {
            "kind": "cast",
            "prefix": fx("tf2_all_dtypes"),
            "names": all_names,
            "casts": [dt, "float32"],
        }
        run.jobs["cast_adam_" + dt] = {
            "kind": "cast",
            "prefix": fx("tf1_adam"),
            "names": [n for n, *_ in DENSE],
            "casts": [dt],
        }
        run.jobs["cast_adam_" + dt + "_back"] = {
            "kind": "cast",
            "prefix": fx("tf1_adam"),
            "names": [n for n, *_ in DENSE],
            "casts": [dt, "float32"],
        }
    # a V1 input with strings, integers and floats
    out = run.rewrite("v1_plain_f16", ["rewrite", fx("tf1_v1_plain"), "--cast", "float16"])
    run.check("v1_plain_f16", out)
    run.jobs["cast_v1_plain"] = {
        "kind": "cast",
        "prefix": fx("tf1_v1_plain"),
        "names": ["plain/f32", "plain/f32_scalar", "plain/f64"],
        "casts": ["float16"],
    }

    # the corpus: every name-based checkpoint through strip and a root rename; inputs must not change
    run.corpus = [c for c in corpus_manifest["checkpoints"] if "_CHECKPOINTABLE_OBJECT_GRAPH" not in c["tensors"]]
    inputs = [corpus / c["prefix"] for c in corpus_manifest["checkpoints"]]
    input_files = sorted(
        {
            p
            for c in corpus_manifest["checkpoints"]
            for f in c["files"]
            for p in [corpus / Path(c["prefix"]).parent / f["name"]]
        }
    )
    assert all(p.is_file() for p in input_files)
    run.input_hashes_before = file_hashes(input_files)
    for c in run.corpus:
        src = corpus / c["prefix"]
        for op, argv in (("strip", ["strip", src]), ("rename", ["rename", src, "--map", "/=renamed/"])):
            case = f"corpus_{op}_{c['short_name']}"
            run.check(case, run.rewrite(case, argv))

    # object-based corpus inputs: with objgraph a consistent output, without it a clean refusal
    run.objects = ["tf2_keras_weights_2shard", "tf2_eager_vae_adam"]
    for short in run.objects:
        c = next(c for c in corpus_manifest["checkpoints"] if c["short_name"] == short)
        case = "object_" + short
        out = str(run.root / case / "model.ckpt")
        run.rc[case] = cli(["strip", corpus / c["prefix"], out, "--json"])
        if run.rc[case][0] == 0:
            run.jobs[case + ":describe"] = {"kind": "describe", "prefix": out}
            run.jobs[case + ":graph"] = {"kind": "graph", "prefix": out}
    run.input_hashes_after = file_hashes(input_files)
    assert inputs

    run.results = run_jobs(run.jobs)
    run.truth = truth
    return run


def tensors_of(run: Run, fixture: str) -> dict:
    return run.truth["fixtures"][fixture]["tensors"]


def assert_loaded(run: Run, case: str, expected: dict):
    """expected: {key: sha256} -- exactly the keys TF lists, with those values (dtype from truth)."""
    got = run.result(case + ":describe")
    assert sorted(got) == sorted(expected), case
    bad = {k: (got[k]["sha256"], v) for k, v in expected.items() if got[k]["sha256"] != v}
    assert not bad, f"{case}: values differ for {sorted(bad)}"


def assert_restored(run: Run, case: str, expected: dict, *, jobs=("saver", "init")):
    for job in jobs:
        got = run.result(f"{case}:{job}")
        assert {k: v["sha256"] for k, v in got.items()} == expected, f"{case}:{job}"


# -- strip: TF1 optimizers --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPTIMIZER_FIXTURES)
def test_strip_tf1_optimizer_loads_in_tf(tf_run, name):
    tf_run.ok(name)
    tensors = tensors_of(tf_run, name)
    model = ["model/dense/kernel", "model/dense/bias", "global_step"]
    if name == "tf1_two_optimizers":
        model.append("model/out/kernel")
    if name == "tf1_ema":  # shadows are kept by default
        model += ["model/dense/kernel/ExponentialMovingAverage", "model/dense/bias/ExponentialMovingAverage"]
    expected = {k: tensors[k]["sha256"] for k in model}
    assert len(tensors) > len(expected) or name == "tf1_gradientdescent"  # there was something to strip
    assert_loaded(tf_run, name, expected)  # exactly the model variables, bit-identical
    assert_restored(tf_run, name, expected)  # Saver.restore and per-variable init_from_checkpoint


def test_strip_drop_global_step(tf_run):
    tf_run.ok("adam_drop_step")
    tensors = tensors_of(tf_run, "tf1_adam")
    expected = {k: tensors[k]["sha256"] for k in ("model/dense/kernel", "model/dense/bias")}
    assert_loaded(tf_run, "adam_drop_step", expected)
    assert_restored(tf_run, "adam_drop_step", expected)


def test_strip_ema_drop_and_promote(tf_run):
    tensors = tensors_of(tf_run, "tf1_ema")
    for case in ("ema_drop", "ema_promote"):
        tf_run.ok(case)
    weights = ("model/dense/kernel", "model/dense/bias")
    dropped = {k: tensors[k]["sha256"] for k in (*weights, "global_step")}
    assert_loaded(tf_run, "ema_drop", dropped)
    assert_restored(tf_run, "ema_drop", dropped)
    promoted = {k: tensors[k + "/ExponentialMovingAverage"]["sha256"] for k in weights}
    promoted["global_step"] = tensors["global_step"]["sha256"]
    assert all(promoted[k] != tensors[k]["sha256"] for k in weights)  # the shadows really differ
    assert_loaded(tf_run, "ema_promote", promoted)  # each weight now holds its shadow's values
    assert_restored(tf_run, "ema_promote", promoted)


# -- renames with partitioned variables ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tf1_partitioned_v2", "tf1_partitioned_v1"])
def test_scope_rename_of_partitioned_variable(tf_run, name):
    tf_run.ok(name)
    tensors = tensors_of(tf_run, name)
    renamed = {
        ("renamed/" + k[len("model/") :] if k.startswith("model/") else k): v["sha256"] for k, v in tensors.items()
    }
    assert "renamed/embedding/Adam_1" in renamed and "beta1_power" in renamed
    assert_loaded(tf_run, name, renamed)
    model = {k: renamed[k] for k in ("renamed/embedding", "renamed/dense/kernel", "global_step")}
    assert_restored(tf_run, name, model)
    # a graph with Adam under the new names restores the whole training state, slots partitioned too
    assert {k: v["sha256"] for k, v in tf_run.result(name + ":saver_train").items()} == renamed
    two = tf_run.result(name + ":init_2parts")
    assert two["renamed/embedding"]["sha256"] == renamed["renamed/embedding"]
    # strip and rename in one rewrite
    tf_run.ok(name + "_strip")
    assert_loaded(tf_run, name + "_strip", model)
    assert_restored(tf_run, name + "_strip", model)


# -- output sharding ------------------------------------------------------------------------------------------


def test_sharded_outputs_load_in_tf(tf_run):
    tensors = tensors_of(tf_run, "tf1_partitioned_v2")
    everything = {k: v["sha256"] for k, v in tensors.items()}
    model = {k: everything[k] for k in ("model/embedding", "model/dense/kernel", "global_step")}
    for case, shards in (("shards3", 3), ("max_shard", None)):
        tf_run.ok(case)
        files = sorted(p.name for p in (tf_run.root / case).iterdir() if ".data-" in p.name)
        if shards:
            assert len(files) == shards, files
        else:  # 100-byte shards: the [6,4] slices (32 bytes) and Adam slots spread over many files
            assert len(files) > 3 and all((tf_run.root / case / f).stat().st_size <= 100 for f in files), files
        assert_loaded(tf_run, case, everything)
        assert_restored(tf_run, case, model)
        assert {k: v["sha256"] for k, v in tf_run.result(case + ":saver_train").items()} == everything
    tf_run.ok("shards5")
    files = sorted((tf_run.root / "shards5").glob("*.data-*"))
    assert len(files) == 5 and any(f.stat().st_size == 0 for f in files)  # more shards than tensors
    gd = tensors_of(tf_run, "tf1_gradientdescent")
    assert_loaded(tf_run, "shards5", {k: v["sha256"] for k, v in gd.items()})
    assert_restored(tf_run, "shards5", {k: v["sha256"] for k, v in gd.items()})


# -- casts ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dt", ["bfloat16", "float16"])
def test_cast_all_dtypes_and_back(tf_run, dt):
    tensors = tensors_of(tf_run, "tf2_all_dtypes")
    for case, cast_job, final in (
        (f"all_{dt}", f"cast_all_{dt}", dt),
        (f"all_{dt}_back", f"cast_all_{dt}_back", "float32"),
    ):
        tf_run.ok(case)
        cast = tf_run.result(cast_job)  # tf.cast of the original values, computed by TF
        got = tf_run.result(case + ":describe")
        assert sorted(got) == sorted(tensors)
        for key, rec in tensors.items():
            if key in cast:
                assert got[key]["dtype"] == final, key
                assert got[key]["sha256"] == cast[key], f"{case} {key}: not tf.cast of the original"
            else:  # integers, strings, float8, bool, complex: untouched
                assert (got[key]["dtype"], got[key]["sha256"]) == (rec["dtype"], rec["sha256"]), key
            assert got[key]["shape"] == rec["shape"], key


@pytest.mark.parametrize("dt", ["bfloat16", "float16"])
def test_cast_restores_into_a_graph_of_that_dtype(tf_run, dt):
    tensors = tensors_of(tf_run, "tf1_adam")
    for case, cast_job, final in (
        (f"adam_{dt}", f"cast_adam_{dt}", dt),
        (f"adam_{dt}_back", f"cast_adam_{dt}_back", "float32"),
    ):
        tf_run.ok(case)
        expected = dict(tf_run.result(cast_job), global_step=tensors["global_step"]["sha256"])
        assert_loaded(tf_run, case, expected)
        assert_restored(tf_run, case, expected)
        assert tf_run.result(case + ":saver")["model/dense/kernel"]["dtype"] == final


def test_cast_v1_input_leaves_strings_and_integers(tf_run):
    tf_run.ok("v1_plain_f16")
    tensors = tensors_of(tf_run, "tf1_v1_plain")
    cast = tf_run.result("cast_v1_plain")
    got = tf_run.result("v1_plain_f16:describe")
    assert sorted(got) == sorted(tensors)
    for key, rec in tensors.items():
        if key in cast:
            assert (got[key]["dtype"], got[key]["sha256"]) == ("float16", cast[key]), key
        else:
            assert (got[key]["dtype"], got[key]["sha256"]) == (rec["dtype"], rec["sha256"]), key


# -- the corpus ---------------------------------------------------------------------------------------------


def test_corpus_name_based_strip_loads_with_identical_values(tf_run):
    import re

    patterns = [re.compile(p) for p in CORPUS_OPTIMIZER_STATE]
    assert len(tf_run.corpus) >= 13
    stripped_any = 0
    for c in tf_run.corpus:
        case = f"corpus_strip_{c['short_name']}"
        tf_run.ok(case)
        got = tf_run.result(case + ":describe")
        want = {k: v["sha256"] for k, v in c["tensors"].items()}
        assert set(got) <= set(want), case
        assert {k: v["sha256"] for k, v in got.items()} == {k: want[k] for k in got}, case
        dropped = set(want) - set(got)
        # what went is optimizer state and nothing else; what stayed is not
        assert all(any(p.search(k) for p in patterns) for k in dropped), (case, sorted(dropped))
        assert not [k for k in got if any(p.search(k) for p in patterns)], case
        roles = classify(want)
        for k in dropped:  # every dropped slot's variable stayed
            role, var = roles[k]
            assert role in (SLOT, OPTIMIZER) and (var is None or var in got), (case, k)
        stripped_any += bool(dropped)
    assert stripped_any >= 9


def test_corpus_name_based_rename_loads_with_identical_values(tf_run):
    for c in tf_run.corpus:
        case = f"corpus_rename_{c['short_name']}"
        tf_run.ok(case)
        assert_loaded(tf_run, case, {"renamed/" + k: v["sha256"] for k, v in c["tensors"].items()})


def test_corpus_inputs_are_byte_identical_afterwards(tf_run):
    assert tf_run.input_hashes_after == tf_run.input_hashes_before
    assert len(tf_run.input_hashes_before) >= 40


def test_strip_object_based_corpus_checkpoint(tf_run, corpus_manifest):
    for short in tf_run.objects:
        case = "object_" + short
        rc, out, err = tf_run.rc[case]
        c = next(c for c in corpus_manifest["checkpoints"] if c["short_name"] == short)
        if not HAS_OBJGRAPH:
            assert rc == 2, (case, rc, err)
            assert "object-based" in err and "object graph support" in err, err
            assert not (tf_run.root / case).exists()
            continue
        assert rc == 0, (case, out, err)
        report = json.loads(out)
        graph = tf_run.result(case + ":graph")
        assert graph["problems"] == [], graph["problems"]
        assert graph["unreferenced"] == []  # every tensor is reachable from the graph
        got = tf_run.result(case + ":describe")
        kept = {d: s for s, d in ((k["src"], k["dst"]) for k in report["kept"])}
        assert set(got) == set(kept) | {"_CHECKPOINTABLE_OBJECT_GRAPH"}
        for key, src in kept.items():
            assert got[key]["sha256"] == c["tensors"][src]["sha256"], (case, key)
        # the optimizer's state is gone
        assert not [k for k in got if ".OPTIMIZER_SLOT" in k or k.startswith("optimizer/")], sorted(got)
        assert len(got) < len(c["tensors"])
