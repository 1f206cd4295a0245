"""diff and fit on real workflows: an old checkpoint loaded into a changed model (issue 14, cases a-e).

One TF subprocess writes every source, template and the values TF itself holds (module fixture);
ckptio fits each case; one more TF subprocess restores every output into the new model with
`assert_consumed()` and dumps what the model then holds. TF's values are the oracle throughout.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from tf_support import require_tf, run_tf_json

from ckptio.cli.main import main

pytestmark = pytest.mark.filterwarnings("ignore")

OLD_VOCAB = ["a", "b", "c", "d", "e"]
NEW_VOCAB = ["c", "x", "a", "e", "y", "b", "z"]  # grown, re-ordered, "d" gone

MODELS = r'''
import os, sys, json
import numpy as np
import tensorflow as tf
keras = tf.keras

class Net(keras.Model):
    """encoder -> [extra] -> head; `enc_attr` names the encoder's attribute (encoder or backbone)."""
    def __init__(self, head=3, extra=False, enc_attr="encoder"):
        super().__init__()
        self.enc_attr = enc_attr
        setattr(self, enc_attr, keras.layers.Dense(4, name="enc"))
        self.extra = keras.layers.Dense(4, name="extra") if extra else None
        self.head = keras.layers.Dense(head, name="head")
    def call(self, x):
        x = getattr(self, self.enc_attr)(x)
        if self.extra is not None:
            x = self.extra(x)
        return self.head(x)

class Emb(keras.Model):
    def __init__(self, vocab):
        super().__init__()
        self.emb = keras.layers.Embedding(vocab, 3, name="emb")
        self.head = keras.layers.Dense(2, name="head")
    def call(self, ids):
        return self.head(self.emb(ids))

def build(m, shape, dtype="float32"):
    m(np.zeros(shape, dtype))
    return m

def sequential(*units):
    return keras.Sequential([keras.Input((5,))] + [keras.layers.Dense(u) for u in units])

def functional():
    i = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(i)
    return keras.Model(i, keras.layers.Dense(5, name="dense")(keras.layers.Flatten()(x)))

def train_step(model, opt, x):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x) ** 2)
    opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

def values(variables):
    return {v.path: v.numpy() for v in variables}

def ordered(variables):  # Sequential layer names depend on how many models the process made before
    return {str(i): v.numpy() for i, v in enumerate(variables)}

def slots(opt, suffix):
    return {v.path: v.numpy() for v in opt.variables if v.path.endswith(suffix)}

def partitioned_emb(rows, parts):
    from tensorflow.python.ops import partitioned_variables
    return tf.compat.v1.get_variable("emb", [rows, 3], initializer=tf.compat.v1.random_normal_initializer(),
                                     partitioner=partitioned_variables.fixed_size_partitioner(parts))
