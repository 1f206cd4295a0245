"""TF2 object-based workflows: Keras 3 and tf_keras models under tf.train.Checkpoint (issue 12, item 1).

One TF subprocess trains and saves every input (Keras 3 `tf.keras` and `tf_keras`; a subclassed
model with `encoder` and `head` attributes, a Sequential and a Functional; uncompiled, compiled,
and a compiled model saved alone), ckptio rewrites them in this process (strip, rename, select in
every order relative to the strip), and one more TF subprocess restores every output the way the
workflow does (`tf.train.Checkpoint(model=fresh).restore(OUT)`), asserting what should hold and
comparing every weight with numpy. Keys are compared with those TF writes for a fresh model.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from tf_support import require_tf, run_tf_json

import ckptio
from ckptio import Rename, Select, StripOptimizer
from ckptio.cli.main import main

FRAMEWORKS = ("k3", "tk")  # tf.keras (Keras 3) and tf_keras
ARCHS = ("sub", "seq", "fun")
HOWS = ("plain", "compiled", "modelonly")  # Checkpoint(model, optimizer) uncompiled / compiled; Checkpoint(model)
INPUTS = [f"{fw}_{arch}_{how}" for fw in FRAMEWORKS for arch in ARCHS for how in HOWS]
# tf_keras with its legacy Adam (slot_variables in the graph, keys `var/.OPTIMIZER_SLOT/optimizer/m`).
INPUTS += ["tl_sub_plain", "tl_sub_compiled", "tl_seq_compiled", "tl_fun_modelonly"]

# The model's first block as `ls --objects` shows it; for tf_keras also through its alias path.
FIRST = {
    ("k3", "sub"): ["model/encoder/"],
    ("tk", "sub"): ["model/encoder/"],
    ("k3", "seq"): ["model/_functional/_operations/1/"],
    ("k3", "fun"): ["model/_operations/1/"],
    ("tk", "seq"): ["model/layer_with_weights-0/", "model/layer-0/"],
    ("tk", "fun"): ["model/layer_with_weights-0/", "model/layer-1/"],
}

PRELUDE = textwrap.dedent('''
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import numpy as np
    import tensorflow as tf

    def lib(fw):
        if fw == "k3":
            return tf.keras  # Keras 3 in TF 2.21
        import tf_keras
        return tf_keras

    def make_opt(fw):
        K = lib(fw)
        return K.optimizers.legacy.Adam(0.01) if fw == "tl" else K.optimizers.Adam(0.01)

    def build_opt(opt, variables):
        if hasattr(opt, "build"):
            opt.build(variables)
        else:  # a legacy OptimizerV2 makes its slots on first use
            opt._create_all_weights(variables)

    def build(fw, arch, attr="encoder", listed=False):
        K = lib(fw)
        if arch == "sub":
            class Encoder(K.layers.Layer):
                def __init__(self, **kw):
                    super().__init__(**kw)
                    self.dense = K.layers.Dense(3)
                    self.norm = K.layers.BatchNormalization()
                def call(self, x, training=False):
                    return self.norm(self.dense(x), training=training)
            class Net(K.Model):
                def __init__(self):
                    super().__init__()
                    setattr(self, attr, Encoder())
                    self.head = K.layers.Dense(2)
                    if listed:  # Keras 3 leaves list-held layers out of tf.train.Checkpoint
                        self.extra = [K.layers.Dense(2)]
                def call(self, x, training=False):
                    h = self.head(getattr(self, attr)(x, training=training))
                    return self.extra[0](h) if listed else h
            m = Net()
        elif arch == "seq":
            m = K.Sequential([K.Input((4,)), K.layers.Dense(3, name="d1"), K.layers.BatchNormalization(name="bn"),
                              K.layers.Dense(2, name="d2")])
        else:
            i = K.Input((4,))
            h = K.layers.BatchNormalization(name="bn")(K.layers.Dense(3, name="d1")(i))
            m = K.Model(i, K.layers.Dense(2, name="d2")(h))
        m(np.zeros((1, 4), "float32"))
        return m

    def first(m, arch, attr="encoder"):
        """The model's first block: the encoder, or layer d1."""
        return getattr(m, attr) if arch == "sub" else m.get_layer("d1")

    def opt_variables(opt):
        vs = opt.variables
        return list(vs() if callable(vs) else vs)

    def check(status, how):
        try:
            getattr(status, how)()
            return True
        except AssertionError as exc:
            return str(exc)[:300] or "AssertionError"
