"""fit of a Keras 3 model's TF checkpoint onto a .weights.h5 template, with Keras as the oracle.

- A Functional model (Dense, BatchNormalization, LayerNormalization, Dense; named layers), trained one step
  and saved with tf.train.Checkpoint(model=m).write, fitted onto a fresh model's save_weights file:
  fresh.load_weights(OUT) predicts exactly what the trained model predicts.
- The same for Embedding, Conv1D and a Sequential nested in a Functional model.
- The same for a new model whose layers were renamed, with --map rules (a scope rule and a layer-name rule).
- Refusals: a source where two layers answer to one template layer, and (no TF) a dataset claimed by two
  source variables, by an explicit rule and by its layer name.
TF runs in two subprocesses per module (one writes the inputs, one loads the outputs).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tf_support import require_tf, run_tf_json

import ckptio
from ckptio.errors import MismatchError

REPO = Path(__file__).resolve().parents[2]

MODEL = """
import json, os, numpy as np, keras, tensorflow as tf
NAMES = ["d1", "bn", "ln", "head"]
RENAMED = ["enc", "norm", "ln2", "out"]
def build(names):
    i = keras.Input((3,), name="in")
    x = keras.layers.Dense(5, name=names[0])(i)
    x = keras.layers.BatchNormalization(name=names[1])(x)
    x = keras.layers.LayerNormalization(name=names[2])(x)
    o = keras.layers.Dense(2, name=names[3])(x)
    return keras.Model(i, o, name="func")
def build_nested():
    i = keras.Input((4,), name="in")
    x = keras.layers.Embedding(10, 3, name="emb")(i)
    x = keras.layers.Conv1D(2, 2, name="conv")(x)
    x = keras.Sequential([keras.layers.Dense(3, name="idense"), keras.layers.BatchNormalization(name="ibn")],
                         name="block")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(i, keras.layers.Dense(1, name="head")(x))
"""

MAKE = (
    MODEL
    + """
rng = np.random.RandomState(0)
x = rng.rand(8, 3).astype("f4"); y = rng.rand(8, 2).astype("f4")
m = build(NAMES)
m.compile(optimizer="adam", loss="mse")
m.train_on_batch(x, y)
tf.train.Checkpoint(model=m).write(os.path.join(OUT, "src", "ckpt"))
np.save(os.path.join(OUT, "x.npy"), x)
np.save(os.path.join(OUT, "want.npy"), m.predict(x, verbose=0))
build(NAMES).save_weights(os.path.join(OUT, "same.weights.h5"))
build(RENAMED).save_weights(os.path.join(OUT, "renamed.weights.h5"))
xn = rng.randint(0, 10, (8, 4)); n = build_nested()
n.compile(optimizer="adam", loss="mse")
n.train_on_batch(xn, y[:, :1])
tf.train.Checkpoint(model=n).write(os.path.join(OUT, "nested", "ckpt"))
np.save(os.path.join(OUT, "xn.npy"), xn)
np.save(os.path.join(OUT, "want_nested.npy"), n.predict(xn, verbose=0))
build_nested().save_weights(os.path.join(OUT, "nested.weights.h5"))
# Two variables whose full names put them in two layers both called d1.
tf.train.Checkpoint(a=tf.Variable(np.ones((3, 5), "f4"), name="x/d1/kernel"),
                    b=tf.Variable(np.ones((3, 5), "f4"), name="y/d1/kernel")).write(os.path.join(OUT, "twice", "ckpt"))
order = {l.name: [v.path for v in l.trainable_variables + l.non_trainable_variables] for l in m.layers}
print(json.dumps({"order": order}))
"""
)

CHECK = (
    MODEL
    + """
x = np.load(os.path.join(OUT, "x.npy")); want = np.load(os.path.join(OUT, "want.npy"))
out = {}
for names, f in ((NAMES, "same_out.weights.h5"), (RENAMED, "renamed_out.weights.h5")):
    fresh = build(names)
    before = fresh.predict(x, verbose=0)
    fresh.load_weights(os.path.join(OUT, f))
    got = fresh.predict(x, verbose=0)
    out[f] = {"identical": bool(np.array_equal(got, want)), "differed_before": bool(not np.array_equal(before, want))}
