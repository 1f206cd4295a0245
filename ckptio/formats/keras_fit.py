"""fit onto a Keras 3 .weights.h5 template: the template's HDF5 layout with a TF2 source's values.

A .weights.h5 names layers by class (`layers/dense_1/vars/0`), not by layer name; the layer's name is
the `name` attribute of its `vars` group, and `vars/<i>` runs over the layer's variables in the order
trainable + non-trainable, each in creation order (FORMAT-models.md §7.1). A TF2 object-based source
(`tf.train.Checkpoint(model=m)` of a Keras 3 model) records each variable's full_name as
`[<model>/]<layer name>/<variable name>` (§2.1). So a dataset is paired with a source variable by:
  1. an explicit rule: a --map rule that renames a source full_name (or key) to the dataset's path;
  2. the layer's name: the source variables whose full_name's layer part is the group's `name` (or ends
     with `/<name>`), renamed by --map first, put in the layer's order (ORDERS, or a layer's only variable); other layers are refused.
Anything that cannot be paired for sure is refused; datasets no source variable matches keep the
template's values and are reported. Values are read whole (one tensor at a time) and written by h5py.
"""

from __future__ import annotations

import os

from ..errors import MismatchError, PlanError, UnsupportedError
from .keras_h5 import OPTIMIZER_GROUP, import_h5py

# The creation order of the variables of Keras 3 layers whose variables share shapes (checked against
# Keras by tests/workflows/test_keras_h5_fit.py for Dense and BatchNormalization).
ORDERS = (
    ("kernel", "bias"),
    ("gamma", "beta", "moving_mean", "moving_variance"),  # BatchNormalization
    ("gamma", "beta"),  # LayerNormalization, GroupNormalization
)


def is_keras_template(template) -> bool:
    """True when template is a .weights.h5 path (fit then writes a .weights.h5)."""
    from . import kind_of

    return isinstance(template, (str, os.PathLike)) and kind_of(template) == "keras_h5"


def fit_weights_h5(
    src, template, out, *, rules=None, on_mismatch="error", dry_run=False, force=False, fsync=False, **unsupported
):
    """fit() for a .weights.h5 template: write OUT.weights.h5 that Keras 3's load_weights reads."""
    import time

    from ..checkpoint import Checkpoint
    from ..fit_decide import FitReport, mismatch_error, refuse_if_nothing_matched
    from ..sources import open as open_checkpoint

    started = time.perf_counter()
    used = [{"vocab": "--vocab", "shards": "--shards/--max-shard-size"}.get(k, k) for k, v in unsupported.items() if v]
    if used:
        raise PlanError(f"fit onto a .weights.h5 template does not support {', '.join(sorted(used))}")
    from . import kind_of

    if out is not None and kind_of(out) != "keras_h5":
        raise PlanError(
            "fit onto a .weights.h5 template writes a .weights.h5: name OUT *.weights.h5", path=os.fspath(out)
        )
    cs = src if isinstance(src, Checkpoint) else open_checkpoint(src)
    try:
        with open_checkpoint(template) as ct:
            if out is not None and not dry_run:
                from .export import check_outputs

                out = os.fspath(out)
                check_outputs(
                    [out],
                    [out] if os.path.lexists(out) else [],
                    force=force,
                    inputs=[os.fspath(template)] + list(getattr(getattr(cs, "located", None), "files", ()) or ()),
                )
            report = FitReport(getattr(cs, "prefix", None), os.fspath(template), None if out is None else out, dry_run)
            pairs = plan(cs, ct, rules)
            ops = decide(report, cs, ct, pairs, on_mismatch)
            if report.errors and not dry_run:
                raise mismatch_error(report, "variable")
            if not dry_run:
                refuse_if_nothing_matched(report)
                write(cs, ct, ops, os.fspath(template), out, fsync=fsync)
    finally:
        if cs is not src:
            cs.close()
    report.seconds = time.perf_counter() - started
    return report


# -- matching ---------------------------------------------------------------------------------------


def template_layers(ct) -> dict[str, list[str]]:
    """Layer name (the `vars` group's `name` attribute) -> its dataset paths in index order."""
    groups: dict[str, list[str]] = {}
    for path in ct.entries():
        head, _, index = path.rpartition("/")
        if head.split("/", 1)[0] == OPTIMIZER_GROUP or not head.endswith("vars") or not index.isdigit():
            continue
        groups.setdefault(head, []).append(path)
    out: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for head, paths in groups.items():
        name = ct.h5[head].attrs.get("name")
        name = name.decode() if isinstance(name, bytes) else name
        if not isinstance(name, str) or not name:
            raise UnsupportedError(
                f"template group {head!r} has no layer name attribute; is it a Keras 3 save_weights file?", path=ct.path
            )
        if name in out:
            raise MismatchError(
                f"template groups {owner[name]!r} and {head!r} both hold a layer named {name!r}: "
                "cannot tell which source layer goes where",
                path=ct.path,
            )
        owner[name] = head
        out[name] = sorted(paths, key=lambda p: int(p.rpartition("/")[2]))
    return out