''')

BUILD = PRELUDE + textwrap.dedent("""
    ROOT = sys.argv[1]
    rs = np.random.RandomState(0)
    x, y = rs.randn(8, 4).astype("float32"), rs.randn(8, 2).astype("float32")
    out = {"inputs": {}, "fresh_keys": {}}

    def train(fw, arch, how, listed=False):
        m = build(fw, arch, listed=listed)
        opt = make_opt(fw)
        if how == "plain":
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((m(x, training=True) - y) ** 2)
            opt.apply_gradients(zip(tape.gradient(loss, m.trainable_variables), m.trainable_variables))
        else:
            m.compile(optimizer=opt, loss="mse")
            m.train_on_batch(x, y)
        return m, opt

    for name in sys.argv[2].split(","):
        fw, arch, how = name.split("_")
        tf.random.set_seed(1)
        m, opt = train(fw, arch, how)
        ck = tf.train.Checkpoint(model=m) if how == "modelonly" else tf.train.Checkpoint(model=m, optimizer=opt)
        prefix = ck.save(f"{ROOT}/{name}/ckpt")
        np.savez(f"{ROOT}/{name}.npz", *[w.numpy() for w in m.weights])
        np.savez(f"{ROOT}/{name}.opt.npz", *[v.numpy() for v in opt_variables(opt)])
        out["inputs"][name] = prefix
    for fw in ("k3", "tk"):
        for arch, attr in (("sub", "encoder"), ("sub", "backbone"), ("seq", "encoder"), ("fun", "encoder")):
            prefix = tf.train.Checkpoint(model=build(fw, arch, attr)).save(f"{ROOT}/fresh_{fw}_{arch}_{attr}/ckpt")
            out["fresh_keys"][f"{fw}_{arch}_{attr}"] = sorted(k for k, _ in tf.train.list_variables(prefix))
    m, opt = train("k3", "sub", "plain", listed=True)
    out["listed"] = tf.train.Checkpoint(model=m, optimizer=opt).save(f"{ROOT}/listed/ckpt")
    print(json.dumps(out))
""")

RESTORE = PRELUDE + textwrap.dedent("""
    cases = json.load(open(sys.argv[1]))
    results = {}
    for case in cases:
        fw, arch, how = case["input"].split("_")
        attr = case.get("attr", "encoder")
        tf.random.set_seed(7)  # fresh weights differ from the trained ones
        fresh = build(fw, arch, attr)
        opt = None
        if case.get("optimizer"):
            opt = make_opt(fw)
            if how != "plain":
                fresh.compile(optimizer=opt, loss="mse")
            build_opt(opt, fresh.trainable_variables)
        init = [w.numpy() for w in fresh.weights]
        root = tf.train.Checkpoint(model=fresh) if opt is None or how == "modelonly" else \\
            tf.train.Checkpoint(model=fresh, optimizer=opt)
        status = root.restore(case["out"])
        res = {"consumed": check(status, "assert_consumed"),
               "existing": check(status, "assert_existing_objects_matched"),
               "nontrivial": check(status, "assert_nontrivial_match"),
               "keys": sorted(k for k, _ in tf.train.list_variables(case["out"]))}
        trained = np.load(case["trained"])
        part = {id(v) for v in first(fresh, arch, attr).weights}
        wrong = []
        for i, w in enumerate(fresh.weights):
            restored = {"all": True, "without_first": id(w) not in part, "only_first": id(w) in part}[case["restored"]]
            want = trained[f"arr_{i}"] if restored else init[i]
            # A weight training left unchanged (a Dense bias before BatchNorm gets an exactly zero
            # gradient on some runs) cannot tell restored from left: only its value is checked then.
            moved = not np.array_equal(init[i], trained[f"arr_{i}"])
            if not np.array_equal(w.numpy(), want) or (not restored and moved and np.array_equal(w.numpy(), trained[f"arr_{i}"])):
                wrong.append(f"{i}:{w.name}:{'restored' if restored else 'left'}")
        res["wrong"] = wrong
        if opt is not None:
            saved = np.load(case["trained"].replace(".npz", ".opt.npz"))
            got = opt_variables(opt)
            res["opt_wrong"] = [i for i, v in enumerate(got) if not np.array_equal(v.numpy(), saved[f"arr_{i}"])]
            res["opt_count"] = [len(got), len(saved.files)]
        results[case["id"]] = res
    print(json.dumps(results))
""")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every input checkpoint, written by one TF subprocess: {"inputs": {name: prefix}, "fresh_keys", "listed"}."""
    require_tf()
    root = tmp_path_factory.mktemp("tf2_objects")
    code = f"import sys; sys.argv = ['build', {str(root)!r}, {','.join(INPUTS)!r}]\n" + BUILD
    doc = run_tf_json(code, timeout=900)
    doc["root"] = root
    return doc


def cli(*argv) -> int:
    return main([str(a) for a in argv])


def _same_output(a, b) -> bool:
    """Two outputs hold the same tensors under the same names, and the same object graph."""

    def value(t):  # the graph is a string scalar: an object array, whose bytes would be pointers
        v = t.read()
        return v.tolist() if v.dtype == object else (v.dtype.str, v.shape, v.tobytes())

    with ckptio.open(a) as x, ckptio.open(b) as y:
        return set(x) == set(y) and all(value(x[n]) == value(y[n]) for n in x)


def _cases(built) -> tuple[list[dict], dict[str, list]]:
    """Run ckptio on every input: (restore checks, one per output, with expectations; problems by input)."""
    root = built["root"]
    cases, problems = [], {name: [] for name in INPUTS}

    def case(name, tag, out, restored="all", fresh=None, **expect):
        """fresh: the attribute name of the model whose TF-written keys the output must have (None: no check)."""
        fw, arch, _ = name.split("_")
        fw = "tk" if fw == "tl" else fw  # the same models, another optimizer
        keys = built["fresh_keys"][f"{fw}_{arch}_{fresh}"] if fresh else None
        if keys and restored != "all":  # only (or all but) the first block, and the graph and save counter
            head = FIRST[fw, arch][0]
            keys = [k for k in keys if k.startswith(head) == (restored == "only_first") or not k.startswith("model/")]
        if (out.parent / "m.index").exists():
            cases.append(
                {
                    "id": f"{name}:{tag}",
                    "input": name,
                    "out": str(out),
                    "trained": str(root / f"{name}.npz"),
                    "restored": restored,
                    "keys": keys,
                    **expect,
                }
            )

    def run(name, *argv):
        code = cli(*argv, "-q")
        if code != 0:
            problems[name].append(f"exit {code}: {' '.join(map(str, argv[:1] + argv[3:]))}")

    def same(name, a, b):
        if (a / "m.index").exists() and (b / "m.index").exists() and not _same_output(a / "m", b / "m"):
            problems[name].append(f"{a.name} and {b.name} differ")

    for name in INPUTS:
        src = built["inputs"][name]
        fw, arch, how = name.split("_")
        out = root / "out" / name
        run(name, "strip", src, out / "strip" / "m")
        case(name, "strip", out / "strip" / "m", consumed=True, existing=True, fresh="encoder")
        # Without a strip, the optimizer stays where a kept path reaches it: under model/ when compiled.
        optimizer_in_model = how != "plain"
        run(name, "rewrite", src, out / "inc_model" / "m", "--include", "^model/", "--include", "^save_counter/")
        case(
            name,
            "inc_model",
            out / "inc_model" / "m",
            consumed=not optimizer_in_model,
            existing=True,
            fresh=None if optimizer_in_model else "encoder",
        )
        run(name, "rewrite", src, out / "exc_opt" / "m", "--exclude", "^optimizer/")
        case(
            name,
            "exc_opt",
            out / "exc_opt" / "m",
            consumed=how != "modelonly",
            existing=True,
            fresh="encoder" if how != "modelonly" else None,
        )
        paths = FIRST["tk" if fw == "tl" else fw, arch]
        exclude, include = "^" + paths[-1], "^" + paths[0]  # tf_keras: exclude through the alias path
        for tag, flags, steps, restored in (
            ("exc_first", ["--exclude", exclude], [Select(exclude=(exclude,))], "without_first"),
            (
                "inc_first",
                ["--include", include, "--include", "^save_counter/"],
                [Select(include=(include, "^save_counter/"))],
                "only_first",
            ),
        ):
            base = out / tag
            run(name, "rewrite", src, base / "cli" / "m", "--strip-optimizer", *flags)
            for order, order_steps in (
                ("select_strip", [*steps, StripOptimizer()]),
                ("strip_select", [StripOptimizer(), *steps]),
            ):
                try:
                    ckptio.rewrite(src, base / order / "m", order_steps)
                except ckptio.CkptioError as exc:
                    problems[name].append(f"{tag} {order}: {exc}")
            for order in ("cli", "select_strip", "strip_select"):
                # Part of the model is left out, so only a nontrivial match can hold; the keys say the rest.
                case(
                    name,
                    f"{tag}:{order}",
                    base / order / "m",
                    restored,
                    consumed=False,
                    existing=False,
                    fresh="encoder",
                )
            same(name, base / "cli", base / "select_strip")
            same(name, base / "cli", base / "strip_select")
        if arch == "sub":
            rule = ("model/encoder/", "model/backbone/")
            run(name, "rename", src, out / "rename" / "m", "--map", "=".join(rule))
            case(name, "rename", out / "rename" / "m", attr="backbone", optimizer=True, consumed=True, existing=True)
            run(name, "rewrite", src, out / "strip_rename" / "m", "--strip-optimizer", "--map", "=".join(rule))
            ckptio.rewrite(src, out / "rename_strip" / "m", [Rename((rule,)), StripOptimizer()])
            same(name, out / "strip_rename", out / "rename_strip")
            for order in ("strip_rename", "rename_strip"):
                case(name, order, out / order / "m", attr="backbone", consumed=True, existing=True, fresh="backbone")
    return cases, problems


@pytest.fixture(scope="module")
def restored(built, tmp_path_factory):
    """(cases, what TF found restoring each output): one TF subprocess for them all."""
    cases, problems = _cases(built)
    spec = tmp_path_factory.mktemp("restore") / "cases.json"
    spec.write_text(json.dumps(cases))
    code = f"import sys; sys.argv = ['restore', {str(spec)!r}]\n" + RESTORE
    return {c["id"]: c for c in cases}, run_tf_json(code, timeout=900), problems


@pytest.mark.parametrize("name", INPUTS)
def test_every_output_restores_the_trained_weights(restored, built, name):
    cases, results, problems = restored
    assert problems[name] == []  # every run succeeded, and every order of steps wrote the same checkpoint
    mine = [c for c in cases.values() if c["input"] == name]
    assert len(mine) == (12 if "_sub_" in name else 9)
    for case in mine:
        res = results[case["id"]]
        where = case["id"]
        assert res["wrong"] == [], where  # restored weights equal the trained ones; the others stay fresh
        for what in ("consumed", "existing"):
            if case[what]:
                assert res[what] is True, (where, what, res[what])
            else:
                assert res[what] is not True, (where, what)  # the expected gap really is there
        if case.get("optimizer"):
            assert res["opt_wrong"] == [] and res["opt_count"][0] == res["opt_count"][1] > 2, (where, res)
        assert res["nontrivial"] is True, where
        if case["keys"] is not None:
            # The keys are those TF itself writes for the model (or its part) without an optimizer.
            assert res["keys"] == case["keys"], where


def test_strip_refuses_to_lose_weights_only_the_optimizer_reaches(built, tmp_path, capsys):
    """Keras 3 leaves list-held layers out of the graph: only optimizer/_trainable_variables reaches them."""
    src = built["listed"]
    capsys.readouterr()
    assert cli("strip", src, tmp_path / "o" / "m", "-q") == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "would lose 2 model weights" in err, err
    assert not (tmp_path / "o").exists()
    # ls calls them weights, not optimizer state.
    assert cli("ls", src, "--json") == 0
    roles = {e["name"]: e["role"] for e in json.loads(capsys.readouterr().out)["entries"]}
    listed = [n for n in roles if "/_trainable_variables/" in n]
    assert len(listed) == 6 and all(roles[n] == "weight" for n in listed)
    assert any(f"entry {n}:" in err for n in listed), err