xn = np.load(os.path.join(OUT, "xn.npy")); want = np.load(os.path.join(OUT, "want_nested.npy"))
fresh = build_nested()
before = fresh.predict(xn, verbose=0)
fresh.load_weights(os.path.join(OUT, "nested_out.weights.h5"))
got = fresh.predict(xn, verbose=0)
out["nested"] = {"identical": bool(np.array_equal(got, want)), "differed_before": bool(not np.array_equal(before, want))}
print(json.dumps(out))
"""
)


def _cli(*argv):
    return subprocess.run(
        [sys.executable, "-m", "ckptio", *map(str, argv)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


@pytest.fixture(scope="module")
def keras_fit(tmp_path_factory):
    """(dir, what MAKE printed, CLI results, what CHECK printed)."""
    require_tf()
    d = tmp_path_factory.mktemp("kerasfit")
    made = run_tf_json(f"OUT = {str(d)!r}\n" + MAKE)
    runs = {
        "same": _cli("fit", d / "src" / "ckpt", "--template", d / "same.weights.h5", d / "same_out.weights.h5"),
        "renamed": _cli(
            "fit",
            d / "src" / "ckpt",
            "--template",
            d / "renamed.weights.h5",
            d / "renamed_out.weights.h5",
            "--map",
            "d1/=enc/",
            "--map",
            "bn=norm",
            "--map",
            "ln/=ln2/",
            "--map",
            "head/=out/",
        ),
        "nested": _cli(
            "fit", d / "nested" / "ckpt", "--template", d / "nested.weights.h5", d / "nested_out.weights.h5"
        ),
        "twice": _cli("fit", d / "twice" / "ckpt", "--template", d / "same.weights.h5", d / "twice.weights.h5"),
    }
    checked = run_tf_json(f"OUT = {str(d)!r}\n" + CHECK)
    return d, made, runs, checked


def test_keras_variable_order_is_what_ckptio_assumes(keras_fit):
    _, made, _, _ = keras_fit
    order = made["order"]
    assert order["d1"] == ["d1/kernel", "d1/bias"]
    assert order["bn"] == ["bn/gamma", "bn/beta", "bn/moving_mean", "bn/moving_variance"]
    assert order["ln"] == ["ln/gamma", "ln/beta"]


def test_fit_onto_weights_h5_loads_with_identical_predictions(keras_fit):
    d, _, runs, checked = keras_fit
    assert runs["same"].returncode == 0, runs["same"].stderr
    assert "10 from source" in runs["same"].stdout and "0 from template only" in runs["same"].stdout
    assert checked["same_out.weights.h5"] == {"identical": True, "differed_before": True}
    with ckptio.open(str(d / "same.weights.h5")) as t, ckptio.open(str(d / "same_out.weights.h5")) as o:
        assert {n: (e.dtype, e.shape) for n, e in t.entries().items()} == {
            n: (e.dtype, e.shape) for n, e in o.entries().items()
        }


def test_fit_embedding_conv_and_nested_sequential(keras_fit):
    _, _, runs, checked = keras_fit
    assert runs["nested"].returncode == 0, runs["nested"].stderr
    assert "11 from source" in runs["nested"].stdout and "0 from template only" in runs["nested"].stdout
    assert checked["nested"] == {"identical": True, "differed_before": True}


def test_fit_onto_renamed_layers_with_map(keras_fit):
    _, _, runs, checked = keras_fit
    assert runs["renamed"].returncode == 0, runs["renamed"].stderr
    assert "10 from source" in runs["renamed"].stdout
    assert checked["renamed_out.weights.h5"] == {"identical": True, "differed_before": True}


def test_fit_onto_renamed_layers_without_map_matches_nothing(keras_fit, tmp_path):
    d, _, _, _ = keras_fit
    report = ckptio.fit(str(d / "src" / "ckpt"), str(d / "renamed.weights.h5"), None, dry_run=True)
    assert report.matched == [] and len(report.template_only) == 10 and len(report.source_only) == 10
    # Written, it would be the template unchanged: refused, nothing written.
    with pytest.raises(ckptio.MismatchError, match="no template tensor matched a source tensor"):
        ckptio.fit(str(d / "src" / "ckpt"), str(d / "renamed.weights.h5"), str(tmp_path / "o.weights.h5"))
    assert not (tmp_path / "o.weights.h5").exists()


def test_two_source_layers_for_one_template_layer_is_refused(keras_fit):
    d, _, runs, _ = keras_fit
    r = runs["twice"]
    assert r.returncode == 1 and not (d / "twice.weights.h5").exists()
    assert len(r.stderr.strip().splitlines()) == 1
    assert "'x/d1'" in r.stderr and "'y/d1'" in r.stderr


def test_out_must_be_weights_h5(keras_fit, tmp_path):
    d, _, _, _ = keras_fit
    r = _cli("fit", d / "src" / "ckpt", "--template", d / "same.weights.h5", tmp_path / "model.ckpt")
    assert r.returncode == 2 and ".weights.h5" in r.stderr and not list(tmp_path.iterdir())


# -- no TF: the pairing refusals on a template written by h5py ------------------------------------------


def _template(path):
    import h5py

    with h5py.File(path, "w") as f:
        g = f.create_group("layers/dense/vars")
        g.attrs["name"] = "d1"
        g.create_dataset("0", data=np.zeros((3, 5), "f4"))
        g.create_dataset("1", data=np.zeros((5,), "f4"))


class FakeSource:
    """What plan() reads of a source: entries() (shapes); source_variables is patched to give full names."""

    def __init__(self, shapes):
        from types import SimpleNamespace

        self._entries = {k: SimpleNamespace(shape=s) for k, s in shapes.items()}

    def entries(self):
        return self._entries


def _patch(monkeypatch, variables):
    """variables: key -> (full_name, shape)."""
    from ckptio.formats import keras_fit

    monkeypatch.setattr(keras_fit, "source_variables", lambda cs: {k: f for k, (f, _) in variables.items()})
    return FakeSource({k: s for k, (_, s) in variables.items()})


def test_dataset_matched_by_rule_and_by_layer_name_is_refused(tmp_path, monkeypatch):
    from ckptio.fit import _rules
    from ckptio.formats import keras_fit

    _template(tmp_path / "t.weights.h5")
    cs = _patch(monkeypatch, {"a": ("d1/kernel", (3, 5)), "b": ("d1/bias", (5,)), "c": ("old/w", (3, 5))})
    with ckptio.open(str(tmp_path / "t.weights.h5")) as ct:
        with pytest.raises(MismatchError) as e:
            keras_fit.plan(cs, ct, _rules(["old/w=layers/dense/vars/0"], False))
    assert "'layers/dense/vars/0'" in str(e.value) and "'d1/kernel'" in str(e.value) and "'old/w'" in str(e.value)


def test_layer_with_another_variable_count_is_refused(tmp_path, monkeypatch):
    from ckptio.formats import keras_fit

    _template(tmp_path / "t.weights.h5")
    cs = _patch(monkeypatch, {"a": ("d1/kernel", (3, 5))})
    with ckptio.open(str(tmp_path / "t.weights.h5")) as ct:
        with pytest.raises(MismatchError, match="has 2 variables, the source layer has 1"):
            keras_fit.plan(cs, ct, None)


def test_layer_with_unknown_variable_order_is_refused(tmp_path, monkeypatch):
    from ckptio.errors import UnsupportedError
    from ckptio.formats import keras_fit

    _template(tmp_path / "t.weights.h5")
    cs = _patch(monkeypatch, {"a": ("d1/alpha", (3, 5)), "b": ("d1/omega", (5,))})
    with ckptio.open(str(tmp_path / "t.weights.h5")) as ct:
        with pytest.raises(UnsupportedError, match="does not know the order"):
            keras_fit.plan(cs, ct, None)


def test_known_order_contradicted_by_shapes_is_refused(tmp_path, monkeypatch):
    from ckptio.formats import keras_fit

    _template(tmp_path / "t.weights.h5")  # vars/0 (3, 5), vars/1 (5,): but this source's bias is (3, 5)
    cs = _patch(monkeypatch, {"a": ("d1/kernel", (5,)), "b": ("d1/bias", (3, 5))})
    with ckptio.open(str(tmp_path / "t.weights.h5")) as ct:
        with pytest.raises(MismatchError, match="usual variable order"):
            keras_fit.plan(cs, ct, None)


def test_explicit_rules_pair_a_layer_of_unknown_order(tmp_path, monkeypatch):
    from ckptio.fit import _rules
    from ckptio.formats import keras_fit

    _template(tmp_path / "t.weights.h5")
    cs = _patch(monkeypatch, {"a": ("d1/alpha", (5,)), "b": ("d1/omega", (3, 5))})
    rules = _rules(["d1/alpha=layers/dense/vars/1", "d1/omega=layers/dense/vars/0"], False)
    with ckptio.open(str(tmp_path / "t.weights.h5")) as ct:
        pairs = keras_fit.plan(cs, ct, rules)
    assert pairs == {
        "layers/dense/vars/1": ("a", "d1/alpha", "--map"),
        "layers/dense/vars/0": ("b", "d1/omega", "--map"),
    }