'''

BUILD = (
    MODELS
    + r"""
D = sys.argv[1] if len(sys.argv) > 1 else os.environ["FIT_DIR"]
keras.utils.set_random_seed(1)
x = np.linspace(-1, 1, 10, dtype=np.float32).reshape(2, 5)
saved = {}

# (a) subclassed model + Adam trained one step; the new model adds a layer and widens the head.
old = build(Net(), (1, 5)); opt = keras.optimizers.Adam(0.1); train_step(old, opt, x)
tf.train.Checkpoint(model=old, optimizer=opt).write(f"{D}/a_src/ckpt")
saved["a_old"] = values(old.weights)
new = build(Net(head=6, extra=True), (1, 5))
tf.train.Checkpoint(model=new).save(f"{D}/a_tpl/ckpt")  # save(): restore() then finds its save_counter
saved["a_tpl"] = values(new.weights)
# (b) the encoder attribute renamed to backbone
new = build(Net(enc_attr="backbone"), (1, 5))
tf.train.Checkpoint(model=new).write(f"{D}/b_tpl/ckpt")
saved["b_tpl"] = values(new.weights)

# (a) Sequential: only the head changed; and one with a layer inserted before the head
old = sequential(4, 3); opt = keras.optimizers.Adam(0.1); train_step(old, opt, x)
tf.train.Checkpoint(model=old, optimizer=opt).write(f"{D}/seq_src/ckpt")
saved["seq_old"] = ordered(old.weights)
new = sequential(4, 6)
tf.train.Checkpoint(model=new).write(f"{D}/seq_tpl/ckpt")
saved["seq_tpl"] = ordered(new.weights)
new = sequential(4, 4, 3)
tf.train.Checkpoint(model=new).write(f"{D}/ins_tpl/ckpt")
saved["ins_tpl"] = ordered(new.weights)

# (c) TF1 Saver, graph mode, tf.compat.v1.layers (tf_keras' legacy layers: Keras 3 has none)
from tf_keras.src.legacy_tf_layers import convolutional, core
with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
    inp = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3])
    core.dense(core.flatten(convolutional.conv2d(inp, 4, 3, name="conv")), 5, name="dense")
    sess.run(tf.compat.v1.global_variables_initializer())
    tf.compat.v1.train.Saver().save(sess, f"{D}/c_src/ckpt")
    saved["c_old"] = {v.op.name: sess.run(v) for v in tf.compat.v1.global_variables()}
new = functional()
tf.train.Checkpoint(model=new).write(f"{D}/c_tpl/ckpt")
saved["c_tpl"] = values(new.weights)

# (d) embedding vocabulary grown and re-ordered, with its Adam slots kept in the template
old = build(Emb(5), (1, 2), "int32"); opt = keras.optimizers.Adam(0.1)
train_step(old, opt, np.array([[0, 1], [2, 4]], np.int32))
tf.train.Checkpoint(model=old, optimizer=opt).write(f"{D}/d_src/ckpt")
saved["d_old"] = {**values(old.weights), **slots(opt, "embeddings_momentum"), **slots(opt, "embeddings_velocity")}
new = build(Emb(7), (1, 2), "int32"); opt = keras.optimizers.Adam(0.1); opt.build(new.trainable_variables)
new.emb.embeddings.assign(np.arange(21, dtype=np.float32).reshape(7, 3) + 100)
for v in opt.variables:
    if v.path.endswith("embeddings_momentum"):
        v.assign(np.full((7, 3), -1, np.float32))
tf.train.Checkpoint(model=new, optimizer=opt).write(f"{D}/d_tpl/ckpt")
saved["d_tpl"] = {**values(new.weights), **slots(opt, "embeddings_momentum"), **slots(opt, "embeddings_velocity")}

# (d) a partitioned TF1 embedding: 5 rows in 2 parts -> 7 rows in 3 parts
for name, rows, parts in (("p_src", 5, 2), ("p_tpl", 7, 3)):
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        tf.compat.v1.set_random_seed(rows)
        emb = partitioned_emb(rows, parts)
        sess.run(tf.compat.v1.global_variables_initializer())
        tf.compat.v1.train.Saver().save(sess, f"{D}/{name}/ckpt")
        saved[name] = {"emb": sess.run(tf.convert_to_tensor(emb))}

np.savez(f"{D}/saved.npz", **{f"{case}|{k}": v for case, d in saved.items() for k, v in d.items()})
print(json.dumps({"ok": True}))
"""
)

RESTORE = (
    MODELS
    + r"""
D = os.environ["FIT_DIR"]
out, arrays = {}, {}

def consumed(ckpt_obj, path):
    # restore() for save()d checkpoints; read() for write()n ones (restore() would add a save_counter they lack)
    try:
        (ckpt_obj.restore if os.path.basename(path).startswith("ckpt-") else ckpt_obj.read)(path).assert_consumed()
        return "ok"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:300]

def dump(case, variables):
    for k, v in variables.items():
        arrays[f"{case}|{k}"] = v

for case, make, shape in (("a", lambda: Net(head=6, extra=True), (1, 5)),
                          ("b", lambda: Net(enc_attr="backbone"), (1, 5))):
    for which in ("out", "tpl"):
        m = build(make(), shape)
        path = f"{D}/{case}_{which}/ckpt" + ("-1" if case == "a" else "")
        out[f"{case}_{which}"] = consumed(tf.train.Checkpoint(model=m), path)
        if which == "out":
            dump(case, values(m.weights))
for case, units in (("seq", (4, 6)), ("ins", (4, 4, 3))):
    for which in ("out", "tpl"):
        m = sequential(*units)
        out[f"{case}_{which}"] = consumed(tf.train.Checkpoint(model=m), f"{D}/{case}_{which}/ckpt")
        if which == "out":
            dump(case, ordered(m.weights))
m = functional()
status = tf.train.Checkpoint(model=m).restore(f"{D}/c_src/ckpt")  # TF's own try at the TF1 checkpoint
out["c_tf_own"] = type(status).__name__
m = functional()
out["c_out"] = consumed(tf.train.Checkpoint(model=m), f"{D}/c_out/ckpt")
dump("c", values(m.weights))
for which in ("out", "tpl"):
    m = build(Emb(7), (1, 2), "int32"); opt = keras.optimizers.Adam(0.1); opt.build(m.trainable_variables)
    out[f"d_{which}"] = consumed(tf.train.Checkpoint(model=m, optimizer=opt), f"{D}/d_{which}/ckpt")
    if which == "out":
        dump("d", {**values(m.weights), **slots(opt, "embeddings_momentum"), **slots(opt, "embeddings_velocity")})
with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
    emb = partitioned_emb(7, 3)
    tf.compat.v1.train.Saver().restore(sess, f"{D}/p_out/ckpt")
    dump("p", {"emb": sess.run(tf.convert_to_tensor(emb))})
np.savez(f"{D}/restored.npz", **arrays)
print(json.dumps(out))
"""
)


def _run(code: str, directory) -> dict:
    import os

    os.environ["FIT_DIR"] = str(directory)  # the snippet's subprocess inherits it
    try:
        return run_tf_json(code, timeout=600)
    finally:
        del os.environ["FIT_DIR"]


def _load(path) -> dict:
    """{case: {variable path: array}} from an npz written by a snippet."""
    out: dict[str, dict] = {}
    with np.load(path) as z:
        for k in z.files:
            case, name = k.split("|", 1)
            out.setdefault(case, {})[name] = z[k]
    return out


def _cli(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    require_tf()
    d = tmp_path_factory.mktemp("fit")
    _run(BUILD, d)
    (d / "old.txt").write_text("\n".join(OLD_VOCAB) + "\n")
    (d / "new.txt").write_text("\n".join(NEW_VOCAB) + "\n")
    return d, _load(d / "saved.npz")


@pytest.fixture(scope="module")
def fitted(built):
    """Every case fitted with the CLI, then restored by TF in one subprocess."""
    d, saved = built
    codes = {
        "a": _cli(
            "fit", d / "a_src/ckpt", "--template", d / "a_tpl/ckpt-1", d / "a_out/ckpt-1", "--on-mismatch", "template"
        ),
        "b": _cli(
            "fit",
            d / "a_src/ckpt",
            "--template",
            d / "b_tpl/ckpt",
            d / "b_out/ckpt",
            "--map",
            "model/encoder/=model/backbone/",
        ),
        "seq": _cli(
            "fit", d / "seq_src/ckpt", "--template", d / "seq_tpl/ckpt", d / "seq_out/ckpt", "--on-mismatch", "template"
        ),
        "ins": _cli(
            "fit",
            d / "seq_src/ckpt",
            "--template",
            d / "ins_tpl/ckpt",
            d / "ins_out/ckpt",
            "--map",
            "model/_functional/_operations/2/=model/_functional/_operations/3/",
        ),
        "c": _cli("fit", d / "c_src/ckpt", "--template", d / "c_tpl/ckpt", d / "c_out/ckpt"),
        # d and p are written in several shards, so TF's restores below also read sharded fit outputs.
        "d": _cli(
            "fit",
            d / "d_src/ckpt",
            "--template",
            d / "d_tpl/ckpt",
            d / "d_out/ckpt",
            "--vocab",
            f"model/emb/_embeddings={d / 'old.txt'}:{d / 'new.txt'}",
            "--shards",
            "3",
        ),
        "p": _cli(
            "fit",
            d / "p_src/ckpt",
            "--template",
            d / "p_tpl/ckpt",
            d / "p_out/ckpt",
            "--vocab",
            f"emb={d / 'old.txt'}:{d / 'new.txt'}",
            "--max-shard-size",
            "64",
        ),
    }
    status = _run(RESTORE, d)
    return d, saved, codes, status, _load(d / "restored.npz")


def _by_suffix(values: dict, suffix: str):
    found = [v for k, v in values.items() if k.endswith(suffix)]
    assert len(found) == 1, (suffix, sorted(values))
    return found[0]


def test_a_subclassed_model_new_layer_and_wider_head(fitted):
    d, saved, codes, status, restored = fitted
    assert codes["a"] == 0
    assert status["a_tpl"] == "ok" and status["a_out"] == "ok"
    got, old, tpl = restored["a"], saved["a_old"], saved["a_tpl"]
    for w in ("enc/kernel", "enc/bias"):
        np.testing.assert_array_equal(_by_suffix(got, w), _by_suffix(old, w))
        assert not np.array_equal(_by_suffix(got, w), _by_suffix(tpl, w))
    for w in ("extra/kernel", "extra/bias", "head/kernel", "head/bias"):
        np.testing.assert_array_equal(_by_suffix(got, w), _by_suffix(tpl, w))


def test_a_sequential_head_changed_matched_by_object_path(fitted):
    d, saved, codes, status, restored = fitted
    assert codes["seq"] == 0 and status["seq_out"] == "ok"
    got, old, tpl = restored["seq"], saved["seq_old"], saved["seq_tpl"]
    # the old weights sit under optimizer/_trainable_variables/N: only object paths pair them
    for i in "01":  # the first Dense's kernel and bias kept their shapes
        np.testing.assert_array_equal(got[i], old[i])
        assert not np.array_equal(got[i], tpl[i])
    for i in "23":  # the head's are the template's
        np.testing.assert_array_equal(got[i], tpl[i])


def test_a_sequential_inserted_layer_fixed_with_map(fitted):
    d, saved, codes, status, restored = fitted
    assert codes["ins"] == 0 and status["ins_out"] == "ok"
    got, old, tpl = restored["ins"], saved["seq_old"], saved["ins_tpl"]
    # weights in order: first Dense, inserted Dense, head (kernel, bias each)
    for g, o in (("0", "0"), ("1", "1"), ("4", "2"), ("5", "3")):
        np.testing.assert_array_equal(got[g], old[o])
    for i in "23":
        np.testing.assert_array_equal(got[i], tpl[i])


def test_sequential_inserted_layer_without_map_is_refused(built, tmp_path):
    d, _ = built
    # index 2 is the inserted [4, 4] layer in the template and the old [4, 3] head in the source
    assert _cli("fit", d / "seq_src/ckpt", "--template", d / "ins_tpl/ckpt", tmp_path / "o/ckpt") == 1
    assert not (tmp_path / "o").exists()


def test_b_attribute_renamed_with_map(fitted):
    d, saved, codes, status, restored = fitted
    assert codes["b"] == 0 and status["b_out"] == "ok"
    got, old = restored["b"], saved["a_old"]
    for w in ("enc/kernel", "enc/bias", "head/kernel", "head/bias"):
        np.testing.assert_array_equal(_by_suffix(got, w), _by_suffix(old, w))


def test_b_without_map_the_encoder_is_template_only(built, capsys):
    d, _ = built
    assert _cli("fit", d / "a_src/ckpt", "--template", d / "b_tpl/ckpt", d / "unused/ckpt", "--dry-run", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(report["template_only"]) == [
        "model/backbone/_kernel/.ATTRIBUTES/VARIABLE_VALUE",
        "model/backbone/bias/.ATTRIBUTES/VARIABLE_VALUE",
    ]
    assert not (d / "unused").exists()


def test_c_tf1_saver_into_keras3_functional_by_full_name(fitted, capsys):
    d, saved, codes, status, restored = fitted
    assert status["c_tf_own"] == "NameBasedSaverStatus"
    assert codes["c"] == 0 and status["c_out"] == "ok"
    got, old = restored["c"], saved["c_old"]
    assert sorted(got) == sorted(old)  # conv/kernel, conv/bias, dense/kernel, dense/bias
    for k in old:
        np.testing.assert_array_equal(got[k], old[k])
    _cli("fit", d / "c_src/ckpt", "--template", d / "c_tpl/ckpt", d / "c_out/ckpt", "--dry-run", "--json", "--force")
    report = json.loads(capsys.readouterr().out)
    assert {m["how"] for m in report["matched"]} == {"full_name"} and len(report["matched"]) == 4


def test_d_vocabulary_grown_and_reordered_with_adam_slots(fitted):
    d, saved, codes, status, restored = fitted
    assert codes["d"] == 0 and status["d_out"] == "ok"
    got, old, tpl = restored["d"], saved["d_old"], saved["d_tpl"]
    for suffix in ("emb/embeddings", "embeddings_momentum", "embeddings_velocity"):
        g, o, t = _by_suffix(got, suffix), _by_suffix(old, suffix), _by_suffix(tpl, suffix)
        assert g.shape == (7, 3)
        for j, token in enumerate(NEW_VOCAB):
            expected = o[OLD_VOCAB.index(token)] if token in OLD_VOCAB else t[j]
            np.testing.assert_array_equal(g[j], expected, err_msg=f"{suffix} row {j} ({token})")
    assert np.any(_by_suffix(old, "embeddings_momentum") != 0)  # the slots carry something to move


def test_d_partitioned_embedding_repartitioned(fitted):
    d, saved, codes, status, restored = fitted
    assert codes["p"] == 0
    got, old, tpl = restored["p"]["emb"], saved["p_src"]["emb"], saved["p_tpl"]["emb"]
    for j, token in enumerate(NEW_VOCAB):
        expected = old[OLD_VOCAB.index(token)] if token in OLD_VOCAB else tpl[j]
        np.testing.assert_array_equal(got[j], expected)
    import ckptio

    with ckptio.open(d / "p_out/ckpt") as out, ckptio.open(d / "p_tpl/ckpt") as t:
        assert len(out["emb"].slices) == 3 and out["emb"].slices == t["emb"].slices


def test_e_diff_json_lists_exactly_the_differences(built, capsys):
    d, _ = built
    assert _cli("diff", d / "a_src/ckpt", d / "a_tpl/ckpt-1", "--json") == 1
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"only_a", "only_b", "mismatched", "changed", "equal"}
    assert result["only_b"] == [
        "model/extra/_kernel/.ATTRIBUTES/VARIABLE_VALUE",
        "model/extra/bias/.ATTRIBUTES/VARIABLE_VALUE",
        "save_counter/.ATTRIBUTES/VARIABLE_VALUE",
    ]
    assert all(k.startswith("optimizer/") for k in result["only_a"]) and len(result["only_a"]) == 10
    assert [(m["a"], m["a_shape"], m["b_shape"]) for m in result["mismatched"]] == [
        ("model/head/_kernel/.ATTRIBUTES/VARIABLE_VALUE", [4, 3], [4, 6]),
        ("model/head/bias/.ATTRIBUTES/VARIABLE_VALUE", [3], [6]),
    ]
    assert result["changed"] == [] and result["equal"] == 2
    # Sequential: old weights under optimizer/_trainable_variables/N, template's under model paths
    assert _cli("diff", d / "seq_src/ckpt", d / "seq_tpl/ckpt", "--json") == 1
    result = json.loads(capsys.readouterr().out)
    assert [m["a"].split("/.ATTRIBUTES")[0] for m in result["mismatched"]] == [
        "optimizer/_trainable_variables/2",
        "optimizer/_trainable_variables/3",
    ]
    assert not any(k.startswith("optimizer/_trainable_variables") for k in result["only_a"])
    assert result["only_b"] == [] and result["equal"] == 2
    # TF1 names against a Keras 3 template: paired by full_name, nothing left over
    assert _cli("diff", d / "c_src/ckpt", d / "c_tpl/ckpt", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {
        "only_a": [],
        "only_b": [],
        "mismatched": [],
        "changed": [],
        "equal": 4,
    }


def test_e_diff_exit_codes(built, tmp_path, capsys):
    d, _ = built
    assert _cli("diff", d / "a_src/ckpt", d / "a_src/ckpt") == 0
    assert _cli("diff", d / "a_src/ckpt", d / "a_src/ckpt", "--values") == 0
    assert _cli("diff", d / "a_src/ckpt", d / "a_tpl/ckpt-1") == 1
    assert _cli("diff", d / "a_src/ckpt", tmp_path / "missing") == 2
    assert _cli("diff", d / "a_src/ckpt") == 2
    assert _cli("diff", d / "a_src/ckpt", d / "a_tpl/ckpt-1", "--map", "nothing/=here/") == 2
    capsys.readouterr()
    assert _cli("diff", d / "a_src/ckpt", d / "b_tpl/ckpt", "--map", "model/encoder/=model/backbone/", "--json") == 1
    result = json.loads(capsys.readouterr().out)
    assert result["only_b"] == [] and result["mismatched"] == []


def test_e_values_against_a_bfloat16_copy(built, tmp_path, capsys):
    d, saved = built
    cast = tmp_path / "bf16/ckpt"
    assert _cli("rewrite", d / "a_src/ckpt", cast, "--cast", "bfloat16", "-q") == 0
    capsys.readouterr()
    assert _cli("diff", d / "a_src/ckpt", cast, "--values", "--json") == 1
    result = json.loads(capsys.readouterr().out)
    assert result["only_a"] == [] and result["only_b"] == []
    assert {(m["a_dtype"], m["b_dtype"]) for m in result["mismatched"]} == {("float32", "bfloat16")}
    assert len(result["mismatched"]) == 13  # every float tensor; the int64 step counter is not cast
    changed = {c["a"]: c for c in result["changed"]}
    old = saved["a_old"]
    checked = 0
    for key, c in changed.items():
        name = {
            "encoder/_kernel": "enc/kernel",
            "encoder/bias": "enc/bias",
            "head/_kernel": "head/kernel",
            "head/bias": "head/bias",
        }.get(key.split("/.ATTRIBUTES")[0].removeprefix("model/"))
        if name is None:
            continue
        value = _by_suffix(old, name)
        assert 0 < c["max_abs"] <= np.abs(value).max() * 2.0**-8  # round to nearest, 8 significant bits
        assert 0 < c["rel_l2"] <= 2.0**-8
        checked += 1
    assert checked == 4
    assert _cli("diff", d / "a_src/ckpt", cast, "--values", "--rtol", str(2.0**-8), "--json") == 1
    loose = json.loads(capsys.readouterr().out)
    assert loose["changed"] == [] and loose["equal"] == 14  # within tolerance; the dtype still differs


def test_sharded_fit_outputs_are_what_tf_restored(fitted):
    import glob

    d = fitted[0]
    assert len(glob.glob(str(d / "d_out/ckpt.data-*-of-00003"))) == 3
    assert len(glob.glob(str(d / "p_out/ckpt.data-*"))) > 1
