"""Strip an object graph: remove optimizers (and the step counter or EMA if asked), keep what the model reaches."""

from __future__ import annotations

from .errors import PlanError, UnsupportedError
from .objgraph_check import find_optimizers
from .objgraph_model import Attribute, Node
from .objgraph_rekey import KeyedGraph

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers honour the name)
if TYPE_CHECKING:
    from .transform import StripOptimizer

# Root-level step counters that --drop-global-step removes (TF1-eager `optimizer_step`, TF-Agents `train_step`).
STEP_EDGES = {"global_step", "step", "train_step", "optimizer_step"}


def strip(plan: KeyedGraph, step: StripOptimizer, *, refuse_weight_loss: bool = True) -> None:
    """Remove optimizers (and the step counter or EMA if asked); keep what the model also reaches."""
    g = plan.graph
    doomed = plan.optimizer_ids()
    extra = tuple(step.optimizer_names)
    if extra:
        doomed |= set(find_optimizers(g, extra))
    if not step.keep_global_step:
        doomed |= {c.node_id for c in g.nodes[0].children if c.local_name in STEP_EDGES}
        doomed |= {i for i, a in g.attributes() if a.full_name == "global_step"}
    _check_stranded(plan, doomed, refuse_weight_loss)
    if step.ema == "promote":
        _promote_ema(plan, doomed)
    if doomed:
        plan.edit(lambda: plan.remove(doomed))


def _check_stranded(plan: KeyedGraph, doomed: set[int], refuse: bool) -> None:
    """Refuse to lose a model weight that only an optimizer's `_trainable_variables` list reaches.

    Keras 3 leaves layers held in Python lists or dicts out of tf.train.Checkpoint's graph; the
    optimizer's list of trainable variables is then the only way to them (FORMAT-models.md §2.1).
    """
    g = plan.graph
    lost = g.live() - g.live(doomed)
    weights = [
        a
        for opt in doomed
        for c in g.nodes[opt].children
        if c.local_name == "_trainable_variables"
        for w in g.nodes[c.node_id].children
        if w.node_id in lost
        for a in g.nodes[w.node_id].attributes
    ]
    plan.stranded = {k for a in weights for k, _ in plan.owned.get(a.source, ())}
    if weights and refuse:
        raise UnsupportedError(
            f"stripping the optimizer would lose {len(weights)} model weights (this one among them) that only "
            "the optimizer's list of trainable variables reaches (Keras 3 leaves layers held in Python lists "
            "or dicts out of tf.train.Checkpoint); keep the optimizer, or drop what you choose with --exclude",
            key=weights[0].checkpoint_key,
        )


def _promote_ema(plan: KeyedGraph, optimizers: set[int]) -> None:
    """Take each model weight's value from its optimizer-kept moving average (Keras use_ema)."""
    g = plan.graph
    pairs = []
    for opt in optimizers:
        kids = {c.local_name: c.node_id for c in g.nodes[opt].children}
        if "_model_variables_moving_average" not in kids or "_trainable_variables" not in kids:
            continue
        # Keras 3 builds both lists from the same variable list, so index i pairs with index i.
        averages = {c.local_name: c.node_id for c in g.nodes[kids["_model_variables_moving_average"]].children}
        for c in g.nodes[kids["_trainable_variables"]].children:
            if c.local_name in averages:
                pairs.append((c.node_id, averages[c.local_name]))
    if not pairs:
        raise PlanError(
            "--ema promote: this object graph has no optimizer-kept moving averages that "
            "ckptio can pair with model weights"
        )
    for weight, average in pairs:
        w, m = _value(g.nodes[weight]), _value(g.nodes[average])
        if w is None or m is None:
            continue
        ew, em = plan.entries.get(w.source), plan.entries.get(m.source)
        if ew is None or em is None or (ew.dtype, ew.shape) != (em.dtype, em.shape):
            raise PlanError("moving average differs in dtype or shape from its weight", key=m.source)
        w.source = m.source  # the weight's key now carries the average's bytes


def _value(node: Node) -> Attribute | None:
    return next((a for a in node.attributes if a.name == "VARIABLE_VALUE"), None)