def source_variables(cs) -> dict[str, str]:
    """Source key -> full_name of each model variable of a TF2 object-based checkpoint (optimizer excluded)."""
    from ..objgraph import object_roles
    from ..views import view

    v = view(cs)
    if not v.object_based:
        raise UnsupportedError(
            "fit onto a .weights.h5 template needs a TF2 object-based source "
            "(tf.train.Checkpoint(model=m)), whose variables record their full names",
            path=getattr(cs, "path", None),
        )
    roles = object_roles(cs)
    return {k: t.full_name for k, t in v.tensors.items() if t.full_name and t.slot_of is None and k not in roles}


def _renamed(full_name: str, rules) -> str:
    """full_name after the --map rules; a rule may name the whole full name or just its layer part."""
    if rules is None:
        return full_name
    new, used = rules.rename(full_name)
    if used is not None:
        return new
    layer, sep, var = full_name.rpartition("/")
    if sep:
        new_layer, used = rules.rename(layer)
        if used is not None:
            return f"{new_layer}/{var}"
    return full_name


def plan(cs, ct, rules) -> dict[str, tuple[str, str, str]]:
    """Template dataset path -> (source key, source full_name, how), refusing any doubtful pairing."""
    names = source_variables(cs)
    s_shapes = {k: tuple(e.shape) for k, e in cs.entries().items() if k in names}
    layers = template_layers(ct)
    datasets = set(ct.entries())
    pairs: dict[str, tuple[str, str, str]] = {}
    by_layer: dict[str, list[tuple[str, str, str, str]]] = {}  # template layer -> (key, full_name, var name, scope)
    for key, full in sorted(names.items()):
        new = _renamed(full, rules)
        by_key, used = rules.rename(key) if rules is not None else (key, None)
        if rules is not None and (new in datasets or used is not None and by_key in datasets):
            # an explicit rule names the dataset itself
            _pair(pairs, new if new in datasets else by_key, key, full, "--map")
            continue
        layer, sep, var = new.rpartition("/")
        if not sep:
            continue
        hits = [n for n in layers if layer == n or layer.endswith("/" + n)]
        if len(hits) > 1:
            raise MismatchError(f"source variable {full!r} names two template layers: {hits[0]!r} and {hits[1]!r}")
        if hits:
            by_layer.setdefault(hits[0], []).append((key, full, var, layer))
    for name, found in sorted(by_layer.items()):
        scopes = sorted({layer for *_, layer in found})
        if len(scopes) > 1:
            raise MismatchError(
                f"template layer {name!r} is matched by two source layers: {scopes[0]!r} and "
                f"{scopes[1]!r}; tell them apart with a --map rule"
            )
        for dst, (key, full) in _order(ct, name, layers[name], found, s_shapes).items():
            _pair(pairs, dst, key, full, "layer name")
    return pairs


def _pair(pairs, dst, key, full, how) -> None:
    if dst in pairs:
        raise MismatchError(
            f"template dataset {dst!r} is matched by two source variables: {pairs[dst][1]!r} "
            f"({pairs[dst][2]}) and {full!r} ({how})"
        )
    pairs[dst] = (key, full, how)


def _order(ct, name, paths, found, s_shapes) -> dict[str, tuple[str, str]]:
    """Dataset path -> (source key, full_name) for one layer, in a known variable order (else refused)."""
    t_shapes = {p: tuple(ct.entries()[p].shape) for p in paths}
    by_var: dict[str, tuple[str, str]] = {}
    for key, full, var, _ in found:
        if var in by_var:
            raise MismatchError(
                f"template layer {name!r}: two source variables are named {var!r}: {by_var[var][1]!r} and {full!r}"
            )
        by_var[var] = (key, full)
    if len(by_var) != len(paths):
        raise MismatchError(
            f"template layer {name!r} has {len(paths)} variables, the source layer has "
            f"{len(by_var)} ({', '.join(sorted(by_var))}); nothing written"
        )
    for order in ORDERS:
        if set(order) == set(by_var):
            paired = {p: by_var[v] for p, v in zip(paths, order)}
            _check_order(name, paired, t_shapes, s_shapes)
            return paired
    if len(by_var) == 1:
        return {paths[0]: next(iter(by_var.values()))}
    shapes = [list(ct.entries()[p].shape) for p in paths]
    raise UnsupportedError(
        f"template layer {name!r}: ckptio does not know the order of the variables "
        f"{', '.join(sorted(by_var))} (shapes {shapes}); pair them with explicit --map rules "
        "SRC_FULL_NAME=layers/.../vars/<i>"
    )


def _check_order(name, paired, t_shapes, s_shapes) -> None:
    """Refuse a known order that the shapes contradict: a dataset whose paired variable differs in shape
    while another variable of the layer has exactly its shape (a custom layer creating bias first)."""
    others = {s_shapes[key] for key, _ in paired.values()}
    for dst, (key, full) in paired.items():
        if s_shapes[key] != t_shapes[dst] and t_shapes[dst] in others:
            raise MismatchError(
                f"template layer {name!r}: {dst!r} {list(t_shapes[dst])} would get {full!r} "
                f"{list(s_shapes[key])} by Keras' usual variable order, but another source variable "
                "has its shape; pair them with explicit --map rules SRC_FULL_NAME=layers/.../vars/<i>"
            )


def decide(report, cs, ct, pairs, on_mismatch):
    """The fit Op of each template dataset, with the report filled as fit() fills it for bundles."""
    from ..fit_decide import Op, _decide

    src_entries, t_entries = cs.entries(), ct.entries()
    ops = []
    for dst in sorted(t_entries):
        if dst not in pairs:
            report.template_only.append(dst)
            ops.append(Op("keep", dst))
            continue
        key, _, how = pairs[dst]
        op = _decide(report, key, dst, how, src_entries[key], t_entries[dst], on_mismatch, None, 0)
        ops.append(op)
    used = {key for key, _, _ in pairs.values()}
    report.source_only = sorted(k for k in source_variables(cs) if k not in used)
    return ops


# -- writing ----------------------------------------------------------------------------------------


def write(cs, ct, ops, template_path: str, out: str, *, fsync: bool) -> None:
    """Copy the template's groups, attributes and datasets into OUT with each op's values; atomic."""
    from ..io import AtomicFiles, make_dirs
    from .export import committing

    values = {op.dst: op for op in ops}
    directory = os.path.dirname(out) or "."
    make_dirs(directory)
    files = AtomicFiles(directory)
    tmp, fd = files.create(out)
    os.close(fd)  # h5py writes the file by name
    h5py = import_h5py()
    with committing(files, out, fsync=fsync), h5py.File(template_path, "r") as h5, h5py.File(tmp, "w") as dst:
        _copy_attrs(h5, dst)
        _copy_group(h5, dst, lambda name, ds: _value(cs, ct, values.get(name), name, ds))


def _copy_attrs(a, b) -> None:
    for k, v in a.attrs.items():
        b.attrs[k] = v


def _copy_group(src, dst, value_of) -> None:
    h5py = import_h5py()
    for name, obj in src.items():
        if isinstance(obj, h5py.Group):
            g = dst.create_group(name)
            _copy_attrs(obj, g)
            _copy_group(obj, g, value_of)
        elif isinstance(obj, h5py.Dataset):
            ds = dst.create_dataset(name, data=value_of(obj.name.lstrip("/"), obj))
            _copy_attrs(obj, ds)
        else:
            raise UnsupportedError(f"template holds {name!r}, neither a group nor a dataset")


def _value(cs, ct, op, name, ds):
    """The numpy array to store for template dataset `name`, in the template dataset's own HDF5 dtype."""
    import numpy as np

    if op is None or op.kind == "keep":
        return ds[()]
    target = ct[name].read()
    source = cs[op.src].read()
    if op.kind == "copy":
        value = np.asarray(source).astype(target.dtype)
    elif op.kind == "slice":
        value = np.array(target)
        corner = tuple(slice(0, min(a, b)) for a, b in zip(source.shape, target.shape))
        value[corner] = np.asarray(source)[corner].astype(target.dtype)
    else:
        raise UnsupportedError(f"fit onto a .weights.h5 cannot {op.kind} {name!r}")
    if value.shape != tuple(ds.shape):
        raise MismatchError(f"{name!r}: value of shape {list(value.shape)}, template {list(ds.shape)}")
    # Keras stores little-endian (bfloat16 as a 2-byte opaque type): write the value's bytes in that dtype.
    raw = np.ascontiguousarray(value.astype(value.dtype.newbyteorder("<"), copy=False)).tobytes()
    return np.frombuffer(raw, dtype=ds.dtype).reshape(ds.shape)


__all__ = ["ORDERS", "fit_weights_h5", "is_keras_template"]
